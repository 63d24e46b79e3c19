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
//! timeout passes, so its timeout must stay below the command timeout, and each acquisition takes a
//! connection of its own (releases and renewals go on the shared ones, never behind a `WAIT`).
//! A timeout below a millisecond is sent as one millisecond (`WAIT n 0` would wait forever).

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::conn::Connections;
use super::{Fuse, RedisBackend};
use crate::backend::protocol::{self, ScriptCall, Sending};
use crate::backend::{Attempt, Backend, BoxFuture, Counters, Keys, Try};
use crate::error::LockError;

/// At most this many acquisitions wait for replicas at once (each on a connection of its own);
/// more wait for a connection, within the command timeout.
const ACK_CONNECTIONS: usize = 32;

/// A single-server backend whose acquisitions wait for `wanted` replicas, at most `timeout`.
pub(crate) struct Replicated {
    node: RedisBackend,
    /// Connections for acquisitions, one per acquisition in flight: `WAIT` blocks its connection,
    /// and releases and renewals (on the node's shared connections) must not queue behind it.
    acks: Connections,
    wanted: u64,
    timeout: Duration,
}

impl Replicated {
    pub(crate) fn new(
        node: RedisBackend,
        wanted: u64,
        timeout: Duration,
    ) -> Result<Self, LockError> {
        let acks = node.conns.exclusive_pool(ACK_CONNECTIONS)?;
        Ok(Replicated {
            node,
            acks,
            wanted,
            timeout,
        })
    }

    async fn acquire(&self, req: Try<'_>) -> Result<Attempt, LockError> {
        let node = &self.node;
        let keys = req.keys;
        let sent_on = Mutex::new(None);
        let mut fuse = Fuse {
            backend: node,
            keys,
            token: req.token,
            lease: req.lease,
            sent_on: &sent_on,
            armed: true,
        };
        let counters = &node.counters;
        let (wanted, wait) = (self.wanted, self.timeout);
        let sent = Instant::now();
        let values = self
            .acks
            .exclusive(Some(&keys.lock), "acquire and WAIT", |conn, retry| {
                *super::lock(&sent_on) = Some(conn.clone());
                // A resend: the first request may have been applied before its connection died.
                let call =
                    ScriptCall::acquire(&req, if retry { Sending::Again } else { Sending::Once });
                async move {
                    protocol::acquire_and_wait(&call, wanted, wait, counters, |p| {
                        let mut conn = conn.clone();
                        async move { p.query_async::<Vec<Value>>(&mut conn).await }
                    })
                    .await
                }
            })
            .await?;
        fuse.armed = false;
        let ((taken, value), acked) = protocol::acquired_and_acked(keys, values)?;
        if taken == 1 && acked < wanted {
            let release = node.release(keys, req.token);
            return Err(protocol::not_replicated(keys, acked, wanted, release).await);
        }
        protocol::acquire_reply(keys, (taken, value), sent, req.lease)
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
