//! rhtmx-sync with sign-in and teams: each team reads and writes only its own todos,
//! live and offline. The todo_sync example plus the one scoping step:
//!
//! ```text
//! .authenticate::<Member>()                     // who is asking: the app's own extractor
//! .scope("todos", Scope::tenant("team_id"))     // which rows they may read
//! ```
//!
//! Two demo users in two teams: alice (Acme) and bob (Globex). Open the app in two
//! browsers (or a normal and a private window), sign in as each, and watch each list
//! follow its own team only. "Leave team" removes the signed-in user from their team:
//! every open tab of theirs drops the team's todos, and writes they queued offline for
//! it are refused when replayed.
//!
//! Run with: `cargo run --example teams`, then open http://127.0.0.1:3001.
//! `PORT` and `DATABASE_URL` (default `sqlite://teams.db`) override the defaults. On
//! PostgreSQL (an existing database; the example creates its tables):
//!
//! ```sh
//! DATABASE_URL=postgres://user:password@localhost/teams cargo run --example teams
//! ```
//!
//! The app's own SQL is written once for both (see [`Db`]).
//!
//! Sign-in is a demo: pick a user, no password. A real app uses its own authentication;
//! sessions come from `tower-sessions` (an in-memory store here: a restart signs
//! everybody out, and puts alice and bob back in their teams). Every unsafe request to
//! the app's routes carries a CSRF token (`axum_csrf`, a signed double-submit cookie):
//! the page names it in `<meta name="csrf-token">` and `hx-headers`, and the sync
//! client sends the current one with every replayed write.

use std::net::SocketAddr;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Form, Router};
use axum_csrf::{CsrfConfig, CsrfLayer, CsrfToken};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use rhtmx_sync::{Forbidden, Principal, Scope, SyncContext, SyncEngine};
use serde::Deserialize;
use serde_json::json;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer};

#[path = "../shared/headers.rs"]
mod headers;
#[path = "../shared/serve.rs"]
mod serve;

#[path = "../shared/db.rs"]
mod db;
#[path = "../shared/htmx.rs"]
mod htmx;

use db::{on_db, Db};
#[path = "../../templates/todos.rs"]
#[allow(dead_code)] // the page layout of todo_sync is not used here
mod templates;

/// A todo of a team.
#[derive(Debug, Clone, sqlx::FromRow, rhtmx_sync::Syncable)]
#[sync(table = "todos")]
struct Todo {
    id: String,
    #[allow(dead_code)] // the engine's scope column; the pages list one team only
    team_id: String,
    title: String,
    completed: bool,
}

/// The app's tables and demo users, in SQL both databases read alike.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS teams (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    user_id TEXT PRIMARY KEY NOT NULL,
    team_id TEXT NOT NULL REFERENCES teams (id)
);
CREATE TABLE IF NOT EXISTS todos (
    id        TEXT PRIMARY KEY NOT NULL,
    team_id   TEXT NOT NULL REFERENCES teams (id),
    title     TEXT NOT NULL,
    completed BOOLEAN NOT NULL DEFAULT false
);
INSERT INTO teams VALUES ('acme', 'Acme'), ('globex', 'Globex') ON CONFLICT DO NOTHING;
INSERT INTO members VALUES ('alice', 'acme'), ('bob', 'globex') ON CONFLICT DO NOTHING;
";

impl Db {
    /// Runs one statement whose parameters are all text.
    async fn execute<'q>(&self, sql: &'q str, params: &[&'q str]) -> sqlx::Result<()> {
        on_db!(self, |pool| {
            let mut query = sqlx::query(sql);
            for param in params {
                query = query.bind(*param);
            }
            query.execute(pool).await.map(drop)
        })
    }
}

/// The demo users.
const USERS: [&str; 2] = ["alice", "bob"];

/// The signed-in user and their team (read from `members` on every request, so leaving
/// a team takes effect at once). Pages redirect anonymous visitors to the sign-in page.
struct Member {
    user: String,
    team: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Member {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let to_login = || Redirect::to("/login").into_response();
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|_| to_login())?;
        let user: String = session
            .get("user")
            .await
            .ok()
            .flatten()
            .ok_or_else(to_login)?;
        let db = parts
            .extensions
            .get::<Db>()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let team = on_db!(db, |pool| {
            sqlx::query_scalar("SELECT team_id FROM members WHERE user_id = $1")
                .bind(&user)
                .fetch_optional(pool)
                .await
        })
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        Ok(Member { user, team })
    }
}

