//! Installing, handing over and removing the capture triggers.
//!
//! Several engines may capture one database: processes of one deploy, a worker that
//! registers fewer tables, and during a rolling deploy processes of two versions that
//! register a table with different columns. Each build takes the next **generation** (a
//! counter in `_rhtmx_sync_meta`) and records, per table, a **claim**: the generation
//! that last decided the table's triggers, and what it decided (`triggers:<table>` →
//! `"<generation> installed <registration>"`, `"<generation> removed"` or
//! `"<generation> paused <until, Unix ms>"`). The rules:
//!
//! - A build installs its definitions for every table it registers, removes every
//!   engine trigger it does not want (tables it does not register, the REPLACE triggers
//!   of a table that lost its UNIQUE constraints), claims all those tables, and
//!   reconciles the log with each of its tables (`reconcile`). The newest build wins.
//! - When the schema changes, an engine rewrites the triggers of each table it
//!   registers unless a newer generation claimed it with another registration and the
//!   table still has triggers: two versions never rewrite each other's on every poll,
//!   and an engine that registers a table exactly as the claim's does acts for it even
//!   when that build has exited (a column added at runtime is then still picked up).
//!   A table left with no triggers is always given its own back — a build that did not
//!   register it (a worker, an admin tool) must not switch capture off for a process
//!   that does — except while a pause holds.
//! - [`drop_triggers`] removes every engine trigger and pauses every table for
//!   [`DROP_TRIGGERS_PAUSE`] with a generation newer than every running engine: none of them
//!   reinstalls anything meanwhile, so a migration can run. The next build installs
//!   again; if none comes (the migration failed), running engines put their triggers
//!   back when the pause ends, and reconcile what was written meanwhile.
//! - Whenever triggers are put back, the table is reconciled with the log in the same
//!   transaction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sqlx::{Acquire, Connection, Sqlite, SqliteConnection};

use super::reconcile::reconcile;
use super::{table_of, triggers};
use crate::entity::{quote_ident, Entity};
use crate::error::Result;

/// How long [`drop_triggers`] keeps running engines from putting triggers back: time
/// for the migration that follows it (10 minutes).
pub const DROP_TRIGGERS_PAUSE: std::time::Duration = std::time::Duration::from_secs(600);

/// The engine's key-value table (created by `log::migrate`).
const META: &str = "_rhtmx_sync_meta";

/// The meta key of the last generation handed out.
const GENERATION: &str = "trigger_generation";

/// Selects the engine's capture triggers: named `_rhtmx_sync_*`, on a table that is not
/// the engine's own (the idempotency store has triggers of its own under that prefix).
/// GLOB, not LIKE: `_` is a LIKE wildcard.
const EXISTING: &str = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' \
     AND name GLOB '_rhtmx_sync_*' AND tbl_name NOT GLOB '_rhtmx_sync_*' ORDER BY name";

/// Who last decided a table's triggers, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    generation: i64,
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Installed for this registration (`None`: recorded before registrations were).
    Installed(Option<String>),
    /// Removed by a build that does not register the table.
    Removed,
    /// Removed by `drop_triggers`; nobody reinstalls before this Unix time in ms.
    Paused(i64),
}

impl Claim {
    fn key(table: &str) -> String {
        format!("triggers:{table}")
    }

    fn parse(value: &str) -> Option<Claim> {
        let mut parts = value.split(' ');
        let generation = parts.next()?.parse().ok()?;
        let state = match (parts.next()?, parts.next()) {
            ("installed", registration) => State::Installed(registration.map(str::to_owned)),
            ("removed", None) => State::Removed,
            ("paused", Some(until)) => State::Paused(until.parse().ok()?),
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Claim { generation, state })
    }

    fn text(&self) -> String {
        let g = self.generation;
        match &self.state {
            State::Installed(Some(registration)) => format!("{g} installed {registration}"),
            State::Installed(None) => format!("{g} installed"),
            State::Removed => format!("{g} removed"),
            State::Paused(until) => format!("{g} paused {until}"),
        }
    }
}

/// An engine trigger as it is in the database.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Existing {
    name: String,
    tbl_name: String,
    sql: String,
}

/// One change to the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Drop(String),
    Create { name: String, sql: String },
}

/// What one entity wants: its table, its registration, its triggers.
struct Want {
    table: String,
    registration: String,
    triggers: Vec<(String, String)>,
}

