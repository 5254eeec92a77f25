use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(table)]
struct Todo {
    id: String,
}

fn main() {}
