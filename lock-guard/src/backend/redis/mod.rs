//! One Redis server: the scripts (`scripts.rs`) over kept-open multiplexed connections
//! (`conn.rs`), and one subscriber connection for release notifications (`subscriber.rs`).

mod conn;
pub(crate) mod eviction;
mod node;
mod replicas;
pub(crate) mod scripts;
mod subscriber;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Client;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use self::conn::{Conn, Connections};
#[cfg(feature = "cluster")]
pub(crate) use self::node::spawn_subscriber;
pub(crate) use self::replicas::Replicated;
use self::subscriber::Requests;
use super::protocol::{self, Landing, ScriptCall, Sending};
use super::{Attempt, Backend, BoxFuture, Counters, Keys, Try};
use crate::error::{BackendError, LockError};
use crate::waiting::Waiters;

/// What [`RedisBackend::connect`] needs.
pub(crate) struct RedisConfig {
    pub(crate) client: Client,
    /// The URL with its password redacted, for `Debug`.
    pub(crate) shown_url: String,
    pub(crate) pool_size: usize,
    pub(crate) timeout: Duration,
    /// Accept a server whose `maxmemory-policy` can evict locks.
    pub(crate) allow_eviction: bool,
    /// The user's own pool for the commands, if given (the subscriber still uses `client`).
    pub(crate) users_pool: Option<deadpool_redis::Pool>,
}

pub(crate) struct RedisBackend {
    conns: Arc<Connections>,
    counters: Arc<Counters>,
    shown_url: String,
}

impl RedisBackend {
    /// Connects (one `PING`, so a wrong URL or password fails here) and starts the subscriber.
    pub(crate) async fn connect(
        config: RedisConfig,
        waiters: &Arc<Waiters>,
    ) -> Result<RedisBackend, LockError> {
        let counters = Arc::new(Counters::default());
        let mut conns = Connections::new(
            config.client.clone(),
            config.pool_size,
            config.timeout,
            (!config.allow_eviction).then(|| config.shown_url.clone()),
        )?;
        if let Some(pool) = config.users_pool {
            conns = conns.with_users_pool(pool);
        }
        let conns = Arc::new(conns);
        let backend = RedisBackend {
            conns,
            counters: counters.clone(),
            shown_url: config.shown_url,
        };
        backend
            .conns
            .call(None, "PING", |c, _| {
                let mut conn = c.conn.clone();
                async move { redis::cmd("PING").query_async::<()>(&mut conn).await }
            })
            .await
            .map_err(|e| match &e {
                LockError::Backend {
                    source: BackendError::Redis(r),
                    ..
                } => eviction::as_config(r).unwrap_or(e),
                _ => e,
            })?;
        waiters.set_subscriptions(Box::new(Requests::start(
            vec![config.client],
            waiters,
            config.timeout,
            counters,
        )));
        Ok(backend)
    }

    /// One script call (see [`protocol::eval`]) on a pooled connection. `call` builds the request,
    /// told whether it is a resend after a dead connection (the first may have been applied).
    /// `sent_on` learns the connection each request goes out on.
    async fn eval<'a, T: redis::FromRedisValue>(
        &self,
        key: &str,
        call: impl Fn(Sending) -> ScriptCall<'a>,
        sent_on: Option<&Mutex<Option<MultiplexedConnection>>>,
    ) -> Result<T, LockError> {
        let counters = &self.counters;
        self.conns
            .call(Some(key), "script call", |c, retry| {
                let mut conn = c.conn.clone();
                if let Some(sent_on) = sent_on {
                    *lock(sent_on) = Some(conn.clone());
                }
                let call = call(if retry { Sending::Again } else { Sending::Once });
                async move { protocol::eval(&mut conn, &call, counters).await }
            })
            .await
    }

    async fn acquire(&self, req: Try<'_>) -> Result<Attempt, LockError> {
        let keys = req.keys;
        // Until the reply is in, Redis may grant the lock: if this future is dropped or fails
        // before that, release the token on the connection the request went out on, so the
        // release cannot overtake it.
        let sent_on = Mutex::new(None);
        let mut fuse = Fuse {
            backend: self,
            keys,
            token: req.token,
            lease: req.lease,
            sent_on: &sent_on,
            armed: true,
        };
        let sent = Instant::now();
        let reply: (i64, i64) = self
            .eval(
                &keys.lock,
                |sending| ScriptCall::acquire(&req, sending),
                Some(&sent_on),
            )
            .await?;
        fuse.armed = false;
        protocol::acquire_reply(keys, reply, sent, req.lease)
    }

    async fn release_token(&self, keys: &Keys, token: &str) -> Result<bool, LockError> {
        let n: i64 = self
            .eval(
                &keys.lock,
                |_| ScriptCall::release(keys, token, false),
                None,
            )
            .await?;
        Ok(n == 1)
    }

    /// Releases `token` in the background (see [`protocol::release_in_background`]): the first
    /// time on `first` (the connection its acquisition went out on, when known: Redis answers a
    /// connection's commands in order, so the release runs after the acquisition if that arrives
    /// at all), then on any connection. `leave_queue` also takes the token out of the queue.
    pub(crate) fn release_in_background(
        &self,
        keys: &Keys,
        token: &str,
        leave_queue: bool,
        give_up: Instant,
        what: &'static str,
        first: Option<MultiplexedConnection>,
    ) -> bool {
        let keys = Arc::new(keys.clone());
        let token: Arc<str> = token.into();
        let conns = self.conns.clone();
        let counters = self.counters.clone();
        let mut first = first;
        protocol::release_in_background(
            keys.lock.clone(),
            what,
            give_up,
            Landing::Before,
            move |_| {
                let (keys, token, conns, counters) =
                    (keys.clone(), token.clone(), conns.clone(), counters.clone());
                let first = first.take();
                Box::pin(async move {
                    let call = ScriptCall::release(&keys, &token, leave_queue);
                    let n: i64 =
                        match first {
                            Some(mut conn) => protocol::eval(&mut conn, &call, &counters)
                                .await
                                .map_err(|e| {
                                    LockError::backend(Some(&keys.lock), BackendError::Redis(e))
                                })?,
                            None => conns
                                .call(Some(&keys.lock), "release", |c: &Conn, _| {
                                    let mut conn = c.conn.clone();
                                    let (call, counters) = (&call, &counters);
                                    async move { protocol::eval(&mut conn, call, counters).await }
                                })
                                .await?,
                        };
                    Ok(n == 1)
                })
            },
        )
    }
}

