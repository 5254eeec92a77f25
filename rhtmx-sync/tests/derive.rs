//! The happy paths of `#[derive(Syncable)]`: the consts it writes.

#![allow(dead_code, non_camel_case_types)]

use rhtmx_sync::{SyncStrategy, Syncable};

#[derive(Syncable)]
struct Todo {
    id: String,
    title: String,
    completed: bool,
}

#[test]
fn defaults() {
    assert_eq!(Todo::TABLE, "todos");
    assert_eq!(Todo::ID, "id");
    assert_eq!(Todo::COLUMNS, &["id", "title", "completed"]);
    assert_eq!(Todo::STRATEGY, SyncStrategy::LastWriteWins);
    assert!(offline_writes::<Todo>());
}

#[derive(Syncable)]
struct TodoItem {
    id: i64,
}

#[derive(Syncable)]
struct UserAccountSetting {
    id: i64,
}

#[test]
fn default_table_is_snake_case_plus_s() {
    assert_eq!(TodoItem::TABLE, "todo_items");
    assert_eq!(UserAccountSetting::TABLE, "user_account_settings");
}

#[derive(Syncable)]
#[sync(table = "todo_list", id = "uuid", strategy = SyncStrategy::ServerWins, offline_writes = false)]
struct Explicit {
    uuid: String,
    title: String,
}

#[test]
fn every_container_key() {
    assert_eq!(Explicit::TABLE, "todo_list");
    assert_eq!(Explicit::ID, "uuid");
    assert_eq!(Explicit::COLUMNS, &["uuid", "title"]);
    assert_eq!(Explicit::STRATEGY, SyncStrategy::ServerWins);
    assert!(!offline_writes::<Explicit>());
}

#[derive(Syncable)]
#[sync(table = "split")]
#[sync(id = "key")]
#[sync()]
#[sync(strategy = ClientWins, offline_writes = true)]
struct Split {
    key: i64,
    id: i64,
}

#[test]
fn keys_split_across_attributes() {
    assert_eq!(Split::TABLE, "split");
    assert_eq!(Split::ID, "key");
    assert_eq!(Split::COLUMNS, &["key", "id"]);
    assert_eq!(Split::STRATEGY, SyncStrategy::ClientWins);
    assert!(offline_writes::<Split>());
}

#[derive(Syncable)]
#[sync(strategy = LastWriteWins)]
struct BareLastWriteWins {
    id: i64,
}

#[derive(Syncable)]
#[sync(strategy = rhtmx_sync::SyncStrategy::ClientWins)]
struct FullPathClientWins {
    id: i64,
}

#[derive(Syncable)]
#[sync(strategy = ServerWins)]
struct BareServerWins {
    id: i64,
}

#[derive(Syncable)]
#[sync(strategy = "last-write-wins")]
struct StrLastWriteWins {
    id: i64,
}

#[derive(Syncable)]
#[sync(strategy = "client-wins")]
struct StrClientWins {
    id: i64,
}

#[derive(Syncable)]
#[sync(strategy = "server-wins")]
struct StrServerWins {
    id: i64,
}

#[test]
fn every_strategy_form() {
    assert_eq!(BareLastWriteWins::STRATEGY, SyncStrategy::LastWriteWins);
    assert_eq!(FullPathClientWins::STRATEGY, SyncStrategy::ClientWins);
    assert_eq!(BareServerWins::STRATEGY, SyncStrategy::ServerWins);
    assert_eq!(StrLastWriteWins::STRATEGY, SyncStrategy::LastWriteWins);
    assert_eq!(StrClientWins::STRATEGY, SyncStrategy::ClientWins);
    assert_eq!(StrServerWins::STRATEGY, SyncStrategy::ServerWins);
}

/// A prefixed strategy path is expanded as written, so the import it names is used.
mod strategy_import_is_used {
    #![deny(unused_imports)]

    use rhtmx_sync::{SyncStrategy, Syncable};

    #[derive(Syncable)]
    #[sync(strategy = SyncStrategy::ServerWins)]
    pub(super) struct Imported {
        id: i64,
    }
}

