//! Test support for lock-guard: real `redis-server` processes on free loopback ports.
//!
//! Every test starts the servers it needs ([`RedisServer::start`], [`RedisServer::start_with`]) and
//! they are killed when dropped; nothing talks to a server the tests did not start (never the one
//! on 6379). `redis-server` must be on `PATH` (Debian/Ubuntu: `apt-get install redis-server`);
//! TLS servers also need `openssl` and `redis-cli`.
//!
//! Fault injection: [`Proxy`] (latency, stalls, cut connections), [`faults`] (`CLIENT PAUSE`,
//! `CLIENT KILL`, `SAVE`), [`Worker`] (worker OS processes to freeze or kill) and
//! [`FencedStore`] (the "database" that rejects stale fencing tokens, with a checker, [`check_history`]).
//!
//! [`backend_tests!`] writes a test body once and runs it against Redis and against
//! [`LockManager::memory`](lock_guard::LockManager::memory).

mod backend;
mod cluster;
pub mod faults;
mod load;
mod logs;
mod proxy;
mod server;
mod store;
mod tls;
mod wait;
mod worker;

pub use backend::Backend;
pub use cluster::RedisCluster;
pub use load::{LoadReport, all_free, load};
pub use logs::LogCapture;
pub use proxy::{Direction, Proxy};
pub use server::{ACL_PASSWORD, ACL_USER, RedisServer, ServerOptions};
pub use store::{CheckReport, Fenced, FencedStore, Outage, Record, Section, check_history};
pub use wait::eventually;
pub use worker::{Worker, field, signal_pid, unix_micros};
