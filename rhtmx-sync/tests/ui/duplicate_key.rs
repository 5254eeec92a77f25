use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(table = "todos")]
#[sync(strategy = LastWriteWins, table = "tasks")]
struct Todo {
    id: String,
}

fn main() {}
