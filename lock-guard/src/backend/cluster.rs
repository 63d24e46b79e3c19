//! Redis Cluster: the same scripts as on one server, sent through the cluster client of the
//! `redis` crate, which routes each script by its first key — every key of one lock carries the
//! lock's `{…}` hash tag, so all of them live in one slot and the script runs on that slot's
//! master — and follows `MOVED`/`ASK`, failovers and slot migrations itself.
//!
//! **Retried commands.** The cluster client resends a command after a reconnect or a redirect, so
//! an acquisition may reach Redis twice. Every acquisition is therefore sent with the scripts'
//! retry flag: an acquisition that finds the lock already holding its own token (a token is used by
//! one call only, and a call that was granted stops asking) reports it as taken, with the token
//! issued the first time. A release sent twice finds the lock no longer its own the second time
//! and changes nothing.
//!
//! **Notifications.** Classic `PUBLISH`/`SUBSCRIBE`, on a dedicated pub/sub connection to one node
//! (the first URL): in a cluster a classic `PUBLISH` on any node reaches every node. Not sharded
//! pub/sub: with `redis` 1.8 on Redis 7.0, `SSUBSCRIBE` on the multiplexed cluster connection
//! mistakes the server's `sunsubscribe` push at a failover for a command reply (a concurrent
//! `EVALSHA` may receive it) and drops the subscription, and resubscribing channels of several slots
//! at once fails with `CROSSSLOT`. Classic pub/sub costs every node a copy of each release message
//! (only releases of awaited locks publish). If the subscribed node goes away, waiters retry at the
//! holder's lease end until it is back; a reconnect wakes every waiting head.
//!
//! **Replica acknowledgement.** With `wait_for_replicas`, the acquire script and `WAIT` go out as
//! one pipeline routed to the master of the lock's slot, so `WAIT` counts that master's replicas.
//!
//! **Fencing across a failover.** Tokens are the larger of the slot's counter + 1 and the master's
//! clock in microseconds (`TIME`). A promoted replica that missed the last acquisitions has a stale
//! counter, but its clock has moved on by at least the failover's duration (the node timeout): the
//! tokens stay increasing as long as the masters' clocks differ by less than that.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{ErrorKind, Pipeline, RedisError, ServerErrorKind};
use tokio::time::Instant;

use super::redis::scripts::{Lua, scripts};
use super::redis::{AcquireArgs, acquire_reply, millis_arg};
use super::{Attempt, Backend, BoxFuture, Counters, HANDOVER, Keys, Try};
use crate::background;
use crate::error::{BackendError, LockError};
use crate::waiting::Waiters;

/// What [`ClusterBackend::connect`] needs.
pub(crate) struct ClusterConfig {
    pub(crate) client: redis::cluster::ClusterClient,
    /// The nodes the subscriber may connect to (the seed URLs, tried in turn).
    pub(crate) subscriber: Vec<redis::Client>,
    /// The URLs with passwords redacted, for `Debug`.
    pub(crate) shown_urls: Vec<String>,
    pub(crate) timeout: Duration,
    /// `WAIT` for this many replicas, at most this long, after each acquisition.
    pub(crate) replicas: Option<(u64, Duration)>,
}

pub(crate) struct ClusterBackend {
    conn: ClusterConnection,
    counters: Arc<Counters>,
    timeout: Duration,
    shown_urls: Vec<String>,
    replicas: Option<(u64, Duration)>,
}

