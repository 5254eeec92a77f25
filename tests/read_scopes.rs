//! Scopes: every principal pulls, streams and pushes only the rows its scope holds.
//! Two tenants with two users each; `docs` scoped by tenant, `notes` by owner, `news`
//! public, `secrets` given no scope (so readable by nobody). Each test tries the other
//! principals' rows through every endpoint and checks that no row, change or id leaks and
//! that nothing is written.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use common::*;
use rhtmx_sync::{BuildError, Principal, Scope, SyncEngine};
use serde_json::{json, Value};

/// Which tenant each user is in now; a test moves users by editing it.
static DIRECTORY: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

fn set_tenant(user: &str, tenant: Option<&str>) {
    let mut dir = DIRECTORY.lock().unwrap();
    let dir = dir.get_or_insert_with(HashMap::new);
    match tenant {
        Some(t) => dir.insert(user.to_owned(), t.to_owned()),
        None => dir.remove(user),
    };
}

/// The app's notion of who is asking: the `x-user` header (its session, in an app) and
/// the tenant the directory has for that user.
struct Session(Principal);

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(user) = parts.headers.get("x-user") else {
            return Ok(Session(Principal::anonymous()));
        };
        let user = String::from_utf8_lossy(user.as_bytes()).into_owned();
        let tenant = DIRECTORY
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|d| d.get(&user).cloned());
        let principal = Principal::user(user);
        Ok(Session(match tenant {
            Some(t) => principal.in_tenant(t),
            None => principal,
        }))
    }
}

impl From<Session> for Principal {
    fn from(s: Session) -> Principal {
        s.0
    }
}

/// Users are named per test and backend (`{prefix}-{backend}-alice`): tests share the
/// directory.
struct World {
    server_base: String,
    pool: Db,
    engine: SyncEngine,
    prefix: String,
    users: [String; 4],
    _task: tokio::task::JoinHandle<()>,
    _db: TestDb,
}

const TENANT_OF: [usize; 4] = [0, 0, 1, 1];

impl World {
    async fn new(backend: Backend, prefix: &str) -> World {
        World::build(backend, prefix, |b| b).await
    }

    async fn build(
        backend: Backend,
        prefix: &str,
        configure: impl FnOnce(rhtmx_sync::SyncEngineBuilder) -> rhtmx_sync::SyncEngineBuilder,
    ) -> World {
        let (db, pool) = pool_with(
            backend,
            "CREATE TABLE docs (id TEXT PRIMARY KEY, tenant_id TEXT, body TEXT);
             CREATE TABLE notes (id TEXT PRIMARY KEY, owner_id TEXT, body TEXT);
             CREATE TABLE news (id TEXT PRIMARY KEY, body TEXT);
             CREATE TABLE secrets (id TEXT PRIMARY KEY, body TEXT);",
        )
        .await;
        // Both backends' runs of a test go at once: each has its own users.
        let prefix = format!("{prefix}-{backend:?}");
        let users = ["alice", "amy", "bob", "bea"].map(|u| format!("{prefix}-{u}"));
        for (i, user) in users.iter().enumerate() {
            set_tenant(user, Some(&tenant(&prefix, TENANT_OF[i])));
        }
        let engine = SyncEngine::builder(engine_pool(&pool))
            .entity_named("docs")
            .entity_named("notes")
            .entity_named("news")
            .entity_named("secrets")
            .authenticate::<Session>()
            .scope("docs", Scope::tenant("tenant_id"))
            .scope("notes", Scope::owner("owner_id"))
            .scope("news", Scope::public())
            .writable("docs")
            .writable("notes")
            .writable("secrets");
        let engine = configure(engine).build().await.unwrap();
        let (server_base, task) = serve(engine.routes()).await;
        World {
            server_base,
            pool,
            engine,
            prefix,
            users,
            _task: task,
            _db: db,
        }
    }

    fn user(&self, i: usize) -> &str {
        &self.users[i]
    }

    /// Tenant `i` of this world.
    fn tenant(&self, i: usize) -> String {
        tenant(&self.prefix, i)
    }

