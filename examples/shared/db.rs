//! The app's database, SQLite or PostgreSQL, whichever `DATABASE_URL` names: the pool
//! the engine runs on too. The app's SQL is written once, with `$1` placeholders (which
//! SQLite reads as well), and [`on_db!`] runs it on the pool there is. An app on one
//! database keeps its plain pool and needs none of this.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{PgPool, SqlitePool};

#[derive(Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// `on_db!(db, |pool| expression)`: the expression, with `pool` the SQLite or the
/// PostgreSQL pool of `db` (a `match` with one identical arm per database). A block
/// works too: `?` and `return` in it leave the handler.
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

impl Db {
    /// Opens the database `url` names — `sqlite://...` (created if missing, in WAL mode)
    /// or `postgres://...` — and runs that database's `schema` script on it.
    pub async fn open(
        url: &str,
        sqlite_schema: &str,
        postgres_schema: &str,
    ) -> Result<Db, Box<dyn std::error::Error>> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPool::connect(url).await?;
            sqlx::raw_sql(postgres_schema).execute(&pool).await?;
            return Ok(Db::Postgres(pool));
        }
        let options = url
            .parse::<SqliteConnectOptions>()?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true); // sqlx's default too: cascades need it
        let pool = SqlitePool::connect_with(options).await?;
        sqlx::raw_sql(sqlite_schema).execute(&pool).await?;
        Ok(Db::Sqlite(pool))
    }

    /// The pool, for `SyncEngine::builder`.
    pub fn pool(&self) -> rhtmx_sync::Pool {
        on_db!(self, |pool| pool.into())
    }
}
