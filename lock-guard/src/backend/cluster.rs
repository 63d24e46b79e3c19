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
//! `WAIT` blocks its connection, so each such acquisition goes on a cluster connection of its own
//! (kept for the next one once it is done); releases and renewals never queue behind a `WAIT`.
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

use redis::RedisError;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use tokio::time::Instant;

use super::protocol::{self, Landing, ScriptCall, Sending};
use super::{Attempt, Backend, BoxFuture, Counters, Keys, Try};
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
    /// Accept masters whose `maxmemory-policy` can evict locks.
    pub(crate) allow_eviction: bool,
}

pub(crate) struct ClusterBackend {
    conn: ClusterConnection,
    counters: Arc<Counters>,
    timeout: Duration,
    shown_urls: Vec<String>,
    replicas: Option<(u64, Duration)>,
    /// With `replicas`: connections for acquisitions, one per acquisition in flight (`WAIT`
    /// blocks its connection; releases and renewals go on `conn`, never behind a `WAIT`).
    acks: Option<Arc<AckConnections>>,
}

/// Idle cluster connections for acquisitions that wait for replicas; a new one is opened when none
/// is idle (it reads the slot map: one more round trip, only then).
struct AckConnections {
    client: redis::cluster::ClusterClient,
    idle: std::sync::Mutex<Vec<ClusterConnection>>,
}

/// At most this many idle acknowledgement connections are kept.
const IDLE_ACK_CONNECTIONS: usize = 32;

impl AckConnections {
    async fn take(&self) -> Result<ClusterConnection, RedisError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.client.get_async_connection().await,
        }
    }

    /// A connection whose call finished: ready for the next one.
    fn give_back(&self, conn: ClusterConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_ACK_CONNECTIONS {
            idle.push(conn);
        }
    }
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
        let mut conn = conn;
        if !config.allow_eviction {
            check_eviction(&mut conn, config.timeout).await?;
        }
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
            acks: config.replicas.map(|_| {
                Arc::new(AckConnections {
                    client: config.client,
                    idle: std::sync::Mutex::new(Vec::new()),
                })
            }),
        })
    }

    /// One script call (see [`protocol::eval`]; each master has its own script cache), bounded by
    /// the command timeout as a whole, the client's retries included.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        key: &str,
        call: &ScriptCall<'_>,
    ) -> Result<T, LockError> {
        let mut conn = self.conn.clone();
        let counters = &self.counters;
        self.bounded(key, "script call", async move {
            protocol::eval(&mut conn, call, counters).await
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
        let mut fuse = Fuse {
            backend: self,
            keys,
            token: req.token,
            armed: true,
        };
        // Always with the retry flag: the client may resend it (see the module's docs).
        let call = ScriptCall::acquire(&req, Sending::Again);
        let sent = Instant::now();
        let reply = match self.replicas {
            None => self.eval(&keys.lock, &call).await?,
            Some((wanted, wait)) => {
                let ((taken, value), acked) =
                    self.acquire_and_wait(keys, &call, wanted, wait).await?;
                fuse.armed = false;
                if taken == 1 && acked < wanted {
                    let release = self.release_token(keys, req.token);
                    return Err(protocol::not_replicated(keys, acked, wanted, release).await);
                }
                (taken, value)
            }
        };
        fuse.armed = false;
        protocol::acquire_reply(keys, reply, sent, req.lease)
    }

    /// The acquire script and `WAIT wanted wait` in one pipeline to the master of the lock's slot
    /// (a `WAIT` routed on its own would go to every master and answer the minimum).
    async fn acquire_and_wait(
        &self,
        keys: &Keys,
        call: &ScriptCall<'_>,
        wanted: u64,
        wait: Duration,
    ) -> Result<((i64, i64), u64), LockError> {
        let route =
            SingleNodeRoutingInfo::SpecificNode(Route::with_key(&*keys.lock, SlotAddr::Master));
        let counters = &self.counters;
        let acks = self.acks.as_ref();
        let main = &self.conn;
        let values = self
            .bounded(&keys.lock, "acquire and WAIT", async move {
                // A connection of its own (a dropped call's connection is not reused).
                let conn = match acks {
                    Some(acks) => acks.take().await?,
                    None => main.clone(),
                };
                let values = protocol::acquire_and_wait(call, wanted, wait, counters, |p| {
                    let (mut conn, route) = (conn.clone(), route.clone());
                    async move { conn.route_pipeline(p, 0, 2, route).await }
                })
                .await?;
                if let Some(acks) = acks {
                    acks.give_back(conn);
                }
                Ok(values)
            })
            .await?;
        protocol::acquired_and_acked(keys, values)
    }

    async fn release_token(&self, keys: &Keys, token: &str) -> Result<bool, LockError> {
        let n: i64 = self
            .eval(&keys.lock, &ScriptCall::release(keys, token, false))
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
        let (conn, counters, timeout) = (
            self.backend.conn.clone(),
            self.backend.counters.clone(),
            self.backend.timeout,
        );
        let keys = Arc::new(self.keys.clone());
        let token: Arc<str> = self.token.into();
        protocol::release_in_background(
            keys.lock.clone(),
            "clean-up after an abandoned acquisition",
            Instant::now() + timeout * 2,
            Landing::MaybeAfter(timeout),
            move |_| {
                let (mut conn, counters, keys, token) =
                    (conn.clone(), counters.clone(), keys.clone(), token.clone());
                Box::pin(async move {
                    let call = ScriptCall::release(&keys, &token, true);
                    let work = protocol::eval::<i64, _>(&mut conn, &call, &counters);
                    match tokio::time::timeout(timeout, work).await {
                        Ok(Ok(n)) => Ok(n == 1),
                        Ok(Err(e)) => {
                            Err(LockError::backend(Some(&keys.lock), BackendError::Redis(e)))
                        }
                        Err(_) => Err(LockError::backend(
                            Some(&keys.lock),
                            BackendError::Timeout {
                                what: "release",
                                timeout,
                            },
                        )),
                    }
                })
            },
        );
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
            let n: i64 = self
                .eval(&keys.lock, &ScriptCall::renew(keys, token, lease))
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

/// Refuses a cluster any of whose masters can evict locks (see `redis::eviction`): `INFO memory`
/// on every master, once, when the manager is built.
async fn check_eviction(conn: &mut ClusterConnection, timeout: Duration) -> Result<(), LockError> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let mut info = redis::cmd("INFO");
    info.arg("memory");
    let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let answers = match tokio::time::timeout(timeout * 2, conn.route_command(info, routing)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) if e.code() == Some("NOPERM") => {
            tracing::warn!("not allowed to read INFO memory: the eviction policy is not checked");
            return Ok(());
        }
        Ok(Err(e)) => return Err(LockError::backend(None, BackendError::Redis(e))),
        Err(_) => {
            return Err(LockError::backend(
                None,
                BackendError::Timeout {
                    what: "INFO memory on every master",
                    timeout: timeout * 2,
                },
            ));
        }
    };
    let pairs: Vec<(String, String)> = match answers {
        redis::Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    redis::from_redis_value(k).ok()?,
                    redis::from_redis_value(v).ok()?,
                ))
            })
            .collect(),
        other => vec![(
            "the cluster".to_owned(),
            redis::from_redis_value(other).unwrap_or_default(),
        )],
    };
    for (node, text) in pairs {
        if let Some(e) = super::redis::eviction::evicting(&text) {
            return Err(LockError::config(super::redis::eviction::reason(
                &format!("cluster master {node}"),
                &e,
            )));
        }
    }
    Ok(())
}
