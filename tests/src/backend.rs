//! One test body, run against a real Redis and against [`LockManager::memory`].

use std::fmt;

use lock_guard::{LockKey, LockManager, LockManagerBuilder};

use crate::RedisServer;

/// The lock space a test runs in: a fresh `redis-server`, or one in-memory manager.
///
/// [`manager`](Self::manager) gives a new "service instance" on that space each time: on Redis, a
/// manager with its own pool and subscriber; in memory, a clone of the one manager (the memory
/// backend is shared by clones only).
pub struct Backend {
    kind: Kind,
    configure: Configure,
}

type Configure = Box<dyn Fn(LockManagerBuilder) -> LockManagerBuilder + Send + Sync>;

enum Kind {
    Redis(RedisServer),
    Memory(LockManager),
}

impl Backend {
    /// A fresh `redis-server` of its own, killed when the backend drops.
    pub fn redis() -> Backend {
        Backend {
            kind: Kind::Redis(RedisServer::start()),
            configure: Box::new(|b| b),
        }
    }

    /// A fresh in-memory lock space.
    pub fn memory() -> Backend {
        Backend {
            kind: Kind::Memory(LockManager::memory()),
            configure: Box::new(|b| b),
        }
    }

    /// `"redis"` or `"memory"`, for assertion messages.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Redis(_) => "redis",
            Kind::Memory(_) => "memory",
        }
    }

    /// The server, on the Redis backend.
    pub fn server(&self) -> Option<&RedisServer> {
        match &self.kind {
            Kind::Redis(server) => Some(server),
            Kind::Memory(_) => None,
        }
    }

    /// The server, mutably (to kill or restart it), on the Redis backend.
    pub fn server_mut(&mut self) -> Option<&mut RedisServer> {
        match &mut self.kind {
            Kind::Redis(server) => Some(server),
            Kind::Memory(_) => None,
        }
    }

    /// Sets the configuration of the managers handed out from now on (e.g. a short watchdog
    /// lease). On memory this starts a fresh lock space built with it
    /// (`LockManager::builder().memory()`): call it before taking managers.
    pub fn configure<F>(&mut self, configure: F)
    where
        F: Fn(LockManagerBuilder) -> LockManagerBuilder + Send + Sync + 'static,
    {
        if let Kind::Memory(manager) = &mut self.kind {
            let build = configure(LockManager::builder().memory()).build();
            // A memory manager is built without waiting on anything.
            *manager = futures_util::FutureExt::now_or_never(build)
                .expect("a memory manager builds at once")
                .expect("a valid memory configuration");
        }
        self.configure = Box::new(configure);
    }

    /// A manager on this lock space, as another service instance would have.
    pub async fn manager(&self) -> LockManager {
        match &self.kind {
            Kind::Redis(server) => {
                let built = (self.configure)(server.builder()).build().await;
                built.unwrap_or_else(|e| panic!("a lock manager on {}: {e}", server.port()))
            }
            Kind::Memory(manager) => manager.clone(),
        }
    }

    /// Deletes a lock whoever holds it, as an operator's `DEL` would.
    pub async fn delete_lock(&self, manager: &LockManager, key: &LockKey) {
        match &self.kind {
            Kind::Redis(server) => {
                let deleted: u64 = redis::cmd("DEL")
                    .arg(manager.redis_key(key))
                    .query_async(&mut server.connection().await)
                    .await
                    .expect("DEL the lock key");
                assert_eq!(
                    deleted,
                    1,
                    "the lock key {} should exist",
                    manager.redis_key(key)
                );
            }
            Kind::Memory(_) => {
                let deleted = manager.force_unlock(key).await.expect("force_unlock");
                assert!(deleted, "the lock {key} should be held");
            }
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Redis(server) => f.debug_tuple("Backend::Redis").field(server).finish(),
            Kind::Memory(_) => f.write_str("Backend::Memory"),
        }
    }
}

impl RedisServer {
    /// A manager on this server with the default configuration (`LockManager::redis(url)`; for a
    /// TLS server, trusting [`ca_pem`](Self::ca_pem)).
    ///
    /// # Panics
    ///
    /// If the manager cannot connect.
    pub async fn manager(&self) -> LockManager {
        let built = self.builder().build().await;
        built.unwrap_or_else(|e| panic!("a lock manager on {}: {e}", self.port()))
    }

    /// A manager builder with this server's URL (and, for TLS, its CA) already set.
    pub fn builder(&self) -> LockManagerBuilder {
        let builder = LockManager::builder().url(&self.url());
        match self.is_tls() {
            true => builder.tls_root_certificate_pem(self.ca_pem()),
            false => builder,
        }
    }
}

/// Writes each test twice, as `on_redis::<name>` (a fresh `redis-server` per test) and
/// `on_memory::<name>`, on a 2-worker multi-thread runtime. The body gets a [`Backend`] under the
/// name given in parentheses; items of the enclosing module are in scope.
///
/// ```ignore
/// lock_guard_tests::backend_tests! {
///     /// Doc comments and attributes such as `#[ignore]` are kept.
///     async fn takes_a_lock(backend) {
///         let locks = backend.manager().await;
///         locks.lock(&LockKey::new("k"), LockOptions::new()).await.unwrap();
///     }
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($( $(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block )*) => {
        mod on_redis {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    #[allow(unused_mut)]
                    let mut $backend = $crate::Backend::redis();
                    $body
                }
            )*
        }
        mod on_memory {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    #[allow(unused_mut)]
                    let mut $backend = $crate::Backend::memory();
                    $body
                }
            )*
        }
    };
}
