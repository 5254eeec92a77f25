use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(delete_wins)]
struct Todo {
    id: String,
}

fn main() {}
