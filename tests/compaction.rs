//! Compaction, on SQLite and on PostgreSQL: a compacted log holds about one entry per
//! live row and a fresh pull reads no more; a cursor below the horizon gets exactly one
//! reset; replays, field merges and tombstones behave as before compaction; compaction
//! running beside writers and readers loses nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rhtmx_sync::{Compaction, SyncEngineBuilder};
use serde_json::{json, Value};

/// Compaction that keeps no history: everything committed so far is below the horizon.
fn eager(b: SyncEngineBuilder) -> SyncEngineBuilder {
    b.compaction(
        Compaction::new()
            .keep_history(Duration::ZERO)
            .keep_conflicts(Duration::ZERO)
            .every(None),
    )
}

/// Like [`eager`], and deleted rows' tombstones go too.
fn eager_with_tombstones(b: SyncEngineBuilder) -> SyncEngineBuilder {
    b.compaction(
        Compaction::new()
            .keep_history(Duration::ZERO)
            .keep_conflicts(Duration::ZERO)
            .keep_tombstones(Duration::ZERO)
            .keep_replays(Duration::ZERO)
            .every(None),
    )
}

/// Pulls `todos` from `since` to the end: the changes, and the cursor to go on from.
/// `None` if the server answered with a reset.
async fn pull_all(base: &str, since: &str) -> Option<(Vec<Value>, String)> {
    pull_pages(base, since, 1000, "").await
}

/// [`pull_all`] in pages of at most `limit` changes, with `extra` parameters.
async fn pull_pages(
    base: &str,
    since: &str,
    limit: u32,
    extra: &str,
) -> Option<(Vec<Value>, String)> {
    let (mut changes, mut cursor) = (Vec::new(), since.to_owned());
    loop {
        let query = format!("?since={cursor}&limit={limit}{extra}");
        let (status, page) = pull(base, "todos", &query).await;
        if status == 409 {
            assert_eq!(page["reset"]["reason"], "behind_horizon", "{page}");
            return None;
        }
        assert_eq!(status, 200, "{page}");
        changes.extend(page["changes"].as_array().unwrap().iter().cloned());
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            return Some((changes, cursor));
        }
    }
}

/// Applies pulled changes to a mirror of `todos` as `id -> (title, completed)`.
fn apply(mirror: &mut BTreeMap<String, (String, bool)>, changes: &[Value]) {
    for c in changes {
        let id = c["id"].as_str().unwrap().to_owned();
        if c["action"] == "delete" {
            mirror.remove(&id);
        } else {
            let d = &c["data"];
            let title = d["title"].as_str().unwrap().to_owned();
            let completed = d["completed"].as_bool().unwrap_or(false);
            mirror.insert(id, (title, completed));
        }
    }
}

fn rows(mirror: &BTreeMap<String, (String, bool)>) -> Vec<(String, String, bool)> {
    mirror
        .iter()
        .map(|(id, (t, c))| (id.clone(), t.clone(), *c))
        .collect()
}

async fn log_entries(db: &Db) -> i64 {
    db.scalar("SELECT count(*) FROM _rhtmx_sync_log", args![])
        .await
}

