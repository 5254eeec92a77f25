//! Two databases that exchange their authored changes converge, whatever their clocks
//! say: every write a database makes itself — the app's own SQL, a browser's push,
//! `engine.write` — is ordered after every change its row has seen (`crate::causal`),
//! so another database, which orders by HLC, keeps it too.

mod common;

use common::*;
use rhtmx_sync::replication::AuthoredChange;
use rhtmx_sync::SyncContext;
use serde_json::json;

/// An engine that is neither of the two: its clock runs a minute ahead of theirs.
const AHEAD: &str = "00000000000c10c4";

/// An HLC `ms` after now on `node`: a user action a moment from now, within the clock
/// tolerance (an offset from the tests' start could be long past).
fn soon(ms: u64, node: u64) -> rhtmx_sync::Hlc {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    rhtmx_sync::Hlc::new(now + ms, 0, node)
}

/// Sends `from`'s authored changes after `*after` to `to` and moves `*after` on.
async fn send(from: &Server, to: &Server, after: &mut i64) {
    all_numbered(&from.db).await;
    loop {
        let page = from.engine.authored_changes(*after, 500).await.unwrap();
        to.engine
            .apply_authored(from.engine.author_id(), &page.changes)
            .await
            .unwrap();
        *after = page.next;
        if !page.more {
            return;
        }
    }
}

/// A change of the engine [`AHEAD`], `offset_ms` after the tests started.
fn ahead(id: &str, action: &str, data: serde_json::Value, offset_ms: i64) -> AuthoredChange {
    let data = match action {
        "delete" => serde_json::Value::Null,
        _ => data,
    };
    serde_json::from_value(json!({
        "entity": "todos", "id": id, "action": action, "data": data,
        "hlc": hlc(offset_ms, 0xc10c4), "version": 1,
    }))
    .unwrap()
}

/// Two servers on two databases of `backend`, with `id` on both (created on `a`).
async fn pair(backend: Backend, id: &str) -> (Server, Server, TestDb, TestDb, i64) {
    let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let (a, b) = (start(&db_a).await, start(&db_b).await);
    add_todo(&a, id, "first").await;
    let mut a_sent = 0;
    send(&a, &b, &mut a_sent).await;
    assert_eq!(todos(&b.db).await, todos(&a.db).await);
    (a, b, db_a, db_b, a_sent)
}

/// The `(title, completed)` of `id` on `server`, if it has the row.
async fn row(server: &Server, id: &str) -> Option<(String, bool)> {
    todos(&server.db)
        .await
        .into_iter()
        .find(|(i, _, _)| i == id)
        .map(|(_, t, c)| (t, c))
}

/// A change from a clock a minute ahead reaches both databases; then `a` overwrites it
/// in `write`, and both must end with `expected`.
async fn after_a_change_from_ahead<F, Fut>(
    backend: Backend,
    change: &str,
    write: F,
    expected: (&str, bool),
) where
    F: FnOnce(Server, String) -> Fut,
    Fut: std::future::Future<Output = Server>,
{
    let id = todo_id("r1");
    let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
    let theirs = ahead(&id, change, json!({"title": "from ahead"}), 60_000);
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs))
            .await;
        assert_eq!(done.unwrap().applied, 1);
    }
    let a = write(a, id.clone()).await;
    send(&a, &b, &mut a_sent).await;
    let expected = Some((expected.0.to_owned(), expected.1));
    assert_eq!(row(&a, &id).await, expected, "a holds its own write");
    assert_eq!(
        row(&b, &id).await,
        expected,
        "b keeps what a wrote after it"
    );
    // The entry a exported is ordered after the change it overwrote.
    let mine = a.engine.authored_changes(0, 500).await.unwrap();
    let last = mine.changes.last().unwrap();
    assert!(last.hlc.to_string() > hlc(60_000, 0xc10c4), "{last:?}");
}

async fn an_sql_update_after_a_change_from_a_clock_ahead_wins_everywhere(backend: Backend) {
    after_a_change_from_ahead(
        backend,
        "update",
        |a, id| async move {
            a.db.execute(
                "UPDATE todos SET title = 'mine' WHERE id = $1",
                args![id.as_str()],
            )
            .await;
            a
        },
        ("mine", false),
    )
    .await;
}

async fn an_sql_insert_after_a_delete_from_a_clock_ahead_wins_everywhere(backend: Backend) {
    after_a_change_from_ahead(
        backend,
        "delete",
        |a, id| async move {
            add_todo(&a, &id, "again").await;
            a
        },
        ("again", false),
    )
    .await;
}

async fn a_push_after_a_change_from_a_clock_ahead_wins_everywhere(backend: Backend) {
    after_a_change_from_ahead(
        backend,
        "update",
        |a, id| async move {
            let seen = a.engine.head().await.unwrap();
            // A browser whose clock agrees with the server's, which has seen the change.
            let (status, res) = push_raw(
                &a.base,
                "todos",
                json!({"client_id": "tab-1", "changes": [{
                    "id": id, "action": "update", "data": {"title": "pushed"},
                    "hlc": hlc(0, 0xb0b), "client_version": seen,
                }]})
                .to_string(),
            )
            .await;
            assert_eq!(status, 200, "{res}");
            assert_eq!(res["conflicts"], json!([]), "{res}");
            a
        },
        ("pushed", false),
    )
    .await;
}

