//! Conflict resolution over real HTTP, on SQLite and on PostgreSQL: the push API's
//! field-level merge by HLC, each strategy, tombstones, conflicts on the event stream,
//! and the handler API for replayed forms.

mod common;

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::routing::put;
use axum::{Form, Json, Router};
use common::*;
use rhtmx_sync::conflict::FieldConflict;
use rhtmx_sync::{Hlc, SyncContext, SyncEngine, SyncStrategy, Syncable};
use serde_json::{json, Value};

const A: u64 = 0xa;
const B: u64 = 0xb;
const C: u64 = 0xc;

/// Pushes `changes` as `client` and expects 200.
async fn push(base: &str, entity: &str, client: &str, changes: Value) -> Value {
    let body = json!({"client_id": client, "changes": changes});
    let (status, res) = push_raw(base, entity, body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    res
}

/// Creates the table `notes` (integer keys the database generates, a counter).
async fn create_notes(db: &TestDb) {
    let key = match db.backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres => "bigserial PRIMARY KEY",
    };
    let pool = db.connect().await;
    pool.execute(
        &format!("CREATE TABLE notes (id {key}, body TEXT NOT NULL, likes INTEGER NOT NULL)"),
        args![],
    )
    .await;
    pool.close().await;
}

/// Creates `r1` as client `a` and returns the version it was created at.
async fn create_r1(base: &str, at: &str) -> i64 {
    let res = push(
        base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "create", "hlc": at,
                "data": {"title": "milk", "completed": false}}]),
    )
    .await;
    assert_eq!(res["conflicts"], json!([]));
    res["version"].as_i64().unwrap()
}

async fn fields_changed_on_both_sides_go_to_the_later_user_action(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let t0 = hlc(0, A);
    let v1 = create_r1(&server.base, &t0).await;
    // B renames at +20 ms, having seen v1.
    let hb = hlc(20, B);
    let res = push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "oat milk"},
                "hlc": hb, "client_version": v1}]),
    )
    .await;
    assert_eq!(res["conflicts"], json!([]));

    // A acted at +10 ms, offline, on v1: its title loses, its `completed` applies.
    let ha = hlc(10, A);
    let res = push(
        &server.base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "update", "data": {"title": "soy milk", "completed": true},
                "hlc": ha, "client_version": v1}]),
    )
    .await;
    let version = res["version"].as_i64().unwrap();
    assert_eq!(res["applied"], json!(["r1"]));
    assert_eq!(
        res["conflicts"],
        json!([{
            "entity": "todos", "id": "r1", "action": "update",
            "reason": "concurrent_update", "outcome": "server", "strategy": "last_write_wins",
            "fields": {"title": {"client": "soy milk", "server": "oat milk",
                                 "resolved": "oat milk", "outcome": "server", "server_hlc": hb}},
            "client_hlc": ha, "server_hlc": hb, "client_version": v1,
            "version": version, "client_id": "a"
        }])
    );
    assert_eq!(
        todos(&server.db).await,
        [("r1".into(), "oat milk".into(), true)]
    );

    // C acted last (+30 ms), also on v1: its title wins.
    let hc = hlc(30, C);
    let res = push(
        &server.base,
        "todos",
        "c",
        json!([{"id": "r1", "action": "update", "data": {"title": "rice milk"},
                "hlc": hc, "client_version": v1}]),
    )
    .await;
    let conflict = &res["conflicts"][0];
    assert_eq!(conflict["outcome"], "client");
    assert_eq!(conflict["fields"]["title"]["resolved"], "rice milk");
    assert_eq!(conflict["server_hlc"], json!(hb));
    assert_eq!(todos(&server.db).await[0].1, "rice milk");
    // The log replays to the table, and every entry carries an HLC.
    assert_eq!(replay_log(&server.db).await, todos(&server.db).await);
    let (_, page) = pull(&server.base, "todos", "").await;
    let hlcs: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hlc"].as_str().unwrap())
        .collect();
    assert_eq!(hlcs[0], t0);
    assert_eq!(*hlcs.last().unwrap(), hc);
}
both!(fields_changed_on_both_sides_go_to_the_later_user_action);

