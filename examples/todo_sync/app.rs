//! The todo app: plain axum + sqlx handlers. Listing and adding know nothing about
//! sync; editing, toggling and deleting opt in to conflict resolution with two lines
//! each (`SyncContext` and `engine.write`), so an edit replayed after a day offline is
//! merged by when its user acted, field by field, instead of by when it arrived.
//!
//! Shared by the example binary and the end-to-end tests (`#[path]`-included), so the
//! tests exercise exactly the handlers a user would write.
//!
//! It runs on SQLite (the default) or on PostgreSQL (`DATABASE_URL=postgres://...`), any
//! number of instances on one database: [`Db`] holds the app's three own queries for
//! each.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use rhtmx_sync::{SyncContext, SyncEngine};
use serde::Deserialize;
use serde_json::json;
use sqlx::SqlitePool;

/// A todo, synced to browsers by its derive alone.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, rhtmx_sync::Syncable)]
#[sync(table = "todos")]
pub struct Todo {
    pub id: String,
    pub title: String,
    pub completed: bool,
}

/// The app's own database: the same pool the engine runs on.
#[derive(Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    fn of(engine: &SyncEngine) -> Db {
        match (engine.pool().as_sqlite(), engine.pool().as_postgres()) {
            (Some(pool), _) => Db::Sqlite(pool.clone()),
            (_, Some(pool)) => Db::Postgres(pool.clone()),
            _ => unreachable!("the example is built with both backends"),
        }
    }

    async fn all(&self) -> Result<Vec<Todo>, AppError> {
        Ok(match self {
            Db::Sqlite(pool) => {
                sqlx::query_as!(
                    Todo,
                    r#"SELECT id, title, completed AS "completed: bool" FROM todos ORDER BY id"#
                )
                .fetch_all(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT id, title, completed FROM todos ORDER BY id")
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    async fn insert(&self, id: &str, title: &str) -> Result<(), AppError> {
        match self {
            Db::Sqlite(pool) => {
                sqlx::query!(
                    "INSERT INTO todos (id, title, completed) VALUES (?, ?, false) \
                     ON CONFLICT (id) DO NOTHING",
                    id,
                    title
                )
                .execute(pool)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO todos (id, title, completed) VALUES ($1, $2, false) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(title)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn flip(&self, id: &str) -> Result<(), AppError> {
        match self {
            Db::Sqlite(pool) => {
                sqlx::query!(
                    "UPDATE todos SET completed = NOT completed WHERE id = ?",
                    id
                )
                .execute(pool)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query("UPDATE todos SET completed = NOT completed WHERE id = $1")
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub engine: SyncEngine,
}

/// The app's routes; the caller merges `engine.routes()`. The operator view is mounted
/// when `ADMIN_TOKEN` is set (see [`admin`]).
pub fn app(engine: SyncEngine) -> Router {
    let admin = admin(&engine, std::env::var("ADMIN_TOKEN").ok());
    let state = AppState {
        db: Db::of(&engine),
        engine,
    };
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/todos", get(list).post(create))
        .route("/todos/{id}", axum::routing::put(rename).delete(remove))
        .route("/todos/{id}/toggle", post(toggle))
        .with_state(state)
        .merge(htmx::routes())
        .merge(admin)
}

/// The engine's operator view at `/admin/sync` (JSON at `/admin/sync/figures.json`).
///
/// The check is deliberately trivial, for a demo: without a token (`ADMIN_TOKEN` unset
/// or empty) the routes do not exist; with one, they answer 404 unless the request
/// sends `Authorization: Bearer <token>`:
///
/// ```sh
/// ADMIN_TOKEN=s3cret cargo run --example todo_sync
/// curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:3000/admin/sync/figures.json
/// ```
///
/// A real app puts its own admin check here (a signed-in user with an admin role):
/// these routes name users and show internal errors, and must never be reachable
/// unauthenticated.
pub fn admin(engine: &SyncEngine, token: Option<String>) -> Router {
    use axum::extract::Request;
    use axum::middleware::{self, Next};
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Router::new();
    };
    let expected: std::sync::Arc<str> = format!("Bearer {token}").into();
    let check = move |request: Request, next: Next| {
        let expected = expected.clone();
        async move {
            use subtle::ConstantTimeEq;
            let sent = request.headers().get(axum::http::header::AUTHORIZATION);
            // In constant time: how long a wrong guess takes says nothing of the token.
            let sent = sent.map_or(&[][..], |v| v.as_bytes());
            if !bool::from(sent.ct_eq(expected.as_bytes())) {
                // 404, not 401: nothing tells a stranger the page exists.
                return StatusCode::NOT_FOUND.into_response();
            }
            next.run(request).await
        }
    };
    Router::new().nest(
        "/admin/sync",
        engine
            .operator_routes()
            .route_layer(middleware::from_fn(check)),
    )
}

/// A handler failure: a message for the user, nothing internal. (Boxed: a `Response`
/// is large, and errors travel through every `Result`.)
pub struct AppError(Box<Response>);

impl AppError {
    fn new(status: StatusCode, message: &'static str) -> Self {
        AppError(Box::new((status, message).into_response()))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        eprintln!("database error: {e}");
        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "database error")
    }
}

impl From<rhtmx_sync::Error> for AppError {
    fn from(e: rhtmx_sync::Error) -> Self {
        AppError(Box::new(e.into_response()))
    }
}

#[path = "../shared/htmx.rs"]
pub mod htmx;
#[path = "../../templates/todos.rs"]
mod templates;

fn views(todos: &[Todo]) -> Vec<templates::TodoView<'_>> {
    todos
        .iter()
        .map(|t| templates::TodoView {
            id: &t.id,
            title: &t.title,
            completed: t.completed,
        })
        .collect()
}

async fn index(State(s): State<AppState>) -> Result<Markup, AppError> {
    // The version first, the rows after: an edit made on this page then merges against
    // everything the page could have shown.
    let version = s.engine.head().await?;
    Ok(templates::page(&views(&s.db.all().await?), version))
}

async fn list(State(s): State<AppState>) -> Result<Markup, AppError> {
    let version = s.engine.head().await?;
    Ok(templates::list(&views(&s.db.all().await?), version))
}

/// The page's own script (pending, rejected and conflicting changes).
async fn app_js() -> impl IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.js"),
    )
}

#[derive(Deserialize)]
struct NewTodo {
    title: String,
    /// Generated by the browser for offline creates, so a replay cannot duplicate.
    id: Option<String>,
}

const TITLE_RULE: &str = "title must be 1 to 500 characters";
const ID_RULE: &str = "id must be a UUID (8-4-4-4-12 hexadecimal digits)";

fn valid_title(title: &str) -> Result<&str, AppError> {
    let title = title.trim();
    if title.is_empty() || title.len() > 500 {
        return Err(AppError::new(StatusCode::UNPROCESSABLE_ENTITY, TITLE_RULE));
    }
    Ok(title)
}

/// A client-chosen id, accepted only as a UUID in its 8-4-4-4-12 form (what
/// `data-rhtmx-new-id` generates) and stored in lowercase. Ids go into URLs, the change
/// log and other clients' pages: `../todos/<other id>#` must not become a row.
fn valid_id(id: &str) -> Result<String, AppError> {
    match uuid::Uuid::try_parse(id) {
        Ok(uuid) if id.len() == 36 => Ok(uuid.hyphenated().to_string()),
        _ => Err(AppError::new(StatusCode::UNPROCESSABLE_ENTITY, ID_RULE)),
    }
}

async fn create(State(s): State<AppState>, Form(new): Form<NewTodo>) -> Result<Markup, AppError> {
    let title = valid_title(&new.title)?;
    let id = match new.id.filter(|id| !id.is_empty()) {
        Some(id) => valid_id(&id)?,
        None => uuid::Uuid::now_v7().to_string(),
    };
    s.db.insert(&id, title).await?;
    list(State(s)).await
}

#[derive(Deserialize)]
struct Toggle {
    /// The state the user asked for; a replayed toggle then cannot flip twice.
    completed: Option<bool>,
}

async fn toggle(
    State(s): State<AppState>,
    Path(id): Path<String>,
    sync: SyncContext,
    form: Result<Form<Toggle>, FormRejection>,
) -> Result<Response, AppError> {
    // A bodiless POST flips; a malformed form is refused.
    let wanted = match form {
        Ok(Form(toggle)) => toggle.completed,
        Err(FormRejection::InvalidFormContentType(_)) => None,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    match wanted {
        // Merged with concurrent edits by when the user acted.
        Some(completed) => {
            s.engine
                .write::<Todo>(&sync)
                .update(&id, [("completed", json!(completed))])
                .await?;
        }
        None => s.db.flip(&id).await?,
    }
    Ok(list(State(s)).await?.into_response())
}

#[derive(Deserialize)]
struct Rename {
    title: String,
}

async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    sync: SyncContext,
    Form(form): Form<Rename>,
) -> Result<Markup, AppError> {
    let title = valid_title(&form.title)?;
    s.engine
        .write::<Todo>(&sync)
        .update(&id, [("title", json!(title))])
        .await?;
    list(State(s)).await
}

async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    sync: SyncContext,
) -> Result<Markup, AppError> {
    s.engine.write::<Todo>(&sync).delete(&id).await?;
    list(State(s)).await
}
/// Opens (creating if needed) the SQLite database in WAL mode and migrates it.
pub async fn open_db(url: &str) -> Result<SqlitePool, Box<dyn std::error::Error>> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use std::str::FromStr;
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::migrate!("examples/todo_sync/migrations")
        .run(&pool)
        .await?;
    Ok(pool)
}

/// Opens the database `url` names — `sqlite://...` (see [`open_db`]) or
/// `postgres://...` — and migrates it (the one migration is plain SQL both read alike).
pub async fn open(url: &str) -> Result<rhtmx_sync::Pool, Box<dyn std::error::Error>> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::migrate!("examples/todo_sync/migrations")
            .run(&pool)
            .await?;
        return Ok(pool.into());
    }
    Ok(open_db(url).await?.into())
}

/// The engine for this app: one typed entity, writable through the push API (for
/// scripts and other services) under the same rules as the handlers.
// The example itself builds with `engine_with`; tests and benchmarks use this.
#[allow(dead_code)]
pub async fn engine(
    pool: impl Into<rhtmx_sync::Pool>,
) -> Result<rhtmx_sync::SyncEngine, rhtmx_sync::BuildError> {
    engine_with(pool, |b| b).await
}

/// [`engine`] with more settings made by `configure`.
pub async fn engine_with(
    pool: impl Into<rhtmx_sync::Pool>,
    configure: impl FnOnce(rhtmx_sync::SyncEngineBuilder) -> rhtmx_sync::SyncEngineBuilder,
) -> Result<rhtmx_sync::SyncEngine, rhtmx_sync::BuildError> {
    configure(
        rhtmx_sync::SyncEngine::builder(pool)
            .entity::<Todo>()
            .validate("todos", pushed_todo),
    )
    .build()
    .await
}

/// A pushed todo obeys the handlers' rules: a UUID id (in its lowercase hyphenated
/// form, as the handlers store it) and a title of 1 to 500 characters.
fn pushed_todo(change: &rhtmx_sync::PushedChange<'_>) -> Result<(), String> {
    let id = change.id.as_str().unwrap_or_default();
    if valid_id(id).ok().as_deref() != Some(id) {
        return Err(ID_RULE.to_owned());
    }
    match change.data.and_then(|d| d.get("title")) {
        Some(title) if title.as_str().and_then(|t| valid_title(t).ok()).is_none() => {
            Err(TITLE_RULE.to_owned())
        }
        _ => Ok(()),
    }
}
