//! The Redis backend: pooled multiplexed connections for the scripts, one shared subscriber
//! connection for release messages (S8, S9, S12, S15).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics as PoolMetrics, Object, Pool, RecycleError, RecycleResult};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, Script, ServerErrorKind};
use tokio::sync::{mpsc, oneshot};

use super::bound::Deadlines;
use super::{Asker, Attempt, Keys};
use crate::error::{BackendError, LockError};
use crate::queue::Queues;

/// A Lua script, hashed once (for `EVALSHA`), with its source (for `EVAL` after `NOSCRIPT`).
struct Lua {
    script: Script,
    source: &'static str,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Lua {
            script: Script::new(source),
            source,
        }
    }
}

/// The acquire, release and renew scripts (S9).
struct Scripts {
    acquire: Lua,
    release: Lua,
    renew: Lua,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        acquire: Lua::new(include_str!("../scripts/acquire.lua")),
        release: Lua::new(include_str!("../scripts/release.lua")),
        renew: Lua::new(include_str!("../scripts/renew.lua")),
    })
}

/// How long a fencing counter lives after it was seeded from the server clock (plus the lease).
/// After that the clock alone (in microseconds) is past every token issued, so the counter can go
/// and be seeded again (S11): memory stays bounded by the keys used in the last minute.
const FENCE_RETENTION: Duration = Duration::from_secs(60);

/// Counts of what this manager sent to Redis, for tests and the benchmark.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) subscriber_commands: AtomicU64,
}

/// A pooled multiplexed connection, marked broken after an I/O failure so the pool replaces it.
pub(crate) struct Conn {
    conn: MultiplexedConnection,
    broken: bool,
}

/// Creates connections for the pool. Recycling is free: a connection is dropped when a command on
/// it failed at the connection level, never pinged (a ping per checkout would double the round
/// trips of an acquisition).
pub(crate) struct ConnManager {
    client: Client,
    timeout: Duration,
}

impl managed::Manager for ConnManager {
    type Type = Conn;
    type Error = RedisError;

    async fn create(&self) -> Result<Conn, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Conn {
            conn,
            broken: false,
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &PoolMetrics) -> RecycleResult<RedisError> {
        if conn.broken {
            Err(RecycleError::message("connection failed"))
        } else {
            Ok(())
        }
    }
}

pub(crate) enum SubCmd {
    Subscribe(Arc<str>, Option<oneshot::Sender<Result<(), LockError>>>),
    Unsubscribe(Arc<str>),
}

/// One connection of the pool, kept checked out: a multiplexed connection serves any number of
/// concurrent commands, so commands pick a slot round-robin and share its connection instead of
/// checking one out each (which would serialise them and cost a pool round per command).
#[derive(Default)]
struct Slot {
    held: Mutex<Option<Held>>,
    /// One opening at a time per slot, so concurrent commands on an empty slot wait for one
    /// connection instead of each taking one from the pool (which would exhaust it).
    filling: tokio::sync::Mutex<()>,
}

struct Held {
    generation: u64,
    conn: MultiplexedConnection,
    object: Object<ConnManager>,
}

pub(crate) struct RedisBackend {
    /// Creates and bounds the connections; every connection in `slots` is one of its objects.
    pool: Pool<ConnManager>,
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    generation: AtomicU64,
    deadlines: Arc<Deadlines>,
    timeout: Duration,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
    pub(crate) counters: Arc<Counters>,
}

impl RedisBackend {
    pub(crate) fn new(
        client: Client,
        pool_size: usize,
        timeout: Duration,
        queues: &Arc<Queues>,
        counters: Arc<Counters>,
        sub_tx: mpsc::UnboundedSender<SubCmd>,
        sub_rx: mpsc::UnboundedReceiver<SubCmd>,
    ) -> Result<(Self, SubscriberTask), LockError> {
        let pool = Pool::builder(ConnManager {
            client: client.clone(),
            timeout,
        })
        .max_size(pool_size)
        // Bounded as a whole by the command timeout around each command.
        .wait_timeout(None)
        .create_timeout(None)
        .recycle_timeout(None)
        .build()
        .map_err(|e| LockError::backend(None, BackendError::Config(e.to_string())))?;
        let task = SubscriberTask {
            client,
            queues: Arc::downgrade(queues),
            rx: sub_rx,
            timeout,
            counters: counters.clone(),
        };
        Ok((
            RedisBackend {
                pool,
                slots: (0..pool_size).map(|_| Slot::default()).collect(),
                next_slot: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                deadlines: Deadlines::start(timeout),
                timeout,
                sub_tx,
                counters,
            },
            task,
        ))
    }