async fn an_engine_write_after_a_change_from_a_clock_ahead_wins_everywhere(backend: Backend) {
    after_a_change_from_ahead(
        backend,
        "update",
        |a, id| async move {
            let ctx = SyncContext::new().with_base_version(a.engine.head().await.unwrap());
            let done = a
                .engine
                .write_to("todos", &ctx)
                .update(
                    &id,
                    [("title", json!("written")), ("completed", json!(true))],
                )
                .await
                .unwrap();
            assert!(done.applied());
            a
        },
        ("written", true),
    )
    .await;
}

/// A change applied from another author whose HLC is below the row's greatest (it lost
/// on no field: it set another one) leaves the row's greatest in place, so a later write
/// here is still ordered after every change the row has seen.
async fn a_write_after_an_older_change_from_another_author_is_ordered_after_all(backend: Backend) {
    let id = todo_id("r3");
    let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
    let newest = ahead(&id, "update", json!({"title": "from ahead"}), 60_000);
    let older = ahead(&id, "update", json!({"completed": true}), 30_000);
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&newest))
            .await;
        assert_eq!(done.unwrap().applied, 1);
        // From a third engine, whose clock is ahead too, by less.
        let done = s
            .engine
            .apply_authored("0000000000000c30", std::slice::from_ref(&older));
        assert_eq!(done.await.unwrap().applied, 1);
    }
    a.db.execute(
        "UPDATE todos SET title = 'mine' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    let expected = Some(("mine".to_owned(), true));
    assert_eq!(row(&a, &id).await, expected);
    assert_eq!(row(&b, &id).await, expected);
}

/// Three servers on databases of `backend`, with `id` created on the first and known
/// to the others; `sent[i][j]` is how far server `i`'s changes reached server `j`.
async fn three(backend: Backend, id: &str) -> (Vec<Server>, Vec<TestDb>, [[i64; 3]; 3]) {
    let mut dbs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let db = TestDb::new(backend).await;
        servers.push(start(&db).await);
        dbs.push(db);
    }
    add_todo(&servers[0], id, "first").await;
    let mut sent = [[0; 3]; 3];
    for to in [1, 2] {
        send(&servers[0], &servers[to], &mut sent[0][to]).await;
    }
    (servers, dbs, sent)
}

