//! Section 4, pull: an initial sync (`GET /api/sync/todos?since=0&limit=L`, page after page)
//! of a log holding N creates, against a server child process; rows/s end to end
//! (request, SQLite read, JSON encoding, loopback, client-side JSON parse) and the
//! server's peak RSS (VmHWM), which must not grow with N.

use std::time::Instant;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::server::{self, Child, ServeOptions};
use crate::util::{self, human, Out, Row, Target};
use crate::Config;

pub const SECTION: &str = "4. pull";
/// Self-set: a 100k-row initial sync in at most one second of server + network time.
const TARGET_ROWS: f64 = 100_000.0;

#[derive(Deserialize)]
struct Page {
    changes: Vec<IgnoredAny>,
    version: i64,
    has_more: bool,
}

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let sizes: [usize; 3] = if config.full {
        [10_000, 100_000, 1_000_000]
    } else {
        [1_000, 10_000, 100_000]
    };
    // The browser client pulls with the default page (1000); 10 000 is the maximum. The
    // example's server does not set TCP_NODELAY; the last variant shows what it costs.
    let variants = [
        (1_000, false, ""),
        (10_000, false, ""),
        (1_000, true, ", TCP_NODELAY"),
    ];
    let mut previous_peak = [0.0f64; 3];
    for (i, size) in sizes.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("app.db");
        util::seed(&db, size, true, "a todo with an ordinary title").await;
        for (j, (limit, nodelay, label)) in variants.into_iter().enumerate() {
            let child = Child::spawn(
                &db,
                ServeOptions {
                    nodelay,
                    ..ServeOptions::example()
                },
            );
            let client = server::client(1);
            // Warm-up: one tiny page.
            let _ = page(&client, &child.base, 0, 1).await;
            let before = child.mem();
            let cpu0 = child.cpu_secs();
            let start = Instant::now();
            let (mut since, mut rows, mut pages) = (0i64, 0usize, 0usize);
            loop {
                let p = page(&client, &child.base, since, limit).await;
                rows += p.changes.len();
                pages += 1;
                since = p.version;
                if !p.has_more {
                    break;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let cpu = child.cpu_secs() - cpu0;
            let after = child.mem();
            drop(child);
            assert_eq!(rows, size, "the pull returned every row");
            let size_label = format!("{} rows, limit {}{label}", human(size), human(limit));
            out.push(
                Row::new(SECTION, "initial sync throughput", size_label.clone())
                    .value(rows as f64 / secs, "rows/s")
                    .target(Target::ValueAtLeast(TARGET_ROWS), "≥ 100k rows/s")
                    .note(format!(
                        "{pages} pages in {:.0} ms ({:.1} ms/page); server CPU {:.1} µs/row",
                        secs * 1000.0,
                        secs * 1000.0 / pages as f64,
                        cpu * 1e6 / rows as f64
                    )),
            );
            if nodelay {
                continue;
            }
            // Flat means: 10× more rows, (almost) the same peak. The first few MB a pull
            // adds are SQLite's page cache (2 MB per connection) filling up.
            let peak_mb = after.hwm_kb as f64 / 1024.0;
            let mut row = Row::new(SECTION, "server peak RSS (VmHWM)", size_label)
                .value(peak_mb, "MB")
                .note(format!(
                    "RSS {:.1} MB before the pull",
                    before.rss_kb as f64 / 1024.0
                ));
            if i > 0 {
                row = row
                    .cost_vs(previous_peak[j])
                    .target(Target::RatioAtMost(1.25), "≤ 1.25× at 10× fewer rows")
                    .note(format!(
                        "baseline: the peak at {} rows",
                        human(sizes[i - 1])
                    ));
            }
            previous_peak[j] = peak_mb;
            out.push(row);
        }
    }
}

async fn page(client: &reqwest::Client, base: &str, since: i64, limit: usize) -> Page {
    let res = client
        .get(format!("{base}/api/sync/todos?since={since}&limit={limit}"))
        .send()
        .await
        .expect("pull");
    assert!(res.status().is_success(), "pull: {}", res.status());
    let body = res.bytes().await.expect("pull body");
    serde_json::from_slice(&body).expect("a pull page")
}
