//! Checking the parsed attributes against the struct and resolving the defaults.

use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{Data, DataEnum, DataStruct, DataUnion, DeriveInput, Error, Field, Fields, Ident, Token};

use crate::attr::{Container, FieldAttrs, StrategyAttr};
use crate::errors::Errors;
use crate::naming::default_table_name;

/// Everything the impl needs, every default resolved and every check passed.
pub(crate) struct Model {
    /// `Syncable::TABLE`.
    pub(crate) table: String,
    /// `Syncable::ID`.
    pub(crate) id: String,
    /// `Syncable::COLUMNS`, in field order.
    pub(crate) columns: Vec<String>,
    /// `Syncable::STRATEGY`.
    pub(crate) strategy: StrategyAttr,
    /// `Syncable::OFFLINE_WRITES`.
    pub(crate) offline_writes: bool,
    /// `Syncable::DELETE_WINS`.
    pub(crate) delete_wins: bool,
}

/// A named field with its column name and its attributes.
struct Column<'a> {
    /// The field's name.
    ident: &'a Ident,
    /// The column, as `sqlx::FromRow` reads it: the `#[sqlx(rename = "...")]`, or else
    /// the field's name without `r#` in the struct's `#[sqlx(rename_all = "...")]` case.
    name: String,
    /// The field's attributes.
    attrs: FieldAttrs,
}

impl Column<'_> {
    /// The token that leaves the field out of the columns, if any: `#[sync(skip)]` or
    /// sqlx's `#[sqlx(skip)]` (sqlx does not read the field).
    fn skip(&self) -> Option<&syn::Path> {
        self.attrs.skip.as_ref().or(self.attrs.sqlx_skip.as_ref())
    }

    /// The token that sets the column's name, to point errors at.
    fn name_token(&self) -> &dyn ToTokens {
        match &self.attrs.rename {
            Some(rename) => rename,
            None => self.ident,
        }
    }
}

