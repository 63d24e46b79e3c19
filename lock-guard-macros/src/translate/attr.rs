//! The attribute's arguments: `name`, `wait`, `lease`, `timeout`, `max_hold`, `key`, `locks`,
//! `crate`.
//!
//! A hand-written parser: each argument is `ident = value`, separated by commas. Syntax errors stop
//! the parse; errors about a value (a repeat, a wrong unit) are collected so that every one is
//! reported in a single build.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, ExprPath, ExprUnary, Ident, Lit, LitStr, Path, Token, UnOp};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(max_hold);
    syn::custom_keyword!(key);
    syn::custom_keyword!(locks);
    syn::custom_keyword!(watchdog);
}

/// What the attribute accepts, for error messages.
pub(crate) const ACCEPTED: &str = "`name = \"…\"`, `wait = 5s`, `lease = 3s` (or `lease = watchdog`), \
     `timeout = 2s`, `max_hold = 10m` (with `lease = watchdog`), `key = <expr>`, `locks = <expr>`, `crate = \"path\"`";

/// What a duration literal may be written as, for error messages.
const UNITS: &str = "a number with a unit: `250ms`, `5s`, `1.5s`, `2m` or `2min`";

/// The parsed arguments. Every field is `None` when the argument was not given.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<LitStr>,
    pub(crate) wait: Option<Duration>,
    pub(crate) lease: Option<Lease>,
    pub(crate) timeout: Option<Duration>,
    /// With `lease = watchdog`: the longest the lock may be held.
    pub(crate) max_hold: Option<Duration>,
    pub(crate) key: Option<Expr>,
    pub(crate) locks: Option<Expr>,
    /// The path of the runtime crate, for a renamed dependency or a re-export.
    pub(crate) krate: Option<Path>,
    /// Errors about values, collected while the parse goes on.
    pub(crate) errors: Option<syn::Error>,
}

/// A duration argument.
pub(crate) enum Duration {
    /// A literal such as `5s`, already converted; it is never re-emitted (it is not valid Rust).
    Literal {
        millis: u64,
        /// The literal as written, for messages (`3s`).
        text: String,
        span: Span,
    },
    /// Any other expression, of type `std::time::Duration` (a `const`, `Duration::from_secs(5)`).
    Expr(Box<Expr>),
}

/// The `lease` argument.
pub(crate) enum Lease {
    Duration(Duration),
    Watchdog,
}

