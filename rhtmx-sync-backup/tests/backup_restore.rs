//! Backups to a real S3 server (s3s-fs on 127.0.0.1, SigV4 checked) and restores from
//! them: the restored file is the same database, with a new log identity; encrypted
//! objects are unreadable without the key; damaged or tampered objects are never
//! applied; faults between store and server still end in a whole replica; an
//! interrupted restore resumes.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use rhtmx_sync_backup::{
    Backup, Backups, DirStore, Encrypted, Error, MemoryStore, ObjectStore, RestoreOptions,
};

const PASSPHRASE: &str = "correct horse battery staple";

/// The dumps of two databases are equal but for the log identity, which a restore
/// renews.
async fn assert_same_but_history(
    original: &std::collections::BTreeMap<String, Vec<String>>,
    restored: &Path,
) {
    let mut restored_dump = dump(restored).await;
    let mut original = original.clone();
    let strip = |d: &mut std::collections::BTreeMap<String, Vec<String>>| {
        let meta = d.get_mut("_rhtmx_sync_meta").unwrap();
        let before = meta.len();
        meta.retain(|r| !r.starts_with("'log_id'"));
        assert_eq!(meta.len(), before - 1, "one log id");
    };
    strip(&mut original);
    strip(&mut restored_dump);
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        restored_dump.keys().collect::<Vec<_>>()
    );
    for (table, rows) in &original {
        assert!(rows == &restored_dump[table], "table {table} differs");
    }
}

async fn backup_and_restore<S: ObjectStore>(backups: Backups<S>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 3000).await;
    let taken = backups.backup(&pool).await.unwrap();
    assert!(taken.parts.len() > 3, "several parts: {taken:?}");
    assert!(taken.head > 3000, "{taken:?}");
    engine.shutdown();
    drop(engine);
    pool.close().await;
    // What the backup holds: the file as VACUUM INTO wrote it, read back now.
    let original = dump(&db).await;
    let old_id = log_id(&db).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    let restored = backups.restore(&db, RestoreOptions::new()).await.unwrap();
    assert_eq!((restored.backup, restored.replayed), (taken, 0));
    assert_same_but_history(&original, &db).await;
    assert_ne!(log_id(&db).await, old_id, "a new history");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["app.db"], "no staging left behind");

    // The engine opens it, and finds its log in step with its tables.
    let pool = open(&db).await;
    let engine = rhtmx_sync::SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .build()
        .await
        .unwrap();
    assert_eq!(engine.audit().await.unwrap(), 0);
    engine.shutdown();
}

#[tokio::test]
async fn a_backup_restored_from_s3_is_the_same_database_with_a_new_history() {
    let server = S3Server::start().await;
    backup_and_restore(Backups::new(s3(&server.endpoint, "plain")).part_size(64 << 10)).await;
    let encrypted = Encrypted::with_passphrase(s3(&server.endpoint, "sealed"), PASSPHRASE)
        .await
        .unwrap();
    backup_and_restore(Backups::new(encrypted).part_size(64 << 10)).await;
}

#[tokio::test]
async fn a_backup_restored_from_a_directory_or_memory_is_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    backup_and_restore(Backups::new(DirStore::new(dir.path())).part_size(100_000)).await;
    let sealed = Encrypted::with_passphrase(MemoryStore::new(), PASSPHRASE)
        .await
        .unwrap();
    backup_and_restore(Backups::new(sealed).part_size(100_000)).await;
}

/// A backup taken while the app writes is one consistent copy: its log matches its
/// tables.
#[tokio::test]
async fn a_backup_taken_during_writes_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 100).await;
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for round in 1..40 {
                write(&pool, round * 100, round * 100 + 100).await;
            }
        })
    };
    let backups = Backups::new(MemoryStore::new()).part_size(32 << 10);
    let mut taken = Vec::new();
    while !writer.is_finished() {
        taken.push(backups.backup(&pool).await.unwrap());
    }
    writer.await.unwrap();
    engine.shutdown();
    assert!(!taken.is_empty());
    for (i, b) in taken.iter().enumerate() {
        let to = dir.path().join(format!("restored-{i}.db"));
        backups
            .restore(&to, RestoreOptions::new().id(&b.id))
            .await
            .unwrap();
        let pool = open(&to).await;
        let engine = rhtmx_sync::SyncEngine::builder(pool.clone())
            .entity_named("todos")
            .build()
            .await
            .unwrap();
        assert_eq!(engine.audit().await.unwrap(), 0, "backup {i} in step");
        engine.shutdown();
    }
}