async fn client_wins_and_server_wins_per_entity(backend: Backend) {
    for (strategy, expected) in [
        (SyncStrategy::ClientWins, "late"),
        (SyncStrategy::ServerWins, "first"),
    ] {
        let db = TestDb::new(backend).await;
        let server = start_with(&db, |b| b.strategy("todos", strategy)).await;
        let v1 = create_r1(&server.base, &hlc(0, A)).await;
        let first = json!([{"id": "r1", "action": "update", "data": {"title": "first"},
                            "hlc": hlc(50, B), "client_version": v1}]);
        push(&server.base, "todos", "b", first).await;
        // Acted earlier, arrives later.
        let late = json!([{"id": "r1", "action": "update", "data": {"title": "late"},
                           "hlc": hlc(10, A), "client_version": v1}]);
        let res = push(&server.base, "todos", "a", late).await;
        assert_eq!(res["conflicts"][0]["strategy"], strategy.name());
        assert_eq!(todos(&server.db).await[0].1, expected, "{strategy:?}");
    }
}
both!(client_wins_and_server_wins_per_entity);

async fn a_custom_resolver_merges_counters_and_text(backend: Backend) {
    let db = TestDb::new(backend).await;
    create_notes(&db).await;
    // Counters add both sides' increments since the base; text keeps both versions.
    let merge = |c: &FieldConflict<'_>| match (c.field, c.server, c.client) {
        ("likes", server, client) => {
            let n = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
            json!(n(Some(server)) + n(Some(client)) - n(c.base))
        }
        (_, Value::String(s), Value::String(k)) => json!(format!("{s} / {k}")),
        _ => c.client.clone(),
    };
    let server = start_with(&db, |b| {
        b.entity_named("notes")
            .writable("notes")
            .resolver("notes", merge)
    })
    .await;
    let res = push(
        &server.base,
        "notes",
        "a",
        json!([{"id": 1, "action": "create", "data": {"body": "hi", "likes": 10}, "hlc": hlc(0, A)}]),
    )
    .await;
    let v1 = res["version"].as_i64().unwrap();
    for (client, node, likes, body) in [("a", A, 13, "hello"), ("b", B, 15, "hey")] {
        let change = json!([{"id": 1, "action": "update", "hlc": hlc(10, node),
                             "client_version": v1, "data": {"likes": likes, "body": body}}]);
        push(&server.base, "notes", client, change).await;
    }
    let row: (String, i64) = server
        .db
        .fetch_one(
            "SELECT body, CAST(likes AS BIGINT) FROM notes WHERE id = 1",
            args![],
        )
        .await;
    assert_eq!(row, ("hello / hey".to_owned(), 18));
    let (_, page) = pull(&server.base, "notes", "").await;
    let last = page["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["conflict"]["outcome"], "merged");
    assert_eq!(last["conflict"]["strategy"], "custom");
    assert_eq!(last["conflict"]["fields"]["likes"]["resolved"], 18);

    // A resolver's value that does not fit the column fails the push, changing nothing.
    let bad = |_: &FieldConflict<'_>| json!(null);
    let db2 = TestDb::new(backend).await;
    create_notes(&db2).await;
    let server = start_with(&db2, |b| {
        b.entity_named("notes")
            .writable("notes")
            .resolver("notes", bad)
    })
    .await;
    let res = push(
        &server.base,
        "notes",
        "a",
        json!([{"id": 1, "action": "create", "data": {"body": "x", "likes": 0}, "hlc": hlc(0, A)}]),
    )
    .await;
    let v1 = res["version"].as_i64().unwrap();
    push(
        &server.base,
        "notes",
        "b",
        json!([{"id": 1, "action": "update", "data": {"body": "b"}, "hlc": hlc(5, B), "client_version": v1}]),
    )
    .await;
    let head = server.engine.head().await.unwrap();
    let body = json!({"changes": [{"id": 1, "action": "update", "data": {"body": "a"},
                                   "hlc": hlc(9, A), "client_version": v1}]});
    let (status, res) = push_raw(&server.base, "notes", body.to_string()).await;
    assert_eq!(
        (status, &res["error"]),
        (500, &json!("internal server error"))
    );
    assert_eq!(server.engine.head().await.unwrap(), head);
}
both!(a_custom_resolver_merges_counters_and_text);

