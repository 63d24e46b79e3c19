//! A Redis primary whose acquisitions count only once replicas acknowledged them
//! ([`LockManagerBuilder::wait_for_replicas`](crate::LockManagerBuilder::wait_for_replicas)).
//!
//! The acquire script and `WAIT n timeout` go out as one pipeline on one connection: one round
//! trip, and `WAIT` counts the replicas that have the connection's writes up to and including the
//! script's. An acquisition fewer replicas acknowledged is released at once and reported as
//! [`LockError::NotReplicated`]. `WAIT` makes the lock survive a failover to an acknowledging
//! replica; it does not make replication synchronous (a replica may still be promoted without it).
//!
//! `WAIT` holds up the commands behind it on the same connection until the replicas answer or its
//! timeout passes, so its timeout must stay below the command timeout.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{ErrorKind, Pipeline, ServerErrorKind};
use tokio::time::Instant;

use super::node::{AcquireArgs, acquire_reply};
use super::scripts::scripts;
use super::{Fuse, RedisBackend};
use crate::backend::{Attempt, Backend, BoxFuture, Counters, Keys, Try};
use crate::error::LockError;

/// A single-server backend whose acquisitions wait for `wanted` replicas, at most `timeout`.
pub(crate) struct Replicated {
    node: RedisBackend,
    wanted: u64,
    timeout: Duration,
}

impl Replicated {
    pub(crate) fn new(node: RedisBackend, wanted: u64, timeout: Duration) -> Self {
        Replicated {
            node,
            wanted,
            timeout,
        }
    }

    async fn acquire(&self, req: Try<'_>) -> Result<Attempt, LockError> {
        let node = &self.node;
        let keys = req.keys;
        let acquire_args = AcquireArgs::new(&req);
        let wait_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let sent_on = Mutex::new(None);
        let mut fuse = Fuse {
            backend: node,
            keys,
            token: req.token,
            lease: req.lease,
            sent_on: &sent_on,
            armed: true,
        };
        let names = [&*keys.lock, keys.fence.as_str(), keys.queue.as_str()];
        let counters = &node.counters;
        let sent = Instant::now();
        let ((taken, value), acked): ((i64, i64), i64) = node
            .conns
            .call(Some(&keys.lock), "acquire and WAIT", |c, retry| {
                let mut conn = c.conn.clone();
                *super::lock(&sent_on) = Some(conn.clone());
                let mut args: Vec<&[u8]> = acquire_args.get(&req).to_vec();
                if retry {
                    // The first request may have been applied before its connection died.
                    args.push(b"r");
                }
                let pipeline = |eval: bool| {
                    let mut p = Pipeline::with_capacity(2);
                    p.add_command(scripts().acquire.command(eval, &names, &args));
                    p.cmd("WAIT").arg(self.wanted).arg(wait_ms);
                    p
                };
                let (first, reload) = (pipeline(false), pipeline(true));
                async move {
                    counters.commands.fetch_add(1, Ordering::Relaxed);
                    match first.query_async(&mut conn).await {
                        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                            counters.commands.fetch_add(1, Ordering::Relaxed);
                            reload.query_async(&mut conn).await
                        }
                        other => other,
                    }
                }
            })
            .await?;
        fuse.armed = false;
        if taken != 1 {
            return acquire_reply(keys, (taken, value), sent, req.lease);
        }
        let acked = u64::try_from(acked).unwrap_or(0);
        if acked < self.wanted {
            if let Err(e) = node.release(keys, req.token).await {
                // The lease frees it.
                tracing::warn!(key = %keys.lock, error = %e, "could not release an unreplicated lock");
            }
            return Err(LockError::NotReplicated {
                key: keys.lock.to_string(),
                acked,
                wanted: self.wanted,
            });
        }
        acquire_reply(keys, (taken, value), sent, req.lease)
    }
}

impl Backend for Replicated {
    fn inspect<'a>(
        &'a self,
        route: crate::backend::inspect::Route<'a>,
    ) -> BoxFuture<'a, crate::backend::inspect::Answers> {
        self.node.inspect(route)
    }

    fn try_acquire<'a>(&'a self, req: Try<'a>) -> BoxFuture<'a, Result<Attempt, LockError>> {
        Box::pin(self.acquire(req))
    }

    fn release<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        self.node.release(keys, token)
    }

    fn renew<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        self.node.renew(keys, token, lease)
    }

    fn leave_queue<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), LockError>> {
        self.node.leave_queue(keys, token)
    }

    fn force_unlock<'a>(&'a self, keys: &'a Keys) -> BoxFuture<'a, Result<bool, LockError>> {
        self.node.force_unlock(keys)
    }

    fn command_timeout(&self) -> Duration {
        self.node.command_timeout()
    }

    fn counters(&self) -> &Counters {
        self.node.counters()
    }

    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        self.node.describe(f);
        f.field("wait_for_replicas", &(self.wanted, self.timeout));
    }
}
