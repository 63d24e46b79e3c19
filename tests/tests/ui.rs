//! Compile tests of `#[concurrency_guard]`: every accepted shape builds (and runs, against the
//! in-memory backend), every misuse fails with the message checked in next to it. The sources of the
//! expansion snapshots (`expand/*.rs`) must build too: a snapshot shows code that compiles.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p lock-guard-tests --test ui`,
//! then read each one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/expand")).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".expanded.rs") {
            t.pass(path);
        }
    }
    t.compile_fail("ui/fail/*.rs");
}
