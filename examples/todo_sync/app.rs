//! The todo app: plain axum + sqlx handlers. Listing and adding know nothing about
//! sync; editing, toggling and deleting opt in to conflict resolution with two lines
//! each (`SyncContext` and `engine.write`), so an edit replayed after a day offline is
//! merged by when its user acted, field by field, instead of by when it arrived.
//!
//! Shared by the example binary and the end-to-end tests (`#[path]`-included), so the
//! tests exercise exactly the handlers a user would write.

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

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: SqlitePool,
    pub engine: SyncEngine,
}

/// The app's routes; the caller merges `engine.routes()`.
pub fn app(engine: SyncEngine) -> Router {
    let state = AppState {
        pool: engine.pool().clone(),
        engine,
    };
    Router::new()
        .route("/", get(index))
        .route("/assets/htmx-2.0.11.min.js", get(htmx_js))
        .route("/assets/app.js", get(app_js))
        .route("/todos", get(list).post(create))
        .route("/todos/{id}", axum::routing::put(rename).delete(remove))
        .route("/todos/{id}/toggle", post(toggle))
        .with_state(state)
}

/// The usual protective headers on every answer, set only where a handler set none.
///
/// The content security policy allows what the page and rhtmx-sync's client need and
/// nothing else: scripts, the event stream (`connect-src`) and the offline service
/// worker (`worker-src`) from this origin only; inline styles (the page's own, htmx's
/// indicator style). No `eval`, so no `hx-on` attributes: the page's behaviour lives in
/// `assets/app.js`.
pub fn protective_headers(router: Router) -> Router {
    use axum::http::{header, HeaderName, HeaderValue};
    use tower_http::set_header::SetResponseHeaderLayer;
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; worker-src 'self'; \
             frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        ))
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "same-origin"))
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

async fn all(pool: &SqlitePool) -> Result<Vec<Todo>, AppError> {
    Ok(sqlx::query_as!(
        Todo,
        r#"SELECT id, title, completed AS "completed: bool" FROM todos ORDER BY id"#
    )
    .fetch_all(pool)
    .await?)
}

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
    Ok(templates::page(&views(&all(&s.pool).await?), version))
}

async fn list(State(s): State<AppState>) -> Result<Markup, AppError> {
    let version = s.engine.head().await?;
    Ok(templates::list(&views(&all(&s.pool).await?), version))
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

/// htmx, pinned and served by the app itself so the page works offline.
async fn htmx_js() -> impl IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (
                axum::http::header::CACHE_CONTROL,
                "public, max-age=31536000, immutable",
            ),
        ],
        include_str!("assets/htmx-2.0.11.min.js"),
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
    sqlx::query!(
        "INSERT INTO todos (id, title, completed) VALUES (?, ?, false) ON CONFLICT (id) DO NOTHING",
        id,
        title
    )
    .execute(&s.pool)
    .await?;
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
        None => {
            sqlx::query!(
                "UPDATE todos SET completed = NOT completed WHERE id = ?",
                id
            )
            .execute(&s.pool)
            .await?;
        }
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

/// The engine for this app: one typed entity, writable through the push API (for
/// scripts and other services) under the same rules as the handlers.
pub async fn engine(pool: &SqlitePool) -> Result<rhtmx_sync::SyncEngine, rhtmx_sync::BuildError> {
    rhtmx_sync::SyncEngine::builder(pool.clone())
        .entity::<Todo>()
        .validate("todos", pushed_todo)
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
