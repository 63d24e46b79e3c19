//! What `#[concurrency_guard]` expands to. Not public API: names and signatures may change in any
//! release.

use std::future::Future;

pub use crate::{KeyParts, LockError, LockKey, LockManager, LockOptions};

/// A key with the lock's name.
#[inline]
pub fn key(name: &str) -> LockKey {
    LockKey::new(name)
}

/// Appends the parts of one key argument.
#[inline]
pub fn part<K: KeyParts + ?Sized>(mut key: LockKey, part: &K) -> LockKey {
    part.push_parts(&mut key);
    key
}

/// The manager of `locks = <expr>`, taken before the body moves `self` away.
#[inline]
pub fn locks<M: AsRef<LockManager> + ?Sized>(m: &M) -> Option<LockManager> {
    Some(m.as_ref().clone())
}

/// No `locks = …`: the process default, resolved at call time.
#[inline]
pub fn default_locks() -> Option<LockManager> {
    None
}

/// The attribute's options: `options(wait_ms).lease_ms(ms)` or `.watchdog()`, then
/// `.timeout_ms(ms)`.
#[inline]
pub const fn options(wait_ms: u64) -> LockOptions {
    LockOptions::new().wait(std::time::Duration::from_millis(wait_ms))
}

/// The closure form, as the attribute calls it: `locks` or else the default manager.
pub async fn run<T, E, F>(
    locks: Option<LockManager>,
    key: LockKey,
    options: LockOptions,
    body: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<LockError>,
{
    let manager = match locks.or_else(crate::default_manager) {
        Some(m) => m,
        None => return Err(LockError::NoDefault.into()),
    };
    manager.run(&key, options, body).await
}

// ---- macro support ----

/// The error type of a guarded function: a lock failure must convert into it (S5).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot carry a lock failure: it does not implement `From<lock_guard::LockError>`",
    label = "the error type of a #[concurrency_guard] function must convert from `lock_guard::LockError`",
    note = "add `impl From<lock_guard::LockError> for {Self}` (with thiserror: a variant `Lock(#[from] lock_guard::LockError)`), or return `Result<_, lock_guard::LockError>`"
)]
pub trait GuardError: From<LockError> {}

impl<E: From<LockError>> GuardError for E {}

/// The expansion's fake return edge: `let __lock_guard_return: <the fn's return type> =
/// fake_return(); return __lock_guard_return;` under `if false`. Never called; it gives `return`
/// and `?` in the body the function's return type, and reports an error type without
/// `From<LockError>` on the return type.
#[inline]
pub fn fake_return<T, E: GuardError>() -> Result<T, E> {
    unreachable!("the fake return edge of #[concurrency_guard] sits under `if false`")
}
