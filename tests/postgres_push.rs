//! Offline writes on PostgreSQL: the push API's field merge, replays, tombstones and
//! PostgreSQL's own column types, with pushes arriving at several app instances at once.

mod common;
use common::pg;

use std::time::Duration;

use common::{hlc, pull, push_raw, serve};
use rhtmx_sync::SyncEngine;
use serde_json::{json, Value};
use sqlx::PgPool;

const TODOS: &str = "CREATE TABLE todos (id text PRIMARY KEY, title text NOT NULL, \
                     completed boolean NOT NULL DEFAULT false)";

struct Instance {
    base: String,
    engine: SyncEngine,
    _task: tokio::task::JoinHandle<()>,
}

async fn instance(pool: &PgPool, table: &str) -> Instance {
    let engine = SyncEngine::builder(pool.clone())
        .entity_named(table)
        .writable(table)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .expect("engine on PostgreSQL");
    let (base, task) = serve(engine.routes()).await;
    Instance {
        base,
        engine,
        _task: task,
    }
}

async fn push(base: &str, entity: &str, client: &str, changes: Value) -> Value {
    let body = json!({"client_id": client, "changes": changes});
    let (status, res) = push_raw(base, entity, body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    res
}

async fn todos(pool: &PgPool) -> Vec<(String, String, bool)> {
    sqlx::query_as("SELECT id, title, completed FROM todos ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The table as a client rebuilds it from a pull from 0.
async fn replayed(base: &str) -> Vec<(String, String, bool)> {
    let (status, page) = pull(base, "todos", "?since=0&limit=10000").await;
    assert_eq!(status, 200, "{page}");
    let mut rows = std::collections::BTreeMap::<String, Value>::new();
    for c in page["changes"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap().to_owned();
        match c["action"].as_str().unwrap() {
            "delete" => {
                rows.remove(&id);
            }
            _ => {
                let row = rows.entry(id).or_insert_with(|| json!({}));
                for (k, v) in c["data"].as_object().unwrap() {
                    row[k] = v.clone();
                }
            }
        }
    }
    rows.into_iter()
        .map(|(id, r)| {
            (
                id,
                r["title"].as_str().unwrap().to_owned(),
                r["completed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn fields_changed_on_both_sides_go_to_the_later_user_action() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let one = instance(&pool, "todos").await;
    let t0 = hlc(0, 0xa);
    let res = push(
        &one.base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "create", "hlc": t0,
                "data": {"title": "milk", "completed": false}}]),
    )
    .await;
    let v1 = res["version"].as_i64().unwrap();
    assert_eq!(v1, 1);
    let hb = hlc(20, 0xb);
    push(
        &one.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "oat milk"},
                "hlc": hb, "client_version": v1}]),
    )
    .await;
    // A acted at +10 ms, offline, on v1: its title loses, its `completed` applies.
    let ha = hlc(10, 0xa);
    let res = push(
        &one.base,
        "todos",
        "a",
        json!([{"id": "r1", "action": "update", "data": {"title": "soy milk", "completed": true},
                "hlc": ha, "client_version": v1}]),
    )
    .await;
    let version = res["version"].as_i64().unwrap();
    assert_eq!(
        version, 3,
        "dense versions, the conflict's entry numbered at once"
    );
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
    assert_eq!(todos(&pool).await, [("r1".into(), "oat milk".into(), true)]);
    assert_eq!(replayed(&one.base).await, todos(&pool).await);
    // The operator figures carry it with its version.
    let figures = one.engine.figures().await.unwrap();
    assert_eq!(figures.log.conflicts, 1);
    assert_eq!(figures.recent_conflicts.len(), 1);
    assert_eq!(figures.recent_conflicts[0].version, version);
    assert_eq!(figures.recent_conflicts[0].conflict.version, Some(version));
}

