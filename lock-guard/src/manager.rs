//! [`LockManager`]: the entry point — backends, configuration, acquisition and the closure form
//! (S7, S8, S10, S12, S13).

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{Counters, RedisBackend};
use crate::backend::{Asker, Attempt, Backend, Keys};
use crate::context;
use crate::error::{BackendError, LockError};
use crate::guard::{LockGuard, Token};
use crate::key::LockKey;
use crate::options::{Lease, LockOptions, drift};
use crate::queue::Queues;

/// Takes and releases locks, on Redis or in memory. Cheap to clone (an `Arc`); `Send + Sync`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lock_guard::LockError> {
/// use lock_guard::{LockKey, LockManager, LockOptions};
///
/// let locks = LockManager::memory();
/// let key = LockKey::new("keyword").part(42);
/// let guard = locks.lock(&key, LockOptions::new()).await?;
/// assert!(guard.fencing_token() > 0);
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    queues: Arc<Queues>,
    prefix: String,
    watchdog_lease: Duration,
    /// The URL with its password redacted, for `Debug`.
    shown_url: Option<String>,
    counters: Arc<Counters>,
}

/// What a manager has sent to Redis so far: for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Commands sent on pooled connections (each script call is one round trip; a `NOSCRIPT`
    /// reload adds one).
    pub commands: u64,
    /// `SUBSCRIBE`/`UNSUBSCRIBE` commands sent on the subscriber connection.
    pub subscriber_commands: u64,
    /// Tasks waiting for a lock in this process right now.
    pub waiters: usize,
}

impl AsRef<LockManager> for LockManager {
    fn as_ref(&self) -> &LockManager {
        self
    }
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LockManager");
        match &self.inner.backend {
            Backend::Redis(_) => d.field("backend", &"redis"),
            Backend::Memory(_) => d.field("backend", &"memory"),
        };
        if let Some(url) = &self.inner.shown_url {
            d.field("url", url);
        }
        d.field("key_prefix", &self.inner.prefix)
            .field("watchdog_lease", &self.inner.watchdog_lease)
            .finish()
    }
}

/// Configuration of a Redis [`LockManager`].
///
/// ```no_run
/// # async fn f() -> Result<(), lock_guard::LockError> {
/// use std::time::Duration;
/// let locks = lock_guard::LockManager::builder()
///     .url("redis://127.0.0.1:6379")
///     .pool_size(16)
///     .key_prefix("lock")
///     .command_timeout(Duration::from_secs(1))
///     .watchdog_lease(Duration::from_secs(30))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManagerBuilder {
    url: String,
    pool_size: usize,
    prefix: String,
    command_timeout: Duration,
    watchdog_lease: Duration,
    #[cfg(feature = "tls")]
    root_cert: Option<Vec<u8>>,
}

impl fmt::Debug for LockManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManagerBuilder")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("watchdog_lease", &self.watchdog_lease)
            .finish()
    }
}

impl Default for LockManagerBuilder {
    fn default() -> Self {
        LockManagerBuilder {
            url: "redis://127.0.0.1:6379".to_owned(),
            pool_size: 32,
            prefix: "lock".to_owned(),
            command_timeout: Duration::from_secs(1),
            watchdog_lease: Duration::from_secs(30),
            #[cfg(feature = "tls")]
            root_cert: None,
        }
    }
}

impl LockManagerBuilder {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` with the `tls` feature.
    /// Default `redis://127.0.0.1:6379`.
    pub fn url(mut self, url: &str) -> Self {
        url.clone_into(&mut self.url);
        self
    }

    /// Most pooled connections (each is multiplexed). Default 32.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The prefix of every key: `{prefix}:{name:part}`. Default `lock`. It may not hold `{` or `}`.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Bound on every Redis command, connection checkout and connect. Default 1 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The lease taken with `lease = watchdog`, renewed every third of it. Default 30 s.
    pub fn watchdog_lease(mut self, lease: Duration) -> Self {
        self.watchdog_lease = lease;
        self
    }

    /// Trusts this PEM root certificate for `rediss://` (instead of the system's roots).
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate_pem(mut self, pem: Vec<u8>) -> Self {
        self.root_cert = Some(pem);
        self
    }