async fn deletes_win_and_tombstones_keep_rows_dead(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let created = hlc(0, A);
    let v1 = create_r1(&server.base, &created).await;
    // B renames; A, who had only seen v1, deletes: the delete wins, and says so.
    push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "new"}, "hlc": hlc(30, B), "client_version": v1}]),
    )
    .await;
    let deleted = hlc(20, A);
    let res = push(
        &server.base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "delete", "hlc": deleted, "client_version": v1}]),
    )
    .await;
    let c = &res["conflicts"][0];
    assert_eq!(
        (&c["reason"], &c["outcome"], &c["strategy"]),
        (
            &json!("concurrent_update"),
            &json!("deleted"),
            &json!("delete_wins")
        )
    );
    assert_eq!(c["fields"]["title"]["server"], "new");
    assert!(todos(&server.db).await.is_empty());

    // A late update (even one made after the delete) does not resurrect the row.
    let res = push(
        &server.base,
        "todos",
        "c",
        json!([{"id": "r1", "action": "update", "data": {"title": "late"}, "hlc": hlc(40, C), "client_version": v1}]),
    )
    .await;
    assert_eq!(res["applied"], json!([]));
    assert_eq!(res["conflicts"][0]["reason"], "deleted");
    // The delete removed B's later rename: it is logged one millisecond after it, on
    // A's node (causal stamping), so every other database orders it after the rename too.
    let renamed: Hlc = hlc(30, B).parse().unwrap();
    let stamped = Hlc::new(renamed.physical_ms() + 1, 99_999, A);
    assert_eq!(
        res["conflicts"][0]["server_hlc"],
        json!(stamped.to_string())
    );
    assert!(deleted < stamped.to_string());
    // Nor does a late replay of a create made before the delete.
    let res = push(
        &server.base,
        "todos",
        "c",
        json!([{"id": "r1", "action": "create", "data": {"title": "again"}, "hlc": hlc(5, C)}]),
    )
    .await;
    assert_eq!(res["conflicts"][0]["reason"], "deleted");
    assert!(todos(&server.db).await.is_empty());
    assert_eq!(replay_log(&server.db).await, Vec::new());

    // A delete that arrives before the create it follows leaves a tombstone.
    push(
        &server.base,
        "todos",
        "a",
        json!([{"id": "r2", "action": "delete", "hlc": hlc(50, A), "client_version": 0}]),
    )
    .await;
    let res = push(
        &server.base,
        "todos",
        "a",
        json!([{"id": "r2", "action": "create", "data": {"title": "x"}, "hlc": hlc(45, A)}]),
    )
    .await;
    assert_eq!(res["conflicts"][0]["reason"], "deleted");
    assert!(todos(&server.db).await.is_empty());
}
both!(deletes_win_and_tombstones_keep_rows_dead);

async fn without_delete_wins_the_later_action_wins(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.delete_wins("todos", false)).await;
    let v1 = create_r1(&server.base, &hlc(0, A)).await;
    push(
        &server.base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "delete", "hlc": hlc(20, A), "client_version": v1}]),
    )
    .await;
    // An update made after the delete, by someone who had not seen it, restores the row.
    let res = push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"completed": true}, "hlc": hlc(30, B), "client_version": v1}]),
    )
    .await;
    assert_eq!(res["applied"], json!(["r1"]));
    assert_eq!(res["conflicts"][0]["outcome"], "client");
    assert_eq!(
        todos(&server.db).await,
        [("r1".into(), "milk".into(), true)]
    );
}
both!(without_delete_wins_the_later_action_wins);

