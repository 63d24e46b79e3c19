//! Code generation: the function keeps its signature; its body builds the key and the options and
//! hands the user's block, wrapped as `async move { … }`, to `<crate>::__private::run`.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::visit_mut::VisitMut;
use syn::{Token, Type};

use super::attr::{Duration, Lease};
use super::item::GuardedFn;
use super::validate::{Plan, borrowable};

/// The guarded function.
pub(super) fn generate(func: &GuardedFn, plan: &Plan<'_>) -> TokenStream {
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
