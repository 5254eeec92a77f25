use rhtmx_sync::Syncable;

#[derive(Syncable)]
struct Todo;

fn main() {}