/// An update made on one server to a row another created reaches a third before the
/// create: it waits there for the row, and all three end alike.
async fn an_update_that_arrives_before_its_rows_create_waits_for_it(backend: Backend) {
    let id = todo_id("r4");
    let (db_a, db_b, db_c) = (
        TestDb::new(backend).await,
        TestDb::new(backend).await,
        TestDb::new(backend).await,
    );
    let (a, b, c) = (start(&db_a).await, start(&db_b).await, start(&db_c).await);
    let (mut ab, mut ac, mut ba, mut bc) = (0, 0, 0, 0);
    add_todo(&a, &id, "first").await;
    send(&a, &b, &mut ab).await;
    b.db.execute(
        "UPDATE todos SET title = 'from b' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    // c hears from b first: the update of a row it does not have yet.
    all_numbered(&b.db).await;
    let page = b.engine.authored_changes(bc, 500).await.unwrap();
    let done = c.engine.apply_authored(b.engine.author_id(), &page.changes);
    let done = done.await.unwrap();
    assert_eq!((done.parked, done.applied), (1, 0), "{done:?}");
    bc = page.next;
    assert_eq!(row(&c, &id).await, None);
    send(&a, &c, &mut ac).await;
    send(&b, &c, &mut bc).await;
    send(&b, &a, &mut ba).await;
    let expected = Some(("from b".to_owned(), false));
    for s in [&a, &b, &c] {
        assert_eq!(row(s, &id).await, expected);
    }
    // Nothing is left waiting, and nothing was logged as a delete.
    let left: i64 =
        c.db.scalar("SELECT count(*) FROM _rhtmx_sync_parked", args![])
            .await;
    assert_eq!(left, 0);
    let deletes: i64 =
        c.db.scalar(
            "SELECT count(*) FROM _rhtmx_sync_log WHERE action = 'delete'",
            args![],
        )
        .await;
    assert_eq!(deletes, 0);
}

/// The sequence the attack on bundles found: a deletes the row, c re-creates it, b
/// (which never saw the delete) then edits it. Whatever order each server hears the
/// others in, all three end with the re-created row and b's edit.
async fn a_delete_a_re_creation_and_a_later_edit_end_alike_on_three_servers(backend: Backend) {
    let id = todo_id("r5");
    let (servers, _dbs, mut sent) = three(backend, &id).await;
    let [a, b, c] = [&servers[0], &servers[1], &servers[2]];
    a.db.execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
        .await;
    send(a, c, &mut sent[0][2]).await;
    add_todo(c, &id, "again").await;
    let ctx = SyncContext::new()
        .with_hlc(soon(2_000, 0xb0b))
        .with_base_version(b.engine.head().await.unwrap());
    let done = b.engine.write_to("todos", &ctx);
    let done = done.update(&id, [("title", json!("edited on b"))]).await;
    assert!(done.unwrap().applied());
    // a hears b before c; b hears a before c; c hears b.
    send(b, a, &mut sent[1][0]).await;
    send(c, a, &mut sent[2][0]).await;
    send(a, b, &mut sent[0][1]).await;
    send(c, b, &mut sent[2][1]).await;
    send(b, c, &mut sent[1][2]).await;
    let expected = Some(("edited on b".to_owned(), false));
    for (name, s) in ["a", "b", "c"].into_iter().zip([a, b, c]) {
        assert_eq!(row(s, &id).await, expected, "{name}");
    }
}

/// An HLC a day or more ahead of this server cannot be real: the change is skipped, and
/// the row is left as it was.
async fn a_change_stamped_days_ahead_is_skipped(backend: Backend) {
    let id = todo_id("r7");
    let (a, _b, _db_a, _db_b, _) = pair(backend, &id).await;
    let change = ahead(
        &id,
        "update",
        json!({"title": "from the future"}),
        2 * 86_400_000,
    );
    let done = a.engine.apply_authored(AHEAD, &[change]).await.unwrap();
    assert_eq!((done.skipped, done.applied), (1, 0), "{done:?}");
    assert_eq!(row(&a, &id).await, Some(("first".to_owned(), false)));
}

/// A damaged HLC in the log never fails the app's own write, nor moves it earlier.
async fn a_damaged_hlc_in_the_log_does_not_fail_the_apps_write(backend: Backend) {
    let id = todo_id("r8");
    let (a, _b, _db_a, _db_b, _) = pair(backend, &id).await;
    let theirs = ahead(&id, "update", json!({"title": "from ahead"}), 60_000);
    a.engine.apply_authored(AHEAD, &[theirs]).await.unwrap();
    all_numbered(&a.db).await;
    a.db.execute(
        "UPDATE _rhtmx_sync_log SET hlc = 'garbage' WHERE client_id LIKE 'author:%'",
        args![],
    )
    .await;
    a.db.execute(
        "UPDATE todos SET title = 'mine' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    assert_eq!(row(&a, &id).await, Some(("mine".to_owned(), false)));
    all_numbered(&a.db).await;
    let (hlc, origin): (Option<String>, Option<String>) =
        a.db.fetch_one(
            "SELECT hlc, origin_hlc FROM _rhtmx_sync_log WHERE version = \
             (SELECT max(version) FROM _rhtmx_sync_log)",
            args![],
        )
        .await;
    assert!(
        origin.is_none() && hlc.is_none_or(|h| h.as_str() > "001"),
        "moved earlier"
    );
}

/// Two servers whose `notes` (text keys) do not let deletes win, with `n1` on both.
async fn notes_pair(backend: Backend) -> (Server, Server, TestDb, TestDb, i64, i64) {
    let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
    for db in [&db_a, &db_b] {
        let pool = db.connect().await;
        pool.execute(
            "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)",
            args![],
        )
        .await;
        pool.close().await;
    }
    let notes =
        |b: rhtmx_sync::SyncEngineBuilder| b.entity_named("notes").delete_wins("notes", false);
    let (a, b) = (
        start_with(&db_a, notes).await,
        start_with(&db_b, notes).await,
    );
    a.db.execute("INSERT INTO notes VALUES ('n1', 'first')", args![])
        .await;
    let (mut a_sent, b_sent) = (0, 0);
    send(&a, &b, &mut a_sent).await;
    (a, b, db_a, db_b, a_sent, b_sent)
}

/// The body of `n1` on `server`, if it has the row.
async fn note(server: &Server) -> Option<String> {
    server
        .db
        .fetch_all::<(String, String)>("SELECT id, body FROM notes", args![])
        .await
        .into_iter()
        .find(|(id, _)| id == "n1")
        .map(|(_, body)| body)
}

/// Where deletes do not win, a delete and a concurrent update on two servers end the
/// same on both: the later by HLC wins, whichever server sees which first.
async fn without_delete_wins_the_later_of_a_delete_and_an_update_wins_everywhere(backend: Backend) {
    for update_later in [true, false] {
        let (a, b, _db_a, _db_b, mut a_sent, mut b_sent) = notes_pair(backend).await;
        let (update_at, delete_at) = match update_later {
            true => (2_000, 1_000),
            false => (1_000, 2_000),
        };
        // Each a user action on a page that showed the row as it was.
        let at = |hlc, base| SyncContext::new().with_hlc(hlc).with_base_version(base);
        let (update_at, delete_at) = (soon(update_at, 0xb), soon(delete_at, 0xa));
        let ctx = at(delete_at, a.engine.head().await.unwrap());
        let done = a.engine.write_to("notes", &ctx).delete("n1").await;
        assert!(done.unwrap().applied());
        let ctx = at(update_at, b.engine.head().await.unwrap());
        let done = b.engine.write_to("notes", &ctx);
        let done = done.update("n1", [("body", json!("edited"))]).await;
        assert!(done.unwrap().applied());
        send(&a, &b, &mut a_sent).await;
        send(&b, &a, &mut b_sent).await;
        let expected = update_later.then(|| "edited".to_owned());
        assert_eq!(note(&a).await, expected, "a, update later: {update_later}");
        assert_eq!(note(&b).await, expected, "b, update later: {update_later}");
    }
}

/// A row deleted and inserted again many times in a burst (as a handler replacing a
/// row does; many writes land in one millisecond) ends the same on both databases.
async fn a_row_replaced_in_a_burst_replicates_in_order(backend: Backend) {
    let id = todo_id("r2");
    let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
    for round in 0..20 {
        let title = format!("round {round}");
        a.db.execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
            .await;
        a.db.execute(
            "INSERT INTO todos (id, title) VALUES ($1, $2)",
            args![id.as_str(), title.as_str()],
        )
        .await;
    }
    send(&a, &b, &mut a_sent).await;
    assert_eq!(row(&b, &id).await, row(&a, &id).await);
    assert_eq!(row(&a, &id).await.unwrap().0, "round 19");
}

/// Compaction folds an earlier entry into the row's survivor, keeping only its field
/// clocks: a later write of that field is still ordered after it.
async fn a_write_after_compaction_folded_a_change_from_ahead_wins_everywhere(backend: Backend) {
    let id = todo_id("r9");
    let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let eager = |b: rhtmx_sync::SyncEngineBuilder| {
        b.compaction(
            rhtmx_sync::Compaction::new()
                .keep_history(std::time::Duration::ZERO)
                .keep_conflicts(std::time::Duration::ZERO)
                .every(None),
        )
    };
    let (a, b) = (start_with(&db_a, eager).await, start(&db_b).await);
    add_todo(&a, &id, "first").await;
    let mut a_sent = 0;
    send(&a, &b, &mut a_sent).await;
    let theirs = ahead(&id, "update", json!({"title": "from ahead"}), 60_000);
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().applied, 1);
    }
    // Another field: not ordered after the change from ahead.
    a.db.execute(
        "UPDATE todos SET completed = TRUE WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    all_numbered(&a.db).await;
    let report = a.engine.compact().await.unwrap();
    assert!(report.removed >= 2, "{report:?}");
    a.db.execute(
        "UPDATE todos SET title = 'mine' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    let expected = Some(("mine".to_owned(), true));
    assert_eq!(row(&a, &id).await, expected);
    assert_eq!(
        row(&b, &id).await,
        expected,
        "b keeps what a wrote after it"
    );
}

/// A log written before causal stamping has no `row_hlc`: the engine sets it when it
/// upgrades the log, so the first write after the upgrade is ordered after the row's
/// greatest HLC too.
async fn a_write_after_an_upgrade_from_an_older_log_wins_everywhere(backend: Backend) {
    let id = todo_id("r10");
    let (a, b, db_a, _db_b, mut a_sent) = pair(backend, &id).await;
    let theirs = ahead(&id, "update", json!({"title": "from ahead"}), 60_000);
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().applied, 1);
    }
    a.db.execute(
        "UPDATE todos SET completed = TRUE WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    // As an older engine left it.
    let older = match backend {
        Backend::Sqlite => "5",
        Backend::Postgres => "7",
    };
    a.db.execute("UPDATE _rhtmx_sync_log SET row_hlc = NULL", args![])
        .await;
    a.db.execute(
        "UPDATE _rhtmx_sync_meta SET value = $1 WHERE key = 'schema_version'",
        args![older],
    )
    .await;
    drop(a);
    let a = start(&db_a).await;
    a.db.execute(
        "UPDATE todos SET title = 'mine' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    let expected = Some(("mine".to_owned(), true));
    assert_eq!(row(&a, &id).await, expected);
    assert_eq!(
        row(&b, &id).await,
        expected,
        "b keeps what a wrote after it"
    );
}

/// An update that waits for its row (deleted where it arrived) is applied once this
/// server creates the row again itself — by its own SQL or `engine.write` — as it is on
/// a server where the re-creation came first.
async fn a_waiting_update_applies_to_a_row_this_server_creates_again(backend: Backend) {
    for by_sql in [true, false] {
        let id = todo_id(if by_sql { "r11" } else { "r12" });
        let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
        a.db.execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
            .await;
        send(&a, &b, &mut a_sent).await;
        // An edit from a server whose clock runs ahead reaches b, where the row is gone.
        let theirs = ahead(&id, "update", json!({"title": "from ahead"}), 60_000);
        let done = b
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().parked, 1);
        if by_sql {
            add_todo(&b, &id, "again").await;
        } else {
            let ctx = SyncContext::new().with_base_version(b.engine.head().await.unwrap());
            let done = b.engine.write_to("todos", &ctx);
            let done = done.create(&id, [("title", json!("again"))]).await;
            assert!(done.unwrap().applied());
        }
        let due = b.engine.apply_parked().await.unwrap();
        assert_eq!(due.applied, 1, "{due:?}");
        // a hears of the re-creation first, then of the edit.
        let mut b_sent = 0;
        send(&b, &a, &mut b_sent).await;
        let done = a
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().applied, 1);
        let expected = Some(("from ahead".to_owned(), false));
        assert_eq!(row(&a, &id).await, expected, "a, by SQL: {by_sql}");
        assert_eq!(row(&b, &id).await, expected, "b, by SQL: {by_sql}");
    }
}