async fn a_replayed_push_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.strategy("todos", SyncStrategy::ClientWins)).await;
    let v1 = create_r1(&server.base, &hlc(0, A)).await;
    let first = json!([{"id": "r1", "action": "update", "data": {"title": "a"}, "hlc": hlc(10, A), "client_version": v1}]);
    push(&server.base, "todos", "a", first.clone()).await;
    push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "b"}, "hlc": hlc(20, B), "client_version": v1 + 1}]),
    )
    .await;
    let head = server.engine.head().await.unwrap();
    // The first push arrives again (a retry whose answer was lost), without a client id:
    // even under ClientWins it is recognised by what it is and does not undo B's later
    // change; it is reported as a duplicate, not as applied.
    let (status, res) =
        push_raw(&server.base, "todos", json!({"changes": first}).to_string()).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(
        (&res["applied"], &res["duplicates"], &res["conflicts"]),
        (&json!([]), &json!(["r1"]), &json!([]))
    );
    assert_eq!(server.engine.head().await.unwrap(), head);
    assert_eq!(todos(&server.db).await[0].1, "b");
}
both!(a_replayed_push_changes_nothing);

/// A device whose clock is 20 h fast neither wins every conflict for 20 h nor drags
/// the server's clock (and so every tab's) forward; at 36 h its queued edit is still
/// applied, never refused.
async fn an_hlc_far_ahead_is_clamped_to_the_server_clock_and_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let v1 = create_r1(&server.base, &hlc(0, A)).await;
    let hour = 3_600_000;
    let res = push(
        &server.base,
        "todos",
        "fast",
        json!([{"id": "r1", "action": "update", "data": {"title": "from the fast device"},
                "hlc": hlc(20 * hour, C), "client_version": v1}]),
    )
    .await;
    assert_eq!(res["applied"], json!(["r1"]), "{res}");
    assert_eq!(res["clamped"], json!(["r1"]), "{res}");
    let (_, page) = pull(&server.base, "todos", "").await;
    let stamped: Hlc = page["changes"][1]["hlc"].as_str().unwrap().parse().unwrap();
    let now = server.engine.clock().now();
    assert!(
        stamped.physical_ms() < now.physical_ms() + 60_000,
        "the change carries the server's time, not the device's: {stamped}"
    );
    assert!(
        now.physical_ms() < stamped.physical_ms() + hour as u64,
        "the clock was not dragged"
    );
    // A later edit from a correct clock, made after it, wins the same field.
    let later = server.engine.clock().now();
    let res = push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "from b, later"},
                "hlc": later.to_string(), "client_version": v1}]),
    )
    .await;
    assert_eq!(res["applied"], json!(["r1"]), "{res}");
    assert_eq!(todos(&server.db).await[0].1, "from b, later");
    // 36 h ahead, through the handler API too: applied and reported, not refused.
    let ctx = SyncContext::new().with_hlc(hlc(36 * hour, C).parse().unwrap());
    let done = server
        .engine
        .write::<app::Todo>(&ctx)
        .update("r1", [("completed", true)])
        .await
        .unwrap();
    assert!(done.applied());
    assert!(done.clamped.unwrap() > std::time::Duration::from_secs(35 * 3600));
    // A malformed HLC is still a bad request that changes nothing.
    let head = server.engine.head().await.unwrap();
    let body = json!({"changes": [{"id": "r1", "action": "delete", "hlc": "tomorrow"}]});
    let (got, res) = push_raw(&server.base, "todos", body.to_string()).await;
    assert_eq!(got, 422, "{res}");
    assert!(
        res["error"].as_str().unwrap().starts_with("changes[0]: "),
        "{res}"
    );
    assert_eq!(server.engine.head().await.unwrap(), head);
}
both!(an_hlc_far_ahead_is_clamped_to_the_server_clock_and_reported);

