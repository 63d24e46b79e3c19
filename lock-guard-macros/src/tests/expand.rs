use crate::translate::concurrency_guard;
use proc_macro2::TokenStream;
use quote::quote;

fn expand(args: TokenStream, item: TokenStream) -> String {
    concurrency_guard(args, item).to_string()
}

#[test]
fn readme_example() {
    let out = expand(
        quote!(name = "keyword", wait = 5s, lease = 3s),
        quote! {
            async fn add_keyword(user: UserId, word: String, db: &Db) -> Result<Keyword, AppError> {
                Ok(k)
            }
        },
    );
    let expected = quote! {
        async fn add_keyword(user: UserId, word: String, db: &Db) -> Result<Keyword, AppError> {
            let mut __lock_guard_key = ::lock_guard::__private::key("keyword");
            ::lock_guard::__private::part(&user).push_to(&mut __lock_guard_key);
            ::lock_guard::__private::run(
                ::lock_guard::__private::default_locks(),
                __lock_guard_key,
                ::lock_guard::LockOptions::new()
                    .wait(::core::time::Duration::from_millis(5000))
                    .lease(::core::time::Duration::from_millis(3000)),
                async move {
                    if false {
                        let __lock_guard_return: Result<Keyword, AppError> = ::lock_guard::__private::fake_return();
                        return __lock_guard_return;
                    }
                    { Ok(k) }
                }
            )
            .await
        }
    };
    assert_eq!(out, expected.to_string());
}

/// The options of the expansion of `#[concurrency_guard(<args>)] async fn f(a: u8) …`.
fn options_of(args: TokenStream) -> String {
    let out = expand(
        args,
        quote!(
            async fn f(a: u8) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    let start = out.find(":: lock_guard :: LockOptions").expect("options");
    let end = out.find(", async move").expect("body");
    out[start..end].trim_end().to_string()
}

#[test]
fn only_the_options_written_are_emitted() {
    assert_eq!(
        options_of(quote!(name = "n")),
        quote!(::lock_guard::LockOptions::new()).to_string()
    );
    assert_eq!(
        options_of(quote!(name = "n", timeout = 1.5s)),
        quote!(::lock_guard::LockOptions::new().timeout(::core::time::Duration::from_millis(1500)))
            .to_string()
    );
    // always wait, lease, timeout, whatever order they were written in
    assert_eq!(
        options_of(quote!(
            name = "n",
            lease = watchdog,
            timeout = 2min,
            wait = 0s
        )),
        quote!(
            ::lock_guard::LockOptions::new()
                .wait(::core::time::Duration::from_millis(0))
                .watchdog()
                .timeout(::core::time::Duration::from_millis(120000))
        )
        .to_string()
    );
}

#[test]
fn durations_as_expressions_are_passed_as_they_are() {
    assert_eq!(
        options_of(quote!(
            name = "n",
            timeout = 1s,
            wait = WAIT,
            lease = Duration::from_secs(9)
        )),
        quote!(
            ::lock_guard::LockOptions::new()
                .wait(WAIT)
                .lease(Duration::from_secs(9))
                .timeout(::core::time::Duration::from_millis(1000))
        )
        .to_string()
    );
}

#[test]
fn watchdog_locks_and_tuple_key() {
    let out = expand(
        quote!(
            name = "t",
            lease = watchdog,
            key = (self.id, other + 1),
            locks = self.locks
        ),
        quote!(
            async fn f(self, other: u8) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    for expected in [
        quote!(let __lock_guard_locks = ::lock_guard::__private::locks(&self.locks);),
        quote!(
            let mut __lock_guard_key = ::lock_guard::__private::key("t");
            ::lock_guard::__private::part(&self.id).push_to(&mut __lock_guard_key);
            ::lock_guard::__private::part(&(other + 1)).push_to(&mut __lock_guard_key);
        ),
        quote!(::lock_guard::LockOptions::new().watchdog()),
    ] {
        assert!(out.contains(&expected.to_string()), "{expected} in {out}");
    }
}

#[test]
fn every_path_goes_through_crate() {
    for (krate, path) in [
        (quote!(crate = locks), quote!(locks)),
        (quote!(crate = "::my::locks"), quote!(::my::locks)),
        (quote!(crate = crate::reexport), quote!(crate::reexport)),
    ] {
        let out = expand(
            quote!(name = "n", #krate, key = (a, 1), locks = a.locks, timeout = 1s),
            quote!(
                async fn f(a: u8) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(!out.contains("lock_guard ::"), "{out}");
        for expected in [
            quote!(#path::__private::locks(&a.locks)),
            quote!(#path::__private::key("n")),
            quote!(#path::__private::part(&1)),
            quote!(#path::LockOptions::new()),
            quote!(#path::__private::fake_return()),
            quote!(#path::__private::run(__lock_guard_locks)),
        ] {
            let expected = expected.to_string();
            let expected = expected.trim_end_matches(')');
            assert!(out.contains(expected), "{expected} in {out}");
        }
    }
}

#[test]
fn impl_trait_is_erased_in_the_fake_return() {
    let out = expand(
        quote!(name = "n"),
        quote!(
            async fn f(a: u8) -> Result<impl Display, E> {
                Ok(a)
            }
        ),
    );
    assert!(
        out.contains(&quote!(let __lock_guard_return: Result<_, E>).to_string()),
        "{out}"
    );
    assert!(
        out.contains(&quote!(-> Result<impl Display, E>).to_string()),
        "{out}"
    );
}

#[test]
fn errors_keep_the_original_item() {
    let item = quote!(
        fn f(a: u8) -> Result<(), E> {
            Ok(())
        }
    );
    let out = expand(quote!(name = "n"), item.clone());
    assert!(out.starts_with(&item.to_string()), "{out}");
    assert!(out.contains("compile_error"), "{out}");
    let item = quote!(
        struct S;
    );
    let out = expand(quote!(name = "n"), item.clone());
    assert!(
        out.starts_with(&item.to_string()) && out.contains("goes on an `async fn`"),
        "{out}"
    );
}
