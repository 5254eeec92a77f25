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
    #[sqlx(flatten)]
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

/// Read through a function so the assertions are not on constants.
fn offline_writes<T: Syncable>() -> bool {
    T::OFFLINE_WRITES
}
