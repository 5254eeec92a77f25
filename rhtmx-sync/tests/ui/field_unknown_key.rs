use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    id: String,
    #[sync(rename = "done")]
    completed: bool,
}

fn main() {}
