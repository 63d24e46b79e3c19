//! Expansion snapshots of `#[concurrency_guard]`: `expand/*.rs` expanded by `cargo expand` must
//! match the checked-in `expand/*.expanded.rs`. Needs `cargo-expand`, pinned in `.ci/run`
//! (`cargo install cargo-expand --version 1.0.127 --locked`).
//!
//! After a deliberate change to the expansion: `MACROTEST=overwrite cargo test -p lock-guard-tests
//! --test expand`, then read the diff.

#[test]
fn expansions() {
    if std::env::var_os("MACROTEST").is_some_and(|v| v == "overwrite") {
        macrotest::expand("expand/*.rs");
    } else {
        macrotest::expand_without_refresh("expand/*.rs");
    }
}