/// What the sync engine knows of a member: their user id and team.
impl From<Member> for Principal {
    fn from(m: Member) -> Principal {
        let user = Principal::user(m.user);
        match m.team {
            Some(team) => user.in_tenant(team),
            None => user,
        }
    }
}

impl Member {
    fn principal(&self) -> Principal {
        Principal::from(Member {
            user: self.user.clone(),
            team: self.team.clone(),
        })
    }

    /// The member's team, or a final 403 for a user who is in none: a write they queued
    /// offline for a team they have left becomes a dead letter, not a paused queue.
    fn team(&self) -> Result<&str, AppError> {
        self.team
            .as_deref()
            .ok_or_else(|| err(Forbidden("you are not in a team")))
    }
}

#[derive(Clone)]
struct AppState {
    db: Db,
    engine: SyncEngine,
}

/// A handler's failure, as the answer to send. (Boxed: a `Response` is large.)
struct AppError(Box<Response>);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn err(answer: impl IntoResponse) -> AppError {
    AppError(Box::new(answer.into_response()))
}

fn fail(e: impl std::fmt::Display) -> AppError {
    eprintln!("error: {e}");
    err((StatusCode::INTERNAL_SERVER_ERROR, "server error"))
}

/// The engine's refusals (a todo of another team: a final 403) as they are.
fn sync_error(e: rhtmx_sync::Error) -> AppError {
    err(e)
}

async fn team_todos(s: &AppState, team: &str) -> Result<Markup, AppError> {
    // The version first, the rows after (see todo_sync).
    let version = s.engine.head().await.map_err(sync_error)?;
    let rows: Vec<Todo> = on_db!(&s.db, |pool| {
        sqlx::query_as(
            "SELECT id, team_id, title, completed FROM todos WHERE team_id = $1 ORDER BY id",
        )
        .bind(team)
        .fetch_all(pool)
        .await
    })
    .map_err(fail)?;
    let views: Vec<templates::TodoView<'_>> = rows
        .iter()
        .map(|t| templates::TodoView {
            id: &t.id,
            title: &t.title,
            completed: t.completed,
        })
        .collect();
    Ok(templates::list(&views, version))
}

/// The CSRF token a page names (the cookie it is checked against goes with the page).
fn csrf_token(token: &CsrfToken) -> Result<String, AppError> {
    token.authenticity_token().map_err(fail)
}

/// What every htmx request of a page sends along: its CSRF token.
fn hx_headers(csrf: &str) -> String {
    json!({ "X-CSRF-Token": csrf }).to_string()
}

async fn index(
    State(s): State<AppState>,
    token: CsrfToken,
    member: Member,
) -> Result<(CsrfToken, Markup), AppError> {
    let csrf = csrf_token(&token)?;
    let team = match &member.team {
        Some(team) => Some((team.clone(), team_todos(&s, team).await?)),
        None => None,
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="htmx-config" content=(htmx::CONFIG);
                meta name="viewport" content="width=device-width, initial-scale=1";
                // Whose mirror and outbox this page uses (see the README).
                meta name="rhtmx-principal" content=(member.user);
                // Read again by the sync client for every replayed write.
                meta name="csrf-token" content=(csrf);
                title { "Team todos · rhtmx-sync" }
                style { (PreEscaped(templates::STYLE)) }
                @for src in htmx::scripts() { script src=(src) {} }
                script src="/assets/app.js" {}
                script src="/api/sync/client.js" data-sync-entities="todos" data-service-worker {}
            }
            // htmx 2 inherits hx-headers; htmx 4 only when the attribute says so.
            body hx-headers=(hx_headers(&csrf)) "hx-headers:inherited"=(hx_headers(&csrf)) {
                header {
                    h1 { "Team todos" }
                    p #who {
                        "Signed in as " strong { (member.user) }
                        @if let Some((team, _)) = &team { " in " strong #team { (team) } }
                    }
                    // The client forgets this user's mirror and pages first.
                    button #sign-out hx-post="/logout" data-rhtmx-logout { "Sign out" }
                    p .status {
                        span .online { "online" }
                        span .offline { "offline" }
                        span .pending data-rhtmx-pending-count="0" { " changes waiting to sync" }
                    }
                }
                @if let Some((_, list)) = team {
                    button #leave hx-post="/team/leave" { "Leave team" }
                    form #new-todo hx-post="/todos" hx-target="#todo-list" hx-swap="outerHTML"
                        data-rhtmx-new-id="id" data-rhtmx-label="Add “{title}”" {
                        input name="title" placeholder="What needs doing?" required autocomplete="off";
                        button type="submit" { "Add" }
                    }
                    div hx-get="/todos" hx-trigger="rhtmx:todos:changed from:body" hx-swap="innerHTML" {
                        (list)
                    }
                } @else {
                    p #no-team { "You are not in a team." }
                }
                (templates::panels())
            }
        }
    };
    Ok((token, page))
}

