use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo(String, bool);

fn main() {}
