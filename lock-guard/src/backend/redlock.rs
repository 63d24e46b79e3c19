//! Redlock: one lock over N independent Redis masters, held while a majority of them grant it.
//!
//! Each node is a whole single-server backend (its own connections, script cache and subscriber),
//! so a node that is down, slow or frozen costs at most the command timeout and leaves the others
//! untouched. One try asks every node at once, each bounded by the command timeout, and decides as
//! soon as the answers settle it:
//!
//! - a majority granted: the token is the largest the majority issued (every node is offered the
//!   same least token, so they usually agree), written back to the nodes that issued less (so the
//!   next majority, which shares a node with this one, issues a larger one); the lock is valid until `sent + lease − drift`, counted from the moment the requests
//!   left — an acquisition whose validity has already run out is given back, never returned;
//! - a majority can no longer grant it: everything granted is released at once (nodes still
//!   silent are released by their own clean-up, on the connection the request went out on, so the
//!   release cannot overtake the grant); the answer is `Held` with the time until enough holders'
//!   leases end for a majority to be free, or — when silent nodes, not holders, stand in the
//!   way — the nodes' error, naming the key.
//!
//! Waiting is the manager's, as for one server: a release publishes on every node where the lock
//! was awaited, and a subscriber per node wakes the same local waiters, so any node's message
//! wakes them. Two processes that split the nodes between them both give up and retry after a
//! random pause (up to [`SPLIT_JITTER`]), so they do not split again in step.
//!
//! Each try writes its own value on the nodes (the owner token and a try number): a try that gave
//! up releases what it was granted in the background, and that release must not remove what a
//! later try of the same acquisition is granted. The winning try's value is kept until the release.
//!
//! Not used here: the cross-process queue of one server (each node would hand the lock to its own
//! oldest waiter, and a split of hand-overs would block everybody for the reservation), so tries
//! never register, and [`Backend::leave_queue`] has nothing to do.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::protocol::{self, Landing};
use super::redis::{RedisBackend, RedisConfig};
use super::redlock_subscriptions::Fanout;
use super::{Attempt, Backend, BoxFuture, Counters, Keys, Try};
use crate::error::{BackendError, LockError};
use crate::lease;
use crate::waiting::Waiters;

/// The longest random pause after a try that won some nodes but not a majority.
pub(crate) const SPLIT_JITTER: Duration = Duration::from_millis(20);

pub(crate) struct RedlockBackend {
    nodes: Arc<[RedisBackend]>,
    quorum: usize,
    counters: Arc<Counters>,
    timeout: Duration,
    /// Numbers the tries, for their values on the nodes.
    tries: AtomicU64,
    /// Owner token → the value its winning try wrote on the nodes, while the lock is held.
    held: Mutex<HashMap<Box<str>, Box<str>>>,
}

impl RedlockBackend {
    /// Connects to every node and starts a subscriber per node; fails unless a majority answers
    /// `PING` (the others are retried on every use).
    pub(crate) async fn connect(
        configs: Vec<RedisConfig>,
        waiters: &Arc<Waiters>,
    ) -> Result<RedlockBackend, LockError> {
        let counters = Arc::new(Counters::default());
        let timeout = configs
            .iter()
            .map(|c| c.timeout)
            .max()
            .unwrap_or(Duration::from_secs(1));
        let mut nodes = Vec::with_capacity(configs.len());
        let mut subscriptions = Vec::with_capacity(configs.len());
        for config in configs {
            let (node, subs) = RedisBackend::connect_node(config, waiters, counters.clone())?;
            nodes.push(node);
            subscriptions.push(subs);
        }
        let quorum = nodes.len() / 2 + 1;
        let pings = join_all(nodes.iter().map(RedisBackend::ping)).await;
        for r in &pings {
            if let Err(LockError::Backend {
                source: BackendError::Redis(e),
                ..
            }) = r
                && let Some(refused) = super::redis::eviction::as_config(e)
            {
                // A node that may evict locks is refused as one server would be.
                return Err(refused);
            }
        }
        let up = pings.iter().filter(|r| r.is_ok()).count();
        for (node, r) in nodes.iter().zip(&pings) {
            if let Err(e) = r {
                tracing::warn!(url = node.shown_url(), error = %e, "Redlock node unreachable at start");
            }
        }
        if up < quorum {
            let first = pings.into_iter().find_map(Result::err);
            return Err(first.unwrap_or_else(|| LockError::config("no Redlock nodes")));
        }
        waiters.set_subscriptions(Box::new(Fanout {
            nodes: subscriptions,
            quorum,
        }));
        Ok(RedlockBackend {
            nodes: nodes.into(),
            quorum,
            counters,
            timeout,
            tries: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        })
    }