#[tokio::test]
async fn a_replayed_push_changes_nothing_and_a_tombstone_holds() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let one = instance(&pool, "todos").await;
    let create = json!([{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                         "data": {"title": "milk"}}]);
    push(&one.base, "todos", "a", create.clone()).await;
    let head = one.engine.head().await.unwrap();
    let again = push(&one.base, "todos", "a", create).await;
    assert_eq!(
        (&again["applied"], &again["duplicates"]),
        (&json!([]), &json!(["r1"]))
    );
    assert_eq!(one.engine.head().await.unwrap(), head);
    // Deleted by the app's own SQL; an older offline update must not bring it back.
    sqlx::query("DELETE FROM todos WHERE id = 'r1'")
        .execute(&pool)
        .await
        .unwrap();
    let res = push(
        &one.base,
        "todos",
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "late"},
                "hlc": hlc(5, 0xb), "client_version": 1}]),
    )
    .await;
    assert_eq!(res["conflicts"][0]["reason"], "deleted", "{res}");
    assert!(todos(&pool).await.is_empty());
    assert!(replayed(&one.base).await.is_empty());
}

#[tokio::test]
async fn pushes_to_several_instances_at_once_lose_nothing() {
    let url = pg::database_url().await;
    let pools = [pg::pool(&url).await, pg::pool(&url).await];
    sqlx::query(TODOS).execute(&pools[0]).await.unwrap();
    let (a, b) = tokio::join!(instance(&pools[0], "todos"), instance(&pools[1], "todos"));
    let bases = [a.base.clone(), b.base.clone()];
    push(
        &bases[0],
        "todos",
        "seed",
        json!([{"id": "shared", "action": "create", "hlc": hlc(0, 1),
                "data": {"title": "shared"}}]),
    )
    .await;
    // Eight clients, half on each instance, each creating its own rows and toggling
    // the shared one, while the app's own SQL renames it.
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let base = bases[(client % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let changes = json!([
                    {"id": format!("c{client}-{i}"), "action": "create",
                     "hlc": hlc(100 + i, 0x10 + client), "data": {"title": "mine"}},
                    {"id": "shared", "action": "update", "hlc": hlc(100 + i, 0x10 + client),
                     "data": {"completed": i % 2 == 0}},
                ]);
                push(&base, "todos", &format!("c{client}"), changes).await;
            }
        }));
    }
    for n in 0..10 {
        sqlx::query("UPDATE todos SET title = $1 WHERE id = 'shared'")
            .bind(format!("renamed {n}"))
            .execute(&pools[1])
            .await
            .unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    let table = todos(&pools[0]).await;
    assert_eq!(table.len(), 1 + 8 * 5);
    assert_eq!(
        table.iter().find(|r| r.0 == "shared").unwrap().1,
        "renamed 9"
    );
    // Every instance's log replays to the table, with versions 1..=N and no gap.
    common::wait_until("both instances caught up", || async {
        let written: i64 = sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log")
            .fetch_one(&pools[0])
            .await
            .unwrap();
        a.engine.head().await.unwrap() == written
    })
    .await;
    for base in &bases {
        assert_eq!(replayed(base).await, table);
        let (_, page) = pull(base, "todos", "?since=0&limit=10000").await;
        let versions: Vec<i64> = page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["version"].as_i64().unwrap())
            .collect();
        assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn postgres_types_are_written_and_read_back() {
    let pool = pg::database().await;
    sqlx::raw_sql(
        "CREATE TABLE things (id uuid PRIMARY KEY, at timestamptz, meta jsonb, \
         price numeric(10, 2), photo bytea, n bigint, ok boolean NOT NULL DEFAULT true, \
         tags text[], big numeric)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let one = instance(&pool, "things").await;
    let id = "0191d6a4-1c2b-7c3d-8e4f-5a6b7c8d9e0f";
    push(
        &one.base,
        "things",
        "a",
        json!([{"id": id, "action": "create", "hlc": hlc(0, 0xa), "data": {
            "at": "2026-12-02T10:00:00+00:00", "meta": {"k": [1, 2]}, "price": 12.5,
            "photo": "00ff10", "n": 9007199254740993_i64.to_string(), "tags": ["a", "b"]
        }}]),
    )
    .await;
    let (at, meta, price, photo, n, ok): (String, Value, String, Vec<u8>, i64, bool) =
        sqlx::query_as(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), meta, price::text, \
             photo, n, ok FROM things",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (at.as_str(), meta, price.as_str(), photo, n, ok),
        (
            "2026-12-02 10:00",
            json!({"k": [1, 2]}),
            "12.50",
            vec![0x00, 0xff, 0x10],
            9_007_199_254_740_993,
            true
        )
    );
    let res = push(
        &one.base,
        "things",
        "a",
        json!([{"id": id, "action": "update", "hlc": hlc(10, 0xa), "client_version": 1,
                "data": {"meta": null, "ok": false}}]),
    )
    .await;
    assert_eq!(res["conflicts"], json!([]));
    let (_, page) = pull(&one.base, "things", "?since=0").await;
    let last = page["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], id);
    assert_eq!(last["changed"], json!(["meta", "ok"]));
    assert_eq!(last["data"]["ok"], false);
    assert_eq!(last["data"]["meta"], Value::Null);
    assert_eq!(
        last["data"]["n"], "9007199254740993",
        "unsafe integers as strings"
    );
    assert_eq!(last["data"]["photo"], "00ff10");
    assert_eq!(last["data"]["tags"], json!(["a", "b"]));
    // What a pull shows can be pushed back: an array, a numeric too precise for a
    // browser's number (a string both ways).
    push(
        &one.base,
        "things",
        "a",
        json!([{"id": id, "action": "update", "hlc": hlc(15, 0xa), "client_version": 2,
                "data": {"tags": ["c", null], "price": "12345678.91",
                         "big": "123456789012345678901234.5"}}]),
    )
    .await;
    let (tags, price): (Vec<Option<String>>, String) =
        sqlx::query_as("SELECT tags, price::text FROM things")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (tags, price.as_str()),
        (vec![Some("c".into()), None], "12345678.91")
    );
    let (_, page) = pull(&one.base, "things", "?since=0").await;
    let last = page["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["data"]["price"], 12345678.91,
        "a float holds it exactly"
    );
    assert_eq!(
        last["data"]["big"], "123456789012345678901234.5",
        "beyond a float's precision: a string"
    );
    // Beyond a double's range, either way: the app's write succeeds and the value is a
    // string too.
    for big in ["1e400", "-1e400", "1e-400"] {
        sqlx::query(&format!("UPDATE things SET big = {big}"))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("the app's own write of {big}: {e}"));
        let head = one.engine.head().await.unwrap();
        let (_, page) = pull(&one.base, "things", &format!("?since={}", head - 1)).await;
        let stored: String = sqlx::query_scalar("SELECT big::text FROM things")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(page["changes"][0]["data"]["big"], stored.as_str(), "{big}");
    }
    // Bytes are hexadecimal: other text would be stored as other bytes.
    let (status, res) = push_raw(
        &one.base,
        "things",
        json!({"changes": [{"id": id, "action": "update", "hlc": hlc(18, 0xa),
                            "data": {"photo": "zz"}}]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 422, "{res}");
    assert!(
        res["error"].as_str().unwrap().contains("hexadecimal"),
        "{res}"
    );
    // A value the column cannot hold is the client's fault, and changes nothing.
    let (status, res) = push_raw(
        &one.base,
        "things",
        json!({"changes": [{"id": id, "action": "update", "hlc": hlc(20, 0xa),
                            "data": {"at": "not a time"}}]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 422, "{res}");
}

#[tokio::test]
async fn a_keyed_write_runs_once_whichever_instance_the_retry_reaches() {
    let url = pg::database_url().await;
    let pools = [pg::pool(&url).await, pg::pool(&url).await];
    sqlx::query(TODOS).execute(&pools[0]).await.unwrap();
    let mut bases = Vec::new();
    let mut tasks = Vec::new();
    for pool in &pools {
        let engine = SyncEngine::builder(pool.clone())
            .entity_named("todos")
            .writable("todos")
            .build()
            .await
            .unwrap();
        let (base, task) = serve(engine.routes().layer(engine.idempotency_layer())).await;
        bases.push(base);
        tasks.push(task);
    }
    let send = |base: &str, body: Value| {
        common::client()
            .post(format!("{base}/api/sync/todos"))
            .header("content-type", "application/json")
            .header("idempotency-key", "form-1")
            .body(body.to_string())
    };
    let body = json!({"changes": [{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                                   "data": {"title": "once"}}]});
    let first = send(&bases[0], body.clone()).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // The answer was lost; the retry reaches the other instance and gets the same one.
    sqlx::query("UPDATE todos SET title = 'changed since'")
        .execute(&pools[1])
        .await
        .unwrap();
    let again = send(&bases[1], body).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(
        todos(&pools[0]).await[0].1,
        "changed since",
        "not run twice"
    );
    // The same key for another request is refused, and changes nothing.
    let other = json!({"changes": [{"id": "r2", "action": "create", "hlc": hlc(5, 0xa),
                                    "data": {"title": "other"}}]});
    let res = send(&bases[1], other).send().await.unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(todos(&pools[0]).await.len(), 1);
}

#[tokio::test]
async fn the_key_table_stays_within_its_budget() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let engine = SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .writable("todos")
        .build()
        .await
        .unwrap();
    let layer = engine.idempotency_layer().max_keys(10);
    let (base, _task) = serve(engine.routes().layer(layer.clone())).await;
    for i in 0..30 {
        let body = json!({"changes": [{"id": format!("r{i}"), "action": "create",
                                       "hlc": hlc(i, 0xa), "data": {"title": "t"}}]});
        let res = common::client()
            .post(format!("{base}/api/sync/todos"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("k{i}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let usage = layer.usage().await.unwrap();
    let (keys, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(octet_length(key) + octet_length(fingerprint) \
         + coalesce(octet_length(headers), 0) + coalesce(octet_length(body), 0)), 0)::int8 \
         FROM _rhtmx_sync_idempotency",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(usage.keys <= 10, "{usage:?}");
    assert_eq!(
        (usage.keys, usage.bytes),
        (keys as u64, bytes as u64),
        "totals are exact"
    );
    assert_eq!(todos(&pool).await.len(), 30, "every write ran");
}

#[tokio::test]
async fn a_push_waiting_for_a_row_the_app_holds_holds_back_no_one_else() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('r1', 'held')")
        .execute(&pool)
        .await
        .unwrap();
    let one = instance(&pool, "todos").await;
    let mut sse = common::Sse::connect(&one.base, "", None).await;
    // The app holds r1 in a transaction that stays open.
    let mut held = pool.begin().await.unwrap();
    sqlx::query("UPDATE todos SET completed = true WHERE id = 'r1'")
        .execute(&mut *held)
        .await
        .unwrap();
    let base = one.base.clone();
    let push = tokio::spawn(async move {
        push(
            &base,
            "todos",
            "a",
            json!([{"id": "r1", "action": "update", "hlc": hlc(0, 0xa),
                    "data": {"title": "pushed"}}]),
        )
        .await
    });
    // Meanwhile every other write is numbered and streamed.
    for id in ["other-1", "other-2"] {
        sqlx::query("INSERT INTO todos (id, title) VALUES ($1, 'x')")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(sse.next().await.data["id"], id);
    }
    assert!(!push.is_finished(), "the push waits for the row");
    held.commit().await.unwrap();
    let res = push.await.unwrap();
    assert_eq!(res["applied"], json!(["r1"]));
    let mut last = Vec::new();
    for _ in 0..2 {
        let e = sse.next().await;
        last.push((e.data["id"].clone(), e.version()));
    }
    assert_eq!(
        last,
        [(json!("r1"), 4), (json!("r1"), 5)],
        "the app's update, then the push"
    );
    assert_eq!(
        todos(&pool).await[0],
        ("other-1".to_owned(), "x".to_owned(), false)
    );
    let r1 = todos(&pool)
        .await
        .into_iter()
        .find(|r| r.0 == "r1")
        .unwrap();
    assert_eq!(
        r1,
        ("r1".into(), "pushed".into(), true),
        "merged, not overwritten"
    );
}

#[tokio::test]
async fn a_push_that_waits_on_an_open_transaction_is_told_to_retry_and_holds_no_one_back() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let one = instance(&pool, "todos").await;
    let mut sse = common::Sse::connect(&one.base, "", None).await;
    // The app inserts p9 in a transaction that stays open.
    let mut open = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('p9', 'app')")
        .execute(&mut *open)
        .await
        .unwrap();
    let create_p9 = json!({"changes": [{"id": "p9", "action": "create", "hlc": hlc(0, 0xa),
                                        "data": {"title": "push"}}]});
    let base = one.base.clone();
    let body = create_p9.to_string();
    let push = tokio::spawn(async move { push_raw(&base, "todos", body).await });
    // Meanwhile other writes are numbered and streamed.
    sqlx::query("INSERT INTO todos (id, title) VALUES ('other', 'x')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(sse.next().await.data["id"], "other");
    // The push gives up its wait and says to retry; nothing of it was written.
    let (status, res) = push.await.unwrap();
    assert_eq!(status, 503, "{res}");
    assert!(
        res["error"].as_str().unwrap().contains("try again"),
        "{res}"
    );
    open.rollback().await.unwrap();
    let (status, res) = push_raw(&one.base, "todos", create_p9.to_string()).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["applied"], json!(["p9"]));
}

#[tokio::test]
async fn pushes_run_at_read_committed_whatever_the_databases_default() {
    let url = pg::database_url().await;
    let admin = pg::pool(&url).await;
    sqlx::query(TODOS).execute(&admin).await.unwrap();
    let db = url.rsplit('/').next().unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {db} SET default_transaction_isolation = 'serializable'"
    ))
    .execute(&admin)
    .await
    .unwrap();
    // New connections get the default: two instances on it.
    let (a, b) = (
        instance(&pg::pool(&url).await, "todos").await,
        instance(&pg::pool(&url).await, "todos").await,
    );
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let base = if client % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..5 {
                let changes = json!([{"id": format!("shared-{}", i % 3), "action": "create",
                                      "hlc": hlc(i, 0x10 + client),
                                      "data": {"title": format!("c{client}")}}]);
                let body = json!({"client_id": format!("c{client}"), "changes": changes});
                statuses.push(push_raw(&base, "todos", body.to_string()).await.0);
            }
            statuses
        }));
    }
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert_eq!(todos(&admin).await.len(), 3);
}

