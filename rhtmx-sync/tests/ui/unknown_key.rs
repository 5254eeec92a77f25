use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(tabel = "todos")]
struct Todo {
    id: String,
}

fn main() {}