/// Releases an acquisition whose reply never came (see [`RedisBackend::acquire`]).
struct Fuse<'a> {
    backend: &'a RedisBackend,
    keys: &'a Keys,
    token: &'a str,
    lease: Duration,
    sent_on: &'a Mutex<Option<MultiplexedConnection>>,
    armed: bool,
}

impl Drop for Fuse<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(conn) = lock(self.sent_on).take() else {
            // Nothing was sent.
            return;
        };
        // The try may have registered in the queue: take that entry out too. If the connection
        // it went out on is dead, the acquisition cannot arrive any more: release on another until
        // it works or the lease has freed the lock anyway.
        self.backend.release_in_background(
            self.keys,
            self.token,
            true,
            Instant::now() + self.lease,
            "clean-up after an abandoned acquisition",
            Some(conn),
        );
    }
}

impl RedisBackend {
    /// Runs an inspection on this server.
    pub(crate) async fn inspect_node(
        &self,
        route: super::inspect::Route<'_>,
    ) -> Result<redis::Value, LockError> {
        super::inspect::on_node(route, |cmd: redis::Cmd| {
            self.conns.call(None, "inspect", move |c, _| {
                let mut conn = c.conn.clone();
                let cmd = cmd.clone();
                async move { cmd.query_async(&mut conn).await }
            })
        })
        .await
    }
}

impl Backend for RedisBackend {
    fn inspect<'a>(
        &'a self,
        route: super::inspect::Route<'a>,
    ) -> BoxFuture<'a, super::inspect::Answers> {
        Box::pin(
            async move { super::inspect::Answers::Nodes(vec![self.inspect_node(route).await]) },
        )
    }

    fn try_acquire<'a>(&'a self, req: Try<'a>) -> BoxFuture<'a, Result<Attempt, LockError>> {
        Box::pin(self.acquire(req))
    }

    fn release<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(self.release_token(keys, token))
    }

    fn renew<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(async move {
            let n: i64 = self
                .eval(&keys.lock, |_| ScriptCall::renew(keys, token, lease), None)
                .await?;
            Ok(n == 1)
        })
    }

    fn leave_queue<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), LockError>> {
        let counters = &self.counters;
        Box::pin(self.conns.call(Some(&keys.lock), "ZREM", move |c, _| {
            let mut conn = c.conn.clone();
            counters.commands.fetch_add(1, Ordering::Relaxed);
            async move {
                redis::cmd("ZREM")
                    .arg(&keys.queue)
                    .arg(token)
                    .query_async::<()>(&mut conn)
                    .await
            }
        }))
    }

    fn force_unlock<'a>(&'a self, keys: &'a Keys) -> BoxFuture<'a, Result<bool, LockError>> {
        let counters = &self.counters;
        Box::pin(async move {
            let n: i64 = self
                .conns
                .call(Some(&keys.lock), "DEL", move |c, _| {
                    let mut conn = c.conn.clone();
                    counters.commands.fetch_add(1, Ordering::Relaxed);
                    async move {
                        redis::cmd("DEL")
                            .arg(&*keys.lock)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            Ok(n == 1)
        })
    }

    fn command_timeout(&self) -> Duration {
        self.conns.timeout
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        f.field("backend", &"redis").field("url", &self.shown_url);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
