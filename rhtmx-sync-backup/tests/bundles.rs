//! Change bundles: two engines with separate SQLite files sync through one bucket (a
//! real S3 server, encrypted, one engine behind a fault-injecting proxy) while both
//! write, and converge, each change attributed to its author; nothing is uploaded
//! twice; rolled-up bundles bring a new engine to the same state.

mod common;

use std::sync::Arc;

use common::*;
use rhtmx_sync::SyncEngine;
use rhtmx_sync_backup::{Bundles, Encrypted, MemoryStore, ObjectStore, SyncReport};
use sqlx::SqlitePool;

const PASSPHRASE: &str = "correct horse battery staple";

/// A deterministic stream of pseudo-random numbers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One app write by its own SQL, on one of 30 shared ids: create, edit a field, delete.
async fn random_write(pool: &SqlitePool, rng: &mut Lcg, who: &str, i: usize) {
    let id = format!("t{:02}", rng.next(30));
    let sql = match rng.next(5) {
        0 => "INSERT OR IGNORE INTO todos (id, title) VALUES (?1, ?2)",
        1 | 2 => "UPDATE todos SET title = ?2 WHERE id = ?1",
        3 => "UPDATE todos SET done = 1 - done WHERE id = ?1 AND ?2 IS NOT NULL",
        _ => "DELETE FROM todos WHERE id = ?1 AND ?2 IS NOT NULL",
    };
    sqlx::query(sql)
        .bind(&id)
        .bind(format!("{who} {i}"))
        .execute(pool)
        .await
        .unwrap();
}

async fn rows(pool: &SqlitePool) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT id, title, done FROM todos ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Syncs both until a round moves nothing.
async fn settle<S: ObjectStore, T: ObjectStore>(a: &Bundles<S>, b: &Bundles<T>) {
    let quiet = SyncReport::default();
    for _ in 0..20 {
        let (ra, rb) = (a.sync().await.unwrap(), b.sync().await.unwrap());
        if ra.uploaded_changes == 0
            && rb.uploaded_changes == 0
            && ra.applied_bundles == 0
            && rb.applied_bundles == 0
        {
            assert_eq!(
                (ra.uploaded_bundles, rb.uploaded_bundles),
                (quiet.uploaded_bundles, 0)
            );
            return;
        }
    }
    panic!("no quiet round in 20");
}

