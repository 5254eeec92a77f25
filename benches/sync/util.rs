//! Shared pieces: result rows, databases, /proc readings, statistics.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use crate::app;

/// One measured figure, as printed in the table and stored as a JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `1. write overhead`, ...: the numbering, so the table reads in order.
    pub section: String,
    pub metric: String,
    /// The size this row was measured at (`10k rows`, `1000 clients`).
    pub size: String,
    pub value: f64,
    pub unit: String,
    /// The same measurement without the thing under test, in the same run.
    pub baseline: Option<f64>,
    /// `value / baseline` (for throughputs: `baseline / value`, i.e. how many times
    /// slower), so that a ratio above 1 always means "costs more".
    pub ratio: Option<f64>,
    /// What the figure should be, as text (`≤ 1.5×`, `≥ 20k/s`).
    pub target: String,
    /// `None`: informational, no target.
    pub pass: Option<bool>,
    pub note: String,
}

/// A target checked against either the value or the ratio.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    ValueAtMost(f64),
    ValueAtLeast(f64),
    RatioAtMost(f64),
}

impl Row {
    pub fn new(section: &str, metric: &str, size: impl Into<String>) -> Row {
        Row {
            section: section.to_owned(),
            metric: metric.to_owned(),
            size: size.into(),
            value: 0.0,
            unit: String::new(),
            baseline: None,
            ratio: None,
            target: String::new(),
            pass: None,
            note: String::new(),
        }
    }

    pub fn value(mut self, value: f64, unit: &str) -> Row {
        self.value = value;
        self.unit = unit.to_owned();
        self
    }

    /// A cost (time, bytes) against its baseline: ratio = value / baseline.
    pub fn cost_vs(mut self, baseline: f64) -> Row {
        self.baseline = Some(baseline);
        self.ratio = Some(self.value / baseline);
        self
    }

    /// A cost against its baseline measured in pairs (side by side, interleaved): the
    /// ratio is the median of the per-pair ratios, robust to drift and outliers on a
    /// noisy machine; `value` and `baseline` are the medians of each side.
    pub fn paired(mut self, pairs: &[(f64, f64)], scale: f64, unit: &str) -> Row {
        let mut base: Vec<f64> = pairs.iter().map(|p| p.0 * scale).collect();
        let mut value: Vec<f64> = pairs.iter().map(|p| p.1 * scale).collect();
        let mut ratios: Vec<f64> = pairs.iter().map(|p| p.1 / p.0).collect();
        self.value = median(&mut value);
        self.unit = unit.to_owned();
        self.baseline = Some(median(&mut base));
        self.ratio = Some(median(&mut ratios));
        if ratios.len() >= 3 {
            // `median` sorted them.
            let (lo, hi) = (ratios[ratios.len() / 4], ratios[(ratios.len() * 3) / 4]);
            self = self.note(format!("pair ratios IQR {lo:.2}–{hi:.2}×"));
        }
        self
    }

    /// A throughput against its baseline: ratio = baseline / value (slowdown).
    pub fn rate_vs(mut self, baseline: f64) -> Row {
        self.baseline = Some(baseline);
        self.ratio = Some(baseline / self.value);
        self
    }

    pub fn target(mut self, target: Target, text: &str) -> Row {
        self.target = text.to_owned();
        self.pass = match target {
            Target::ValueAtMost(x) => Some(self.value <= x),
            Target::ValueAtLeast(x) => Some(self.value >= x),
            Target::RatioAtMost(x) => self.ratio.map(|r| r <= x),
        };
        self
    }

    /// Appends to the row's note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        let note = note.into();
        if self.note.is_empty() {
            self.note = note;
        } else {
            self.note = format!("{}; {note}", self.note);
        }
        self
    }
}

/// Where rows go: stderr as they come, and a JSON-lines file.
pub struct Out {
    file: Option<std::fs::File>,
}

impl Out {
    pub fn new(path: Option<PathBuf>) -> Out {
        let file = path.map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        });
        Out { file }
    }

    pub fn push(&mut self, row: Row) {
        let ratio = row.ratio.map(|r| format!(" ({r:.2}×)")).unwrap_or_default();
        let status = match row.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "info",
        };
        eprintln!(
            "  {} | {} | {}: {}{ratio}  target {} [{status}] {}",
            row.section,
            row.metric,
            row.size,
            crate::report::fmt_value(row.value, &row.unit),
            row.target,
            row.note
        );
        if let Some(f) = &mut self.file {
            let line = serde_json::to_string(&row).expect("row serializes");
            writeln!(f, "{line}").expect("write results");
        }
    }
}

