//! The lock services behind a [`LockManager`](crate::LockManager): one Redis server, in-process
//! memory (and, beside them, other deployments). Each implements [`Backend`].
//!
//! A backend answers four questions — take the lock if free (or handed to the asker), release it if
//! still ours, extend it if still ours, forget a waiter that gave up — and delivers release
//! notifications to the process's [`Waiters`](crate::waiting::Waiters). Waiting, deadlines,
//! reentrancy and the watchdog live above, in the manager, so every backend behaves alike.

#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod inspect;
pub(crate) mod memory;
pub(crate) mod protocol;
pub(crate) mod redis;
pub(crate) mod redlock;
mod redlock_subscriptions;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::LockError;

/// A boxed, `Send` future: backends are called through `dyn Backend`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The Redis names derived from one lock key; all carry the same hash tag, so in a cluster they
/// live in one slot.
#[derive(Debug, Clone)]
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

/// One try to take a lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Try<'a> {
    pub(crate) keys: &'a Keys,
    /// The owner token (32 hex digits).
    pub(crate) token: &'a str,
    pub(crate) lease: Duration,
    /// Register in the key's queue of waiting processes when the lock is held, to be handed the
    /// lock in turn (this process's head waiter does; a try-once call does not).
    pub(crate) register: bool,
    /// An earlier try registered: on success, leave the queue.
    pub(crate) queued: bool,
    /// More waiters of this process queue behind: the lock is marked as awaited at once, so its
    /// release will announce itself.
    pub(crate) others_wait: bool,
    /// The least fencing token wanted (Redlock proposes one value for every node of a majority).
    pub(crate) fence_floor: Option<u64>,
}

/// The answer to one try.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attempt {
    /// Taken, with this fencing token, and surely ours until `valid_until` (monotonic clock): the
    /// lease counted from when the request was sent, less the drift allowance.
    Acquired { fence: u64, valid_until: Instant },
    /// Held by someone else, whose lease has this much left (when known).
    Held(Option<Duration>),
}

pub(crate) use crate::waiting::HANDOVER;

/// What a backend has sent, for [`Metrics`](crate::Metrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Commands on command connections (a script call is one; a `NOSCRIPT` reload adds one).
    pub(crate) commands: AtomicU64,
    /// `SUBSCRIBE`/`UNSUBSCRIBE` commands on the subscriber connection.
    pub(crate) subscriber_commands: AtomicU64,
}

/// A lock service.
///
/// Every method is bounded in time by the backend's command timeout (an error after it, never a
/// hang). `try_acquire` must never leave the lock held by nobody: when its future is dropped, or it
/// fails, after the request may have reached the server, the backend releases the token itself
/// (owner-checked, so harmless when it was not granted) in an order the server cannot invert.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Takes the lock if it is free or reserved for this token.
    fn try_acquire<'a>(&'a self, req: Try<'a>) -> BoxFuture<'a, Result<Attempt, LockError>>;

    /// `Ok(true)` when released, `Ok(false)` when the lock was no longer ours. Announces the release
    /// when somebody waits, handing the lock to the oldest waiting process.
    fn release<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, LockError>>;

    /// `Ok(true)` when extended to `lease` from now, `Ok(false)` when the lock was no longer ours.
    fn renew<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>>;

    /// A registered head gave up waiting: take it out of the key's queue of waiting processes.
    fn leave_queue<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), LockError>>;

    /// Deletes the lock whoever holds it, as an operator's `DEL` would. `Ok(true)` if it was held.
    fn force_unlock<'a>(&'a self, keys: &'a Keys) -> BoxFuture<'a, Result<bool, LockError>>;

    /// The bound on one command.
    fn command_timeout(&self) -> Duration;

    /// What has been sent so far.
    fn counters(&self) -> &Counters;

    /// The backend's part of the manager's `Debug`: kind and redacted address.
    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>);

    /// Inspection: runs a read-only command where `route` says, one answer per node asked (see
    /// `inspect.rs`); or reads the in-process state for the memory backend.
    fn inspect<'a>(&'a self, route: inspect::Route<'a>) -> BoxFuture<'a, inspect::Answers>;
}
