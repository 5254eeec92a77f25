//! Parsing `#[sync(...)]` and the keys of `#[sqlx(...)]` that decide which columns
//! `sqlx::FromRow` reads (`rename_all`, `rename`, `skip`, `flatten`) into typed structs.
//!
//! A bad key or value is recorded and parsing goes on with the next key, so that one
//! expansion reports every mistake in the attributes.

use proc_macro2::TokenTree;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Error, Expr, ExprLit, Lit, LitBool, LitStr, Path, Token};

use crate::errors::Errors;
use crate::naming::RenameAll;

/// The keys `#[sync(...)]` takes on the struct.
const CONTAINER_KEYS: [&str; 5] = ["table", "id", "strategy", "offline_writes", "delete_wins"];

/// The struct's `#[sync(...)]` keys; `None` for a key not given (or given a bad value).
#[derive(Default)]
pub(crate) struct Container {
    /// `table = "..."`, never empty.
    pub(crate) table: Option<LitStr>,
    /// `id = "..."`, never empty; a column name, checked against the fields later.
    pub(crate) id: Option<LitStr>,
    /// `strategy = ...`.
    pub(crate) strategy: Option<StrategyAttr>,
    /// `offline_writes = ...`.
    pub(crate) offline_writes: Option<bool>,
    /// `delete_wins = ...`.
    pub(crate) delete_wins: Option<bool>,
    /// sqlx's `#[sqlx(rename_all = "...")]`.
    pub(crate) rename_all: Option<RenameAll>,
}

/// A field's attributes as far as syncing cares.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    /// The `skip` of `#[sync(skip)]`, kept to point errors at.
    pub(crate) skip: Option<Path>,
    /// The value of `#[sqlx(rename = "...")]`.
    pub(crate) rename: Option<LitStr>,
    /// The `skip` of `#[sqlx(skip)]`: sqlx does not read the field, so it is no column.
    pub(crate) sqlx_skip: Option<Path>,
    /// The `flatten` of `#[sqlx(flatten)]`: its columns are another type's.
    pub(crate) flatten: Option<Path>,
}

/// The value of `strategy = ...`.
#[derive(Default)]
pub(crate) struct StrategyAttr {
    /// The strategy it names.
    pub(crate) strategy: Strategy,
    /// The path as written, if it has a prefix (`SyncStrategy::ServerWins`). It is expanded
    /// as written, so that the prefix is resolved where the user wrote it: a typo is an
    /// error and the user's `use rhtmx_sync::SyncStrategy` is not reported as unused.
    pub(crate) path: Option<Path>,
}

/// A conflict strategy: the variant of `rhtmx_sync::SyncStrategy` to expand to.
#[derive(Clone, Copy, Default)]
pub(crate) enum Strategy {
    /// `LastWriteWins` or `"last-write-wins"`.
    #[default]
    LastWriteWins,
    /// `ClientWins` or `"client-wins"`.
    ClientWins,
    /// `ServerWins` or `"server-wins"`.
    ServerWins,
    /// `Custom` or `"custom"`: the resolver registered on the engine decides.
    Custom,
}

impl Strategy {
    /// Every strategy.
    const ALL: [Strategy; 4] = [
        Strategy::LastWriteWins,
        Strategy::ClientWins,
        Strategy::ServerWins,
        Strategy::Custom,
    ];

    /// The variant name, as in `SyncStrategy::LastWriteWins`.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Strategy::LastWriteWins => "LastWriteWins",
            Strategy::ClientWins => "ClientWins",
            Strategy::ServerWins => "ServerWins",
            Strategy::Custom => "Custom",
        }
    }

    /// The string form, as in `strategy = "last-write-wins"`.
    fn kebab(self) -> &'static str {
        match self {
            Strategy::LastWriteWins => "last-write-wins",
            Strategy::ClientWins => "client-wins",
            Strategy::ServerWins => "server-wins",
            Strategy::Custom => "custom",
        }
    }

    /// The strategies, each shown by `show`, as a list for messages: "a, b, c or d".
    fn list(show: impl Fn(Strategy) -> String) -> String {
        let [a, b, c, d] = Self::ALL.map(show);
        format!("{a}, {b}, {c} or {d}")
    }
}