/// `1000` → `1k`, `100000` → `100k`, `1000000` → `1M`.
pub fn human(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// SQLite's `synchronous` for the bench databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Exactly the example's `open_db`: WAL, sqlx's default `synchronous = FULL`.
    Example,
    /// The same with `synchronous = NORMAL` (common with WAL; no fsync per commit).
    Normal,
}

impl SyncMode {
    pub fn parse(s: Option<&str>) -> SyncMode {
        match s {
            Some("normal") => SyncMode::Normal,
            _ => SyncMode::Example,
        }
    }

    pub fn arg(self) -> &'static str {
        match self {
            SyncMode::Example => "full",
            SyncMode::Normal => "normal",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SyncMode::Example => "WAL, synchronous=FULL",
            SyncMode::Normal => "WAL, synchronous=NORMAL",
        }
    }
}

pub fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Opens (creating) a database the way the example does; `Normal` changes only
/// `synchronous`.
pub async fn open(path: &Path, sync: SyncMode) -> SqlitePool {
    match sync {
        SyncMode::Example => app::open_db(&url(path)).await.expect("open db"),
        SyncMode::Normal => {
            use sqlx::sqlite::{
                SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
            };
            use std::str::FromStr;
            let options = SqliteConnectOptions::from_str(&url(path))
                .expect("url")
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .connect_with(options)
                .await
                .expect("open db");
            sqlx::migrate!("examples/todo_sync/migrations")
                .run(&pool)
                .await
                .expect("migrate");
            pool
        }
    }
}

/// The example's insert, verbatim.
pub const INSERT: &str =
    "INSERT INTO todos (id, title, completed) VALUES (?, ?, false) ON CONFLICT (id) DO NOTHING";

/// A fresh UUIDv7, as the browser would send.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Fills `db` with `rows` todos in one transaction, through the engine's triggers when
/// `tracked` (so the change log holds one create per row).
pub async fn seed(db: &Path, rows: usize, tracked: bool, title: &str) {
    let pool = open(db, SyncMode::Example).await;
    let engine = if tracked {
        Some(app::engine(pool.clone()).await.expect("engine"))
    } else {
        None
    };
    insert_rows(&pool, rows, title).await;
    drop(engine);
    // Everything into the main file, so that it can be copied alone (the engine's own
    // connection closes asynchronously and may keep the WAL alive past `close`).
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .expect("checkpoint");
    pool.close().await;
}

/// Inserts `rows` new todos in one transaction, 100 per statement (fast seeding).
pub async fn insert_rows(pool: &SqlitePool, rows: usize, title: &str) {
    let mut tx = pool.begin().await.expect("begin");
    let mut left = rows;
    while left > 0 {
        let n = left.min(100);
        let marks = vec!["(?, ?, false)"; n].join(", ");
        let sql = format!("INSERT INTO todos (id, title, completed) VALUES {marks}");
        let mut q = sqlx::query(&sql);
        for _ in 0..n {
            q = q.bind(new_id()).bind(title);
        }
        q.execute(&mut *tx).await.expect("seed insert");
        left -= n;
    }
    tx.commit().await.expect("commit");
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, exclusively borrowed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

pub fn mem(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing paren.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Nanoseconds on a clock shared by every task of this process.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A small deterministic generator for jitter (no dependency needed).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// How much CPU *other* processes used while a section ran: the machine's busy time
/// (`/proc/stat`) minus this process's and its reaped children's. Other builds and
/// test runs on a shared 2-core machine skew every figure; each section reports this.
pub struct CpuWatch {
    busy: f64,
    own: f64,
    start: Instant,
}

impl CpuWatch {
    pub fn start() -> CpuWatch {
        CpuWatch {
            busy: machine_busy_secs(),
            own: own_cpu_secs(),
            start: Instant::now(),
        }
    }

    /// A row: other processes' CPU during the section, in % of all cores.
    pub fn row(&self, section: &str) -> Row {
        let wall = self.start.elapsed().as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let foreign = (machine_busy_secs() - self.busy) - (own_cpu_secs() - self.own);
        Row::new(
            section,
            "CPU used by other processes meanwhile",
            format!("{wall:.0} s"),
        )
        .value(
            (foreign / (wall * cores) * 100.0).max(0.0),
            "% of all cores",
        )
        .note("machine busy time (/proc/stat) minus this benchmark's own; high = noisy figures")
    }
}

fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 =
        v.iter().take(8).sum::<f64>() - v.get(3).unwrap_or(&0.0) - v.get(4).unwrap_or(&0.0);
    // SAFETY: sysconf has no preconditions.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// This process's CPU time plus that of its children already waited for.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // After the paren: state is not numeric, so index 0 here is field 4 (ppid).
    // utime, stime, cutime, cstime are fields 14–17 → indexes 10–13.
    let ticks: f64 = f.get(10..14).map_or(0.0, |s| s.iter().sum());
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