/// A server whose log compaction folded a row's create into its later edits still
/// exports the whole row to a server that had none of it — the first exchange of an
/// existing database — with each field at the time of its last write.
async fn a_row_whose_create_compaction_folded_away_reaches_a_new_server_whole(backend: Backend) {
    let id = todo_id("r13");
    let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let eager = |b: rhtmx_sync::SyncEngineBuilder| {
        b.clock_tolerance(std::time::Duration::from_secs(3600))
            .compaction(
                rhtmx_sync::Compaction::new()
                    .keep_history(std::time::Duration::ZERO)
                    .keep_conflicts(std::time::Duration::ZERO)
                    .every(None),
            )
    };
    let (a, b) = (start_with(&db_a, eager).await, start(&db_b).await);
    add_todo(&a, &id, "first").await;
    a.db.execute(
        "UPDATE todos SET title = 'renamed' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    // The last edit, a minute from now (a user whose clock runs ahead).
    let ctx = SyncContext::new()
        .with_hlc(soon(60_000, 0xd))
        .with_base_version(a.engine.head().await.unwrap());
    let done = a.engine.write_to("todos", &ctx);
    assert!(done
        .update(&id, [("completed", json!(true))])
        .await
        .unwrap()
        .applied());
    all_numbered(&a.db).await;
    let report = a.engine.compact().await.unwrap();
    assert_eq!(report.removed, 2, "{report:?}");
    let mut a_sent = 0;
    send(&a, &b, &mut a_sent).await;
    let expected = Some(("renamed".to_owned(), true));
    assert_eq!(row(&b, &id).await, expected);
    // Sent again from the start (a peer that lost its position): nothing changes.
    send(&a, &b, &mut 0).await;
    assert_eq!(row(&b, &id).await, expected);
    // A third server's rename, after a's but before a's last edit, wins on both: the
    // title came with the time of a's rename, not of the row's last edit.
    let theirs: AuthoredChange = serde_json::from_value(json!({
        "entity": "todos", "id": id, "action": "update", "data": {"title": "from c"},
        "hlc": soon(30_000, 0xc).to_string(), "version": 1,
    }))
    .unwrap();
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().applied, 1);
    }
    let expected = Some(("from c".to_owned(), true));
    assert_eq!(row(&a, &id).await, expected);
    assert_eq!(row(&b, &id).await, expected);
}

