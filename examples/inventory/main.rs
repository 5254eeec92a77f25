//! A small stock list: what `todo_sync` does not show. Items have an integer key named
//! `item_no` that the database assigns (so a write made offline cannot know it: its
//! `Idempotency-Key` alone keeps the replay from adding the item twice); stock
//! movements belong to an item with `ON DELETE CASCADE` (deleting an item deletes its
//! movements, and every tab's mirror hears of each); and an item's photo is a file
//! upload (`multipart/form-data`), which the client keeps in IndexedDB, file and all,
//! while offline.
//!
//! The handlers are plain sqlx; what sync needs is marked `SYNC`.
//!
//! Run with: `cargo run --example inventory` (`PORT`, default 3002; `DATABASE_URL`,
//! default `sqlite://inventory.db`; `HTMX=2|4|4-compat` as the other examples). On
//! PostgreSQL: `DATABASE_URL=postgres://user:password@localhost/inventory cargo run
//! --example inventory` (the database must exist; the app creates its tables). Its SQL
//! is written once for both (see [`Db`]); only the tables' definitions differ.

#[path = "../shared/db.rs"]
mod db;
#[path = "../shared/htmx.rs"]
mod htmx;

use db::{on_db, Db};

use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

/// Photos larger than this are refused (413), before any is stored.
const MAX_PHOTO: usize = 1024 * 1024;

// SYNC: the models get the derive, told their key (neither column is named `id`).
/// A stocked item. `photo_bytes` is the size of its photo (0 for none): the photo itself
/// lives in `item_photos`, which is not synced — pages load it by URL.
#[allow(dead_code)] // the derive names the table and key; the handlers use plain SQL
#[derive(Debug, sqlx::FromRow, rhtmx_sync::Syncable)]
#[sync(id = "item_no")]
struct Item {
    item_no: i64,
    name: String,
    photo_bytes: i64,
}

/// A change in an item's stock; deleted with its item.
#[allow(dead_code)] // the derive names the table and key; the handlers use plain SQL
#[derive(Debug, sqlx::FromRow, rhtmx_sync::Syncable)]
#[sync(id = "movement_id")]
struct Movement {
    movement_id: i64,
    item_no: i64,
    delta: i64,
}

// AUTOINCREMENT: a deleted item's number is never given to a new one. Without it SQLite
// reuses the highest number freed, and a write queued offline for the deleted item
// (`POST /items/2/movements`) would land on whichever item got number 2 meanwhile.
const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    item_no INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    photo_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS movements (
    movement_id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_no INTEGER NOT NULL REFERENCES items (item_no) ON DELETE CASCADE,
    delta INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS item_photos (
    item_no INTEGER PRIMARY KEY REFERENCES items (item_no) ON DELETE CASCADE,
    content_type TEXT NOT NULL,
    bytes BLOB NOT NULL
);
";

// The same tables on PostgreSQL, whose sequences never give a number twice.
const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    item_no bigserial PRIMARY KEY,
    name text NOT NULL,
    photo_bytes bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS movements (
    movement_id bigserial PRIMARY KEY,
    item_no bigint NOT NULL REFERENCES items (item_no) ON DELETE CASCADE,
    delta bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS item_photos (
    item_no bigint PRIMARY KEY REFERENCES items (item_no) ON DELETE CASCADE,
    content_type text NOT NULL,
    bytes bytea NOT NULL
);
";

/// An answer the page shows as it is: a status and a line of text.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<sqlx::Error> for Refusal {
    // The database's words stay in the server's log: they describe the schema.
    fn from(e: sqlx::Error) -> Refusal {
        eprintln!("inventory: database error: {e}");
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "something went wrong".into(),
        )
    }
}

/// The image types a photo may have. Not SVG: it can carry script, and the photo is
/// served from the app's origin.
const PHOTO_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The most a single movement may change the stock by (so sums stay far from overflow).
const MAX_DELTA: i64 = 1_000_000;

