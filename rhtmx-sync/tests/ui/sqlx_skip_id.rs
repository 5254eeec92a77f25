use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    #[sqlx(skip)]
    id: String,
    title: String,
}

fn main() {}
