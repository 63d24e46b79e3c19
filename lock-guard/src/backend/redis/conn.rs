//! The command connections: a few multiplexed connections from a `deadpool` pool, kept checked out
//! and shared round-robin by every command.
//!
//! Why not a checkout per command: a multiplexed connection serves any number of concurrent
//! commands, and `deadpool-redis` recycles each checkout with `UNWATCH` + `PING` — one more round
//! trip per command. The same hand-rolled lock ran 1.4–1.6 × slower on a deadpool-redis pool than
//! on kept-open connections (BENCHMARKS.md, `distinct`). The pool still creates, counts and
//! replaces the connections.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics as PoolMetrics, Object, Pool, RecycleError, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::time::{Instant, timeout_at};

use crate::error::{BackendError, LockError};

/// A pooled multiplexed connection, marked broken after a connection-level failure.
pub(super) struct Pooled {
    conn: MultiplexedConnection,
    broken: bool,
}

/// Opens connections for the pool, each with the command timeout as its response timeout (redis-rs
/// fails a request that has no reply by then). Recycling is free: a connection leaves the pool only
/// when a command on it failed at the connection level.
pub(super) struct Opener {
    client: Client,
    timeout: Duration,
    /// `Some(the server as shown in errors)` when every new connection checks that the server
    /// cannot evict locks (see [`eviction`](super::eviction)).
    check_eviction: Option<String>,
}

impl managed::Manager for Opener {
    type Type = Pooled;
    type Error = RedisError;

    async fn create(&self) -> Result<Pooled, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut conn = conn;
        if let Some(server) = &self.check_eviction {
            // At start and after every reconnect: a failover or a restart may bring a server
            // configured otherwise.
            super::eviction::check(&mut conn, server).await?;
        }
        Ok(Pooled {
            conn,
            broken: false,
        })
    }

    async fn recycle(&self, conn: &mut Pooled, _: &PoolMetrics) -> RecycleResult<RedisError> {
        if conn.broken {
            Err(RecycleError::message("connection failed"))
        } else {
            Ok(())
        }
    }
}

/// One kept-open connection.
#[derive(Default)]
struct Slot {
    held: Mutex<Option<Held>>,
    /// One opening at a time per slot, so concurrent commands on an empty slot wait for one
    /// connection instead of each taking one from the pool.
    filling: tokio::sync::Mutex<()>,
}

struct Held {
    generation: u64,
    conn: MultiplexedConnection,
    /// `None` for a connection of the user's pool: it went back to that pool at once.
    object: Option<Object<Opener>>,
}

/// A connection handed to one command, and which slot it came from.
#[derive(Clone)]
pub(super) struct Conn {
    slot: usize,
    generation: u64,
    pub(super) conn: MultiplexedConnection,
}

pub(super) struct Connections {
    pool: Pool<Opener>,
    /// The user's own pool (`LockManagerBuilder::pool`), if given: slots are filled from it.
    users: Option<deadpool_redis::Pool>,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    generation: AtomicU64,
    pub(super) timeout: Duration,
}

impl Connections {
    pub(super) fn new(
        client: Client,
        size: usize,
        timeout: Duration,
        check_eviction: Option<String>,
    ) -> Result<Self, LockError> {
        let pool = Pool::builder(Opener {
            client,
            timeout,
            check_eviction,
        })
        .max_size(size)
        .build()
        .map_err(|e| LockError::config(e.to_string()))?;
        Ok(Connections {
            pool,
            users: None,
            slots: (0..size).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            timeout,
        })
    }

    /// Fills the slots from the user's pool instead of opening connections of its own.
    ///
    /// A slot keeps a clone of a multiplexed connection checked out of `pool`, and gives the
    /// checkout back at once: the connection stays in the user's pool, shared (multiplexed) by the
    /// user's commands and the locks', and no command of the locks pays for a checkout — a
    /// `deadpool-redis` checkout recycles the connection with a `PING`, one more round trip.
    pub(super) fn with_users_pool(mut self, pool: deadpool_redis::Pool) -> Self {
        self.users = Some(pool);
        self
    }

