//! Compaction's edges, on SQLite and on PostgreSQL: what a kept conflict report, a
//! restoring entity, a row written thousands of times and unbounded windows do to a pass.

mod common;

use std::time::Duration;

use common::*;
use rhtmx_sync::{Compaction, SyncEngineBuilder};
use serde_json::{json, Value};

/// Compaction that keeps no history and no tombstones, only conflict reports.
fn keeping_reports(b: SyncEngineBuilder) -> SyncEngineBuilder {
    b.compaction(
        Compaction::new()
            .keep_history(Duration::ZERO)
            .keep_tombstones(Duration::ZERO)
            .keep_conflicts(Duration::from_secs(24 * 3600))
            .every(None),
    )
}

/// Compaction that keeps no history (tombstones as by default).
fn eager(b: SyncEngineBuilder) -> SyncEngineBuilder {
    b.compaction(Compaction::new().keep_history(Duration::ZERO).every(None))
}

async fn push(base: &str, client: &str, changes: Value) -> Value {
    let body = json!({"client_id": client, "changes": changes});
    let (status, res) = push_raw(base, "todos", body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    res
}

/// The rows a client pulling from 0 ends with: `id -> title`.
async fn pulled(base: &str) -> Vec<(String, String)> {
    let (status, page) = pull(base, "todos", "?since=0&limit=10000").await;
    assert_eq!(status, 200, "{page}");
    let mut rows = std::collections::BTreeMap::new();
    for c in page["changes"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap().to_owned();
        match c["data"]["title"].as_str() {
            Some(title) if c["action"] != "delete" => rows.insert(id, title.to_owned()),
            _ => rows.remove(&id),
        };
    }
    rows.into_iter().collect()
}

async fn create_r1(base: &str) -> i64 {
    let res = push(
        base,
        "a",
        json!([{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                "data": {"title": "milk", "completed": false}}]),
    )
    .await;
    res["version"].as_i64().unwrap()
}

async fn a_deleted_row_with_a_kept_conflict_report_stays_deleted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, keeping_reports).await;
    let base = create_r1(&server.base).await;
    for (client, ms, title) in [("a", 20, "oat milk"), ("b", 10, "soy milk")] {
        push(
            &server.base,
            client,
            json!([{"id": "r1", "action": "update", "hlc": hlc(ms, 0xa),
                    "data": {"title": title}, "client_version": base}]),
        )
        .await;
    }
    server
        .db
        .execute("DELETE FROM todos WHERE id = 'r1'", args![])
        .await;
    all_numbered(&server.db).await;
    server.engine.compact().await.unwrap();
    // The report's entry stays a day; the tombstone after it stays with it.
    assert_eq!(pulled(&server.base).await, []);
    let figures = server.engine.figures().await.unwrap();
    assert_eq!(figures.recent_conflicts.len(), 1, "{figures:?}");
}
both!(a_deleted_row_with_a_kept_conflict_report_stays_deleted);

async fn a_compacted_deleted_row_still_comes_back_where_delete_does_not_win(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| eager(b).delete_wins("todos", false)).await;
    let base = create_r1(&server.base).await;
    push(
        &server.base,
        "a",
        json!([{"id": "r1", "action": "update", "hlc": hlc(5, 0xa),
                "data": {"title": "oat milk"}, "client_version": base}]),
    )
    .await;
    push(
        &server.base,
        "a",
        json!([{"id": "r1", "action": "delete", "hlc": hlc(20, 0xa), "client_version": base + 1}]),
    )
    .await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(
        report.removed, 1,
        "the create goes, the last values stay: {report:?}"
    );
    // An update made after the delete by a client that had not seen it brings the row
    // back as it was, with the update's field.
    let res = push(
        &server.base,
        "b",
        json!([{"id": "r1", "action": "update", "hlc": hlc(30, 0xb),
                "data": {"completed": true}, "client_version": base + 1}]),
    )
    .await;
    assert_eq!(res["applied"], json!(["r1"]), "{res}");
    assert_eq!(
        todos(&server.db).await,
        [("r1".to_owned(), "oat milk".to_owned(), true)]
    );
}
both!(a_compacted_deleted_row_still_comes_back_where_delete_does_not_win);

async fn a_row_written_thousands_of_times_is_compacted_in_slices(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager).await;
    let base = create_r1(&server.base).await;
    // One early change of `completed`, then thousands of the title.
    server
        .db
        .execute("UPDATE todos SET completed = true WHERE id = 'r1'", args![])
        .await;
    server
        .db
        .execute_each(
            "UPDATE todos SET title = $1 WHERE id = 'r1'",
            (0..4500).map(|i| args![format!("title {i}")]),
        )
        .await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(report.removed, 4501, "{report:?}");
    assert_eq!(report.rows, 1, "{report:?}");
    assert!(
        report.transactions >= 3,
        "one row's 4,502 entries in slices: {report:?}"
    );
    let left: i64 = server
        .db
        .scalar("SELECT count(*) FROM _rhtmx_sync_log", args![])
        .await;
    assert_eq!(left, 1);
    // The first slice's change of `completed` is still known to the merge: a client
    // that changed both fields on the first version loses both, and is told so.
    let res = push(
        &server.base,
        "a",
        json!([{"id": "r1", "action": "update", "hlc": hlc(-60_000, 0xa),
                "data": {"title": "mine", "completed": false}, "client_version": base}]),
    )
    .await;
    let fields = res["conflicts"][0]["fields"].as_object().unwrap();
    assert_eq!(
        fields.keys().collect::<Vec<_>>(),
        ["completed", "title"],
        "{res}"
    );
    assert_eq!(
        todos(&server.db).await,
        [("r1".to_owned(), "title 4499".to_owned(), true)]
    );
}
both!(a_row_written_thousands_of_times_is_compacted_in_slices);

async fn windows_of_any_length_are_accepted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let forever = |b: SyncEngineBuilder| {
        b.compaction(
            Compaction::new()
                .keep_history(Duration::MAX)
                .keep_tombstones(Duration::MAX)
                .keep_conflicts(Duration::MAX)
                .keep_replays(Duration::MAX)
                .every(None),
        )
    };
    let server = start_with(&db, forever).await;
    create_r1(&server.base).await;
    server
        .db
        .execute("UPDATE todos SET title = 'x'", args![])
        .await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!((report.removed, report.horizon), (0, 0), "{report:?}");
}
both!(windows_of_any_length_are_accepted);

async fn a_transaction_that_ran_long_does_not_move_the_horizon_past_newer_entries(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let hour = |b: SyncEngineBuilder| {
        b.compaction(
            Compaction::new()
                .keep_history(Duration::from_secs(3600))
                .every(None),
        )
    };
    let server = start_with(&db, hour).await;
    let insert = "INSERT INTO todos (id, title) VALUES ($1, 'x')";
    server.db.execute(insert, args!["recent"]).await;
    server.db.execute(insert, args!["long"]).await;
    all_numbered(&server.db).await;
    // On PostgreSQL an entry is written when its transaction began and numbered when it
    // committed: one that ran for a day comes after a minute-old entry.
    let a_day_ago = match backend {
        Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')",
        Backend::Postgres => "now() - interval '1 day'",
    };
    server
        .db
        .execute(
            &format!(
                "UPDATE _rhtmx_sync_log SET created_at = {a_day_ago} WHERE entity_id = 'long'"
            ),
            args![],
        )
        .await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(
        report.horizon, 0,
        "the minute-old entry stays above: {report:?}"
    );
}
both!(a_transaction_that_ran_long_does_not_move_the_horizon_past_newer_entries);
