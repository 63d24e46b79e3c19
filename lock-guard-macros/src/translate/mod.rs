//! The attribute's translation, from tokens to tokens: parse the arguments (`attr.rs`) and the
//! function (`item.rs`, the body stays tokens), check them (`validate.rs`), generate the guarded
//! function (`expand.rs`).
//!
//! Nothing here uses `proc_macro`, only `proc_macro2`, `syn` and `quote`: a proc-macro crate cannot
//! be linked by a test, so the expansion snapshots (`tests/tests/expand.rs`) compile this directory
//! into the test itself, with `#[path = "…/translate/mod.rs"] mod translate;`, and call
//! [`concurrency_guard`] as rustc does. That is why the modules here name each other with `super::`
//! rather than `crate::`, and why their unit tests live in `src/tests/`, outside this directory.

pub(crate) mod attr;
pub(crate) mod expand;
pub(crate) mod item;
pub(crate) mod validate;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens as _, quote};

use attr::Args;
use item::GuardedFn;

/// The attribute: parse, check, generate.
pub(crate) fn concurrency_guard(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<GuardedFn>(item.clone()) {
        Ok(func) => func,
        Err(error) => return fallback(item.clone(), not_a_function(item, error)),
    };
    let mut args = match syn::parse2::<Args>(args) {
        Ok(args) => args,
        Err(error) => return fallback(item, error),
    };
    match validate::check(&mut args, &func) {
        Ok(plan) => expand::generate(&func, &plan),
        // rustc rejects `const async fn` itself; emit the function without `const`, so that the
        // error about it is ours alone
        Err(error) if func.sig.constness.is_some() && func.sig.asyncness.is_some() => {
            let mut func = func;
            func.sig.constness = None;
            fallback(func.into_token_stream(), error)
        }
        Err(error) => fallback(item, error),
    }
}

/// The original item, unchanged, and the errors.
fn fallback(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}

/// The error for an item that is not a function: say where the attribute goes, unless the item is
/// a function that syn could not parse (then its own error is the useful one).
fn not_a_function(item: TokenStream, error: syn::Error) -> syn::Error {
    match syn::parse2::<syn::Item>(item) {
        Ok(syn::Item::Fn(_)) | Err(_) => error,
        Ok(_) => syn::Error::new(
            Span::call_site(),
            "#[concurrency_guard] goes on an `async fn` that returns `Result<T, E>`, e.g. \
             `#[concurrency_guard(name = \"orders\")] async fn place(order: OrderId) -> Result<(), AppError>`",
        ),
    }
}