    async fn pull_as(&self, user: &str, entity: &str, since: &str) -> (u16, String) {
        let res = client()
            .get(format!(
                "{}/api/sync/{entity}?since={since}",
                self.server_base
            ))
            .header("x-user", user)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn push_as(&self, user: &str, entity: &str, changes: Value) -> (u16, Value) {
        let res = client()
            .post(format!("{}/api/sync/{entity}", self.server_base))
            .header("x-user", user)
            .header("content-type", "application/json")
            .body(json!({ "changes": changes }).to_string())
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn stream_as(&self, user: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = client()
            .get(format!("{}/api/sync/events", self.server_base))
            .header("x-user", user);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Sse::open(req).await
    }

    /// Every table and the whole log, to show a refused write changed nothing.
    async fn dump(&self) -> String {
        let mut out = String::new();
        // What is committed is numbered first (PostgreSQL numbers the log after commit).
        self.engine.head().await.unwrap();
        let log: Vec<(Option<i64>, String, String, Option<String>)> = self
            .pool
            .fetch_all(
                "SELECT version, entity, entity_id, data FROM _rhtmx_sync_log ORDER BY version",
                args![],
            )
            .await;
        out.push_str(&format!("{log:?}"));
        let rows: Vec<(String, Option<String>, Option<String>)> = self
            .pool
            .fetch_all(
                "SELECT id, tenant_id, body FROM docs UNION ALL SELECT id, owner_id, body FROM notes \
                 UNION ALL SELECT id, NULL, body FROM secrets ORDER BY 1",
                args![],
            )
            .await;
        out.push_str(&format!("{rows:?}"));
        out
    }
}

/// A fresh database with `schema`; it lives as long as the returned guard.
async fn pool_with(backend: Backend, schema: &str) -> (TestDb, Db) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    script(&pool, schema).await;
    (db, pool)
}

/// Runs `sql`, any number of statements without parameters, on one connection.
async fn script(db: &Db, sql: &str) {
    match db {
        Db::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
        Db::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The engine's handle on the pool `db`.
fn engine_pool(db: &Db) -> rhtmx_sync::Pool {
    match db {
        Db::Sqlite(p) => p.into(),
        Db::Postgres(p) => p.into(),
    }
}

/// `open` gets a reset for an access change, and then nothing of tenant 0's doc: an edit
/// of it is followed by the next public change alone.
async fn resets_then_misses_tenant_0(w: &World, open: &mut Sse) {
    let event = open.next().await;
    assert_eq!(event.event, "reset", "{event:?}");
    assert_eq!(event.data["reason"], "access_changed");
    w.pool
        .execute(
            "UPDATE docs SET body = 'unseen' WHERE id = 'doc-of-0'",
            args![],
        )
        .await;
    w.pool
        .execute("INSERT INTO news VALUES ('end', '')", args![])
        .await;
    assert_eq!(open.next().await.data["id"], "end");
}

fn tenant(prefix: &str, i: usize) -> String {
    format!("{prefix}-tenant-{i}")
}

/// Each user's own note, and one doc per tenant, written by the app's own SQL.
async fn populate(w: &World) {
    for (i, user) in w.users.iter().enumerate() {
        w.pool
            .execute(
                "INSERT INTO notes VALUES ($1, $2, 'private')",
                args![format!("note-of-{i}"), user],
            )
            .await;
    }
    for t in 0..2 {
        w.pool
            .execute(
                "INSERT INTO docs VALUES ($1, $2, 'internal')",
                args![format!("doc-of-{t}"), w.tenant(t)],
            )
            .await;
    }
    w.pool
        .execute(
            "INSERT INTO secrets VALUES ('secret-1', 'nobody reads this')",
            args![],
        )
        .await;
    w.pool
        .execute(
            "INSERT INTO news VALUES ('news-1', 'everybody reads this')",
            args![],
        )
        .await;
}

fn ids(page: &str) -> BTreeSet<String> {
    let page: Value = serde_json::from_str(page).unwrap();
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of rows nobody but `i` may read: the other users' notes, the other
/// tenant's doc, the secret.
fn foreign(i: usize) -> Vec<String> {
    let mut out: Vec<String> = (0..4)
        .filter(|j| *j != i)
        .map(|j| format!("note-of-{j}"))
        .collect();
    out.push(format!("doc-of-{}", 1 - TENANT_OF[i]));
    out.push("secret-1".into());
    out
}

async fn each_principal_pulls_and_streams_only_its_scope(backend: Backend) {
    let w = World::new(backend, "pull").await;
    populate(&w).await;
    for (i, user) in w.users.iter().enumerate() {
        let (status, notes) = w.pull_as(user, "notes", "0").await;
        assert_eq!(status, 200, "{notes}");
        assert_eq!(ids(&notes), BTreeSet::from([format!("note-of-{i}")]));
        let (status, docs) = w.pull_as(user, "docs", "0").await;
        assert_eq!(status, 200, "{docs}");
        assert_eq!(
            ids(&docs),
            BTreeSet::from([format!("doc-of-{}", TENANT_OF[i])])
        );
        let (status, news) = w.pull_as(user, "news", "0").await;
        assert_eq!(
            (status, ids(&news)),
            (200, BTreeSet::from(["news-1".into()]))
        );
        // Nobody reads an entity the app gave no scope, once others have one.
        let (status, secrets) = w.pull_as(user, "secrets", "0").await;
        assert_eq!(status, 403, "{secrets}");
        for body in [&notes, &docs, &news, &secrets] {
            for id in foreign(i) {
                assert!(!body.contains(&id), "{user} got {id}: {body}");
            }
        }
    }
    // Anonymous: nothing scoped, only the public entity.
    let res = client()
        .get(format!("{}/api/sync/docs?since=0", w.server_base))
        .send()
        .await
        .unwrap();
    let body = res.text().await.unwrap();
    assert_eq!(ids(&body), BTreeSet::new(), "{body}");

    // The event stream, caught up from version 0 and then live.
    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(w.stream_as(w.user(i), Some("0")).await);
    }
    w.pool
        .execute("UPDATE docs SET body = 'edited'", args![])
        .await;
    w.pool
        .execute("UPDATE notes SET body = 'edited'", args![])
        .await;
    w.pool
        .execute("UPDATE secrets SET body = 'edited'", args![])
        .await;
    // Everybody reads news: its last change ends what each stream gets.
    w.pool
        .execute("INSERT INTO news VALUES ('news-end', 'end')", args![])
        .await;
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut seen = Vec::new();
        loop {
            let event = stream.next().await;
            assert_eq!(event.event, "message", "{event:?}");
            let id = event.data["id"].as_str().unwrap().to_owned();
            for other in foreign(i) {
                assert_ne!(id, other, "{} got {other}", w.user(i));
            }
            seen.push((
                event.data["entity"].as_str().unwrap().to_owned(),
                id.clone(),
            ));
            if id == "news-end" {
                break;
            }
        }
        let note = ("notes".to_owned(), format!("note-of-{i}"));
        let doc = ("docs".to_owned(), format!("doc-of-{}", TENANT_OF[i]));
        // Created (caught up from 0), then edited (live).
        assert_eq!(seen.iter().filter(|s| **s == note).count(), 2, "{seen:?}");
        assert_eq!(seen.iter().filter(|s| **s == doc).count(), 2, "{seen:?}");
    }
}
both!(each_principal_pulls_and_streams_only_its_scope);

async fn a_push_outside_the_principals_scope_is_refused_and_writes_nothing(backend: Backend) {
    let w = World::new(backend, "push").await;
    populate(&w).await;
    let bob = w.user(2);
    let a = w.tenant(0);
    let before = w.dump().await;
    let attempts = [
        // Another tenant's doc: edit, delete, edit against an old version (a conflict
        // report would show the row), take it over.
        (
            "docs",
            json!([{"id": "doc-of-0", "action": "update", "data": {"body": "x"}}]),
        ),
        ("docs", json!([{"id": "doc-of-0", "action": "delete"}])),
        (
            "docs",
            json!([{"id": "doc-of-0", "action": "update", "data": {"body": "x"}, "client_version": 1}]),
        ),
        (
            "docs",
            json!([{"id": "doc-of-0", "action": "update", "data": {"tenant_id": w.tenant(1)}}]),
        ),
        // A create over another tenant's key; a create into another tenant.
        (
            "docs",
            json!([{"id": "doc-of-0", "action": "create", "data": {"body": "mine"}}]),
        ),
        (
            "docs",
            json!([{"id": "new-doc", "action": "create", "data": {"tenant_id": a, "body": "x"}}]),
        ),
        // Moving one's own doc out of reach, alone or after a fine change.
        (
            "docs",
            json!([{"id": "doc-of-1", "action": "update", "data": {"tenant_id": a}}]),
        ),
        (
            "docs",
            json!([
                {"id": "fine", "action": "create", "data": {"body": "ok"}},
                {"id": "doc-of-1", "action": "update", "data": {"tenant_id": null}}
            ]),
        ),
        // Notes: another user's, and one made for another user.
        (
            "notes",
            json!([{"id": "note-of-0", "action": "update", "data": {"body": "x"}}]),
        ),
        ("notes", json!([{"id": "note-of-0", "action": "delete"}])),
        (
            "notes",
            json!([{"id": "forged", "action": "create", "data": {"owner_id": w.user(0), "body": "x"}}]),
        ),
    ];
    for (entity, changes) in &attempts {
        let (status, body) = w.push_as(bob, entity, changes.clone()).await;
        assert_eq!(status, 403, "{entity} {changes}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("outside what you may write"),
            "{body}"
        );
        for id in foreign(2) {
            assert!(!body.to_string().contains(&id) || changes.to_string().contains(&id));
        }
        assert_eq!(
            w.dump().await,
            before,
            "{entity} {changes} changed something"
        );
    }
    // Anonymous writes nothing scoped either.
    let res = client()
        .post(format!("{}/api/sync/notes", w.server_base))
        .header("content-type", "application/json")
        .body(
            json!({"changes": [{"id": "anon", "action": "create", "data": {"body": "x"}}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(w.dump().await, before);

    // What is bob's goes through; a create without the scope column lands in his scope.
    let (status, body) = w
        .push_as(
            bob,
            "docs",
            json!([
                {"id": "doc-of-1", "action": "update", "data": {"body": "bob was here"}},
                {"id": "bobs-new", "action": "create", "data": {"body": "new"}}
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tenant_of_new: String = w
        .pool
        .scalar("SELECT tenant_id FROM docs WHERE id = 'bobs-new'", args![])
        .await;
    assert_eq!(tenant_of_new, w.tenant(1));
    let (status, body) = w
        .push_as(
            bob,
            "notes",
            json!([{"id": "bobs-note", "action": "create", "data": {"body": "n"}}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // bea, in bob's tenant, sees his new doc; alice does not.
    assert!(ids(&w.pull_as(w.user(3), "docs", "0").await.1).contains("bobs-new"));
    assert!(!w
        .pull_as(w.user(0), "docs", "0")
        .await
        .1
        .contains("bobs-new"));
}
both!(a_push_outside_the_principals_scope_is_refused_and_writes_nothing);

async fn a_row_moved_to_another_scope_leaves_one_mirror_and_enters_the_other(backend: Backend) {
    let w = World::new(backend, "move").await;
    populate(&w).await;
    let (alice, bob) = (w.user(0), w.user(2));
    let cursor_of = |page: &str| {
        let page: Value = serde_json::from_str(page).unwrap();
        page["cursor"].as_str().unwrap().to_owned()
    };
    let alice_cursor = cursor_of(&w.pull_as(alice, "docs", "0").await.1);
    let bob_cursor = cursor_of(&w.pull_as(bob, "docs", "0").await.1);
    let mut alice_sse = w.stream_as(alice, None).await;
    let mut bob_sse = w.stream_as(bob, None).await;
    w.pool
        .execute(
            "UPDATE docs SET tenant_id = $1, body = 'moved' WHERE id = 'doc-of-0'",
            args![w.tenant(1)],
        )
        .await;
    let gone = alice_sse.next().await;
    assert_eq!(gone.data["id"], "doc-of-0");
    assert_eq!(gone.data["action"], "delete", "{gone:?}");
    assert!(gone.data.get("data").is_none(), "{gone:?}");
    let came = bob_sse.next().await;
    assert_eq!(came.data["id"], "doc-of-0");
    assert_eq!(came.data["action"], "create", "{came:?}");
    assert_eq!(came.data["data"]["body"], "moved");
    assert_eq!(came.data["data"]["tenant_id"], w.tenant(1));
    // The same by pull, from the cursors of before.
    let page: Value =
        serde_json::from_str(&w.pull_as(alice, "docs", &alice_cursor).await.1).unwrap();
    assert_eq!(page["changes"][0]["action"], "delete", "{page}");
    assert_eq!(page["changes"].as_array().unwrap().len(), 1, "{page}");
    let page: Value = serde_json::from_str(&w.pull_as(bob, "docs", &bob_cursor).await.1).unwrap();
    assert_eq!(page["changes"][0]["action"], "create", "{page}");
    assert_eq!(page["changes"][0]["data"]["body"], "moved", "{page}");
    // A later edit reaches bob only; a delete too.
    w.pool
        .execute(
            "UPDATE docs SET body = 'again' WHERE id = 'doc-of-0'",
            args![],
        )
        .await;
    w.pool
        .execute("DELETE FROM docs WHERE id = 'doc-of-0'", args![])
        .await;
    w.pool
        .execute("INSERT INTO news VALUES ('end', '')", args![])
        .await;
    let bob_saw: Vec<String> = bob_sse
        .take(3)
        .await
        .iter()
        .map(|e| format!("{} {}", e.data["id"], e.data["action"]))
        .collect();
    assert_eq!(
        bob_saw,
        [
            "\"doc-of-0\" \"update\"",
            "\"doc-of-0\" \"delete\"",
            "\"end\" \"create\""
        ]
    );
    assert_eq!(alice_sse.next().await.data["id"], "end");
}
both!(a_row_moved_to_another_scope_leaves_one_mirror_and_enters_the_other);

async fn a_principal_whose_access_changed_resets_by_pull_and_on_its_open_stream(backend: Backend) {
    let w = World::new(backend, "revoke").await;
    populate(&w).await;
    let alice = w.user(0);
    let page: Value = serde_json::from_str(&w.pull_as(alice, "docs", "0").await.1).unwrap();
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let mut open = w.stream_as(alice, Some(&cursor)).await;
    // Alice leaves her tenant.
    set_tenant(alice, None);
    // Offline meanwhile: her next pull from the old cursor resets, and from 0 she
    // gets nothing of the tenant.
    let (status, body) = w.pull_as(alice, "docs", &cursor).await;
    assert_eq!(status, 409, "{body}");
    let reset: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reset["reset"]["reason"], "access_changed");
    let fresh = reset["reset"]["cursor"].as_str().unwrap();
    assert!(ids(&w.pull_as(alice, "docs", "0").await.1).is_empty());
    // The fresh cursor resumes.
    assert_eq!(w.pull_as(alice, "docs", fresh).await.0, 200);
    // Online: the app says access changed; her open stream resets, and then carries
    // nothing of the tenant.
    w.engine.access_changed();
    resets_then_misses_tenant_0(&w, &mut open).await;
    // A stream whose access did not change is not reset.
    let mut amy = w.stream_as(w.user(1), None).await;
    w.engine.access_changed();
    w.pool
        .execute("INSERT INTO news VALUES ('end-2', '')", args![])
        .await;
    assert_eq!(amy.next().await.data["id"], "end-2");
}
both!(a_principal_whose_access_changed_resets_by_pull_and_on_its_open_stream);

/// The projects `user` is a member of: the app's own rule, in its own SQL.
async fn projects_of(db: Db, user: Option<String>) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT CAST(project_id AS TEXT) FROM members WHERE \"user\" = $1";
    match db {
        Db::Sqlite(p) => sqlx::query_scalar(sql).bind(user).fetch_all(&p).await,
        Db::Postgres(p) => sqlx::query_scalar(sql).bind(user).fetch_all(&p).await,
    }
}

async fn a_keyed_scope_reads_the_apps_own_membership_rule(backend: Backend) {
    let (_db, pool) = pool_with(
        backend,
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, project_id INTEGER, title TEXT);
         CREATE TABLE members (\"user\" TEXT, project_id INTEGER);
         INSERT INTO members VALUES ('keyed-carol', 1), ('keyed-carol', 3), ('keyed-dan', 2);
         INSERT INTO tasks VALUES (10, 1, 'a'), (20, 2, 'b'), (30, 3, 'c');",
    )
    .await;
    let members = pool.clone();
    let engine = SyncEngine::builder(engine_pool(&pool))
        .entity_named("tasks")
        .authenticate::<Session>()
        .scope(
            "tasks",
            Scope::keyed("project_id", move |who: Principal| {
                projects_of(members.clone(), who.user)
            }),
        )
        .build()
        .await
        .unwrap();
    let (base, _task) = serve(engine.routes()).await;
    let pull_ids = |user: &'static str| {
        let base = base.clone();
        async move {
            let page: Value = client()
                .get(format!("{base}/api/sync/tasks?since=0"))
                .header("x-user", user)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(pull_ids("keyed-carol").await, [10, 30]);
    assert_eq!(pull_ids("keyed-dan").await, [20]);
    assert_eq!(pull_ids("keyed-nobody").await, Vec::<i64>::new());
}
both!(a_keyed_scope_reads_the_apps_own_membership_rule);

async fn a_table_logged_before_it_had_a_scope_is_scoped_from_its_whole_history(backend: Backend) {
    let (_db, pool) = pool_with(
        backend,
        "CREATE TABLE docs (id TEXT PRIMARY KEY, tenant_id TEXT, body TEXT)",
    )
    .await;
    // An engine without scopes logs a while.
    let unscoped = SyncEngine::builder(engine_pool(&pool))
        .entity_named("docs")
        .build()
        .await
        .unwrap();
    script(
        &pool,
        "INSERT INTO docs VALUES ('d1', 'history-a', 'x'), ('d2', 'history-b', 'y'), ('d3', 'history-a', 'z');
         UPDATE docs SET body = 'x2' WHERE id = 'd1';
         DELETE FROM docs WHERE id = 'd3';",
    )
    .await;
    drop(unscoped);
    set_tenant("history-user", Some("history-a"));
    let engine = SyncEngine::builder(engine_pool(&pool))
        .entity_named("docs")
        .authenticate::<Session>()
        .scope("docs", Scope::tenant("tenant_id"))
        .build()
        .await
        .unwrap();
    let (base, _task) = serve(engine.routes()).await;
    let body = client()
        .get(format!("{base}/api/sync/docs?since=0"))
        .header("x-user", "history-user")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ids(&body), BTreeSet::from(["d1".to_owned()]), "{body}");
    assert!(!body.contains("\"d2\""), "{body}");
    // The scope is recorded once: a second build changes nothing in the log.
    let log = |pool: Db| async move {
        pool.fetch_all::<(i64, Option<String>, Option<String>)>(
            "SELECT version, scope_before, scope_after FROM _rhtmx_sync_log \
             WHERE version IS NOT NULL ORDER BY version",
            args![],
        )
        .await
    };
    let first = log(pool.clone()).await;
    drop(engine);
    let again = SyncEngine::builder(engine_pool(&pool))
        .entity_named("docs")
        .authenticate::<Session>()
        .scope("docs", Scope::tenant("tenant_id"))
        .build()
        .await
        .unwrap();
    again.head().await.unwrap();
    assert_eq!(log(pool).await, first);
}
both!(a_table_logged_before_it_had_a_scope_is_scoped_from_its_whole_history);

async fn a_scope_the_engine_cannot_apply_is_a_build_error(backend: Backend) {
    let (_db, pool) = pool_with(
        backend,
        "CREATE TABLE docs (id TEXT PRIMARY KEY, tenant_id TEXT, body TEXT)",
    )
    .await;
    let pool = engine_pool(&pool);
    let no_auth = SyncEngine::builder(pool.clone())
        .entity_named("docs")
        .scope("docs", Scope::tenant("tenant_id"))
        .build()
        .await;
    assert!(
        matches!(no_auth, Err(BuildError::NoAuthenticator { ref table }) if table == "docs"),
        "{no_auth:?}"
    );
    for column in ["owner", "id"] {
        let wrong = SyncEngine::builder(pool.clone())
            .entity_named("docs")
            .authenticate::<Session>()
            .scope("docs", Scope::owner(column))
            .build()
            .await;
        assert!(
            matches!(wrong, Err(BuildError::ScopeColumn { column: ref c, .. }) if c == column),
            "{wrong:?}"
        );
    }
    // A public scope needs no principal.
    SyncEngine::builder(pool)
        .entity_named("docs")
        .scope("docs", Scope::public())
        .build()
        .await
        .unwrap();
}
both!(a_scope_the_engine_cannot_apply_is_a_build_error);

/// Every way a row's entry reaches the log records its scope: a REPLACE's victim (on
/// PostgreSQL, which has no REPLACE, an upsert that takes the row's slug over, key and
/// all), a key change, a write the triggers missed (logged at the next build), a cascade.
async fn every_path_into_the_log_records_the_scope(backend: Backend) {
    let foreign_keys = match backend {
        Backend::Sqlite => "PRAGMA foreign_keys = ON;",
        Backend::Postgres => "",
    };
    let (_db, pool) = pool_with(
        backend,
        &format!(
            "{foreign_keys}
             CREATE TABLE docs (id TEXT PRIMARY KEY, tenant_id TEXT, slug TEXT UNIQUE, body TEXT);
             CREATE TABLE parts (id TEXT PRIMARY KEY, tenant_id TEXT,
                                 doc TEXT REFERENCES docs (id) ON DELETE CASCADE);"
        ),
    )
    .await;
    set_tenant("paths-user", Some("paths-a"));
    let build = || {
        SyncEngine::builder(engine_pool(&pool))
            .entity_named("docs")
            .entity_named("parts")
            .authenticate::<Session>()
            .scope("docs", Scope::tenant("tenant_id"))
            .scope("parts", Scope::tenant("tenant_id"))
            .build()
    };
    let engine = build().await.unwrap();
    let take_slug = match backend {
        Backend::Sqlite => {
            "INSERT OR REPLACE INTO docs VALUES ('other', 'paths-b', 's1', 'took the slug')"
        }
        Backend::Postgres => {
            "INSERT INTO docs VALUES ('other', 'paths-b', 's1', 'took the slug')
             ON CONFLICT (slug) DO UPDATE
             SET id = excluded.id, tenant_id = excluded.tenant_id, body = excluded.body"
        }
    };
    // One connection: the PRAGMA holds for the statements after it.
    script(
        &pool,
        &format!(
            "{foreign_keys}
             INSERT INTO docs VALUES ('victim', 'paths-a', 's1', 'v'), ('keyed', 'paths-a', 's2', 'k'),
                                     ('parent', 'paths-a', 's3', 'p');
             INSERT INTO parts VALUES ('child', 'paths-a', 'parent');
             {take_slug};
             UPDATE docs SET id = 'rekeyed' WHERE id = 'keyed';
             DELETE FROM docs WHERE id = 'parent';"
        ),
    )
    .await;
    drop(engine);
    // Written while no engine ran and the triggers were gone: the next build logs it.
    match &pool {
        Db::Sqlite(p) => {
            assert!(rhtmx_sync::drop_triggers(p).await.unwrap() > 0);
        }
        // No `drop_triggers` there: a migration drops the engine's triggers itself.
        Db::Postgres(_) => {
            script(
                &pool,
                "DO $$ DECLARE t record; dropped int := 0; BEGIN
                     FOR t IN SELECT tgname, tgrelid::regclass AS tab FROM pg_trigger
                              WHERE tgname LIKE '\\_rhtmx\\_sync\\_%' AND NOT tgisinternal LOOP
                         EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tab);
                         dropped := dropped + 1;
                     END LOOP;
                     IF dropped = 0 THEN RAISE EXCEPTION 'no trigger of the engine'; END IF;
                 END $$",
            )
            .await
        }
    }
    pool.execute(
        "INSERT INTO docs VALUES ('unseen', 'paths-a', 's4', 'u')",
        args![],
    )
    .await;
    let engine = build().await.unwrap();
    let (base, _task) = serve(engine.routes()).await;
    let pull = |entity: &'static str| {
        let base = base.clone();
        async move {
            let page: Value = client()
                .get(format!("{base}/api/sync/{entity}?since=0"))
                .header("x-user", "paths-user")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        c["id"].as_str().unwrap(),
                        c["action"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        pull("docs").await,
        [
            "victim create",
            "keyed create",
            "parent create",
            // The REPLACE's victim was tenant a's: its delete reaches tenant a, the row
            // that replaced it (tenant b's) does not.
            "victim delete",
            "keyed delete",
            "rekeyed create",
            "parent delete",
            "unseen create",
        ]
    );
    assert_eq!(pull("parts").await, ["child create", "child delete"]);
}
both!(every_path_into_the_log_records_the_scope);

/// The app's own handlers can hold a write to the signed-in user's scope, atomically.
async fn an_apps_write_within_a_principal_is_held_to_its_scope(backend: Backend) {
    let w = World::new(backend, "within").await;
    populate(&w).await;
    let bob = Principal::user(w.user(2)).in_tenant(w.tenant(1));
    let ctx = rhtmx_sync::SyncContext::new();
    let before = w.dump().await;
    let refused = w
        .engine
        .write_to("docs", &ctx)
        .within(&bob)
        .update("doc-of-0", [("body", "x")])
        .await;
    assert!(
        matches!(refused, Err(rhtmx_sync::Error::OutOfScope(0))),
        "{refused:?}"
    );
    let moved = w
        .engine
        .write_to("docs", &ctx)
        .within(&bob)
        .update("doc-of-1", [("tenant_id", w.tenant(0))])
        .await;
    assert!(
        matches!(moved, Err(rhtmx_sync::Error::OutOfScope(_))),
        "{moved:?}"
    );
    assert_eq!(w.dump().await, before);
    let own = w
        .engine
        .write_to("docs", &ctx)
        .within(&bob)
        .update("doc-of-1", [("body", "bob's")])
        .await
        .unwrap();
    assert!(own.applied());
    // Without `within` it is the app's own write, unchecked.
    let app = w
        .engine
        .write_to("docs", &ctx)
        .update("doc-of-0", [("body", "the app's")])
        .await
        .unwrap();
    assert!(app.applied());
}
both!(an_apps_write_within_a_principal_is_held_to_its_scope);

/// A session that ends, or a membership removed, without `access_changed()`: open
/// streams notice by themselves at the next recheck.
async fn open_streams_recheck_access_by_themselves(backend: Backend) {
    let w = World::build(backend, "recheck", |b| {
        b.access_recheck(std::time::Duration::from_millis(200))
    })
    .await;
    populate(&w).await;
    let alice = w.user(0);
    let mut open = w.stream_as(alice, None).await;
    set_tenant(alice, None);
    resets_then_misses_tenant_0(&w, &mut open).await;
}
both!(open_streams_recheck_access_by_themselves);

/// Every user against every row that is not theirs: update, delete, a take-over of the
/// scope column, and a create under the foreign key — all 403, nothing written.
async fn every_user_is_refused_every_other_users_and_tenants_rows(backend: Backend) {
    let w = World::new(backend, "matrix").await;
    populate(&w).await;
    let before = w.dump().await;
    for (i, user) in w.users.iter().enumerate() {
        let own_tenant = w.tenant(TENANT_OF[i]);
        for target in foreign(i) {
            if target == "secret-1" {
                continue; // not writable at all: see the push-closed tests
            }
            let (entity, column) = if target.starts_with("note") {
                ("notes", "owner_id")
            } else {
                ("docs", "tenant_id")
            };
            let mine = if entity == "notes" {
                user.clone()
            } else {
                own_tenant.clone()
            };
            for change in [
                json!({"id": target, "action": "update", "data": {"body": "x"}}),
                json!({"id": target, "action": "delete"}),
                json!({"id": target, "action": "update", "data": {column: mine}}),
                json!({"id": target, "action": "create", "data": {"body": "x"}}),
            ] {
                let (status, body) = w.push_as(user, entity, json!([change.clone()])).await;
                assert_eq!(status, 403, "{user} {entity} {change}: {body}");
            }
        }
    }
    assert_eq!(w.dump().await, before);
}
both!(every_user_is_refused_every_other_users_and_tenants_rows);

/// At sign-out the app names the principal: its streams end at once, whatever its
/// extractor would still say on the request the stream was opened with (a session
/// cached in that request); other principals' streams go on.
async fn a_revoked_principals_streams_end_and_others_go_on(backend: Backend) {
    let w = World::new(backend, "revoke-now").await;
    populate(&w).await;
    let (alice, bob) = (w.user(0), w.user(2));
    let mut alices = w.stream_as(alice, None).await;
    let mut bobs = w.stream_as(bob, None).await;
    w.engine
        .revoke(&Principal::user(alice).in_tenant(w.tenant(0)));
    assert!(alices.ended().await, "alice's stream ended");
    w.pool
        .execute("INSERT INTO news VALUES ('after', '')", args![])
        .await;
    assert_eq!(bobs.next().await.data["id"], "after");
}
both!(a_revoked_principals_streams_end_and_others_go_on);

async fn erasing_a_tenant_leaves_none_of_its_rows_history_and_the_others_whole(backend: Backend) {
    let w = World::new(backend, "erase").await;
    let (a, b) = (w.tenant(0), w.tenant(1));
    script(
        &w.pool,
        &format!(
            "INSERT INTO docs VALUES ('ea1', '{a}', 'secret-a1'), ('ea2', '{a}', 'secret-a2'), \
             ('eb1', '{b}', 'kept-b1');
             UPDATE docs SET body = 'secret-a1-v2' WHERE id = 'ea1';
             UPDATE docs SET body = 'kept-b1-v2' WHERE id = 'eb1';
             UPDATE docs SET tenant_id = '{b}', body = 'moved' WHERE id = 'ea2';
             DELETE FROM docs WHERE id = 'ea1';"
        ),
    )
    .await;
    let erased = w.engine.erase_scope("docs", &a).await.unwrap();
    assert_eq!(erased.rows, 2, "{erased:?}");
    let dump = w.dump().await;
    assert!(!dump.contains("secret"), "{dump}");
    // The other tenant's row keeps its history; the moved row keeps its present.
    assert_eq!(
        dump.matches("kept-b1").count(),
        3,
        "both entries and the row: {dump}"
    );
    assert!(dump.contains("moved"), "{dump}");
    // Tenant b's user still reads its rows, the moved one included.
    let (status, body) = w.pull_as(w.user(2), "docs", "0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body),
        BTreeSet::from(["ea2".to_owned(), "eb1".to_owned()]),
        "{body}"
    );
    let err = w.engine.erase_scope("nope", &a).await.unwrap_err();
    assert!(matches!(err, rhtmx_sync::Error::UnknownEntity(_)), "{err}");
}
both!(erasing_a_tenant_leaves_none_of_its_rows_history_and_the_others_whole);

async fn a_digest_covers_only_what_the_principal_holds(backend: Backend) {
    let w = World::new(backend, "digest").await;
    populate(&w).await;
    // A doc moves from tenant 0 to tenant 1: it leaves one mirror and enters the other.
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('moving', $1, 'first')",
            args![w.tenant(0)],
        )
        .await;
    w.pool
        .execute(
            "UPDATE docs SET tenant_id = $1, body = 'moved' WHERE id = 'moving'",
            args![w.tenant(1)],
        )
        .await;
    w.engine.head().await.unwrap();
    for (i, user) in w.users.iter().enumerate() {
        let (status, page) = w.pull_as(user, "docs", "0").await;
        assert_eq!(status, 200, "{page}");
        let page: Value = serde_json::from_str(&page).unwrap();
        // The mirror the client holds after applying the page in order.
        let mut held = std::collections::BTreeMap::new();
        for c in page["changes"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap().to_owned();
            if c["action"] == "delete" {
                held.remove(&id);
            } else {
                held.insert(id, (c["id"].clone(), c["data"].clone()));
            }
        }
        let mut mine = rhtmx_sync::integrity::Digest::default();
        for (id, data) in held.values() {
            mine.add("docs", id, data);
        }
        let cursor = page["cursor"].as_str().unwrap();
        let res = client()
            .get(format!(
                "{}/api/sync/docs/digest?at={cursor}",
                w.server_base
            ))
            .header("x-user", user)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["buckets"], json!(mine.hex()), "user {i}");
        // Every bucket's rows: only this principal's.
        let all: Vec<String> = (0..64).map(|b| b.to_string()).collect();
        let res = client()
            .get(format!(
                "{}/api/sync/docs/rows?at={cursor}&buckets={}",
                w.server_base,
                all.join(",")
            ))
            .header("x-user", user)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        let got: BTreeSet<String> = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let expected: BTreeSet<String> = if TENANT_OF[i] == 0 {
            ["doc-of-0".to_owned()].into()
        } else {
            ["doc-of-1".to_owned(), "moving".to_owned()].into()
        };
        assert_eq!(got, expected, "user {i}");
        for other in foreign(i) {
            assert!(!got.contains(&other), "user {i} sees {other}");
        }
    }
    // Nobody's digest of what nobody may read.
    let res = client()
        .get(format!("{}/api/sync/secrets/digest?at=0", w.server_base))
        .header("x-user", w.user(0))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}
both!(a_digest_covers_only_what_the_principal_holds);

async fn a_read_from_0_that_a_pass_hid_a_rows_leaving_from_resets(backend: Backend) {
    let keep_nothing = |b: rhtmx_sync::SyncEngineBuilder| {
        b.compaction(
            rhtmx_sync::Compaction::new()
                .keep_history(std::time::Duration::ZERO)
                .every(None),
        )
    };
    let w = World::build(backend, "leave", keep_nothing).await;
    let (a, b) = (w.tenant(0), w.tenant(1));
    let alice = w.user(0);
    w.pool
        .execute_each(
            "INSERT INTO docs VALUES ($1, $2, 'x')",
            (0..9).map(|i| args![format!("d{i}"), a.as_str()]),
        )
        .await;
    w.engine.head().await.unwrap();
    w.engine.compact().await.unwrap();
    let (status, page) = w.pull_as(alice, "docs", "0&limit=3").await;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let held = page["changes"][0]["id"].as_str().unwrap().to_owned();
    // A row alice holds leaves her tenant and changes again: a pass removes the entry
    // that said it left.
    w.pool
        .execute(
            "UPDATE docs SET tenant_id = $1 WHERE id = $2",
            args![b.as_str(), held.as_str()],
        )
        .await;
    w.pool
        .execute(
            "UPDATE docs SET body = 'y' WHERE id = $1",
            args![held.as_str()],
        )
        .await;
    w.engine.head().await.unwrap();
    w.engine.compact().await.unwrap();
    let (status, body) = w.pull_as(alice, "docs", &cursor).await;
    assert_eq!(status, 409, "going on would keep {held} for good: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reset"]["reason"], "behind_horizon", "{body}");
}
both!(a_read_from_0_that_a_pass_hid_a_rows_leaving_from_resets);

async fn an_erased_row_that_left_a_scope_still_leaves_its_readers(backend: Backend) {
    let w = World::new(backend, "erase-left").await;
    let (a, b) = (w.tenant(0), w.tenant(1));
    let alice = w.user(0);
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('m1', $1, 'secret-body'), ('k1', $1, 'kept')",
            args![a.as_str()],
        )
        .await;
    w.engine.head().await.unwrap();
    let (status, page) = w.pull_as(alice, "docs", "0").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        ids(&page),
        BTreeSet::from(["k1".to_owned(), "m1".to_owned()])
    );
    let cursor = serde_json::from_str::<Value>(&page).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    // The row moves to tenant b and changes again; then its history is erased.
    w.pool
        .execute(
            "UPDATE docs SET tenant_id = $1, body = 'secret-moved' WHERE id = 'm1'",
            args![b.as_str()],
        )
        .await;
    w.pool
        .execute("UPDATE docs SET body = 'now' WHERE id = 'm1'", args![])
        .await;
    w.engine.head().await.unwrap();
    w.engine.erase("docs", ["m1"]).await.unwrap();
    let dump = w.dump().await;
    assert!(!dump.contains("secret"), "{dump}");
    // Alice still learns that it left her tenant.
    let (status, page) = w.pull_as(alice, "docs", &cursor).await;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(changes[0]["id"], "m1");
    assert_eq!(changes[0]["action"], "delete", "{page}");
    // Bob, of tenant b, reads it as it is now.
    let (status, page) = w.pull_as(w.user(2), "docs", "0").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("\"now\"") && !page.contains("secret"),
        "{page}"
    );
}
both!(an_erased_row_that_left_a_scope_still_leaves_its_readers);

async fn an_erased_row_that_passed_through_a_tenant_shows_it_nothing_written_elsewhere(
    backend: Backend,
) {
    let w = World::new(backend, "erase-pass").await;
    let (a, b) = (w.tenant(0), w.tenant(1));
    let bob = w.user(2);
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('m1', $1, 'a-start')",
            args![a.as_str()],
        )
        .await;
    // Bob's cursor on an entry the erasure keeps.
    w.pool
        .execute("INSERT INTO news VALUES ('pad', '')", args![])
        .await;
    w.engine.head().await.unwrap();
    let (_, page) = w.pull_as(bob, "docs", "0").await;
    let cursor = serde_json::from_str::<Value>(&page).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    // Through tenant b and back to a, where it gets a value b must never see.
    for sql in [
        "UPDATE docs SET tenant_id = $1, body = 'while-in-b' WHERE id = 'm1'",
        "UPDATE docs SET tenant_id = $1 WHERE id = 'm1'",
    ] {
        let tenant = if sql.contains("while") { &b } else { &a };
        w.pool.execute(sql, args![tenant.as_str()]).await;
    }
    w.pool
        .execute("UPDATE docs SET body = 'A-ONLY' WHERE id = 'm1'", args![])
        .await;
    w.engine.head().await.unwrap();
    w.engine.erase("docs", ["m1"]).await.unwrap();
    let (status, page) = w.pull_as(bob, "docs", &cursor).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        !page.contains("A-ONLY") && !page.contains("while-in-b"),
        "{page}"
    );
    let changes: Vec<Value> = serde_json::from_str::<Value>(&page).unwrap()["changes"]
        .as_array()
        .unwrap()
        .clone();
    let actions: Vec<&str> = changes
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "delete"], "in, then out: {page}");
    // Nor the rows route at the version where it came in.
    let buckets = (0..64).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let res = client()
        .get(format!(
            "{}/api/sync/docs/rows?at={}&buckets={buckets}",
            w.server_base, changes[0]["version"]
        ))
        .header("x-user", bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(!body.contains("A-ONLY"), "{body}");
}
both!(an_erased_row_that_passed_through_a_tenant_shows_it_nothing_written_elsewhere);

async fn open_streams_go_on_across_compaction_and_erasure(backend: Backend) {
    let keep_nothing = |b: rhtmx_sync::SyncEngineBuilder| {
        b.compaction(
            rhtmx_sync::Compaction::new()
                .keep_history(std::time::Duration::ZERO)
                .keep_tombstones(std::time::Duration::ZERO)
                .every(None),
        )
    };
    let w = World::build(backend, "stream-on", keep_nothing).await;
    let bob = w.user(2);
    let mut stream = w.stream_as(bob, None).await;
    // The documented erasure: delete, then erase, while the stream is open.
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('x1', $1, 'personal')",
            args![w.tenant(0).as_str()],
        )
        .await;
    w.pool
        .execute("DELETE FROM docs WHERE id = 'x1'", args![])
        .await;
    w.engine.erase("docs", ["x1"]).await.unwrap();
    w.pool
        .execute("INSERT INTO news VALUES ('n1', 'x')", args![])
        .await;
    let event = stream.next().await;
    assert_eq!(
        (event.event.as_str(), &event.data["id"]),
        ("message", &json!("n1")),
        "{event:?}"
    );
    // The entry the stream last sent is a tombstone, and a pass drops it.
    w.pool
        .execute("DELETE FROM news WHERE id = 'n1'", args![])
        .await;
    let event = stream.next().await;
    assert_eq!(event.data["action"], "delete", "{event:?}");
    let report = w.engine.compact().await.unwrap();
    assert!(report.tombstones >= 1, "{report:?}");
    w.pool
        .execute("INSERT INTO news VALUES ('n2', 'y')", args![])
        .await;
    let event = stream.next().await;
    assert_eq!(
        (event.event.as_str(), &event.data["id"]),
        ("message", &json!("n2")),
        "{event:?}"
    );
}
both!(open_streams_go_on_across_compaction_and_erasure);

