use rhtmx_sync::{SyncStrategy, Syncable};

#[derive(Syncable)]
#[sync(strategy = SyncStrategy::FirstWriteWins)]
struct Todo {
    id: String,
}

fn main() {}
