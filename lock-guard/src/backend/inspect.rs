//! Inspection: what Redis (or the memory backend) says about a lock — held, remaining lease,
//! fencing counter, waiting processes, a reserved hand-over — and which locks of a name exist,
//! found with `SCAN` (never `KEYS`), bounded.
//!
//! The reading itself is here, once: `scripts/inspect.lua` for one lock (one round trip, atomic,
//! routed by the lock's hash tag), a `SCAN` loop for listing. Each backend only says where to
//! send it ([`Route`]): its one server, the slot's master (or every master, to list), every
//! Redlock node — and this module combines the answers (Redlock: the majority's view).

use std::future::Future;
use std::time::Duration;

use redis::{Cmd, Value};

use super::Keys;
use crate::error::{BackendError, LockError};

const SCRIPT: &str = include_str!("../scripts/inspect.lua");

/// `SCAN … COUNT` per call, and the most `SCAN` calls per node in one listing: a listing reads at
/// most `SCAN_COUNT × SCAN_CALLS` keys per node, whatever the keyspace holds.
pub(crate) const SCAN_COUNT: usize = 500;
pub(crate) const SCAN_CALLS: usize = 2_000;

/// What to read, and where.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// One lock, on the node(s) that hold its key.
    Lock(&'a Keys),
    /// The lock keys that start with `prefix` (a `SCAN MATCH` of `pattern`), on every master; at
    /// most `limit` of them per node.
    Scan {
        pattern: &'a str,
        prefix: &'a str,
        limit: usize,
    },
}

/// One lock as one node (or the memory backend) sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Raw {
    /// The lock key, for listings.
    pub(crate) key: String,
    /// Milliseconds left, when held.
    pub(crate) pttl: Option<u64>,
    /// The stored value: owner token, `token+` (awaited) or `claim:<token>` (reserved).
    pub(crate) value: Option<String>,
    pub(crate) fence: Option<u64>,
    pub(crate) queue: u64,
}

/// The answers to one inspection.
#[derive(Debug)]
pub(crate) enum Answers {
    /// One per node asked: the inspect script's reply, or a `SCAN`'s keys.
    Nodes(Vec<Result<Value, LockError>>),
    /// From the memory backend.
    Memory(Vec<Raw>),
}

/// Runs `route` on one node, `send` being how a command reaches it.
pub(crate) async fn on_node<F, Fut>(route: Route<'_>, send: F) -> Result<Value, LockError>
where
    F: Fn(Cmd) -> Fut,
    Fut: Future<Output = Result<Value, LockError>>,
{
    match route {
        Route::Lock(keys) => send(command(keys)).await,
        Route::Scan { pattern, limit, .. } => {
            let mut found = Vec::new();
            let mut cursor: u64 = 0;
            for _ in 0..SCAN_CALLS {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let reply = send(cmd).await?;
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                    .map_err(|e| LockError::backend(None, BackendError::Protocol(e.to_string())))?;
                // Only lock keys: they end with their hash tag's `}` (`…:fence`, `…:queue` and
                // `…:released` do not).
                found.extend(keys.into_iter().filter(|k| k.ends_with('}')));
                cursor = next;
                if cursor == 0 || found.len() >= limit {
                    break;
                }
            }
            found.truncate(limit);
            Ok(Value::Array(
                found
                    .into_iter()
                    .map(|k| Value::BulkString(k.into_bytes()))
                    .collect(),
            ))
        }
    }
}

/// `EVAL inspect.lua` for one lock (inspection is rare: no script cache needed).
fn command(keys: &Keys) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SCRIPT)
        .arg(3)
        .arg(&*keys.lock)
        .arg(&keys.fence)
        .arg(&keys.queue);
    cmd
}

/// A `SCAN MATCH` pattern for the lock keys `{prefix}:{<name_prefix>…`: glob characters in the
/// name escaped.
pub(crate) fn pattern(key_prefix: &str, name_prefix: &str) -> String {
    let mut out = String::with_capacity(key_prefix.len() + name_prefix.len() + 4);
    for part in [key_prefix, ":{", name_prefix] {
        for c in part.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('*');
    out
}

fn parse(key: &str, reply: Value) -> Result<Raw, LockError> {
    let bad = |what: &str| {
        LockError::backend(
            Some(key),
            BackendError::Protocol(format!("inspect script answered {what}")),
        )
    };
    let (pttl, value, fence, queue): (i64, Option<String>, Option<String>, u64) =
        redis::from_redis_value(reply).map_err(|e| bad(&e.to_string()))?;
    Ok(Raw {
        key: key.to_owned(),
        pttl: u64::try_from(pttl).ok().filter(|_| value.is_some()),
        value,
        fence: fence.and_then(|f| f.parse().ok()),
        queue,
    })
}

/// What [`LockManager::inspect`](crate::LockManager::inspect) and
/// [`list`](crate::LockManager::list) report about one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockState {
    /// The Redis key of the lock, e.g. `lock:{keyword:42}`.
    pub key: String,
    /// Whether somebody holds it (or it is reserved for a hand-over) right now.
    pub held: bool,
    /// How long its lease has left, when held: at the latest, the lock frees itself then.
    pub remaining: Option<Duration>,
    /// The last fencing token issued for the key (the counter), if one is kept.
    pub fencing_token: Option<u64>,
    /// Processes registered as waiting for it (their head waiters, on Redis).
    pub waiting_processes: u64,
    /// Tasks of this process (this manager) waiting for it.
    pub local_waiters: usize,
    /// Whether a release has reserved it for the oldest waiting process, which has not taken it
    /// yet.
    pub handover_reserved: bool,
    /// Whether its holder knows that others wait (its release will announce itself).
    pub awaited: bool,
}