impl Args {
    fn error(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// Stores `value` in `slot`, or records an error if the argument was already given.
    fn set<T>(&mut self, slot: fn(&mut Self) -> &mut Option<T>, value: T, at: Span, arg: &str) {
        if slot(self).is_some() {
            self.error(syn::Error::new(
                at,
                format!(
                    "`{arg}` is given twice; give each argument once. #[concurrency_guard] takes {ACCEPTED}"
                ),
            ));
        } else {
            *slot(self) = Some(value);
        }
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::name) {
                let at = input.parse::<kw::name>()?.span;
                equals(input, "name", "name = \"orders\"")?;
                if !input.peek(LitStr) {
                    return Err(input.error(
                        "`name` takes a string literal, the lock's namespace: `name = \"orders\"`",
                    ));
                }
                let name: LitStr = input.parse()?;
                if name.value().is_empty() {
                    args.error(syn::Error::new(
                        name.span(),
                        "the lock's `name` is empty; give it a namespace: `name = \"orders\"`",
                    ));
                }
                args.set(|a| &mut a.name, name, at, "name");
            } else if lookahead.peek(kw::wait) {
                let at = input.parse::<kw::wait>()?.span;
                equals(input, "wait", "wait = 5s")?;
                match parse_duration(input, "wait")? {
                    Ok(wait) => args.set(|a| &mut a.wait, wait, at, "wait"),
                    Err(e) => args.error(e),
                }
            } else if lookahead.peek(kw::lease) {
                let at = input.parse::<kw::lease>()?.span;
                equals(input, "lease", "lease = 3s")?;
                let lease =
                    if input.peek(kw::watchdog) && (input.peek2(Token![,]) || is_last(input)) {
                        {
                            input.parse::<kw::watchdog>()?;
                            Ok(Lease::Watchdog)
                        }
                    } else {
                        parse_duration(input, "lease")?.map(Lease::Duration)
                    };
                match lease {
                    Ok(Lease::Duration(Duration::Literal { millis: 0, span, .. })) => args.error(
                        syn::Error::new(
                            span,
                            "a lease of zero frees the lock at once; give a positive lease, e.g. `lease = 3s`, or `lease = watchdog`",
                        ),
                    ),
                    Ok(lease) => args.set(|a| &mut a.lease, lease, at, "lease"),
                    Err(e) => args.error(e),
                }
            } else if lookahead.peek(kw::timeout) {
                let at = input.parse::<kw::timeout>()?.span;
                equals(input, "timeout", "timeout = 2s")?;
                match parse_duration(input, "timeout")? {
                    Ok(Duration::Literal { millis: 0, span, .. }) => args.error(syn::Error::new(
                        span,
                        "a timeout of zero leaves the body no time to run; give a positive timeout, e.g. `timeout = 2s`, or leave it out (two thirds of the lease)",
                    )),
                    Ok(timeout) => args.set(|a| &mut a.timeout, timeout, at, "timeout"),
                    Err(e) => args.error(e),
                }
            } else if lookahead.peek(kw::max_hold) {
                let at = input.parse::<kw::max_hold>()?.span;
                equals(input, "max_hold", "max_hold = 10m")?;
                match parse_duration(input, "max_hold")? {
                    Ok(Duration::Literal { millis: 0, span, .. }) => args.error(syn::Error::new(
                        span,
                        "a max_hold of zero ends the body as soon as the lock is taken; give a positive bound, e.g. `max_hold = 10m`",
                    )),
                    Ok(max_hold) => args.set(|a| &mut a.max_hold, max_hold, at, "max_hold"),
                    Err(e) => args.error(e),
                }
            } else if lookahead.peek(kw::key) {
                let at = input.parse::<kw::key>()?.span;
                equals(input, "key", "key = user.id")?;
                let key: Expr = input.parse()?;
                args.set(|a| &mut a.key, key, at, "key");
            } else if lookahead.peek(kw::locks) {
                let at = input.parse::<kw::locks>()?.span;
                equals(input, "locks", "locks = self.locks")?;
                let locks: Expr = input.parse()?;
                args.set(|a| &mut a.locks, locks, at, "locks");
            } else if lookahead.peek(Token![crate]) {
                let at = input.parse::<Token![crate]>()?.span;
                equals(input, "crate", "crate = \"my_locks\"")?;
                match parse_crate(input)? {
                    Ok(path) => args.set(|a| &mut a.krate, path, at, "crate"),
                    Err(e) => args.error(e),
                }
            } else if input.peek(LitStr) {
                let name: LitStr = input.parse()?;
                return Err(syn::Error::new(
                    name.span(),
                    format!(
                        "name the argument: `name = {}`. #[concurrency_guard] takes {ACCEPTED}",
                        quote::ToTokens::to_token_stream(&name)
                    ),
                ));
            } else if input.peek(Ident::peek_any) {
                let unknown = input.call(Ident::parse_any)?;
                return Err(syn::Error::new(
                    unknown.span(),
                    format!(
                        "unknown argument `{unknown}`{}. #[concurrency_guard] takes {ACCEPTED}",
                        hint(&unknown.to_string())
                    ),
                ));
            } else {
                let mut error = lookahead.error();
                error.combine(input.error(format!("#[concurrency_guard] takes {ACCEPTED}")));
                return Err(error);
            }

            if input.is_empty() {
                break;
            }
            if !input.peek(Token![,]) {
                return Err(input.error(format!(
                    "expected `,` between arguments. #[concurrency_guard] takes {ACCEPTED}"
                )));
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    }
}

/// Suggests the right argument for a few names people reach for.
fn hint(unknown: &str) -> &'static str {
    match unknown {
        "ttl" | "lease_time" | "expire" | "expiry" | "lease_ms" => " (did you mean `lease`?)",
        "wait_time" | "wait_for" | "acquire_timeout" | "retry" => " (did you mean `wait`?)",
        "deadline" | "body_timeout" => " (did you mean `timeout`?)",
        "max_lease" | "hold" | "max_time" | "hold_limit" => " (did you mean `max_hold`?)",
        "manager" | "lock_manager" | "locker" | "lock" => " (did you mean `locks`?)",
        "keys" | "by" | "on" => " (did you mean `key`?)",
        "namespace" | "prefix" => " (did you mean `name`?)",
        "crate_name" | "krate" | "lock_guard" => " (did you mean `crate`?)",
        _ => "",
    }
}

/// Parses the `=` after an argument's name.
fn equals(input: ParseStream<'_>, arg: &str, example: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(())
    } else {
        Err(input.error(format!("expected `=` after `{arg}`: `{example}`")))
    }
}

