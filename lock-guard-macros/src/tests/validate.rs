use crate::translate::validate::*;
use crate::translate::{attr::Args, item::GuardedFn};
use proc_macro2::TokenStream;
use quote::quote;

fn check_err(args: TokenStream, func: TokenStream) -> String {
    let mut args: Args = syn::parse2(args).unwrap();
    let func: GuardedFn = syn::parse2(func).unwrap();
    match check(&mut args, &func) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn parts(args: TokenStream, func: TokenStream) -> Vec<String> {
    let mut args: Args = syn::parse2(args).unwrap();
    let func: GuardedFn = syn::parse2(func).unwrap();
    let plan = check(&mut args, &func).unwrap_or_else(|e| panic!("{e}"));
    plan.parts.iter().map(|p| p.expr.to_string()).collect()
}

#[test]
fn key_from_first_argument_not_self() {
    let f = quote!(
        async fn f(&self, user: u32, word: String) -> Result<(), E> {}
    );
    assert_eq!(parts(quote!(name = "a"), f), ["user"]);
    let f = quote!(
        async fn f(mut user: u32) -> Result<(), E> {}
    );
    assert_eq!(parts(quote!(name = "a"), f), ["user"]);
}

#[test]
fn key_argument() {
    let f = quote!(
        async fn f((a, b): (u32, u32)) -> Result<(), E> {}
    );
    assert_eq!(
        parts(quote!(name = "a", key = (a, b.id, a + b)), f.clone()),
        ["a", "b . id", "(a + b)"]
    );
    assert_eq!(
        parts(quote!(name = "a", key = lock_guard::unordered(a, b)), f),
        ["lock_guard :: unordered (a , b)"]
    );
}

#[test]
fn placement_errors() {
    let e = check_err(
        quote!(name = "a"),
        quote!(
            fn f(a: u32) -> Result<(), E> {}
        ),
    );
    assert!(e.contains("needs an `async fn`"), "{e}");
    let e = check_err(
        quote!(name = "a"),
        quote!(
            const async fn f(a: u32) -> Result<(), E> {}
        ),
    );
    assert!(e.contains("Remove `const`"), "{e}");
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f(a: u32) -> Result<(), E>;
        ),
    );
    assert!(e.contains("needs the function's body"), "{e}");
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f(a: u32) -> u32 {}
        ),
    );
    assert!(e.contains("write `-> Result<u32, YourError>`"), "{e}");
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f(a: u32) -> Option<&'static std::string::String> {}
        ),
    );
    assert!(
        e.contains("write `-> Result<Option<&'static std::string::String>, YourError>`"),
        "{e}"
    );
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f(a: u32) {}
        ),
    );
    assert!(e.contains("add `-> Result<(), YourError>`"), "{e}");
}

#[test]
fn result_aliases_are_accepted() {
    for ret in [
        quote!(std::result::Result<u8, E>),
        quote!(io::Result<u8>),
        quote!(AppResult<u8>),
    ] {
        let f = quote!(async fn f(a: u32) -> #ret {});
        assert_eq!(parts(quote!(name = "a"), f), ["a"]);
    }
}

#[test]
fn key_errors() {
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f((a, b): (u8, u8)) -> Result<(), E> {}
        ),
    );
    assert!(e.contains("a pattern has no single value"), "{e}");
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f(_: u8) -> Result<(), E> {}
        ),
    );
    assert!(e.contains("`_` has no value"), "{e}");
    let e = check_err(
        quote!(name = "a"),
        quote!(
            async fn f(&self) -> Result<(), E> {}
        ),
    );
    assert!(e.contains("this function has none"), "{e}");
    let e = check_err(
        quote!(name = "a", key = ()),
        quote!(
            async fn f(&self) -> Result<(), E> {}
        ),
    );
    assert!(e.contains("an empty key"), "{e}");
}

#[test]
fn timeout_shorter_than_lease() {
    let f = quote!(
        async fn f(a: u32) -> Result<(), E> {}
    );
    let e = check_err(quote!(name = "a", lease = 3s, timeout = 3s), f.clone());
    assert!(
        e.contains("`timeout = 3s` must be shorter than `lease = 3s`"),
        "{e}"
    );
    assert!(e.contains("e.g. `timeout = 2s`"), "{e}");
    let e = check_err(quote!(name = "a", timeout = 5s), f.clone());
    assert!(e.contains("the default lease is 3s"), "{e}");
    assert_eq!(
        parts(quote!(name = "a", lease = 3s, timeout = 2999ms), f.clone()),
        ["a"]
    );
    assert_eq!(
        parts(
            quote!(name = "a", lease = watchdog, timeout = 1m),
            f.clone()
        ),
        ["a"]
    );
    assert_eq!(
        parts(quote!(name = "a", lease = LEASE, timeout = 1m), f),
        ["a"]
    );
}

#[test]
fn all_errors_at_once() {
    let e = check_err(
        quote!(wait = 1x),
        quote!(
            fn f(_: u8) -> u8 {}
        ),
    );
    for expected in [
        "unknown unit",
        "needs an `async fn`",
        "returns `Result",
        "needs a `name`",
        "`_` has no value",
    ] {
        assert!(e.contains(expected), "{expected} in {e}");
    }
}

#[test]
fn max_hold_only_with_a_watchdog() {
    let f = quote!(
        async fn f(a: u32) -> Result<(), E> {}
    );
    let e = check_err(quote!(name = "a", max_hold = 10m), f.clone());
    assert!(e.contains("the default fixed lease of 3s"), "{e}");
    assert!(
        e.contains("write `lease = watchdog, max_hold = 10m`"),
        "{e}"
    );
    let e = check_err(quote!(name = "a", lease = 5s, max_hold = 10m), f.clone());
    assert!(e.contains("`lease = 5s` already frees the lock"), "{e}");
    let e = check_err(quote!(name = "a", lease = LEASE, max_hold = MAX), f.clone());
    assert!(
        e.contains("`max_hold = MAX` bounds a lock that renews itself"),
        "{e}"
    );
    let e = check_err(
        quote!(name = "a", lease = watchdog, max_hold = 0s),
        f.clone(),
    );
    assert!(e.contains("a max_hold of zero"), "{e}");
    let e = check_err(
        quote!(name = "a", lease = watchdog, max_hold = 10h),
        f.clone(),
    );
    assert!(e.contains("unknown unit `h` in `max_hold`"), "{e}");
    let e = check_err(
        quote!(name = "a", lease = watchdog, max_hold = 1m, max_hold = 2m),
        f.clone(),
    );
    assert!(e.contains("`max_hold` is given twice"), "{e}");
    assert_eq!(
        parts(
            quote!(name = "a", lease = watchdog, max_hold = 10m),
            f.clone()
        ),
        ["a"]
    );
    assert_eq!(
        parts(quote!(name = "a", max_hold = MAX, lease = watchdog), f),
        ["a"]
    );
}