#[tokio::test]
async fn a_uuid_key_in_any_spelling_is_one_row() {
    let pool = pg::database().await;
    sqlx::query("CREATE TABLE things (id uuid PRIMARY KEY, title text)")
        .execute(&pool)
        .await
        .unwrap();
    let one = instance(&pool, "things").await;
    let (upper, lower) = (
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    );
    push(
        &one.base,
        "things",
        "a",
        json!([{"id": upper, "action": "create", "hlc": hlc(0, 0xa), "data": {"title": "x"}}]),
    )
    .await;
    let res = push(
        &one.base,
        "things",
        "a",
        json!([{"id": "{a0eebc999c0b4ef8bb6d6bb9bd380a11}", "action": "update",
                "hlc": hlc(10, 0xa), "data": {"title": "y"}}]),
    )
    .await;
    assert_eq!(res["applied"], json!([lower]));
    let (_, page) = pull(&one.base, "things", "?since=0").await;
    let entries: Vec<(Value, Value, Value)> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].clone(), c["action"].clone(), c["client_id"].clone()))
        .collect();
    assert_eq!(
        entries,
        [
            (json!(lower), json!("create"), json!("a")),
            (json!(lower), json!("update"), json!("a")),
        ],
        "one row, each change with its client"
    );
    let (status, res) = push_raw(
        &one.base,
        "things",
        json!({"changes": [{"id": lower, "action": "update", "data": {"title": "z"}},
                           {"id": "zz", "action": "update", "data": {"title": "z"}}]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 422, "{res}");
    assert!(
        res["error"].as_str().unwrap().contains("changes[1]"),
        "{res}"
    );
}

#[tokio::test]
async fn a_key_the_database_always_generates_cannot_be_pushed() {
    let pool = pg::database().await;
    sqlx::query(
        "CREATE TABLE idt (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let one = instance(&pool, "idt").await;
    let (status, res) = push_raw(
        &one.base,
        "idt",
        json!({"changes": [{"id": 5, "action": "create", "data": {"title": "x"}}]}).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{res}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM idt")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}
