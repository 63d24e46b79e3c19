//! One Redis server: the scripts (`scripts.rs`) over kept-open multiplexed connections
//! (`conn.rs`), and one subscriber connection for release notifications (`subscriber.rs`).

mod conn;
mod node;
mod replicas;
pub(crate) mod scripts;
mod subscriber;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, ErrorKind, ServerErrorKind};
use tokio::time::Instant;

use self::conn::{Conn, Connections};
pub(crate) use self::node::{AcquireArgs, acquire_reply};
#[cfg(feature = "cluster")]
pub(crate) use self::node::{millis_arg, spawn_subscriber};
pub(crate) use self::replicas::Replicated;
use self::scripts::{Lua, scripts};
use self::subscriber::Requests;
use super::{Attempt, Backend, BoxFuture, Counters, HANDOVER, Keys, Try};
use crate::background;
use crate::error::LockError;
use crate::waiting::Waiters;

/// How long a fencing counter lives after its last acquisition (plus the lease). After that the
/// clock alone (in microseconds) is past every token issued, so the counter can go: memory stays
/// bounded by the keys used in the last minute.
const FENCE_RETENTION: Duration = Duration::from_secs(60);

/// What [`RedisBackend::connect`] needs.
pub(crate) struct RedisConfig {
    pub(crate) client: Client,
    /// The URL with its password redacted, for `Debug`.
    pub(crate) shown_url: String,
    pub(crate) pool_size: usize,
    pub(crate) timeout: Duration,
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
        let mut conns = Connections::new(config.client.clone(), config.pool_size, config.timeout)?;
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
            .await?;
        waiters.set_subscriptions(Box::new(Requests::start(
            vec![config.client],
            waiters,
            config.timeout,
            counters,
        )));
        Ok(backend)
    }

    /// `EVALSHA`, falling back to `EVAL` (which also fills the script cache) on `NOSCRIPT`. On a
    /// retry after a dead connection, `retry_arg` is appended to the arguments. `sent_on` learns
    /// the connection each request goes out on.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        key: &str,
        script: &Lua,
        keys: &[&str],
        args: &[&[u8]],
        retry_arg: Option<&[u8]>,
        sent_on: Option<&Mutex<Option<MultiplexedConnection>>>,
    ) -> Result<T, LockError> {
        let counters = &self.counters;
        self.conns
            .call(Some(key), "script call", |c, retry| {
                let mut conn = c.conn.clone();
                if let Some(sent_on) = sent_on {
                    *lock(sent_on) = Some(conn.clone());
                }
                let mut all: Vec<&[u8]> = args.to_vec();
                if let (true, Some(extra)) = (retry, retry_arg) {
                    all.push(extra);
                }
                async move { evalsha(&mut conn, script, keys, &all, counters).await }
            })
            .await
    }

    async fn acquire(&self, req: Try<'_>) -> Result<Attempt, LockError> {
        let keys = req.keys;
        let args = AcquireArgs::new(&req);
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
        let reply: Result<(i64, i64), LockError> = self
            .eval(
                &keys.lock,
                &scripts().acquire,
                &[&keys.lock, &keys.fence, &keys.queue],
                &args.get(&req),
                // The first request may have been applied before its connection died.
                Some(b"r"),
                Some(&sent_on),
            )
            .await;
        let reply = reply?;
        fuse.armed = false;
        acquire_reply(keys, reply, sent, req.lease)
    }

    async fn release_token(&self, keys: &Keys, token: &str) -> Result<bool, LockError> {
        let handover_ms = millis(HANDOVER).to_string();
        let n: i64 = self
            .eval(
                &keys.lock,
                &scripts().release,
                &[&keys.lock, &keys.channel, &keys.queue],
                &[token.as_bytes(), handover_ms.as_bytes()],
                None,
                None,
            )
            .await?;
        Ok(n == 1)
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
        let Some(mut conn) = lock(self.sent_on).take() else {
            // Nothing was sent.
            return;
        };
        let (keys, token) = (self.keys.clone(), self.token.to_owned());
        let conns = self.backend.conns.clone();
        let counters = self.backend.counters.clone();
        let give_up = Instant::now() + self.lease;
        background::spawn(async move {
            let handover_ms = millis(HANDOVER).to_string();
            // `z`: the try may have registered in the queue; take that entry out too.
            let args: [&[u8]; 3] = [token.as_bytes(), handover_ms.as_bytes(), b"z"];
            let names = [&*keys.lock, &*keys.channel, keys.queue.as_str()];
            let script = &scripts().release;
            // The same connection first: Redis answers a connection's commands in order, so this
            // runs after the acquisition if that arrives at all.
            let mut done = evalsha::<i64>(&mut conn, script, &names, &args, &counters)
                .await
                .is_ok();
            // That connection is dead: the acquisition cannot arrive any more; release on another
            // until it works or the lease has freed the lock anyway.
            let mut pause = Duration::from_millis(20);
            while !done && Instant::now() < give_up {
                let r: Result<i64, _> = conns
                    .call(Some(&keys.lock), "release", |c: &Conn, _| {
                        let mut conn = c.conn.clone();
                        let (names, args, counters) = (&names, &args, &counters);
                        async move { evalsha(&mut conn, script, names, args, counters).await }
                    })
                    .await;
                done = r.is_ok();
                if !done {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
            tracing::debug!(key = %keys.lock, released = done, "cleaned up after an abandoned acquisition");
        });
    }
}

/// `EVALSHA` of `script` on `conn`, and `EVAL` (which also fills the script cache) on the same
/// connection after a `NOSCRIPT`.
async fn evalsha<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    script: &Lua,
    keys: &[&str],
    args: &[&[u8]],
    counters: &Counters,
) -> redis::RedisResult<T> {
    counters.commands.fetch_add(1, Ordering::Relaxed);
    match script.command(false, keys, args).query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            tracing::debug!("script cache was empty (NOSCRIPT): loading it again");
            counters.commands.fetch_add(1, Ordering::Relaxed);
            script.command(true, keys, args).query_async(conn).await
        }
        other => other,
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
            let lease_ms = millis(lease).to_string();
            let n: i64 = self
                .eval(
                    &keys.lock,
                    &scripts().renew,
                    &[&keys.lock],
                    &[token.as_bytes(), lease_ms.as_bytes()],
                    None,
                    None,
                )
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