impl Container {
    /// Parses every `#[sync(...)]` in the struct's `attrs`, recording problems in `errors`.
    pub(crate) fn from_attrs(attrs: &[Attribute], errors: &mut Errors) -> Self {
        let mut container = Container::default();
        let mut seen: Vec<&str> = Vec::new();
        for attr in attrs.iter().filter(|attr| attr.path().is_ident("sync")) {
            let parsed = attr.parse_nested_meta(|meta| {
                let Some(key) = CONTAINER_KEYS.into_iter().find(|k| meta.path.is_ident(k)) else {
                    errors.push(unknown_container_key(&meta.path));
                    return skip_value(&meta);
                };
                if seen.contains(&key) {
                    let msg = format!("duplicate sync attribute `{key}`");
                    errors.push(Error::new_spanned(&meta.path, msg));
                    return skip_value(&meta);
                }
                seen.push(key);
                if let Err(error) = container.parse_value(key, &meta) {
                    errors.push(error);
                    return skip_value(&meta);
                }
                Ok(())
            });
            if let Err(error) = parsed {
                errors.push(error);
            }
        }
        for attr in attrs.iter().filter(|attr| attr.path().is_ident("sqlx")) {
            let _ = attr.parse_nested_meta(|meta| container.parse_sqlx(&meta, errors));
        }
        container
    }

    /// Parses one key of the struct's `#[sqlx(...)]`, keeping `rename_all = "..."`.
    ///
    /// The attribute is sqlx's, which reports its own mistakes when `sqlx::FromRow` is
    /// derived, so every other key is passed over; but a case this derive does not know
    /// would name the columns wrongly, so it is an error here too.
    fn parse_sqlx(&mut self, meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<()> {
        if !(meta.path.is_ident("rename_all") && meta.input.peek(Token![=])) {
            return skip_value(meta);
        }
        let value: Expr = meta.value()?.parse()?;
        if let Expr::Lit(ExprLit {
            lit: Lit::Str(case),
            ..
        }) = ungroup(&value)
        {
            match RenameAll::from_name(&case.value()) {
                Some(rename_all) => self.rename_all = self.rename_all.or(Some(rename_all)),
                None => {
                    let known = RenameAll::ALL
                        .map(|(name, _)| format!("\"{name}\""))
                        .join(", ");
                    let msg = format!(
                        "unknown `rename_all` case {:?}; sqlx takes one of {known}",
                        case.value()
                    );
                    errors.push(Error::new_spanned(case, msg));
                }
            }
        }
        Ok(())
    }

    /// Parses the `= value` after `key` into its slot.
    fn parse_value(&mut self, key: &str, meta: &ParseNestedMeta) -> syn::Result<()> {
        let example = match key {
            "table" => r#"table = "todos""#,
            "id" => r#"id = "id""#,
            "strategy" => "strategy = LastWriteWins",
            "delete_wins" => "delete_wins = true",
            _ => "offline_writes = true",
        };
        if !meta.input.peek(Token![=]) {
            let msg = format!("expected a value: `{example}`");
            return Err(Error::new_spanned(&meta.path, msg));
        }
        let value: Expr = meta.value()?.parse()?;
        let value = ungroup(&value);
        match key {
            "table" => self.table = Some(non_empty_str(value, "table name", example)?),
            "id" => self.id = Some(non_empty_str(value, "id column", example)?),
            "strategy" => self.strategy = Some(strategy(value)?),
            "delete_wins" => self.delete_wins = Some(boolean(value)?),
            _ => self.offline_writes = Some(boolean(value)?),
        }
        Ok(())
    }
}

impl FieldAttrs {
    /// Parses a field's `#[sync(...)]` and `#[sqlx(...)]`, recording problems in `errors`.
    ///
    /// `#[sqlx(...)]` belongs to sqlx, which reports its mistakes itself, so it is read
    /// leniently: only `rename = "..."`, `skip` and `flatten` are taken and everything
    /// else is passed over.
    pub(crate) fn from_attrs(attrs: &[Attribute], errors: &mut Errors) -> Self {
        let mut field = FieldAttrs::default();
        for attr in attrs {
            if attr.path().is_ident("sync") {
                if let Err(error) = attr.parse_nested_meta(|meta| field.parse_sync(&meta, errors)) {
                    errors.push(error);
                }
            } else if attr.path().is_ident("sqlx") {
                let _ = attr.parse_nested_meta(|meta| field.parse_sqlx(&meta));
            }
        }
        field
    }

