//! [`LockManager`]: the handle users keep. Configuration is in `builder.rs`, taking a lock (and
//! waiting for it) in `acquire.rs`, the closure form and the watchdog in `run.rs`.

mod acquire;
mod builder;
mod inspect;
mod run;
mod shutdown;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use builder::{LockManagerBuilder, redact_url};
pub(crate) use shutdown::Registration;
pub use shutdown::Shutdown;

use crate::backend::{Backend, Keys};
use crate::error::LockError;
use crate::key::LockKey;
use crate::options::{Lease, LockOptions};
use crate::waiting::Waiters;

/// Takes and releases locks, on Redis or in memory. Cheap to clone (an `Arc`); `Send + Sync`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_guard::LockError> {
/// use lock_guard::{LockKey, LockManager, LockOptions};
///
/// let locks = LockManager::memory();
/// let key = LockKey::new("keyword").part(42);
/// let guard = locks.lock(&key, LockOptions::new()).await?;
/// assert!(guard.fencing_token() > 0);
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManager {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    waiters: Arc<Waiters>,
    prefix: String,
    watchdog_lease: Duration,
    holdings: Arc<shutdown::Holdings>,
    /// `redis`, `cluster`, `redlock` or `memory`: the metrics' `deployment` label.
    deployment: &'static str,
}

/// What a manager has sent to its backend so far: for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Commands sent on command connections (each script call is one round trip; a `NOSCRIPT`
    /// reload adds one).
    pub commands: u64,
    /// `SUBSCRIBE`/`UNSUBSCRIBE` commands sent on the subscriber connection.
    pub subscriber_commands: u64,
    /// Tasks waiting for a lock in this process right now.
    pub waiters: usize,
}

impl AsRef<LockManager> for LockManager {
    fn as_ref(&self) -> &LockManager {
        self
    }
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LockManager");
        self.inner.backend.describe(&mut d);
        d.field("key_prefix", &self.inner.prefix)
            .field("watchdog_lease", &self.inner.watchdog_lease)
            .finish()
    }
}

static DEFAULT: RwLock<Option<LockManager>> = RwLock::new(None);

/// Sets the manager that `#[concurrency_guard]` functions use when they have no `locks = …`.
/// Replaces any earlier default.
pub fn set_default(manager: LockManager) {
    *DEFAULT.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
}

/// The manager set with [`set_default`], if any.
pub fn default_manager() -> Option<LockManager> {
    DEFAULT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl LockManager {
    /// A manager on the Redis at `url`, with the default configuration (see [`builder`](Self::builder)).
    pub async fn redis(url: &str) -> Result<LockManager, LockError> {
        Self::builder().url(url).build().await
    }

    /// A manager on Redlock over the independent Redis masters at `urls`, with the default
    /// configuration (see [`LockManagerBuilder::redlock`]).
    pub async fn redlock<S: AsRef<str>>(urls: &[S]) -> Result<LockManager, LockError> {
        Self::builder().redlock(urls).build().await
    }

    /// A manager on the Redis Cluster reached through `urls` (any of its nodes), with the default
    /// configuration (see [`LockManagerBuilder::cluster`]).
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub async fn cluster<S: AsRef<str>>(urls: &[S]) -> Result<LockManager, LockError> {
        Self::builder().cluster(urls).build().await
    }

    /// Configures a manager.
    pub fn builder() -> LockManagerBuilder {
        LockManagerBuilder::default()
    }

    /// An in-process manager with the same semantics as Redis (leases, waiting, fencing,
    /// reentrancy): for tests and single-instance programs. Locks are shared by the clones of
    /// this manager only. With other settings: `LockManager::builder().memory()…build()`.
    pub fn memory() -> LockManager {
        builder::memory(&Self::builder())
    }

    fn from_parts(
        backend: Arc<dyn Backend>,
        waiters: Arc<Waiters>,
        prefix: String,
        watchdog_lease: Duration,
    ) -> LockManager {
        let deployment = crate::telemetry::deployment(&*backend);
        LockManager {
            inner: Arc::new(Inner {
                deployment,
                backend,
                waiters,
                prefix,
                watchdog_lease,
                holdings: Arc::default(),
            }),
        }
    }

    /// The Redis key of a lock: `{prefix}:{name:part…}`.
    pub fn redis_key(&self, key: &LockKey) -> String {
        format!("{}:{{{}}}", self.inner.prefix, key.as_str())
    }

    /// What this manager has sent so far.
    pub fn metrics(&self) -> Metrics {
        let counters = self.inner.backend.counters();
        Metrics {
            commands: counters.commands.load(Ordering::Relaxed),
            subscriber_commands: counters.subscriber_commands.load(Ordering::Relaxed),
            waiters: self.inner.waiters.len(),
        }
    }

    /// Deletes a lock whoever holds it, as an operator's `DEL` would (Redisson's `forceUnlock`).
    /// `Ok(true)` if it was held. The holder finds out at its next renewal or release; its body
    /// is *not* stopped, so use this only to clear a lock you know to be abandoned.
    pub async fn force_unlock(&self, key: &LockKey) -> Result<bool, LockError> {
        let keys = self.keys(key);
        self.inner.backend.force_unlock(&keys).await
    }

    /// Identifies this manager (and its clones) in the call chain's held locks.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as *const () as usize
    }

    fn keys(&self, key: &LockKey) -> Arc<Keys> {
        Arc::new(Keys::new(&self.inner.prefix, key.as_str()))
    }

    /// The lease an acquisition asks for. A watchdog lock bounded by `max_hold` shorter than the
    /// watchdog lease asks for no more than `max_hold` (plus the drift allowance), so that Redis
    /// frees it by then even if its holder freezes or dies.
    fn lease_of(&self, options: &LockOptions) -> Duration {
        match (options.lease_kind(), options.max_hold_limit()) {
            (Lease::Fixed(d), _) => d,
            (Lease::Watchdog, None) => self.inner.watchdog_lease,
            (Lease::Watchdog, Some(max_hold)) => {
                let now = tokio::time::Instant::now();
                crate::lease::capped_lease(self.inner.watchdog_lease, now, now + max_hold)
            }
        }
    }
}
