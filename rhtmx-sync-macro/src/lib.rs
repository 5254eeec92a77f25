#![doc = r#"
`#[derive(Syncable)]` for [rhtmx-sync](https://docs.rs/rhtmx-sync).

Use it through the `rhtmx-sync` crate, which re-exports it next to the `Syncable` trait
it implements; the expansion names `::rhtmx_sync`, so this crate is no use on its own.

```ignore
use rhtmx_sync::Syncable;

#[derive(Syncable)]
#[sync(table = "todos", strategy = LastWriteWins, offline_writes = true, delete_wins = true)]
struct Todo {
    id: String,
    title: String,
    #[sqlx(rename = "done")]
    completed: bool,
    #[sync(skip)]
    draft_note: Option<String>,
}
```
"#]

// The pipeline: `attr` parses the attributes into typed structs, `valid` checks them
// against the struct and resolves the defaults, and `expand` writes the impl (or, on
// error, the errors plus a placeholder impl).
mod attr;
mod errors;
mod expand;
mod naming;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `rhtmx_sync::Syncable` for a struct with named fields.
///
/// On the struct, `#[sync(table = "...", id = "...", strategy = ..., offline_writes = ...,
/// delete_wins = ...)]`, every key optional and the keys free to be split across several
/// `#[sync(...)]` attributes. On a field, `#[sync(skip)]` leaves it out of the synced columns.
/// The columns are the ones `sqlx::FromRow` reads, from sqlx's own attributes: the
/// struct's `#[sqlx(rename_all = "...")]` and a field's `#[sqlx(rename = "...")]` name
/// them, a `#[sqlx(skip)]` field is none, and `#[sqlx(flatten)]` is an error unless the
/// field is `#[sync(skip)]` (its columns are another type's); every other sqlx key is
/// ignored. `sqlx` is registered as a helper too, as both of serde's derives register
/// `serde`, so these can be read with or without `sqlx::FromRow` next to it.
#[proc_macro_derive(Syncable, attributes(sync, sqlx))]
pub fn derive_syncable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
