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
    let krate = &plan.krate;
    let key_var = Ident::new("__lock_guard_key", Span::mixed_site());

    // `locks = <expr>` is evaluated before the body moves `self` (or anything else) away.
    let (take_locks, locks) = match plan.locks {
        Some(expr) => {
            let locks_var = Ident::new("__lock_guard_locks", Span::mixed_site());
            let expr = borrowable(expr);
            let krate = at(krate, expr.span());
            let take = quote_spanned!(expr.span()=> #krate::__private::locks(&#expr));
            (
                quote!(let #locks_var = #take;),
                locks_var.into_token_stream(),
            )
        }
        None => (
            TokenStream::new(),
            quote!(#krate::__private::default_locks()),
        ),
    };

    // One statement per key value, spanned on it so that a value that cannot be a key is reported
    // there. `part` takes a tuple apart, one part per element (see `__private::Part`).
    let name = plan.name;
    let parts = plan.parts.iter().map(|part| {
        let expr = &part.expr;
        let krate = at(krate, part.span);
        quote_spanned!(part.span=> #krate::__private::part(&#expr).push_to(&mut #key_var);)
    });

    let options = options(plan);

    // A fake return edge typed by the return type, so that `?` and `return` inside the body infer
    // against it and type errors land on the user's code (as `tracing-attributes` does).
    let ret_span = plan.ret.span();
    let ret = erase_impl_trait(plan.ret);
    // Call-site hygiene, not mixed-site: rustc then reports errors about this value on the return
    // type rather than on the attribute. It lives only in its own block, so it cannot clash.
    let fake = Ident::new("__lock_guard_return", ret_span);
    let krate_at_ret = at(krate, ret_span);
    let fake_return_edge = quote_spanned! {ret_span=>
        if false {
            let #fake: #ret = #krate_at_ret::__private::fake_return();
            return #fake;
        }
    };
    let inner_attrs = &plan.body.inner_attrs;
    let block = &plan.body.block;
    // `fake_return` above and `run` both need `E: From<LockError>`: with both calls spanned on the
    // return type, rustc reports only the first (with its on_unimplemented message) there.
    let run = quote_spanned! {ret_span=>
        #krate_at_ret::__private::run(#locks, #key_var, #options, async move {
            #fake_return_edge
            #block
        })
        .await
    };

    quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #take_locks
            let mut #key_var = #krate::__private::key(#name);
            #(#parts)*
            #run
        }
    }
}

/// The crate's path with every token spanned at `span`, for a call that rustc should report there:
/// a call's span runs from its path's first token, which would otherwise be the attribute's.
fn at(krate: &TokenStream, span: Span) -> TokenStream {
    krate
        .clone()
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

/// `<crate>::LockOptions::new()`, then one builder call per duration argument the user wrote, in
/// the order wait, lease, timeout, max_hold: a literal becomes `Duration::from_millis(…)`, an expression is
/// passed as it is. Arguments left out are left to the runtime's defaults.
fn options(plan: &Plan<'_>) -> TokenStream {
    let krate = &plan.krate;
    let mut options = quote!(#krate::LockOptions::new());
    if let Some(wait) = plan.wait {
        options = set(options, "wait", wait);
    }
    match plan.lease {
        Some(Lease::Watchdog) => options = quote!(#options.watchdog()),
        Some(Lease::Duration(lease)) => options = set(options, "lease", lease),
        None => {}
    }
    if let Some(timeout) = plan.timeout {
        options = set(options, "timeout", timeout);
    }
    if let Some(max_hold) = plan.max_hold {
        options = set(options, "max_hold", max_hold);
    }
    options
}

/// `options.method(duration)`. A literal such as `5s` is not valid Rust: it becomes
/// `Duration::from_millis(5000)`. An expression is spanned on itself, so that rustc reports one
/// that is not a `Duration` there.
fn set(options: TokenStream, method: &str, duration: &Duration) -> TokenStream {
    match duration {
        Duration::Literal { millis, span, .. } => {
            let method = Ident::new(method, *span);
            let millis = Literal::u64_unsuffixed(*millis);
            quote!(#options.#method(::core::time::Duration::from_millis(#millis)))
        }
        Duration::Expr(expr) => {
            let method = Ident::new(method, expr.span());
            quote_spanned!(expr.span()=> #options.#method(#expr))
        }
    }
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
