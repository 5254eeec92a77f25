//! Another process's writes are captured and broadcast, and a writer killed with
//! SIGKILL mid-burst leaves the table and the log exactly consistent.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const DB_ENV: &str = "RHTMX_WRITER_DB";
const COUNT_ENV: &str = "RHTMX_WRITER_COUNT";

/// The writer process: not a test on its own, the tests below re-run this binary with
/// only this function selected. With `RHTMX_WRITER_COUNT` it inserts that many rows and
/// exits; without, it writes a mix of inserts, updates, deletes and multi-statement
/// transactions from four tasks until it is killed, printing a line per commit.
#[test]
#[ignore = "run as a child process by the other tests"]
fn writer_child() {
    let Ok(db) = std::env::var(DB_ENV) else {
        return;
    };
    let count: Option<usize> = std::env::var(COUNT_ENV).ok().map(|c| c.parse().unwrap());
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let pool = app::open_db(&url(std::path::Path::new(&db))).await.unwrap();
        if let Some(count) = count {
            for i in 0..count {
                sqlx::query("INSERT INTO todos (id, title) VALUES (?, 'from another process')")
                    .bind(format!("x{i:03}"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            return;
        }
        let tasks: Vec<_> = (0..4u64)
            .map(|task| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut seed = task * 7919 + 1;
                    for n in 0u64.. {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let id = format!("w{}", (seed >> 33) % 200);
                        let result = match n % 4 {
                            0 => sqlx::query("INSERT OR IGNORE INTO todos (id, title) VALUES (?, ?)")
                                .bind(&id)
                                .bind(format!("t{n}"))
                                .execute(&pool)
                                .await
                                .map(drop),
                            1 => sqlx::query("UPDATE todos SET completed = NOT completed, title = ? WHERE id = ?")
                                .bind(format!("u{n}"))
                                .bind(&id)
                                .execute(&pool)
                                .await
                                .map(drop),
                            2 => sqlx::query("DELETE FROM todos WHERE id = ?")
                                .bind(&id)
                                .execute(&pool)
                                .await
                                .map(drop),
                            _ => async {
                                let mut tx = pool.begin().await?;
                                for k in 0..3 {
                                    sqlx::query("INSERT OR REPLACE INTO todos (id, title) VALUES (?, ?)")
                                        .bind(format!("{id}-{k}"))
                                        .bind(format!("batch {n}"))
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                sqlx::query("UPDATE todos SET title = 'batched' WHERE id = ?")
                                    .bind(&id)
                                    .execute(&mut *tx)
                                    .await?;
                                tx.commit().await
                            }
                            .await,
                        };
                        if result.is_ok() {
                            println!("committed {task} {n}");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn spawn_writer(db: &std::path::Path, count: Option<usize>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "writer_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(DB_ENV, db)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    match count {
        Some(n) => cmd.env(COUNT_ENV, n.to_string()),
        None => cmd.env_remove(COUNT_ENV),
    };
    cmd.spawn().expect("spawn the writer process")
}

#[tokio::test]
async fn another_process_writes_reach_the_event_stream() {
    let (_dir, db) = temp_db();
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    let status = tokio::task::spawn_blocking({
        let db = db.clone();
        move || spawn_writer(&db, Some(30)).wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let events = sse.take(30).await;
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.data["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("x{i:03}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn sigkill_mid_burst_leaves_no_row_without_its_log_entry_and_vice_versa() {
    let (_dir, db) = temp_db();
    // The engine installs the triggers; the killed process is a plain sqlx app.
    let server = start(&db).await;
    drop(server);

    let committed = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            let mut child = spawn_writer(&db, None);
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let mut committed = 0;
            for line in stdout.lines() {
                if line.unwrap().starts_with("committed") {
                    committed += 1;
                    if committed == 400 {
                        // SIGKILL: no destructor, no rollback, mid-transaction for some tasks.
                        child.kill().unwrap();
                        break;
                    }
                }
            }
            child.wait().unwrap();
            committed
        }
    })
    .await
    .unwrap();
    assert_eq!(committed, 400, "the writer died before it was killed");

    let pool = app::open_db(&url(&db)).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let rows = todos(&pool).await;
    assert!(!rows.is_empty());
    // Replaying the log rebuilds the table exactly: every committed row has its entry
    // and no entry exists for a change that did not commit.
    assert_eq!(replay_log(&pool).await, rows);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(logged >= 100, "only {logged} log entries for 400 commits");
}