async fn a_latest_pull_still_tells_a_tenant_that_a_row_left_it(backend: Backend) {
    let w = World::new(backend, "latest").await;
    let (a, b) = (w.tenant(0), w.tenant(1));
    let (alice, bob) = (w.user(0), w.user(2));
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('l1', $1, 'one'), ('l2', $1, 'two')",
            args![a.as_str()],
        )
        .await;
    w.engine.head().await.unwrap();
    let cursor_of = |page: &str| {
        let page: Value = serde_json::from_str(page).unwrap();
        page["cursor"].as_str().unwrap().to_owned()
    };
    let alice_at = cursor_of(&w.pull_as(alice, "docs", "0&latest=true").await.1);
    let bob_at = cursor_of(&w.pull_as(bob, "docs", "0&latest=true").await.1);
    // l1 leaves for tenant b and changes there twice; l2 changes twice at home.
    w.pool
        .execute(
            "UPDATE docs SET tenant_id = $1 WHERE id = 'l1'",
            args![b.as_str()],
        )
        .await;
    for body in ["x", "y"] {
        w.pool
            .execute("UPDATE docs SET body = $1", args![body])
            .await;
    }
    w.engine.head().await.unwrap();
    let seen = |page: &str| -> Vec<String> {
        let page: Value = serde_json::from_str(page).unwrap();
        page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{} {} {}", c["id"], c["action"], c["data"]["body"]))
            .collect()
    };
    let (_, page) = w
        .pull_as(alice, "docs", &format!("{alice_at}&latest=true"))
        .await;
    assert_eq!(
        seen(&page),
        ["\"l1\" \"delete\" null", "\"l2\" \"update\" \"y\""],
        "{page}"
    );
    let (_, page) = w
        .pull_as(bob, "docs", &format!("{bob_at}&latest=true"))
        .await;
    // Bob gets where it came in (the entry where it left tenant a is kept for every
    // reader), then its latest.
    assert_eq!(
        seen(&page),
        ["\"l1\" \"create\" \"one\"", "\"l1\" \"update\" \"y\""],
        "{page}"
    );
    // From 0: the rows as they are, once each.
    let (_, page) = w.pull_as(bob, "docs", "0&latest=true").await;
    assert_eq!(seen(&page), ["\"l1\" \"update\" \"y\""], "{page}");
}
both!(a_latest_pull_still_tells_a_tenant_that_a_row_left_it);