/// Where deletes do not win, an update older than a delete, a later update restoring
/// the row, and the delete itself end alike whatever order two servers hear them in:
/// where the older update came before the delete, the restored row holds it, so it must
/// where it came after too — whether another server's update restores the row or this
/// server's own `engine.write` does.
async fn without_delete_wins_an_update_older_than_the_delete_survives_the_restore(
    backend: Backend,
) {
    for by_write in [false, true] {
        let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
        for db in [&db_a, &db_b] {
            let pool = db.connect().await;
            pool.execute(
                "CREATE TABLE cards (id TEXT PRIMARY KEY, body TEXT, tag TEXT)",
                args![],
            )
            .await;
            pool.execute("INSERT INTO cards VALUES ('c1', 'first', 'none')", args![])
                .await;
            pool.close().await;
        }
        let cards =
            |b: rhtmx_sync::SyncEngineBuilder| b.entity_named("cards").delete_wins("cards", false);
        let (a, b) = (
            start_with(&db_a, cards).await,
            start_with(&db_b, cards).await,
        );
        let seen = b.engine.head().await.unwrap();
        // Other servers: an edit of the body, then a delete, then an edit of the tag.
        let change = |action: &str, data: serde_json::Value, ms: u64, node: u64| {
            serde_json::from_value::<AuthoredChange>(json!({
                "entity": "cards", "id": "c1", "action": action, "data": data,
                "hlc": soon(ms, node).to_string(), "version": 1,
            }))
            .unwrap()
        };
        let edit = change("update", json!({"body": "edited"}), 1_000, 0xe01);
        let delete = change("delete", serde_json::Value::Null, 2_000, 0xd01);
        let tag = change("update", json!({"tag": "tagged"}), 3_000, 0xe02);
        let (e, d, t) = ("0000000000000e01", "0000000000000d01", "0000000000000e02");
        for (author, c) in [(e, &edit), (d, &delete), (t, &tag)] {
            a.engine
                .apply_authored(author, std::slice::from_ref(c))
                .await
                .unwrap();
        }
        for (author, c) in [(d, &delete), (e, &edit)] {
            b.engine
                .apply_authored(author, std::slice::from_ref(c))
                .await
                .unwrap();
        }
        if by_write {
            // A user of b who saw the row before the delete tags it.
            let ctx = SyncContext::new()
                .with_hlc(soon(3_000, 0xb))
                .with_base_version(seen);
            let done = b.engine.write_to("cards", &ctx);
            assert!(done
                .update("c1", [("tag", json!("tagged"))])
                .await
                .unwrap()
                .applied());
        } else {
            b.engine
                .apply_authored(t, std::slice::from_ref(&tag))
                .await
                .unwrap();
        }
        let card = |s: &Server| {
            let db = s.db.clone();
            async move {
                db.fetch_all::<(String, String, String)>("SELECT id, body, tag FROM cards", args![])
                    .await
            }
        };
        let expected = vec![("c1".to_owned(), "edited".to_owned(), "tagged".to_owned())];
        assert_eq!(card(&a).await, expected, "a: edit, delete, tag");
        assert_eq!(
            card(&b).await,
            expected,
            "b: delete, edit, tag; by write: {by_write}"
        );
    }
}

/// A row this server created, whose latest entry is another server's edit (or a
/// conflict report only), reaches a new server after compaction folded the create into
/// that entry.
async fn a_row_whose_latest_entry_is_not_this_servers_reaches_a_new_server_whole(backend: Backend) {
    for report_only in [false, true] {
        let id = todo_id(if report_only { "r14" } else { "r15" });
        let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
        let eager = |b: rhtmx_sync::SyncEngineBuilder| {
            b.compaction(
                rhtmx_sync::Compaction::new()
                    .keep_history(std::time::Duration::ZERO)
                    .keep_conflicts(std::time::Duration::ZERO)
                    .every(None),
            )
        };
        let (a, b) = (start_with(&db_a, eager).await, start(&db_b).await);
        add_todo(&a, &id, "first").await;
        let theirs = ahead(&id, "update", json!({"completed": true}), 60_000);
        let done = a
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().applied, 1);
        if report_only {
            // A browser's stale edit of the title loses to a's: a report, setting nothing.
            let (status, res) = push_raw(
                &a.base,
                "todos",
                json!({"client_id": "tab-1", "changes": [{
                    "id": id, "action": "update", "data": {"completed": false},
                    "hlc": hlc(-60_000, 0xb0b), "client_version": 1,
                }]})
                .to_string(),
            )
            .await;
            assert_eq!(status, 200, "{res}");
        }
        all_numbered(&a.db).await;
        let report = a.engine.compact().await.unwrap();
        assert!(report.removed >= 1, "{report:?}");
        // b meets a for the first time, then hears from the third server.
        send(&a, &b, &mut 0).await;
        let done = b
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        done.await.unwrap();
        let expected = Some(("first".to_owned(), true));
        assert_eq!(row(&a, &id).await, expected, "report only: {report_only}");
        assert_eq!(row(&b, &id).await, expected, "report only: {report_only}");
    }
}

