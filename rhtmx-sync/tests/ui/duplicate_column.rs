use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    id: String,
    title: String,
    #[sqlx(rename = "title")]
    heading: String,
}

fn main() {}
