use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(strategy = "LastWriteWins")]
struct Todo {
    id: String,
}

fn main() {}