async fn a_stream_says_where_it_is_when_it_had_nothing_to_send(backend: Backend) {
    let often =
        |b: rhtmx_sync::SyncEngineBuilder| b.keep_alive(std::time::Duration::from_millis(50));
    let w = World::build(backend, "told", often).await;
    let alice = w.user(0);
    let mut stream = w.stream_as(alice, None).await;
    // Only the other tenant writes: nothing for alice, yet her stream moved on.
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('o1', $1, 'not hers')",
            args![w.tenant(1).as_str()],
        )
        .await;
    let head = w.engine.head().await.unwrap();
    let told = stream.next().await;
    assert_eq!(told.event, "cursor", "{told:?}");
    assert_eq!(told.data["version"], head, "{told:?}");
    // Its id is a cursor alice resumes from, with nothing to read.
    let (status, page) = w.pull_as(alice, "docs", &told.id).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        serde_json::from_str::<Value>(&page).unwrap()["changes"],
        json!([])
    );
    // Said once, not at every tick.
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('a1', $1, 'hers')",
            args![w.tenant(0).as_str()],
        )
        .await;
    let next = stream.next().await;
    assert_eq!(
        (next.event.as_str(), &next.data["id"]),
        ("message", &json!("a1")),
        "{next:?}"
    );
}
both!(a_stream_says_where_it_is_when_it_had_nothing_to_send);

