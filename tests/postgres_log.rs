//! The engine on PostgreSQL: every write captured whatever path made it, versions dense
//! and in commit order whatever order transactions began in, and any number of app
//! instances on one database streaming the same history.

mod common;
use common::pg;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{pull, serve, Sse};
use rhtmx_sync::SyncEngine;
use serde_json::{json, Value};
use sqlx::PgPool;

const TODOS: &str = "CREATE TABLE todos (id text PRIMARY KEY, title text NOT NULL, \
                     done boolean NOT NULL DEFAULT false)";

/// An instance: an engine on `pool` syncing `tables`, served on 127.0.0.1.
struct Instance {
    base: String,
    engine: SyncEngine,
    _task: tokio::task::JoinHandle<()>,
}

async fn instance(pool: &PgPool, tables: &[&str], poll: Duration) -> Instance {
    let engine = tables
        .iter()
        .fold(SyncEngine::builder(pool.clone()), |b, t| b.entity_named(*t))
        .poll_interval(poll)
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

async fn insert(pool: &PgPool, id: &str) {
    sqlx::query("INSERT INTO todos (id, title) VALUES ($1, $1)")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

/// `(version, id, action)` of each event.
fn seen(events: &[common::SseEvent]) -> Vec<(i64, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.version(),
                e.data["id"].as_str().unwrap_or_default().to_owned(),
                e.data["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn versions_follow_commit_order_with_no_gap_and_no_rollback() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let one = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    let mut sse = Sse::connect(&one.base, "", None).await;

    // `a` takes the lower sequence number but commits last.
    let mut first = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('a', 'a')")
        .execute(&mut *first)
        .await
        .unwrap();
    let mut second = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('b', 'b')")
        .execute(&mut *second)
        .await
        .unwrap();
    second.commit().await.unwrap();
    assert_eq!(
        seen(&[sse.next().await]),
        [(1, "b".into(), "create".into())]
    );
    insert(&pool, "c").await;
    assert_eq!(
        seen(&[sse.next().await]),
        [(2, "c".into(), "create".into())]
    );
    first.commit().await.unwrap();
    assert_eq!(
        seen(&[sse.next().await]),
        [(3, "a".into(), "create".into())]
    );

    // A rolled-back write is never numbered: the next version is the next commit's.
    let mut undone = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('d', 'd')")
        .execute(&mut *undone)
        .await
        .unwrap();
    undone.rollback().await.unwrap();
    insert(&pool, "e").await;
    assert_eq!(
        seen(&[sse.next().await]),
        [(4, "e".into(), "create".into())]
    );

    let (status, page) = pull(&one.base, "todos", "?since=0").await;
    assert_eq!(status, 200, "{page}");
    let pulled: Vec<(i64, String)> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["version"].as_i64().unwrap(),
                c["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pulled,
        [
            (1, "b".into()),
            (2, "c".into()),
            (3, "a".into()),
            (4, "e".into())
        ]
    );
    assert_eq!(one.engine.head().await.unwrap(), 4);
}

#[tokio::test]
async fn a_long_transaction_delays_only_its_own_change() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let one = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    let mut sse = Sse::connect(&one.base, "", None).await;
    let mut long = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('slow', 'slow')")
        .execute(&mut *long)
        .await
        .unwrap();
    // While it stays open, everything else is numbered and streamed around it.
    for i in 0..20 {
        insert(&pool, &format!("quick-{i:02}")).await;
    }
    let events = sse.take(20).await;
    let expected: Vec<(i64, String, String)> = (0..20)
        .map(|i| (i + 1, format!("quick-{i:02}"), "create".to_owned()))
        .collect();
    assert_eq!(seen(&events), expected);
    long.commit().await.unwrap();
    assert_eq!(
        seen(&[sse.next().await]),
        [(21, "slow".into(), "create".into())]
    );
}

#[tokio::test]
async fn every_instance_streams_every_change_once_in_one_order() {
    let url = pg::database_url().await;
    let (pool_a, pool_b) = (pg::pool(&url).await, pg::pool(&url).await);
    sqlx::query(TODOS).execute(&pool_a).await.unwrap();
    // Two app instances start together on one database.
    let (a, b) = tokio::join!(
        instance(&pool_a, &["todos"], Duration::from_millis(10)),
        instance(&pool_b, &["todos"], Duration::from_millis(10)),
    );
    let mut sse_a = Sse::connect(&a.base, "", None).await;
    let mut sse_b = Sse::connect(&b.base, "", None).await;
    // Writers on both instances' pools at once, some in multi-row transactions.
    let mut writers = Vec::new();
    for w in 0..4 {
        let pool = if w % 2 == 0 {
            pool_a.clone()
        } else {
            pool_b.clone()
        };
        writers.push(tokio::spawn(async move {
            for i in 0..10 {
                let mut tx = pool.begin().await.unwrap();
                for j in 0..3 {
                    sqlx::query("INSERT INTO todos (id, title) VALUES ($1, 'x')")
                        .bind(format!("w{w}-{i}-{j}"))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = 4 * 10 * 3;
    let (from_a, from_b) = (sse_a.take(total).await, sse_b.take(total).await);
    let versions: Vec<i64> = from_a.iter().map(|e| e.version()).collect();
    assert_eq!(versions, (1..=total as i64).collect::<Vec<_>>());
    assert_eq!(
        seen(&from_a),
        seen(&from_b),
        "one history on every instance"
    );
    let ids = |events: &[common::SseEvent]| -> Vec<String> {
        events.iter().map(|e| e.id.clone()).collect()
    };
    assert_eq!(
        ids(&from_a),
        ids(&from_b),
        "the same cursors on every instance"
    );
    // A transaction's rows stay together and in their order.
    for chunk in seen(&from_a).chunks(3) {
        let prefix = |id: &str| id.rsplit_once('-').unwrap().0.to_owned();
        assert!(
            chunk.iter().all(|c| prefix(&c.1) == prefix(&chunk[0].1)),
            "{chunk:?}"
        );
    }
    sse_a.assert_quiet(Duration::from_millis(300)).await;
    sse_b.assert_quiet(Duration::from_millis(50)).await;
    // A client may resume on the other instance with the first one's cursor.
    let last_a = from_a[total / 2].id.clone();
    let mut resumed = Sse::connect(&b.base, "", Some(&last_a)).await;
    let rest = resumed.take(total - total / 2 - 1).await;
    assert_eq!(seen(&rest), seen(&from_a[total / 2 + 1..]));
}

#[tokio::test]
async fn a_dropped_listener_or_tailer_connection_loses_nothing() {
    let url = pg::database_url().await;
    let (pool_a, pool_b) = (pg::pool(&url).await, pg::pool(&url).await);
    sqlx::query(TODOS).execute(&pool_a).await.unwrap();
    let a = instance(&pool_a, &["todos"], Duration::from_millis(10)).await;
    // `b` polls so rarely that only notifications (or its listener's reconnection)
    // can bring it changes within the test's 10 s wait.
    let b = instance(&pool_b, &["todos"], Duration::from_secs(3600)).await;
    let mut sse_b = Sse::connect(&b.base, "", None).await;
    insert(&pool_a, "before").await;
    assert_eq!(seen(&[sse_b.next().await])[0].1, "before");
    for round in 0..3 {
        // Every engine's listener and tailer connections are cut.
        let cut: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() \
             AND application_name IN ('rhtmx-sync listener', 'rhtmx-sync tailer')) AS t",
        )
        .fetch_one(&pool_a)
        .await
        .unwrap();
        assert_eq!(cut, 4, "two engines, two connections each");
        for i in 0..5 {
            insert(&pool_a, &format!("r{round}-{i}")).await;
        }
        let got = sse_b.take(5).await;
        let ids: Vec<String> = seen(&got).into_iter().map(|s| s.1).collect();
        let want: Vec<String> = (0..5).map(|i| format!("r{round}-{i}")).collect();
        assert_eq!(ids, want);
    }
    let versions: Vec<i64> = {
        let (_, page) = pull(&a.base, "todos", "?since=0").await;
        page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["version"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
}

/// The rows a client holds after pulling `entity` from 0: id → data.
async fn replayed(base: &str, entity: &str) -> BTreeMap<String, Value> {
    let (status, page) = pull(base, entity, "?since=0").await;
    assert_eq!(status, 200, "{page}");
    let mut rows = BTreeMap::new();
    for change in page["changes"].as_array().unwrap() {
        let id = match &change["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match change["action"].as_str().unwrap() {
            "delete" => {
                rows.remove(&id);
            }
            "create" => {
                rows.insert(id, change["data"].clone());
            }
            _ => {
                let row = rows.get_mut(&id).expect("an update of a known row");
                for (k, v) in change["data"].as_object().unwrap() {
                    row[k] = v.clone();
                }
            }
        }
    }
    rows
}

/// Waits until the engine has numbered everything written so far.
async fn settled(pool: &PgPool, engine: &SyncEngine) {
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log")
        .fetch_one(pool)
        .await
        .unwrap();
    common::wait_until("every entry numbered", || async {
        engine.head().await.unwrap() >= written
    })
    .await;
}

#[tokio::test]
async fn upserts_cascades_and_truncates_are_captured() {
    let pool = pg::database().await;
    sqlx::raw_sql(
        "CREATE TABLE lists (id integer PRIMARY KEY, name text NOT NULL);
         CREATE TABLE items (id text PRIMARY KEY,
             list_id integer NOT NULL REFERENCES lists ON DELETE CASCADE, title text);
         INSERT INTO lists VALUES (1, 'home'), (2, 'work');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let one = instance(&pool, &["lists", "items"], Duration::from_millis(10)).await;
    sqlx::raw_sql(
        "INSERT INTO items VALUES ('i1', 1, 'milk'), ('i2', 1, 'eggs'), ('i3', 2, 'mail');
         INSERT INTO items VALUES ('i1', 1, 'oat milk')
             ON CONFLICT (id) DO UPDATE SET title = excluded.title;
         INSERT INTO items VALUES ('i2', 1, 'ignored') ON CONFLICT DO NOTHING;
         UPDATE items SET title = title WHERE id = 'i3';
         DELETE FROM lists WHERE id = 1;",
    )
    .execute(&pool)
    .await
    .unwrap();
    settled(&pool, &one.engine).await;
    let items = replayed(&one.base, "items").await;
    assert_eq!(
        items,
        BTreeMap::from([(
            "i3".to_owned(),
            json!({"id": "i3", "list_id": 2, "title": "mail"})
        )])
    );
    let lists = replayed(&one.base, "lists").await;
    assert_eq!(
        lists,
        BTreeMap::from([("2".to_owned(), json!({"id": 2, "name": "work"}))])
    );
    // The upsert is an update of one field; the no-op update and the ignored insert
    // are not logged at all.
    let (_, page) = pull(&one.base, "items", "?since=0").await;
    let actions: Vec<(String, String, Value)> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
                c.get("changed").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        actions[..4],
        [
            ("i1".into(), "create".into(), Value::Null),
            ("i2".into(), "create".into(), Value::Null),
            ("i3".into(), "create".into(), Value::Null),
            ("i1".into(), "update".into(), json!(["title"])),
        ]
    );
    // The cascade deletes the list's items, in an order of PostgreSQL's choosing.
    let mut cascaded = actions[4..].to_vec();
    cascaded.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        cascaded,
        [
            ("i1".into(), "delete".into(), Value::Null),
            ("i2".into(), "delete".into(), Value::Null),
        ]
    );

    sqlx::raw_sql("TRUNCATE lists CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    settled(&pool, &one.engine).await;
    assert!(replayed(&one.base, "items").await.is_empty());
    assert!(replayed(&one.base, "lists").await.is_empty());
}

#[tokio::test]
async fn rows_written_while_no_engine_ran_are_logged_at_the_next_start() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    insert(&pool, "adopted").await;
    let first = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    assert_eq!(first.engine.head().await.unwrap(), 1);
    insert(&pool, "live").await;
    settled(&pool, &first.engine).await;
    drop(first);
    // The triggers keep logging without an engine; the next one numbers what waits.
    insert(&pool, "meanwhile").await;
    sqlx::query("UPDATE todos SET done = true WHERE id = 'adopted'")
        .execute(&pool)
        .await
        .unwrap();
    let second = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    assert_eq!(second.engine.head().await.unwrap(), 4);
    let rows = replayed(&second.base, "todos").await;
    let have: Vec<(String, bool)> = sqlx::query_as("SELECT id, done FROM todos ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let from_log: Vec<(String, bool)> = rows
        .iter()
        .map(|(id, row)| (id.clone(), row["done"].as_bool().unwrap()))
        .collect();
    assert_eq!(from_log, have);
}

#[tokio::test]
async fn the_operator_figures_count_the_log_and_its_conflicts() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    let one = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    for id in ["a", "b", "c"] {
        insert(&pool, id).await;
    }
    sqlx::query("DELETE FROM todos WHERE id = 'b'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(one.engine.head().await.unwrap(), 4);
    let (base, _task) = serve(one.engine.operator_routes()).await;
    let figures: Value = common::client()
        .get(format!("{base}/figures.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let log = &figures["log"];
    assert_eq!(
        (
            &log["rows"],
            &log["head_version"],
            &log["oldest_version"],
            &log["changes_last_minute"]
        ),
        (&json!(4), &json!(4), &json!(1), &json!(4)),
        "{figures}"
    );
    assert!(log["bytes"].as_u64().unwrap() > 0);
    assert!(log["database_bytes"].as_u64().unwrap() > log["bytes"].as_u64().unwrap());
    assert_eq!(figures["idempotency"]["keys"], 0);
    assert_eq!(figures["recent_conflicts"], json!([]));
}

#[tokio::test]
async fn a_migration_while_the_app_runs_is_followed() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    insert(&pool, "old").await;
    let one = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    let mut sse = Sse::connect(&one.base, "?last_event_id=1", None).await;
    // A column added: new writes carry it; the old row is not logged again.
    sqlx::query("ALTER TABLE todos ADD COLUMN note text")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO todos (id, title, note) VALUES ('new', 'new', 'hello')")
        .execute(&pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let e = sse.next().await;
        seen.push(e.data["id"].as_str().unwrap().to_owned());
        if e.data["data"]["note"] == "hello" {
            break;
        }
    }
    assert!(!seen.contains(&"old".to_owned()), "{seen:?}");
    // The table recreated (its triggers went with it): capture comes back, the rows the
    // drop removed are logged as deleted, and what was written meanwhile is logged.
    sqlx::raw_sql(&format!(
        "DROP TABLE todos; {TODOS}; INSERT INTO todos (id, title) VALUES ('reborn', 'r');"
    ))
    .execute(&pool)
    .await
    .unwrap();
    common::wait_until("the recreated table is captured", || async {
        let rows = replayed(&one.base, "todos").await;
        rows.keys().cloned().collect::<Vec<_>>() == ["reborn"]
    })
    .await;
    insert(&pool, "after").await;
    common::wait_until("later writes are captured", || async {
        replayed(&one.base, "todos").await.contains_key("after")
    })
    .await;
}

#[tokio::test]
async fn no_other_role_can_write_the_log_through_a_capture_function() {
    let url = pg::database_url().await;
    let pool = pg::pool(&url).await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    insert(&pool, "real").await;
    let one = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    let function: String = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc WHERE proname LIKE '\\_rhtmx\\_sync\\_capture\\_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // A role that may create tables, none of the app's.
    let db = url.rsplit('/').next().unwrap();
    let role = format!("mallory_{db}");
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT CREATE ON SCHEMA public TO {role};"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let mallory = pg::pool(&url.replacen("test@", &format!("{role}@"), 1)).await;
    sqlx::query("CREATE TABLE fake (id text, title text, done boolean)")
        .execute(&mallory)
        .await
        .unwrap();
    let attach = sqlx::query(&format!(
        "CREATE TRIGGER x AFTER INSERT ON fake FOR EACH ROW EXECUTE FUNCTION public.{function}()"
    ))
    .execute(&mallory)
    .await;
    let error = attach
        .expect_err("the function is not theirs to use")
        .to_string();
    assert!(error.contains("permission denied"), "{error}");
    // Even its owner's mistake cannot log another table's rows under this entity.
    sqlx::raw_sql(&format!(
        "CREATE TABLE other (id text, title text, done boolean);
         CREATE TRIGGER x AFTER INSERT ON other FOR EACH ROW EXECUTE FUNCTION public.{function}();"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let forged = sqlx::query("INSERT INTO other VALUES ('forged', 'x', false)")
        .execute(&pool)
        .await
        .expect_err("refused");
    assert!(forged.to_string().contains("belongs to table"), "{forged}");
    let rows = replayed(&one.base, "todos").await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["real"]);
}

#[tokio::test]
async fn a_writers_session_settings_do_not_change_what_is_logged() {
    let pool = pg::database().await;
    sqlx::query("CREATE TABLE ev (id bytea PRIMARY KEY, at timestamptz, v text)")
        .execute(&pool)
        .await
        .unwrap();
    let one = instance(&pool, &["ev"], Duration::from_millis(10)).await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET bytea_output = 'escape'; SET TimeZone = 'Europe/Berlin'; SET DateStyle = 'SQL, DMY';
         INSERT INTO ev VALUES ('\\x00ff10', '2024-01-01 12:00:00+01', 'a');
         UPDATE ev SET v = 'b';",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let rows = replayed(&one.base, "ev").await;
    assert_eq!(
        rows,
        BTreeMap::from([(
            "00ff10".to_owned(),
            json!({"id": "00ff10", "at": "2024-01-01T11:00:00+00:00", "v": "b"})
        )])
    );
}

#[tokio::test]
async fn a_table_outside_the_search_path_is_named_as_such() {
    let pool = pg::database().await;
    sqlx::raw_sql("CREATE SCHEMA other; CREATE TABLE other.remote (id text PRIMARY KEY);")
        .execute(&pool)
        .await
        .unwrap();
    for (name, outside) in [("other.remote", true), ("missing", false)] {
        let error = SyncEngine::builder(pool.clone())
            .entity_named(name)
            .build()
            .await
            .expect_err("not a table the engine can find");
        assert_eq!(
            matches!(error, rhtmx_sync::BuildError::OutsideSearchPath { .. }),
            outside,
            "{error}"
        );
        assert!(error.to_string().contains(name), "{error}");
    }
}

/// The table as `id -> title`, as read with SQL.
async fn titles(pool: &PgPool, table: &str) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as(&format!("SELECT id, title FROM {table} ORDER BY id"))
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, title)| (id, json!(title)))
        .collect()
}

#[tokio::test]
async fn a_partitioned_table_is_captured_whichever_partition_a_write_reaches() {
    let pool = pg::database().await;
    sqlx::raw_sql(
        "CREATE TABLE ev (id text PRIMARY KEY, title text) PARTITION BY HASH (id);
         CREATE TABLE ev0 PARTITION OF ev FOR VALUES WITH (modulus 2, remainder 0);
         CREATE TABLE ev1 PARTITION OF ev FOR VALUES WITH (modulus 2, remainder 1);
         INSERT INTO ev SELECT 'before' || i, 'old' FROM generate_series(1, 4) AS i;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let one = instance(&pool, &["ev"], Duration::from_millis(10)).await;
    // Through the parent and straight into a partition: the app's writes succeed and
    // are logged.
    sqlx::raw_sql(
        "INSERT INTO ev SELECT 'r' || i, 'new' FROM generate_series(1, 6) AS i;
         UPDATE ev SET title = 'changed' WHERE id IN ('r1', 'r2', 'before1');
         DELETE FROM ev WHERE id = 'r3';
         INSERT INTO ev0 SELECT id || 'x', 'direct' FROM ev0;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let synced = || async {
        settled(&pool, &one.engine).await;
        let rows: BTreeMap<String, Value> = replayed(&one.base, "ev")
            .await
            .into_iter()
            .map(|(id, row)| (id, row["title"].clone()))
            .collect();
        rows == titles(&pool, "ev").await
    };
    assert!(synced().await, "row writes");
    // One partition emptied alone, then the whole table's TRUNCATE (each row's delete
    // logged once).
    sqlx::query("TRUNCATE ev1").execute(&pool).await.unwrap();
    assert!(synced().await, "a partition truncated");
    sqlx::raw_sql("INSERT INTO ev VALUES ('a', 'x'), ('b', 'y'), ('c', 'z'); TRUNCATE ev;")
        .execute(&pool)
        .await
        .unwrap();
    assert!(synced().await, "the table truncated");
    let deletes: i64 = sqlx::query_scalar(
        "SELECT count(*) - count(DISTINCT (entity_id, version)) FROM _rhtmx_sync_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(deletes, 0);
    // A partition added, written, then detached: its rows leave the table without a
    // trigger, and the engine follows (within its once-a-second schema check).
    sqlx::raw_sql(
        "INSERT INTO ev SELECT 'k' || i, 'kept' FROM generate_series(1, 6) AS i;
         ALTER TABLE ev DETACH PARTITION ev0;",
    )
    .execute(&pool)
    .await
    .unwrap();
    common::wait_until("the detached partition's rows are deleted", &synced).await;
    // The detached table is the app's own now: truncating it is nothing to the engine.
    // Its rows come back in another table attached in its place.
    sqlx::raw_sql(
        "CREATE TABLE ev_back (id text PRIMARY KEY, title text);
         INSERT INTO ev_back SELECT * FROM ev0;
         TRUNCATE ev0;
         ALTER TABLE ev ATTACH PARTITION ev_back FOR VALUES WITH (modulus 2, remainder 0);",
    )
    .execute(&pool)
    .await
    .unwrap();
    common::wait_until("the attached partition's rows are created", &synced).await;
    assert!(!titles(&pool, "ev").await.is_empty());
    sqlx::query("TRUNCATE ev_back")
        .execute(&pool)
        .await
        .unwrap();
    common::wait_until("the attached partition's truncate is logged", &synced).await;
}

#[tokio::test]
async fn a_row_two_transactions_wrote_replays_as_the_later_commit_left_it() {
    let pool = pg::database().await;
    sqlx::query(TODOS).execute(&pool).await.unwrap();
    insert(&pool, "a").await;
    insert(&pool, "b").await;
    let one = instance(&pool, &["todos"], Duration::from_millis(10)).await;
    settled(&pool, &one.engine).await;
    // The stampers' lock, held by the test: both transactions commit before the next
    // stamp and are numbered in one batch.
    let mut hold = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(x'7268746d78730002'::int8)")
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut t1 = pool.begin().await.unwrap();
    sqlx::query("UPDATE todos SET title = 't1' WHERE id = 'a'")
        .execute(&mut *t1)
        .await
        .unwrap();
    // T2 writes `b` and commits; T1 then overwrites it and commits last.
    sqlx::query("UPDATE todos SET title = 't2' WHERE id = 'b'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE todos SET title = 't1' WHERE id = 'b'")
        .execute(&mut *t1)
        .await
        .unwrap();
    t1.commit().await.unwrap();
    sqlx::query("SELECT pg_advisory_unlock(x'7268746d78730002'::int8)")
        .execute(&mut *hold)
        .await
        .unwrap();
    settled(&pool, &one.engine).await;
    let rows = replayed(&one.base, "todos").await;
    assert_eq!(rows["b"]["title"], "t1", "the later commit's value");
    assert_eq!(rows["a"]["title"], "t1");
}
