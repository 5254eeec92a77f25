use rhtmx_sync::Syncable;

#[derive(Syncable)]
union Todo {
    id: u64,
}

fn main() {}
