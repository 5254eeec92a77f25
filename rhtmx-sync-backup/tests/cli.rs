//! The `rhtmx-sync` command as a new user runs it (the README's commands), against a
//! real S3 server on 127.0.0.1: backup, list, restore with a progress bar; every
//! failure exits 1 with a message that says what went wrong, and changes nothing.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const PASSPHRASE: &str = "correct horse battery staple";

/// Runs `rhtmx-sync args…` with the S3 settings in the standard variables.
async fn run(endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rhtmx-sync"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the command failed with exit code 1 and `expected` in its message.
fn fails_with(out: &Output, expected: &str) {
    let (code, stdout, stderr) = text(out);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    assert!(
        !stderr.contains(SECRET_KEY) && !stderr.contains(PASSPHRASE),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_list_and_restore_from_the_command_line() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 2000).await;
    let pass = [("RHTMX_SYNC_PASSPHRASE", PASSPHRASE)];
    let url = format!("s3://{BUCKET}/app");
    let db_arg = db.display().to_string();

    let out = run(&server.endpoint, &pass, &["backup", "--db", &db_arg, &url]).await;
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("backup "), "{stdout}");
    let id = stdout.split_whitespace().nth(1).unwrap().to_owned();
    engine.shutdown();
    pool.close().await;

    let out = run(&server.endpoint, &pass, &["list", &url]).await;
    let (code, stdout, _) = text(&out);
    assert_eq!(code, 0);
    assert!(stdout.starts_with(&id), "{stdout}");

    // In a terminal, the restore draws a progress bar.
    let to = dir.path().join("restored.db");
    let line = format!(
        "{} restore --to {} {url}",
        env!("CARGO_BIN_EXE_rhtmx-sync"),
        to.display()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RHTMX_SYNC_PASSPHRASE", PASSPHRASE)
        .output()
        .await
        .unwrap();
    let (code, stdout, _) = text(&out);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("restoring ["), "a progress bar: {stdout}");
    assert!(
        stdout.contains(&format!("restored backup {id}")),
        "{stdout}"
    );
    assert_eq!(dump(&to).await["todos"], dump(&db).await["todos"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failure_exits_non_zero_with_a_clear_message() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (pool, engine) = app_db(&db, 300).await;
    let db_arg = db.display().to_string();
    let url = format!("s3://{BUCKET}/app");
    let pass = [("RHTMX_SYNC_PASSPHRASE", PASSPHRASE)];
    let out = run(&server.endpoint, &pass, &["backup", "--db", &db_arg, &url]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    engine.shutdown();
    pool.close().await;
    let to = dir.path().join("restored.db");
    let to_arg = to.display().to_string();
    let restore = ["restore", "--to", to_arg.as_str(), url.as_str()];

    let wrong = [("RHTMX_SYNC_PASSPHRASE", "wrong horse")];
    fails_with(
        &run(&server.endpoint, &wrong, &restore).await,
        "wrong passphrase",
    );
    fails_with(
        &run(&server.endpoint, &[], &restore).await,
        "encrypted: give its passphrase",
    );
    let empty = [
        "restore",
        "--to",
        to_arg.as_str(),
        "s3://backups/nothing-here",
    ];
    fails_with(
        &run(&server.endpoint, &pass, &empty).await,
        "no complete backup",
    );
    let early = [
        "restore",
        "--to",
        to_arg.as_str(),
        "--at",
        "2001-01-01T00:00:00Z",
        url.as_str(),
    ];
    fails_with(
        &run(&server.endpoint, &pass, &early).await,
        "no complete backup in the store taken at or before 2001-01-01T00:00:00Z",
    );
    let exists = ["restore", "--to", db_arg.as_str(), url.as_str()];
    fails_with(&run(&server.endpoint, &pass, &exists).await, "exists");
    // A tampered part.
    let part = std::fs::read_dir(server.root.path().join(BUCKET).join("app/snapshots"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("00000");
    let good = std::fs::read(&part).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&part, &bad).unwrap();
    fails_with(
        &run(&server.endpoint, &pass, &restore).await,
        "damaged or was tampered with",
    );
    std::fs::write(&part, &good).unwrap();
    // The wrong secret key, no credentials, nobody listening, a bad store.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rhtmx-sync"));
    let out = cmd
        .args(restore)
        .env_clear()
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "the-wrong-secret-key")
        .output()
        .await
        .unwrap();
    fails_with(&out, "SignatureDoesNotMatch");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("the-wrong-secret-key"));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rhtmx-sync"));
    let out = cmd.args(restore).env_clear().output().await.unwrap();
    fails_with(&out, "AWS_ACCESS_KEY_ID is not set");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    fails_with(
        &run(&closed, &pass, &restore).await,
        "cannot reach the server",
    );
    let empty_pass = [("RHTMX_SYNC_PASSPHRASE", "")];
    fails_with(
        &run(&server.endpoint, &empty_pass, &restore).await,
        "set but empty",
    );
    let ftp = ["list", "ftp://somewhere/x"];
    fails_with(&run(&server.endpoint, &[], &ftp).await, "not a store");
    let missing = ["backup", "--db", "/nonexistent/app.db", url.as_str()];
    fails_with(
        &run(&server.endpoint, &pass, &missing).await,
        "no such database file",
    );
    assert!(!to.exists(), "no failure left a database behind");
    assert!(!Path::new(&format!("{}.partial", to.display())).exists());

    // Bad arguments: exit 2, with usage.
    let out = run(&server.endpoint, &[], &["restore", url.as_str()]).await;
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--to"), "{stderr}");
    let out = run(
        &server.endpoint,
        &[],
        &["restore", "--to", "x.db", "--at", "yesterday", url.as_str()],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
}
