//! [`LockManagerBuilder`]: which deployment, and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::LockManager;
use crate::backend::Backend;
#[cfg(feature = "cluster")]
use crate::backend::cluster::{ClusterBackend, ClusterConfig};
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{RedisBackend, RedisConfig, Replicated};
use crate::backend::redlock::RedlockBackend;
use crate::error::LockError;
use crate::lease;
use crate::waiting::Waiters;

/// Configuration of a [`LockManager`].
///
/// ```no_run
/// # async fn f() -> Result<(), lock_guard::LockError> {
/// use std::time::Duration;
/// let locks = lock_guard::LockManager::builder()
///     .url("redis://127.0.0.1:6379")
///     .pool_size(2)
///     .key_prefix("lock")
///     .command_timeout(Duration::from_secs(1))
///     .watchdog_lease(Duration::from_secs(30))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManagerBuilder {
    deployment: Deployment,
    pool_size: usize,
    prefix: String,
    command_timeout: Duration,
    watchdog_lease: Duration,
    /// `WAIT` for this many replicas, at most this long, after each acquisition.
    replicas: Option<(u64, Duration)>,
    /// Accept servers whose eviction policy can delete held locks.
    allow_eviction: bool,
    /// The user's own pool, for the commands on one server.
    users_pool: Option<deadpool_redis::Pool>,
    #[cfg(feature = "tls")]
    root_cert: Option<Vec<u8>>,
}

/// Where the locks live.
#[derive(Clone)]
enum Deployment {
    /// One Redis server (a primary, possibly with replicas).
    Single(String),
    /// Redlock over independent masters: held while a majority grants it.
    Redlock(Vec<String>),
    /// A Redis Cluster, reached through any of these nodes.
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    /// In this process.
    Memory,
}

/// Multiplexed connections per manager when none is configured.
///
/// A multiplexed connection pipelines every concurrent command into batched writes; more sockets
/// mean smaller batches and more system calls per command. Measured on 2 cores (BENCHMARKS.md,
/// `distinct`, 64 tasks): 2 connections were the best or within 10 % of it in every run; 1 was up
/// to 20 % slower, 32 (the earlier default) half as fast.
pub(crate) const DEFAULT_POOL_SIZE: usize = 2;

impl fmt::Debug for LockManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LockManagerBuilder");
        match &self.deployment {
            Deployment::Single(url) => d.field("url", &redact_url(url)),
            Deployment::Redlock(urls) => d.field(
                "redlock",
                &urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            ),
            #[cfg(feature = "cluster")]
            Deployment::Cluster(urls) => d.field(
                "cluster",
                &urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            ),
            Deployment::Memory => d.field("backend", &"memory"),
        };
        d.field("pool_size", &self.pool_size)
            .field("key_prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("watchdog_lease", &self.watchdog_lease)
            .field("wait_for_replicas", &self.replicas)
            .field("allow_eviction", &self.allow_eviction)
            .field("users_pool", &self.users_pool.as_ref().map(|p| p.status()))
            .finish()
    }
}

impl Default for LockManagerBuilder {
    fn default() -> Self {
        LockManagerBuilder {
            deployment: Deployment::Single("redis://127.0.0.1:6379".to_owned()),
            pool_size: DEFAULT_POOL_SIZE,
            prefix: "lock".to_owned(),
            command_timeout: Duration::from_secs(1),
            watchdog_lease: lease::DEFAULT_WATCHDOG_LEASE,
            replicas: None,
            allow_eviction: false,
            users_pool: None,
            #[cfg(feature = "tls")]
            root_cert: None,
        }
    }
}

impl LockManagerBuilder {
    /// One Redis server at `redis://[user:password@]host:port[/db]`, or `rediss://…` with the
    /// `tls` feature. Default `redis://127.0.0.1:6379`.
    pub fn url(mut self, url: &str) -> Self {
        self.deployment = Deployment::Single(url.to_owned());
        self
    }