    async fn acquire(&self, req: Try<'_>) -> Result<Attempt, LockError> {
        let keys = req.keys;
        let quorum = self.quorum;
        let value = format!(
            "{}.{:x}",
            req.token,
            self.tries.fetch_add(1, Ordering::Relaxed)
        );
        // Nodes never register in their queues (see the module's docs). Every node is offered the
        // same least token — this machine's clock in microseconds, a second ahead — so that nodes
        // whose counters are not ahead of it all issue that very token and none needs the
        // write-back round (a node's own `TIME`-derived token would differ from the others' by
        // the clocks' spread).
        let node_req = Try {
            register: false,
            queued: false,
            token: &value,
            fence_floor: Some(proposed_fence()),
            ..req
        };
        let mut fuse = Fuse {
            nodes: &self.nodes,
            keys,
            token: &value,
            lease: req.lease,
            granted: Vec::with_capacity(self.nodes.len()),
            armed: true,
        };
        let sent = Instant::now();
        let timeout = self.timeout;
        let mut pending: FuturesUnordered<_> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| async move {
                // Bounded twice over: a node's own calls end by the command timeout, and so does
                // this (a dropped try releases on that node what it may have granted).
                let r = tokio::time::timeout(timeout, node.try_acquire(node_req))
                    .await
                    .unwrap_or_else(|_| Err(timed_out(&keys.lock, "acquire", timeout)));
                (i, r)
            })
            .collect();
        let mut fences: Vec<(usize, u64)> = Vec::with_capacity(self.nodes.len());
        let mut held: Vec<Option<Duration>> = Vec::new();
        let mut errors: Vec<LockError> = Vec::new();
        while let Some((i, r)) = pending.next().await {
            match r {
                Ok(Attempt::Acquired { fence, .. }) => {
                    fences.push((i, fence));
                    fuse.granted.push(i);
                }
                Ok(Attempt::Held(pttl)) => held.push(pttl),
                Err(e) => errors.push(e),
            }
            if fences.len() >= quorum || fences.len() + pending.len() < quorum {
                break;
            }
        }
        if fences.len() >= quorum && !pending.is_empty() {
            // Won: the nodes still out get a moment more (as long again as the majority took),
            // so a lock is not left on a bare majority for want of a few microseconds; a node far
            // slower than the others (frozen, unreachable) is not waited for.
            let grace = sent.elapsed() + Duration::from_millis(1);
            let _ = tokio::time::timeout(grace, async {
                while let Some((i, r)) = pending.next().await {
                    if let Ok(Attempt::Acquired { fence, .. }) = r {
                        fences.push((i, fence));
                        fuse.granted.push(i);
                    }
                }
            })
            .await;
        }
        // Nodes that have not answered: each one's own clean-up releases what it may grant.
        drop(pending);