/// Two different writes that share an HLC — two `engine.write` calls in one handler, or
/// a create and an update in one push — are both applied; only the very same change
/// sent again is a duplicate, and it is reported as one, never as applied.
async fn writes_sharing_an_hlc_are_all_applied_and_only_true_replays_are_duplicates(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let at = hlc(5, A);
    let batch = json!([
        {"id": "r1", "action": "create", "data": {"title": "first"}, "hlc": at},
        {"id": "r1", "action": "update", "data": {"title": "second"}, "hlc": at, "client_version": 0},
        {"id": "r2", "action": "create", "data": {"title": "other"}, "hlc": at},
        {"id": "r2", "action": "delete", "hlc": at, "client_version": 0},
        {"id": "r2", "action": "create", "data": {"title": "again"}, "hlc": at},
    ]);
    let res = push(&server.base, "todos", "a", batch.clone()).await;
    assert_eq!(
        res["applied"],
        json!(["r1", "r1", "r2", "r2", "r2"]),
        "{res}"
    );
    assert_eq!(res["duplicates"], json!([]));
    assert_eq!(
        todos(&server.db).await,
        [
            ("r1".into(), "second".into(), false),
            ("r2".into(), "again".into(), false)
        ]
    );
    // The same push again: every change is a duplicate, nothing is applied or logged.
    let head = server.engine.head().await.unwrap();
    let res = push(&server.base, "todos", "a", batch).await;
    assert_eq!(res["applied"], json!([]), "{res}");
    assert_eq!(res["duplicates"], json!(["r1", "r1", "r2", "r2", "r2"]));
    assert_eq!(server.engine.head().await.unwrap(), head);
    // The same HLC from another client is another change.
    let res = push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "b's"}, "hlc": at}]),
    )
    .await;
    assert_eq!(res["applied"], json!(["r1"]), "{res}");

    // Two writes in one handler share the request's context, and so its HLC.
    let ctx = SyncContext::new()
        .with_hlc(hlc(6, A).parse().unwrap())
        .with_client_id("tab")
        .with_base_version(server.engine.head().await.unwrap());
    let writer = server.engine.write::<app::Todo>(&ctx);
    let first = writer.update("r1", [("title", "one")]).await.unwrap();
    let second = writer.update("r1", [("title", "two")]).await.unwrap();
    assert!(first.applied() && second.applied(), "{second:?}");
    assert_eq!(todos(&server.db).await[0].1, "two");
    let back = writer.update("r1", [("title", "one")]).await.unwrap();
    assert!(
        back.applied(),
        "the same write again later in a request is a write: {back:?}"
    );
    assert_eq!(todos(&server.db).await[0].1, "one");
    // The request replayed: a new context from the same headers, the same writes.
    let replayed = SyncContext::new()
        .with_hlc(hlc(6, A).parse().unwrap())
        .with_client_id("tab")
        .with_base_version(ctx.base_version.unwrap());
    let writer = server.engine.write::<app::Todo>(&replayed);
    for title in ["one", "two", "one"] {
        let again = writer.update("r1", [("title", title)]).await.unwrap();
        assert!(again.duplicate() && !again.applied(), "{again:?}");
    }
    assert_eq!(todos(&server.db).await[0].1, "one");

    // In one push: [a, b, a] with one HLC ends at a; the same push again changes nothing.
    let at = hlc(7, A);
    let batch = json!([
        {"id": "r1", "action": "update", "data": {"title": "a"}, "hlc": at},
        {"id": "r1", "action": "update", "data": {"title": "b"}, "hlc": at},
        {"id": "r1", "action": "update", "data": {"title": "a"}, "hlc": at},
    ]);
    let res = push(&server.base, "todos", "a", batch.clone()).await;
    assert_eq!(res["applied"], json!(["r1", "r1", "r1"]), "{res}");
    assert_eq!(todos(&server.db).await[0].1, "a");
    let res = push(&server.base, "todos", "a", batch).await;
    assert_eq!(res["duplicates"], json!(["r1", "r1", "r1"]), "{res}");
    assert_eq!(todos(&server.db).await[0].1, "a");
}
both!(writes_sharing_an_hlc_are_all_applied_and_only_true_replays_are_duplicates);

