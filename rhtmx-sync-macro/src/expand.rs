//! Writing the impl, or on error the errors plus a placeholder impl.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{DeriveInput, Ident};

use crate::valid::{self, Model};

/// The expansion of `#[derive(Syncable)]` for `input`.
///
/// On error this is the `compile_error!`s plus an impl with placeholder values, as
/// thiserror does, so that the user sees the mistake in the attributes and not a
/// cascade of "`Todo` does not implement `Syncable`" wherever the type is used.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    try_expand(input).unwrap_or_else(|error| fallback(input, error))
}

/// The impl, or every problem found in `input`.
fn try_expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let Model {
        table,
        id,
        columns,
        strategy,
        offline_writes,
        delete_wins,
    } = valid::check(input)?;
    let strategy = match strategy.path {
        Some(path) => quote!(#path),
        None => {
            let variant = Ident::new(strategy.strategy.variant(), Span::call_site());
            quote!(::rhtmx_sync::SyncStrategy::#variant)
        }
    };
    Ok(impl_syncable(
        input,
        quote! {
            const TABLE: &'static str = #table;
            const ID: &'static str = #id;
            const COLUMNS: &'static [&'static str] = &[#(#columns),*];
            const STRATEGY: ::rhtmx_sync::SyncStrategy = #strategy;
            const OFFLINE_WRITES: bool = #offline_writes;
            const DELETE_WINS: bool = #delete_wins;
        },
    ))
}

/// `error` as `compile_error!`s, followed by an impl with placeholder values.
fn fallback(input: &DeriveInput, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    let placeholder = impl_syncable(
        input,
        quote! {
            const TABLE: &'static str = "";
            const ID: &'static str = "";
            const COLUMNS: &'static [&'static str] = &[];
            const STRATEGY: ::rhtmx_sync::SyncStrategy = ::rhtmx_sync::SyncStrategy::LastWriteWins;
            const OFFLINE_WRITES: bool = true;
        },
    );
    quote! {
        #error
        #placeholder
    }
}

/// `impl Syncable for` the input type, generics included, with `consts` as its body.
fn impl_syncable(input: &DeriveInput, consts: TokenStream) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::rhtmx_sync::Syncable for #ident #ty_generics #where_clause {
            #consts
        }
    }
}