async fn author_entries(pool: &SqlitePool, author: &SyncEngine) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log WHERE client_id = ?")
        .bind(format!("author:{}", author.author_id()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Two engines writing the same 30 rows at once, each syncing every 25 writes, then
/// until quiet: same rows on both, each side's log holding the other's changes under
/// its author.
async fn converge<S, T>(store_a: S, store_b: T, seed: u64, writes: usize)
where
    S: ObjectStore + 'static,
    T: ObjectStore + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let (pool_a, engine_a) = app_db(&dir.path().join("a.db"), 0).await;
    let (pool_b, engine_b) = app_db(&dir.path().join("b.db"), 0).await;
    let a = Arc::new(Bundles::new(store_a, engine_a.clone()).unwrap().batch(25));
    let b = Arc::new(Bundles::new(store_b, engine_b.clone()).unwrap().batch(25));
    // Rows only one side ever writes.
    sqlx::query("INSERT INTO todos (id, title) VALUES ('only-a', 'from a')")
        .execute(&pool_a)
        .await
        .unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('only-b', 'from b')")
        .execute(&pool_b)
        .await
        .unwrap();
    let wa = {
        let (pool, bundles) = (pool_a.clone(), a.clone());
        tokio::spawn(async move {
            let mut rng = Lcg(seed);
            for i in 0..writes {
                random_write(&pool, &mut rng, "a", i).await;
                if i % 25 == 24 {
                    bundles.sync().await.unwrap();
                }
            }
        })
    };
    let wb = {
        let (pool, bundles) = (pool_b.clone(), b.clone());
        tokio::spawn(async move {
            let mut rng = Lcg(seed.wrapping_mul(31).wrapping_add(7));
            for i in 0..writes {
                random_write(&pool, &mut rng, "b", i).await;
                if i % 25 == 24 {
                    bundles.sync().await.unwrap();
                }
            }
        })
    };
    wa.await.unwrap();
    wb.await.unwrap();
    settle(&a, &b).await;

    let (ra, rb) = (rows(&pool_a).await, rows(&pool_b).await);
    if ra != rb {
        // What each side logged of the rows that differ: the case to reason about.
        let differing = ra
            .iter()
            .chain(&rb)
            .filter(|r| !(ra.contains(r) && rb.contains(r)));
        for (side, pool) in [("a", &pool_a), ("b", &pool_b)] {
            for row in differing.clone() {
                let log: Vec<String> = sqlx::query_scalar(
                    "SELECT json_array(version, action, data, changed, client_id, hlc) \
                     FROM _rhtmx_sync_log WHERE entity_id = ? ORDER BY version",
                )
                .bind(&row.0)
                .fetch_all(pool)
                .await
                .unwrap();
                eprintln!("{side} {}: {log:#?}", row.0);
            }
        }
    }
    assert_eq!(ra, rb, "seed {seed}: converged");
    assert!(ra.len() > 2, "{ra:?}");
    // Each side holds the other's changes, attributed to their author.
    assert!(author_entries(&pool_b, &engine_a).await > 10, "seed {seed}");
    assert!(author_entries(&pool_a, &engine_b).await > 10, "seed {seed}");
    let by: String = sqlx::query_scalar(
        "SELECT client_id FROM _rhtmx_sync_log WHERE entity_id = 'only-a' \
         ORDER BY version DESC LIMIT 1",
    )
    .fetch_one(&pool_b)
    .await
    .unwrap();
    assert_eq!(by, format!("author:{}", engine_a.author_id()));
    // Both logs agree with their tables.
    assert_eq!(engine_a.audit().await.unwrap(), 0, "seed {seed}");
    assert_eq!(engine_b.audit().await.unwrap(), 0, "seed {seed}");
    engine_a.shutdown();
    engine_b.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_engines_converge_through_one_bucket_under_concurrent_writes() {
    let server = S3Server::start().await;
    let proxy = proxy::Proxy::start(&server.endpoint, 7).await;
    let store_a = Encrypted::with_passphrase(s3(&server.endpoint, "shared"), PASSPHRASE)
        .await
        .unwrap();
    let store_b = Encrypted::with_passphrase(s3(&proxy.endpoint, "shared"), PASSPHRASE)
        .await
        .unwrap();
    converge(store_a, store_b, 1, 300).await;
    let f = &proxy.faults;
    for (kind, n) in [
        ("500", &f.errors_500),
        ("cut", &f.cut),
        ("truncated", &f.truncated),
    ] {
        let n = n.load(std::sync::atomic::Ordering::SeqCst);
        assert!(n > 0, "no {kind} fault injected: {f:?}");
    }
}

/// Many interleavings: other seeds, other timings.
#[tokio::test(flavor = "multi_thread")]
async fn engines_converge_for_many_write_sequences() {
    let seeds: u64 = std::env::var("RHTMX_BUNDLE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 2..2 + seeds {
        let store = Arc::new(MemoryStore::new());
        converge(store.clone(), store, seed, 150).await;
    }
}

#[tokio::test]
async fn nothing_is_uploaded_twice_and_a_roll_up_bounds_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (pool_a, engine_a) = app_db(&dir.path().join("a.db"), 0).await;
    let store = Arc::new(MemoryStore::new());
    let a = Bundles::new(store.clone(), engine_a.clone())
        .unwrap()
        .batch(10)
        .roll_up_after(4);
    for round in 0..12 {
        for i in 0..10 {
            sqlx::query(
                "INSERT INTO todos (id, title) VALUES (?1, ?2) \
                         ON CONFLICT (id) DO UPDATE SET title = excluded.title",
            )
            .bind(format!("r{i}"))
            .bind(format!("round {round}"))
            .execute(&pool_a)
            .await
            .unwrap();
        }
        let report = a.sync().await.unwrap();
        assert_eq!(
            report.uploaded_changes, 10,
            "round {round}: only the new changes"
        );
    }
    let again = a.sync().await.unwrap();
    assert_eq!((again.uploaded_bundles, again.uploaded_changes), (0, 0));
    let bundles = store.list("bundles/").await.unwrap();
    assert!(bundles.len() <= 5, "rolled up: {bundles:?}");

    // A new engine starting from the rolled-up bundles reaches the same rows.
    let (pool_c, engine_c) = app_db(&dir.path().join("c.db"), 0).await;
    let c = Bundles::new(store.clone(), engine_c.clone()).unwrap();
    let report = c.sync().await.unwrap();
    assert!(
        report.applied.applied <= 10 * 5,
        "about one change per row: {report:?}"
    );
    assert_eq!(rows(&pool_c).await, rows(&pool_a).await);
    // A bundle read twice (its position lost) applies nothing new.
    sqlx::query("DELETE FROM _rhtmx_sync_bundles")
        .execute(&pool_c)
        .await
        .unwrap();
    let again = c.sync().await.unwrap();
    assert_eq!(again.applied.applied, 0, "{again:?}");
    assert_eq!(rows(&pool_c).await, rows(&pool_a).await);
    engine_a.shutdown();
    engine_c.shutdown();
}

/// A peer that applied some of an author's bundles before a roll-up folded them
/// applies only what it lacked, not the author's whole history again.
#[tokio::test]
async fn a_roll_up_resends_nothing_a_peer_already_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (pool_a, engine_a) = app_db(&dir.path().join("a.db"), 0).await;
    let (pool_b, engine_b) = app_db(&dir.path().join("b.db"), 0).await;
    let store = Arc::new(MemoryStore::new());
    let a = Bundles::new(store.clone(), engine_a.clone())
        .unwrap()
        .roll_up_after(4);
    let b = Bundles::new(store.clone(), engine_b.clone()).unwrap();
    let round = |n: usize| {
        let pool = pool_a.clone();
        async move {
            for i in 0..10 {
                sqlx::query(
                    "INSERT INTO todos (id, title) VALUES (?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET title = excluded.title",
                )
                .bind(format!("r{i}"))
                .bind(format!("round {n}"))
                .execute(&pool)
                .await
                .unwrap();
            }
        }
    };
    for n in 0..3 {
        round(n).await;
        a.upload().await.unwrap();
    }
    let first = b.download().await.unwrap();
    assert_eq!(first.1.applied, 30, "{first:?}");
    for n in 3..6 {
        round(n).await;
        a.upload().await.unwrap();
    }
    assert!(a.roll_up().await.unwrap() > 0, "rolled up");
    let (bundles, done) = b.download().await.unwrap();
    assert_eq!(bundles, 1, "only the rolled-up bundle is new");
    // Round 5 set every title last: the rounds between were folded away.
    assert_eq!((done.applied, done.duplicates), (10, 0), "{done:?}");
    assert_eq!(rows(&pool_b).await, rows(&pool_a).await);
    // A roll-up of that roll-up and newer bundles: still only what b lacks.
    for n in 6..10 {
        round(n).await;
        a.upload().await.unwrap();
    }
    assert!(a.roll_up().await.unwrap() > 0, "rolled up again");
    let (_, done) = b.download().await.unwrap();
    assert_eq!((done.applied, done.duplicates), (10, 0), "{done:?}");
    assert_eq!(rows(&pool_b).await, rows(&pool_a).await);
    // A new peer still gets everything from the roll-up.
    let (pool_c, engine_c) = app_db(&dir.path().join("c.db"), 0).await;
    let c = Bundles::new(store.clone(), engine_c.clone()).unwrap();
    c.download().await.unwrap();
    assert_eq!(rows(&pool_c).await, rows(&pool_a).await);
    for e in [engine_a, engine_b, engine_c] {
        e.shutdown();
    }
}

