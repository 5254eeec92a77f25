//! Installing, handing over and removing the capture triggers.
//!
//! Several engines may capture one database: processes of one deploy, and during a
//! rolling deploy processes of two versions that register a table with different
//! columns. Each build takes the next **generation** (a counter in `_rhtmx_sync_meta`)
//! and records, per table, a **claim**: the generation that last decided the table's
//! triggers and whether it installed or removed them (`triggers:<table>` →
//! `"<generation> installed"` or `"<generation> removed"`). The rule:
//!
//! - A build installs its definitions for every table it registers, removes every
//!   engine trigger it does not want (tables no longer registered, the REPLACE triggers
//!   of a table that lost its UNIQUE constraints), and claims all those tables. The
//!   newest build therefore wins, deterministically.
//! - When the schema changes, an engine rewrites the triggers of a table only while its
//!   own generation holds the claim. An older engine leaves a newer one's triggers
//!   alone, so two versions never rewrite each other's on every poll. It installs its own
//!   only when the table has none at all and the claim says "installed" (a migration
//!   recreated the table and the newest engine may be gone); a newer engine still
//!   running puts its own back at its next poll.
//! - [`drop_triggers`] removes every engine trigger and claims every table as removed
//!   with a generation newer than every running engine: none of them reinstalls
//!   anything, so a migration can run. The next build installs again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sqlx::{Acquire, Connection, Sqlite, SqliteConnection};

use super::triggers;
use crate::entity::{quote_ident, Entity};
use crate::error::Result;

/// The engine's key-value table (created by `log::migrate`).
const META: &str = "_rhtmx_sync_meta";

/// The meta key of the last generation handed out.
const GENERATION: &str = "trigger_generation";

/// Selects the engine's capture triggers: named `_rhtmx_sync_*`, on a table that is not
/// the engine's own (the idempotency store has triggers of its own under that prefix).
/// GLOB, not LIKE: `_` is a LIKE wildcard.
const EXISTING: &str = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' \
     AND name GLOB '_rhtmx_sync_*' AND tbl_name NOT GLOB '_rhtmx_sync_*' ORDER BY name";

/// Who last decided a table's triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    generation: i64,
    installed: bool,
}

impl Claim {
    fn key(table: &str) -> String {
        format!("triggers:{table}")
    }

    fn parse(value: &str) -> Option<Claim> {
        let (generation, state) = value.split_once(' ')?;
        Some(Claim {
            generation: generation.parse().ok()?,
            installed: match state {
                "installed" => true,
                "removed" => false,
                _ => return None,
            },
        })
    }