fn wanted<'a>(entities: impl IntoIterator<Item = &'a Entity>) -> Vec<Want> {
    entities
        .into_iter()
        .map(|e| Want {
            table: e.table.clone(),
            registration: e.registration.clone(),
            triggers: triggers(e),
        })
        .collect()
}

/// Steps that make `table`'s engine triggers exactly `want`.
fn converge(existing: &[Existing], table: &str, want: &[(String, String)]) -> Vec<Step> {
    let mine: Vec<&Existing> = existing.iter().filter(|e| e.tbl_name == table).collect();
    let mut steps: Vec<Step> = mine
        .iter()
        .filter(|e| !want.iter().any(|(n, s)| *n == e.name && *s == e.sql))
        .map(|e| Step::Drop(e.name.clone()))
        .collect();
    steps.extend(
        want.iter()
            .filter(|(n, s)| !mine.iter().any(|e| e.name == *n && e.sql == *s))
            .map(|(name, sql)| Step::Create {
                name: name.clone(),
                sql: sql.clone(),
            }),
    );
    steps
}

/// A build: its tables get exactly its triggers; every other table loses the engine's.
fn plan_build(existing: &[Existing], wanted: &[Want]) -> Vec<Step> {
    let mut steps: Vec<Step> = existing
        .iter()
        .filter(|e| !wanted.iter().any(|w| w.table == e.tbl_name))
        .map(|e| Step::Drop(e.name.clone()))
        .collect();
    for want in wanted {
        steps.extend(converge(existing, &want.table, &want.triggers));
    }
    steps
}

/// A schema change seen by the engine of `generation` at `now` (Unix ms; see the
/// module docs): the steps, and the tables it takes over — acting where a newer claim or
/// an ended pause stood, it must claim them anew, or another engine with another
/// registration would take them back at its next check, and so on forever.
fn plan_refresh(
    existing: &[Existing],
    claims: &HashMap<String, Claim>,
    wanted: &[Want],
    generation: i64,
    now: i64,
) -> (Vec<Step>, Vec<String>) {
    // A trigger that moved with a renamed table logs under the old name: drop it.
    let mut steps: Vec<Step> = existing
        .iter()
        .filter(|e| table_of(&e.name).is_some_and(|t| t != e.tbl_name))
        .map(|e| Step::Drop(e.name.clone()))
        .collect();
    let mut taken = Vec::new();
    for want in wanted {
        let none = !existing.iter().any(|e| e.tbl_name == want.table);
        let (act, take) = match claims.get(&want.table) {
            Some(Claim {
                state: State::Paused(until),
                ..
            }) => (now >= *until, true),
            Some(Claim {
                generation: newer,
                state: State::Installed(registration),
            }) if *newer > generation => {
                let same = registration.as_deref() == Some(want.registration.as_str());
                (none || same, !same)
            }
            Some(Claim {
                generation: newer,
                state: State::Removed,
            }) if *newer > generation => (none, true),
            _ => (true, false),
        };
        if act {
            let mine = converge(existing, &want.table, &want.triggers);
            if take && !mine.is_empty() {
                taken.push(want.table.clone());
            }
            steps.extend(mine);
        }
    }
    (steps, taken)
}

/// The tables a plan creates triggers on: the ones to reconcile.
fn created_on<'a>(steps: &'a [Step], wanted: &'a [Want]) -> Vec<&'a Want> {
    wanted
        .iter()
        .filter(|w| {
            steps.iter().any(|s| {
                matches!(s, Step::Create { name, .. } if table_of(name) == Some(w.table.as_str()))
            })
        })
        .collect()
}

async fn read_existing(conn: &mut SqliteConnection) -> Result<Vec<Existing>> {
    Ok(sqlx::query_as(EXISTING).fetch_all(&mut *conn).await?)
}

async fn read_claims(conn: &mut SqliteConnection) -> Result<HashMap<String, Claim>> {
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT substr(key, 10), value FROM {META} WHERE key GLOB 'triggers:*'"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(table, value)| Some((table, Claim::parse(&value)?)))
        .collect())
}

/// Hands out the next generation; call inside a write transaction.
async fn next_generation(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "INSERT INTO {META} (key, value) VALUES ('{GENERATION}', '1') \
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 \
         RETURNING CAST(value AS INTEGER)"
    ))
    .fetch_one(&mut *conn)
    .await?)
}