async fn a_compacted_log_holds_about_one_entry_per_live_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager_with_tombstones).await;
    // 1,000 rows updated 100 times each by the app's own SQL, 100 of them then deleted.
    server
        .db
        .execute_each(
            "INSERT INTO todos (id, title) VALUES ($1, 'new')",
            (0..1000).map(|i| args![format!("row-{i:04}")]),
        )
        .await;
    for round in 0..100 {
        server
            .db
            .execute(
                "UPDATE todos SET title = $1, completed = NOT completed",
                args![format!("round {round}")],
            )
            .await;
    }
    server
        .db
        .execute("DELETE FROM todos WHERE id < 'row-0100'", args![])
        .await;
    all_numbered(&server.db).await;
    let before = log_entries(&server.db).await;
    assert!(before > 100_000, "{before}");
    // Before any compaction, a client asking for `latest` (the browser's) already
    // reads one change per live row: superseded entries and, from 0, deletes are left
    // out. In pages, and from a cursor half-way too.
    let (changes, _) = pull_pages(&server.base, "0", 5000, "&latest=true")
        .await
        .unwrap();
    assert_eq!(changes.len(), 900, "one change per live row");
    // In pages, a later page cannot tell a delete the client needs from one it does
    // not: at most the 100 deletes come on top.
    let (changes, _) = pull_pages(&server.base, "0", 300, "&latest=true")
        .await
        .unwrap();
    assert!(changes.len() <= 1000, "{}", changes.len());
    let mut mirror = BTreeMap::new();
    apply(&mut mirror, &changes);
    assert_eq!(rows(&mirror), todos(&server.db).await);
    // A client that pulled half-way, to come back after the compaction.
    let report = server.engine.compact().await.unwrap();
    let live = todos(&server.db).await;
    assert_eq!(live.len(), 900);
    let after = log_entries(&server.db).await;
    assert!(after <= 2 * 900, "{after} entries for 900 live rows");
    assert_eq!(report.removed as i64, before - after, "{report:?}");
    assert_eq!(report.tombstones, 100, "{report:?}");
    assert!(report.transactions >= 50, "small transactions: {report:?}");
    assert_eq!(server.engine.last_compaction(), Some(report.clone()));
    let figures = server.engine.figures().await.unwrap();
    assert_eq!(figures.last_compaction, Some(report.clone()));
    assert_eq!(figures.log.horizon, report.horizon);
    assert_eq!(figures.log.rows as i64, after);

    // A fresh client reads about one change per live row, and holds the table.
    let (changes, _) = pull_all(&server.base, "0").await.unwrap();
    assert!(
        changes.len() as f64 <= 1.1 * 900.0,
        "{} changes for 900 rows",
        changes.len()
    );
    let mut mirror = BTreeMap::new();
    apply(&mut mirror, &changes);
    assert_eq!(rows(&mirror), live);
    // A second pass has nothing left to do.
    let again = server.engine.compact().await.unwrap();
    assert_eq!((again.removed, again.rows), (0, 0), "{again:?}");
}
both!(a_compacted_log_holds_about_one_entry_per_live_row);

async fn a_cursor_below_the_horizon_resets_once_then_resumes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager).await;
    add_todo(&server, &todo_id("a"), "one").await;
    add_todo(&server, &todo_id("b"), "two").await;
    numbered(&server.engine, 2).await;
    let (_, stale) = pull_all(&server.base, "0").await.unwrap();
    server
        .db
        .execute(
            "UPDATE todos SET title = 'changed' WHERE id = $1",
            args![todo_id("a")],
        )
        .await;
    add_todo(&server, &todo_id("c"), "three").await;
    all_numbered(&server.db).await;
    server.engine.compact().await.unwrap();

    // The pull resets, once; from 0 the client gets the rows and a cursor that resumes.
    assert!(pull_all(&server.base, &stale).await.is_none());
    let mut sse = Sse::connect(&server.base, "", Some(&stale)).await;
    let reset = sse.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["reason"], "behind_horizon", "{}", reset.data);
    let (changes, fresh) = pull_all(&server.base, "0").await.unwrap();
    let mut mirror = BTreeMap::new();
    apply(&mut mirror, &changes);
    assert_eq!(rows(&mirror), todos(&server.db).await);
    let (more, _) = pull_all(&server.base, &fresh).await.unwrap();
    assert!(more.is_empty(), "{more:?}");
    // The horizon's own cursor is not below it: it resumes.
    add_todo(&server, &todo_id("d"), "four").await;
    all_numbered(&server.db).await;
    let (more, _) = pull_all(&server.base, &fresh).await.unwrap();
    assert_eq!(more.len(), 1, "{more:?}");
    let mut sse = Sse::connect(&server.base, "", Some(&fresh)).await;
    let event = sse.next().await;
    assert_eq!(event.event, "message", "{event:?}");
    assert_eq!(event.version(), more[0]["version"].as_i64().unwrap());
}
both!(a_cursor_below_the_horizon_resets_once_then_resumes);