    fn text(self) -> String {
        let state = if self.installed {
            "installed"
        } else {
            "removed"
        };
        format!("{} {state}", self.generation)
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

/// The triggers one entity wants, by table.
type Wanted = Vec<(String, Vec<(String, String)>)>;

fn wanted<'a>(entities: impl IntoIterator<Item = &'a Entity>) -> Wanted {
    entities
        .into_iter()
        .map(|e| (e.table.clone(), triggers(e)))
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
fn plan_build(existing: &[Existing], wanted: &Wanted) -> Vec<Step> {
    let mut steps: Vec<Step> = existing
        .iter()
        .filter(|e| !wanted.iter().any(|(t, _)| *t == e.tbl_name))
        .map(|e| Step::Drop(e.name.clone()))
        .collect();
    for (table, want) in wanted {
        steps.extend(converge(existing, table, want));
    }
    steps
}

/// A schema change seen by the engine of `generation` (see the module docs).
fn plan_refresh(
    existing: &[Existing],
    claims: &HashMap<String, Claim>,
    wanted: &Wanted,
    generation: i64,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (table, want) in wanted {
        match claims.get(table) {
            Some(claim) if claim.generation > generation => {
                let none = !existing.iter().any(|e| e.tbl_name == *table);
                if claim.installed && none {
                    steps.extend(converge(existing, table, want));
                }
            }
            _ => steps.extend(converge(existing, table, want)),
        }
    }
    steps
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

async fn set_claim(conn: &mut SqliteConnection, table: &str, claim: Claim) -> Result<()> {
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
    let installed = Claim {
        generation,
        installed: true,
    };
    for (table, _) in &wanted {
        set_claim(&mut tx, table, installed).await?;
    }
    let orphans: BTreeSet<&str> = existing
        .iter()
        .map(|e| e.tbl_name.as_str())
        .filter(|t| !wanted.iter().any(|(w, _)| w == t))
        .collect();
    for table in &orphans {
        let removed = Claim {
            generation,
            installed: false,
        };
        set_claim(&mut tx, table, removed).await?;
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
    let plan = |existing: &[Existing], claims: &HashMap<String, Claim>| {
        plan_refresh(existing, claims, &wanted, generation)
    };
    let (existing, claims) = (read_existing(conn).await?, read_claims(conn).await?);
    if plan(&existing, &claims).is_empty() {
        return Ok(0);
    }
    // Decide again under the write lock: another engine may have acted meanwhile.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let (existing, claims) = (read_existing(&mut tx).await?, read_claims(&mut tx).await?);
    let steps = plan(&existing, &claims);
    apply(&mut tx, &steps).await?;
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
/// (another process, an older deploy) see that a newer generation removed the
/// triggers and leave them removed, so they cannot put them back between this call and
/// the migration. Only the engine's own triggers are touched: those named
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
        let removed = Claim {
            generation,
            installed: false,
        };
        for table in &tables {
            set_claim(&mut tx, table, removed).await?;
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

    fn want(table: &str, triggers: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
        (
            table.into(),
            triggers
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        )
    }

    fn claims(list: &[(&str, i64, bool)]) -> HashMap<String, Claim> {
        list.iter()
            .map(|(t, generation, installed)| {
                (
                    t.to_string(),
                    Claim {
                        generation: *generation,
                        installed: *installed,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn claims_round_trip_and_refuse_anything_else() {
        for installed in [true, false] {
            let c = Claim {
                generation: 42,
                installed,
            };
            assert_eq!(Claim::parse(&c.text()), Some(c));
        }
        assert_eq!(Claim::parse("42"), None);
        assert_eq!(Claim::parse("x installed"), None);
        assert_eq!(Claim::parse("4 maybe"), None);
    }

    #[test]
    fn a_build_keeps_what_matches_and_removes_what_it_does_not_register() {
        let existing = [
            ex("_rhtmx_sync_a_insert", "a", "same"),
            ex("_rhtmx_sync_a_update", "a", "old"),
            ex("_rhtmx_sync_a_replaced", "a", "unique is gone"),
            ex("_rhtmx_sync_gone_insert", "gone", "x"),
        ];
        let wanted = vec![want(
            "a",
            &[
                ("_rhtmx_sync_a_insert", "same"),
                ("_rhtmx_sync_a_update", "new"),
            ],
        )];
        let steps = plan_build(&existing, &wanted);
        assert_eq!(
            steps,
            [
                Step::Drop("_rhtmx_sync_gone_insert".into()),
                Step::Drop("_rhtmx_sync_a_update".into()),
                Step::Drop("_rhtmx_sync_a_replaced".into()),
                Step::Create {
                    name: "_rhtmx_sync_a_update".into(),
                    sql: "new".into()
                },
            ]
        );
    }

    #[test]
    fn an_older_engine_leaves_a_newer_ones_triggers_alone() {
        let existing = [ex("_rhtmx_sync_a_insert", "a", "newer")];
        let wanted = vec![want("a", &[("_rhtmx_sync_a_insert", "older")])];
        // Claimed by generation 5; this engine is 4.
        assert!(plan_refresh(&existing, &claims(&[("a", 5, true)]), &wanted, 4).is_empty());
        // Its own claim: it converges.
        assert_eq!(
            plan_refresh(&existing, &claims(&[("a", 4, true)]), &wanted, 4).len(),
            2
        );
        // No claim yet (a database from before claims): it converges too.
        assert_eq!(
            plan_refresh(&existing, &HashMap::new(), &wanted, 4).len(),
            2
        );
    }

    #[test]
    fn an_older_engine_restores_a_table_left_with_no_triggers_unless_they_were_removed() {
        let wanted = vec![want("a", &[("_rhtmx_sync_a_insert", "older")])];
        let restored = plan_refresh(&[], &claims(&[("a", 5, true)]), &wanted, 4);
        assert_eq!(
            restored,
            [Step::Create {
                name: "_rhtmx_sync_a_insert".into(),
                sql: "older".into()
            }]
        );
        assert!(plan_refresh(&[], &claims(&[("a", 5, false)]), &wanted, 4).is_empty());
        // Nor does an engine restore what a later `drop_triggers` removed from its own.
        assert!(plan_refresh(&[], &claims(&[("a", 5, false)]), &wanted, 3).is_empty());
    }
}
