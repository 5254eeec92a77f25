use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(table = todos)]
struct Todo {
    id: String,
}

fn main() {}