async fn login_page(token: CsrfToken) -> Result<(CsrfToken, Markup), AppError> {
    let csrf = csrf_token(&token)?;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="htmx-config" content=(htmx::CONFIG);
                meta name="csrf-token" content=(csrf);
                title { "Sign in · rhtmx-sync" }
                @for src in htmx::scripts() { script src=(src) {} }
            }
            // htmx 2 inherits hx-headers; htmx 4 only when the attribute says so.
            body hx-headers=(hx_headers(&csrf)) "hx-headers:inherited"=(hx_headers(&csrf)) {
                h1 { "Sign in" }
                p { "A demo: pick a user." }
                @for user in USERS {
                    button hx-post="/login" hx-vals=(json!({ "user": user })) {
                        "Sign in as " (user)
                    }
                }
            }
        }
    };
    Ok((token, page))
}

/// Where an htmx request goes next: the whole page is loaded there.
fn go_to(path: &'static str) -> Response {
    ([("HX-Redirect", path)], StatusCode::OK).into_response()
}

/// Refuses an unsafe request to the app's routes without the page's CSRF token (the
/// signed cookie and the `X-CSRF-Token` header must match): a page of another site
/// cannot act with the user's session. A plain 403: the sync client keeps a write so
/// refused and waits for a page with a fresh token.
async fn check_csrf(token: CsrfToken, req: Request, next: Next) -> Response {
    if !req.method().is_safe() {
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if sent.is_none_or(|sent| token.verify(sent).is_err()) {
            return (StatusCode::FORBIDDEN, "the page is out of date: reload it").into_response();
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(session: Session, Form(form): Form<Login>) -> Result<Response, AppError> {
    if !USERS.contains(&form.user.as_str()) {
        return Err(err((StatusCode::FORBIDDEN, "no such user")));
    }
    // A new session id at sign-in: an id planted before it is worth nothing after.
    session.cycle_id().await.map_err(fail)?;
    session.insert("user", &form.user).await.map_err(fail)?;
    Ok(go_to("/"))
}

/// Ends the session, and every open event stream of its user: they reconnect and are
/// asked afresh (a stream opened with a copy of this cookie is anonymous then).
async fn logout(
    State(s): State<AppState>,
    session: Session,
    member: Result<Member, Response>,
) -> Result<Response, AppError> {
    session.flush().await.map_err(fail)?;
    if let Ok(member) = member {
        s.engine.revoke(&member.principal());
    }
    Ok(go_to("/login"))
}

/// Leaves the team: the member's open streams are told to look again (and reset).
async fn leave(State(s): State<AppState>, member: Member) -> Result<Response, AppError> {
    s.db.execute("DELETE FROM members WHERE user_id = $1", &[&member.user])
        .await
        .map_err(fail)?;
    s.engine.access_changed();
    Ok(go_to("/"))
}

async fn list(State(s): State<AppState>, member: Member) -> Result<Markup, AppError> {
    team_todos(&s, member.team()?).await
}

#[derive(Deserialize)]
struct NewTodo {
    title: String,
    id: Option<String>,
}

fn valid_title(title: &str) -> Result<&str, AppError> {
    let title = title.trim();
    if title.is_empty() || title.len() > 500 {
        return Err(err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "title must be 1 to 500 characters",
        )));
    }
    Ok(title)
}

async fn create(
    State(s): State<AppState>,
    member: Member,
    Form(new): Form<NewTodo>,
) -> Result<Markup, AppError> {
    let team = member.team()?;
    let title = valid_title(&new.title)?;
    let id = match new.id.filter(|id| !id.is_empty()) {
        Some(id) => match uuid::Uuid::try_parse(&id) {
            Ok(uuid) if id.len() == 36 => uuid.hyphenated().to_string(),
            _ => return Err(err((StatusCode::UNPROCESSABLE_ENTITY, "id must be a UUID"))),
        },
        None => uuid::Uuid::now_v7().to_string(),
    };
    // An id taken in another team is not overwritten (and not revealed): nothing happens.
    s.db.execute(
        "INSERT INTO todos (id, team_id, title) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        &[&id, team, title],
    )
    .await
    .map_err(fail)?;
    team_todos(&s, team).await
}

/// Edits go through the engine, held to the member's scope: a todo of another team
/// (or one whose team the member left) answers 403 and is not changed.
async fn edit(
    s: &AppState,
    member: &Member,
    sync: &SyncContext,
    id: &str,
    change: Option<(&str, serde_json::Value)>,
) -> Result<Markup, AppError> {
    let team = member.team()?;
    let principal = member.principal();
    let writer = s.engine.write::<Todo>(sync).within(&principal);
    match change {
        Some(field) => writer.update(id, [field]).await,
        None => writer.delete(id).await,
    }
    .map_err(sync_error)?;
    team_todos(s, team).await
}

#[derive(Deserialize)]
struct Rename {
    title: String,
}

async fn rename(
    State(s): State<AppState>,
    member: Member,
    Path(id): Path<String>,
    sync: SyncContext,
    Form(form): Form<Rename>,
) -> Result<Markup, AppError> {
    let title = valid_title(&form.title)?;
    edit(&s, &member, &sync, &id, Some(("title", json!(title)))).await
}

#[derive(Deserialize)]
struct Toggle {
    completed: bool,
}

async fn toggle(
    State(s): State<AppState>,
    member: Member,
    Path(id): Path<String>,
    sync: SyncContext,
    Form(form): Form<Toggle>,
) -> Result<Markup, AppError> {
    edit(
        &s,
        &member,
        &sync,
        &id,
        Some(("completed", json!(form.completed))),
    )
    .await
}

async fn remove(
    State(s): State<AppState>,
    member: Member,
    Path(id): Path<String>,
    sync: SyncContext,
) -> Result<Markup, AppError> {
    edit(&s, &member, &sync, &id, None).await
}

fn script(body: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rhtmx_sync=debug".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://teams.db".into());
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse()?,
        Err(_) => 3001,
    };
    let db = Db::open(&url, SCHEMA, SCHEMA).await?;
    let engine = SyncEngine::builder(db.pool())
        .entity::<Todo>()
        // The scoping step: who is asking, and which rows they may read.
        .authenticate::<Member>()
        .scope("todos", Scope::tenant("team_id"))
        .build()
        .await?;
    let state = AppState {
        db: db.clone(),
        engine: engine.clone(),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/team/leave", post(leave))
        .route("/todos", get(list).post(create))
        .route("/todos/{id}", put(rename).delete(remove))
        .route("/todos/{id}/toggle", post(toggle))
        .route(
            "/assets/app.js",
            get(|| async { script(include_str!("../todo_sync/assets/app.js"), "no-cache") }),
        )
        .with_state(state)
        .merge(htmx::routes())
        .layer(middleware::from_fn(check_csrf))
        // The app's own requests get 30 s in all, body included (see todo_sync).
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            std::time::Duration::from_secs(30),
        ));
    // The session and the database reach every route, the engine's and the idempotency
    // layer's use of `Member` included; outermost, so they run first.
    let sessions = SessionManagerLayer::new(MemoryStore::default())
        .with_secure(false) // plain http on 127.0.0.1; true behind TLS
        .with_same_site(tower_sessions::cookie::SameSite::Lax);
    let router = headers::protective_headers(
        app.merge(engine.routes())
            .layer(engine.idempotency_layer())
            .layer(Extension(db))
            .layer(sessions)
            // Plain http on 127.0.0.1; `with_secure(true)` behind TLS.
            .layer(CsrfLayer::new(CsrfConfig::default())),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("teams listening on http://{}", listener.local_addr()?);
    // Header read timeout and a connection budget: see `shared/serve.rs`.
    serve::serve(listener, router, 1000, async move {
        let _ = tokio::signal::ctrl_c().await;
        engine.shutdown();
    })
    .await?;
    Ok(())
}
