use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(offline_writes = "yes")]
struct Todo {
    id: String,
}

fn main() {}