    fn client(&self) -> Result<redis::Client, LockError> {
        let shown = redact_url(&self.url);
        let config = |e: redis::RedisError| {
            LockError::backend(
                None,
                BackendError::Config(format!("{shown}: {:?}", e.kind())),
            )
        };
        #[cfg(feature = "tls")]
        {
            if self.url.starts_with("rediss://") {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            if let Some(pem) = &self.root_cert {
                return redis::Client::build_with_tls(
                    self.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                )
                .map_err(config);
            }
        }
        redis::Client::open(self.url.as_str()).map_err(config)
    }

    /// An in-process manager ([`LockManager::memory`]) with this builder's key prefix and
    /// watchdog lease; the Redis settings are ignored.
    pub fn build_memory(self) -> LockManager {
        let queues = Arc::new(Queues::new(None));
        LockManager {
            inner: Arc::new(Inner {
                backend: Backend::Memory(MemoryBackend::new(Arc::downgrade(&queues))),
                queues,
                prefix: self.prefix,
                watchdog_lease: self.watchdog_lease,
                shown_url: None,
                counters: Arc::new(Counters::default()),
            }),
        }
    }

    /// Connects (one `PING`, so a wrong URL or password fails here) and starts the subscriber task
    /// on the current tokio runtime.
    pub async fn build(self) -> Result<LockManager, LockError> {
        if self.prefix.contains(['{', '}']) {
            return Err(LockError::backend(
                None,
                BackendError::Config(format!(
                    "key prefix `{}` may not contain `{{` or `}}`: they would break the hash tag",
                    self.prefix
                )),
            ));
        }
        let client = self.client()?;
        let counters = Arc::new(Counters::default());
        // The queues call back into the backend's subscriber; the backend wakes the queues.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let queues = Arc::new(Queues::new(Some(Box::new(
            RedisBackend::subscription_hook(tx.clone()),
        ))));
        let (backend, task) = RedisBackend::new(
            client,
            self.pool_size,
            self.command_timeout,
            &queues,
            counters.clone(),
            tx,
            rx,
        )?;
        backend.ping().await?;
        tokio::spawn(task.run());
        Ok(LockManager {
            inner: Arc::new(Inner {
                backend: Backend::Redis(backend),
                queues,
                prefix: self.prefix,
                watchdog_lease: self.watchdog_lease,
                shown_url: Some(redact_url(&self.url)),
                counters,
            }),
        })
    }
}

