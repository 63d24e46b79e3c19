//! Code generation (S6): the function keeps its signature; its body builds the key and options and
//! hands the user's block, wrapped as `async move { … }`, to `::lock_guard::__private::run`.
//!
//! On any error, the original item is emitted unchanged next to the `compile_error!`s, so that the
//! rest of the crate still type-checks and the user sees only the real problems.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::visit_mut::VisitMut;
use syn::{Token, Type};

use crate::attr::{Args, Duration, Lease};
use crate::item::GuardedFn;
use crate::validate::{self, Plan, borrowable};

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
        Ok(plan) => generate(&func, &plan),
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

fn generate(func: &GuardedFn, plan: &Plan<'_>) -> TokenStream {
    let GuardedFn {
        attrs, vis, sig, ..
    } = func;
    let key_var = Ident::new("__lock_guard_key", Span::mixed_site());

    // `locks = <expr>` is evaluated before the body moves `self` (or anything else) away.
    let (take_locks, locks) = match plan.locks {
        Some(expr) => {
            let locks_var = Ident::new("__lock_guard_locks", Span::mixed_site());
            let expr = borrowable(expr);
            let take = quote_spanned!(expr.span()=> ::lock_guard::__private::locks(&#expr));
            (
                quote!(let #locks_var = #take;),
                locks_var.into_token_stream(),
            )
        }
        None => (
            TokenStream::new(),
            quote!(::lock_guard::__private::default_locks()),
        ),
    };

    let name = plan.name;
    let mut key = quote!(::lock_guard::__private::key(#name));
    for part in &plan.parts {
        let expr = &part.expr;
        key = quote_spanned!(part.span=> ::lock_guard::__private::part(#key, &#expr));
    }

    let options = options(plan);

    // A fake return edge typed by the return type, so that `?` and `return` inside the body infer
    // against it and type errors land on the user's code (as `tracing-attributes` does).
    let ret_span = plan.ret.span();
    let ret = erase_impl_trait(plan.ret);
    // Call-site hygiene, not mixed-site: rustc then reports errors about this value on the return
    // type rather than on the attribute. It lives only in its own block, so it cannot clash.
    let fake = Ident::new("__lock_guard_return", ret_span);
    let fake_return_edge = quote_spanned! {ret_span=>
        if false {
            let #fake: #ret = ::lock_guard::__private::fake_return();
            return #fake;
        }
    };
    let inner_attrs = &plan.body.inner_attrs;
    let block = &plan.body.block;
    // `fake_return` above and `run` both need `E: From<LockError>`: with both calls spanned on the
    // return type, rustc reports only the first (with its on_unimplemented message) there.
    let run = quote_spanned! {ret_span=>
        ::lock_guard::__private::run(#locks, #key_var, #options, async move {
            #fake_return_edge
            #block
        })
        .await
    };

    quote! {
        #(#attrs)*
        #vis #sig {
            #inner_attrs
            #take_locks
            let #key_var = #key;
            #run
        }
    }
}

/// `::lock_guard::__private::options(wait_ms).lease_ms(ms)` (or `.watchdog()`), then
/// `.timeout_ms(ms)` when a timeout is given, from the literals; arguments given as `Duration`
/// expressions become the public builder methods (`.wait(expr)`, …).
fn options(plan: &Plan<'_>) -> TokenStream {
    fn millis(d: Option<&Duration>) -> Option<u64> {
        match d {
            Some(Duration::Literal { millis, .. }) => Some(*millis),
            Some(Duration::Expr(_)) | None => None,
        }
    }
    let wait = Literal::u64_unsuffixed(millis(plan.wait).unwrap_or(5_000));
    let mut options = quote!(::lock_guard::__private::options(#wait));
    match plan.lease {
        Some(Lease::Watchdog) => options = quote!(#options.watchdog()),
        Some(Lease::Duration(Duration::Expr(_))) => {}
        Some(Lease::Duration(d)) => {
            let ms = Literal::u64_unsuffixed(millis(Some(d)).unwrap_or(3_000));
            options = quote!(#options.lease_ms(#ms));
        }
        None => options = quote!(#options.lease_ms(3000)),
    }
    if let Some(ms) = millis(plan.timeout) {
        let ms = Literal::u64_unsuffixed(ms);
        options = quote!(#options.timeout_ms(#ms));
    }
    let expressions = [
        ("wait", plan.wait),
        (
            "lease",
            match plan.lease {
                Some(Lease::Duration(d)) => Some(d),
                _ => None,
            },
        ),
        ("timeout", plan.timeout),
    ];
    for (method, duration) in expressions {
        if let Some(Duration::Expr(expr)) = duration {
            let method = Ident::new(method, expr.span());
            options = quote_spanned!(expr.span()=> #options.#method(#expr));
        }
    }
    options
}

/// Replaces every `impl Trait` in a type with `_`, so it can annotate a `let`.
fn erase_impl_trait(ty: &Type) -> Type {
    struct Eraser;
    impl VisitMut for Eraser {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if let Type::ImplTrait(impl_trait) = ty {
                *ty = Type::Infer(syn::TypeInfer {
                    underscore_token: Token![_](impl_trait.span()),
                });
            } else {
                syn::visit_mut::visit_type_mut(self, ty);
            }
        }
    }
    let mut ty = ty.clone();
    Eraser.visit_type_mut(&mut ty);
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