/// What a digest request answers `corrected` for `user`: the server checks its log
/// against the table within that principal's scope.
async fn corrected_for(w: &World, user: &str) -> Value {
    let res = client()
        .get(format!("{}/api/sync/docs/digest?at=0", w.server_base))
        .header("x-user", user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["corrected"].clone()
}

async fn the_log_check_of_a_digest_request_covers_the_principals_scope(backend: Backend) {
    let w = World::new(backend, "check").await;
    populate(&w).await;
    // A row that moved between tenants is in step for both.
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('moving', $1, 'first')",
            args![w.tenant(0)],
        )
        .await;
    w.pool
        .execute(
            "UPDATE docs SET tenant_id = $1, body = 'moved' WHERE id = 'moving'",
            args![w.tenant(1)],
        )
        .await;
    w.engine.head().await.unwrap();
    for user in &w.users {
        assert_eq!(
            corrected_for(&w, user).await,
            0,
            "{user}: nothing to correct"
        );
    }
    // Tenant 1's doc damaged in the log: tenant 0 has no business with it, tenant 1's
    // first request corrects it.
    w.pool
        .execute(
            "UPDATE _rhtmx_sync_log SET data = replace(data, 'internal', 'forged') \
             WHERE entity = 'docs' AND entity_id = 'doc-of-1'",
            args![],
        )
        .await;
    assert_eq!(corrected_for(&w, &w.users[0]).await, 0);
    assert_eq!(corrected_for(&w, &w.users[2]).await, 1);
    assert_eq!(corrected_for(&w, &w.users[3]).await, 0);
    let (_, page) = w.pull_as(&w.users[2], "docs", "0").await;
    let page: Value = serde_json::from_str(&page).unwrap();
    let last = page["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], "doc-of-1");
    assert_eq!(last["data"]["body"], "internal", "{last}");
    assert_eq!(w.engine.audit().await.unwrap(), 0);
}
both!(the_log_check_of_a_digest_request_covers_the_principals_scope);

async fn another_scopes_erasure_leaves_a_readers_cursor_valid(backend: Backend) {
    let w = World::new(backend, "erased-cursor").await;
    populate(&w).await;
    // Tenant 1 writes last: tenant 0's complete pull ends on tenant 1's entry.
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('t1-doc', $1, 'theirs')",
            args![w.tenant(1)],
        )
        .await;
    w.engine.head().await.unwrap();
    let (status, page) = w.pull_as(w.user(0), "docs", "0").await;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    w.pool
        .execute("DELETE FROM docs WHERE id = 't1-doc'", args![])
        .await;
    w.engine.erase("docs", ["t1-doc"]).await.unwrap();
    w.engine.head().await.unwrap();
    // The entry it stood on is gone; tenant 0 goes on without a resync.
    let (status, page) = w.pull_as(w.user(0), "docs", &cursor).await;
    assert_eq!(status, 200, "{page}");
    assert!(ids(&page).is_empty(), "nothing of tenant 1: {page}");
}
both!(another_scopes_erasure_leaves_a_readers_cursor_valid);

