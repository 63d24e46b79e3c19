//! The locks held by the current call chain (S11 `fencing_token()`, S13 reentrancy).

use std::future::Future;
use std::sync::Arc;

pub(crate) struct Held {
    pub(crate) manager: usize,
    pub(crate) key: Arc<str>,
    pub(crate) fence: u64,
    parent: Option<Arc<Held>>,
}

tokio::task_local! {
    static HELD: Option<Arc<Held>>;
}

fn current() -> Option<Arc<Held>> {
    HELD.try_with(|h| h.clone()).ok().flatten()
}

/// Whether the current call chain already holds `key` of `manager`.
pub(crate) fn holds(manager: usize, key: &str) -> bool {
    let mut node = current();
    while let Some(h) = node {
        if h.manager == manager && &*h.key == key {
            return true;
        }
        node = h.parent.clone();
    }
    false
}

/// Runs `fut` with `key` of `manager` recorded as held by this call chain.
pub(crate) fn scope<F: Future>(
    manager: usize,
    key: Arc<str>,
    fence: u64,
    fut: F,
) -> impl Future<Output = F::Output> {
    let node = Arc::new(Held {
        manager,
        key,
        fence,
        parent: current(),
    });
    HELD.scope(Some(node), fut)
}

/// The fencing token of the innermost lock held by the current guarded body, if any (S11).
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