#[tokio::test]
async fn encrypted_objects_are_unreadable_without_the_passphrase() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 500).await;
    let sealed = Encrypted::with_passphrase(s3(&server.endpoint, "sealed"), PASSPHRASE)
        .await
        .unwrap();
    let taken = Backups::new(sealed)
        .part_size(16 << 10)
        .backup(&pool)
        .await
        .unwrap();
    engine.shutdown();

    // What the server holds: no SQLite header, no row text, in any object.
    let raw = s3(&server.endpoint, "sealed");
    let names = raw.list("").await.unwrap();
    assert!(names[0].starts_with("keys/"), "{names:?}");
    assert_eq!(names.len(), taken.parts.len() + 2, "{names:?}");
    for name in &names {
        let body = raw.get(name).await.unwrap().unwrap();
        if name.ends_with(".check") {
            continue;
        }
        assert!(
            body.starts_with(b"age-encryption.org/v1"),
            "{name} is an age file"
        );
        for plain in [
            &b"SQLite format 3"[..],
            b"todo 1",
            b"t000001",
            taken.sha256.as_bytes(),
        ] {
            assert!(
                !body.windows(plain.len()).any(|w| w == plain),
                "{name} leaks"
            );
        }
    }

    let to = dir.path().join("restored.db");
    // Without encryption: refused, nothing written.
    let err = Backups::new(raw)
        .restore(&to, RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encryption(_)), "{err}");
    // With the wrong passphrase: refused at once.
    let err = Encrypted::with_passphrase(s3(&server.endpoint, "sealed"), "wrong horse")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase), "{err}");
    // With an age identity instead: refused, the store is a passphrase's.
    let err = Encrypted::with_identity(
        s3(&server.endpoint, "sealed"),
        age::x25519::Identity::generate(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Encryption(_)), "{err}");
    assert!(!to.exists());
    // A plain store refuses to write into an encrypted one.
    let err = Backups::new(s3(&server.endpoint, "sealed"))
        .backup(&pool)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encryption(_)), "{err}");
    // And an encrypted one refuses a prefix of plain backups.
    Backups::new(s3(&server.endpoint, "plain"))
        .backup(&pool)
        .await
        .unwrap();
    let err = Encrypted::with_passphrase(s3(&server.endpoint, "plain"), PASSPHRASE)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encryption(_)), "{err}");
}

/// Flips one byte of a file, at its middle.
fn flip(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test]
async fn a_tampered_truncated_or_swapped_object_is_never_applied() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 500).await;
    for prefix in ["plain", "sealed"] {
        let store: Box<dyn ObjectStore> = if prefix == "sealed" {
            Box::new(
                Encrypted::with_passphrase(s3(&server.endpoint, prefix), PASSPHRASE)
                    .await
                    .unwrap(),
            )
        } else {
            Box::new(s3(&server.endpoint, prefix))
        };
        let backups = Backups::new(store).part_size(16 << 10);
        let taken = backups.backup(&pool).await.unwrap();
        let part = |n: usize| server.object_file(prefix, &format!("snapshots/{}/{n:05}", taken.id));
        let to = dir.path().join(format!("{prefix}.db"));
        let refused = |what: &'static str| {
            let (backups, to) = (&backups, &to);
            async move {
                let err = backups
                    .restore(to, RestoreOptions::new())
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, Error::Corrupt { .. }),
                    "{prefix}, {what}: {err}"
                );
                assert!(!to.exists(), "{prefix}, {what}: nothing applied");
                let staged = std::fs::read_dir(to.parent().unwrap())
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(".restore-"))
                    .count();
                assert_eq!(
                    staged, 0,
                    "{prefix}, {what}: no decrypted parts left behind"
                );
            }
        };

        let good = std::fs::read(part(1)).unwrap();
        flip(&part(1));
        refused("one byte flipped").await;
        std::fs::write(part(1), &good[..good.len() - 100]).unwrap();
        refused("truncated").await;
        // Another part's bytes under this part's name.
        std::fs::copy(part(2), part(1)).unwrap();
        refused("swapped").await;
        std::fs::write(part(1), &good).unwrap();
        let manifest = server.object_file(prefix, &format!("snapshots/{}/manifest.json", taken.id));
        let good_manifest = std::fs::read(&manifest).unwrap();
        flip(&manifest);
        let err = backups.list().await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{prefix}: {err}");
        std::fs::write(&manifest, &good_manifest).unwrap();
        // Whole again: it restores.
        backups.restore(&to, RestoreOptions::new()).await.unwrap();
    }
    engine.shutdown();
}

