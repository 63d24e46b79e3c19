//! The `#[concurrency_guard]` attribute of `lock-guard`. Use it through `lock_guard::concurrency_guard`.
use proc_macro::TokenStream;

/// See `lock_guard::concurrency_guard`.
#[proc_macro_attribute]
pub fn concurrency_guard(args: TokenStream, item: TokenStream) -> TokenStream {
    let _ = args;
    item
}
