//! Compile tests of `#[concurrency_guard]`: every accepted shape builds (and runs, against the
//! in-memory backend), every misuse fails with the message checked in next to it.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p lock-guard-tests --test ui`,
//! then read each one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
