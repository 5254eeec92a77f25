use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    id: String,
    #[sync(skip = true)]
    draft: String,
}

fn main() {}
