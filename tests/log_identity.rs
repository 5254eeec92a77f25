//! A cursor names a point in one history of the log: after the database is restored
//! from an older copy (or replaced), a cursor from the other history gets exactly one
//! reset, on the stream and on pull; one the restored log still continues resumes.

mod common;

use common::*;

/// Writes `names` as todos.
async fn add(server: &Server, names: &[&str]) {
    for name in names {
        add_todo(server, &todo_id(name), name).await;
    }
}

/// Stops the server (its open streams ended first, so no connection keeps the engine
/// alive) and closes its pool; on PostgreSQL, waits until no session is left on the
/// database, which a copy (`CREATE DATABASE ... TEMPLATE`) or a restore needs.
async fn stop(server: Server, db: &TestDb) {
    server.engine.shutdown();
    let pool = server.db.clone();
    drop(server);
    pool.close().await;
    if db.backend == Backend::Postgres {
        let admin = admin(db).await;
        wait_until("no session is left on the database", || async {
            admin
                .scalar::<i64>(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    args![name(db)],
                )
                .await
                == 0
        })
        .await;
        admin.close().await;
    } else {
        // The engine's own connections (the broadcaster's) close when its tasks end,
        // after the drop: replacing the files under one still open corrupts the copy.
        let file = db.path().canonicalize().unwrap();
        wait_until("no connection has the database file open", || {
            let file = file.clone();
            async move { !open_here(&file) }
        })
        .await;
    }
}

/// Whether this process has `file` (or its WAL or shared-memory file) open.
fn open_here(file: &std::path::Path) -> bool {
    let name = file.display().to_string();
    let ours = ["", "-wal", "-shm", "-journal"].map(|suffix| format!("{name}{suffix}"));
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| ours.contains(&target.display().to_string()))
            })
        })
        .unwrap_or(false)
}

/// The PostgreSQL database's name.
fn name(db: &TestDb) -> &str {
    db.url.rsplit_once('/').unwrap().1
}

/// A pool on the test server's `postgres` database, to copy, drop and create others.
async fn admin(db: &TestDb) -> Db {
    let server = db.url.rsplit_once('/').unwrap().0;
    Db::Postgres(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{server}/postgres"))
            .await
            .expect("connect to the test server"),
    )
}

/// Where the backup of the SQLite file goes (beside it, in the test's temp dir).
fn backup_file(db: &TestDb) -> std::path::PathBuf {
    db.path().with_file_name("backup.db")
}

/// The backup of the PostgreSQL database.
fn backup_database(db: &TestDb) -> String {
    format!("{}_backup", name(db))
}

/// Takes a copy of the database as it is now (a backup, for [`restore`]); the server
/// goes on over the original. On PostgreSQL the copy is a database made from this one
/// as template, which no session may use meanwhile: the server is stopped for it and
/// started again.
async fn back_up(server: Server, db: &TestDb) -> Server {
    match db.backend {
        Backend::Sqlite => {
            let sql = format!("VACUUM INTO '{}'", backup_file(db).display());
            server.db.execute(&sql, args![]).await;
            server
        }
        Backend::Postgres => {
            stop(server, db).await;
            let admin = admin(db).await;
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {}",
                backup_database(db),
                name(db)
            );
            admin.execute(&sql, args![]).await;
            admin.close().await;
            start(db).await
        }
    }
}

/// Replaces the database (its server stopped) with the backup [`back_up`] took.
async fn restore(db: &TestDb) {
    match db.backend {
        Backend::Sqlite => {
            let file = db.path();
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            std::fs::copy(backup_file(db), &file).unwrap();
        }
        Backend::Postgres => {
            let admin = admin(db).await;
            admin
                .execute(&format!("DROP DATABASE {}", name(db)), args![])
                .await;
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {}",
                name(db),
                backup_database(db)
            );
            admin.execute(&sql, args![]).await;
            admin.close().await;
        }
    }
}

/// The cursor a pull of everything ends at.
async fn pulled_cursor(server: &Server) -> String {
    let (status, page) = pull(&server.base, "todos", "?since=0").await;
    assert_eq!(status, 200, "{page}");
    page["cursor"].as_str().unwrap().to_owned()
}