/// A log entry edited to put a row in another tenant's scope shows it to that tenant:
/// the check finds it, the audit logs the row's real scope (a move out of the wrong
/// one), and each tenant is told only of its own corrections.
async fn an_entry_moved_to_another_scope_by_hand_is_moved_back(backend: Backend) {
    let w = World::new(backend, "scope-damage").await;
    populate(&w).await;
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('secret-of-0', $1, 'alice secret')",
            args![w.tenant(0)],
        )
        .await;
    w.engine.head().await.unwrap();
    let (_, before) = w.pull_as(w.user(2), "docs", "0").await;
    let before: Value = serde_json::from_str(&before).unwrap();
    let cursor = before["cursor"].as_str().unwrap().to_owned();
    w.pool
        .execute(
            "UPDATE _rhtmx_sync_log SET scope_after = $1 \
             WHERE entity = 'docs' AND entity_id = 'secret-of-0'",
            args![w.tenant(1)],
        )
        .await;
    // Tenant 1 now pulls tenant 0's row: the damage. Its check corrects it.
    let (_, leaked) = w.pull_as(w.user(2), "docs", &cursor).await;
    assert!(ids(&leaked).is_empty(), "a cursor past the entry: {leaked}");
    assert_eq!(corrected_for(&w, w.user(2)).await, 1);
    w.engine.head().await.unwrap();
    let (status, page) = w.pull_as(w.user(2), "docs", &cursor).await;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(
        (&changes[0]["id"], &changes[0]["action"]),
        (&json!("secret-of-0"), &json!("delete")),
        "a removal, no values: {page}"
    );
    assert!(!page.to_string().contains("alice secret"), "{page}");
    // A fresh pull of tenant 1 no longer has it; tenant 0 holds it again.
    let (_, fresh) = w.pull_as(w.user(2), "docs", "0").await;
    let fresh: Value = serde_json::from_str(&fresh).unwrap();
    let mut held = BTreeSet::new();
    for c in fresh["changes"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap().to_owned();
        if c["action"] == "delete" {
            held.remove(&id);
        } else {
            held.insert(id);
        }
    }
    assert!(!held.contains("secret-of-0"), "{fresh}");
    assert_eq!(
        corrected_for(&w, w.user(0)).await,
        0,
        "in step for tenant 0"
    );
    assert_eq!(w.engine.audit().await.unwrap(), 0);

    // Damage in both tenants at once: each is told only of its own.
    for (id, tenant) in [("doc-of-0", 0), ("doc-of-1", 1), ("moving-1", 1)] {
        if id == "moving-1" {
            w.pool
                .execute(
                    "INSERT INTO docs VALUES ('moving-1', $1, 'internal')",
                    args![w.tenant(tenant)],
                )
                .await;
            w.engine.head().await.unwrap();
        }
        w.pool
            .execute(
                "UPDATE _rhtmx_sync_log SET data = replace(data, 'internal', 'forged') \
                 WHERE entity = 'docs' AND entity_id = $1",
                args![id],
            )
            .await;
    }
    assert_eq!(
        corrected_for(&w, w.user(0)).await,
        1,
        "its one row, not three"
    );
    assert_eq!(
        w.engine.audit().await.unwrap(),
        0,
        "the audit corrected all"
    );
}
both!(an_entry_moved_to_another_scope_by_hand_is_moved_back);

