use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(strategy = rhtmx_sync::SyncStrategy::FirstWriteWins)]
struct Todo {
    id: String,
}

fn main() {}
