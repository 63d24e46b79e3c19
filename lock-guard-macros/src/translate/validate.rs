//! Checks the arguments against the function and resolves what the expansion needs:
//! the key's parts, the options, the return type. Every error points at the offending token and
//! says what to write instead; all errors found are reported together.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::spanned::Spanned as _;
use syn::{Expr, FnArg, LitStr, Pat, ReturnType, Type, TypePath};

use super::attr::{Args, Duration, Lease};
use super::item::{Body, GuardedFn};

/// What the expansion is built from.
pub(crate) struct Plan<'a> {
    /// The runtime crate's path: `crate = …`, or `::lock_guard`.
    pub(crate) krate: TokenStream,
    pub(crate) name: &'a LitStr,
    /// The key's parts, in order: each an expression to take by reference, and where to report a
    /// part that is not `Display`.
    pub(crate) parts: Vec<Part>,
    pub(crate) locks: Option<&'a Expr>,
    pub(crate) wait: Option<&'a Duration>,
    /// `None`: the runtime's default lease.
    pub(crate) lease: Option<&'a Lease>,
    pub(crate) timeout: Option<&'a Duration>,
    pub(crate) max_hold: Option<&'a Duration>,
    pub(crate) ret: &'a Type,
    pub(crate) body: &'a Body,
}

pub(crate) struct Part {
    pub(crate) expr: TokenStream,
    pub(crate) span: Span,
}

/// Collects errors, so that one build reports all of them.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }
}

pub(crate) fn check<'a>(args: &'a mut Args, func: &'a GuardedFn) -> Result<Plan<'a>, syn::Error> {
    let mut errors = Errors::default();
    if let Some(e) = args.errors.take() {
        errors.push(e);
    }
    let sig = &func.sig;

    // placement
    if let Some(constness) = &sig.constness {
        errors.at(
            constness.span,
            "#[concurrency_guard] cannot guard a `const fn`: it awaits a lock at run time. Remove `const` and write `async fn`",
        );
    }
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token.span,
            format!(
                "#[concurrency_guard] needs an `async fn`: taking the lock is awaited. Write `async fn {}(…)`",
                sig.ident
            ),
        );
    }
    if func.body.is_none() {
        let at = func
            .semi
            .as_ref()
            .map_or_else(|| sig.span(), |semi| semi.span);
        errors.at(
            at,
            "#[concurrency_guard] needs the function's body `{ … }`: put it on the implementation of this method, not on its declaration",
        );
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) if is_result(ty) => Some(&**ty),
        ReturnType::Type(_, ty) => {
            errors.push(syn::Error::new_spanned(
                ty,
                format!(
                    "#[concurrency_guard] needs a function that returns `Result<T, E>` with `E: From<lock_guard::LockError>`, \
                     so that a lock failure can come back as an error: write `-> Result<{}, YourError>`",
                    pretty(ty)
                ),
            ));
            None
        }
        ReturnType::Default => {
            errors.at(
                sig.paren_token.span.close(),
                "#[concurrency_guard] needs a function that returns `Result<T, E>` with `E: From<lock_guard::LockError>`, \
                 so that a lock failure can come back as an error: add `-> Result<(), YourError>`",
            );
            None
        }
    };

    // the name
    if args.name.is_none() {
        errors.at(
            Span::call_site(),
            "#[concurrency_guard] needs a `name`, the lock's namespace: `#[concurrency_guard(name = \"orders\")]`",
        );
    }

    // a literal timeout must be shorter than a literal (or the default) lease
    if let Some(Duration::Literal {
        millis: timeout,
        text: timeout_text,
        span,
    }) = &args.timeout
    {
        match &args.lease {
            Some(Lease::Duration(Duration::Literal {
                millis: lease,
                text: lease_text,
                ..
            })) if timeout >= lease => errors.at(
                *span,
                format!(
                    "`timeout = {timeout_text}` must be shorter than `lease = {lease_text}`: the body has to finish while the lock is still held. \
                     Shorten the timeout (e.g. `timeout = {}`), lengthen the lease, or use `lease = watchdog`",
                    suggest(*lease)
                ),
            ),
            None if *timeout >= DEFAULT_LEASE_MS => errors.at(
                *span,
                format!(
                    "`timeout = {timeout_text}` must be shorter than the lease, and the default lease is {}: the body has to finish while the lock is still held. \
                     Give a longer lease, e.g. `lease = {}`, or use `lease = watchdog`",
                    format_millis(DEFAULT_LEASE_MS),
                    longer(*timeout)
                ),
            ),
            _ => {}
        }
    }

    // `max_hold` bounds a watchdog lock; a fixed lease already bounds the hold
    if let Some(max_hold) = &args.max_hold
        && !matches!(args.lease, Some(Lease::Watchdog))
    {
        let (span, written) = match max_hold {
            Duration::Literal { span, text, .. } => (*span, text.clone()),
            Duration::Expr(expr) => (expr.span(), expr.to_token_stream().to_string()),
        };
        let lease = match &args.lease {
            Some(Lease::Duration(Duration::Literal { text, .. })) => format!("`lease = {text}`"),
            Some(_) => "this fixed lease".to_owned(),
            None => format!(
                "the default fixed lease of {}",
                format_millis(DEFAULT_LEASE_MS)
            ),
        };
        errors.at(
            span,
            format!(
                "`max_hold = {written}` bounds a lock that renews itself, and {lease} already frees the lock when it ends: \
                 write `lease = watchdog, max_hold = {written}`, or remove `max_hold`"
            ),
        );
    }

    // the key: the first argument that is not `self`, or `key = …`
    let parts = match &args.key {
        Some(Expr::Tuple(tuple)) if tuple.elems.is_empty() => {
            errors.at(
                tuple.span(),
                "an empty key would make every call share one lock; give the key's parts: `key = (a, b)`",
            );
            Vec::new()
        }
        Some(Expr::Tuple(tuple)) => tuple.elems.iter().map(part).collect(),
        Some(expr) => vec![part(expr)],
        None => match sig.inputs.iter().find_map(|arg| match arg {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        }) {
            Some(typed) => match &*typed.pat {
                Pat::Ident(pat) => vec![Part {
                    expr: pat.ident.to_token_stream(),
                    span: pat.ident.span(),
                }],
                Pat::Wild(wild) => {
                    errors.at(
                        wild.span(),
                        "the lock key is taken from the first argument, and `_` has no value to use: \
                         name the argument, or say what the key is with `key = …`, e.g. `#[concurrency_guard(name = \"…\", key = order.id)]`",
                    );
                    Vec::new()
                }
                pat => {
                    errors.push(syn::Error::new_spanned(
                        pat,
                        "the lock key is taken from the first argument, and a pattern has no single value to use: \
                         say what the key is with `key = …`, e.g. `#[concurrency_guard(name = \"…\", key = (a, b))]`, or bind the argument to a name",
                    ));
                    Vec::new()
                }
            },
            None => {
                errors.at(
                    sig.paren_token.span.join(),
                    "the lock key is taken from the first argument that is not `self`, and this function has none: \
                     say what the key is with `key = …`, e.g. `#[concurrency_guard(name = \"…\", key = self.id)]`",
                );
                Vec::new()
            }
        },
    };

    match (errors.0, ret, &func.body, &args.name) {
        (None, Some(ret), Some(body), Some(name)) => Ok(Plan {
            krate: args
                .krate
                .as_ref()
                .map_or_else(|| quote!(::lock_guard), ToTokens::to_token_stream),
            name,
            parts,
            locks: args.locks.as_ref(),
            wait: args.wait.as_ref(),
            lease: args.lease.as_ref(),
            timeout: args.timeout.as_ref(),
            max_hold: args.max_hold.as_ref(),
            ret,
            body,
        }),
        (Some(errors), ..) => Err(errors),
        // every `None` above has recorded an error
        _ => unreachable!("a missing piece without an error"),
    }
}

