use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    #[sync(skip)]
    id: String,
    title: String,
}

fn main() {}
