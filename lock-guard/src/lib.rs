//! lock-guard
mod error;
mod key;
mod options;
pub use error::{BackendError, LockError};
pub use key::{KeyParts, LockKey, Unordered, unordered};
pub use options::{Lease, LockOptions};
pub use lock_guard_macros::concurrency_guard;
pub use deadpool_redis;
pub use redis;