/// A store through which a peer reads, that runs the author's roll-up the moment the
/// peer first asks for `at`: the bundles it listed vanish under it.
struct RollsUpUnder {
    inner: Arc<MemoryStore>,
    at: std::sync::Mutex<Option<String>>,
    author: Arc<Bundles<Arc<MemoryStore>>>,
}

#[async_trait::async_trait]
impl ObjectStore for RollsUpUnder {
    async fn put(&self, name: &str, body: bytes::Bytes) -> rhtmx_sync_backup::Result<()> {
        self.inner.put(name, body).await
    }
    async fn get(&self, name: &str) -> rhtmx_sync_backup::Result<Option<bytes::Bytes>> {
        let now = {
            let mut at = self.at.lock().unwrap();
            match at.as_deref() == Some(name) {
                true => at.take(),
                false => None,
            }
        };
        if now.is_some() {
            assert!(self.author.roll_up().await? > 0);
        }
        self.inner.get(name).await
    }
    async fn list(&self, prefix: &str) -> rhtmx_sync_backup::Result<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, name: &str) -> rhtmx_sync_backup::Result<()> {
        self.inner.delete(name).await
    }
}

/// A peer reading bundles while a roll-up removes them still applies every change.
#[tokio::test]
async fn a_roll_up_during_a_download_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pool_a, engine_a) = app_db(&dir.path().join("a.db"), 0).await;
    let (pool_b, engine_b) = app_db(&dir.path().join("b.db"), 0).await;
    let store = Arc::new(MemoryStore::new());
    let a = Arc::new(
        Bundles::new(store.clone(), engine_a.clone())
            .unwrap()
            .roll_up_after(2),
    );
    // Each round creates rows of its own: no change makes another moot.
    for n in 0..4 {
        for i in 0..5 {
            sqlx::query("INSERT INTO todos (id, title) VALUES (?, 'x')")
                .bind(format!("{n}-{i}"))
                .execute(&pool_a)
                .await
                .unwrap();
        }
        a.upload().await.unwrap();
    }
    let names = store.list("bundles/").await.unwrap();
    assert_eq!(names.len(), 4);
    // b applied the first bundle; the roll-up runs as it asks for the second.
    let peer = RollsUpUnder {
        inner: store.clone(),
        at: std::sync::Mutex::new(Some(names[1].clone())),
        author: a.clone(),
    };
    let b = Bundles::new(peer, engine_b.clone()).unwrap();
    sqlx::query("CREATE TABLE _rhtmx_sync_bundles (author TEXT PRIMARY KEY, last TEXT NOT NULL)")
        .execute(&pool_b)
        .await
        .unwrap();
    sqlx::query("INSERT INTO _rhtmx_sync_bundles VALUES (?, ?)")
        .bind(engine_a.author_id())
        .bind(&names[0])
        .execute(&pool_b)
        .await
        .unwrap();
    // ...and holds its rows.
    let bundle0 = store.get(&names[0]).await.unwrap().unwrap();
    let bundle0: serde_json::Value = serde_json::from_slice(&bundle0).unwrap();
    let changes: Vec<rhtmx_sync::replication::AuthoredChange> =
        serde_json::from_value(bundle0["changes"].clone()).unwrap();
    engine_b
        .apply_authored(engine_a.author_id(), &changes)
        .await
        .unwrap();
    b.download().await.unwrap();
    assert_eq!(rows(&pool_b).await, rows(&pool_a).await);
    for e in [engine_a, engine_b] {
        e.shutdown();
    }
}

