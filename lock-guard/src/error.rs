//! [`LockError`]: what can go wrong while configuring a manager, or taking, holding or releasing a
//! lock.

use std::time::Duration;

/// Why a guarded call did not run its body to completion under the lock.
///
/// Every variant that concerns one lock names its Redis key, so that an operator can find it with
/// `redis-cli`. The enum is `#[non_exhaustive]`: match it with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock stayed held by another owner for the whole `wait`.
    #[error("lock `{key}` not acquired: still held by another owner after waiting {waited:?}")]
    NotAcquired {
        /// The Redis key of the lock.
        key: String,
        /// How long the call waited before giving up.
        waited: Duration,
    },
    /// The body did not finish before its deadline (the `timeout`, or the lease's validity, whichever
    /// came first); it was dropped, and the lock released after it.
    #[error("guarded body for lock `{key}` exceeded its deadline of {timeout:?} and was dropped")]
    Deadline {
        /// The Redis key of the lock.
        key: String,
        /// The deadline the body had, counted from the acquisition.
        timeout: Duration,
    },
    /// With `lease = watchdog`: a renewal found the lock gone (expired, deleted or taken by someone
    /// else). The body was dropped.
    #[error(
        "lock `{key}` was lost while the body ran (a renewal found it gone); the body was dropped"
    )]
    Lost {
        /// The Redis key of the lock.
        key: String,
    },
    /// The lock was held for its `max_hold` (see [`LockOptions::max_hold`](crate::LockOptions::max_hold)):
    /// renewals stopped, the body was dropped, and the lock released after it.
    #[error(
        "lock `{key}` reached its max_hold of {max_hold:?}: renewals stopped and the body was dropped"
    )]
    MaxHold {
        /// The Redis key of the lock.
        key: String,
        /// The bound that was reached, counted from the acquisition.
        max_hold: Duration,
    },
    /// The manager was shut down ([`LockManager::shutdown`](crate::LockManager::shutdown)): no new
    /// acquisition is made, and a body that was still running under one of its locks was dropped
    /// (the lock released after it).
    #[error("lock manager shut down{}", key_suffix(.key))]
    ShutDown {
        /// The Redis key concerned.
        key: Option<String>,
    },
    /// The lock backend failed: Redis unreachable, slow beyond the command timeout, a pool error,
    /// TLS, I/O. The source tells which.
    #[error("lock backend failed{}: {source}", key_suffix(.key))]
    Backend {
        /// The Redis key concerned, when the failure happened for one lock.
        key: Option<String>,
        /// What failed.
        #[source]
        source: BackendError,
    },
    /// The lock was taken, but fewer replicas than asked for acknowledged it within the timeout of
    /// `LockManagerBuilder::wait_for_replicas`; it was released again,
    /// since a failover could lose it.
    #[error("lock `{key}` acknowledged by {acked} replica(s), {wanted} wanted; it was released")]
    NotReplicated {
        /// The Redis key of the lock.
        key: String,
        /// How many replicas acknowledged the acquisition.
        acked: u64,
        /// How many were asked for.
        wanted: u64,
    },
    /// The manager's configuration is invalid (a malformed URL, a bad key prefix, …): nothing was
    /// sent anywhere.
    #[error("invalid lock manager configuration: {reason}")]
    Config {
        /// What is wrong, and what to write instead.
        reason: String,
    },
    /// A guarded function was called without `locks = …` and no default manager was set with
    /// [`set_default`](crate::set_default).
    #[error(
        "no lock manager: pass `locks = …` to #[concurrency_guard] or call lock_guard::set_default(manager) at startup"
    )]
    NoDefault,
    /// A fencing token (or a fenced transaction) was asked for outside a guarded body: no lock is
    /// held by this task. Call it inside a `#[concurrency_guard]` function or
    /// [`LockManager::run`](crate::LockManager::run), or use [`LockGuard::fence`](crate::LockGuard::fence).
    #[error(
        "no lock is held by this task: {what} must be called inside a #[concurrency_guard] body or LockManager::run (or use LockGuard::fence)"
    )]
    NotHeld {
        /// What was asked for.
        what: &'static str,
    },
}

fn key_suffix(key: &Option<String>) -> String {
    match key {
        Some(k) => format!(" for lock `{k}`"),
        None => String::new(),
    }
}

impl LockError {
    /// `true` for [`LockError::NotAcquired`]: somebody else holds the lock (a conflict, not a fault).
    pub fn is_not_acquired(&self) -> bool {
        matches!(self, LockError::NotAcquired { .. })
    }

    /// `true` for [`LockError::Backend`]: the lock service itself failed.
    pub fn is_backend(&self) -> bool {
        matches!(self, LockError::Backend { .. })
    }

    /// `true` when a Redis command or a pool checkout did not answer within the command timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Backend { source, .. } if source.is_timeout())
    }

    /// The Redis key the error concerns, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            LockError::NotAcquired { key, .. }
            | LockError::Deadline { key, .. }
            | LockError::Lost { key }
            | LockError::MaxHold { key, .. }
            | LockError::NotReplicated { key, .. } => Some(key),
            LockError::Backend { key, .. } | LockError::ShutDown { key } => key.as_deref(),
            LockError::NoDefault | LockError::Config { .. } | LockError::NotHeld { .. } => None,
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        LockError::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn backend(key: Option<&str>, source: BackendError) -> Self {
        LockError::Backend {
            key: key.map(str::to_owned),
            source,
        }
    }
}

/// The source of a [`LockError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A Redis command failed (connection refused or dropped, I/O, TLS, a script error, …).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A command or a connection checkout did not complete within the command timeout.
    #[error("{what} did not complete within the command timeout of {timeout:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The command timeout in force.
        timeout: Duration,
    },
    /// The connection pool failed to hand out a connection.
    #[error("connection pool: {0}")]
    Pool(String),
    /// Redlock: too few nodes answered for a majority to grant (or refuse) the lock — nodes down,
    /// frozen or unreachable, not holders.
    #[error(
        "{answered} of {nodes} Redlock nodes answered, a majority of {needed} is needed ({cause})"
    )]
    NoQuorum {
        /// Nodes that answered.
        answered: usize,
        /// The majority.
        needed: usize,
        /// All nodes.
        nodes: usize,
        /// Whether every node that did not answer timed out (rather than failing otherwise).
        timed_out: bool,
        /// What the first silent node's failure was.
        cause: String,
    },
    /// An unexpected reply from Redis.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl BackendError {
    /// `true` when a command or checkout timed out.
    pub fn is_timeout(&self) -> bool {
        match self {
            BackendError::Timeout { .. } => true,
            BackendError::Redis(e) => e.is_timeout(),
            BackendError::NoQuorum { timed_out, .. } => *timed_out,
            _ => false,
        }
    }
}