        if fences.len() >= quorum {
            match self.settle(req, &fences, sent).await {
                Ok(Some(acquired)) => {
                    fuse.armed = false;
                    lock(&self.held).insert(req.token.into(), value.as_str().into());
                    return Ok(acquired);
                }
                Ok(None) => {
                    // Granted, but the validity had run out by the time it was settled.
                    fuse.release_now().await;
                    return Ok(Attempt::Held(Some(Duration::ZERO)));
                }
                Err(e) => errors.push(e),
            }
        }
        let granted = fences.len();
        fuse.release_now().await;
        // The nodes that did not fail could still form a majority: the lock is held (or split),
        // and waiting helps. Otherwise too many nodes are down for any majority.
        if self.nodes.len() - errors.len() >= quorum && !held.is_empty() {
            if granted > 0 {
                // A split: somebody else won some nodes too. Both give up; pause a random moment
                // so the retries do not meet again.
                tokio::time::sleep(jitter(SPLIT_JITTER)).await;
            }
            // Free again once the holders of enough nodes are gone: the k-th shortest lease left
            // (the longest known when fewer answered).
            held.sort_by_key(|p| p.unwrap_or(Duration::MAX));
            let k = quorum.saturating_sub(granted).clamp(1, held.len());
            return Ok(Attempt::Held(held[k - 1]));
        }
        Err(self.quorum_error(&keys.lock, errors))
    }

    /// A majority granted: writes its largest token back where a node issued less, and checks the
    /// validity. `None` when the validity ran out meanwhile.
    async fn settle(
        &self,
        req: Try<'_>,
        fences: &[(usize, u64)],
        sent: Instant,
    ) -> Result<Option<Attempt>, LockError> {
        let fence = fences.iter().map(|&(_, f)| f).max().unwrap_or(0);
        let raised = join_all(fences.iter().filter(|&&(_, f)| f < fence).map(|&(i, _)| {
            let raise = self.nodes[i].raise_fence(req.keys, fence, req.lease);
            async move {
                tokio::time::timeout(self.timeout, raise)
                    .await
                    .unwrap_or_else(|_| {
                        Err(timed_out(
                            &req.keys.lock,
                            "fencing write-back",
                            self.timeout,
                        ))
                    })
            }
        }))
        .await;
        let failed = raised.iter().filter(|r| r.is_err()).count();
        if fences.len() - failed < self.quorum {
            // A node that kept a smaller counter could issue a smaller token next time.
            let e = raised.into_iter().find_map(Result::err);
            return Err(e.unwrap_or_else(|| timed_out(&req.keys.lock, "fencing", self.timeout)));
        }
        let valid_until = lease::valid_until(sent, req.lease);
        if Instant::now() >= valid_until {
            tracing::debug!(key = %req.keys.lock, "Redlock majority came back after the lease's validity; giving it back");
            return Ok(None);
        }
        Ok(Some(Attempt::Acquired { fence, valid_until }))
    }

    /// Too many nodes failed for a majority: a timeout when they were all silent, else the first
    /// other failure.
    fn quorum_error(&self, key: &str, errors: Vec<LockError>) -> LockError {
        tracing::warn!(
            key,
            failed = errors.len(),
            nodes = self.nodes.len(),
            "Redlock: too few nodes answered for a majority"
        );
        let cause = errors
            .iter()
            .find(|e| !e.is_timeout())
            .or(errors.first())
            .map_or_else(|| "no answer".to_owned(), ToString::to_string);
        LockError::backend(
            Some(key),
            BackendError::NoQuorum {
                answered: self.nodes.len() - errors.len(),
                needed: self.quorum,
                nodes: self.nodes.len(),
                timed_out: errors.iter().all(LockError::is_timeout),
                cause,
            },
        )
    }

    /// Runs `call` on every node at once; `Ok(true)` when a majority said `true`, an error when
    /// failures left too few answers for that, `Ok(false)` otherwise.
    async fn on_all<'a, F>(&'a self, key: &str, call: F) -> Result<bool, LockError>
    where
        F: Fn(&'a RedisBackend) -> BoxFuture<'a, Result<bool, LockError>>,
    {
        let results = join_all(self.nodes.iter().map(call)).await;
        let yes = results.iter().filter(|r| matches!(r, Ok(true))).count();
        let failed = results.iter().filter(|r| r.is_err()).count();
        if yes >= self.quorum {
            return Ok(true);
        }
        if yes + failed >= self.quorum {
            // The failed nodes might have said yes.
            let e = results.into_iter().find_map(Result::err);
            return Err(e.unwrap_or_else(|| timed_out(key, "command", self.timeout)));
        }
        Ok(false)
    }
}

/// Gives back what a try was granted if the try ends (dropped, failed) without a lock.
struct Fuse<'a> {
    nodes: &'a Arc<[RedisBackend]>,
    keys: &'a Keys,
    token: &'a str,
    lease: Duration,
    granted: Vec<usize>,
    armed: bool,
}