/// Two updates of one row that share an HLC (one handler's two writes) both wait on a
/// server that does not have the row yet, and both apply when it comes.
async fn two_updates_of_one_row_with_one_hlc_both_wait_for_the_row(backend: Backend) {
    let id = todo_id("r16");
    let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let (a, b) = (start(&db_a).await, start(&db_b).await);
    let create = ahead(
        &id,
        "create",
        json!({"title": "first", "completed": false}),
        0,
    );
    let done = a
        .engine
        .apply_authored(AHEAD, std::slice::from_ref(&create));
    assert_eq!(done.await.unwrap().applied, 1);
    let ctx = SyncContext::new()
        .with_hlc(soon(1_000, 0xa))
        .with_base_version(a.engine.head().await.unwrap());
    let w = a.engine.write_to("todos", &ctx);
    assert!(w
        .update(&id, [("title", json!("mine"))])
        .await
        .unwrap()
        .applied());
    let w = a.engine.write_to("todos", &ctx);
    assert!(w
        .update(&id, [("completed", json!(true))])
        .await
        .unwrap()
        .applied());
    let mut a_sent = 0;
    send(&a, &b, &mut a_sent).await;
    let done = b
        .engine
        .apply_authored(AHEAD, std::slice::from_ref(&create));
    done.await.unwrap();
    let expected = Some(("mine".to_owned(), true));
    assert_eq!(row(&a, &id).await, expected);
    assert_eq!(row(&b, &id).await, expected);
}

/// Damaged field clocks in the log never fail the app's own writes, nor an upgrade.
async fn damaged_field_clocks_do_not_fail_the_apps_writes(backend: Backend) {
    let id = todo_id("r17");
    let (a, _b, db_a, _db_b, _) = pair(backend, &id).await;
    let theirs = ahead(&id, "update", json!({"title": "from ahead"}), 60_000);
    a.engine.apply_authored(AHEAD, &[theirs]).await.unwrap();
    all_numbered(&a.db).await;
    a.db.execute(
        "UPDATE _rhtmx_sync_log SET clocks = '{\"title\":\"x\",\"completed\":[1]}'",
        args![],
    )
    .await;
    a.db.execute(
        "UPDATE todos SET title = 'mine' WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    assert_eq!(row(&a, &id).await, Some(("mine".to_owned(), false)));
    // And an engine upgrading that log starts.
    let older = match backend {
        Backend::Sqlite => "6",
        Backend::Postgres => "8",
    };
    a.db.execute(
        "UPDATE _rhtmx_sync_meta SET value = $1 WHERE key = 'schema_version'",
        args![older],
    )
    .await;
    drop(a);
    let a = start(&db_a).await;
    a.db.execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
        .await;
    assert_eq!(row(&a, &id).await, None);
}

/// A re-creation compaction folded into a later edit still outlives a delete of the
/// row's earlier life from a server that was offline: the compacted server keeps the
/// row, as one that was not compacted does.
async fn a_folded_re_creation_outlives_an_older_delete(backend: Backend) {
    let id = todo_id("r18");
    let (db_a, db_b) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let eager = |b: rhtmx_sync::SyncEngineBuilder| {
        b.compaction(
            rhtmx_sync::Compaction::new()
                .keep_history(std::time::Duration::ZERO)
                .keep_conflicts(std::time::Duration::ZERO)
                .every(None),
        )
    };
    let (a, b) = (start_with(&db_a, eager).await, start(&db_b).await);
    add_todo(&a, &id, "first").await;
    let mut a_sent = 0;
    send(&a, &b, &mut a_sent).await;
    // The server that will delete the first life heard of it; then a deletes the row,
    // creates it again and edits it.
    let first_life = a.engine.authored_changes(0, 500).await.unwrap().changes;
    a.db.execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
        .await;
    add_todo(&a, &id, "again").await;
    a.db.execute(
        "UPDATE todos SET completed = TRUE WHERE id = $1",
        args![id.as_str()],
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    all_numbered(&a.db).await;
    let report = a.engine.compact().await.unwrap();
    assert!(report.removed >= 2, "{report:?}");
    // Its delete, made before the re-creation (by HLC), arrives late.
    let created = first_life.last().unwrap().hlc;
    let delete: AuthoredChange = serde_json::from_value(json!({
        "entity": "todos", "id": id, "action": "delete",
        "hlc": rhtmx_sync::Hlc::new(created.physical_ms() + 1, 0, 0xd).to_string(),
        "version": 1,
    }))
    .unwrap();
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored("000000000000000d", std::slice::from_ref(&delete));
        done.await.unwrap();
    }
    let expected = Some(("again".to_owned(), true));
    assert_eq!(row(&b, &id).await, expected, "b, not compacted");
    assert_eq!(row(&a, &id).await, expected, "a, compacted");
}

/// A row replaced within one millisecond at the log versions 99,999 and 100,000 (where
/// a counter taken from the version wraps) replicates in order.
async fn a_row_replaced_across_version_100000_replicates_in_order(backend: Backend) {
    // The two writes must fall in one millisecond: tried until they do (PostgreSQL).
    for _ in 0..50 {
        let id = todo_id("r19");
        let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
        all_numbered(&a.db).await;
        let (jump, ms) = match backend {
            Backend::Sqlite => (
                "UPDATE sqlite_sequence SET seq = 99998 WHERE name = '_rhtmx_sync_log'",
                "substr(created_at, 1, 23)",
            ),
            Backend::Postgres => (
                "UPDATE _rhtmx_sync_meta SET value = '99998' WHERE key = 'head'",
                "date_trunc('milliseconds', created_at)::text",
            ),
        };
        a.db.execute(jump, args![]).await;
        // A handler replacing the row: on SQLite in one statement (one instant), on
        // PostgreSQL in one script (microseconds apart).
        let replace = match backend {
            Backend::Sqlite => format!(
                "CREATE TABLE replacing (id TEXT); \
                 CREATE TRIGGER replacing AFTER INSERT ON replacing BEGIN \
                 DELETE FROM todos WHERE id = NEW.id; \
                 INSERT INTO todos (id, title) VALUES (NEW.id, 'replaced'); END; \
                 INSERT INTO replacing VALUES ('{id}');"
            ),
            Backend::Postgres => format!(
                "BEGIN; DELETE FROM todos WHERE id = '{id}'; \
                 INSERT INTO todos (id, title) VALUES ('{id}', 'replaced'); COMMIT;"
            ),
        };
        a.db.execute_script(&replace).await;
        all_numbered(&a.db).await;
        let last: Vec<(i64, String)> =
            a.db.fetch_all(
                &format!("SELECT version, {ms} FROM _rhtmx_sync_log ORDER BY version"),
                args![],
            )
            .await;
        let [.., (v1, ms1), (v2, ms2)] = last.as_slice() else {
            panic!("{last:?}")
        };
        assert_eq!((*v1, *v2), (99_999, 100_000));
        if ms1 != ms2 {
            continue;
        }
        send(&a, &b, &mut a_sent).await;
        let expected = Some(("replaced".to_owned(), false));
        assert_eq!(row(&a, &id).await, expected);
        assert_eq!(row(&b, &id).await, expected);
        return;
    }
    panic!("a delete and an insert never fell in one millisecond");
}

/// A child whose parent has not reached this server yet (a foreign key refuses it)
/// waits, and is applied once the parent comes from another server.
async fn a_child_that_arrives_before_its_parent_waits_for_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    pool.execute_script(
        "CREATE TABLE lists (id TEXT PRIMARY KEY, name TEXT); \
         CREATE TABLE items (id TEXT PRIMARY KEY, list_id TEXT REFERENCES lists (id), \
         name TEXT);",
    )
    .await;
    pool.close().await;
    let server = start_with(&db, |b| b.entity_named("lists").entity_named("items")).await;
    let change = |entity: &str, id: &str, data: serde_json::Value| -> AuthoredChange {
        serde_json::from_value(json!({
            "entity": entity, "id": id, "action": "create", "data": data,
            "hlc": soon(0, 0xe).to_string(), "version": 1,
        }))
        .unwrap()
    };
    let item = change("items", "i1", json!({"list_id": "l1", "name": "milk"}));
    let list = change("lists", "l1", json!({"name": "shopping"}));
    let e1 = server
        .engine
        .apply_authored("0000000000000e01", std::slice::from_ref(&item));
    let done = e1.await.unwrap();
    assert_eq!(
        (done.parked, done.skipped, done.applied),
        (1, 0, 0),
        "{done:?}"
    );
    let e2 = server
        .engine
        .apply_authored("0000000000000e02", std::slice::from_ref(&list));
    let done = e2.await.unwrap();
    assert_eq!(done.applied, 2, "the list, then the item: {done:?}");
    let items: Vec<(String, String)> = server
        .db
        .fetch_all("SELECT id, list_id FROM items", args![])
        .await;
    assert_eq!(items, [("i1".to_owned(), "l1".to_owned())]);
    let left: i64 = server
        .db
        .scalar("SELECT count(*) FROM _rhtmx_sync_parked", args![])
        .await;
    assert_eq!(left, 0);
}

