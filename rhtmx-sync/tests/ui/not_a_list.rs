use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync = "todos"]
struct Todo {
    id: String,
}

fn main() {}