impl ClusterBackend {
    /// Connects to the cluster (reading its slot map; a wrong URL or password fails here) and
    /// starts the subscriber.
    pub(crate) async fn connect(
        config: ClusterConfig,
        waiters: &Arc<Waiters>,
    ) -> Result<ClusterBackend, LockError> {
        let conn =
            match tokio::time::timeout(config.timeout * 2, config.client.get_async_connection())
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(LockError::backend(None, BackendError::Redis(e))),
                Err(_) => {
                    return Err(LockError::backend(
                        None,
                        BackendError::Timeout {
                            what: "cluster connect",
                            timeout: config.timeout * 2,
                        },
                    ));
                }
            };
        let counters = Arc::new(Counters::default());
        let subscriptions = super::redis::spawn_subscriber(
            config.subscriber,
            waiters,
            config.timeout,
            counters.clone(),
        );
        waiters.set_subscriptions(subscriptions);
        Ok(ClusterBackend {
            conn,
            counters,
            timeout: config.timeout,
            shown_urls: config.shown_urls,
            replicas: config.replicas,
        })
    }

    /// `EVALSHA`, falling back to `EVAL` on `NOSCRIPT` (each master has its own script cache),
    /// bounded by the command timeout as a whole, the client's retries included.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        key: &str,
        script: &Lua,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, LockError> {
        let mut conn = self.conn.clone();
        let counters = &self.counters;
        self.bounded(key, "script call", async move {
            counters.commands.fetch_add(1, Ordering::Relaxed);
            match script
                .command(false, keys, args)
                .query_async(&mut conn)
                .await
            {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    counters.commands.fetch_add(1, Ordering::Relaxed);
                    script
                        .command(true, keys, args)
                        .query_async(&mut conn)
                        .await
                }
                other => other,
            }
        })
        .await
    }

    async fn bounded<T>(
        &self,
        key: &str,
        what: &'static str,
        work: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LockError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out(key, what)),
            Ok(Err(e)) => Err(LockError::backend(Some(key), BackendError::Redis(e))),
            Err(_) => Err(self.timed_out(key, what)),
        }
    }

    fn timed_out(&self, key: &str, what: &'static str) -> LockError {
        LockError::backend(
            Some(key),
            BackendError::Timeout {
                what,
                timeout: self.timeout,
            },
        )
    }

    async fn acquire(&self, req: Try<'_>) -> Result<Attempt, LockError> {
        let keys = req.keys;
        let acquire_args = AcquireArgs::new(&req);
        let mut fuse = Fuse {
            backend: self,
            keys,
            token: req.token,
            armed: true,
        };
        let names = [&*keys.lock, keys.fence.as_str(), keys.queue.as_str()];
        let [a1, a2, a3, a4, a5, a6, a7] = acquire_args.get(&req);
        // Always with the retry flag: the client may resend it (see the module's docs).
        let args: [&[u8]; 8] = [a1, a2, a3, a4, a5, a6, a7, b"r"];
        let sent = Instant::now();
        let ((taken, value), acked) = match self.replicas {
            None => (
                self.eval(&keys.lock, &scripts().acquire, &names, &args)
                    .await?,
                None,
            ),
            Some((wanted, wait)) => {
                let (reply, acked) = self
                    .acquire_and_wait(keys, &names, &args, wanted, wait)
                    .await?;
                (reply, Some((acked, wanted)))
            }
        };
        fuse.armed = false;
        if let (1, Some((acked, wanted))) = (taken, acked)
            && acked < wanted
        {
            if let Err(e) = self.release_token(keys, req.token).await {
                // The lease frees it.
                tracing::warn!(key = %keys.lock, error = %e, "could not release an unreplicated lock");
            }
            return Err(LockError::NotReplicated {
                key: keys.lock.to_string(),
                acked,
                wanted,
            });
        }
        acquire_reply(keys, (taken, value), sent, req.lease)
    }

    /// The acquire script and `WAIT wanted wait` in one pipeline to the master of the lock's slot
    /// (a `WAIT` routed on its own would go to every master and answer the minimum).
    async fn acquire_and_wait(
        &self,
        keys: &Keys,
        names: &[&str],
        args: &[&[u8]],
        wanted: u64,
        wait: Duration,
    ) -> Result<((i64, i64), u64), LockError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let route =
            SingleNodeRoutingInfo::SpecificNode(Route::with_key(&*keys.lock, SlotAddr::Master));
        let pipeline = |eval: bool| {
            let mut p = Pipeline::with_capacity(2);
            p.add_command(scripts().acquire.command(eval, names, args));
            p.cmd("WAIT").arg(wanted).arg(wait_ms);
            p
        };
        let mut conn = self.conn.clone();
        let counters = &self.counters;
        let values = self
            .bounded(&keys.lock, "acquire and WAIT", async move {
                counters.commands.fetch_add(1, Ordering::Relaxed);
                // The pipeline answers each command apart: a NOSCRIPT is in the first reply.
                let values = conn
                    .route_pipeline(pipeline(false), 0, 2, route.clone())
                    .await?;
                let noscript = matches!(
                    values.first(),
                    Some(redis::Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript)
                );
                if !noscript {
                    return Ok(values);
                }
                counters.commands.fetch_add(1, Ordering::Relaxed);
                conn.route_pipeline(pipeline(true), 0, 2, route).await
            })
            .await?;
        let protocol =
            |what: String| LockError::backend(Some(&keys.lock), BackendError::Protocol(what));
        let [reply, acked]: [redis::Value; 2] = values
            .try_into()
            .map_err(|v: Vec<_>| protocol(format!("{} replies to acquire and WAIT", v.len())))?;
        let reply = redis::from_redis_value(reply).map_err(|e| protocol(e.to_string()))?;
        let acked: i64 = redis::from_redis_value(acked).map_err(|e| protocol(e.to_string()))?;
        Ok((reply, u64::try_from(acked).unwrap_or(0)))
    }

    async fn release_token(&self, keys: &Keys, token: &str) -> Result<bool, LockError> {
        self.release_script(keys, token, false).await
    }

    /// The release script; `abandoned` also takes the token out of the queue (the clean-up after a
    /// try whose reply never came, which may have registered it).
    async fn release_script(
        &self,
        keys: &Keys,
        token: &str,
        abandoned: bool,
    ) -> Result<bool, LockError> {
        let handover = millis_arg(HANDOVER);
        let forget: &[u8] = if abandoned { b"z" } else { b"-" };
        let n: i64 = self
            .eval(
                &keys.lock,
                &scripts().release,
                &[&keys.lock, &keys.channel, &keys.queue],
                &[token.as_bytes(), handover.as_bytes(), forget],
            )
            .await?;
        Ok(n == 1)
    }
}