    /// The hook the queues call when a key gains its first or loses its last local waiter.
    pub(crate) fn subscription_hook(
        tx: mpsc::UnboundedSender<SubCmd>,
    ) -> impl Fn(&Arc<str>, bool) + Send + Sync {
        move |channel, subscribe| {
            let cmd = if subscribe {
                SubCmd::Subscribe(channel.clone(), None)
            } else {
                SubCmd::Unsubscribe(channel.clone())
            };
            // The receiver only goes away with the manager.
            let _ = tx.send(cmd);
        }
    }

    /// The connection of the next slot, opening one if the slot is empty.
    async fn connection(&self) -> Result<(usize, u64, MultiplexedConnection), BackendError> {
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(held) = &*lock(&self.slots[i].held) {
            return Ok((i, held.generation, held.conn.clone()));
        }
        // Rare (start-up, after a failure): boxed, so the common path's future stays small.
        Box::pin(self.fill(i)).await
    }

    async fn fill(&self, i: usize) -> Result<(usize, u64, MultiplexedConnection), BackendError> {
        let _filling = self.slots[i].filling.lock().await;
        if let Some(held) = &*lock(&self.slots[i].held) {
            return Ok((i, held.generation, held.conn.clone()));
        }
        let object = self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => BackendError::Redis(e),
            other => BackendError::Pool(other.to_string()),
        })?;
        let mut slot = lock(&self.slots[i].held);
        let held = slot.get_or_insert_with(|| Held {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            conn: object.conn.clone(),
            object,
        });
        Ok((i, held.generation, held.conn.clone()))
    }

    /// A command on slot `i` failed at the connection level: drop that connection, and with it
    /// every other one (most likely dead too: a restart, a failover), so the retry and the calls
    /// after it open fresh ones instead of meeting the dead ones one by one. Commands in flight on
    /// them finish or fail on their own.
    fn discard(&self, i: usize, generation: u64) {
        let first = {
            let slot = lock(&self.slots[i].held);
            matches!(&*slot, Some(h) if h.generation == generation)
        };
        if !first {
            // Somebody already replaced it.
            return;
        }
        for slot in self.slots.iter() {
            if let Some(mut held) = lock(&slot.held).take() {
                held.object.broken = true;
            }
        }
        self.pool.retain(|_, _| false);
    }

    /// Runs `f` on a pooled connection, bounded by the command timeout as a whole (connecting
    /// included), so a Redis that is down, slow or paused yields an error in bounded time (S15).
    ///
    /// A connection that turns out dead (Redis restarted since it was opened) is dropped and `f`
    /// runs once more on a fresh one, told so by its `retry` argument.
    async fn with_conn<T, F, Fut>(
        &self,
        key: Option<&str>,
        what: &'static str,
        mut f: F,
    ) -> Result<T, LockError>
    where
        F: FnMut(MultiplexedConnection, bool) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let work = async {
            let mut retry = false;
            loop {
                let (slot, generation, conn) = self.connection().await?;
                match f(conn, retry).await {
                    Err(e)
                        if e.is_io_error()
                            || e.is_connection_dropped()
                            || e.is_connection_refusal()
                            || e.is_unrecoverable_error() =>
                    {
                        self.discard(slot, generation);
                        if retry || e.is_connection_refusal() {
                            return Err(BackendError::Redis(e));
                        }
                        tracing::debug!(key, error = %e, "pooled connection was dead; retrying on a new one");
                        retry = true;
                    }
                    r => return r.map_err(BackendError::Redis),
                }
            }
        };
        match self.deadlines.bound(self.timeout, work).await {
            Ok(r) => r.map_err(|source| LockError::backend(key, source)),
            Err(_) => Err(LockError::backend(
                key,
                BackendError::Timeout {
                    what,
                    timeout: self.timeout,
                },
            )),
        }
    }

    /// `EVALSHA`, falling back to `EVAL` (which also reloads the cache) on `NOSCRIPT`. On a retry
    /// after a dead connection, `retry_arg` is appended to the arguments.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        key: &str,
        script: &Lua,
        keys: &[&str],
        args: &[&[u8]],
        retry_arg: Option<&[u8]>,
    ) -> Result<T, LockError> {
        let size = keys.iter().map(|k| k.len()).sum::<usize>()
            + args.iter().map(|a| a.len()).sum::<usize>()
            + 48;
        let build = |verb: &str, body: &str, retry: bool| {
            let mut cmd = Cmd::with_capacity(4 + keys.len() + args.len(), size + body.len());
            cmd.arg(verb).arg(body).arg(keys.len());
            for k in keys {
                cmd.arg(*k);
            }
            for a in args {
                cmd.arg(*a);
            }
            if let (true, Some(extra)) = (retry, retry_arg) {
                cmd.arg(extra);
            }
            cmd
        };
        let counters = &self.counters;
        self.with_conn(Some(key), "script call", |mut conn, retry| async move {
            counters.commands.fetch_add(1, Ordering::Relaxed);
            match build("EVALSHA", script.script.get_hash(), retry)
                .query_async(&mut conn)
                .await
            {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::debug!(key, "script cache was empty (NOSCRIPT): loading it again");
                    counters.commands.fetch_add(1, Ordering::Relaxed);
                    build("EVAL", script.source, retry)
                        .query_async(&mut conn)
                        .await
                }
                other => other,
            }
        })
        .await
    }

    pub(crate) async fn try_acquire(
        &self,
        keys: &Keys,
        token: &str,
        lease: Duration,
        how: Asker,
    ) -> Result<Attempt, LockError> {
        let lease_ms = millis(lease).to_string();
        let retention = millis(lease + FENCE_RETENTION).to_string();
        let (taken, value): (i64, i64) = self
            .eval(
                &keys.lock,
                &scripts().acquire,
                &[&keys.lock, &keys.fence, &keys.queue],
                &[
                    token.as_bytes(),
                    lease_ms.as_bytes(),
                    retention.as_bytes(),
                    if how.others_wait { b"w" } else { b"-" },
                    if how.head { b"h" } else { b"-" },
                ],
                // The first request may have been applied before its connection died.
                Some(b"r"),
            )
            .await?;
        if taken == 1 {
            u64::try_from(value).map(Attempt::Acquired).map_err(|_| {
                LockError::backend(
                    Some(&keys.lock),
                    BackendError::Protocol(format!("negative fencing token {value}")),
                )
            })
        } else {
            // PTTL: -1 means no expiry (set by hand), -2 that it vanished meanwhile.
            Ok(Attempt::Held(match value {
                -2 => Some(Duration::ZERO),
                v => u64::try_from(v).ok().map(Duration::from_millis),
            }))
        }
    }

    pub(crate) async fn release(&self, keys: &Keys, token: &str) -> Result<bool, LockError> {
        let handover_ms = millis(super::HANDOVER).to_string();
        let n: i64 = self
            .eval(
                &keys.lock,
                &scripts().release,
                &[&keys.lock, &keys.channel, &keys.queue],
                &[token.as_bytes(), handover_ms.as_bytes()],
                None,
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn leave_queue(&self, keys: &Keys, token: &str) -> Result<(), LockError> {
        let counters = &self.counters;
        self.with_conn(Some(&keys.lock), "ZREM", |mut conn, _| async move {
            counters.commands.fetch_add(1, Ordering::Relaxed);
            redis::cmd("ZREM")
                .arg(&keys.queue)
                .arg(token)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    pub(crate) async fn renew(
        &self,
        keys: &Keys,
        token: &str,
        lease: Duration,
    ) -> Result<bool, LockError> {
        let lease_ms = millis(lease).to_string();
        let n: i64 = self
            .eval(
                &keys.lock,
                &scripts().renew,
                &[&keys.lock],
                &[token.as_bytes(), lease_ms.as_bytes()],
                None,
            )
            .await?;
        Ok(n == 1)
    }

    /// Asks for the release channel and waits until the subscription is confirmed.
    pub(crate) async fn subscribed(&self, keys: &Keys) -> Result<(), LockError> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .sub_tx
            .send(SubCmd::Subscribe(keys.channel.clone(), Some(tx)));
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(LockError::backend(
                Some(&keys.lock),
                BackendError::Pool("the subscriber task has stopped".into()),
            )),
            Err(_) => Err(LockError::backend(
                Some(&keys.lock),
                BackendError::Timeout {
                    what: "SUBSCRIBE",
                    timeout: self.timeout,
                },
            )),
        }
    }

    /// One `PING`, to fail early on a wrong URL or password.
    pub(crate) async fn ping(&self) -> Result<(), LockError> {
        self.with_conn(None, "PING", |mut conn, _| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await
        })
        .await
    }
}

/// How long a release channel stays subscribed after its last local waiter left.
const UNSUBSCRIBE_GRACE: Duration = Duration::from_millis(500);

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The task that owns the manager's one subscriber connection (S8): it subscribes a key's release
/// channel while the key has local waiters, wakes the head of the key's queue on each message, and
/// after a lost connection reconnects, subscribes again and wakes every head (a release may have
/// been missed meanwhile).
pub(crate) struct SubscriberTask {
    client: Client,
    queues: std::sync::Weak<Queues>,
    rx: mpsc::UnboundedReceiver<SubCmd>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl SubscriberTask {
    pub(crate) async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut connected_once = false;
        loop {
            let pubsub = match tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
                .await
            {
                Ok(Ok(p)) => p,
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".to_owned(),
                    };
                    tracing::warn!(%reason, "lock-guard subscriber connection failed; waiters fall back to lease timers");
                    if !self.drain_while_down(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            let (mut sink, mut stream) = pubsub.split();
            let Some(queues) = self.queues.upgrade() else {
                return;
            };
            // Subscribe what has waiters now; whatever changes after is in the command queue.
            let mut subscribed: HashSet<Arc<str>> = HashSet::new();
            // Channels whose last local waiter left, unsubscribed after a grace period unless
            // waiters came back meanwhile: a hot key whose queue empties and fills again every
            // few milliseconds would otherwise cost a SUBSCRIBE and an UNSUBSCRIBE each time.
            let mut lingering: VecDeque<(tokio::time::Instant, Arc<str>)> = VecDeque::new();
            let mut ok = true;
            for ch in queues.channels() {
                if self.sub(&mut sink, &ch).await.is_err() {
                    ok = false;
                    break;
                }
                subscribed.insert(ch);
            }
            if connected_once {
                queues.wake_all_heads();
            }
            connected_once = true;
            drop(queues);
            if !ok {
                continue;
            }
            loop {
                let next_unsubscribe = lingering.front().map(|(at, _)| *at);
                tokio::select! {
                    () = sleep_until_opt(next_unsubscribe), if next_unsubscribe.is_some() => {
                        let now = tokio::time::Instant::now();
                        let mut failed = false;
                        while let Some((_, ch)) = lingering.front().filter(|(at, _)| *at <= now).cloned() {
                            lingering.pop_front();
                            let idle = self.queues.upgrade().is_none_or(|q| !q.has_waiters(&ch));
                            if idle && subscribed.remove(&ch) {
                                self.counters.subscriber_commands.fetch_add(1, Ordering::Relaxed);
                                let r = tokio::time::timeout(self.timeout, sink.unsubscribe(&*ch)).await;
                                if !matches!(r, Ok(Ok(()))) {
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        if failed {
                            break;
                        }
                    }
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            if let Some(q) = self.queues.upgrade() {
                                q.wake_head(msg.get_channel_name(), msg.get_payload_bytes());
                            }
                        }
                        None => {
                            tracing::warn!("lock-guard subscriber connection closed; reconnecting");
                            break;
                        }
                    },
                    cmd = self.rx.recv() => match cmd {
                        None => return,
                        Some(SubCmd::Subscribe(ch, reply)) => {
                            let r = if subscribed.contains(&ch) {
                                Ok(())
                            } else {
                                self.sub(&mut sink, &ch).await
                            };
                            let failed = r.is_err();
                            if !failed {
                                subscribed.insert(ch);
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(r);
                            }
                            if failed {
                                break;
                            }
                        }
                        Some(SubCmd::Unsubscribe(ch)) => {
                            if subscribed.contains(&ch) {
                                lingering.push_back((tokio::time::Instant::now() + UNSUBSCRIBE_GRACE, ch));
                            }
                        }
                    }
                }
            }
        }
    }

    async fn sub(&self, sink: &mut redis::aio::PubSubSink, ch: &str) -> Result<(), LockError> {
        self.counters
            .subscriber_commands
            .fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, sink.subscribe(ch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LockError::backend(None, BackendError::Redis(e))),
            Err(_) => Err(LockError::backend(
                None,
                BackendError::Timeout {
                    what: "SUBSCRIBE",
                    timeout: self.timeout,
                },
            )),
        }
    }

    /// While disconnected: answer subscribe requests with an error for `pause`, so waiters go on
    /// with their lease timers. Returns `false` when the manager is gone.
    async fn drain_while_down(&mut self, pause: Duration) -> bool {
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.rx.recv() => match cmd {
                    None => return false,
                    Some(SubCmd::Subscribe(_, Some(reply))) => {
                        let _ = reply.send(Err(LockError::backend(
                            None,
                            BackendError::Pool("subscriber connection is down".into()),
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
    }
}