async fn conflicts_ride_on_their_change_in_the_event_stream_and_resume(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let v1 = create_r1(&server.base, &hlc(0, A)).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    push(
        &server.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "b"}, "hlc": hlc(20, B), "client_version": v1}]),
    )
    .await;
    // A's older rename loses entirely: nothing changes in the table, but the
    // resolution is logged as a change that carries the conflict.
    let ha = hlc(10, A);
    let res = push(
        &server.base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "update", "data": {"title": "a"}, "hlc": ha, "client_version": v1}]),
    )
    .await;
    let events = sse.take(2).await;
    assert!(events[0].data.get("conflict").is_none());
    let e = &events[1];
    assert_eq!(
        e.event, "message",
        "an ordinary change event, which every client applies"
    );
    assert_eq!(e.data["action"], "update");
    assert_eq!(e.data["changed"], json!([]));
    assert_eq!(e.data["data"]["title"], "b");
    assert_eq!(e.data["hlc"], json!(ha));
    assert_eq!(e.data["conflict"], res["conflicts"][0]);
    assert_eq!(e.data["conflict"]["version"].as_i64(), Some(e.version()));
    assert_eq!(e.data["conflict"]["outcome"], "server");

    // Resuming from before it delivers it again.
    let mut resumed = Sse::connect(&server.base, "", Some(&(e.version() - 1).to_string())).await;
    assert_eq!(resumed.next().await.data["conflict"], e.data["conflict"]);
    let (_, page) = pull(
        &server.base,
        "todos",
        &format!("?since={}", e.version() - 1),
    )
    .await;
    assert_eq!(page["changes"][0]["conflict"], e.data["conflict"]);
}
both!(conflicts_ride_on_their_change_in_the_event_stream_and_resume);

async fn the_apps_own_sql_writes_have_an_hlc_and_take_part(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let v1 = create_r1(&server.base, &hlc(-60_000, A)).await;
    // The app's own SQL renames: its HLC comes from when the database wrote it.
    server
        .db
        .execute(
            "UPDATE todos SET title = 'from the app' WHERE id = 'r1'",
            args![],
        )
        .await;
    let (_, page) = pull(&server.base, "todos", &format!("?since={v1}")).await;
    let app_hlc: Hlc = page["changes"][0]["hlc"].as_str().unwrap().parse().unwrap();
    assert_eq!((app_hlc.counter(), app_hlc.node()), (0, 0));
    // An offline rename from a minute ago loses to it; one from a minute ahead wins.
    for (offset, node, expected) in [(-30_000, A, "from the app"), (60_000, B, "later")] {
        let change = json!([{"id": "r1", "action": "update", "data": {"title": "later"},
                             "hlc": hlc(offset, node), "client_version": v1}]);
        push(&server.base, "todos", "x", change).await;
        assert_eq!(todos(&server.db).await[0].1, expected);
    }
}
both!(the_apps_own_sql_writes_have_an_hlc_and_take_part);