/// Parses and checks the derive input, reporting every problem found at once.
pub(crate) fn check(input: &DeriveInput) -> syn::Result<Model> {
    let mut errors = Errors::default();
    let container = Container::from_attrs(&input.attrs, &mut errors);
    let fields = match named_fields(input) {
        Ok(fields) => fields,
        Err(error) => return Err(errors.fail(error)),
    };

    let mut columns = Vec::with_capacity(fields.len());
    for field in fields {
        let ident = field.ident.as_ref().expect("named fields have names");
        let attrs = FieldAttrs::from_attrs(&field.attrs, &mut errors);
        let name = match (&attrs.rename, container.rename_all) {
            (Some(rename), _) => rename.value(),
            (None, Some(case)) => case.apply(&ident.unraw().to_string()),
            (None, None) => ident.unraw().to_string(),
        };
        if let (Some(flatten), None) = (&attrs.flatten, attrs.skip.as_ref()) {
            errors.push(flattened(ident, flatten));
        }
        columns.push(Column { ident, name, attrs });
    }

    let id = match find_id(input, &container, &columns) {
        Ok(id) => Some(id),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    if let Some(id) = id {
        if let Some(skip) = id.skip() {
            errors.push(skipped_id(id, skip, container.id.is_some()));
        }
    }
    check_duplicate_columns(&columns, &mut errors);
    errors.finish()?;

    let Container {
        table,
        strategy,
        offline_writes,
        delete_wins,
        ..
    } = container;
    let table = table.map_or_else(
        || default_table_name(&input.ident.unraw().to_string()),
        |table| table.value(),
    );
    Ok(Model {
        table,
        id: id.expect("no error, so the id was found").name.clone(),
        columns: columns
            .iter()
            .filter(|c| c.skip().is_none() && c.attrs.flatten.is_none())
            .map(|c| c.name.clone())
            .collect(),
        strategy: strategy.unwrap_or_default(),
        offline_writes: offline_writes.unwrap_or(true),
        delete_wins: delete_wins.unwrap_or(true),
    })
}

/// The struct's named fields, or an error for any other shape of input.
fn named_fields(input: &DeriveInput) -> syn::Result<&Punctuated<Field, Token![,]>> {
    let ident = &input.ident;
    let (tokens, msg) = match &input.data {
        Data::Struct(DataStruct { fields: Fields::Named(fields), .. }) => return Ok(&fields.named),
        Data::Struct(DataStruct { fields: Fields::Unnamed(fields), .. }) => (
            fields.to_token_stream(),
            "`Syncable` needs named fields, one per column; a tuple struct has no column names",
        ),
        Data::Struct(DataStruct { struct_token, .. }) => (
            quote!(#struct_token #ident),
            "`Syncable` needs named fields, one per column; a unit struct has none",
        ),
        Data::Enum(DataEnum { enum_token, .. }) => (
            quote!(#enum_token #ident),
            "`Syncable` cannot be derived for an enum; use a struct with named fields, one per column",
        ),
        Data::Union(DataUnion { union_token, .. }) => (
            quote!(#union_token #ident),
            "`Syncable` cannot be derived for a union; use a struct with named fields, one per column",
        ),
    };
    Err(Error::new_spanned(tokens, msg))
}

/// The id column: the one `#[sync(id = "...")]` names, or else the field named `id`.
fn find_id<'c, 'a>(
    input: &DeriveInput,
    container: &Container,
    columns: &'c [Column<'a>],
) -> syn::Result<&'c Column<'a>> {
    let Some(id) = &container.id else {
        return columns.iter().find(|c| c.ident.unraw() == "id").ok_or_else(|| {
            let msg = format!(
                "`{}` has no field named `id`; add one, or name the primary key with `#[sync(id = \"...\")]`",
                input.ident.unraw(),
            );
            Error::new_spanned(&input.ident, msg)
        });
    };
    let wanted = id.value();
    columns.iter().find(|c| c.name == wanted).ok_or_else(|| {
        let mut msg = format!("no field has the column name `{wanted}`");
        if let Some(renamed) = columns.iter().find(|c| c.ident.unraw() == wanted) {
            let column = &renamed.name;
            let by = match renamed.attrs.rename {
                Some(_) => "`#[sqlx(rename)]`",
                None => "`#[sqlx(rename_all)]`",
            };
            msg += &format!("; field `{wanted}` is renamed to `{column}` by {by}");
        }
        Error::new_spanned(id, msg)
    })
}

/// The error for `#[sync(skip)]` on the id field.
fn skipped_id(id: &Column, skip: &syn::Path, explicit: bool) -> Error {
    let mut msg = format!("cannot skip `{}`: it is the id column", id.ident.unraw());
    if !explicit {
        msg += "; to key on another field, set `#[sync(id = \"...\")]` on the struct";
    }
    Error::new_spanned(skip, msg)
}

/// The error for `#[sqlx(flatten)]` on a synced field: its columns are those of the
/// field's type, which a derive cannot see.
fn flattened(field: &Ident, flatten: &syn::Path) -> Error {
    let msg = format!(
        "cannot sync the flattened field `{}`: its columns are those of its type, which \
         `#[derive(Syncable)]` cannot see; implement `Syncable` by hand and list the \
         columns in `COLUMNS`, or register the table by name with \
         `SyncEngineBuilder::entity_named`, which reads its columns from the schema \
         (or add `#[sync(skip)]` to leave those columns unsynced)",
        field.unraw()
    );
    Error::new_spanned(flatten, msg)
}

/// Records an error for each synced field whose column an earlier synced field already has.
fn check_duplicate_columns(columns: &[Column], errors: &mut Errors) {
    let synced: Vec<&Column> = columns.iter().filter(|c| c.skip().is_none()).collect();
    for (i, column) in synced.iter().enumerate() {
        if let Some(first) = synced[..i].iter().find(|c| c.name == column.name) {
            let msg = format!(
                "column `{}` is already taken by field `{}`",
                column.name,
                first.ident.unraw(),
            );
            errors.push(Error::new_spanned(column.name_token(), msg));
        }
    }
}
