//! What `#[concurrency_guard]` expands to. Not public API: names and signatures may change in any
//! release. An expansion names the functions and types here, and `LockOptions` from the public API;
//! this module exports nothing else.

use std::future::Future;
use std::ops::Deref;

use crate::key::TupleParts;
use crate::{KeyParts, LockError, LockKey, LockManager, LockOptions};

/// A key with the lock's name.
#[inline]
pub fn key(name: &str) -> LockKey {
    LockKey::new(name)
}

/// One key value: the expansion writes `part(&value).push_to(&mut key)`.
///
/// A tuple gives one part per element, anything else the parts of its [`KeyParts`] impl. No single
/// trait can hold both (see `TupleParts` in key.rs), so the choice is made by method lookup at the call
/// site: `push_to` is first looked up on [`Part`], whose method exists only for tuples, then, through
/// `Deref`, on [`Whole`], whose method takes any `KeyParts` — and reports a value that is neither
/// with `KeyParts`' message, on the value.
#[inline]
pub fn part<T: ?Sized>(value: &T) -> Part<'_, T> {
    Part(Whole(value))
}

/// A key value, as [`part`] returns it: a tuple's `push_to`.
#[derive(Debug)]
pub struct Part<'a, T: ?Sized>(Whole<'a, T>);

/// A key value that is not a tuple: `KeyParts`' `push_to`.
#[derive(Debug)]
pub struct Whole<'a, T: ?Sized>(&'a T);

impl<T: TupleParts> Part<'_, T> {
    /// Appends one part per element of the tuple.
    #[inline]
    pub fn push_to(&self, key: &mut LockKey) {
        self.0.0.push_parts(key);
    }
}

impl<'a, T: ?Sized> Deref for Part<'a, T> {
    type Target = Whole<'a, T>;

    fn deref(&self) -> &Whole<'a, T> {
        &self.0
    }
}

impl<T: ?Sized> Whole<'_, T> {
    /// Appends the value's parts. The bound is on the method, not the impl, so that a value without
    /// `KeyParts` still finds this method and fails on the bound, with `KeyParts`' message.
    #[inline]
    pub fn push_to(&self, key: &mut LockKey)
    where
        T: KeyParts,
    {
        self.0.push_parts(key);
    }
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

/// The error type of a guarded function: a lock failure must convert into it, so that it can come
/// back as the function's own error.
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
