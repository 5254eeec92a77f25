//! Section 7, integrity: what the state digest costs the server. `GET
//! /api/sync/todos/digest` at the head (every row's latest entry read, hashed and
//! folded into 64 buckets) against the baseline of pulling the same rows from 0 (read
//! and encoded, pages of 10 000), against a server child process.

use std::time::Instant;

use crate::server::{self, Child, ServeOptions};
use crate::util::{self, human, median, Out, Row, Target};
use crate::Config;

pub const SECTION: &str = "7. integrity";

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let sizes: &[usize] = if config.full {
        &[10_000, 100_000, 1_000_000]
    } else {
        &[10_000, 100_000]
    };
    for &size in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("app.db");
        util::seed(&db, size, true, "a todo with an ordinary title").await;
        let child = Child::spawn(&db, ServeOptions::example());
        let client = server::client(1);
        let (mut digests, mut pulls) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let start = Instant::now();
            let (mut since, mut rows) = ("0".to_owned(), 0);
            loop {
                let page: serde_json::Value = client
                    .get(format!(
                        "{}/api/sync/todos?since={since}&limit=10000",
                        child.base
                    ))
                    .send()
                    .await
                    .expect("pull")
                    .json()
                    .await
                    .expect("a page");
                rows += page["changes"].as_array().expect("changes").len();
                since = page["cursor"].as_str().expect("cursor").to_owned();
                if page["has_more"] != true {
                    break;
                }
            }
            pulls.push(start.elapsed().as_secs_f64());
            assert_eq!(rows, size);
            let start = Instant::now();
            let res = client
                .get(format!("{}/api/sync/todos/digest?at={since}", child.base))
                .send()
                .await
                .expect("digest");
            assert!(res.status().is_success(), "digest: {}", res.status());
            let _ = res.bytes().await.expect("digest body");
            digests.push(start.elapsed().as_secs_f64());
        }
        let (digest, pull) = (median(&mut digests), median(&mut pulls));
        out.push(
            Row::new(
                SECTION,
                "state digest at the head",
                format!("{} rows", human(size)),
            )
            .value(digest * 1000.0, "ms")
            .cost_vs(pull * 1000.0)
            .target(Target::RatioAtMost(1.0), "≤ a pull of the same rows")
            .note(format!(
                "{:.2} µs per row; baseline: pulling the same rows from 0 in pages of \
                     10 000, {:.0} ms; median of 3",
                digest * 1e6 / size as f64,
                pull * 1000.0
            )),
        );
        drop(child);
    }
}