/// The owner a value names: the token, without the awaited mark or the reservation prefix.
fn owner(value: &str) -> &str {
    let v = value.strip_prefix("claim:").unwrap_or(value);
    v.strip_suffix('+').unwrap_or(v)
}

/// One lock's state from the nodes' views: the lock is held when `quorum` of them hold it for
/// the same owner; its remaining lease is the time until fewer than `quorum` do.
pub(crate) fn combine(key: &str, raws: &[Raw], quorum: usize, local_waiters: usize) -> LockState {
    let mut best: Option<(&str, Vec<u64>, bool, bool)> = None;
    for raw in raws {
        let (Some(value), Some(_)) = (&raw.value, raw.pttl) else {
            continue;
        };
        let who = owner(value);
        let n = raws
            .iter()
            .filter(|r| r.pttl.is_some() && r.value.as_deref().is_some_and(|v| owner(v) == who))
            .filter_map(|r| r.pttl)
            .collect::<Vec<_>>();
        if n.len() >= quorum && best.as_ref().is_none_or(|b| b.1.len() < n.len()) {
            best = Some((who, n, value.starts_with("claim:"), value.ends_with('+')));
        }
    }
    let fencing_token = raws.iter().filter_map(|r| r.fence).max();
    let waiting_processes = raws.iter().map(|r| r.queue).max().unwrap_or(0);
    match best {
        Some((_, mut pttls, reserved, awaited)) => {
            pttls.sort_unstable_by(|a, b| b.cmp(a));
            LockState {
                key: key.to_owned(),
                held: true,
                remaining: Some(Duration::from_millis(pttls[quorum - 1])),
                fencing_token,
                waiting_processes,
                local_waiters,
                handover_reserved: reserved,
                awaited,
            }
        }
        None => LockState {
            key: key.to_owned(),
            held: false,
            remaining: None,
            fencing_token,
            waiting_processes,
            local_waiters,
            handover_reserved: false,
            awaited: false,
        },
    }
}

/// The nodes' answers for one lock, parsed; an error when fewer than `quorum` answered.
pub(crate) fn lock_raws(key: &str, answers: Answers) -> Result<(Vec<Raw>, usize), LockError> {
    match answers {
        Answers::Memory(raws) => Ok((raws, 1)),
        Answers::Nodes(replies) => {
            let nodes = replies.len();
            let quorum = nodes / 2 + 1;
            let mut raws = Vec::new();
            let mut errors = Vec::new();
            for reply in replies {
                match reply.and_then(|v| parse(key, v)) {
                    Ok(raw) => raws.push(raw),
                    Err(e) => errors.push(e),
                }
            }
            if raws.len() < quorum {
                return Err(quorum_error(key, nodes, quorum, errors));
            }
            Ok((raws, quorum))
        }
    }
}

/// The lock keys found by a scan, from every node's answer (deduplicated: Redlock nodes hold the
/// same keys); an error when no node answered. Memory answers come back as they are.
pub(crate) fn scanned_keys(answers: Answers) -> Result<Vec<String>, LockError> {
    match answers {
        Answers::Memory(raws) => Ok(raws.into_iter().map(|r| r.key).collect()),
        Answers::Nodes(replies) => {
            let nodes = replies.len();
            let mut keys = std::collections::BTreeSet::new();
            let mut errors = Vec::new();
            for reply in replies {
                match reply.and_then(|v| {
                    redis::from_redis_value::<Vec<String>>(v).map_err(|e| {
                        LockError::backend(None, BackendError::Protocol(e.to_string()))
                    })
                }) {
                    Ok(found) => keys.extend(found),
                    Err(e) => errors.push(e),
                }
            }
            if !errors.is_empty() && keys.is_empty() && errors.len() == nodes {
                return Err(errors.remove(0));
            }
            Ok(keys.into_iter().collect())
        }
    }
}

fn quorum_error(key: &str, nodes: usize, needed: usize, mut errors: Vec<LockError>) -> LockError {
    if nodes == 1 && !errors.is_empty() {
        return errors.remove(0);
    }
    LockError::backend(
        Some(key),
        BackendError::NoQuorum {
            answered: nodes - errors.len(),
            needed,
            nodes,
            timed_out: errors.iter().all(LockError::is_timeout),
            cause: errors
                .first()
                .map_or_else(|| "no answer".to_owned(), ToString::to_string),
        },
    )
}
