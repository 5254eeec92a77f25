//! The test database, on either backend: a fresh SQLite file or a fresh PostgreSQL
//! database ([`TestDb`]), a pool on it that runs the tests' own SQL on both ([`Db`]),
//! and [`both!`], which runs one test body once per backend.
//!
//! Tests write their SQL once, with `$1, $2, ...` placeholders: PostgreSQL's own, and
//! read by SQLite as numbered parameters too.

#![allow(unused_macros)]

use std::time::Duration;

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{FromRow, PgPool, SqlitePool};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test (a SQLite file in a temp dir, removed on drop,
/// or a new database on the test binary's PostgreSQL server).
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh database on `backend`.
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("app.db").display());
                TestDb {
                    backend,
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => TestDb {
                backend,
                url: super::pg::database_url().await,
                _dir: None,
            },
        }
    }

    /// The database at `url` (made by another process's [`TestDb::new`]).
    pub fn existing(url: &str) -> TestDb {
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        TestDb {
            backend,
            url: url.to_owned(),
            _dir: None,
        }
    }

    /// The SQLite file (SQLite only).
    pub fn path(&self) -> std::path::PathBuf {
        assert_eq!(
            self.backend,
            Backend::Sqlite,
            "a file exists only on SQLite"
        );
        self.url.trim_start_matches("sqlite://").into()
    }

    /// Another pool on this database, after the example's migrations (another app
    /// instance, or another service writing with its own SQL).
    pub async fn connect(&self) -> Db {
        Db::from(&super::app::open(&self.url).await.expect("open db"))
    }

    /// A pool of one connection on this database (migrated first by the caller).
    pub async fn connect_single(&self) -> Db {
        match self.backend {
            Backend::Sqlite => {
                let options: SqliteConnectOptions = self.url.parse().expect("url");
                Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(options.busy_timeout(Duration::from_secs(5)))
                        .await
                        .expect("single pool"),
                )
            }
            Backend::Postgres => Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&self.url)
                    .await
                    .expect("single pool"),
            ),
        }
    }
}

/// One bound value of a test's statement.
#[derive(Clone, Debug)]
pub enum Arg {
    Text(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_owned())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(v.clone())
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::Int(v.into())
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Bool(v)
    }
}
impl<T: Into<Arg>> From<Option<T>> for Arg {
    fn from(v: Option<T>) -> Arg {
        v.map_or(Arg::Null, Into::into)
    }
}

/// The values of a statement's `$1, $2, ...`: `args![id, "title", 3, true]`.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$($crate::common::Arg::from($a)),*]
    };
}
pub(crate) use args;

/// A pool on the test database, whichever backend.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl From<&rhtmx_sync::Pool> for Db {
    fn from(pool: &rhtmx_sync::Pool) -> Db {
        match (pool.as_sqlite(), pool.as_postgres()) {
            (Some(p), _) => Db::Sqlite(p.clone()),
            (_, Some(p)) => Db::Postgres(p.clone()),
            _ => unreachable!("the tests are built with both backends"),
        }
    }
}

/// Binds `args` to `sqlx::query*(...)` of either backend.
macro_rules! bound {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for a in $args {
            q = match a {
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Null => q.bind(None::<String>),
            };
        }
        q
    }};
}

impl Db {
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite pool (for the tests of SQLite's own behaviour).
    pub fn sqlite(&self) -> &SqlitePool {
        match self {
            Db::Sqlite(p) => p,
            Db::Postgres(_) => panic!("a SQLite test on PostgreSQL"),
        }
    }

    /// The PostgreSQL pool (for the tests of PostgreSQL's own behaviour).
    pub fn postgres(&self) -> &PgPool {
        match self {
            Db::Postgres(p) => p,
            Db::Sqlite(_) => panic!("a PostgreSQL test on SQLite"),
        }
    }

    /// Runs one statement; its rows affected.
    pub async fn execute(&self, sql: &str, args: Vec<Arg>) -> u64 {
        self.try_execute(sql, args)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one statement; the database's error, if any.
    pub async fn try_execute(&self, sql: &str, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => bound!(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
            Db::Postgres(p) => bound!(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }

    /// Runs `sql`, several statements, as one script.
    pub async fn execute_script(&self, sql: &str) {
        match self {
            Db::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Db::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs `sql` once per set of values, all in one transaction.
    pub async fn execute_each(&self, sql: &str, rows: impl IntoIterator<Item = Vec<Arg>>) {
        match self {
            Db::Sqlite(p) => {
                let mut tx = p.begin().await.unwrap();
                for args in rows {
                    bound!(sqlx::query(sql), args)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                tx.commit().await.unwrap();
            }
            Db::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                for args in rows {
                    bound!(sqlx::query(sql), args)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                tx.commit().await.unwrap();
            }
        }
    }

    /// Runs `statements` in one transaction; the database's error, if any (the
    /// transaction is then rolled back).
    pub async fn try_transaction(
        &self,
        statements: Vec<(&str, Vec<Arg>)>,
    ) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for (sql, args) in statements {
                    bound!(sqlx::query(sql), args).execute(&mut *tx).await?;
                }
                tx.commit().await
            }
            Db::Postgres(p) => {
                let mut tx = p.begin().await?;
                for (sql, args) in statements {
                    bound!(sqlx::query(sql), args).execute(&mut *tx).await?;
                }
                tx.commit().await
            }
        }
    }

    /// Every row of a query.
    pub async fn fetch_all<T>(&self, sql: &str, args: Vec<Arg>) -> Vec<T>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let rows = match self {
            Db::Sqlite(p) => bound!(sqlx::query_as(sql), args).fetch_all(p).await,
            Db::Postgres(p) => bound!(sqlx::query_as(sql), args).fetch_all(p).await,
        };
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one row of a query.
    pub async fn fetch_one<T>(&self, sql: &str, args: Vec<Arg>) -> T
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let mut rows = self.fetch_all(sql, args).await;
        assert_eq!(rows.len(), 1, "one row from {sql}");
        rows.pop().unwrap()
    }

    /// The first column of the one row of a query.
    pub async fn scalar<T>(&self, sql: &str, args: Vec<Arg>) -> T
    where
        (T,): for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.fetch_one::<(T,)>(sql, args).await.0
    }

    /// Closes the pool and waits until every connection is closed. sqlx 0.8's `close`
    /// may return while a connection is still being given back, which then stays open
    /// in the closed pool (sqlx#3217): close again until none is.
    pub async fn close(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let open = match self {
                Db::Sqlite(p) => {
                    p.close().await;
                    p.size()
                }
                Db::Postgres(p) => {
                    p.close().await;
                    p.size()
                }
            };
            if open == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} connections still open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs each named test body — `async fn name(backend: Backend)` — once on SQLite and
/// once on PostgreSQL, as the tests `name::sqlite` and `name::postgres`. Prefix a name
/// with `multi_thread:` for a multi-threaded runtime.
macro_rules! both {
    ($(multi_thread: $name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
}
pub(crate) use both;
