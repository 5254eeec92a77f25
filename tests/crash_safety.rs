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
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let pool = TestDb::existing(&db).connect().await;
            // SQLite's REPLACE deletes the row it collides with; PostgreSQL's upsert updates it.
            let replace = match pool.backend() {
                Backend::Sqlite => "INSERT OR REPLACE INTO todos (id, title) VALUES ($1, $2)",
                Backend::Postgres => {
                    "INSERT INTO todos (id, title) VALUES ($1, $2) \
                                  ON CONFLICT (id) DO UPDATE SET title = excluded.title"
                }
            };
            if let Some(count) = count {
                for i in 0..count {
                    pool.execute(
                        "INSERT INTO todos (id, title) VALUES ($1, 'from another process')",
                        args![format!("x{i:03}")],
                    )
                    .await;
                }
                return;
            }
            let tasks: Vec<_> =
                (0..4u64)
                    .map(|task| {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            let mut seed = task * 7919 + 1;
                            for n in 0u64.. {
                                seed = seed
                                    .wrapping_mul(6364136223846793005)
                                    .wrapping_add(1442695040888963407);
                                let id = format!("w{}", (seed >> 33) % 200);
                                let result = match n % 4 {
                            0 => pool
                                .try_execute(
                                    "INSERT INTO todos (id, title) VALUES ($1, $2) \
                                     ON CONFLICT DO NOTHING",
                                    args![&id, format!("t{n}")],
                                )
                                .await
                                .map(drop),
                            1 => pool
                                .try_execute(
                                    "UPDATE todos SET completed = NOT completed, title = $1 \
                                     WHERE id = $2",
                                    args![format!("u{n}"), &id],
                                )
                                .await
                                .map(drop),
                            2 => pool
                                .try_execute("DELETE FROM todos WHERE id = $1", args![&id])
                                .await
                                .map(drop),
                            _ => {
                                let mut statements: Vec<(&str, Vec<Arg>)> = (0..3)
                                    .map(|k| {
                                        (replace, args![format!("{id}-{k}"), format!("batch {n}")])
                                    })
                                    .collect();
                                statements.push((
                                    "UPDATE todos SET title = 'batched' WHERE id = $1",
                                    args![&id],
                                ));
                                pool.try_transaction(statements).await
                            }
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

fn spawn_writer(db: &str, count: Option<usize>) -> Child {
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

async fn another_process_writes_reach_the_event_stream(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    let status = tokio::task::spawn_blocking({
        let db = db.url.clone();
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
both!(another_process_writes_reach_the_event_stream);

async fn sigkill_mid_burst_leaves_no_row_without_its_log_entry_and_vice_versa(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The engine installs the capture; the killed process is a plain sqlx app. The
    // engine keeps running (on PostgreSQL it numbers what commits while the writer dies).
    let server = start(&db).await;

    let committed = tokio::task::spawn_blocking({
        let db = db.url.clone();
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

    let pool = db.connect().await;
    if backend == Backend::Sqlite {
        let check: String = pool.scalar("PRAGMA integrity_check", args![]).await;
        assert_eq!(check, "ok");
    }
    all_numbered(&pool).await;
    drop(server);
    let rows = todos(&pool).await;
    assert!(!rows.is_empty());
    // Replaying the log rebuilds the table exactly: every committed row has its entry
    // and no entry exists for a change that did not commit.
    assert_eq!(replay_log(&pool).await, rows);
    let logged: i64 = pool
        .scalar("SELECT count(*) FROM _rhtmx_sync_log", args![])
        .await;
    assert!(logged >= 100, "only {logged} log entries for 400 commits");
}
both!(sigkill_mid_burst_leaves_no_row_without_its_log_entry_and_vice_versa);
