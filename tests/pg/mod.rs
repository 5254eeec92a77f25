//! A throwaway PostgreSQL server for the tests of one test binary: `initdb` into a
//! temp dir, started on a free port on 127.0.0.1, one fresh database per test. The
//! server is stopped and its files removed when the test process is gone.
//!
//! `RHTMX_TEST_PG_URL` (a server URL whose user may `CREATE DATABASE`) uses that server
//! instead; `RHTMX_TEST_PG_BIN` names the directory of `initdb` and `pg_ctl` (default:
//! the newest `/usr/lib/postgresql/*/bin`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The server: a URL without a database name.
fn server() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("RHTMX_TEST_PG_URL") {
        Ok(url) => url.trim_end_matches('/').to_owned(),
        Err(_) => start_cluster(),
    })
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("RHTMX_TEST_PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (/usr/lib/postgresql); scripts/test-all.sh installs it")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// `initdb` and start a cluster; a watcher stops it and removes its files once this
/// process has exited. `initdb` refuses root: as root it runs as the `postgres` user.
fn start_cluster() -> String {
    let bin = bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("rhtmx-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let status = Command::new("chown")
            .args(["-R", "postgres:", dir.to_str().unwrap()])
            .status()
            .expect("chown");
        assert!(status.success(), "chown the cluster dir to postgres");
    }
    let port = free_port();
    let data = dir.join("data");
    let script = format!(
        r#"set -e
"{bin}/initdb" -D "{data}" -U test --auth=trust -E UTF8 --locale=C >"{dir}/initdb.log" 2>&1
"{bin}/pg_ctl" -D "{data}" -w -l "{dir}/server.log" -o "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" start >/dev/null
( while [ -d /proc/{pid} ]; do sleep 1; done
  "{bin}/pg_ctl" -D "{data}" -m immediate stop >/dev/null 2>&1
  rm -rf "{dir}" ) </dev/null >/dev/null 2>&1 &
"#,
        bin = bin.display(),
        data = data.display(),
        dir = dir.display(),
        pid = std::process::id(),
    );
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let status = command.status().expect("run initdb and pg_ctl");
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        panic!("the test PostgreSQL server did not start:\n{log}");
    }
    format!("postgres://test@127.0.0.1:{port}")
}

/// A new, empty database on the test server: its URL.
pub async fn database_url() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    format!("{server}/{name}")
}

/// A pool on a new, empty database.
pub async fn database() -> PgPool {
    pool(&database_url().await).await
}

/// Another pool on the database at `url` (another app instance).
pub async fn pool(url: &str) -> PgPool {
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.disable_statement_logging())
        .await
        .expect("connect to the test database")
}
