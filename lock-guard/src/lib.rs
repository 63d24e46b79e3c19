//! Distributed locks on Redis, driven by one attribute.
//!
//! ```
//! use lock_guard::{concurrency_guard, LockError, LockManager};
//!
//! #[derive(Debug)]
//! enum AppError {
//!     Lock(LockError),
//! }
//!
//! impl From<LockError> for AppError {
//!     fn from(e: LockError) -> Self {
//!         AppError::Lock(e)
//!     }
//! }
//!
//! /// At most one call per `user` at a time, across every instance sharing the lock service.
//! #[concurrency_guard(name = "keyword", wait = 5s, lease = 3s)]
//! async fn add_keyword(user: u64, word: String) -> Result<String, AppError> {
//!     // check-then-insert, safely: no other call for the same `user` runs right now,
//!     // and this body is dropped at its deadline (2s here), before the lease runs out.
//!     Ok(format!("{user}:{word}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), AppError> {
//! // In production: LockManager::redis("redis://127.0.0.1:6379").await?
//! lock_guard::set_default(LockManager::memory());
//! assert_eq!(add_keyword(7, "rust".into()).await?, "7:rust");
//! # Ok(())
//! # }
//! ```
//!
//! The attribute derives the lock key from the first argument (`lock:{keyword:7}` in Redis), waits
//! for the lock up to `wait` without polling (a release wakes the next waiter through pub/sub), runs
//! the body under a deadline shorter than the lease — so a transaction opened inside commits or rolls
//! back before the lock can expire — and releases the lock after the body, however it ends.
//!
//! # The pieces
//!
//! - [`concurrency_guard`]: the attribute; every argument is described there.
//! - [`LockManager`]: Redis ([`LockManager::redis`], [`LockManager::builder`]) or in-process
//!   ([`LockManager::memory`]); [`set_default`] sets the one the attribute uses without `locks = …`.
//! - [`LockManager::lock`] and [`LockGuard`]: the same lock by hand; [`LockManager::run`]: the closure
//!   form the attribute expands to.
//! - [`fencing_token`]: a number that increases with every acquisition of a key, for storage that
//!   must turn away a holder whose lease expired.
//! - [`LockError`]: what can go wrong, each naming the key.
//!
//! # Semantics
//!
//! - **Mutual exclusion** per key across every process on the same Redis, while the lease holds.
//!   A holder that crashes frees the key when its lease ends.
//! - **Deadline**: the body runs until the earlier of `timeout` after acquisition and the lease's
//!   validity (`lease − (1 % of lease + 2 ms)`, from when the acquire request was sent), on a
//!   monotonic clock. At the deadline the body's future is dropped and the call returns
//!   [`LockError::Deadline`]; the lock is released after. The clock is read before every poll, so
//!   a body is never polled past its deadline — not even its first poll when the acquisition's
//!   reply came back too late, nor when a frozen process wakes with the body and the timer both
//!   ready.
//! - **Waiting** without polling: one subscriber connection per manager; within a process, waiters
//!   queue per key in arrival order and only the head asks Redis; across processes, a release hands
//!   the lock to the process that has waited longest. A call returns within `wait` plus one command
//!   timeout, whatever Redis does.
//! - **Watchdog** (`lease = watchdog`): the lock is renewed every third of the manager's watchdog
//!   lease while the body runs; a renewal that finds it gone drops the body with [`LockError::Lost`],
//!   and so does the validity of the last renewal Redis confirmed running out (a renewal still in
//!   flight does not count).
//! - **Fencing tokens** rise with every acquisition of a key, across restarts and failovers: each is
//!   above both the stored counter and the server clock in microseconds.
//! - **Reentrancy**: a guarded call nested in a guarded body, in the same task, on the same manager
//!   and key, runs at once, under the earlier of its own deadline and the enclosing one. Two nested
//!   bodies driven together (`join!`) take turns. A spawned task is a different owner.
//! - **Cancellation and panics**: a dropped waiter leaves its queue; a dropped holder or a panicking
//!   body releases the lock at once, not at the lease's end. A release that is cancelled or times
//!   out is finished in the background; an acquisition abandoned while its request was in flight
//!   is released on the same connection, so the release cannot overtake it. This work runs on a
//!   small runtime of the library's own, so it neither needs nor dies with the caller's runtime.
//! - **Bounded failures**: every Redis command has a timeout ([`LockManagerBuilder::command_timeout`]);
//!   a Redis that is down or paused gives [`LockError::Backend`], never a hang. Passwords never appear
//!   in `Debug`, `Display` or logs.
//!
//! RELIABILITY.md (in the repository) lists every fault the test suite injects and what holds.
//!
//! # Redis layout
//!
//! For a lock `keyword` on user `42`, with the default prefix:
//!
//! | key | holds |
//! |---|---|
//! | `lock:{keyword:42}` | the owner's random 128-bit token (`+` appended once somebody waits), expiring with the lease |
//! | `lock:{keyword:42}:fence` | the last fencing token, living 60 s (plus the lease) after the last acquisition |
//! | `lock:{keyword:42}:queue` | while processes wait: one entry per waiting process, oldest first |
//! | `lock:{keyword:42}:released` | (a pub/sub channel) a message on each release somebody waited for |
//!
//! `:`, `{`, `}` and `%` inside the name and parts are percent-escaped, so different keys never
//! collide; the braces are a Redis Cluster hash tag that keeps them all in one slot. Acquire,
//! release and renew are Lua scripts called with `EVALSHA` (reloaded on `NOSCRIPT`): an uncontended
//! acquisition and its release are one round trip each. A contended release hands the lock to the
//! oldest waiting process for 100 ms, so processes take turns. The README's "How it works" has the
//! details.
//!
//! # Features
//!
//! - `tls`: `rediss://` URLs, through rustls (ring).
#![warn(missing_docs)]

mod backend;
mod background;
mod context;
mod error;
mod guard;
mod key;
mod lease;
mod manager;
mod options;
mod waiting;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use context::fencing_token;
pub use error::{BackendError, LockError};
pub use guard::LockGuard;
pub use key::{KeyParts, LockKey, Unordered, unordered};
pub use manager::{
    LockManager, LockManagerBuilder, Metrics, default_manager, redact_url, set_default,
};
pub use options::{Lease, LockOptions};

pub use deadpool_redis;
pub use lock_guard_macros::concurrency_guard;
pub use redis;