fn page(body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="htmx-config" content=(htmx::CONFIG);
                title { "Inventory · rhtmx-sync" }
                @for src in htmx::scripts() { script src=(src) {} }
                // SYNC: the client, mirroring both entities; the offline shell on.
                script src="/api/sync/client.js" data-sync-entities="items,movements"
                    data-service-worker {}
            }
            body {
                h1 { "Inventory" }
                // SYNC: first-sync progress, pending and refused writes.
                div #progress data-rhtmx-progress {}
                ul #pending data-rhtmx-pending-list {}
                form #new-item hx-post="/items" hx-target="#items" hx-swap="innerHTML" {
                    input name="name" placeholder="Item name" required;
                    input name="stock" type="number" value="0" min="0";
                    button { "Add item" }
                }
                // SYNC: refreshed when either entity changes, here or in another tab.
                div #items hx-get="/items" hx-swap="innerHTML"
                    hx-trigger="rhtmx:items:changed from:body, rhtmx:movements:changed from:body" {
                    (body)
                }
            }
        }
    }
}

async fn index(State(db): State<Db>) -> Result<Markup, Refusal> {
    Ok(page(list(State(db)).await?))
}

async fn list(State(db): State<Db>) -> Result<Markup, Refusal> {
    // The sum cast: PostgreSQL sums a bigint column as a numeric.
    let rows: Vec<(i64, String, i64, i64)> = on_db!(&db, |pool| {
        sqlx::query_as(
            "SELECT i.item_no, i.name, i.photo_bytes, CAST(COALESCE(SUM(m.delta), 0) AS BIGINT)
             FROM items i LEFT JOIN movements m ON m.item_no = i.item_no
             GROUP BY i.item_no ORDER BY i.item_no",
        )
        .fetch_all(pool)
        .await?
    });
    Ok(html! {
        ul {
            @for (no, name, photo, stock) in &rows {
                li .item data-item-no=(no) {
                    @if *photo > 0 {
                        img .photo src={ "/items/" (no) "/photo?bytes=" (photo) } alt="" width="48";
                    }
                    span .name { (name) }
                    " · stock " span .stock { (stock) }
                    button .more hx-post={ "/items/" (no) "/movements" } hx-vals=r#"{"delta": 1}"#
                        hx-target="#items" { "+1" }
                    button .less hx-post={ "/items/" (no) "/movements" } hx-vals=r#"{"delta": -1}"#
                        hx-target="#items" { "−1" }
                    form .photo-form hx-post={ "/items/" (no) "/photo" } hx-encoding="multipart/form-data"
                        hx-target="#items" {
                        input type="file" name="photo" accept="image/*" required;
                        button { "Upload" }
                    }
                    button .delete hx-delete={ "/items/" (no) } hx-target="#items" { "Delete" }
                }
            }
        }
    })
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
    #[serde(default)]
    stock: Option<String>,
}

/// Adds an item and, in the same transaction, its opening stock as a movement.
async fn add(State(db): State<Db>, Form(new): Form<NewItem>) -> Result<Markup, Refusal> {
    let name = new.name.trim();
    if name.is_empty() {
        return Err(Refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a name, please".into(),
        ));
    }
    let stock = match new.stock.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=MAX_DELTA).contains(n))
            .ok_or_else(|| {
                Refusal(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "stock: a whole number ≥ 0".into(),
                )
            })?,
    };
    on_db!(&db, |pool| {
        let mut tx = pool.begin().await?;
        let no: i64 = sqlx::query_scalar("INSERT INTO items (name) VALUES ($1) RETURNING item_no")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if stock > 0 {
            sqlx::query("INSERT INTO movements (item_no, delta) VALUES ($1, $2)")
                .bind(no)
                .bind(stock)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    });
    list(State(db)).await
}

#[derive(Deserialize)]
struct NewMovement {
    delta: i64,
}

async fn add_movement(
    State(db): State<Db>,
    Path(no): Path<i64>,
    Form(m): Form<NewMovement>,
) -> Result<Markup, Refusal> {
    if m.delta == 0 || m.delta.abs() > MAX_DELTA {
        return Err(Refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a change of 1 to {MAX_DELTA}, up or down"),
        ));
    }
    // A movement for an item deleted meanwhile (say, in another tab while this one was
    // offline) is refused: the foreign key makes it so, this makes it a 404.
    let added = on_db!(&db, |pool| {
        sqlx::query(
            "INSERT INTO movements (item_no, delta) SELECT item_no, $1 FROM items WHERE item_no = $2",
        )
        .bind(m.delta)
        .bind(no)
        .execute(pool)
        .await?
        .rows_affected()
    });
    if added == 0 {
        return Err(Refusal(StatusCode::NOT_FOUND, format!("no item {no}")));
    }
    list(State(db)).await
}

