use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(id = "uuid")]
struct Todo {
    #[sqlx(rename = "todo_uuid")]
    uuid: String,
    title: String,
}

fn main() {}