    /// The connection of the next slot, opening one if the slot is empty (bounded by `end`).
    async fn get(&self, end: Instant) -> Result<Conn, BackendError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(held) = &*lock(&self.slots[i].held) {
            return Ok(Conn {
                slot: i,
                generation: held.generation,
                conn: held.conn.clone(),
            });
        }
        // Rare (start-up, after a failure): boxed, so the common path's future stays small.
        match timeout_at(end, Box::pin(self.fill(i))).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout {
                what: "connect",
                timeout: self.timeout,
            }),
        }
    }

    async fn fill(&self, i: usize) -> Result<Conn, BackendError> {
        let _filling = self.slots[i].filling.lock().await;
        if let Some(held) = &*lock(&self.slots[i].held) {
            return Ok(Conn {
                slot: i,
                generation: held.generation,
                conn: held.conn.clone(),
            });
        }
        let (conn, object) = match &self.users {
            Some(users) => {
                let checkout = users.get().await.map_err(|e| match e {
                    managed::PoolError::Backend(e) => BackendError::Redis(e),
                    other => BackendError::Pool(other.to_string()),
                })?;
                // Back to the user's pool when `checkout` drops: only a clone is kept.
                ((*checkout).clone(), None)
            }
            None => {
                let object = self.pool.get().await.map_err(|e| match e {
                    managed::PoolError::Backend(e) => BackendError::Redis(e),
                    other => BackendError::Pool(other.to_string()),
                })?;
                (object.conn.clone(), Some(object))
            }
        };
        let mut slot = lock(&self.slots[i].held);
        let held = slot.get_or_insert_with(|| Held {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            conn,
            object,
        });
        Ok(Conn {
            slot: i,
            generation: held.generation,
            conn: held.conn.clone(),
        })
    }

    /// A command on `conn` failed at the connection level: drop that connection, and with it every
    /// other one (most likely dead too: a restart, a failover), so the retry and the calls after it
    /// open fresh ones instead of meeting the dead ones one by one.
    fn discard(&self, conn: &Conn) {
        let current = {
            let slot = lock(&self.slots[conn.slot].held);
            matches!(&*slot, Some(h) if h.generation == conn.generation)
        };
        if !current {
            // Somebody already replaced it.
            return;
        }
        for slot in self.slots.iter() {
            if let Some(held) = lock(&slot.held).take()
                && let Some(mut object) = held.object
            {
                object.broken = true;
            }
        }
        self.pool.retain(|_, _| false);
    }

    /// Runs `f` on a connection, bounded by the command timeout as a whole (connecting and one
    /// retry included), so a Redis that is down, slow or paused yields an error in bounded time.
    ///
    /// A connection that turns out dead (Redis restarted since it was opened, or the runtime that
    /// drove it has gone) is dropped and `f` runs once more on a fresh one, told so by its `retry`
    /// argument. `f` also gets the connection, so a caller can send a follow-up on the same one.
    pub(super) async fn call<T, F, Fut>(
        &self,
        key: Option<&str>,
        what: &'static str,
        mut f: F,
    ) -> Result<T, LockError>
    where
        F: FnMut(&Conn, bool) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let end = Instant::now() + self.timeout;
        let fail = |source| LockError::backend(key, source);
        let timed_out = || {
            fail(BackendError::Timeout {
                what,
                timeout: self.timeout,
            })
        };
        let conn = self.get(end).await.map_err(fail)?;
        // The first request is bounded by the connection's response timeout — which the
        // connections of a user's pool may not have: bounded here then.
        let first = match &self.users {
            None => f(&conn, false).await,
            Some(_) => match timeout_at(end, f(&conn, false)).await {
                Ok(r) => r,
                Err(_) => return Err(timed_out()),
            },
        };
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e) if e.is_timeout() => return Err(timed_out()),
            Err(e) if is_dead(&e) => e,
            Err(e) => return Err(fail(BackendError::Redis(e))),
        };
        self.discard(&conn);
        if e.is_connection_refusal() {
            return Err(fail(BackendError::Redis(e)));
        }
        tracing::debug!(key, error = %e, "connection was dead; retrying on a new one");
        let retry = async {
            let conn = self.get(end).await?;
            let r = f(&conn, true).await;
            if let Err(e) = &r
                && is_dead(e)
            {
                self.discard(&conn);
            }
            r.map_err(BackendError::Redis)
        };
        match timeout_at(end, retry).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(timed_out()),
            Ok(Err(e)) => Err(fail(e)),
            Err(_) => Err(timed_out()),
        }
    }
}

impl Connections {
    /// A pool of the same server's connections, `size` at most, for [`exclusive`](Self::exclusive)
    /// calls.
    pub(super) fn exclusive_pool(&self, size: usize) -> Result<Connections, LockError> {
        let opener = self.pool.manager();
        Connections::new(
            opener.client.clone(),
            size,
            self.timeout,
            opener.check_eviction.clone(),
        )
    }

    /// Runs `f` on a connection of its own, checked out of the pool for the call and given back
    /// after it, for commands that block their connection (`WAIT`): nothing else is queued behind
    /// them. Bounded by the command timeout as a whole; a dead connection is replaced and `f` runs
    /// once more, told so by its `retry` argument. A call that does not finish (its future
    /// dropped) leaves its connection out of the pool: a blocking command may still be running on it.
    pub(super) async fn exclusive<T, F, Fut>(
        &self,
        key: Option<&str>,
        what: &'static str,
        mut f: F,
    ) -> Result<T, LockError>
    where
        F: FnMut(MultiplexedConnection, bool) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let fail = |source| LockError::backend(key, source);
        let timed_out = || {
            fail(BackendError::Timeout {
                what,
                timeout: self.timeout,
            })
        };
        let work = async {
            let mut retry = false;
            loop {
                let object = self.pool.get().await.map_err(|e| match e {
                    managed::PoolError::Backend(e) => BackendError::Redis(e),
                    other => BackendError::Pool(other.to_string()),
                })?;
                let mut checkout = Checkout {
                    object,
                    done: false,
                };
                let r = f(checkout.object.conn.clone(), retry).await;
                checkout.done = true;
                match r {
                    Ok(v) => return Ok(v),
                    Err(e) if is_dead(&e) => {
                        checkout.object.broken = true;
                        if retry || e.is_connection_refusal() {
                            return Err(BackendError::Redis(e));
                        }
                        tracing::debug!(key, error = %e, "connection was dead; retrying on a new one");
                        retry = true;
                    }
                    Err(e) => return Err(BackendError::Redis(e)),
                }
            }
        };
        match timeout_at(Instant::now() + self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(BackendError::Redis(e))) if e.is_timeout() => Err(timed_out()),
            Ok(Err(e)) => Err(fail(e)),
            Err(_) => Err(timed_out()),
        }
    }
}

/// A connection checked out for one call; not given back for reuse unless the call finished.
struct Checkout {
    object: Object<Opener>,
    done: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.done {
            self.object.broken = true;
        }
    }
}

/// Whether `e` means the connection is gone (rather than the command failing on a live one).
fn is_dead(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
