use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(skip)]
struct Todo {
    id: String,
}

fn main() {}
