//! lock-guard
mod backend;
mod context;
mod error;
mod guard;
mod key;
mod manager;
mod options;
mod queue;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use context::fencing_token;
pub use error::{BackendError, LockError};
pub use guard::LockGuard;
pub use key::{KeyParts, LockKey, Unordered, unordered};
pub use manager::{LockManager, LockManagerBuilder, Metrics, default_manager, set_default};
pub use options::{Lease, LockOptions};

pub use deadpool_redis;
pub use lock_guard_macros::concurrency_guard;
pub use redis;
