use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(strategy = 1)]
struct Todo {
    id: String,
}

fn main() {}