async fn set_claim(conn: &mut SqliteConnection, table: &str, claim: &Claim) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {META} (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = ?2"
    ))
    .bind(Claim::key(table))
    .bind(claim.text())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply(conn: &mut SqliteConnection, steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            Step::Drop(name) => {
                sqlx::query(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(name)))
                    .execute(&mut *conn)
                    .await?;
            }
            Step::Create { name, sql } => {
                sqlx::query(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(name)))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(sql).execute(&mut *conn).await?;
            }
        }
    }
    Ok(())
}

/// At build: takes the next generation, installs `entities`' triggers, removes every
/// other engine trigger, and claims all those tables. Returns the generation.
pub(crate) async fn claim(conn: &mut SqliteConnection, entities: &[Arc<Entity>]) -> Result<i64> {
    let wanted = wanted(entities.iter().map(|e| &**e));
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let generation = next_generation(&mut tx).await?;
    let existing = read_existing(&mut tx).await?;
    let steps = plan_build(&existing, &wanted);
    apply(&mut tx, &steps).await?;
    for want in &wanted {
        let installed = Claim {
            generation,
            state: State::Installed(Some(want.registration.clone())),
        };
        set_claim(&mut tx, &want.table, &installed).await?;
    }
    let orphans: BTreeSet<&str> = existing
        .iter()
        .map(|e| e.tbl_name.as_str())
        .filter(|t| !wanted.iter().any(|w| w.table == *t))
        .collect();
    for table in &orphans {
        let removed = Claim {
            generation,
            state: State::Removed,
        };
        set_claim(&mut tx, table, &removed).await?;
    }
    // What the triggers never saw (rows from before adoption, writes made while they
    // were removed) is logged now, before any write can come between.
    for entity in entities {
        reconcile(&mut tx, entity).await?;
    }
    tx.commit().await?;
    if !orphans.is_empty() {
        tracing::info!(
            ?orphans,
            "removed the change-capture triggers of tables no longer registered"
        );
    }
    if !steps.is_empty() {
        tracing::debug!(
            count = steps.len(),
            generation,
            "installed change-capture triggers"
        );
    }
    Ok(generation)
}

/// After a schema change: puts back or rewrites the triggers of `entities` that the
/// engine of `generation` still answers for (see the module docs). A no-op (two reads)
/// when nothing is to be done. Returns how many steps were applied.
pub(crate) async fn refresh(
    conn: &mut SqliteConnection,
    entities: &[Arc<Entity>],
    generation: i64,
) -> Result<usize> {
    let wanted = wanted(entities.iter().map(|e| &**e));
    let now = crate::hlc::system_ms() as i64;
    let plan = |existing: &[Existing], claims: &HashMap<String, Claim>| {
        plan_refresh(existing, claims, &wanted, generation, now)
    };
    let (existing, claims) = (read_existing(conn).await?, read_claims(conn).await?);
    if plan(&existing, &claims).0.is_empty() {
        return Ok(0);
    }
    // Decide again under the write lock: another engine may have acted meanwhile.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let (existing, claims) = (read_existing(&mut tx).await?, read_claims(&mut tx).await?);
    let (steps, taken) = plan(&existing, &claims);
    apply(&mut tx, &steps).await?;
    if !taken.is_empty() {
        let fresh = next_generation(&mut tx).await?;
        for table in &taken {
            let want = wanted.iter().find(|w| w.table == *table).expect("planned");
            let claim = Claim {
                generation: fresh,
                state: State::Installed(Some(want.registration.clone())),
            };
            set_claim(&mut tx, table, &claim).await?;
        }
    }
    for want in created_on(&steps, &wanted) {
        if let Some(entity) = entities.iter().find(|e| e.table == want.table) {
            reconcile(&mut tx, entity).await?;
        }
    }
    tx.commit().await?;
    Ok(steps.len())
}

