//! The `#[concurrency_guard]` attribute of `lock-guard`. Use it through `lock_guard::concurrency_guard`.

mod attr;
mod expand;
mod item;
mod validate;

use proc_macro::TokenStream;

/// See `lock_guard::concurrency_guard`.
#[proc_macro_attribute]
pub fn concurrency_guard(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::concurrency_guard(args.into(), item.into()).into()
}
