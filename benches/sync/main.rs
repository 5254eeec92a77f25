//! End-to-end benchmarks of rhtmx-sync: the numbers in BENCHMARKS.md.
//!
//! Run the whole suite (this binary plus the browser part in `js/bench/`) with
//! `./scripts/bench.sh` (`--full` for the big sizes). This is a `harness = false` bench
//! binary, not criterion: most figures are end to end (HTTP on 127.0.0.1, a server in a
//! child process, thousands of sockets, RSS read from /proc), which criterion's
//! closure-per-iteration model does not fit.
//!
//! Modes (the first argument that matches wins):
//! - `--bench [--full] [--only a,b] [--out FILE]`: run the suite (`cargo bench` passes
//!   `--bench`); results go to stderr as they come and, as JSON lines, to `FILE`.
//! - `--serve --db PATH [--untracked] [--sync normal] [--nodelay] [--scoped]`: the server the suite
//!   measures,
//!   started as a child process (the example app, the engine, two bench routes).
//! - `--seed --db PATH --rows N [--untracked]`: fills a database with `N` todos.
//! - `--report FILE...`: prints the Markdown table of result files.
//!
//! Without any of them (as `cargo test --all-targets` runs it) it does nothing and exits
//! at once, so the regular test run never measures anything.

#[path = "../../examples/todo_sync/app.rs"]
#[allow(dead_code)]
mod app;
mod compaction;

mod fanout;
mod ingest;
mod integrity;
#[path = "../../tests/pg/mod.rs"]
mod pg;
mod postgres;
mod pull;
mod report;
mod server;
mod util;
mod write;

use std::path::PathBuf;

/// What the suite was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// The big sizes (10k SSE clients, 1M-row pulls, more repetitions).
    pub full: bool,
    /// Only these sections (`write`, `ingest`, `fanout`, `pull`, `postgres`, `compaction`, `integrity`) or parts of them
    /// (`ingest:push`); empty = all.
    pub only: Vec<String>,
    /// Where result rows are appended as JSON lines.
    pub out: Option<PathBuf>,
}

impl Config {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|s| s == section || s.starts_with(&format!("{section}:")))
    }

    /// One part of a section (`--only ingest:push`), for profiling one thing.
    pub fn wants_part(&self, section: &str, part: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|s| s == section || *s == format!("{section}:{part}"))
    }
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--serve") {
        let db = PathBuf::from(arg_value(&args, "--db").expect("--serve needs --db PATH"));
        let opts = server::ServeOptions {
            tracked: !has("--untracked"),
            sync: util::SyncMode::parse(arg_value(&args, "--sync").as_deref()),
            nodelay: has("--nodelay"),
            scoped: has("--scoped"),
        };
        runtime().block_on(server::serve(db, opts));
    } else if has("--seed") {
        let db = PathBuf::from(arg_value(&args, "--db").expect("--seed needs --db PATH"));
        let rows: usize = arg_value(&args, "--rows")
            .expect("--seed needs --rows N")
            .parse()
            .expect("--rows N");
        runtime().block_on(util::seed(&db, rows, !has("--untracked"), "seed"));
    } else if has("--report") {
        let files: Vec<PathBuf> = args
            .iter()
            .skip_while(|a| *a != "--report")
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .map(PathBuf::from)
            .collect();
        report::print(&files);
    } else if has("--bench") {
        let config = Config {
            full: has("--full"),
            only: arg_value(&args, "--only")
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            out: arg_value(&args, "--out").map(PathBuf::from),
        };
        runtime().block_on(suite(config));
    } else {
        // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to do.
        println!("rhtmx-sync benchmarks: not run (pass --bench, or use ./scripts/bench.sh)");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn suite(config: Config) {
    let limit = util::raise_nofile();
    eprintln!(
        "# rhtmx-sync benchmarks ({} run), RLIMIT_NOFILE {limit}",
        if config.full { "full" } else { "quick" }
    );
    let mut out = util::Out::new(config.out.clone());
    if config.wants("write") {
        let cpu = util::CpuWatch::start();
        write::run(&config, &mut out).await;
        out.push(cpu.row(write::SECTION));
    }
    if config.wants("ingest") {
        let cpu = util::CpuWatch::start();
        ingest::run(&config, &mut out).await;
        out.push(cpu.row(ingest::SECTION));
    }
    if config.wants("fanout") {
        let cpu = util::CpuWatch::start();
        fanout::run(&config, &mut out).await;
        out.push(cpu.row(fanout::SECTION));
    }
    if config.wants("pull") {
        let cpu = util::CpuWatch::start();
        pull::run(&config, &mut out).await;
        out.push(cpu.row(pull::SECTION));
    }
    if config.wants("postgres") {
        let cpu = util::CpuWatch::start();
        postgres::run(&config, &mut out).await;
        out.push(cpu.row(postgres::SECTION));
    }
    if config.wants("compaction") {
        let cpu = util::CpuWatch::start();
        compaction::run(&config, &mut out).await;
        out.push(cpu.row(compaction::SECTION));
    }
    if config.wants("integrity") {
        let cpu = util::CpuWatch::start();
        integrity::run(&config, &mut out).await;
        out.push(cpu.row(integrity::SECTION));
    }
}
