use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(delete_wins = "no")]
struct Todo {
    id: String,
}

fn main() {}