/// The runtime's default lease (`LockOptions::new()`), in milliseconds: the one default the macro
/// needs, to reject `timeout = 5s` without a `lease` at compile time. The expansion never emits it;
/// `tests/tests/expand.rs` checks that it still equals the runtime's.
pub(crate) const DEFAULT_LEASE_MS: u64 = 3_000;

/// Whether a return type is syntactically a `Result`: `Result<T, E>`, `std::result::Result<T, E>`,
/// or an alias whose name ends in `Result` (`io::Result<T>`, `AppResult<T>`). Whether its error
/// type converts from `LockError` is left to the type checker.
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(TypePath { qself: None, path }) => path
            .segments
            .last()
            .is_some_and(|last| last.ident.to_string().ends_with("Result")),
        Type::Paren(paren) => is_result(&paren.elem),
        Type::Group(group) => is_result(&group.elem),
        _ => false,
    }
}

/// A type as a user would write it (`Option<u64>`, not `Option < u64 >`), for messages.
fn pretty(ty: &Type) -> String {
    let mut text = ty.to_token_stream().to_string();
    for (from, to) in [
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        (" :: ", "::"),
        (":: ", "::"),
        ("& ", "&"),
    ] {
        text = text.replace(from, to);
    }
    text
}

/// One key part, and where to report it if it is not `Display`.
fn part(expr: &Expr) -> Part {
    Part {
        expr: borrowable(expr),
        span: expr.span(),
    }
}

/// An expression that `&` borrows whole: parenthesized unless it is a place, call or literal.
pub(crate) fn borrowable(expr: &Expr) -> TokenStream {
    match expr {
        Expr::Path(_)
        | Expr::Field(_)
        | Expr::MethodCall(_)
        | Expr::Call(_)
        | Expr::Lit(_)
        | Expr::Index(_)
        | Expr::Paren(_)
        | Expr::Macro(_)
        | Expr::Tuple(_)
        | Expr::Reference(_) => expr.to_token_stream(),
        _ => quote!((#expr)),
    }
}

/// A timeout to suggest for a lease: two thirds of it, written as a literal.
fn suggest(lease_ms: u64) -> String {
    format_millis(lease_ms * 2 / 3)
}

/// A lease to suggest for a timeout: half again as long.
fn longer(timeout_ms: u64) -> String {
    format_millis(timeout_ms.saturating_add(timeout_ms / 2).max(1))
}

fn format_millis(ms: u64) -> String {
    if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}
