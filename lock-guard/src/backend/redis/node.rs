//! One Redis server as a part of a larger deployment (Redlock's independent masters): its
//! connections and subscriber, built without claiming the manager's subscription handler and with
//! counters shared with the other parts, and the few calls only such a deployment needs.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use super::conn::Connections;
use super::scripts::Lua;
use super::subscriber::Requests;
use super::{FENCE_RETENTION, RedisBackend, RedisConfig, millis};
use crate::backend::{Attempt, Counters, Keys, Try};
use crate::error::{BackendError, LockError};
use crate::lease;
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

#[cfg(feature = "cluster")]
/// A lease (or a counter's lifetime) as a script argument: whole milliseconds, at least 1.
pub(crate) fn millis_arg(d: Duration) -> String {
    millis(d).to_string()
}

/// The acquire script's arguments (see `acquire.lua`) for the callers that build their own request
/// around it (replica acknowledgement, the cluster), built as [`RedisBackend::acquire`] does.
pub(crate) struct AcquireArgs {
    lease_ms: String,
    retention: String,
    score: String,
    floor: String,
}

impl AcquireArgs {
    pub(crate) fn new(req: &Try<'_>) -> Self {
        AcquireArgs {
            lease_ms: millis(req.lease).to_string(),
            retention: millis(req.lease + FENCE_RETENTION).to_string(),
            // The queue's order: when the caller registered, on its clock (the clocks of several
            // machines only blur the order of turns, never exclusion).
            score: match req.register {
                true => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros())
                    .to_string(),
                false => "-".to_owned(),
            },
            floor: req
                .fence_floor
                .map_or_else(|| "-".to_owned(), |f| f.to_string()),
        }
    }

    /// `ARGV[1..=7]`; the retry flag (`r`) goes after them.
    pub(crate) fn get<'a>(&'a self, req: &Try<'a>) -> [&'a [u8]; 7] {
        [
            req.token.as_bytes(),
            self.lease_ms.as_bytes(),
            self.retention.as_bytes(),
            if req.others_wait { b"w" } else { b"-" },
            self.score.as_bytes(),
            if req.queued { b"q" } else { b"-" },
            self.floor.as_bytes(),
        ]
    }
}

/// What the acquire script's reply `{taken, value}` says: taken with the fencing token `value`,
/// valid from `sent` for `lease`; or held, with `value` the holder's `PTTL`.
pub(crate) fn acquire_reply(
    keys: &Keys,
    (taken, value): (i64, i64),
    sent: tokio::time::Instant,
    lease: Duration,
) -> Result<Attempt, LockError> {
    if taken != 1 {
        // PTTL: -1 means no expiry (set by hand), -2 that it vanished meanwhile.
        return Ok(Attempt::Held(match value {
            -2 => Some(Duration::ZERO),
            v => u64::try_from(v).ok().map(Duration::from_millis),
        }));
    }
    let fence = u64::try_from(value).map_err(|_| {
        LockError::backend(
            Some(&keys.lock),
            BackendError::Protocol(format!("negative fencing token {value}")),
        )
    })?;
    Ok(Attempt::Acquired {
        fence,
        valid_until: lease::valid_until(sent, lease),
    })
}

fn raise_fence_script() -> &'static Lua {
    static SCRIPT: OnceLock<Lua> = OnceLock::new();
    SCRIPT.get_or_init(|| Lua::new(include_str!("../../scripts/raise_fence.lua")))
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
        let fence = fence.to_string();
        let retention = millis(lease + FENCE_RETENTION).to_string();
        let _: i64 = self
            .eval(
                &keys.lock,
                raise_fence_script(),
                &[&keys.fence],
                &[fence.as_bytes(), retention.as_bytes()],
                None,
                None,
            )
            .await?;
        Ok(())
    }
}
