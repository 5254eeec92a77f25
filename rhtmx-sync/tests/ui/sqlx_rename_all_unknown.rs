use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sqlx(rename_all = "Snake_Case")]
struct Todo {
    id: String,
    due_date: String,
}

fn main() {}
