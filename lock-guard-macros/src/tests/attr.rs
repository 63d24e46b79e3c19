use crate::translate::attr::*;
use quote::quote;
use syn::Expr;

fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Args> {
    let args: Args = syn::parse2(tokens)?;
    match args.errors {
        Some(e) => Err(e),
        None => Ok(args),
    }
}

fn err(tokens: proc_macro2::TokenStream) -> String {
    match parse(tokens) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn millis(d: &Option<Duration>) -> u64 {
    match d {
        Some(Duration::Literal { millis, .. }) => *millis,
        _ => panic!("not a literal"),
    }
}

#[test]
fn readme_arguments() {
    let args = parse(quote!(name = "keyword", wait = 5s, lease = 3s)).unwrap();
    assert_eq!(args.name.unwrap().value(), "keyword");
    assert_eq!(millis(&args.wait), 5_000);
    match args.lease {
        Some(Lease::Duration(Duration::Literal {
            millis, ref text, ..
        })) => {
            assert_eq!(millis, 3_000);
            assert_eq!(text, "3s");
        }
        _ => panic!("lease"),
    }
    assert!(args.timeout.is_none() && args.key.is_none() && args.locks.is_none());
}

#[test]
fn every_unit() {
    for (tokens, expected) in [
        (quote!(wait = 250ms), 250),
        (quote!(wait = 5s), 5_000),
        (quote!(wait = 1.5s), 1_500),
        (quote!(wait = 0.25s), 250),
        (quote!(wait = 2m), 120_000),
        (quote!(wait = 2min), 120_000),
        (quote!(wait = 0s), 0),
        (quote!(wait = 1_000ms), 1_000),
        (quote!(wait = 0.5min), 30_000),
    ] {
        let text = tokens.to_string();
        let args = parse(tokens).unwrap();
        assert_eq!(millis(&args.wait), expected, "{text}");
    }
}

#[test]
fn trailing_comma_and_empty() {
    assert!(parse(quote!(name = "a",)).unwrap().name.is_some());
    let empty = parse(quote!()).unwrap();
    assert!(empty.name.is_none());
}

#[test]
fn watchdog_and_expressions() {
    let args = parse(quote!(name = "a", lease = watchdog, timeout = 10s)).unwrap();
    assert!(matches!(args.lease, Some(Lease::Watchdog)));
    assert_eq!(millis(&args.timeout), 10_000);
    let args = parse(quote!(
        name = "a",
        lease = LEASE,
        wait = Duration::from_secs(1)
    ))
    .unwrap();
    assert!(matches!(
        args.lease,
        Some(Lease::Duration(Duration::Expr(_)))
    ));
    assert!(matches!(args.wait, Some(Duration::Expr(_))));
    // `watchdog` followed by more tokens is an expression, e.g. a method call
    let args = parse(quote!(name = "a", lease = watchdog.lease())).unwrap();
    assert!(matches!(
        args.lease,
        Some(Lease::Duration(Duration::Expr(_)))
    ));
}

#[test]
fn key_and_locks_are_expressions() {
    let args = parse(quote!(
        name = "like",
        key = lock_guard::unordered(a, b),
        locks = &state.locks
    ))
    .unwrap();
    assert!(matches!(args.key, Some(Expr::Call(_))));
    assert!(matches!(args.locks, Some(Expr::Reference(_))));
    let args = parse(quote!(name = "t", key = (a, b.id), locks = self.locks)).unwrap();
    assert!(matches!(args.key, Some(Expr::Tuple(_))));
    assert!(matches!(args.locks, Some(Expr::Field(_))));
}

#[test]
fn repeats_are_rejected() {
    let e = err(quote!(name = "a", wait = 1s, wait = 2s));
    assert!(e.contains("`wait` is given twice"), "{e}");
    let e = err(quote!(name = "a", name = "b"));
    assert!(e.contains("`name` is given twice"), "{e}");
}

#[test]
fn unknown_arguments_list_the_valid_ones() {
    let e = err(quote!(name = "a", ttl = 3s));
    assert!(
        e.contains("unknown argument `ttl` (did you mean `lease`?)"),
        "{e}"
    );
    assert!(e.contains("`locks = <expr>`"), "{e}");
    let e = err(quote!(type = 3));
    assert!(e.contains("unknown argument `type`"), "{e}");
    let e = err(quote!("keyword"));
    assert!(e.contains("name the argument: `name = \"keyword\"`"), "{e}");
}

#[test]
fn bad_durations() {
    let e = err(quote!(wait = 5secs));
    assert!(e.contains("unknown unit `secs`"), "{e}");
    let e = err(quote!(wait = 5));
    assert!(e.contains("no unit: write `wait = 5s`"), "{e}");
    let e = err(quote!(wait = "5s"));
    assert!(e.contains("without quotes: `wait = 5s`"), "{e}");
    let e = err(quote!(wait = -5s));
    assert!(e.contains("cannot be negative"), "{e}");
    let e = err(quote!(wait = 0.0001s));
    assert!(e.contains("whole number of milliseconds"), "{e}");
    let e = err(quote!(wait = watchdog));
    assert!(e.contains("write `lease = watchdog`"), "{e}");
    let e = err(quote!(lease = 0s));
    assert!(e.contains("lease of zero"), "{e}");
    let e = err(quote!(timeout = 0ms));
    assert!(e.contains("timeout of zero"), "{e}");
    let e = err(quote!(wait = 99999999999999999999m));
    assert!(e.contains("too long"), "{e}");
}

#[test]
fn value_errors_are_all_reported() {
    let e = parse(quote!(wait = 5x, lease = 3y)).err().unwrap();
    assert_eq!(e.into_iter().count(), 2);
}

#[test]
fn syntax_errors() {
    let e = err(quote!(name "a"));
    assert!(e.contains("expected `=` after `name`"), "{e}");
    let e = err(quote!(name = keyword));
    assert!(e.contains("`name` takes a string literal"), "{e}");
    let e = err(quote!(name = "a" wait = 1s));
    assert!(e.contains("expected `,`"), "{e}");
}

#[test]
fn crate_path() {
    use quote::ToTokens as _;
    for tokens in [
        quote!(crate = "my::locks"),
        quote!(crate = my::locks),
        quote!(name = "a", crate = my::locks, wait = 1s),
    ] {
        let args = parse(tokens).unwrap();
        let path = args.krate.unwrap().to_token_stream().to_string();
        assert_eq!(path, "my :: locks");
    }
    let args = parse(quote!(crate = crate::locks)).unwrap();
    assert!(args.krate.is_some());
    let e = err(quote!(crate = 5));
    assert!(e.contains("`crate` takes the path"), "{e}");
    let e = err(quote!(crate = "my locks"));
    assert!(e.contains("`my locks` is not a path"), "{e}");
    let e = err(quote!(crate = a, crate = b));
    assert!(e.contains("`crate` is given twice"), "{e}");
    let e = err(quote!(crate_name = "a"));
    assert!(e.contains("did you mean `crate`?"), "{e}");
}