impl Fuse<'_> {
    /// Releases on the granting nodes now, concurrently, and disarms.
    async fn release_now(&mut self) {
        self.armed = false;
        let (keys, token) = (self.keys, self.token);
        let results = join_all(
            self.granted
                .iter()
                .map(|&i| self.nodes[i].release(keys, token)),
        )
        .await;
        for e in results.into_iter().filter_map(Result::err) {
            // That node's lease frees it.
            tracing::debug!(key = %keys.lock, error = %e, "Redlock: could not give back a node");
        }
    }
}

impl Drop for Fuse<'_> {
    fn drop(&mut self) {
        if !self.armed || self.granted.is_empty() {
            return;
        }
        // Until the longest lease the try asked for has run out, at most.
        let give_up = Instant::now() + self.lease;
        let key: Arc<str> = self.keys.lock.clone();
        let keys = Arc::new(self.keys.clone());
        let token: Arc<str> = self.token.into();
        for i in std::mem::take(&mut self.granted) {
            let (nodes, keys, token) = (self.nodes.clone(), keys.clone(), token.clone());
            protocol::release_in_background(
                key.clone(),
                "Redlock: giving back a node of an abandoned try",
                give_up,
                Landing::Before,
                move |_| {
                    let (nodes, keys, token) = (nodes.clone(), keys.clone(), token.clone());
                    Box::pin(async move { nodes[i].release(&keys, &token).await })
                },
            );
        }
    }
}

impl Backend for RedlockBackend {
    fn inspect<'a>(
        &'a self,
        route: super::inspect::Route<'a>,
    ) -> BoxFuture<'a, super::inspect::Answers> {
        Box::pin(async move {
            let answers = join_all(self.nodes.iter().map(|n| n.inspect_node(route))).await;
            super::inspect::Answers::Nodes(answers)
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
        Box::pin(async move {
            // The value stays known until a release has answered: a release that did not (cut,
            // cancelled, failed) is retried in the background with the same owner token, and must
            // still find the value the nodes hold.
            let value = lock(&self.held).get(token).cloned();
            let r = {
                let value = value.as_deref().unwrap_or(token);
                self.on_all(&keys.lock, move |n| n.release(keys, value))
                    .await
            };
            if r.is_ok() {
                lock(&self.held).remove(token);
            }
            r
        })
    }

    fn renew<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(async move {
            let value = lock(&self.held).get(token).cloned();
            let value = value.as_deref().unwrap_or(token);
            self.on_all(&keys.lock, move |n| n.renew(keys, value, lease))
                .await
        })
    }

    fn leave_queue<'a>(&'a self, _: &'a Keys, _: &'a str) -> BoxFuture<'a, Result<(), LockError>> {
        // Tries never register in the nodes' queues.
        Box::pin(async { Ok(()) })
    }

    fn force_unlock<'a>(&'a self, keys: &'a Keys) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(async move {
            let results = join_all(self.nodes.iter().map(|n| n.force_unlock(keys))).await;
            if results.iter().all(Result::is_err) {
                let e = results.into_iter().find_map(Result::err);
                return Err(e.unwrap_or_else(|| timed_out(&keys.lock, "DEL", self.timeout)));
            }
            Ok(results.iter().any(|r| matches!(r, Ok(true))))
        })
    }

    fn command_timeout(&self) -> Duration {
        self.timeout
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        let urls: Vec<&str> = self.nodes.iter().map(RedisBackend::shown_url).collect();
        f.field("backend", &"redlock")
            .field("urls", &urls)
            .field("quorum", &self.quorum);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn timed_out(key: &str, what: &'static str, timeout: Duration) -> LockError {
    LockError::backend(Some(key), BackendError::Timeout { what, timeout })
}

/// The token offered to every node: this machine's clock in microseconds, plus a second (so it is
/// above the nodes' own clocks unless one runs a second ahead). Only a floor: a node whose counter
/// is already past it issues a larger token, and the write-back covers that case.
fn proposed_fence() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    micros.saturating_add(1_000_000)
}

/// A random duration below `max`.
fn jitter(max: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    max.mul_f64((r % 1024) as f64 / 1024.0)
}
