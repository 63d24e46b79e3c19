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
    /// `lock:{name:part}:queue`: the waiting processes' heads, oldest first.
    pub(crate) queue: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, tag: &str) -> Self {
        let lock = format!("{prefix}:{{{tag}}}");
        Keys {
            fence: format!("{lock}:fence"),
            queue: format!("{lock}:queue"),
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

/// How long a released lock stays reserved for the oldest waiting process (`claim:<token>`):
/// long enough for a live process to hear of it and take it, short enough that a process that
/// died meanwhile delays the others only briefly.
pub(crate) const HANDOVER: Duration = Duration::from_millis(100);

/// Who tries to take a lock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asker {
    /// The head of this process's queue for the key: registers in the key's queue of waiting
    /// processes when the lock is held, to be handed the lock in turn.
    pub(crate) head: bool,
    /// More waiters of this process queue behind: the lock is marked as awaited at once, so its
    /// release will announce itself.
    pub(crate) others_wait: bool,
}

pub(crate) enum Backend {
    Redis(redis::RedisBackend),
    Memory(memory::MemoryBackend),
}

impl Backend {
    /// `how` says who asks: see [`Asker`].
    pub(crate) async fn try_acquire(
        &self,
        keys: &Keys,
        token: &str,
        lease: Duration,
        how: Asker,
    ) -> Result<Attempt, LockError> {
        match self {
            // Boxed: the Redis call's future (about 1 KiB) would otherwise be part of every waiter's
            // future for its whole wait (1,000 idle waiters must stay small).
            Backend::Redis(b) => Box::pin(b.try_acquire(keys, token, lease, how)).await,
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

    /// A head that registered in the key's queue gives up waiting: take it out (Redis).
    pub(crate) async fn leave_queue(&self, keys: &Keys, token: &str) -> Result<(), LockError> {
        match self {
            Backend::Redis(b) => Box::pin(b.leave_queue(keys, token)).await,
            Backend::Memory(_) => Ok(()),
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
