use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(id = "uuid")]
struct Todo {
    id: String,
    title: String,
}

fn main() {}
