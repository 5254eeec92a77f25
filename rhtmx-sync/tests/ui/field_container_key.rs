use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    #[sync(id = "id")]
    id: String,
}

fn main() {}