/// Pushes `changes` as `client`, expecting 200.
async fn a_fresh_client_pages_through_a_compacted_log(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager_with_tombstones).await;
    let insert = "INSERT INTO todos (id, title) VALUES ($1, 'new')";
    server
        .db
        .execute_each(insert, (0..40).map(|i| args![format!("row-{i:02}")]))
        .await;
    server
        .db
        .execute(
            "UPDATE todos SET title = 'edited' WHERE id < 'row-20'",
            args![],
        )
        .await;
    server
        .db
        .execute("DELETE FROM todos WHERE id >= 'row-35'", args![])
        .await;
    all_numbered(&server.db).await;
    server.engine.compact().await.unwrap();

    // Pages of 7 from 0, all below the horizon: every page goes on, none resets.
    let (changes, cursor) = pull_pages(&server.base, "0", 7, "")
        .await
        .expect("no reset");
    let mut mirror = BTreeMap::new();
    apply(&mut mirror, &changes);
    assert_eq!(rows(&mirror), todos(&server.db).await);
    let (more, _) = pull_all(&server.base, &cursor).await.unwrap();
    assert!(more.is_empty(), "{more:?}");

    // Half-way through, a pass removes only superseded entries: the read goes on.
    let (status, first) = pull(&server.base, "todos", "?since=0&limit=7").await;
    assert_eq!(status, 200, "{first}");
    let half = first["cursor"].as_str().unwrap().to_owned();
    let mut mirror = BTreeMap::new();
    apply(&mut mirror, first["changes"].as_array().unwrap());
    server
        .db
        .execute("UPDATE todos SET title = 'again'", args![])
        .await;
    add_todo(&server, &todo_id("late"), "late").await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert!(report.removed > 0 && report.tombstones == 0, "{report:?}");
    let (rest, _) = pull_pages(&server.base, &half, 7, "")
        .await
        .expect("no reset");
    apply(&mut mirror, &rest);
    assert_eq!(rows(&mirror), todos(&server.db).await);

    // Half-way through, a pass purges a tombstone the read has not reached: it cannot
    // go on (the client may hold that row), and resets once.
    let (status, first) = pull(&server.base, "todos", "?since=0&limit=7").await;
    assert_eq!(status, 200, "{first}");
    let half = first["cursor"].as_str().unwrap().to_owned();
    let last = first["changes"][6]["id"].as_str().unwrap().to_owned();
    server
        .db
        .execute("DELETE FROM todos WHERE id = $1", args![last])
        .await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(report.tombstones, 1, "{report:?}");
    assert!(
        pull_pages(&server.base, &half, 7, "").await.is_none(),
        "{half}"
    );
}
both!(a_fresh_client_pages_through_a_compacted_log);

async fn push(base: &str, client: &str, changes: Value) -> Value {
    let body = json!({"client_id": client, "changes": changes});
    let (status, res) = push_raw(base, "todos", body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    res
}

async fn a_replay_after_compaction_is_still_recognised(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager).await;
    let create = json!([{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                         "data": {"title": "milk", "completed": false}}]);
    let update = json!([{"id": "r1", "action": "update", "hlc": hlc(10, 0xa),
                         "data": {"title": "oat milk"}}]);
    push(&server.base, "a", create.clone()).await;
    push(&server.base, "a", update.clone()).await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(report.removed, 1, "{report:?}");
    let before = every_row(&server.db, &server.engine).await;
    // The create's entry is gone; its replay is still known, and so is the update's.
    for body in [create, update] {
        let res = push(&server.base, "a", body).await;
        assert_eq!(res["duplicates"], json!(["r1"]), "{res}");
    }
    assert_eq!(every_row(&server.db, &server.engine).await, before);
}
both!(a_replay_after_compaction_is_still_recognised);