async fn a_cursor_from_a_restored_database_gets_exactly_one_reset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add(&server, &["a", "b"]).await;
    let before_backup = pulled_cursor(&server).await;
    let server = back_up(server, &db).await;
    add(&server, &["c", "d", "e"]).await;
    // A browser holds version 5 of this history.
    let held = pulled_cursor(&server).await;
    assert!(held.starts_with("5."), "{held}");
    let mut events = Sse::connect(&server.base, "", Some(&before_backup)).await;
    let caught_up = events.take(3).await;
    assert_eq!(caught_up[2].id, held, "stream ids and pull cursors agree");
    stop(server, &db).await;

    // Restore the older copy and write again: versions 3 to 5 now name other changes.
    restore(&db).await;
    let server = start(&db).await;
    add(&server, &["x", "y", "z"]).await;
    assert_eq!(server.engine.head().await.unwrap(), 5);

    // On the stream: one reset to the new head, then live changes as usual.
    let mut sse = Sse::connect(&server.base, "", Some(&held)).await;
    let reset = sse.next().await;
    assert_eq!(
        (reset.event.as_str(), &reset.data["reason"]),
        ("reset", &serde_json::json!("other_history"))
    );
    assert_eq!(reset.version(), 5);
    add(&server, &["w"]).await;
    let next = sse.next().await;
    assert_eq!((next.event.as_str(), next.version()), ("message", 6));
    // Resuming from the reset's own id is resuming, not another reset.
    let mut again = Sse::connect(&server.base, "", Some(&reset.id)).await;
    assert_eq!(again.next().await.data["id"], todo_id("w"));

    // On pull: 409 with the reset, then a pull from 0 is the whole new history.
    let (status, res) = pull(&server.base, "todos", &format!("?since={held}")).await;
    assert_eq!(status, 409, "{res}");
    assert_eq!(res["reset"]["reason"], "other_history");
    let (status, page) = pull(&server.base, "todos", "?since=0").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "x", "y", "z", "w"]);

    // A cursor from before the backup is still this history: it resumes.
    let (status, page) = pull(&server.base, "todos", &format!("?since={before_backup}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["changes"].as_array().unwrap().len(), 4);
    let mut resumed = Sse::connect(&server.base, "", Some(&before_backup)).await;
    assert_eq!(resumed.next().await.version(), 3);
}
both!(a_cursor_from_a_restored_database_gets_exactly_one_reset);

async fn a_cursor_beyond_the_log_or_from_another_database_is_reset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add(&server, &["a", "b"]).await;
    let cursor = pulled_cursor(&server).await;
    let other_db = TestDb::new(backend).await;
    let other = start(&other_db).await;
    add(&other, &["p", "q", "r"]).await;
    // The same version in another database is another history.
    let (status, res) = pull(&other.base, "todos", &format!("?since={cursor}")).await;
    assert_eq!(
        (status, &res["reset"]["reason"]),
        (409, &serde_json::json!("other_history"))
    );
    // Beyond the head, tagged or not: reset, never "all is well".
    for beyond in ["9", "9.0a0b0c0d"] {
        let (status, res) = pull(&server.base, "todos", &format!("?since={beyond}")).await;
        assert_eq!(
            (status, &res["reset"]["reason"]),
            (409, &serde_json::json!("ahead_of_log")),
            "{beyond}"
        );
        let mut sse = Sse::connect(&server.base, "", Some(beyond)).await;
        assert_eq!(sse.next().await.data["reason"], "ahead_of_log");
    }
}
both!(a_cursor_beyond_the_log_or_from_another_database_is_reset);

/// The history changes under a running server (here: the log is cut back and versions
/// reused, as a restore does): the broadcaster notices and resets every open stream.
async fn the_broadcaster_resets_open_streams_when_the_head_goes_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add(&server, &["a", "b", "c"]).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    add(&server, &["d"]).await;
    assert_eq!(sse.next().await.version(), 4);
    // Each backend keeps its head where its writes take the next version from.
    match &server.db {
        Db::Sqlite(pool) => {
            sqlx::raw_sql(
                "DELETE FROM _rhtmx_sync_log WHERE version > 2;
                 UPDATE sqlite_sequence SET seq = 2 WHERE name = '_rhtmx_sync_log';",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        // One simple query: one transaction.
        Db::Postgres(pool) => {
            sqlx::raw_sql(
                "DELETE FROM _rhtmx_sync_log WHERE version > 2;
                 UPDATE _rhtmx_sync_meta SET value = '2' WHERE key = 'head';",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let reset = sse.next().await;
    assert_eq!((reset.event.as_str(), reset.version()), ("reset", 2));
    add(&server, &["e"]).await;
    let next = sse.next().await;
    assert_eq!((next.event.as_str(), next.version()), ("message", 3));
    assert_eq!(next.data["id"], todo_id("e"));
}
both!(the_broadcaster_resets_open_streams_when_the_head_goes_back);

/// A restore that begins a new history (`begin_new_history`, as the backup tool's
/// restore does): even a cursor the restored copy still holds unchanged is reset, once,
/// on pull and on the stream, since the copy may lack what that browser saw after it.
async fn a_restore_that_begins_a_new_history_resets_every_cursor_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add(&server, &["a", "b"]).await;
    let before_backup = pulled_cursor(&server).await;
    let server = back_up(server, &db).await;
    add(&server, &["c"]).await;
    stop(server, &db).await;
    restore(&db).await;
    let pool = db.connect().await;
    match &pool {
        Db::Sqlite(p) => rhtmx_sync::begin_new_history(p.clone()).await.unwrap(),
        Db::Postgres(p) => rhtmx_sync::begin_new_history(p.clone()).await.unwrap(),
    }
    pool.close().await;
    let server = start(&db).await;

    let (status, res) = pull(&server.base, "todos", &format!("?since={before_backup}")).await;
    assert_eq!(status, 409, "{res}");
    assert_eq!(res["reset"]["reason"], "other_history");
    let mut sse = Sse::connect(&server.base, "", Some(&before_backup)).await;
    let reset = sse.next().await;
    assert_eq!(reset.event, "reset");
    // The reset's cursor resumes: one reset, no loop.
    let (status, page) = pull(&server.base, "todos", &format!("?since={}", reset.id)).await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = pull(&server.base, "todos", "?since=0").await;
    assert_eq!(status, 200);
    assert_eq!(page["changes"].as_array().unwrap().len(), 2, "{page}");
}
both!(a_restore_that_begins_a_new_history_resets_every_cursor_once);