/// A store that fails every `get` of a part after the first `allowed`, and counts them.
struct Flaky<S> {
    inner: S,
    allowed: AtomicUsize,
    parts_fetched: AtomicUsize,
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Flaky<S> {
    async fn put(&self, name: &str, body: Bytes) -> rhtmx_sync_backup::Result<()> {
        self.inner.put(name, body).await
    }
    async fn get(&self, name: &str) -> rhtmx_sync_backup::Result<Option<Bytes>> {
        if !name.ends_with(".json") && name.starts_with("snapshots/") {
            if self.allowed.load(Ordering::SeqCst) == 0 {
                return Err(Error::Store {
                    operation: "get",
                    name: name.to_owned(),
                    reason: "the network went away".into(),
                });
            }
            self.allowed.fetch_sub(1, Ordering::SeqCst);
            self.parts_fetched.fetch_add(1, Ordering::SeqCst);
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

#[tokio::test]
async fn an_interrupted_restore_resumes_with_the_parts_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 1000).await;
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        allowed: AtomicUsize::new(usize::MAX),
        parts_fetched: AtomicUsize::new(0),
    });
    let backups = Backups::new(flaky.clone()).part_size(16 << 10);
    let taken = backups.backup(&pool).await.unwrap();
    engine.shutdown();
    let to = dir.path().join("restored.db");
    let parts = taken.parts.len();
    assert!(parts > 4);

