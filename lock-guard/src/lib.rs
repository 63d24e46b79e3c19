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
//! # Deployments
//!
//! One API over four deployments, chosen when the manager is built; the attribute does not change.
//! What each one promises, and what it does not:
//!
//! | deployment | build it with | holds while | a failure can lose a lock when |
//! |---|---|---|---|
//! | one server | [`LockManager::redis`], [`LockManagerBuilder::url`] | the server keeps the key | the server restarts without the key, or a replica that lacked it is promoted |
//! | one server, replicas acknowledge | [`LockManagerBuilder::wait_for_replicas`] | as above, and `n` replicas had it when granted | every acknowledging replica is lost too, or one that did not acknowledge is promoted |
//! | Redis Cluster (feature `cluster`) | `LockManager::cluster`, `LockManagerBuilder::cluster` | the slot's master keeps the key | as for one server, per slot: a failover to a replica that lacked it |
//! | Redlock | [`LockManager::redlock`], [`LockManagerBuilder::redlock`] | a majority of independent masters keep it | a majority restarts without it within a lease, or clocks drift more than the allowance |
//!
//! - **One server.** Exact while the server runs: the scripts are atomic. Replication is
//!   asynchronous, so a failover to a replica that had not received an acquisition yet lets a
//!   second holder in while the first still runs. The fencing token ([`fencing_token`]) is what
//!   protects storage then.
//! - **Replica acknowledgement** ([`LockManagerBuilder::wait_for_replicas`]`(n, timeout)`): `WAIT n
//!   timeout` goes out with the acquire script in one pipeline (one round trip); fewer
//!   acknowledgements release the lock and fail with [`LockError::NotReplicated`]. This narrows
//!   the window — a failover to an acknowledging replica keeps the lock — but does not close it:
//!   replication stays asynchronous, the orchestrator may promote a replica that did not
//!   acknowledge, and releases and renewals are not waited for. `WAIT` holds up the commands behind
//!   it on its connection for up to `timeout`.
//! - **Redis Cluster**: each lock's keys share one hash tag, so its scripts run on its slot's
//!   master; redirects, failovers and slot migrations are followed by the client. Acquisitions are
//!   idempotent per owner token, so a command the client resends after a reconnect stays correct.
//!   Release notifications use classic `PUBLISH`/`SUBSCRIBE` on a dedicated connection to the first
//!   URL's node (a classic `PUBLISH` reaches every node); sharded pub/sub is avoided because the
//!   `redis` 1.8 cluster connection mistakes a failover's `sunsubscribe` push for a command reply. A
//!   waiter whose notification is lost still retries when the holder's lease ends. The same
//!   asynchronous-replication caveat applies per slot; `wait_for_replicas` works per slot (the
//!   `WAIT` goes to the lock's master, pipelined with the script).
//! - **Redlock** over N independent masters (3 or 5; not replicas of each other): every node is asked
//!   at once, each within the command timeout; the lock is held when a majority granted it, valid
//!   until `lease − elapsed − drift` counted from when the requests were sent (an acquisition whose
//!   validity has run out is given back, never returned); a failed attempt releases everywhere; a
//!   frozen or unreachable minority costs nothing, a majority down fails with
//!   [`LockError::Backend`] within the command timeout. Redlock assumes the nodes' clocks run at
//!   nearly the same rate (within the drift allowance, 1 % of the lease + 2 ms) and that a node
//!   that crashed stays down for at least one lease before it rejoins empty (or persists with
//!   `appendfsync always`); without those, two holders are possible. Waiters hear releases from any
//!   node; splits (two contenders each winning some nodes) both give up and retry after a random
//!   pause.
//!
//! **Fencing tokens** are the larger of the key's counter + 1 and the server's clock in
//! microseconds (`TIME`), so they keep rising across a restart that lost the counter and a failover
//! to a replica that lacked it — provided the clock of the master issuing a token is not behind the
//! clock of the master that issued the previous one by more than the time between the two (in
//! practice: the masters' clocks agree within the failover time). On Redlock the token is the
//! largest a granting majority issued, written back to the majority's nodes, so the next majority —
//! which shares a node with it — issues a larger one, whatever the nodes' clocks say.
//!
//! # Features
//!
//! - `tls`: `rediss://` URLs, through rustls (ring).
//! - `cluster`: Redis Cluster (`LockManager::cluster`), through the `redis` crate's cluster client.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod background;
mod context;
mod error;
mod guard;
mod key;
mod lease;
mod manager;
mod options;
#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-sqlite",
    feature = "sqlx-any"
))]
pub mod sqlx;
mod telemetry;
mod waiting;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::inspect::LockState;
pub use context::{fence, fencing_token, section_deadline};
pub use error::{BackendError, LockError};
pub use guard::{Fence, LockGuard};
pub use key::{KeyParts, LockKey, Unordered, unordered};
pub use manager::{
    LockManager, LockManagerBuilder, Metrics, Shutdown, default_manager, redact_url, set_default,
};
pub use options::{Lease, LockOptions};

pub use deadpool_redis;
pub use lock_guard_macros::concurrency_guard;
pub use redis;