/// Many SQL writes of one field of a row in a burst (many in each millisecond) are
/// ordered by counter ticks within their millisecond: none is moved ahead of the
/// clock, and no two share an HLC.
async fn a_burst_of_writes_of_one_field_stays_on_the_clock(backend: Backend) {
    let id = todo_id("r20");
    let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
    let titles: Vec<String> = (0..1500).map(|i| format!("t{i:04}")).collect();
    a.db.execute_each(
        "UPDATE todos SET title = $1 WHERE id = $2",
        titles.iter().map(|t| args![t.as_str(), id.as_str()]),
    )
    .await;
    all_numbered(&a.db).await;
    let (moved, entries, distinct): (i64, i64, i64) =
        a.db.fetch_one(
            "SELECT count(*) FILTER (WHERE substr(hlc, 17, 5) = '99999'), count(*), \
             count(DISTINCT COALESCE(hlc, '') || created_at) FROM _rhtmx_sync_log \
             WHERE entity_id = $1",
            args![id.as_str()],
        )
        .await;
    assert_eq!(moved, 0, "no write moved ahead of the clock");
    assert_eq!(entries, distinct, "no two entries share an HLC");
    send(&a, &b, &mut a_sent).await;
    assert_eq!(row(&b, &id).await, row(&a, &id).await);
    assert_eq!(row(&a, &id).await.unwrap().0, "t1499");
}