    flaky.allowed.store(3, Ordering::SeqCst);
    let err = backups
        .restore(&to, RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(!to.exists(), "nothing half-done at the target");

    flaky.allowed.store(usize::MAX, Ordering::SeqCst);
    backups.restore(&to, RestoreOptions::new()).await.unwrap();
    assert_eq!(
        flaky.parts_fetched.load(Ordering::SeqCst),
        parts,
        "each part fetched once over both runs"
    );
    assert_eq!(dump(&to).await["todos"], dump(&db).await["todos"]);
}

#[tokio::test]
async fn faults_between_store_and_server_still_end_in_a_whole_replica() {
    let server = S3Server::start().await;
    let proxy = proxy::Proxy::start(&server.endpoint, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 2000).await;
    let sealed = Encrypted::with_passphrase(s3(&proxy.endpoint, "p"), PASSPHRASE)
        .await
        .unwrap();
    let backups = Backups::new(sealed).part_size(16 << 10);
    let taken = backups.backup(&pool).await.unwrap();
    engine.shutdown();
    pool.close().await;
    let to = dir.path().join("restored.db");
    backups.restore(&to, RestoreOptions::new()).await.unwrap();
    assert_eq!(dump(&to).await["todos"], dump(&db).await["todos"]);
    assert_eq!(backups.list().await.unwrap(), [taken]);
    let f = &proxy.faults;
    for (kind, n) in [
        ("500", &f.errors_500),
        ("cut", &f.cut),
        ("truncated", &f.truncated),
    ] {
        assert!(
            n.load(Ordering::SeqCst) > 0,
            "no {kind} fault injected: {f:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_key_is_a_clear_error_that_does_not_show_it() {
    let server = S3Server::start().await;
    let mut config = s3_config(&server.endpoint, "x");
    config.secret_access_key = "not-the-secret-key-0123456789".into();
    assert!(!format!("{config:?}").contains("not-the-secret"));
    let store = rhtmx_sync_backup::S3Store::new(config);
    let err = store.put("a", Bytes::from_static(b"x")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Store { .. }), "{text}");
    assert!(
        text.contains("Signature") || text.contains("AccessDenied"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret"), "{text}");
}

#[tokio::test]
async fn point_in_time_restores_the_newest_backup_taken_at_or_before() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 50).await;
    let backups = Backups::new(MemoryStore::new());
    let first = backups.backup(&pool).await.unwrap();
    // Wait for the clock to pass the first backup's millisecond.
    while std::time::SystemTime::now() <= first.created() + std::time::Duration::from_millis(1) {
        tokio::task::yield_now().await;
    }
    write(&pool, 50, 80).await;
    let second = backups.backup(&pool).await.unwrap();
    engine.shutdown();
    let pick = |at| {
        let backups = &backups;
        let dir = dir.path().to_owned();
        async move {
            let to = dir.join(format!("at-{}.db", uuid::Uuid::now_v7()));
            backups.restore(&to, RestoreOptions::new().at(at)).await
        }
    };
    assert_eq!(pick(first.created()).await.unwrap().backup.id, first.id);
    assert_eq!(pick(second.created()).await.unwrap().backup.id, second.id);
    let before = first.created() - std::time::Duration::from_secs(1);
    assert!(matches!(
        pick(before).await.unwrap_err(),
        Error::NoBackup(_)
    ));
    // The target must not exist.
    let to = dir.path().join("taken.db");
    std::fs::write(&to, b"precious").unwrap();
    let err = backups
        .restore(&to, RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TargetExists(_)), "{err}");
    assert_eq!(std::fs::read(&to).unwrap(), b"precious");
    // Nor may a -wal or -shm be beside it: SQLite would read a stale -wal into the
    // restored database.
    let fresh = dir.path().join("fresh.db");
    std::fs::write(dir.path().join("fresh.db-wal"), b"stale").unwrap();
    let err = backups
        .restore(&fresh, RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TargetExists(_)), "{err}");
    backups
        .restore(&to, RestoreOptions::new().overwrite(true))
        .await
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the restored database is its owner's alone");
    }
    assert_eq!(
        dump(&to).await["todos"].len(),
        dump(&dir.path().join("app.db")).await["todos"].len()
    );
}

#[tokio::test]
async fn keep_bounds_the_backups_and_removes_their_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 200).await;
    let store = Arc::new(MemoryStore::new());
    let backups = Backups::new(store.clone()).part_size(8 << 10).keep(2);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(backups.backup(&pool).await.unwrap().id);
    }
    engine.shutdown();
    let kept: Vec<String> = backups
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b: Backup| b.id)
        .collect();
    assert_eq!(kept, ids[2..]);
    for name in store.list("").await.unwrap() {
        assert!(
            kept.iter().any(|id| name.contains(id.as_str())),
            "{name} left over"
        );
    }
}

/// Every store keeps what is put, lists it sorted by prefix, replaces and deletes it,
/// and refuses names that are not plain.
#[tokio::test]
async fn every_store_behaves_alike() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<(&str, Box<dyn ObjectStore>)> = vec![
        ("memory", Box::new(MemoryStore::new())),
        ("dir", Box::new(DirStore::new(dir.path().join("store")))),
        ("s3", Box::new(s3(&server.endpoint, "conf/ormance"))),
        (
            "encrypted",
            Box::new(
                Encrypted::with_passphrase(MemoryStore::new(), PASSPHRASE)
                    .await
                    .unwrap(),
            ),
        ),
    ];
    for (kind, store) in stores {
        assert_eq!(store.get("a/b").await.unwrap(), None, "{kind}");
        store.put("a/b", Bytes::from_static(b"one")).await.unwrap();
        store.put("a/c", Bytes::new()).await.unwrap();
        store.put("b", Bytes::from_static(b"three")).await.unwrap();
        store.put("a/b", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(
            store.get("a/b").await.unwrap().as_deref(),
            Some(&b"two"[..]),
            "{kind}"
        );
        assert_eq!(
            store.get("a/c").await.unwrap().as_deref(),
            Some(&b""[..]),
            "{kind}"
        );
        assert_eq!(store.list("a/").await.unwrap(), ["a/b", "a/c"], "{kind}");
        store.delete("a/b").await.unwrap();
        store.delete("a/b").await.unwrap();
        assert_eq!(store.list("").await.unwrap(), ["a/c", "b"], "{kind}");
        for bad in ["../x", "/x", "a//b", ""] {
            let err = store.put(bad, Bytes::new()).await.unwrap_err();
            assert!(
                matches!(err, Error::InvalidName(_)),
                "{kind} {bad:?}: {err}"
            );
        }
    }
}

