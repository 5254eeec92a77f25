use rhtmx_sync::Syncable;

// Every mistake is reported at once, and the placeholder impl keeps the uses of
// `Todo` below from adding errors of their own.
#[derive(Syncable)]
#[sync(tabel = "todos", strategy = Newest, offline_writes = 1)]
struct Todo {
    #[sync(skip, skip)]
    title: String,
}

fn columns<T: Syncable>() -> &'static [&'static str] {
    T::COLUMNS
}

fn main() {
    let _ = Todo::TABLE;
    let _ = columns::<Todo>();
}