/// Two SQL writes of one field in one millisecond, while another field holds a later
/// HLC (a server whose clock runs ahead wrote it): the second still wins everywhere.
async fn two_writes_of_a_field_in_one_millisecond_below_a_later_field(backend: Backend) {
    let id = todo_id("r21");
    let (a, b, _db_a, _db_b, mut a_sent) = pair(backend, &id).await;
    let theirs = ahead(&id, "update", json!({"completed": true}), 60_000);
    for s in [&a, &b] {
        let done = s
            .engine
            .apply_authored(AHEAD, std::slice::from_ref(&theirs));
        assert_eq!(done.await.unwrap().applied, 1);
    }
    // The later value is the smaller: a tie would go to "b" (the greater).
    a.db.execute_each(
        "UPDATE todos SET title = $1 WHERE id = $2",
        ["b", "a"].map(|t| args![t, id.as_str()]),
    )
    .await;
    send(&a, &b, &mut a_sent).await;
    let expected = Some(("a".to_owned(), true));
    assert_eq!(row(&a, &id).await, expected);
    assert_eq!(row(&b, &id).await, expected);
}

/// Where deletes do not win, an update parked for a row it reached only after its
/// delete is not taken into the row a later update restores when it belongs to an
/// earlier life of the row, even once compaction removed that life's create.
async fn a_parked_update_of_an_earlier_life_stays_out_of_the_restored_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    pool.execute(
        "CREATE TABLE cards (id TEXT PRIMARY KEY, body TEXT, tag TEXT)",
        args![],
    )
    .await;
    pool.close().await;
    let server = start_with(&db, |b| {
        b.entity_named("cards")
            .delete_wins("cards", false)
            .compaction(
                rhtmx_sync::Compaction::new()
                    .keep_history(std::time::Duration::ZERO)
                    .keep_conflicts(std::time::Duration::ZERO)
                    .every(None),
            )
    })
    .await;
    let change = |action: &str, data: serde_json::Value, ms: u64| {
        serde_json::from_value::<AuthoredChange>(json!({
            "entity": "cards", "id": "c1", "action": action,
            "data": if action == "delete" { serde_json::Value::Null } else { data },
            "hlc": soon(ms, 0xa).to_string(), "version": ms,
        }))
        .unwrap()
    };
    // Two lives of the row, from another server; its second life ends deleted.
    let lives = [
        change("create", json!({"body": "first", "tag": "none"}), 1_000),
        change("delete", json!(null), 3_000),
        change("create", json!({"body": "second", "tag": "none"}), 4_000),
        change("update", json!({"tag": "two"}), 5_000),
        change("delete", json!(null), 6_000),
    ];
    let a = "000000000000000a";
    server.engine.apply_authored(a, &lives).await.unwrap();
    all_numbered(&server.db).await;
    let report = server.engine.compact().await.unwrap();
    assert!(report.removed >= 3, "{report:?}");
    // An edit made during the first life, heard of only now, waits...
    let stale = serde_json::from_value::<AuthoredChange>(json!({
        "entity": "cards", "id": "c1", "action": "update", "data": {"body": "stale"},
        "hlc": soon(2_000, 0xc).to_string(), "version": 1,
    }))
    .unwrap();
    let done = server
        .engine
        .apply_authored("000000000000000c", std::slice::from_ref(&stale));
    assert_eq!(done.await.unwrap().parked, 1);
    // ...and a later edit restores the row as the second life left it.
    let restore = serde_json::from_value::<AuthoredChange>(json!({
        "entity": "cards", "id": "c1", "action": "update", "data": {"tag": "restored"},
        "hlc": soon(7_000, 0xe).to_string(), "version": 1,
    }))
    .unwrap();
    let done = server
        .engine
        .apply_authored("000000000000000e", std::slice::from_ref(&restore));
    // The waiting edit is applied after it too, and loses every field.
    assert_eq!(done.await.unwrap().applied, 2);
    let cards: Vec<(String, String, String)> = server
        .db
        .fetch_all("SELECT id, body, tag FROM cards", args![])
        .await;
    assert_eq!(cards, [("c1".into(), "second".into(), "restored".into())]);
}

both!(
    a_parked_update_of_an_earlier_life_stays_out_of_the_restored_row,
    a_burst_of_writes_of_one_field_stays_on_the_clock,
    two_writes_of_a_field_in_one_millisecond_below_a_later_field,
    a_child_that_arrives_before_its_parent_waits_for_it,
    a_row_replaced_across_version_100000_replicates_in_order,
    a_folded_re_creation_outlives_an_older_delete,
    a_row_whose_latest_entry_is_not_this_servers_reaches_a_new_server_whole,
    two_updates_of_one_row_with_one_hlc_both_wait_for_the_row,
    damaged_field_clocks_do_not_fail_the_apps_writes,
    without_delete_wins_an_update_older_than_the_delete_survives_the_restore,
    a_row_whose_create_compaction_folded_away_reaches_a_new_server_whole,
    a_waiting_update_applies_to_a_row_this_server_creates_again,
    a_write_after_an_upgrade_from_an_older_log_wins_everywhere,
    a_write_after_compaction_folded_a_change_from_ahead_wins_everywhere,
    an_sql_update_after_a_change_from_a_clock_ahead_wins_everywhere,
    an_sql_insert_after_a_delete_from_a_clock_ahead_wins_everywhere,
    a_push_after_a_change_from_a_clock_ahead_wins_everywhere,
    an_engine_write_after_a_change_from_a_clock_ahead_wins_everywhere,
    a_row_replaced_in_a_burst_replicates_in_order,
    a_write_after_an_older_change_from_another_author_is_ordered_after_all,
    without_delete_wins_the_later_of_a_delete_and_an_update_wins_everywhere,
    an_update_that_arrives_before_its_rows_create_waits_for_it,
    a_delete_a_re_creation_and_a_later_edit_end_alike_on_three_servers,
    a_change_stamped_days_ahead_is_skipped,
    a_damaged_hlc_in_the_log_does_not_fail_the_apps_write,
);