/// Releases an acquisition whose reply never came. The cluster client gives no hold on which
/// connection a command travels (it may resend it after a redirect), so the release goes out
/// once at once and once more after a command timeout, when the acquisition has surely landed
/// or failed; either is harmless when the lock is not the token's.
struct Fuse<'a> {
    backend: &'a ClusterBackend,
    keys: &'a Keys,
    token: &'a str,
    armed: bool,
}

impl Drop for Fuse<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let backend = ClusterBackend {
            conn: self.backend.conn.clone(),
            counters: self.backend.counters.clone(),
            timeout: self.backend.timeout,
            shown_urls: Vec::new(),
            replicas: None,
        };
        let (keys, token) = (self.keys.clone(), self.token.to_owned());
        background::spawn(async move {
            let first = backend.release_script(&keys, &token, true).await;
            tokio::time::sleep(backend.timeout).await;
            let second = backend.release_script(&keys, &token, true).await;
            let released = matches!(first, Ok(true)) || matches!(second, Ok(true));
            tracing::debug!(key = %keys.lock, released, "cleaned up after an abandoned acquisition");
        });
    }
}

impl ClusterBackend {
    /// The masters' addresses, from `CLUSTER NODES` (for listings, which scan every master).
    async fn masters(&self) -> Result<Vec<(String, u16)>, LockError> {
        let mut conn = self.conn.clone();
        let nodes = self
            .bounded("", "CLUSTER NODES", async move {
                conn.route_command(
                    redis::cmd("CLUSTER").arg("NODES").clone(),
                    redis::cluster_routing::RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
            })
            .await?;
        let nodes: String = redis::from_redis_value(nodes)
            .map_err(|e| LockError::backend(None, BackendError::Protocol(e.to_string())))?;
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                let addr = fields.get(1)?.split(['@', ',']).next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect())
    }
}

impl Backend for ClusterBackend {
    fn inspect<'a>(
        &'a self,
        route: super::inspect::Route<'a>,
    ) -> BoxFuture<'a, super::inspect::Answers> {
        use super::inspect::{Answers, Route, on_node};
        Box::pin(async move {
            match route {
                Route::Lock(keys) => {
                    // Routed by the key's slot, as every script of the lock.
                    let answer = on_node(route, |cmd: redis::Cmd| {
                        let mut conn = self.conn.clone();
                        self.bounded(&keys.lock, "inspect", async move {
                            cmd.query_async(&mut conn).await
                        })
                    })
                    .await;
                    Answers::Nodes(vec![answer])
                }
                Route::Scan { .. } => {
                    let masters = match self.masters().await {
                        Ok(m) => m,
                        Err(e) => return Answers::Nodes(vec![Err(e)]),
                    };
                    let scans =
                        masters.into_iter().map(|(host, port)| {
                            on_node(route, move |cmd: redis::Cmd| {
                                let mut conn = self.conn.clone();
                                let to = redis::cluster_routing::RoutingInfo::SingleNode(
                                    SingleNodeRoutingInfo::ByAddress {
                                        host: host.clone(),
                                        port,
                                    },
                                );
                                self.bounded("", "SCAN", async move {
                                    conn.route_command(cmd, to).await
                                })
                            })
                        });
                    Answers::Nodes(futures_util::future::join_all(scans).await)
                }
            }
        })
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
            let lease_ms = millis_arg(lease);
            let n: i64 = self
                .eval(
                    &keys.lock,
                    &scripts().renew,
                    &[&keys.lock],
                    &[token.as_bytes(), lease_ms.as_bytes()],
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
        let mut conn = self.conn.clone();
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        Box::pin(self.bounded(&keys.lock, "ZREM", async move {
            redis::cmd("ZREM")
                .arg(&keys.queue)
                .arg(token)
                .query_async::<()>(&mut conn)
                .await
        }))
    }

    fn force_unlock<'a>(&'a self, keys: &'a Keys) -> BoxFuture<'a, Result<bool, LockError>> {
        let mut conn = self.conn.clone();
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let n: i64 = self
                .bounded(&keys.lock, "DEL", async move {
                    redis::cmd("DEL")
                        .arg(&*keys.lock)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(n == 1)
        })
    }

    fn command_timeout(&self) -> Duration {
        self.timeout
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        f.field("backend", &"cluster")
            .field("urls", &self.shown_urls);
    }
}
