//! The smallest existing axum + htmx + sqlx app, given offline writes and live refresh by
//! the migration steps of the README (1 to 6; it has no sign-in) — and nothing else.
//! Every handler below is plain sqlx; the lines added for sync are marked `STEP n`.
//!
//! Run with: `cargo run --example minimal_notes` (`PORT`, default 3001; `DATABASE_URL`,
//! default `sqlite://minimal_notes.db`). On PostgreSQL:
//! `DATABASE_URL=postgres://user:password@localhost/notes cargo run --example minimal_notes`
//! (the database must exist; the app creates its table). Its SQL is written once for both
//! (see `shared/db.rs`); an app on one database keeps its plain pool instead.

// The pinned htmx the page loads: 2, or 4 with `HTMX=4` (not a step: the app had htmx).
#[path = "../shared/htmx.rs"]
mod htmx;
// The app's pool on either database (not a step: an app on one keeps its plain pool).
#[path = "../shared/db.rs"]
mod db;

use db::{on_db, Db};

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

// STEP 1 is the dependency in Cargo.toml (a git or path dependency: see the README).

// STEP 2: the model gets the derive (told its key, as the column is not named `id`).
#[derive(sqlx::FromRow, rhtmx_sync::Syncable)]
#[sync(id = "note_id")]
struct Note {
    note_id: i64,
    body: String,
}

async fn page(State(db): State<Db>) -> Result<Html<String>, Failed> {
    Ok(Html(format!(
        r##"<!doctype html><html><head><meta charset="utf-8"><title>Notes</title>
{}{}
<script src="/api/sync/client.js" data-sync-entities="notes"></script><!-- STEP 4 -->
</head><body><h1>Notes</h1>
<form hx-post="/notes" hx-target="#notes"><input name="body" required><button>Add</button></form>
<ul data-rhtmx-pending-list></ul><!-- STEP 6 -->
<div id="notes" hx-get="/notes" hx-trigger="rhtmx:notes:changed from:body">{}</div><!-- STEP 5 -->
</body></html>"##,
        htmx::config_tag(),
        htmx::script_tags(),
        list(State(db)).await?.0
    )))
}

async fn list(State(db): State<Db>) -> Result<Html<String>, Failed> {
    let notes: Vec<Note> = on_db!(&db, |pool| {
        sqlx::query_as("SELECT note_id, body FROM notes ORDER BY note_id")
            .fetch_all(pool)
            .await
    })?;
    let items: String = notes
        .iter()
        .map(|n| {
            format!(
                "<li data-id=\"{}\">{}</li>",
                n.note_id,
                html_escape(&n.body)
            )
        })
        .collect();
    Ok(Html(format!("<ul>{items}</ul>")))
}

#[derive(Deserialize)]
struct NewNote {
    body: String,
}

async fn add(State(db): State<Db>, Form(new): Form<NewNote>) -> Result<Html<String>, Failed> {
    on_db!(&db, |pool| {
        sqlx::query("INSERT INTO notes (body) VALUES ($1)")
            .bind(&new.body)
            .execute(pool)
            .await
            .map(drop)
    })?;
    list(State(db)).await
}

/// A database error: answered `500` (never `200`: a replayed write must not be taken
/// as done when it failed), its words kept in the server's log.
struct Failed(sqlx::Error);

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Failed {
        Failed(e)
    }
}

impl axum::response::IntoResponse for Failed {
    fn into_response(self) -> axum::response::Response {
        eprintln!("minimal_notes: database error: {}", self.0);
        let status = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        (status, "database error (see the server's log)").into_response()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://minimal_notes.db".into());
    let port: u16 = std::env::var("PORT").map_or(Ok(3001), |p| p.parse())?;
    let db = Db::open(
        &url,
        "CREATE TABLE IF NOT EXISTS notes (note_id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS notes (note_id bigserial PRIMARY KEY, body text NOT NULL)",
    )
    .await?;

    // STEP 3: build the engine on the app's pool (either kind) and merge its routes.
    let engine = rhtmx_sync::SyncEngine::builder(db.pool())
        .entity::<Note>()
        .build()
        .await?;
    let app = Router::new()
        .route("/", get(page))
        .route("/notes", get(list).post(add))
        .with_state(db)
        .merge(htmx::routes())
        .merge(engine.routes()) // STEP 3
        .layer(engine.idempotency_layer()); // STEP 3: replays applied once

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "minimal_notes listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
