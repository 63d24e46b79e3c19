//! [`LockManager::shutdown`]: what a manager holds, so that a process can give it all back before
//! it exits instead of leaving its locks to their leases.
//!
//! Every guard the manager hands out is registered here until its release has completed — by
//! [`LockGuard::release`], after a guarded body, or by the background release of a dropped guard
//! (which stays registered while it is in flight). `shutdown` refuses new acquisitions, ends the
//! bodies still running under the manager's locks, and releases whatever is still registered,
//! owner-checked, all within its timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::LockManager;
use crate::backend::Keys;
use crate::error::{BackendError, LockError};
use crate::guard::{LockGuard, Token};

/// The locks a manager holds.
#[derive(Default)]
pub(crate) struct Holdings {
    held: Mutex<HashMap<u64, (Arc<Keys>, Token)>>,
    next: AtomicU64,
    closed: AtomicBool,
    closing: Notify,
}

impl std::fmt::Debug for Holdings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Owner tokens are not printed.
        f.debug_struct("Holdings")
            .field("held", &self.lock().len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A guard's entry in its manager's [`Holdings`]: removed when dropped, that is when the guard's
/// release has completed (or the guard was given up because the lock is gone).
#[derive(Debug)]
pub(crate) struct Registration {
    holdings: Arc<Holdings>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.holdings.lock().remove(&self.id);
    }
}

impl Holdings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Keys>, Token)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends when [`LockManager::shutdown`] has begun.
    pub(crate) async fn closing(&self) {
        let notified = self.closing.notified();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    pub(crate) fn register(self: &Arc<Self>, keys: Arc<Keys>, token: Token) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (keys, token));
        Registration {
            holdings: self.clone(),
            id,
        }
    }
}

/// What [`LockManager::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Shutdown {
    /// Locks it released itself (guards still held, bodies it ended, background releases still in
    /// flight); each one was still this manager's.
    pub released: usize,
    /// Locks it found already gone (their lease had run out, or another release got there first).
    pub already_gone: usize,
}

impl LockManager {
    /// Gives back everything this manager (and its clones) holds, before the process exits: so
    /// that another instance can take those locks at once instead of after their leases — up to
    /// the watchdog lease (30 s by default) for watchdog locks.
    ///
    /// From the moment it is called, new acquisitions fail with [`LockError::ShutDown`]; guarded
    /// bodies still running under this manager's locks are dropped (their calls return
    /// `ShutDown`); every lock still held — guards not yet released, releases still being
    /// retried in the background — is released, owner-checked. All of it within `timeout`: past
    /// it, the call returns a timeout error and the leases free what is left. Call it after your
    /// server has drained its requests (e.g. after axum's graceful shutdown), so that it has
    /// nothing left to cut short.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_guard::LockError> {
    /// use std::time::Duration;
    /// use lock_guard::{LockKey, LockManager, LockOptions};
    ///
    /// let locks = LockManager::memory();
    /// let guard = locks.lock(&LockKey::new("report").part(1), LockOptions::new().watchdog()).await?;
    /// let done = locks.shutdown(Duration::from_secs(5)).await?;
    /// assert_eq!(done.released, 1);
    /// assert!(locks.lock(&LockKey::new("report").part(2), LockOptions::new()).await.is_err());
    /// # drop(guard);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> Result<Shutdown, LockError> {
        let holdings = &self.inner.holdings;
        let end = Instant::now() + timeout;
        holdings.closed.store(true, Ordering::Release);
        holdings.closing.notify_waiters();
        // Let the bodies that were just told to stop release their own locks first (they are
        // dropped at their next poll), then release what is left.
        tokio::task::yield_now().await;
        let mut report = Shutdown::default();
        loop {
            let left: Vec<(u64, Arc<Keys>, Token)> = holdings
                .lock()
                .iter()
                .map(|(id, (keys, token))| (*id, keys.clone(), *token))
                .collect();
            if left.is_empty() {
                tracing::debug!(released = report.released, "lock manager shut down");
                return Ok(report);
            }
            let releases = left.iter().map(|(_, keys, token)| {
                tokio::time::timeout_at(end, self.inner.backend.release(keys, token.as_str()))
            });
            let results = futures_util::future::join_all(releases).await;
            for ((id, keys, _), result) in left.iter().zip(results) {
                match result {
                    Ok(Ok(released)) => {
                        if released {
                            report.released += 1;
                        } else {
                            report.already_gone += 1;
                        }
                        tracing::debug!(key = %keys.lock, released, "released at shutdown");
                        holdings.lock().remove(id);
                    }
                    Ok(Err(e)) if Instant::now() < end => {
                        tracing::debug!(key = %keys.lock, error = %e, "release at shutdown failed; retrying");
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(LockError::backend(
                            Some(&keys.lock),
                            BackendError::Timeout {
                                what: "shutdown",
                                timeout,
                            },
                        ));
                    }
                }
            }
            if Instant::now() >= end {
                return Err(LockError::backend(
                    None,
                    BackendError::Timeout {
                        what: "shutdown",
                        timeout,
                    },
                ));
            }
            tokio::time::sleep(Duration::from_millis(10).min(end - Instant::now())).await;
        }
    }

    /// Takes a lock for `lock` and `run`: refused after `shutdown`, measured (feature `metrics`),
    /// registered in the holdings.
    pub(super) async fn take(
        &self,
        keys: Arc<Keys>,
        options: crate::options::LockOptions,
    ) -> Result<LockGuard, LockError> {
        self.check_open(&keys)?;
        let labels = crate::telemetry::Labels::new(&keys, self.inner.deployment);
        let started = Instant::now();
        let acquired = {
            let _waiting = crate::telemetry::Waiting::new(labels);
            self.acquire(keys.clone(), options).await
        };
        crate::telemetry::acquisition(labels, started.elapsed(), acquired.as_ref().map(|_| ()));
        self.register(acquired?).await
    }

    /// Registers a guard just handed out; refuses it (released, `ShutDown`) if the manager has
    /// been shut down meanwhile.
    pub(super) async fn register(&self, mut guard: LockGuard) -> Result<LockGuard, LockError> {
        let holdings = &self.inner.holdings;
        let registration = holdings.register(guard.keys_arc(), guard.owner_token());
        guard.set_registration(registration);
        if holdings.is_closed() {
            let key = guard.key().to_owned();
            guard.release_after_body().await;
            return Err(LockError::ShutDown { key: Some(key) });
        }
        Ok(guard)
    }

    /// `ShutDown` if this manager has been shut down.
    pub(super) fn check_open(&self, keys: &Keys) -> Result<(), LockError> {
        if self.inner.holdings.is_closed() {
            return Err(LockError::ShutDown {
                key: Some(keys.lock.to_string()),
            });
        }
        Ok(())
    }
}