#[test]
fn prefixed_strategy_path() {
    assert_eq!(
        strategy_import_is_used::Imported::STRATEGY,
        SyncStrategy::ServerWins
    );
}

#[derive(Syncable)]
struct Renamed {
    #[sqlx(rename = "todo_id")]
    id: String,
    #[sqlx(default, rename = "done", try_from = "i64", json(nullable))]
    completed: bool,
    #[sqlx(default)]
    #[sqlx(json)]
    title: String,
}

#[test]
fn sqlx_rename_names_the_column_and_other_sqlx_keys_are_ignored() {
    // The field named `id` is the id, under its renamed column.
    assert_eq!(Renamed::ID, "todo_id");
    assert_eq!(Renamed::COLUMNS, &["todo_id", "done", "title"]);
}

#[derive(Syncable)]
#[sync(id = "pk")]
struct ExplicitIdByColumn {
    #[sqlx(rename = "pk")]
    key: i64,
    id: i64,
}

#[test]
fn explicit_id_names_a_column() {
    assert_eq!(ExplicitIdByColumn::ID, "pk");
    assert_eq!(ExplicitIdByColumn::COLUMNS, &["pk", "id"]);
}

#[derive(Syncable)]
struct Skipped {
    #[sync(skip)]
    draft: Option<String>,
    id: String,
    title: String,
    #[sync(skip)]
    #[sqlx(rename = "cache")]
    cached: Vec<u8>,
}

#[test]
fn skip_leaves_a_field_out() {
    assert_eq!(Skipped::COLUMNS, &["id", "title"]);
}

#[derive(Syncable)]
#[sync(table = "generic_rows")]
struct Generic<'a, T: Clone, const N: usize>
where
    T: Default,
{
    id: T,
    name: &'a str,
    data: [u8; N],
}

#[test]
fn generics() {
    assert_eq!(<Generic<'static, i64, 4>>::TABLE, "generic_rows");
    assert_eq!(
        <Generic<'static, String, 0>>::COLUMNS,
        &["id", "name", "data"]
    );
}

#[derive(Syncable)]
struct r#Type {
    r#id: i64,
    r#type: String,
    r#match: bool,
}