/// Applies a pull page's changes to a client's mirror of `docs`: id → (wire id, data).
fn apply_page(held: &mut std::collections::BTreeMap<String, (Value, Value)>, page: &str) -> String {
    let page: Value = serde_json::from_str(page).unwrap();
    for c in page["changes"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap().to_owned();
        if c["action"] == "delete" {
            held.remove(&id);
        } else {
            held.insert(id, (c["id"].clone(), c["data"].clone()));
        }
    }
    page["cursor"].as_str().unwrap().to_owned()
}

async fn get_as(w: &World, user: &str, path: &str) -> Value {
    let res = client()
        .get(format!("{}{path}", w.server_base))
        .header("x-user", user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Damage to an entry a later one supersedes (its scope edited into another tenant) is
/// not the row's latest entry, so the server's own check cannot see it; but a client
/// whose cursor is below it mirrors a row its scope does not hold, and its digest shows
/// that row's bucket alone, whose refetch removes it.
async fn an_older_entry_moved_to_another_scope_is_repaired_by_the_clients_digest(backend: Backend) {
    let w = World::new(backend, "old-damage").await;
    populate(&w).await;
    let mut held = std::collections::BTreeMap::new();
    let (_, page) = w.pull_as(w.user(2), "docs", "0").await;
    let cursor = apply_page(&mut held, &page);
    w.pool
        .execute(
            "INSERT INTO docs VALUES ('secret-of-0', $1, 'old secret')",
            args![w.tenant(0)],
        )
        .await;
    w.pool
        .execute(
            "UPDATE docs SET body = 'new secret' WHERE id = 'secret-of-0'",
            args![],
        )
        .await;
    w.engine.head().await.unwrap();
    w.pool
        .execute(
            "UPDATE _rhtmx_sync_log SET scope_after = $1 WHERE version = \
             (SELECT min(version) FROM _rhtmx_sync_log \
              WHERE entity = 'docs' AND entity_id = 'secret-of-0')",
            args![w.tenant(1)],
        )
        .await;
    let (status, page) = w.pull_as(w.user(2), "docs", &cursor).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        ids(&page).contains("secret-of-0"),
        "the damage reaches it: {page}"
    );
    let cursor = apply_page(&mut held, &page);

    let body = get_as(&w, w.user(2), &format!("/api/sync/docs/digest?at={cursor}")).await;
    let mut mine = rhtmx_sync::integrity::Digest::default();
    for (id, data) in held.values() {
        mine.add("docs", id, data);
    }
    let theirs: Vec<String> = serde_json::from_value(body["buckets"].clone()).unwrap();
    let differ: Vec<usize> = (0..theirs.len())
        .filter(|&b| theirs[b] != mine.hex()[b])
        .collect();
    let damaged = rhtmx_sync::integrity::bucket(&json!("secret-of-0"));
    assert_eq!(differ, vec![damaged], "{body}");

    let rows = get_as(
        &w,
        w.user(2),
        &format!("/api/sync/docs/rows?at={cursor}&buckets={damaged}"),
    )
    .await;
    assert_eq!(rows["complete"], true, "{rows}");
    held.retain(|_, (id, _)| rhtmx_sync::integrity::bucket(id) != damaged);
    for r in rows["rows"].as_array().unwrap() {
        held.insert(
            r["id"].as_str().unwrap().to_owned(),
            (r["id"].clone(), r["data"].clone()),
        );
    }
    assert!(!held.contains_key("secret-of-0"), "{rows}");
    let mut repaired = rhtmx_sync::integrity::Digest::default();
    for (id, data) in held.values() {
        repaired.add("docs", id, data);
    }
    assert_eq!(json!(repaired.hex()), body["buckets"]);
    // Tenant 0 never lost it.
    let (_, page) = w.pull_as(w.user(0), "docs", "0").await;
    assert!(page.contains("new secret"), "{page}");
}
both!(an_older_entry_moved_to_another_scope_is_repaired_by_the_clients_digest);

/// Two rows whose keys share one text form (`'1'` and `1` in an untyped SQLite column)
/// in two tenants are one row to clients: the audit compares one of them, and never
/// logs one's values under the other's scope.
async fn rows_sharing_a_key_text_never_mix_their_tenants(backend: Backend) {
    if backend != Backend::Sqlite {
        return; // PostgreSQL keys are typed: no two rows share a text form.
    }
    let (_db, pool) = pool_with(
        backend,
        "CREATE TABLE shared (id PRIMARY KEY, tenant_id TEXT, body TEXT);",
    )
    .await;
    let engine = SyncEngine::builder(engine_pool(&pool))
        .entity_named("shared")
        .authenticate::<Session>()
        .scope("shared", Scope::tenant("tenant_id"))
        .build()
        .await
        .unwrap();
    script(
        &pool,
        "INSERT INTO shared VALUES ('1', 't1', 'bob'); \
         INSERT INTO shared VALUES (1, 't0', 'alice secret');",
    )
    .await;
    engine.head().await.unwrap();
    assert_eq!(engine.audit().await.unwrap(), 0);
    let moved: i64 = pool
        .scalar(
            "SELECT count(*) FROM _rhtmx_sync_log WHERE data LIKE '%alice%' \
             AND scope_after IS NOT 't0'",
            args![],
        )
        .await;
    assert_eq!(moved, 0, "alice's values under another scope");
}
both!(rows_sharing_a_key_text_never_mix_their_tenants);