async fn a_push_based_below_the_horizon_merges_field_by_field(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager).await;
    let res = push(
        &server.base,
        "a",
        json!([{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                "data": {"title": "milk", "completed": false}}]),
    )
    .await;
    let base = res["version"].as_i64().unwrap();
    // B ticks it off at +20 ms and renames it at +21 ms; then the log is compacted
    // under A's base, leaving only the rename's entry.
    push(
        &server.base,
        "b",
        json!([{"id": "r1", "action": "update", "hlc": hlc(20, 0xb),
                "data": {"completed": true}, "client_version": base}]),
    )
    .await;
    push(
        &server.base,
        "b",
        json!([{"id": "r1", "action": "update", "hlc": hlc(21, 0xb),
                "data": {"title": "oat milk"}, "client_version": base + 1}]),
    )
    .await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(report.removed, 2, "{report:?}");
    // A, offline on its base since +10 ms, changed both: B's later changes win both,
    // the removed one included, and both are reported as they would have been.
    let res = push(
        &server.base,
        "a",
        json!([{"id": "r1", "action": "update", "hlc": hlc(10, 0xa),
                "data": {"title": "soy milk", "completed": false}, "client_version": base}]),
    )
    .await;
    let conflicts = res["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{res}");
    let fields = conflicts[0]["fields"].as_object().unwrap();
    assert_eq!(
        fields.keys().collect::<Vec<_>>(),
        ["completed", "title"],
        "{res}"
    );
    for field in ["completed", "title"] {
        assert_eq!(fields[field]["outcome"], "server", "{res}");
    }
    assert_eq!(
        todos(&server.db).await,
        [("r1".to_owned(), "oat milk".to_owned(), true)]
    );
    // B's own later change, based below the horizon too, is its own: no conflict.
    let res = push(
        &server.base,
        "b",
        json!([{"id": "r1", "action": "update", "hlc": hlc(30, 0xb),
                "data": {"completed": false}, "client_version": base + 1}]),
    )
    .await;
    assert_eq!(res["conflicts"], json!([]), "{res}");
    assert_eq!(res["applied"], json!(["r1"]), "{res}");
}
both!(a_push_based_below_the_horizon_merges_field_by_field);

async fn a_kept_tombstone_still_refuses_a_late_create(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager).await;
    push(
        &server.base,
        "a",
        json!([{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                "data": {"title": "milk", "completed": false}}]),
    )
    .await;
    server
        .db
        .execute("DELETE FROM todos WHERE id = 'r1'", args![])
        .await;
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!((report.removed, report.tombstones), (1, 0), "{report:?}");
    // A create from before the delete, from another client, must not bring it back.
    let res = push(
        &server.base,
        "b",
        json!([{"id": "r1", "action": "create", "hlc": hlc(-60_000, 0xb),
                "data": {"title": "stale", "completed": false}}]),
    )
    .await;
    assert_eq!(res["applied"], json!([]), "{res}");
    assert!(todos(&server.db).await.is_empty());
}
both!(a_kept_tombstone_still_refuses_a_late_create);

/// A client that pulls to the end each step and starts over from 0 on a reset.
struct Follower {
    mirror: BTreeMap<String, (String, bool)>,
    cursor: String,
    resets: u32,
}

impl Default for Follower {
    fn default() -> Self {
        Follower {
            mirror: BTreeMap::new(),
            cursor: "0".into(),
            resets: 0,
        }
    }
}

impl Follower {
    async fn step(&mut self, base: &str) {
        match pull_all(base, &self.cursor).await {
            Some((changes, next)) => {
                apply(&mut self.mirror, &changes);
                self.cursor = next;
            }
            None => {
                self.mirror.clear();
                self.cursor = "0".to_owned();
                self.resets += 1;
            }
        }
    }
}

