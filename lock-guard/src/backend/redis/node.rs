//! One Redis server as a part of a larger deployment (Redlock's independent masters): its
//! connections and subscriber, built without claiming the manager's subscription handler and with
//! counters shared with the other parts, and the few calls only such a deployment needs.

use std::sync::Arc;
use std::time::Duration;

use super::conn::Connections;
use super::subscriber::Requests;
use super::{RedisBackend, RedisConfig};
use crate::backend::protocol::ScriptCall;
use crate::backend::{Counters, Keys};
use crate::error::LockError;
use crate::waiting::{Subscriptions, Waiters};

/// Starts a subscriber task for release notifications on one of `clients`' servers (in a cluster,
/// any node: classic `PUBLISH` reaches every node; the next one is tried when a connection fails),
/// delivering to `waiters`; the returned handler asks it for subscriptions.
pub(crate) fn spawn_subscriber(
    clients: Vec<redis::Client>,
    waiters: &Arc<Waiters>,
    timeout: Duration,
    counters: Arc<Counters>,
) -> Box<dyn Subscriptions> {
    Box::new(Requests::start(clients, waiters, timeout, counters))
}

impl RedisBackend {
    /// The connections (opened on first use) and the subscriber task of one server, counting into
    /// `counters`. The subscriber delivers to `waiters`; the returned handler asks it for
    /// subscriptions — install it (or a fan-out over several) with
    /// [`Waiters::set_subscriptions`].
    pub(crate) fn connect_node(
        config: RedisConfig,
        waiters: &Arc<Waiters>,
        counters: Arc<Counters>,
    ) -> Result<(RedisBackend, Box<dyn Subscriptions>), LockError> {
        let conns = Arc::new(Connections::new(
            config.client.clone(),
            config.pool_size,
            config.timeout,
            (!config.allow_eviction).then(|| config.shown_url.clone()),
        )?);
        let backend = RedisBackend {
            conns,
            counters: counters.clone(),
            shown_url: config.shown_url,
        };
        let subscriptions =
            spawn_subscriber(vec![config.client], waiters, config.timeout, counters);
        Ok((backend, subscriptions))
    }

    /// One `PING`: a wrong URL or password, or a server that is down, fails here.
    pub(crate) async fn ping(&self) -> Result<(), LockError> {
        self.conns
            .call(None, "PING", |c, _| {
                let mut conn = c.conn.clone();
                async move { redis::cmd("PING").query_async::<()>(&mut conn).await }
            })
            .await
    }

    /// The URL, password redacted.
    pub(crate) fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Raises the key's fencing counter to at least `fence` (never lowers it), for as long as a
    /// counter lives after an acquisition with `lease`.
    pub(crate) async fn raise_fence(
        &self,
        keys: &Keys,
        fence: u64,
        lease: Duration,
    ) -> Result<(), LockError> {
        let _: i64 = self
            .eval(
                &keys.lock,
                |_| ScriptCall::raise_fence(keys, fence, lease),
                None,
            )
            .await?;
        Ok(())
    }
}