/// Removes every change-capture trigger the engine installed, on every table, and stops
/// every running engine from putting them back; returns how many triggers were removed.
///
/// A trigger names the columns it logs, and SQLite refuses `ALTER TABLE ... DROP COLUMN`
/// (and `RENAME COLUMN` of a column it names) while one does. Call this before such a
/// migration; the engine built afterwards installs the triggers its registrations ask
/// for. The order at start-up is:
///
/// ```no_run
/// # async fn run(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
/// // 1. No trigger names a column any more.
/// rhtmx_sync::drop_triggers(&pool).await?;
/// // 2. Migrate: `sqlx::migrate!().run(&pool)`, or by hand.
/// sqlx::query("ALTER TABLE todos DROP COLUMN notes").execute(&pool).await?;
/// // 3. The engine installs the triggers its registrations ask for.
/// let engine = rhtmx_sync::SyncEngine::builder(pool)
///     .entity_named("todos")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
///
/// `conn` is anything sqlx can take a connection from: `&pool`, `&mut conn`, or
/// `&mut *tx` to run it inside a transaction of yours (then it is undone if that
/// transaction rolls back). Outside a transaction it takes the write lock at once
/// (`BEGIN IMMEDIATE`). It needs no engine and works on a database where none was ever
/// built (it then removes nothing and returns 0).
///
/// Until an engine is built again, writes are **not captured**: engines still running
/// (another process, an older deploy) leave the triggers removed for [`DROP_TRIGGERS_PAUSE`]
/// (10 minutes), so they cannot put them back between this call and the migration.
/// Nothing is lost for good: the next engine built — or, if none is built within the
/// pause (the migration failed), each running engine when it puts its triggers back —
/// logs every row the triggers did not see. Only the engine's own triggers are touched: those named
/// `_rhtmx_sync_<table>_*` on the app's tables; the app's triggers and the engine's
/// tables are left alone.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) if the database fails, including
/// `SQLITE_BUSY` when the write lock cannot be had within the connection's busy
/// timeout.
pub async fn drop_triggers<'c, A>(conn: A) -> Result<usize>
where
    A: Acquire<'c, Database = Sqlite>,
{
    drop_triggers_for(conn, DROP_TRIGGERS_PAUSE).await
}