    /// Redlock over independent Redis masters (3 or 5, usually), each at a URL as for
    /// [`url`](Self::url): a lock is held while a majority of them grant it, within its validity
    /// (`lease − time taken − drift`); the pool size, timeouts, TLS and key prefix apply to each.
    /// See the crate docs, *Deployments*, for what this does and does not guarantee.
    pub fn redlock<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.deployment =
            Deployment::Redlock(urls.into_iter().map(|u| u.as_ref().to_owned()).collect());
        self
    }

    /// A Redis Cluster, reached through any of its nodes at `urls` (as for [`url`](Self::url);
    /// the client discovers the others). Scripts run on the master of each lock's slot; redirects,
    /// failovers and slot migrations are followed. The pool size does not apply (the cluster client
    /// keeps one multiplexed connection per node). Release notifications use classic pub/sub
    /// through the first URL's node. See the crate docs, *Deployments*, for the guarantees.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.deployment =
            Deployment::Cluster(urls.into_iter().map(|u| u.as_ref().to_owned()).collect());
        self
    }

    /// Locks in this process only, as [`LockManager::memory`]; the connection settings are
    /// ignored.
    pub fn memory(mut self) -> Self {
        self.deployment = Deployment::Memory;
        self
    }

    /// How many multiplexed connections carry the commands (each serves any number of
    /// concurrent commands, pipelined). Default 2, the fastest setting measured on a small
    /// machine. More help only when a connection's socket becomes the bottleneck — many client
    /// cores driving many concurrent calls into a Redis with I/O threads; more than a few cost
    /// throughput, since each socket then carries smaller batches.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The prefix of every key: `{prefix}:{name:part}`. Default `lock`. It may not hold `{` or `}`.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Bound on every Redis command and connect. Default 1 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The lease taken with `lease = watchdog`, renewed every third of it. Default 30 s.
    pub fn watchdog_lease(mut self, lease: Duration) -> Self {
        self.watchdog_lease = lease;
        self
    }

    /// After each acquisition, waits (`WAIT replicas timeout`, pipelined with the acquisition on
    /// the same connection: no extra round trip) until `replicas` replicas have it; with fewer
    /// acknowledgements within `timeout` the lock is released again and the call fails with
    /// [`LockError::NotReplicated`]. Narrows the window in which a failover loses a lock — it does
    /// not close it: replication stays asynchronous, and a replica that did not acknowledge can
    /// still be promoted. `timeout` must be shorter than the command timeout; it is sent in whole
    /// milliseconds, rounded up. Each such acquisition goes on a connection of its own (`WAIT`
    /// blocks its connection), so releases and renewals never wait behind it. For one server with
    /// replicas, or a cluster (the `WAIT` goes to the lock's master); not Redlock, whose nodes are
    /// independent masters. Off by default.
    pub fn wait_for_replicas(mut self, replicas: u64, timeout: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Accept a server whose `maxmemory-policy` can evict keys (any policy but `noeviction`, with
    /// `maxmemory` set). Default `false`: such a server is refused when the manager is built
    /// ([`LockError::Config`] naming the policy) and, after a reconnect, every command on it fails
    /// with a [`LockError::Backend`] saying why, because every lock key carries a TTL and an
    /// evicted lock is handed to a second holder while the first still runs (`volatile-ttl`
    /// evicts the locks closest to their lease end first). The check reads `INFO memory` on every
    /// new connection (on every master of a cluster when the manager is built, on every Redlock
    /// node); a user without permission for `INFO` is not checked (a warning says so).
    ///
    /// Opt in only when the memory limit is never reached, or when losing a lock is acceptable.
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }

    /// Trusts this PEM root certificate for `rediss://` (instead of the system's roots).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_certificate_pem(mut self, pem: Vec<u8>) -> Self {
        self.root_cert = Some(pem);
        self
    }

    /// Sends the lock commands over your own `deadpool-redis` pool instead of connections of the
    /// manager's own; set [`url`](Self::url) to the same server, for the one pub/sub connection
    /// that carries release notifications (a pool's connections cannot subscribe).
    ///
    /// The manager checks out up to [`pool_size`](Self::pool_size) connections, keeps a clone of
    /// each (they are multiplexed: your commands and the locks' share them) and gives the checkout
    /// back at once, so your pool keeps all its connections and no lock command pays for a
    /// checkout (`deadpool-redis` recycles each checkout with a `PING`, one more round trip). A
    /// connection that fails is dropped and another one checked out. Commands are bounded by the
    /// manager's command timeout, whatever the pool's connections are configured with. One
    /// server only: not with `cluster` or [`redlock`](Self::redlock).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_guard::deadpool_redis::{Config, Runtime};
    /// let url = "redis://127.0.0.1:6379";
    /// let pool = Config::from_url(url).create_pool(Some(Runtime::Tokio1))?;
    /// let locks = lock_guard::LockManager::builder().url(url).pool(pool.clone()).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn pool(mut self, pool: deadpool_redis::Pool) -> Self {
        self.users_pool = Some(pool);
        self
    }

    fn check(&self) -> Result<(), LockError> {
        if self.users_pool.is_some() && !matches!(self.deployment, Deployment::Single(_)) {
            return Err(LockError::config(
                "a deadpool-redis pool serves one server: set it with `url` (the same server), \
                 not with `cluster`, `redlock` or `memory`",
            ));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(LockError::config(format!(
                "key prefix `{}` may not contain `{{` or `}}`: they would break the hash tag; \
                 use e.g. `lock` or `myapp:lock`",
                self.prefix
            )));
        }
        if let Deployment::Redlock(urls) = &self.deployment {
            if urls.is_empty() {
                return Err(LockError::config(
                    "Redlock without nodes: give the URLs of 3 or 5 independent masters",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = urls.iter().find(|u| !seen.insert(u.as_str())) {
                return Err(LockError::config(format!(
                    "Redlock node `{}` given twice: each node must be a different, independent \
                     master",
                    redact_url(twice)
                )));
            }
        }
        #[cfg(feature = "cluster")]
        if matches!(&self.deployment, Deployment::Cluster(urls) if urls.is_empty()) {
            return Err(LockError::config(
                "Redis Cluster without nodes: give the URL of at least one node",
            ));
        }
        if let Some((_, timeout)) = self.replicas {
            if matches!(self.deployment, Deployment::Redlock(_)) {
                return Err(LockError::config(
                    "wait_for_replicas applies to one server or a cluster with replicas, not to \
                     Redlock, whose nodes are independent masters",
                ));
            }
            if timeout >= self.command_timeout || timeout.is_zero() {
                return Err(LockError::config(format!(
                    "wait_for_replicas timeout of {timeout:?} must be above zero and below the \
                     command timeout ({:?}), which bounds the acquisition and its WAIT together",
                    self.command_timeout
                )));
            }
        }
        if self.command_timeout.is_zero() {
            return Err(LockError::config(
                "command timeout of zero: every command would time out; use e.g. 1 s",
            ));
        }
        if self.watchdog_lease < Duration::from_millis(30) {
            return Err(LockError::config(format!(
                "watchdog lease of {:?} is too short to renew in time; use 30 ms or more",
                self.watchdog_lease
            )));
        }
        Ok(())
    }

    fn client(&self, url: &str) -> Result<redis::Client, LockError> {
        let config = |e: redis::RedisError| LockError::config(format!("{}: {e}", redact_url(url)));
        #[cfg(feature = "tls")]
        {
            if url.starts_with("rediss://") {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            if let Some(pem) = &self.root_cert {
                return redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                )
                .map_err(config);
            }
        }
        redis::Client::open(url).map_err(config)
    }

    /// The connection settings of one server.
    fn config(&self, url: &str) -> Result<RedisConfig, LockError> {
        Ok(RedisConfig {
            client: self.client(url)?,
            shown_url: redact_url(url),
            pool_size: self.pool_size,
            timeout: self.command_timeout,
            allow_eviction: self.allow_eviction,
            users_pool: None,
        })
    }

    #[cfg(feature = "cluster")]
    fn cluster_config(&self, urls: &[String]) -> Result<ClusterConfig, LockError> {
        let config = |e: redis::RedisError| {
            let shown: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
            LockError::config(format!("{}: {e}", shown.join(", ")))
        };
        #[cfg(feature = "tls")]
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let builder = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(self.command_timeout)
            .response_timeout(self.command_timeout);
        #[cfg(feature = "tls")]
        let builder = match &self.root_cert {
            Some(pem) => builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            }),
            None => builder,
        };
        Ok(ClusterConfig {
            client: builder.build().map_err(config)?,
            subscriber: urls
                .iter()
                .map(|u| self.client(u))
                .collect::<Result<_, _>>()?,
            shown_urls: urls.iter().map(|u| redact_url(u)).collect(),
            timeout: self.command_timeout,
            replicas: self.replicas,
            allow_eviction: self.allow_eviction,
        })
    }

    /// Builds the manager. On Redis it connects first (one `PING`, so a wrong URL or password
    /// fails here, as [`LockError::Backend`]); a configuration that cannot work fails as
    /// [`LockError::Config`] without connecting.
    pub async fn build(self) -> Result<LockManager, LockError> {
        self.check()?;
        match &self.deployment {
            Deployment::Memory => Ok(memory(&self)),
            Deployment::Single(url) => {
                let client = self.client(url)?;
                let waiters = Arc::new(Waiters::new());
                let backend = RedisBackend::connect(
                    RedisConfig {
                        client,
                        shown_url: redact_url(url),
                        pool_size: self.pool_size,
                        timeout: self.command_timeout,
                        allow_eviction: self.allow_eviction,
                        users_pool: self.users_pool.clone(),
                    },
                    &waiters,
                )
                .await?;
                let backend: Arc<dyn Backend> = match self.replicas {
                    Some((n, timeout)) => Arc::new(Replicated::new(backend, n, timeout)?),
                    None => Arc::new(backend),
                };
                Ok(LockManager::from_parts(
                    backend,
                    waiters,
                    self.prefix,
                    self.watchdog_lease,
                ))
            }
            #[cfg(feature = "cluster")]
            Deployment::Cluster(urls) => {
                let waiters = Arc::new(Waiters::new());
                let backend = ClusterBackend::connect(self.cluster_config(urls)?, &waiters).await?;
                Ok(LockManager::from_parts(
                    Arc::new(backend),
                    waiters,
                    self.prefix,
                    self.watchdog_lease,
                ))
            }
            Deployment::Redlock(urls) => {
                let configs = urls
                    .iter()
                    .map(|url| self.config(url))
                    .collect::<Result<Vec<_>, _>>()?;
                let waiters = Arc::new(Waiters::new());
                let backend = RedlockBackend::connect(configs, &waiters).await?;
                Ok(LockManager::from_parts(
                    Arc::new(backend),
                    waiters,
                    self.prefix,
                    self.watchdog_lease,
                ))
            }
        }
    }
}

/// An in-process manager with this builder's key prefix and watchdog lease.
pub(super) fn memory(builder: &LockManagerBuilder) -> LockManager {
    let waiters = Arc::new(Waiters::new());
    LockManager::from_parts(
        Arc::new(MemoryBackend::new(Arc::downgrade(&waiters))),
        waiters,
        builder.prefix.clone(),
        builder.watchdog_lease,
    )
}

/// `url` with any password replaced by `***`: how lock-guard shows URLs in `Debug`, errors and
/// logs, for yours too.
///
/// ```
/// assert_eq!(lock_guard::redact_url("redis://alice:secret@h:6379"), "redis://alice:***@h:6379");
/// assert_eq!(lock_guard::redact_url("rediss://secret@h"), "rediss://***@h");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], user, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://alice:secret@h:1/0"),
            "redis://alice:***@h:1/0"
        );
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("rediss://secret@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
