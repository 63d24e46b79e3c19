//! `#[concurrency_guard(crate = …)]` with lock-guard renamed to `locks` (see Cargo.toml) and
//! re-exported by a facade module: every path the attribute writes goes through `crate`.

/// A crate's own facade over its lock library.
pub mod facade {
    pub use locks::*;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use locks::{LockError, LockKey, LockManager, LockOptions};

    /// Holds the lock `pair:<a>:<b>`, through the renamed dependency, and reports whether another
    /// owner could take it meanwhile.
    #[locks::concurrency_guard(crate = locks, name = "pair", wait = 0s, locks = locks)]
    pub async fn through_renamed(
        pair: (u32, &str),
        locks: &LockManager,
    ) -> Result<bool, LockError> {
        free(locks, LockKey::new("pair").part(pair.0).part(pair.1)).await
    }

    /// The same, through the facade, with the path given as a string.
    #[crate::facade::concurrency_guard(crate = "crate::facade", name = "pair", wait = 0s, locks = locks)]
    pub async fn through_facade(pair: (u32, &str), locks: &LockManager) -> Result<bool, LockError> {
        free(locks, LockKey::new("pair").part(pair.0).part(pair.1)).await
    }

    /// Whether another owner, a task of its own, could take `key` at once.
    async fn free(locks: &LockManager, key: LockKey) -> Result<bool, LockError> {
        let locks = locks.clone();
        let other = tokio::spawn(async move {
            match locks
                .lock(&key, LockOptions::new().wait(Duration::ZERO))
                .await
            {
                Ok(guard) => guard.release().await.map(|_| true),
                Err(e) if e.is_not_acquired() => Ok(false),
                Err(e) => Err(e),
            }
        });
        other.await.expect("the other owner's task")
    }

    #[tokio::test]
    async fn a_renamed_dependency_and_a_facade() {
        let locks = LockManager::memory();
        // held during the body, under the key of the tuple's two parts; free after
        assert!(!through_renamed((7, "x"), &locks).await.unwrap());
        assert!(!through_facade((7, "x"), &locks).await.unwrap());
        let key = LockKey::new("pair").part(7).part("x");
        assert!(free(&locks, key).await.unwrap());
    }
}