/// Asserts two dumps of a table hold the same rows, showing only those that differ.
fn same_rows(got: &[String], want: &[String], what: &str) {
    let only_got: Vec<&String> = got.iter().filter(|r| !want.contains(r)).collect();
    let only_want: Vec<&String> = want.iter().filter(|r| !got.contains(r)).collect();
    assert!(
        only_got.is_empty() && only_want.is_empty(),
        "{what}: restored only {only_got:?}, original only {only_want:?}"
    );
}

/// Waits until the wall clock has passed `t` by a millisecond (writes after it get a
/// later HLC).
async fn past(t: std::time::SystemTime) {
    while std::time::SystemTime::now() <= t + std::time::Duration::from_millis(1) {
        tokio::task::yield_now().await;
    }
}

/// A database that also uploads its changes as bundles is restored to its latest
/// state (the backup plus the changes since), or to a point in time between them.
#[tokio::test]
async fn a_restore_replays_the_changes_made_after_the_backup_up_to_a_point_in_time() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 200).await;
    let store = Arc::new(
        Encrypted::with_passphrase(s3(&server.endpoint, "app"), PASSPHRASE)
            .await
            .unwrap(),
    );
    let backups = Backups::new(store.clone()).part_size(32 << 10);
    let bundles = rhtmx_sync_backup::Bundles::new(store.clone(), engine.clone()).unwrap();
    bundles.sync().await.unwrap();
    let taken = backups.backup(&pool).await.unwrap();
    write(&pool, 200, 260).await;
    sqlx::query("UPDATE todos SET title = 'edited after the backup' WHERE id < 't000020'")
        .execute(&pool)
        .await
        .unwrap();
    bundles.sync().await.unwrap();
    let middle = std::time::SystemTime::now();
    let at_middle = dump(&db).await["todos"].clone();
    past(middle).await;
    write(&pool, 260, 300).await;
    sqlx::query("DELETE FROM todos WHERE id < 't000010'")
        .execute(&pool)
        .await
        .unwrap();
    let report = bundles.sync().await.unwrap();
    assert!(report.uploaded_changes > 40, "{report:?}");
    let latest = dump(&db).await["todos"].clone();
    engine.shutdown();

    let to = dir.path().join("latest.db");
    let restored = backups.restore(&to, RestoreOptions::new()).await.unwrap();
    assert_eq!(restored.backup, taken);
    assert!(restored.replayed > 100, "{restored:?}");
    same_rows(
        &dump(&to).await["todos"],
        &latest,
        "the backup and every change since",
    );

    let to = dir.path().join("middle.db");
    let restored = backups
        .restore(&to, RestoreOptions::new().at(middle))
        .await
        .unwrap();
    assert_eq!(restored.backup, taken);
    same_rows(
        &dump(&to).await["todos"],
        &at_middle,
        "as it was at that time",
    );

    // Restored, the engine's log agrees with the table, and the replayed changes are
    // attributed to the database they came from.
    let pool = open(&to).await;
    let engine = rhtmx_sync::SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .build()
        .await
        .unwrap();
    assert_eq!(engine.audit().await.unwrap(), 0);
    assert_ne!(engine.author_id(), taken.log_id.as_deref().unwrap());
    let attributed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log WHERE client_id = ?")
            .bind(format!("author:{}", taken.log_id.as_deref().unwrap()))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(attributed > 50, "{attributed}");
    engine.shutdown();
}