/// [`drop_triggers`] with another pause than [`DROP_TRIGGERS_PAUSE`]: how long engines still running
/// leave the triggers removed when no engine is built meanwhile (a migration longer
/// than 10 minutes needs a longer one).
///
/// # Errors
///
/// As [`drop_triggers`].
pub async fn drop_triggers_for<'c, A>(conn: A, pause: std::time::Duration) -> Result<usize>
where
    A: Acquire<'c, Database = Sqlite>,
{
    let mut conn = conn.acquire().await?;
    let mut tx = if conn.is_in_transaction() {
        Connection::begin(&mut *conn).await?
    } else {
        conn.begin_with("BEGIN IMMEDIATE").await?
    };
    let existing = read_existing(&mut tx).await?;
    apply(
        &mut tx,
        &existing
            .iter()
            .map(|e| Step::Drop(e.name.clone()))
            .collect::<Vec<_>>(),
    )
    .await?;
    let has_meta: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?",
    )
    .bind(META)
    .fetch_one(&mut *tx)
    .await?;
    if has_meta {
        let generation = next_generation(&mut tx).await?;
        let mut tables: BTreeSet<String> = read_claims(&mut tx).await?.into_keys().collect();
        tables.extend(existing.iter().map(|e| e.tbl_name.clone()));
        let pause = i64::try_from(pause.as_millis()).unwrap_or(i64::MAX);
        let until = (crate::hlc::system_ms() as i64).saturating_add(pause);
        let paused = Claim {
            generation,
            state: State::Paused(until),
        };
        for table in &tables {
            set_claim(&mut tx, table, &paused).await?;
        }
    }
    tx.commit().await?;
    tracing::info!(
        removed = existing.len(),
        "removed the change-capture triggers"
    );
    Ok(existing.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(name: &str, table: &str, sql: &str) -> Existing {
        Existing {
            name: name.into(),
            tbl_name: table.into(),
            sql: sql.into(),
        }
    }

    fn want(table: &str, registration: &str, triggers: &[(&str, &str)]) -> Want {
        Want {
            table: table.into(),
            registration: registration.into(),
            triggers: triggers
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        }
    }

    fn claims(list: &[(&str, &str)]) -> HashMap<String, Claim> {
        list.iter()
            .map(|(t, text)| (t.to_string(), Claim::parse(text).unwrap()))
            .collect()
    }

    #[test]
    fn claims_round_trip_and_refuse_anything_else() {
        for text in [
            "42 installed ab12",
            "42 installed",
            "42 removed",
            "42 paused 1700000000000",
        ] {
            assert_eq!(Claim::parse(text).unwrap().text(), text);
        }
        for bad in [
            "42",
            "x installed",
            "4 maybe",
            "4 removed x",
            "4 paused",
            "4 paused soon",
        ] {
            assert_eq!(Claim::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn trigger_names_name_their_table_unambiguously() {
        assert_eq!(table_of("_rhtmx_sync_insert_x_before"), Some("x_before"));
        assert_eq!(table_of("_rhtmx_sync_before_insert_x"), Some("x"));
        assert_eq!(table_of("_rhtmx_sync_replaced_a b"), Some("a b"));
        assert_eq!(table_of("_rhtmx_sync_todos_insert"), None, "the old naming");
    }

    #[test]
    fn a_build_keeps_what_matches_and_removes_what_it_does_not_register() {
        let existing = [
            ex("_rhtmx_sync_insert_a", "a", "same"),
            ex("_rhtmx_sync_update_a", "a", "old"),
            ex("_rhtmx_sync_replaced_a", "a", "unique is gone"),
            ex("_rhtmx_sync_insert_gone", "gone", "x"),
        ];
        let wanted = [want(
            "a",
            "r",
            &[
                ("_rhtmx_sync_insert_a", "same"),
                ("_rhtmx_sync_update_a", "new"),
            ],
        )];
        let steps = plan_build(&existing, &wanted);
        assert_eq!(
            steps,
            [
                Step::Drop("_rhtmx_sync_insert_gone".into()),
                Step::Drop("_rhtmx_sync_update_a".into()),
                Step::Drop("_rhtmx_sync_replaced_a".into()),
                Step::Create {
                    name: "_rhtmx_sync_update_a".into(),
                    sql: "new".into()
                },
            ]
        );
        assert_eq!(created_on(&steps, &wanted).len(), 1);
    }

    #[test]
    fn an_older_engine_leaves_a_newer_ones_other_triggers_alone() {
        let existing = [ex("_rhtmx_sync_insert_a", "a", "newer")];
        let mine = [want("a", "mine", &[("_rhtmx_sync_insert_a", "older")])];
        let plan = |c: &[(&str, &str)]| plan_refresh(&existing, &claims(c), &mine, 4, 0).0.len();
        // Claimed by generation 5 with another registration: left alone.
        assert_eq!(plan(&[("a", "5 installed theirs")]), 0);
        // With the same registration it installs what the newer build would: it acts.
        assert_eq!(plan(&[("a", "5 installed mine")]), 2);
        // Its own claim, or none (a database from before claims): it converges.
        assert_eq!(plan(&[("a", "4 installed mine")]), 2);
        assert_eq!(plan(&[]), 2);
    }

    #[test]
    fn a_table_left_without_triggers_gets_them_back_unless_paused() {
        let mine = [want("a", "mine", &[("_rhtmx_sync_insert_a", "sql")])];
        let plan = |c: &[(&str, &str)], now| plan_refresh(&[], &claims(c), &mine, 4, now).0.len();
        // A newer build with another registration, one that did not register the table
        // at all (a worker): a running engine that registers it must not lose capture.
        assert_eq!(plan(&[("a", "5 installed theirs")], 0), 1);
        assert_eq!(plan(&[("a", "5 removed")], 0), 1);
        // `drop_triggers`: not before the pause ends, then yes.
        assert_eq!(plan(&[("a", "5 paused 1000")], 999), 0);
        assert_eq!(plan(&[("a", "5 paused 1000")], 1000), 1);
        // Acting there, it takes the table over: claimed anew, so another registration's
        // engine leaves it alone instead of taking it back.
        let taken = |c: &[(&str, &str)]| plan_refresh(&[], &claims(c), &mine, 4, 1000).1;
        assert_eq!(taken(&[("a", "5 paused 1000")]), ["a"]);
        assert_eq!(taken(&[("a", "5 removed")]), ["a"]);
        assert_eq!(taken(&[("a", "5 installed theirs")]), ["a"]);
        assert!(taken(&[("a", "5 installed mine")]).is_empty());
        assert!(taken(&[("a", "3 installed theirs")]).is_empty());
    }

    #[test]
    fn a_trigger_moved_by_a_table_rename_is_dropped() {
        let existing = [ex("_rhtmx_sync_insert_todos", "tasks", "old")];
        assert_eq!(
            plan_refresh(&existing, &HashMap::new(), &[], 1, 0).0,
            [Step::Drop("_rhtmx_sync_insert_todos".into())]
        );
    }
}
