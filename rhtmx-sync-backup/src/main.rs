//! `rhtmx-sync`: back up, list and restore an rhtmx-sync SQLite database.
//!
//! ```text
//! rhtmx-sync backup  --db app.db        s3://bucket/prefix
//! rhtmx-sync restore --to restored.db   s3://bucket/prefix [--at 2026-12-01T10:00:00Z]
//! rhtmx-sync list                        s3://bucket/prefix
//! ```
//!
//! A store is `s3://bucket/prefix`, `file:///path` or a directory path. S3 settings come
//! from the standard variables (`AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or the flags; the passphrase from `RHTMX_SYNC_PASSPHRASE` or
//! `--passphrase-file`. Exits 0 on success, 1 with a message on stderr on any failure,
//! 2 on bad arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rhtmx_sync_backup::{
    Backup, Backups, DirStore, Encrypted, Error, ObjectStore, Progress, RestoreOptions, S3Config,
    S3Store,
};

#[derive(Parser)]
#[command(
    name = "rhtmx-sync",
    version,
    about = "Back up and restore an rhtmx-sync database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take a backup of a SQLite database (the app may keep running).
    Backup {
        /// The database file.
        #[arg(long)]
        db: PathBuf,
        /// Keep only the newest N backups.
        #[arg(long)]
        keep: Option<usize>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Restore a backup into a new database file (stop the app first).
    Restore {
        /// Where the restored database goes; it must not exist unless --overwrite.
        #[arg(long)]
        to: PathBuf,
        /// The state at this time: the newest backup taken at or before it, and the
        /// changes after it up to then (RFC 3339 in UTC, e.g. 2026-12-01T10:00:00Z).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        at: Option<std::time::SystemTime>,
        /// The backup with this id (see `list`).
        #[arg(long, conflicts_with = "at")]
        id: Option<String>,
        /// Replace the database at --to (and its -wal and -shm files).
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the complete backups in a store, oldest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// s3://bucket/prefix, file:///path, or a directory.
    store: String,
    /// The S3 endpoint URL.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint: Option<String>,
    /// The S3 region requests are signed for [env: AWS_REGION, AWS_DEFAULT_REGION;
    /// default: us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// Address buckets as bucket.endpoint instead of endpoint/bucket.
    #[arg(long)]
    virtual_hosted: bool,
    /// A file whose first line is the passphrase (else RHTMX_SYNC_PASSPHRASE).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// An age identity file (AGE-SECRET-KEY-1…) to encrypt with instead of a passphrase.
    #[arg(long, conflicts_with = "passphrase_file")]
    identity_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Backup { db, keep, store } => {
            let backups = open(&store).await?;
            let backups = match keep {
                Some(n) => backups.keep(n),
                None => backups,
            };
            let pool = sqlite(&db).await?;
            let taken = backups.backup(&pool).await.map_err(text)?;
            pool.close().await;
            println!(
                "backup {} of {} ({} bytes)",
                taken.id,
                db.display(),
                taken.size
            );
        }
        Command::Restore {
            to,
            at,
            id,
            overwrite,
            store,
        } => {
            let backups = open(&store).await?;
            let bar = Arc::new(Bar(ProgressBar::new(0)));
            let mut options = RestoreOptions::new()
                .overwrite(overwrite)
                .progress(bar.clone());
            if let Some(at) = at {
                options = options.at(at);
            }
            if let Some(id) = id {
                options = options.id(id);
            }
            let restored = backups.restore(&to, options).await;
            bar.0.finish_and_clear();
            let restored = restored.map_err(text)?;
            let b = &restored.backup;
            println!(
                "restored backup {} ({} bytes, taken {}) and {} later changes to {}",
                b.id,
                b.size,
                taken(b),
                restored.replayed,
                to.display()
            );
        }
        Command::List { store } => {
            for b in open(&store).await?.list().await.map_err(text)? {
                println!(
                    "{}  {}  {} bytes  log head {}",
                    b.id,
                    taken(&b),
                    b.size,
                    b.head
                );
            }
        }
    }
    Ok(())
}

fn taken(backup: &Backup) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(backup.created())
}

fn text(e: Error) -> String {
    e.to_string()
}

/// The store named on the command line, encrypted if a passphrase or identity is given.
async fn open(args: &StoreArgs) -> Result<Backups<Box<dyn ObjectStore>>, String> {
    let plain = plain_store(args)?;
    let store: Box<dyn ObjectStore> = if let Some(file) = &args.identity_file {
        let contents = read_secret(file)?;
        let identity = contents
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{}: no age identity (AGE-SECRET-KEY-1…) in it",
                    file.display()
                )
            })?;
        Box::new(
            Encrypted::with_identity(plain, identity)
                .await
                .map_err(text)?,
        )
    } else if let Some(passphrase) = passphrase(args)? {
        Box::new(
            Encrypted::with_passphrase(plain, &passphrase)
                .await
                .map_err(text)?,
        )
    } else {
        plain
    };
    Ok(Backups::new(store))
}

fn passphrase(args: &StoreArgs) -> Result<Option<String>, String> {
    if let Some(file) = &args.passphrase_file {
        let text = read_secret(file)?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        if line.is_empty() {
            return Err(format!("{}: the first line is empty", file.display()));
        }
        return Ok(Some(line));
    }
    match std::env::var("RHTMX_SYNC_PASSPHRASE") {
        Ok(p) if p.is_empty() => {
            Err("RHTMX_SYNC_PASSPHRASE is set but empty: unset it for unencrypted backups".into())
        }
        Ok(p) => Ok(Some(p)),
        Err(_) => Ok(None),
    }
}

fn read_secret(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
}

fn plain_store(args: &StoreArgs) -> Result<Box<dyn ObjectStore>, String> {
    if let Some(rest) = args.store.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{}: no bucket (s3://bucket/prefix)", args.store));
        }
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set: S3 needs credentials"))
        };
        let region = args
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = args
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        return Ok(Box::new(S3Store::new(S3Config {
            endpoint,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region,
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            path_style: !args.virtual_hosted,
        })));
    }
    if args.store.contains("://") && !args.store.starts_with("file://") {
        return Err(format!(
            "{}: not a store (s3://bucket/prefix, file:///path or a directory)",
            args.store
        ));
    }
    let dir = args.store.strip_prefix("file://").unwrap_or(&args.store);
    Ok(Box::new(DirStore::new(dir)))
}

async fn sqlite(db: &Path) -> Result<sqlx::SqlitePool, String> {
    if !db.is_file() {
        return Err(format!("{}: no such database file", db.display()));
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| format!("{}: {e}", db.display()))
}

/// The restore's progress, drawn on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_style(
            ProgressStyle::with_template(
                "{spinner} restoring [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}