/// A change the other database refuses (a UNIQUE constraint only it breaks) waits
/// without holding back what comes after it, and applies once a later change frees
/// the value; a generated column is not sent.
#[tokio::test]
async fn a_change_the_other_database_refuses_does_not_stop_replication() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut sides = Vec::new();
    for name in ["a", "b"] {
        let pool = open(&dir.path().join(format!("{name}.db"))).await;
        sqlx::query(
            "CREATE TABLE people (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
             shout TEXT GENERATED ALWAYS AS (upper(email)) VIRTUAL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let engine = SyncEngine::builder(pool.clone())
            .entity_named("people")
            .build()
            .await
            .unwrap();
        let bundles = Bundles::new(store.clone(), engine.clone()).unwrap();
        sides.push((pool, engine, bundles));
    }
    // Both take one email for different people.
    for (i, (pool, _, _)) in sides.iter().enumerate() {
        sqlx::query("INSERT INTO people (id, email) VALUES (?, 'same@example.com')")
            .bind(format!("p{i}"))
            .execute(pool)
            .await
            .unwrap();
    }
    for (_, _, bundles) in &sides {
        bundles.sync().await.unwrap();
    }
    let report = sides[0].2.sync().await.unwrap();
    // It waits: a later change may free the email.
    assert_eq!(
        (report.applied.parked, report.applied.skipped),
        (1, 0),
        "{report:?}"
    );
    // Later changes still flow, both ways.
    sqlx::query("INSERT INTO people (id, email) VALUES ('later', 'later@example.com')")
        .execute(&sides[1].0)
        .await
        .unwrap();
    sides[1].2.sync().await.unwrap();
    sides[0].2.sync().await.unwrap();
    let shout: String = sqlx::query_scalar("SELECT shout FROM people WHERE id = 'later'")
        .fetch_one(&sides[0].0)
        .await
        .unwrap();
    assert_eq!(shout, "LATER@EXAMPLE.COM");
    // Once the first side gives p0 another email, p1 takes its own at the next change.
    sqlx::query("UPDATE people SET email = 'p0@example.com' WHERE id = 'p0'")
        .execute(&sides[0].0)
        .await
        .unwrap();
    sqlx::query("INSERT INTO people (id, email) VALUES ('next', 'next@example.com')")
        .execute(&sides[1].0)
        .await
        .unwrap();
    sides[1].2.sync().await.unwrap();
    sides[0].2.sync().await.unwrap();
    let p1: Option<String> = sqlx::query_scalar("SELECT email FROM people WHERE id = 'p1'")
        .fetch_optional(&sides[0].0)
        .await
        .unwrap();
    assert_eq!(
        p1.as_deref(),
        Some("same@example.com"),
        "the refused change waited"
    );
    for (_, engine, _) in &sides {
        engine.shutdown();
    }
}
