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
            let __lock_guard_key = ::lock_guard::__private::part(::lock_guard::__private::key("keyword"), &user);
            ::lock_guard::__private::run(
                ::lock_guard::__private::default_locks(),
                __lock_guard_key,
                ::lock_guard::__private::options(5000).lease_ms(3000),
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

#[test]
fn durations_as_expressions_use_the_builder() {
    let out = expand(
        quote!(
            name = "n",
            wait = WAIT,
            lease = Duration::from_secs(9),
            timeout = 1s
        ),
        quote!(
            async fn f(a: u8) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    assert!(
        out.contains(
            &quote!(
                ::lock_guard::__private::options(5000)
                    .timeout_ms(1000)
                    .wait(WAIT)
                    .lease(Duration::from_secs(9))
            )
            .to_string()
        ),
        "{out}"
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
        quote!(::lock_guard::__private::part(
            ::lock_guard::__private::part(::lock_guard::__private::key("t"), &self.id),
            &(other + 1)
        )),
        quote!(::lock_guard::__private::options(5000).watchdog()),
    ] {
        assert!(out.contains(&expected.to_string()), "{expected} in {out}");
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
