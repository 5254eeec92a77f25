use rhtmx_sync::Syncable;

#[derive(sqlx::FromRow)]
struct Audit {
    created_by: String,
}

#[derive(sqlx::FromRow, Syncable)]
struct Todo {
    id: String,
    #[sqlx(flatten)]
    audit: Audit,
}

fn main() {}