/// A small deterministic generator (xorshift), so a failing interleaving replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn compaction_beside_writers_and_readers_loses_nothing(backend: Backend) {
    for seed in [1u64, 7, 42] {
        let db = TestDb::new(backend).await;
        let server = start_with(&db, eager_with_tombstones).await;
        let writer = {
            let db = server.db.clone();
            let base = server.base.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed);
                for step in 0..300 {
                    let id = format!("k{}", rng.below(20));
                    match rng.below(4) {
                        0 => {
                            db.execute(
                                "INSERT INTO todos (id, title) VALUES ($1, $2) \
                                 ON CONFLICT (id) DO UPDATE SET title = excluded.title",
                                args![id.as_str(), format!("s{step}")],
                            )
                            .await;
                        }
                        1 => {
                            db.execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
                                .await;
                        }
                        2 => {
                            let body = json!({"client_id": "w", "changes": [{
                                "id": id, "action": "create", "hlc": hlc(step, 0xc),
                                "data": {"title": format!("p{step}"), "completed": false}}]});
                            let (status, res) = push_raw(&base, "todos", body.to_string()).await;
                            assert_eq!(status, 200, "{res}");
                        }
                        _ => {
                            db.execute(
                                "UPDATE todos SET completed = NOT completed WHERE id = $1",
                                args![id.as_str()],
                            )
                            .await;
                        }
                    }
                }
            })
        };
        let compactor = {
            let engine = server.engine.clone();
            tokio::spawn(async move {
                let mut passes = 0;
                while passes < 30 {
                    engine.compact().await.unwrap();
                    passes += 1;
                    tokio::task::yield_now().await;
                }
            })
        };
        // A reader that follows the log the whole time, starting over on a reset.
        let mut reader = Follower::default();
        while !writer.is_finished() {
            reader.step(&server.base).await;
        }
        writer.await.unwrap();
        compactor.await.unwrap();
        all_numbered(&server.db).await;
        server.engine.compact().await.unwrap();
        // Catch up (at most one more reset), then the mirror is the table.
        reader.step(&server.base).await;
        if reader.cursor == "0" {
            reader.step(&server.base).await;
        }
        let (mirror, resets) = (reader.mirror, reader.resets);
        let table = todos(&server.db).await;
        assert_eq!(rows(&mirror), table, "seed {seed}, {resets} resets");
        // And a fresh client agrees.
        let (changes, _) = pull_all(&server.base, "0").await.unwrap();
        let mut fresh = BTreeMap::new();
        apply(&mut fresh, &changes);
        assert_eq!(rows(&fresh), table, "seed {seed}");
        assert!(changes.len() <= table.len(), "seed {seed}: {changes:?}");
    }
}
both!(multi_thread: compaction_beside_writers_and_readers_loses_nothing);

/// The body of a raw HTTP/1.1 answer with chunked transfer encoding.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (mut rest, mut body) = (&raw[start..], Vec::new());
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[line + 2..line + 2 + size]);
        rest = &rest[line + 4 + size..];
    }
}

async fn a_pull_that_outlives_a_purge_does_not_hide_the_delete(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, eager_with_tombstones).await;
    // Row `x` first, 8 MB of other rows (more than the sockets buffer), then `x` deleted:
    // one page from 0 holds both of x's entries, thousands of rows apart.
    server
        .db
        .execute(
            "INSERT INTO todos (id, title) VALUES ('x', 'doomed')",
            args![],
        )
        .await;
    let title = "t".repeat(1000);
    server
        .db
        .execute_each(
            "INSERT INTO todos (id, title) VALUES ($1, $2)",
            (0..8000).map(|i| args![format!("row-{i:05}"), title.as_str()]),
        )
        .await;
    server
        .db
        .execute("DELETE FROM todos WHERE id = 'x'", args![])
        .await;
    all_numbered(&server.db).await;
    // A client reads the start of the page (x's create) and stalls; meanwhile x's
    // expired tombstone is purged.
    let addr = server.base.trim_start_matches("http://").parse().unwrap();
    let mut stalled = stalled_request(addr, "/api/sync/todos?since=0&limit=10000").await;
    let report = server.engine.compact().await.unwrap();
    assert_eq!(report.tombstones, 1, "{report:?}");
    let mut raw = b"HTTP/1.1 200".to_vec();
    tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut raw)
        .await
        .unwrap();
    let page: Value = serde_json::from_slice(&dechunk(&raw)).unwrap();
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes[0]["id"], "x", "the page began with x's create");
    assert!(!changes.iter().any(|c| c["action"] == "delete"));
    // It cannot send the delete: it ends early, and going on from there resets.
    assert_eq!(page["has_more"], true, "{}", page["cursor"]);
    let cursor = page["cursor"].as_str().unwrap();
    assert!(pull_all(&server.base, cursor).await.is_none(), "{cursor}");
}
both!(a_pull_that_outlives_a_purge_does_not_hide_the_delete);
