//! State digests over real HTTP, on SQLite and on PostgreSQL: a mirror built from pulls
//! matches the server's digest at its cursor; a damaged or missing row shows in its one
//! bucket, and refetching that bucket alone repairs it; compaction and erasure leave
//! the digest at a cursor unchanged; bad requests get a 4xx.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rhtmx_sync::integrity::{bucket, Digest, BUCKETS};
use rhtmx_sync::Compaction;
use serde_json::{json, Value};

/// A client's mirror of `todos`: wire id (as JSON text) → (id, data).
type Mirror = BTreeMap<String, (Value, Value)>;

/// Pulls everything from 0; returns the mirror and the cursor.
async fn mirror(base: &str) -> (Mirror, String) {
    let (mut rows, mut cursor) = (Mirror::new(), "0".to_owned());
    loop {
        let (status, page) = pull(base, "todos", &format!("?since={cursor}&limit=1000")).await;
        assert_eq!(status, 200, "{page}");
        for c in page["changes"].as_array().unwrap() {
            let key = c["id"].to_string();
            if c["action"] == "delete" {
                rows.remove(&key);
            } else {
                rows.insert(key, (c["id"].clone(), c["data"].clone()));
            }
        }
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            return (rows, cursor);
        }
    }
}

fn digest(mirror: &Mirror) -> Vec<String> {
    let mut d = Digest::default();
    for (id, data) in mirror.values() {
        d.add("todos", id, data);
    }
    d.hex()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let res = client().get(format!("{base}{path}")).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn server_digest(base: &str, cursor: &str) -> Vec<String> {
    let (status, body) = get(base, &format!("/api/sync/todos/digest?at={cursor}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["buckets"].as_array().unwrap().len(), BUCKETS);
    serde_json::from_value(body["buckets"].clone()).unwrap()
}

/// The buckets where two digests differ.
fn differing(a: &[String], b: &[String]) -> Vec<usize> {
    (0..BUCKETS).filter(|&i| a[i] != b[i]).collect()
}

/// Replaces the mirror's rows of `buckets` with the server's at `cursor`; returns how
/// many rows came.
async fn repair(base: &str, cursor: &str, mirror: &mut Mirror, buckets: &[usize]) -> usize {
    let list: Vec<String> = buckets.iter().map(usize::to_string).collect();
    let (status, body) = get(
        base,
        &format!(
            "/api/sync/todos/rows?at={cursor}&buckets={}",
            list.join(",")
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    mirror.retain(|_, (id, _)| !buckets.contains(&bucket(id)));
    let rows = body["rows"].as_array().unwrap();
    for r in rows {
        assert!(
            buckets.contains(&bucket(&r["id"])),
            "only the asked buckets: {r}"
        );
        mirror.insert(r["id"].to_string(), (r["id"].clone(), r["data"].clone()));
    }
    rows.len()
}

/// 300 todos, updated, some deleted, by the app's own SQL and the push API.
async fn history(server: &Server) {
    server
        .db
        .execute_each(
            "INSERT INTO todos (id, title) VALUES ($1, $2)",
            (0..300).map(|i| args![todo_id(&format!("r{i}")), format!("todo {i}")]),
        )
        .await;
    server
        .db
        .execute(
            "UPDATE todos SET completed = true WHERE title LIKE '%7'",
            args![],
        )
        .await;
    server
        .db
        .execute("DELETE FROM todos WHERE title LIKE '%3'", args![])
        .await;
    let body = json!({"client_id": "a", "changes": [
        {"id": todo_id("r1"), "action": "update", "hlc": hlc(0, 0xa), "data": {"title": "pushed ü"}}
    ]});
    let (status, res) = push_raw(&server.base, "todos", body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    all_numbered(&server.db).await;
}

async fn a_damaged_mirror_is_found_and_repaired_by_its_bucket_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| {
        b.compaction(Compaction::new().keep_history(Duration::ZERO).every(None))
    })
    .await;
    history(&server).await;
    let (mut rows, cursor) = mirror(&server.base).await;
    assert_eq!(rows.len(), 270);
    let theirs = server_digest(&server.base, &cursor).await;
    assert_eq!(digest(&rows), theirs, "a faithful mirror matches");

    // A row damaged in the mirror (or in transit), and a change that never arrived.
    let damaged = todo_id("r42");
    rows.get_mut(&json!(damaged).to_string()).unwrap().1["title"] = json!("todo 4 2");
    let lost = json!(todo_id("r100")).to_string();
    rows.remove(&lost);
    let buckets = differing(&digest(&rows), &theirs);
    let expected: std::collections::BTreeSet<usize> =
        [bucket(&json!(damaged)), bucket(&json!(todo_id("r100")))].into();
    assert_eq!(
        buckets
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    let fetched = repair(&server.base, &cursor, &mut rows, &buckets).await;
    assert!(
        fetched < 30,
        "only the damaged buckets came: {fetched} rows"
    );
    assert_eq!(digest(&rows), theirs, "repaired");
    assert_eq!(rows.len(), 270);

    // The state at a cursor does not change when the log is compacted or a row's
    // history erased.
    server.engine.compact().await.unwrap();
    server.engine.erase("todos", [todo_id("r1")]).await.unwrap();
    assert_eq!(server_digest(&server.base, &cursor).await, theirs);
    // A later cursor's digest moves with the writes after it.
    add_todo(&server, &todo_id("new"), "new").await;
    all_numbered(&server.db).await;
    let (rows, later) = mirror(&server.base).await;
    let now = server_digest(&server.base, &later).await;
    assert_eq!(differing(&now, &theirs), [bucket(&json!(todo_id("new")))]);
    assert_eq!(digest(&rows), now);
}
both!(a_damaged_mirror_is_found_and_repaired_by_its_bucket_alone);

async fn bad_digest_requests_get_a_4xx(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    history(&server).await;
    let (_, cursor) = mirror(&server.base).await;
    let base = &server.base;
    for (path, status) in [
        ("/api/sync/todos/digest".to_owned(), 400),
        ("/api/sync/todos/digest?at=x".to_owned(), 400),
        (format!("/api/sync/todos/digest?at={cursor}&extra=1"), 400),
        (format!("/api/sync/todos/rows?at={cursor}"), 400),
        (format!("/api/sync/todos/rows?at={cursor}&buckets=64"), 400),
        (
            format!("/api/sync/todos/rows?at={cursor}&buckets=1,,2"),
            400,
        ),
        (format!("/api/sync/todos/rows?at={cursor}&buckets=-1"), 400),
        (
            format!("/api/sync/todos/rows?at={cursor}&buckets=%2B1"),
            400,
        ),
        (format!("/api/sync/todos/rows?at={cursor}&buckets=01"), 400),
        (
            format!("/api/sync/todos/rows?at={cursor}&buckets=%201"),
            400,
        ),
        (format!("/api/sync/nope/digest?at={cursor}"), 404),
        ("/api/sync/todos/digest?at=999999".to_owned(), 409),
        ("/api/sync/todos/digest?at=5.deadbeef".to_owned(), 409),
    ] {
        let (got, body) = get(base, &path).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    // From 0 is the empty state.
    let (status, body) = get(base, "/api/sync/todos/digest?at=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["buckets"][0], "0".repeat(32));
}
both!(bad_digest_requests_get_a_4xx);

/// Pulls from `cursor` to the end into `mirror`; returns the changes and the new cursor.
async fn pull_into(base: &str, mirror: &mut Mirror, cursor: &str) -> (usize, String) {
    let (status, page) = pull(base, "todos", &format!("?since={cursor}&limit=1000")).await;
    assert_eq!(status, 200, "{page}");
    let changes = page["changes"].as_array().unwrap();
    for c in changes {
        let key = c["id"].to_string();
        if c["action"] == "delete" {
            mirror.remove(&key);
        } else {
            mirror.insert(key, (c["id"].clone(), c["data"].clone()));
        }
    }
    assert_eq!(page["has_more"], false);
    (changes.len(), page["cursor"].as_str().unwrap().to_owned())
}

/// The table as a mirror would hold it, to compare.
async fn table(base: &str) -> Vec<String> {
    let (rows, _) = mirror(base).await;
    digest(&rows)
}

/// The version of a row's latest entry.
async fn latest(db: &Db, id: String) -> i64 {
    db.scalar(
        "SELECT max(version) FROM _rhtmx_sync_log WHERE entity_id = $1",
        args![id],
    )
    .await
}

async fn a_damaged_log_is_corrected_by_an_audit_and_clients_refetch_those_rows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    history(&server).await;
    let (mut early, early_cursor) = mirror(&server.base).await;
    let truth = digest(&early);
    assert_eq!(
        server.engine.audit().await.unwrap(),
        0,
        "in step after normal writes"
    );

    // Two rows' latest entries damaged by hand: one altered, one removed.
    let altered = latest(&server.db, todo_id("r42")).await;
    server
        .db
        .execute(
            "UPDATE _rhtmx_sync_log SET data = replace(data, 'todo 42', 'evil') WHERE version = $1",
            args![altered],
        )
        .await;
    let removed = latest(&server.db, todo_id("r50")).await;
    server
        .db
        .execute(
            "DELETE FROM _rhtmx_sync_log WHERE version = $1",
            args![removed],
        )
        .await;
    // A client that pulls now mirrors the damaged log; the state digest agrees with it
    // (it is the log's state): only the audit, which reads the table, can tell.
    let (mut late, late_cursor) = mirror(&server.base).await;
    assert_ne!(digest(&late), truth);
    assert_eq!(server.engine.audit().await.unwrap(), 2);
    all_numbered(&server.db).await;
    // Each client refetches those two rows and nothing else, and holds the table.
    let (n, _) = pull_into(&server.base, &mut early, &early_cursor).await;
    assert_eq!(n, 2);
    let (n, _) = pull_into(&server.base, &mut late, &late_cursor).await;
    assert_eq!(n, 2);
    assert_eq!(digest(&early), truth);
    assert_eq!(digest(&late), truth);
    assert_eq!(table(&server.base).await, truth);
    assert_eq!(server.engine.audit().await.unwrap(), 0);
}
both!(a_damaged_log_is_corrected_by_an_audit_and_clients_refetch_those_rows);

async fn a_damaged_log_is_found_by_the_next_digest_request_and_only_those_rows_refetched(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    history(&server).await;
    let (mut early, early_cursor) = mirror(&server.base).await;
    let truth = digest(&early);

    // Four rows' latest entries damaged on the server: data altered, the entry
    // removed, the entry moved to another row, the data no longer JSON.
    let altered = latest(&server.db, todo_id("r42")).await;
    server
        .db
        .execute(
            "UPDATE _rhtmx_sync_log SET data = replace(data, 'todo 42', 'evil') WHERE version = $1",
            args![altered],
        )
        .await;
    let removed = latest(&server.db, todo_id("r50")).await;
    server
        .db
        .execute(
            "DELETE FROM _rhtmx_sync_log WHERE version = $1",
            args![removed],
        )
        .await;
    let moved = latest(&server.db, todo_id("r60")).await;
    server
        .db
        .execute(
            "UPDATE _rhtmx_sync_log SET entity_id = $1 WHERE version = $2",
            args![todo_id("ghost"), moved],
        )
        .await;
    let garbled = latest(&server.db, todo_id("r70")).await;
    server
        .db
        .execute(
            "UPDATE _rhtmx_sync_log SET data = '{\"title\": \"todo 7' WHERE version = $1",
            args![garbled],
        )
        .await;
    let (mut late, late_cursor) = mirror(&server.base).await;
    assert_ne!(
        digest(&late),
        truth,
        "a client pulling now mirrors the damage"
    );

    // The client's check after that pull: the digest of the log agrees with it, but
    // the server compared its log with the table and logged what differed: the three
    // rows, and a delete of the row that never was.
    let (status, body) = get(
        &server.base,
        &format!("/api/sync/todos/digest?at={late_cursor}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["corrected"], 5, "{body}");
    all_numbered(&server.db).await;
    // Each client refetches those rows and nothing else, and holds the table.
    let (n, cursor) = pull_into(&server.base, &mut late, &late_cursor).await;
    assert_eq!(n, 5);
    assert_eq!(digest(&late), truth);
    let (n, _) = pull_into(&server.base, &mut early, &early_cursor).await;
    assert_eq!(n, 5);
    assert_eq!(digest(&early), truth);
    // In step again: nothing more to correct, for the check or the audit.
    let (_, body) = get(&server.base, &format!("/api/sync/todos/digest?at={cursor}")).await;
    assert_eq!(body["corrected"], 0, "{body}");
    assert_eq!(server.engine.audit().await.unwrap(), 0);
}
both!(a_damaged_log_is_found_by_the_next_digest_request_and_only_those_rows_refetched);

/// Writes of every kind commit while clients check: the check reads the log and the
/// table in one snapshot, so it never takes a write in flight for damage.
async fn the_check_finds_nothing_to_correct_while_writes_commit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    history(&server).await;
    let writer = {
        let db = server.db.clone();
        let base = server.base.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let id = todo_id(&format!("w{i}"));
                db.execute(
                    "INSERT INTO todos (id, title) VALUES ($1, $2)",
                    args![id.clone(), format!("w {i}")],
                )
                .await;
                db.execute(
                    "UPDATE todos SET title = title || '!' WHERE id = $1",
                    args![todo_id(&format!("r{}", i * 3 % 300))],
                )
                .await;
                let body = json!({"client_id": "w", "changes": [{"id": id, "action": "update",
                    "hlc": hlc(i, 0xb), "data": {"completed": true}}]});
                let (status, res) = push_raw(&base, "todos", body.to_string()).await;
                assert_eq!(status, 200, "{res}");
                if i % 4 == 0 {
                    db.execute("DELETE FROM todos WHERE id = $1", args![id])
                        .await;
                }
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() {
        let (_, cursor) = mirror(&server.base).await;
        let (status, body) =
            get(&server.base, &format!("/api/sync/todos/digest?at={cursor}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["corrected"], 0,
            "a write in flight is no damage: {body}"
        );
        checks += 1;
    }
    writer.await.unwrap();
    assert!(checks > 1, "the checks ran while the writes did");
    assert_eq!(server.engine.audit().await.unwrap(), 0);
}
both!(the_check_finds_nothing_to_correct_while_writes_commit);

/// A cursor a page of a first sync ended on below the compaction horizon resumes, but
/// the state at it is no longer in the log: its digest is unknown, not a reset.
async fn a_digest_at_a_cursor_below_the_horizon_is_unknown_not_a_reset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| {
        b.compaction(Compaction::new().keep_history(Duration::ZERO).every(None))
    })
    .await;
    history(&server).await;
    server.engine.compact().await.unwrap();
    let (status, page) = pull(&server.base, "todos", "?since=0&limit=7").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["has_more"], true);
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let (status, body) = get(&server.base, &format!("/api/sync/todos/digest?at={cursor}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["buckets"], Value::Null, "{body}");
    let (status, body) = get(
        &server.base,
        &format!("/api/sync/todos/rows?at={cursor}&buckets=0,1,2"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], false, "{body}");
    // The cursor still resumes: the first sync goes on.
    let (status, page) = pull(&server.base, "todos", &format!("?since={cursor}")).await;
    assert_eq!(status, 200, "{page}");
}
both!(a_digest_at_a_cursor_below_the_horizon_is_unknown_not_a_reset);

/// A member edited into an entry (no column of the table) is damage like any other:
/// the next digest request corrects it.
async fn a_member_edited_into_an_entry_is_corrected_at_the_next_check(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    history(&server).await;
    let (_, cursor) = mirror(&server.base).await;
    let entry = latest(&server.db, todo_id("r42")).await;
    server
        .db
        .execute(
            "UPDATE _rhtmx_sync_log SET data = replace(data, '\"title\"', \
             '\"injected\": \"<img src=x onerror=alert(1)>\", \"title\"') WHERE version = $1",
            args![entry],
        )
        .await;
    let (_, body) = get(&server.base, &format!("/api/sync/todos/digest?at={cursor}")).await;
    assert_eq!(body["corrected"], 1, "{body}");
    all_numbered(&server.db).await;
    let (_, page) = pull(&server.base, "todos", &format!("?since={cursor}")).await;
    assert!(!page.to_string().contains("injected"), "{page}");
    assert_eq!(page["changes"].as_array().unwrap().len(), 1, "{page}");
}
both!(a_member_edited_into_an_entry_is_corrected_at_the_next_check);
