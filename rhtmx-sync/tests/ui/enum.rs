use rhtmx_sync::Syncable;

#[derive(Syncable)]
enum Todo {
    Open { id: String },
    Done { id: String },
}

fn main() {
    // The placeholder impl keeps this from adding a second error.
    let _ = Todo::TABLE;
}
