//! Section 2, ingest: sustained tracked changes/s over real HTTP on 127.0.0.1, through an app
//! route and through the push API, against a server child process. The load generator
//! (reqwest, keep-alive connections) runs in this process on the same 2 cores.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::{self, Child, ServeOptions};
use crate::util::{self, human, Out, Row, SyncMode, Target};
use crate::Config;

pub const SECTION: &str = "2. ingest";
const TARGET: f64 = 20_000.0;
/// Concurrent keep-alive connections for the app routes and the push API.
const ROUTE_CONNECTIONS: usize = 8;
const PUSH_CONNECTIONS: usize = 4;
/// Changes per push request.
const PUSH_BATCH: usize = 100;

/// Seeded database files, copied for each run (seeding 100k rows once, not per run).
struct Templates {
    dir: tempfile::TempDir,
}

impl Templates {
    async fn get(&self, rows: usize, tracked: bool) -> PathBuf {
        let path = self.dir.path().join(format!(
            "{}-{rows}.db",
            if tracked { "tracked" } else { "plain" }
        ));
        if !path.exists() {
            util::seed(&path, rows, tracked, "prefill").await;
        }
        path
    }

    /// A fresh copy of a template in `dir`.
    async fn copy(&self, rows: usize, tracked: bool, dir: &Path) -> PathBuf {
        let from = self.get(rows, tracked).await;
        let to = dir.join("app.db");
        std::fs::copy(&from, &to).expect("copy template");
        let wal = from.with_extension("db-wal");
        if wal.exists() {
            std::fs::copy(&wal, to.with_extension("db-wal")).expect("copy template WAL");
        }
        to
    }
}

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let templates = Templates {
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let window = Duration::from_millis(if config.full { 5000 } else { 1500 });
    let prefills = [1_000, 10_000, 100_000];
    for sync in [SyncMode::Example, SyncMode::Normal] {
        for prefill in prefills {
            if !config.wants_part("ingest", "route") {
                break;
            }
            let route = Request::Form("/bench/todos");
            let tracked = measure(&templates, prefill, true, sync, window, route).await;
            let plain = measure(&templates, prefill, false, sync, window, route).await;
            out.push(
                Row::new(
                    SECTION,
                    &format!("app route, INSERT + 204 ({})", sync.label()),
                    format!("{} rows in table", human(prefill)),
                )
                .value(tracked.rate, "changes/s")
                .rate_vs(plain.rate)
                .target(Target::ValueAtLeast(TARGET), "≥ 20k/s")
                .note(format!(
                    "{ROUTE_CONNECTIONS} connections; {}; untracked: {}",
                    tracked.describe(),
                    plain.describe()
                )),
            );
        }
    }
    // The example's own handler renders the whole list in its response, so its rate
    // falls with the table's size whatever the sync layer does.
    let example_prefills = if config.full {
        [1_000, 10_000, 100_000]
    } else {
        [100, 1_000, 10_000]
    };
    for prefill in example_prefills {
        if !config.wants_part("ingest", "example") {
            break;
        }
        let route = Request::Form("/todos");
        let tracked = measure(&templates, prefill, true, SyncMode::Example, window, route).await;
        let plain = measure(&templates, prefill, false, SyncMode::Example, window, route).await;
        out.push(
            Row::new(
                SECTION,
                "example's POST /todos (re-renders the list)",
                format!("{} rows in table", human(prefill)),
            )
            .value(tracked.rate, "changes/s")
            .rate_vs(plain.rate)
            .target(Target::ValueAtLeast(TARGET), "≥ 20k/s")
            .note(format!(
                "{ROUTE_CONNECTIONS} connections; {}; untracked: {}",
                tracked.describe(),
                plain.describe()
            )),
        );
    }
    for sync in [SyncMode::Example, SyncMode::Normal] {
        for prefill in prefills {
            if !config.wants_part("ingest", "push") {
                break;
            }
            let push = Request::Push("/api/sync/todos");
            let r = measure(&templates, prefill, true, sync, window, push).await;
            // Baseline: the same bodies to a hand-written batch upsert on the same app
            // with no table synced.
            let batch = Request::Push("/bench/batch");
            let plain = measure(&templates, prefill, false, sync, window, batch).await;
            out.push(
                Row::new(
                    SECTION,
                    &format!("push API, {PUSH_BATCH} creates/request ({})", sync.label()),
                    format!("{} rows in table", human(prefill)),
                )
                .value(r.rate, "changes/s")
                .rate_vs(plain.rate)
                .target(Target::ValueAtLeast(TARGET), "≥ 20k/s")
                .note(format!(
                    "{PUSH_CONNECTIONS} connections, with client_id; {}; baseline: the same \
                     bodies to a plain batch-upsert route, untracked: {}",
                    r.describe(),
                    plain.describe()
                )),
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Request {
    /// A form POST of a new `id` and a `title` to this path.
    Form(&'static str),
    /// A push body of `PUSH_BATCH` creates, to this path.
    Push(&'static str),
}

impl Request {
    fn changes(&self) -> u64 {
        match self {
            Request::Form(..) => 1,
            Request::Push(_) => PUSH_BATCH as u64,
        }
    }
}

impl Request {
    fn build(&self, client: &reqwest::Client, base: &str, seq: u64) -> reqwest::RequestBuilder {
        match self {
            Request::Form(path) => client
                .post(format!("{base}{path}"))
                .form(&[("id", util::new_id()), ("title", format!("ingest {seq}"))]),
            Request::Push(path) => {
                let mut body = String::with_capacity(PUSH_BATCH * 120);
                body.push_str("{\"client_id\":\"bench\",\"changes\":[");
                for i in 0..PUSH_BATCH {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        "{{\"id\":\"{}\",\"action\":\"create\",\"data\":{{\"title\":\"push {seq}.{i}\",\"completed\":false}}}}",
                        util::new_id()
                    ));
                }
                body.push_str("]}");
                client
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body)
            }
        }
    }
}

struct Measured {
    rate: f64,
    server_cpu: f64,
    failures: u64,
}

impl Measured {
    fn describe(&self) -> String {
        let mut s = format!(
            "server CPU {:.0}% of a core, {:.1} µs/change",
            self.server_cpu * 100.0,
            self.server_cpu_per_change() * 1e6
        );
        if self.failures > 0 {
            s.push_str(&format!(", {} FAILED requests", self.failures));
        }
        s
    }

    fn server_cpu_per_change(&self) -> f64 {
        // `server_cpu` is a utilisation; times the window over the changes.
        self.server_cpu / self.rate.max(f64::MIN_POSITIVE)
    }
}

/// Runs the load against a fresh copy of the seeded database for `window` (after a
/// short warm-up) and counts the changes acknowledged.
async fn measure(
    templates: &Templates,
    prefill: usize,
    tracked: bool,
    sync: SyncMode,
    window: Duration,
    kind: Request,
) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = templates.copy(prefill, tracked, dir.path()).await;
    let child = Child::spawn(
        &db,
        ServeOptions {
            tracked,
            sync,
            nodelay: false,
            scoped: false,
        },
    );
    let connections = match kind {
        Request::Push(_) => PUSH_CONNECTIONS,
        Request::Form(..) => ROUTE_CONNECTIONS,
    };
    let client = server::client(connections);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, base) = (client.clone(), child.base.clone());
        let (stop, done, failed, seq) = (stop.clone(), done.clone(), failed.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let res = kind.build(&client, &base, n).send().await;
                match res {
                    Ok(res) if res.status().is_success() => {
                        let _ = res.bytes().await;
                        done.fetch_add(kind.changes(), Ordering::Relaxed);
                    }
                    Ok(res) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            let status = res.status();
                            let body = res.text().await.unwrap_or_default();
                            eprintln!("    request failed: {status} {body}");
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("    request failed: {e}");
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, cpu0, t0) = (
        done.load(Ordering::Relaxed),
        child.cpu_secs(),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (c1, cpu1, elapsed) = (
        done.load(Ordering::Relaxed),
        child.cpu_secs(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drop(child);
    Measured {
        rate: (c1 - c0) as f64 / elapsed,
        server_cpu: (cpu1 - cpu0) / elapsed,
        failures: failed.load(Ordering::Relaxed),
    }
}