/// Replaces an item's photo (one `photo` field of an image type, at most [`MAX_PHOTO`]).
async fn upload_photo(
    State(db): State<Db>,
    Path(no): Path<i64>,
    mut form: Multipart,
) -> Result<Markup, Refusal> {
    let bad = |why: String| Refusal(StatusCode::UNPROCESSABLE_ENTITY, why);
    // A body over the limit is axum's 413, not a malformed form.
    let broken = |e: axum::extract::multipart::MultipartError| Refusal(e.status(), e.body_text());
    let mut photo = None;
    while let Some(field) = form.next_field().await.map_err(broken)? {
        if field.name() != Some("photo") {
            continue;
        }
        let kind = field.content_type().unwrap_or("").to_owned();
        if !PHOTO_TYPES.contains(&kind.as_str()) {
            return Err(bad(format!(
                "a PNG, JPEG, GIF or WebP image, please (not `{kind}`)"
            )));
        }
        let bytes = field.bytes().await.map_err(broken)?;
        if bytes.len() > MAX_PHOTO {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "at most 1 MiB".into(),
            ));
        }
        photo = Some((kind, bytes));
    }
    let (kind, bytes) = photo.ok_or_else(|| bad("no `photo` field".into()))?;
    on_db!(&db, |pool| {
        let mut tx = pool.begin().await?;
        // The synced row says a photo changed; the bytes stay out of the change log.
        let found = sqlx::query("UPDATE items SET photo_bytes = $1 WHERE item_no = $2")
            .bind(bytes.len() as i64)
            .bind(no)
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Err(Refusal(StatusCode::NOT_FOUND, format!("no item {no}")));
        }
        sqlx::query(
            "INSERT INTO item_photos (item_no, content_type, bytes) VALUES ($1, $2, $3)
             ON CONFLICT (item_no) DO UPDATE
             SET content_type = excluded.content_type, bytes = excluded.bytes",
        )
        .bind(no)
        .bind(&kind)
        .bind(bytes.as_ref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    list(State(db)).await
}

async fn photo(State(db): State<Db>, Path(no): Path<i64>) -> Result<Response, Refusal> {
    let row: Option<(String, Vec<u8>)> = on_db!(&db, |pool| {
        sqlx::query_as("SELECT content_type, bytes FROM item_photos WHERE item_no = $1")
            .bind(no)
            .fetch_optional(pool)
            .await?
    });
    let (kind, bytes) = row.ok_or_else(|| Refusal(StatusCode::NOT_FOUND, "no photo".into()))?;
    // Shown as an image and nothing else: no sniffing, and opened on its own it runs
    // nothing (a sandbox with no permissions).
    let headers = [
        (header::CONTENT_TYPE, kind),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_owned(),
        ),
    ];
    Ok((headers, bytes).into_response())
}

/// Deletes an item; the database deletes its movements and photo (`ON DELETE CASCADE`),
/// and the change log records each deleted movement as its own change.
async fn remove(State(db): State<Db>, Path(no): Path<i64>) -> Result<Markup, Refusal> {
    on_db!(&db, |pool| {
        sqlx::query("DELETE FROM items WHERE item_no = $1")
            .bind(no)
            .execute(pool)
            .await?;
    });
    list(State(db)).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://inventory.db".into());
    let port: u16 = std::env::var("PORT").map_or(Ok(3002), |p| p.parse())?;
    let db = Db::open(&url, SQLITE_SCHEMA, POSTGRES_SCHEMA).await?;

    // SYNC: the engine, built on the app's pool once the tables exist.
    let engine = rhtmx_sync::SyncEngine::builder(db.pool())
        .entity::<Item>()
        .entity::<Movement>()
        .build()
        .await?;
    let app = Router::new()
        .route("/", get(index))
        .route("/items", get(list).post(add))
        .route("/items/{no}", axum::routing::delete(remove))
        .route("/items/{no}/movements", post(add_movement))
        .route(
            "/items/{no}/photo",
            get(photo)
                .post(upload_photo)
                .layer(DefaultBodyLimit::max(MAX_PHOTO + 64 * 1024)),
        )
        .with_state(db)
        .merge(htmx::routes())
        .merge(engine.routes()) // SYNC
        .layer(engine.idempotency_layer()); // SYNC: a replayed write is applied once

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("inventory listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