/// The URL with any password replaced by `***`, for logs and `Debug` (S15).
pub(crate) fn redact_url(url: &str) -> String {
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

static DEFAULT: RwLock<Option<LockManager>> = RwLock::new(None);

/// Sets the manager that `#[concurrency_guard]` functions use when they have no `locks = …`
/// (S12). Replaces any earlier default.
pub fn set_default(manager: LockManager) {
    *DEFAULT.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
}

/// The manager set with [`set_default`], if any.
pub fn default_manager() -> Option<LockManager> {
    DEFAULT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// How the body of a guarded call ended.
enum Outcome<T> {
    Done(T),
    Deadline(Duration),
    Lost,
}

impl LockManager {
    /// A manager on the Redis at `url`, with the default configuration (see [`builder`](Self::builder)).
    pub async fn redis(url: &str) -> Result<LockManager, LockError> {
        Self::builder().url(url).build().await
    }

    /// Configures a Redis manager.
    pub fn builder() -> LockManagerBuilder {
        LockManagerBuilder::default()
    }

    /// An in-process manager with the same semantics as Redis (leases, waiting, fencing,
    /// reentrancy): for tests and single-instance programs. Locks are shared by the clones of
    /// this manager only.
    pub fn memory() -> LockManager {
        Self::builder().build_memory()
    }

    /// The Redis key of a lock: `{prefix}:{name:part…}` (S4).
    pub fn redis_key(&self, key: &LockKey) -> String {
        format!("{}:{{{}}}", self.inner.prefix, key.as_str())
    }

    /// What this manager has sent to Redis so far.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            commands: self.inner.counters.commands.load(Ordering::Relaxed),
            subscriber_commands: self
                .inner
                .counters
                .subscriber_commands
                .load(Ordering::Relaxed),
            waiters: self.inner.queues.len(),
        }
    }

    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Deletes a lock whoever holds it — as an operator's `DEL` would. For tests of lost locks
    /// on the memory backend; on Redis use `DEL` on [`redis_key`](Self::redis_key).
    #[doc(hidden)]
    pub fn force_delete_memory(&self, key: &LockKey) -> bool {
        match &self.inner.backend {
            Backend::Memory(m) => m.force_delete(&Keys::new(&self.inner.prefix, key.as_str())),
            Backend::Redis(_) => false,
        }
    }

    fn lease_of(&self, options: &LockOptions) -> Duration {
        match options.lease {
            Lease::Fixed(d) => d,
            Lease::Watchdog => self.inner.watchdog_lease,
        }
    }

    /// Takes the lock, waiting up to `options.wait` (S8). The guard releases it on
    /// [`release`](LockGuard::release) or on drop.
    ///
    /// Without the closure form, nothing bounds the caller's work by the lease: check
    /// [`LockGuard::fencing_token`] at the storage, or use [`run`](Self::run).
    pub async fn lock(&self, key: &LockKey, options: LockOptions) -> Result<LockGuard, LockError> {
        let keys = Arc::new(Keys::new(&self.inner.prefix, key.as_str()));
        self.acquire(keys, options).await
    }

    async fn acquire(&self, keys: Arc<Keys>, options: LockOptions) -> Result<LockGuard, LockError> {
        let inner = &*self.inner;
        let lease = self.lease_of(&options);
        let token = Token::new();
        let start = Instant::now();
        let wait_end = start + options.wait;
        let not_acquired = |keys: &Keys| LockError::NotAcquired {
            key: keys.lock.to_string(),
            waited: start.elapsed(),
        };

        // `wait = 0`: one try, no queue.
        if options.wait.is_zero() {
            let sent = Instant::now();
            return match self.attempt(&keys, &token, lease, Asker::default()).await? {
                Attempt::Acquired(fence) => Ok(LockGuard::new(
                    self.clone(),
                    keys,
                    token,
                    fence,
                    lease,
                    sent,
                )),
                Attempt::Held(_) => Err(not_acquired(&keys)),
            };
        }

        // Queue behind the local waiters first — even an uncontended call, so that callers
        // arriving together do not all ask Redis at once — and only the head asks. The head of a
        // queue nobody waited in tries at once: the only round trip of an uncontended acquisition.
        let (place, first) = inner.queues.join(&keys.channel, token.as_str());
        let mut must_try = true;
        let mut tries = 0u32;
        // Once this waiter's try as head failed, it is registered in the key's queue of waiting
        // processes; if it gives up (wait over, cancelled, an error), it takes itself out.
        let mut registration = Registration {
            manager: self,
            keys: &keys,
            token: &token,
            active: false,
        };
        loop {
            // The first waiter of an empty queue is its head: no need to look.
            let (head, retry_at) = if first && tries == 0 {
                (true, None)
            } else {
                place.state()
            };
            if head && must_try {
                let sent = Instant::now();
                // The very first try on an empty queue does not register in the key's queue of
                // waiting processes (an uncontended call must not touch it); the try after it,
                // once subscribed, does.
                let how = Asker {
                    head: tries > 0 || !first,
                    others_wait: (tries > 0 || !first) && place.others_wait(),
                };
                tries += 1;
                registration.active |= how.head;
                match self.attempt(&keys, &token, lease, how).await? {
                    Attempt::Acquired(fence) => {
                        registration.active = false;
                        drop(registration);
                        place.acquired(sent + lease, how.others_wait);
                        return Ok(LockGuard::new(
                            self.clone(),
                            keys,
                            token,
                            fence,
                            lease,
                            sent,
                        ));
                    }
                    Attempt::Held(pttl) => {
                        if how.head {
                            place.set_registered();
                        }
                        place.set_retry_at(pttl.map(|p| Instant::now() + p));
                        if place.subscribe() {
                            // Subscribed before trying once more, so a release in between is
                            // not missed.
                            if let Err(e) = inner.backend.subscribed(&keys).await {
                                tracing::debug!(key = %keys.lock, error = %e, "release channel not subscribed; waiting on the lease");
                            }
                            continue;
                        }
                    }
                }
                if place.take_try() {
                    // A release was announced while we asked: ask again.
                    continue;
                }
            }
            let (head, retry_at) = if head && must_try {
                place.state()
            } else {
                (head, retry_at)
            };
            let timer = match retry_at {
                Some(at) if head => at.min(wait_end),
                _ => wait_end,
            };
            tokio::select! {
                try_now = place.notified() => must_try = try_now,
                () = sleep_until(timer) => {
                    if Instant::now() >= wait_end {
                        return Err(not_acquired(&keys));
                    }
                    must_try = true;
                }
            }
        }
    }

    /// One try. If the caller gives the future up while the request is in flight, or the request
    /// times out, Redis may have granted the lock to a token nobody holds any more: release it
    /// (owner-checked, so harmless when it was not granted) rather than leave it for the lease.
    async fn attempt(
        &self,
        keys: &Arc<Keys>,
        token: &Token,
        lease: Duration,
        how: Asker,
    ) -> Result<Attempt, LockError> {
        struct Fuse<'a> {
            manager: &'a LockManager,
            keys: &'a Arc<Keys>,
            token: &'a Token,
            armed: bool,
        }
        impl Drop for Fuse<'_> {
            fn drop(&mut self) {
                if self.armed {
                    crate::guard::spawn_release(
                        self.manager.clone(),
                        self.keys.clone(),
                        self.token.as_str().to_owned(),
                    );
                }
            }
        }
        let mut fuse = Fuse {
            manager: self,
            keys,
            token,
            armed: true,
        };
        let r = self
            .inner
            .backend
            .try_acquire(keys, token.as_str(), lease, how)
            .await;
        fuse.armed = matches!(&r, Err(e) if e.is_timeout());
        r
    }

    /// Runs `body` under the lock: the closure form, exactly what `#[concurrency_guard]` expands
    /// to (S7, S10, S13).
    ///
    /// Waits for the lock up to `options.wait`; runs `body` until it ends or its deadline (the
    /// earlier of `timeout` after acquisition and the lease's validity), whichever comes first —
    /// at the deadline `body` is dropped and the call returns [`LockError::Deadline`]; releases the
    /// lock after `body` has finished or been dropped. With a watchdog lease the lock is renewed
    /// while `body` runs. Inside `body`, [`fencing_token`](crate::fencing_token) returns this
    /// acquisition's token, and a nested `run` on the same manager and key (in the same task)
    /// runs its body at once, without taking the lock again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use lock_guard::{LockError, LockKey, LockManager, LockOptions};
    ///
    /// let locks = LockManager::memory();
    /// let key = LockKey::new("invoice").part(7);
    /// let result: Result<u64, LockError> = locks
    ///     .run(&key, LockOptions::new(), async {
    ///         Ok(lock_guard::fencing_token().expect("inside a guarded body"))
    ///     })
    ///     .await;
    /// assert!(result.unwrap() > 0);
    /// # }
    /// ```
    pub async fn run<T, E, F>(&self, key: &LockKey, options: LockOptions, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        let keys = Arc::new(Keys::new(&self.inner.prefix, key.as_str()));
        if context::holds(self.id(), &keys.lock) {
            tracing::trace!(key = %keys.lock, "reentrant call: the lock is already held by this call chain");
            return body.await;
        }
        let span = tracing::debug_span!(
            "lock_guard",
            key = %keys.lock,
            waited_ms = tracing::field::Empty,
            fencing_token = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            // No subscriber wants it: skip the per-poll enter/exit of an instrumented future.
            self.run_locked(keys, options, body, span).await
        } else {
            self.run_locked(keys, options, body, span.clone())
                .instrument(span)
                .await
        }
    }

    async fn run_locked<T, E, F>(
        &self,
        keys: Arc<Keys>,
        options: LockOptions,
        body: F,
        span: tracing::Span,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        let started = Instant::now();
        let guard = match self.acquire(keys.clone(), options).await {
            Ok(g) => g,
            Err(e) => {
                span.record("outcome", outcome_name(&e));
                if e.is_backend() {
                    tracing::warn!(key = %keys.lock, error = %e, "lock backend failed; the body did not run");
                } else {
                    tracing::debug!(key = %keys.lock, error = %e, "lock not acquired; the body did not run");
                }
                return Err(e.into());
            }
        };
        let acquired = Instant::now();
        span.record("waited_ms", (acquired - started).as_millis() as u64);
        span.record("fencing_token", guard.fencing_token());

        let fixed = matches!(options.lease, Lease::Fixed(_));
        let timeout_at = options.timeout_or_default().map(|t| acquired + t);
        let deadline = match (timeout_at, fixed) {
            (Some(t), true) => Some(t.min(guard.valid_until())),
            (None, true) => Some(guard.valid_until()),
            (t, false) => t,
        };

        let outcome = {
            let body = context::scope(self.id(), keys.lock.clone(), guard.fencing_token(), body);
            let mut body = std::pin::pin!(body);
            // One poll before any timer is armed: a body that finishes at once (a cache hit, an
            // early error) costs no deadline timer.
            match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll(cx))).await {
                Poll::Ready(r) => Outcome::Done(r),
                Poll::Pending => {
                    let far = acquired + Duration::from_secs(86_400 * 365);
                    let watchdog = async {
                        if fixed {
                            std::future::pending::<()>().await;
                        }
                        self.watchdog(&guard).await
                    };
                    tokio::select! {
                        biased;
                        r = &mut body => Outcome::Done(r),
                        () = sleep_until(deadline.unwrap_or(far)) => Outcome::Deadline(deadline.unwrap_or(far) - acquired),
                        () = watchdog => Outcome::Lost,
                    }
                }
            }
            // The body is dropped here, before the lock is released.
        };
        match outcome {
            Outcome::Done(r) => {
                guard.release_after_body().await;
                span.record("outcome", "done");
                r
            }
            Outcome::Deadline(timeout) => {
                guard.release_after_body().await;
                span.record("outcome", "deadline");
                tracing::warn!(key = %keys.lock, ?timeout, "guarded body exceeded its deadline and was dropped");
                Err(LockError::Deadline {
                    key: keys.lock.to_string(),
                    timeout,
                }
                .into())
            }
            Outcome::Lost => {
                guard.forget();
                span.record("outcome", "lost");
                tracing::warn!(key = %keys.lock, "lock lost while the body ran; the body was dropped");
                Err(LockError::Lost {
                    key: keys.lock.to_string(),
                }
                .into())
            }
        }
    }

    /// Renews the lock every third of its lease until it is found gone, or its validity runs
    /// out without a successful renewal (S10). Never returns while the lock is ours.
    async fn watchdog(&self, guard: &LockGuard) {
        let lease = guard.lease();
        let period = lease / 3;
        let mut valid_until = guard.valid_until();
        let mut next = Instant::now() + period;
        loop {
            sleep_until(next.min(valid_until)).await;
            if Instant::now() >= valid_until {
                tracing::warn!(key = %guard.key(), "lease ran out before a renewal succeeded");
                return;
            }
            let sent = Instant::now();
            match self
                .inner
                .backend
                .renew(guard.keys(), guard.token(), lease)
                .await
            {
                Ok(true) => {
                    tracing::trace!(key = %guard.key(), "lease renewed");
                    valid_until = sent + lease - drift(lease);
                }
                Ok(false) => {
                    tracing::warn!(key = %guard.key(), "renewal found the lock gone");
                    return;
                }
                Err(e) => {
                    tracing::warn!(key = %guard.key(), error = %e, "renewal failed; retrying");
                }
            }
            next = Instant::now() + period;
        }
    }
}

/// A head's place in the key's queue of waiting processes in Redis, given up on drop unless the
/// lock was taken (taking it removes the entry).
struct Registration<'a> {
    manager: &'a LockManager,
    keys: &'a Arc<Keys>,
    token: &'a Token,
    active: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.active || !matches!(self.manager.inner.backend, Backend::Redis(_)) {
            return;
        }
        let (manager, keys) = (self.manager.clone(), self.keys.clone());
        let token = self.token.as_str().to_owned();
        crate::guard::spawn_cleanup(async move {
            if let Err(e) = manager.inner.backend.leave_queue(&keys, &token).await {
                // The entry is handed the lock once, for a moment, then dropped.
                tracing::debug!(key = %keys.lock, error = %e, "could not leave the wait queue");
            }
        });
    }
}

fn outcome_name(e: &LockError) -> &'static str {
    match e {
        LockError::NotAcquired { .. } => "not_acquired",
        LockError::Deadline { .. } => "deadline",
        LockError::Lost { .. } => "lost",
        LockError::Backend { .. } => "backend_error",
        LockError::NoDefault => "no_default",
    }
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
