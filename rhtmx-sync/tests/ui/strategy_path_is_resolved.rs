use rhtmx_sync::Syncable;

// A path with a prefix is expanded as written, so a wrong prefix is caught.
#[derive(Syncable)]
#[sync(strategy = SyncStrategi::ServerWins)]
struct Todo {
    id: String,
}

fn main() {}
