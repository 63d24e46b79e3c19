//! Test support for lock-guard: real `redis-server` processes on free loopback ports.
//!
//! Every test starts the servers it needs ([`RedisServer::start`], [`RedisServer::start_with`]) and
//! they are killed when dropped; nothing talks to a server the tests did not start (never the one
//! on 6379). `redis-server` must be on `PATH` (Debian/Ubuntu: `apt-get install redis-server`);
//! TLS servers also need `openssl` and `redis-cli`.
//!
//! [`backend_tests!`] writes a test body once and runs it against Redis and against
//! [`LockManager::memory`](lock_guard::LockManager::memory).

mod backend;
mod logs;
mod server;
mod tls;
mod wait;

pub use backend::Backend;
pub use logs::LogCapture;
pub use server::{ACL_PASSWORD, ACL_USER, RedisServer, ServerOptions};
pub use wait::eventually;