#[test]
fn raw_identifiers_lose_their_prefix() {
    assert_eq!(r#Type::TABLE, "types");
    assert_eq!(r#Type::ID, "id");
    assert_eq!(r#Type::COLUMNS, &["id", "type", "match"]);
}

#[test]
fn usable_through_the_trait() {
    fn describe<T: Syncable>() -> (&'static str, &'static str, usize) {
        (T::TABLE, T::ID, T::COLUMNS.len())
    }
    assert_eq!(describe::<Todo>(), ("todos", "id", 3));
}

macro_rules! syncable_with_strategy {
    ($name:ident, $strategy:path, $offline:expr) => {
        #[derive(Syncable)]
        #[sync(strategy = $strategy, offline_writes = $offline)]
        struct $name {
            id: i64,
        }
    };
}

syncable_with_strategy!(FromMacro, SyncStrategy::ClientWins, false);

#[test]
fn attribute_values_from_a_macro() {
    assert_eq!(FromMacro::STRATEGY, SyncStrategy::ClientWins);
    assert!(!offline_writes::<FromMacro>());
}

/// A model of every sqlx key that decides which columns `sqlx::FromRow` reads, under
/// the container's `rename_all = $case`.
macro_rules! cased {
    ($name:ident, $case:literal) => {
        #[derive(Debug, sqlx::FromRow, Syncable)]
        #[sqlx(rename_all = $case)]
        struct $name {
            id: i64,
            due_date: String,
            r#type: String,
            /// `rename` wins over `rename_all`.
            #[sqlx(rename = "Explicit")]
            renamed: String,
            /// Not read by sqlx: not a column.
            #[sqlx(skip)]
            cache: Option<String>,
            /// Read when present: still a column.
            #[sqlx(default)]
            note: String,
        }
    };
}

cased!(Lower, "lowercase");
cased!(Snake, "snake_case");
cased!(Upper, "UPPERCASE");
cased!(ScreamingSnake, "SCREAMING_SNAKE_CASE");
cased!(Kebab, "kebab-case");
cased!(Camel, "camelCase");
cased!(Pascal, "PascalCase");

#[test]
fn sqlx_rename_all_names_every_column_rename_wins_and_skip_is_no_column() {
    let lower = ["id", "due_date", "type", "Explicit", "note"];
    assert_eq!(Lower::COLUMNS, &lower);
    assert_eq!(Snake::COLUMNS, &lower);
    let upper = ["ID", "DUE_DATE", "TYPE", "Explicit", "NOTE"];
    assert_eq!(Upper::COLUMNS, &upper);
    assert_eq!(ScreamingSnake::COLUMNS, &upper);
    assert_eq!(
        Kebab::COLUMNS,
        &["id", "due-date", "type", "Explicit", "note"]
    );
    assert_eq!(
        Camel::COLUMNS,
        &["id", "dueDate", "type", "Explicit", "note"]
    );
    assert_eq!(
        Pascal::COLUMNS,
        &["Id", "DueDate", "Type", "Explicit", "Note"]
    );
    assert_eq!(Pascal::ID, "Id");
}

#[derive(sqlx::FromRow)]
struct Audit {
    created_by: String,
}

#[derive(sqlx::FromRow, Syncable)]
#[sqlx(default)]
#[sqlx(rename_all = "camelCase")]
#[sync(id = "todoId")]
struct FlattenSkipped {
    todo_id: String,
    /// Flattened columns are unknown to the derive; skipped, they are simply not synced.
    #[sync(skip)]
    #[sqlx(flatten)]
    audit: Audit,
    /// A skipped field's name is no column, so it cannot collide with one.
    #[sqlx(skip)]
    #[sqlx(rename = "todoId")]
    shadow: String,
}

impl Default for FlattenSkipped {
    fn default() -> Self {
        FlattenSkipped {
            todo_id: String::new(),
            audit: Audit {
                created_by: String::new(),
            },
            shadow: String::new(),
        }
    }
}

#[test]
fn skipped_flatten_and_a_rename_all_id() {
    assert_eq!(FlattenSkipped::ID, "todoId");
    assert_eq!(FlattenSkipped::COLUMNS, &["todoId"]);
}

/// Reads one row of a table whose columns are exactly `T::COLUMNS` through sqlx's own
/// `FromRow`: it fails if sqlx looks for any column under another name.
async fn sqlx_reads_exactly_the_columns<T>() -> T
where
    T: Syncable + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    let quoted: Vec<String> = T::COLUMNS.iter().map(|c| format!("\"{c}\"")).collect();
    let create = format!("CREATE TABLE t ({})", quoted.join(", "));
    sqlx::query(&create).execute(&mut conn).await.unwrap();
    let values: Vec<&str> = T::COLUMNS
        .iter()
        .map(|c| if *c == T::ID { "1" } else { "'1'" })
        .collect();
    let values = values.join(", ");
    let insert = format!("INSERT INTO t VALUES ({values})");
    sqlx::query(&insert).execute(&mut conn).await.unwrap();
    sqlx::query_as::<_, T>("SELECT * FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("sqlx reads other columns than {:?}: {e}", T::COLUMNS))
}

#[tokio::test]
async fn the_columns_are_the_ones_sqlx_from_row_reads() {
    assert_eq!(sqlx_reads_exactly_the_columns::<Lower>().await.id, 1);
    sqlx_reads_exactly_the_columns::<Snake>().await;
    sqlx_reads_exactly_the_columns::<Upper>().await;
    sqlx_reads_exactly_the_columns::<ScreamingSnake>().await;
    sqlx_reads_exactly_the_columns::<Kebab>().await;
    sqlx_reads_exactly_the_columns::<Camel>().await;
    let pascal = sqlx_reads_exactly_the_columns::<Pascal>().await;
    assert_eq!((pascal.due_date.as_str(), pascal.cache), ("1", None));
}

/// Read through a function so the assertions are not on constants.
fn offline_writes<T: Syncable>() -> bool {
    T::OFFLINE_WRITES
}
