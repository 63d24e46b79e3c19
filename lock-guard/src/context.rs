//! The locks held by the current call chain: what [`fencing_token`] returns, and what makes a
//! nested call on the same key reentrant.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::lease::Validity;

/// One guarded body running in this call chain.
pub(crate) struct Held {
    /// Which manager took it (the address of its shared state).
    pub(crate) manager: usize,
    pub(crate) key: Arc<str>,
    pub(crate) fence: u64,
    /// The body's deadline (its timeout) and the lease's validity: a nested call ends by them too.
    pub(crate) timeout_at: Option<Instant>,
    pub(crate) validity: Arc<Validity>,
    /// Whether the lease is renewed (running past the validity means the lock was lost).
    pub(crate) renewed: bool,
    /// One nested body at a time: two nested calls driven by one task (`join!`) take turns.
    pub(crate) turn: Semaphore,
    parent: Option<Arc<Held>>,
}

impl Held {
    pub(crate) fn new(
        manager: usize,
        key: Arc<str>,
        fence: u64,
        timeout_at: Option<Instant>,
        validity: Arc<Validity>,
        renewed: bool,
    ) -> Self {
        Held {
            manager,
            key,
            fence,
            timeout_at,
            validity,
            renewed,
            turn: Semaphore::new(1),
            parent: current(),
        }
    }
}

tokio::task_local! {
    static HELD: Option<Arc<Held>>;
}

fn current() -> Option<Arc<Held>> {
    HELD.try_with(|h| h.clone()).ok().flatten()
}

/// The innermost body of this call chain that holds `key` of `manager`, if any.
pub(crate) fn enclosing(manager: usize, key: &str) -> Option<Arc<Held>> {
    let mut node = current();
    while let Some(h) = node {
        if h.manager == manager && &*h.key == key {
            return Some(h);
        }
        node = h.parent.clone();
    }
    None
}

/// Runs `fut` with `held` recorded as the innermost lock of this call chain.
pub(crate) fn scope<F: Future>(held: Held, fut: F) -> impl Future<Output = F::Output> {
    HELD.scope(Some(Arc::new(held)), fut)
}

/// The fencing token of the innermost lock held by the current guarded body, if any.
///
/// Inside a `#[concurrency_guard]` function (or [`LockManager::run`](crate::LockManager::run)) it
/// returns the token of that acquisition: strictly greater than every token issued before for the
/// same key. Hand it to the storage you write to, and have the storage reject a write that carries
/// a smaller token than one it has already seen — that turns away a holder whose lease expired
/// while it was paused:
///
/// ```sql
/// UPDATE accounts SET balance = $1, fence = $2 WHERE id = $3 AND fence < $2
/// -- 0 rows updated: a newer holder already wrote; give up
/// ```
///
/// A task spawned from the body does not inherit the token: it is a different owner.
pub fn fencing_token() -> Option<u64> {
    current().map(|h| h.fence)
}

/// The fencing token of the innermost lock held by the current guarded body, with the lock's key:
/// what a fenced store records.
///
/// Outside a guarded body: [`LockError::NotHeld`](crate::LockError::NotHeld). Every section (one
/// run of a body under one grant) gets a token strictly greater than every token issued before for
/// the key; every call within one section returns the same [`Fence`](crate::Fence). A nested (reentrant) call
/// shares its enclosing section's fence.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_guard::LockError> {
/// use lock_guard::{LockKey, LockManager, LockOptions};
///
/// let locks = LockManager::memory();
/// let key = LockKey::new("invoice").part(42);
/// let fence = locks
///     .run(&key, LockOptions::new(), async { lock_guard::fence().await })
///     .await?;
/// assert_eq!(fence.key(), "lock:{invoice:42}");
/// assert!(lock_guard::fence().await.is_err()); // no lock held here
/// # Ok(())
/// # }
/// ```
pub async fn fence() -> Result<crate::Fence, crate::LockError> {
    match current() {
        Some(h) => Ok(crate::Fence::new(h.key.clone(), h.fence)),
        None => Err(crate::LockError::NotHeld { what: "fence()" }),
    }
}