/// A handler that opts in: a rename through the merge, answering its outcome.
async fn rename(
    State(engine): State<SyncEngine>,
    sync: SyncContext,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Json<Value>, rhtmx_sync::Error> {
    let done = engine
        .write::<app::Todo>(&sync)
        .update(&id, [("title", &form["title"])])
        .await?;
    Ok(Json(
        json!({"applied": done.applied(), "conflict": done.conflict, "version": done.version}),
    ))
}

async fn remove(
    State(engine): State<SyncEngine>,
    sync: SyncContext,
    Path(id): Path<String>,
) -> Result<Json<Value>, rhtmx_sync::Error> {
    let done = engine.write::<app::Todo>(&sync).delete(&id).await?;
    Ok(Json(
        json!({"applied": done.applied(), "conflict": done.conflict}),
    ))
}

async fn replayed_forms_get_the_same_merge_through_the_handler_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let rows = Db::from(&pool);
    let engine = SyncEngine::builder(pool.clone())
        .entity::<app::Todo>()
        .writable("todos")
        .build()
        .await
        .unwrap();
    let router = Router::new()
        .route("/todos/{id}", put(rename).delete(remove))
        .with_state(engine.clone())
        .merge(engine.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let v1 = create_r1(&base, &hlc(0, A)).await;
    push(
        &base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "b"}, "hlc": hlc(20, B), "client_version": v1}]),
    )
    .await;
    let form = |title: &str, headers: &[(&str, String)]| {
        let mut req = client()
            .put(format!("{base}/todos/r1"))
            .form(&[("title", title)]);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req
    };
    // Replayed from offline: it was filled in against v1 at +10 ms, so it loses.
    let replayed = [
        ("X-Rhtmx-Base-Version", v1.to_string()),
        ("X-Rhtmx-Hlc", hlc(10, A)),
        ("X-Rhtmx-Client-Id", "a".to_owned()),
    ];
    let res: Value = form("offline", &replayed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["applied"], true);
    assert_eq!(res["conflict"]["outcome"], "server");
    assert_eq!(res["conflict"]["client_id"], "a");
    assert_eq!(todos(&rows).await[0].1, "b");
    // Without the headers a handler's write is last-arrival.
    let res: Value = form("plain", &[])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&res["applied"], &res["conflict"]),
        (&json!(true), &Value::Null)
    );
    assert_eq!(todos(&rows).await[0].1, "plain");
    // A malformed header is refused.
    let res = form("x", &[("X-Rhtmx-Hlc", "yesterday".to_owned())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    // A replayed delete beats the rename it had not seen, and reports it.
    let res: Value = client()
        .delete(format!("{base}/todos/r1"))
        .header("X-Rhtmx-Base-Version", v1.to_string())
        .header("X-Rhtmx-Hlc", hlc(5, C))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["conflict"]["outcome"], "deleted");
    assert!(todos(&rows).await.is_empty());
    // Renaming the deleted row is refused, not resurrected. (A new action, so a new HLC:
    // the same HLC again would be a replay of the first rename.)
    let again = [
        ("X-Rhtmx-Base-Version", v1.to_string()),
        ("X-Rhtmx-Hlc", hlc(40, A)),
    ];
    let res: Value = form("ghost", &again)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&res["applied"], &res["conflict"]["reason"]),
        (&json!(false), &json!("deleted"))
    );
}
both!(replayed_forms_get_the_same_merge_through_the_handler_api);

#[derive(Syncable)]
#[sync(table = "todos", strategy = Custom, delete_wins = false)]
#[allow(dead_code)]
struct CustomTodo {
    id: String,
    title: String,
}

async fn the_derive_names_custom_and_delete_wins_and_custom_needs_a_resolver(backend: Backend) {
    assert_eq!(CustomTodo::STRATEGY, SyncStrategy::Custom);
    assert!(!delete_wins::<CustomTodo>());
    assert!(delete_wins::<app::Todo>());
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let err = SyncEngine::builder(pool.clone())
        .entity::<CustomTodo>()
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no resolver"), "{err}");
    let err = SyncEngine::builder(pool.clone())
        .entity::<app::Todo>()
        .strategy("nope", SyncStrategy::ServerWins)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not registered"), "{err}");
    let keep = |c: &FieldConflict<'_>| c.server.clone();
    SyncEngine::builder(pool)
        .entity::<CustomTodo>()
        .resolver("todos", keep)
        .build()
        .await
        .unwrap();
}
both!(the_derive_names_custom_and_delete_wins_and_custom_needs_a_resolver);

/// Read through a function so the assertions are not on constants.
fn delete_wins<T: Syncable>() -> bool {
    T::DELETE_WINS
}
