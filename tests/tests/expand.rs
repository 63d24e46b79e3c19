//! Expansion snapshots of `#[concurrency_guard]`: in every `expand/*.rs`, each function under the
//! attribute is replaced by its expansion and the file is pretty-printed with `prettyplease`; the
//! result must equal the checked-in `expand/*.expanded.rs`. The README's "What the attribute
//! writes" must show the expansion of `expand/readme.rs`, as it is in its snapshot.
//!
//! The expansion is computed in this process, by the macro's own code: a proc-macro crate cannot be
//! linked by a test, so its translation — `lock-guard-macros/src/translate/`, which uses only
//! `proc_macro2`, `syn` and `quote` — is compiled into this test as a module, and called with the
//! attribute's arguments and the function's tokens, as rustc calls the macro. No `cargo expand`
//! needed; it shows the same text (`cargo expand` pretty-prints with prettyplease too).
//!
//! After a deliberate change to the expansion: `LOCK_GUARD_SNAPSHOTS=overwrite cargo test -p
//! lock-guard-tests --test expand` rewrites the snapshots and the README's block; then read the diff.

#[path = "../../lock-guard-macros/src/translate/mod.rs"]
mod translate;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lock_guard::LockOptions;
use quote::quote;
use syn::{File, ImplItem, Item, ItemImpl};

const OVERWRITE: &str = "LOCK_GUARD_SNAPSHOTS";

fn overwrite() -> bool {
    std::env::var_os(OVERWRITE).is_some_and(|v| v == "overwrite")
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("expand")
}

/// Whether an attribute is `#[concurrency_guard(…)]`, under whatever path.
fn is_guard(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "concurrency_guard")
}

/// Expands every guarded function among `items`, in impl blocks and modules too.
fn expand_items(items: Vec<Item>) -> Vec<Item> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Fn(mut func) => {
                let Some(at) = func.attrs.iter().position(is_guard) else {
                    out.push(Item::Fn(func));
                    continue;
                };
                let args = guard_args(func.attrs.remove(at));
                let expanded = translate::concurrency_guard(args, quote!(#func));
                out.extend(syn::parse2::<File>(expanded).expect("an expansion").items);
            }
            Item::Impl(mut imp) => {
                let mut items = Vec::new();
                for item in imp.items {
                    match item {
                        ImplItem::Fn(mut func) if func.attrs.iter().any(is_guard) => {
                            let at = func.attrs.iter().position(is_guard).expect("found");
                            let args = guard_args(func.attrs.remove(at));
                            let expanded = translate::concurrency_guard(args, quote!(#func));
                            let wrapped: ItemImpl =
                                syn::parse2(quote!(impl X { #expanded })).expect("an expansion");
                            items.extend(wrapped.items);
                        }
                        other => items.push(other),
                    }
                }
                imp.items = items;
                out.push(Item::Impl(imp));
            }
            Item::Mod(mut module) => {
                if let Some((brace, items)) = module.content.take() {
                    module.content = Some((brace, expand_items(items)));
                }
                out.push(Item::Mod(module));
            }
            other => out.push(other),
        }
    }
    out
}

/// The attribute's arguments.
fn guard_args(attr: syn::Attribute) -> proc_macro2::TokenStream {
    match attr.meta {
        syn::Meta::List(list) => list.tokens,
        syn::Meta::Path(_) => proc_macro2::TokenStream::new(),
        syn::Meta::NameValue(_) => panic!("`#[concurrency_guard = …]` in a snapshot"),
    }
}

/// A source file with its guarded functions expanded, pretty-printed.
fn render(source: &str) -> String {
    let mut file: File = syn::parse_file(source).expect("a snapshot source parses");
    file.items = expand_items(file.items);
    prettyplease::unparse(&file)
}

/// Compares `actual` with the file at `path`, or writes it there in overwrite mode.
fn check(path: &Path, actual: &str, mismatches: &mut Vec<String>) {
    let expected = fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return;
    }
    if overwrite() {
        fs::write(path, actual).expect("write the snapshot");
    } else {
        mismatches.push(format!(
            "{} differs from the expansion:\n{}\n",
            path.display(),
            diff(&expected, actual)
        ));
    }
}

/// The lines that differ, for the failure message.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                out += &format!(
                    "line {}:\n- {}\n+ {}\n",
                    i + 1,
                    x.unwrap_or(&""),
                    y.unwrap_or(&"")
                );
            }
        }
    }
    out
}

#[test]
fn expansions() {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir())
        .expect("tests/expand")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "rs")
                && !p.to_string_lossy().ends_with(".expanded.rs")
        })
        .collect();
    sources.sort();
    assert!(
        sources.len() >= 6,
        "expected the snapshot sources in {}",
        dir().display()
    );
    let mut mismatches = Vec::new();
    for source in &sources {
        let text = fs::read_to_string(source).expect("read a snapshot source");
        let rendered = render(&text);
        assert!(
            !rendered.contains("concurrency_guard(") && !rendered.contains("compile_error"),
            "{} did not expand cleanly:\n{rendered}",
            source.display()
        );
        check(
            &source.with_extension("expanded.rs"),
            &rendered,
            &mut mismatches,
        );
    }
    assert!(
        mismatches.is_empty(),
        "{}\nAfter a deliberate change: {OVERWRITE}=overwrite cargo test -p lock-guard-tests --test expand",
        mismatches.concat()
    );
}

/// The README's block under "What the attribute writes": its text, and where it lies.
fn readme_block(readme: &str) -> (usize, usize) {
    let section = readme
        .find("## What the attribute writes")
        .expect("the README section");
    let start = section + readme[section..].find("```rust\n").expect("its code block") + 8;
    let end = start + readme[start..].find("```").expect("the block's end");
    (start, end)
}

#[test]
fn the_readme_shows_the_real_expansion() {
    let source = fs::read_to_string(dir().join("readme.rs")).expect("expand/readme.rs");
    let mut file: File = syn::parse_file(&source).expect("parses");
    file.attrs.clear();
    file.items = expand_items(file.items)
        .into_iter()
        .filter(|item| matches!(item, Item::Fn(f) if f.sig.ident == "add_keyword"))
        .collect();
    let function = prettyplease::unparse(&file);
    let snapshot = fs::read_to_string(dir().join("readme.expanded.rs")).unwrap_or_default();
    assert!(
        overwrite() || snapshot.contains(&function),
        "expand/readme.expanded.rs does not hold the expansion of add_keyword: run the `expansions` test first"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = fs::read_to_string(&path).expect("README.md");
    let (start, end) = readme_block(&readme);
    if readme[start..end] == function {
        return;
    }
    if overwrite() {
        fs::write(
            &path,
            format!("{}{function}{}", &readme[..start], &readme[end..]),
        )
        .expect("write README.md");
    } else {
        panic!(
            "README.md's \"What the attribute writes\" is not the expansion of expand/readme.rs:\n{}\n\
             After a deliberate change: {OVERWRITE}=overwrite cargo test -p lock-guard-tests --test expand",
            diff(&readme[start..end], &function)
        );
    }
}

/// The macro keeps one copy of a runtime default, the lease, to reject `timeout = 5s` without a
/// `lease` at compile time: it must be the runtime's.
#[test]
fn the_macro_knows_the_runtime_default_lease() {
    let lease = Duration::from_millis(translate::validate::DEFAULT_LEASE_MS);
    assert_eq!(LockOptions::new(), LockOptions::new().lease(lease));
    // and the comparison can tell leases apart
    assert_ne!(
        LockOptions::new(),
        LockOptions::new().lease(lease + Duration::from_millis(1))
    );
}
