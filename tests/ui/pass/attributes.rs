//! Doc comments and other attributes on the function are kept, inner attributes too; durations in
//! every unit, `lease = watchdog`, and durations given as expressions.

#![deny(missing_docs, unused_variables)]
//! Crate docs.

use std::time::Duration;

use lock_guard::{LockError, LockManager, concurrency_guard};

const LEASE: Duration = Duration::from_secs(4);

/// Documented.
#[must_use = "a guarded call does nothing until awaited"]
#[allow(clippy::needless_pass_by_value)]
#[concurrency_guard(name = "units", wait = 250ms, lease = 2m, timeout = 1.5s)]
pub async fn units(id: String) -> Result<String, LockError> {
    #![allow(unused_mut)]
    let mut id = id;
    Ok(id)
}

/// Minutes, spelled out.
#[concurrency_guard(name = "minutes", wait = 0s, lease = 2min, timeout = 1m)]
pub async fn minutes(id: u8) -> Result<u8, LockError> {
    Ok(id)
}

/// A watchdog lease with a timeout.
#[concurrency_guard(name = "watchdog", lease = watchdog, timeout = 10s)]
pub async fn watchdog(id: u8) -> Result<u8, LockError> {
    Ok(id)
}

/// Durations as expressions.
#[concurrency_guard(name = "exprs", wait = Duration::from_millis(100), lease = LEASE)]
pub async fn exprs(id: u8) -> Result<u8, LockError> {
    Ok(id)
}

/// Names that look like the injected ones do not clash.
#[concurrency_guard(name = "hygiene")]
pub async fn hygiene(__lock_guard_key: u8, __lock_guard_locks: u8) -> Result<u8, LockError> {
    let __lock_guard_return = __lock_guard_key + __lock_guard_locks;
    Ok(__lock_guard_return)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    lock_guard::set_default(LockManager::memory());
    assert_eq!(units("a".into()).await.unwrap(), "a");
    assert_eq!(minutes(1).await.unwrap(), 1);
    assert_eq!(watchdog(2).await.unwrap(), 2);
    assert_eq!(exprs(3).await.unwrap(), 3);
    assert_eq!(hygiene(4, 5).await.unwrap(), 9);
}