/// Parses the `crate` value: a path, as a string (`"my::locks"`, as tokio's attributes take it)
/// or as it is (`my::locks`). The outer `Result` is a syntax error, the inner one a bad value.
fn parse_crate(input: ParseStream<'_>) -> syn::Result<syn::Result<Path>> {
    const EXPECTED: &str = "`crate` takes the path under which the lock-guard crate is reachable, \
         e.g. `crate = \"my_locks\"` for a dependency renamed to `my_locks`, or `crate = \"crate::locks\"` for a re-export";
    if input.peek(LitStr) {
        let text: LitStr = input.parse()?;
        return Ok(text.parse_with(Path::parse_mod_style).map_err(|_| {
            syn::Error::new(
                text.span(),
                format!("`{}` is not a path; {EXPECTED}", text.value()),
            )
        }));
    }
    let fork = input.fork();
    if fork.call(Path::parse_mod_style).is_ok() && (fork.is_empty() || fork.peek(Token![,])) {
        return Ok(Ok(input.call(Path::parse_mod_style)?));
    }
    let value: Expr = input.parse()?;
    Ok(Err(syn::Error::new(value.span(), EXPECTED)))
}

/// True when the next token is the last of the arguments.
fn is_last(input: ParseStream<'_>) -> bool {
    let fork = input.fork();
    fork.parse::<proc_macro2::TokenTree>().is_ok() && fork.is_empty()
}

/// Parses a duration value. The outer `Result` is a syntax error (stops the parse), the inner one
/// an error about the value (collected).
fn parse_duration(input: ParseStream<'_>, arg: &str) -> syn::Result<syn::Result<Duration>> {
    if input.peek(LitStr) {
        let text: LitStr = input.parse()?;
        return Ok(Err(syn::Error::new(
            text.span(),
            format!(
                "write the duration without quotes: `{arg} = {}`",
                text.value().trim()
            ),
        )));
    }
    let expr: Expr = input.parse()?;
    Ok(match expr {
        Expr::Lit(ExprLit { lit, .. }) => {
            literal_millis(&lit, arg).map(|millis| Duration::Literal {
                millis,
                text: quote::ToTokens::to_token_stream(&lit).to_string(),
                span: lit.span(),
            })
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr: ref inner,
            ..
        }) if matches!(**inner, Expr::Lit(_)) => Err(syn::Error::new(
            expr.span(),
            format!("a duration cannot be negative; `{arg}` takes {UNITS}"),
        )),
        Expr::Path(ExprPath { ref path, .. }) if path.is_ident("watchdog") => Err(syn::Error::new(
            path.span(),
            format!(
                "`watchdog` is a kind of lease: write `lease = watchdog`; `{arg}` takes {UNITS}"
            ),
        )),
        expr => Ok(Duration::Expr(Box::new(expr))),
    })
}

/// Converts a duration literal (`250ms`, `5s`, `1.5s`, `2m`, `2min`) into milliseconds. The literal
/// lexes as a suffixed number: the unit is its suffix.
fn literal_millis(lit: &Lit, arg: &str) -> syn::Result<u64> {
    let (digits, suffix) = match lit {
        Lit::Int(int) => (int.base10_digits(), int.suffix()),
        Lit::Float(float) => (float.base10_digits(), float.suffix()),
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!("`{arg}` takes a duration, {UNITS}"),
            ));
        }
    };
    let unit_millis: u64 = match suffix {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "" => {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "this duration has no unit: write `{arg} = {digits}s` or `{digits}ms`; durations are {UNITS}"
                ),
            ));
        }
        other => {
            return Err(syn::Error::new(
                lit.span(),
                format!("unknown unit `{other}` in `{arg}`: a duration is {UNITS}"),
            ));
        }
    };
    let too_long = || {
        syn::Error::new(
            lit.span(),
            format!("`{arg}` is too long to fit in milliseconds (u64)"),
        )
    };
    match lit {
        Lit::Int(_) => digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_millis))
            .ok_or_else(too_long),
        _ => {
            let value = digits.parse::<f64>().map_err(|_| too_long())? * unit_millis as f64;
            let millis = value.round();
            if !millis.is_finite() || millis >= u64::MAX as f64 {
                return Err(too_long());
            }
            if (value - millis).abs() > 1e-6 {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "`{arg}` is not a whole number of milliseconds; durations have millisecond precision, e.g. `1.5s` or `250ms`"
                    ),
                ));
            }
            // A non-negative whole number below u64::MAX: the cast is exact.
            Ok(millis as u64)
        }
    }
}
