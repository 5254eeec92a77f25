use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo {
    uuid: String,
    title: String,
}

fn main() {}