    /// Parses one key of a field's `#[sync(...)]`: only `skip` is allowed.
    fn parse_sync(&mut self, meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<()> {
        let error = if !meta.path.is_ident("skip") {
            unknown_field_key(&meta.path)
        } else if !(meta.input.is_empty() || meta.input.peek(Token![,])) {
            Error::new_spanned(&meta.path, "`skip` takes no value: `#[sync(skip)]`")
        } else if self.skip.is_some() {
            Error::new_spanned(&meta.path, "duplicate sync attribute `skip`")
        } else {
            self.skip = Some(meta.path.clone());
            return Ok(());
        };
        errors.push(error);
        skip_value(meta)
    }

    /// Parses one key of a field's `#[sqlx(...)]`, keeping `rename = "..."`, `skip` and
    /// `flatten`.
    fn parse_sqlx(&mut self, meta: &ParseNestedMeta) -> syn::Result<()> {
        let bare = meta.input.is_empty() || meta.input.peek(Token![,]);
        if bare && meta.path.is_ident("skip") {
            self.sqlx_skip.get_or_insert_with(|| meta.path.clone());
            return Ok(());
        }
        if bare && meta.path.is_ident("flatten") {
            self.flatten.get_or_insert_with(|| meta.path.clone());
            return Ok(());
        }
        if meta.path.is_ident("rename") && meta.input.peek(Token![=]) {
            let value: Expr = meta.value()?.parse()?;
            if let Expr::Lit(ExprLit {
                lit: Lit::Str(rename),
                ..
            }) = ungroup(&value)
            {
                self.rename = Some(rename.clone());
            }
            return Ok(());
        }
        skip_value(meta)
    }
}

/// The error for a key `#[sync(...)]` does not take on a struct.
fn unknown_container_key(path: &Path) -> Error {
    let key = path_to_string(path);
    let msg = if key == "skip" {
        "`skip` goes on a field, not on the struct".to_owned()
    } else {
        let known = CONTAINER_KEYS.map(|k| format!("`{k}`")).join(", ");
        format!("unknown sync attribute `{key}`; expected one of {known}")
    };
    Error::new_spanned(path, msg)
}

/// The error for a key other than `skip` in a field's `#[sync(...)]`.
fn unknown_field_key(path: &Path) -> Error {
    let key = path_to_string(path);
    let msg = if CONTAINER_KEYS.contains(&key.as_str()) {
        format!("`{key}` goes on the struct, not on a field; a field takes only `skip`")
    } else {
        format!("unknown sync field attribute `{key}`; a field takes only `skip`")
    };
    Error::new_spanned(path, msg)
}

/// A non-empty string literal, or an error naming what it is (`what`) and an `example`.
fn non_empty_str(value: &Expr, what: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) if lit.value().is_empty() => {
            Err(Error::new_spanned(lit, format!("{what} cannot be empty")))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        _ => {
            let msg = format!("expected a string literal: `{example}`");
            Err(Error::new_spanned(value, msg))
        }
    }
}

/// A `true` or `false` literal.
fn boolean(value: &Expr) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(LitBool { value, .. }),
            ..
        }) => Ok(*value),
        _ => Err(Error::new_spanned(value, "expected `true` or `false`")),
    }
}

/// A strategy given as a path ending in a variant name or as a kebab-case string.
fn strategy(value: &Expr) -> syn::Result<StrategyAttr> {
    match value {
        Expr::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return Err(Error::new_spanned(path, "expected a sync strategy"));
            };
            let variant = &last.ident;
            let found = Strategy::ALL.into_iter().find(|s| variant == s.variant());
            let path = (path.path.segments.len() > 1).then(|| path.path.clone());
            let found = found.map(|strategy| StrategyAttr { strategy, path });
            found.ok_or_else(|| {
                let expected = Strategy::list(|s| format!("`{}`", s.variant()));
                let msg = format!("unknown sync strategy `{variant}`; expected {expected}");
                Error::new_spanned(variant, msg)
            })
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            let found = Strategy::ALL.into_iter().find(|s| lit.value() == s.kebab());
            let found = found.map(|strategy| StrategyAttr {
                strategy,
                path: None,
            });
            found.ok_or_else(|| {
                let expected = Strategy::list(|s| format!("\"{}\"", s.kebab()));
                let msg = format!(
                    "unknown sync strategy {:?}; expected {expected}",
                    lit.value()
                );
                Error::new_spanned(lit, msg)
            })
        }
        _ => {
            let msg = "expected a sync strategy, like `LastWriteWins` or \"last-write-wins\"";
            Err(Error::new_spanned(value, msg))
        }
    }
}

/// Consumes the rest of the current key (an `= value` or a `(...)`, whatever its shape),
/// up to the next top-level comma, so that parsing can go on with the next key.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    meta.input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((token, next)) = rest.token_tree() {
            if matches!(&token, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// `value` without the invisible groups a `macro_rules!` interpolation wraps it in.
fn ungroup(mut value: &Expr) -> &Expr {
    while let Expr::Group(group) = value {
        value = &group.expr;
    }
    value
}

/// A key as written, for messages: `table`, `foo::bar`.
fn path_to_string(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}