/// On a schedule: a backup at once, then one every period, until the task is aborted.
#[tokio::test]
async fn scheduled_backups_come_on_time_and_stop_with_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 20).await;
    let store = Arc::new(MemoryStore::new());
    let backups = Arc::new(Backups::new(store.clone()).keep(2));
    let task = backups
        .clone()
        .spawn(pool.clone(), std::time::Duration::from_millis(20));
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 4 {
        for b in backups.list().await.unwrap() {
            seen.insert(b.id);
        }
        tokio::task::yield_now().await;
    }
    task.abort();
    let _ = task.await;
    let after = backups.list().await.unwrap();
    assert!(after.len() <= 2, "keep(2) holds: {after:?}");
    engine.shutdown();
}

/// Two processes opening a fresh store at once each make a key; both stay, and every
/// backup either takes can be restored by a third.
#[tokio::test(flavor = "multi_thread")]
async fn two_first_openers_at_once_both_keep_their_backups_readable() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 100).await;
    let (a, b) = tokio::join!(
        Encrypted::with_passphrase(s3(&server.endpoint, "race"), PASSPHRASE),
        Encrypted::with_passphrase(s3(&server.endpoint, "race"), PASSPHRASE),
    );
    let (a, b) = (Backups::new(a.unwrap()), Backups::new(b.unwrap()));
    let taken = [
        a.backup(&pool).await.unwrap(),
        b.backup(&pool).await.unwrap(),
    ];
    engine.shutdown();
    let third = Encrypted::with_passphrase(s3(&server.endpoint, "race"), PASSPHRASE)
        .await
        .unwrap();
    let third = Backups::new(third);
    assert_eq!(third.list().await.unwrap().len(), 2);
    for (i, t) in taken.iter().enumerate() {
        let to = dir.path().join(format!("r{i}.db"));
        third
            .restore(&to, RestoreOptions::new().id(&t.id))
            .await
            .unwrap();
    }
}

/// With an age identity the operator keeps: another identity, a passphrase or no
/// encryption are refused on that prefix, and the identity on a plain one; an object
/// encrypted to the public key by someone without the identity is refused.
#[tokio::test]
async fn an_identity_store_refuses_other_keys_and_forged_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, engine) = app_db(&dir.path().join("app.db"), 50).await;
    let store = Arc::new(MemoryStore::new());
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public();
    let mine = Encrypted::with_identity(store.clone(), identity.clone())
        .await
        .unwrap();
    let backups = Backups::new(mine);
    let taken = backups.backup(&pool).await.unwrap();
    for refused in [
        Encrypted::with_identity(store.clone(), age::x25519::Identity::generate())
            .await
            .err(),
        Encrypted::with_passphrase(store.clone(), PASSPHRASE)
            .await
            .err(),
        Backups::new(store.clone()).list().await.err(),
    ] {
        assert!(matches!(refused, Some(Error::Encryption(_))), "{refused:?}");
    }
    let plain = Arc::new(MemoryStore::new());
    Backups::new(plain.clone()).backup(&pool).await.unwrap();
    let err = Encrypted::with_identity(plain, identity.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encryption(_)), "{err}");

    // A forger who knows only the public key writes a newer backup.
    let forged_id = uuid::Uuid::now_v7().hyphenated().to_string();
    let part = b"SQLite format 3\0 not really".to_vec();
    let manifest = serde_json::json!({
        "id": forged_id, "created_ms": 4102444800000u64, "size": part.len(),
        "sha256": "00", "parts": [{"size": part.len(), "sha256": "00"}],
        "log_id": null, "head": 0
    });
    for (name, body) in [
        (format!("snapshots/{forged_id}/00000"), part.clone()),
        (
            format!("snapshots/{forged_id}/manifest.json"),
            manifest.to_string().into_bytes(),
        ),
    ] {
        let mut sealed = age::encrypt(&public, &body).unwrap();
        sealed.extend_from_slice(&[0u8; 32]);
        store.put(&name, sealed.into()).await.unwrap();
    }
    let err = backups.list().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // The genuine backup is still restorable by its id.
    let to = dir.path().join("restored.db");
    backups
        .restore(&to, RestoreOptions::new().id(&taken.id))
        .await
        .unwrap();
    engine.shutdown();
}
