//! The two backends behind a [`LockManager`](crate::LockManager): Redis and in-process memory.
//!
//! Both answer the same three questions — take the lock if free, release it if still ours, extend
//! it if still ours — and wake local waiters on a release. Waiting, deadlines, reentrancy and the
//! watchdog live above them, in the manager, so the two behave alike.

mod bound;
pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;

/// The Redis names derived from one lock key; all carry the same hash tag (S4).
#[derive(Debug)]
pub(crate) struct Keys {
    /// `lock:{name:part}`: holds the owner token, with the lease as its expiry.
    pub(crate) lock: Arc<str>,
    /// `lock:{name:part}:fence`: the last fencing token issued.
    pub(crate) fence: String,
    /// `lock:{name:part}:released`: where a release is announced.
    pub(crate) channel: Arc<str>,
}

impl Keys {
    pub(crate) fn new(prefix: &str, tag: &str) -> Self {
        let lock = format!("{prefix}:{{{tag}}}");
        Keys {
            fence: format!("{lock}:fence"),
            channel: format!("{lock}:released").into(),
            lock: lock.into(),
        }
    }
}

/// The answer to one attempt to take a lock.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Taken, with this fencing token.
    Acquired(u64),
    /// Held by someone else, whose lease has this much left (when known).
    Held(Option<Duration>),
}

pub(crate) enum Backend {
    Redis(redis::RedisBackend),
    Memory(memory::MemoryBackend),
}

impl Backend {
    /// `others_wait`: more waiters of this process queue behind the caller, so the lock is marked
    /// as awaited at once and its release will announce itself.
    pub(crate) async fn try_acquire(
        &self,
        keys: &Keys,
        token: &str,
        lease: Duration,
        others_wait: bool,
    ) -> Result<Attempt, LockError> {
        match self {
            // Boxed: the Redis call's future is several KiB, and a waiter would carry that space for its
            // whole wait (1,000 idle waiters must stay small).
            Backend::Redis(b) => Box::pin(b.try_acquire(keys, token, lease, others_wait)).await,
            Backend::Memory(b) => Ok(b.try_acquire(keys, token, lease)),
        }
    }

    /// `Ok(true)` when released, `Ok(false)` when the lock was no longer ours.
    pub(crate) async fn release(&self, keys: &Keys, token: &str) -> Result<bool, LockError> {
        match self {
            Backend::Redis(b) => Box::pin(b.release(keys, token)).await,
            Backend::Memory(b) => Ok(b.release(keys, token)),
        }
    }

    /// `Ok(true)` when renewed, `Ok(false)` when the lock was no longer ours.
    pub(crate) async fn renew(
        &self,
        keys: &Keys,
        token: &str,
        lease: Duration,
    ) -> Result<bool, LockError> {
        match self {
            Backend::Redis(b) => Box::pin(b.renew(keys, token, lease)).await,
            Backend::Memory(b) => Ok(b.renew(keys, token, lease)),
        }
    }

    /// Waits until the release channel is subscribed (Redis); immediate in memory.
    pub(crate) async fn subscribed(&self, keys: &Keys) -> Result<(), LockError> {
        match self {
            Backend::Redis(b) => Box::pin(b.subscribed(keys)).await,
            Backend::Memory(_) => Ok(()),
        }
    }
}
