//! [`LockManager::inspect`] and [`LockManager::list`]: what the backend says about locks, for
//! operators (and the `lock-guard` command-line tool). The reading is in `backend/inspect.rs`.

use std::sync::Arc;

use super::LockManager;
use crate::backend::Keys;
use crate::backend::inspect::{self, LockState, Route};
use crate::error::LockError;
use crate::key::LockKey;

/// How many locks [`LockManager::list`] inspects at once.
const AT_ONCE: usize = 32;

impl LockManager {
    /// What the backend says about one lock right now: whether it is held, how long its lease has
    /// left, the last fencing token issued for it, how many processes (and tasks of this one)
    /// wait, whether a hand-over is reserved. One round trip (on Redlock, one per node, combined
    /// as the majority sees it); it changes nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_guard::LockError> {
    /// use lock_guard::{LockKey, LockManager, LockOptions};
    /// let locks = LockManager::memory();
    /// let key = LockKey::new("invoice").part(7);
    /// let guard = locks.lock(&key, LockOptions::new()).await?;
    /// let state = locks.inspect(&key).await?;
    /// assert!(state.held && state.remaining.is_some());
    /// guard.release().await?;
    /// assert!(!locks.inspect(&key).await?.held);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self, key: &LockKey) -> Result<LockState, LockError> {
        self.inspect_keys(&self.keys(key)).await
    }

    /// [`inspect`](Self::inspect) by the lock's Redis key, as [`list`](Self::list) and
    /// `redis-cli` show it (`lock:{keyword:42}`). A key that is not one of this manager's lock
    /// keys is a `Config` error naming it.
    pub async fn inspect_redis_key(&self, redis_key: &str) -> Result<LockState, LockError> {
        let keys = self.keys_of(redis_key)?;
        self.inspect_keys(&keys).await
    }

    /// Deletes a lock by its Redis key, whoever holds it: see
    /// [`force_unlock`](Self::force_unlock). `Ok(true)` if it was held.
    pub async fn force_unlock_redis_key(&self, redis_key: &str) -> Result<bool, LockError> {
        let keys = self.keys_of(redis_key)?;
        self.inner.backend.force_unlock(&keys).await
    }

    /// The locks held now whose name starts with `name_prefix` (`""`: all of this manager's key
    /// prefix), at most `limit`, each inspected. Found with `SCAN` on every master (never `KEYS`),
    /// reading at most 1,000,000 keys per node, so a listing is bounded whatever the keyspace
    /// holds; locks taken or released meanwhile may or may not appear.
    pub async fn list(&self, name_prefix: &str, limit: usize) -> Result<Vec<LockState>, LockError> {
        let prefix = &self.inner.prefix;
        let pattern = inspect::pattern(prefix, name_prefix);
        let plain = format!("{prefix}:{{{name_prefix}");
        let route = Route::Scan {
            pattern: &pattern,
            prefix: &plain,
            limit,
        };
        let keys = inspect::scanned_keys(self.inner.backend.inspect(route).await)?;
        let mut held = Vec::new();
        for chunk in keys.chunks(AT_ONCE) {
            let states =
                futures_util::future::join_all(chunk.iter().map(|k| self.inspect_redis_key(k)))
                    .await;
            for state in states {
                let state = state?;
                if state.held {
                    held.push(state);
                }
            }
            if held.len() >= limit {
                break;
            }
        }
        held.truncate(limit);
        Ok(held)
    }

    async fn inspect_keys(&self, keys: &Keys) -> Result<LockState, LockError> {
        let answers = self.inner.backend.inspect(Route::Lock(keys)).await;
        let (raws, quorum) = inspect::lock_raws(&keys.lock, answers)?;
        let local = self.inner.waiters.waiting_on(&keys.channel);
        Ok(inspect::combine(&keys.lock, &raws, quorum, local))
    }

    /// The keys of a lock given by its Redis key `{prefix}:{tag}`.
    fn keys_of(&self, redis_key: &str) -> Result<Arc<Keys>, LockError> {
        let start = format!("{}:{{", self.inner.prefix);
        match redis_key
            .strip_prefix(&start)
            .and_then(|rest| rest.strip_suffix('}'))
        {
            Some(tag) if !tag.is_empty() && !tag.contains(['{', '}']) => {
                Ok(Arc::new(Keys::new(&self.inner.prefix, tag)))
            }
            _ => Err(LockError::config(format!(
                "`{redis_key}` is not a lock key of this manager: lock keys look like `{start}<name>:<part>}}`"
            ))),
        }
    }
}
