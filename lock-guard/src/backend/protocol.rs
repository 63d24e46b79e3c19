//! The Redis protocol of a lock, in one place: the scripts' arguments (typed here, spelled as the
//! scripts' flags only by [`ScriptCall`]), the retry flag, `EVALSHA` with one `NOSCRIPT` fallback,
//! acquire + `WAIT` in one pipeline, millisecond conversion, and the background release-with-retry
//! that every give-back and abandoned try goes through.
//!
//! The transports (one server's pooled connections, the cluster client, Redlock's nodes) only
//! decide where a call travels; what is sent, and how a reply is read, is decided here.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisResult, ServerErrorKind, Value};
use tokio::time::Instant;

use super::redis::scripts::{Lua, scripts};
use super::{Attempt, BoxFuture, Counters, HANDOVER, Keys, Try};
use crate::background;
use crate::error::{BackendError, LockError};
use crate::lease;

/// How long a fencing counter lives after its last acquisition (plus the lease). After that the
/// clock alone (in microseconds) is past every token issued, so the counter can go: memory stays
/// bounded by the keys used in the last minute.
pub(crate) const FENCE_RETENTION: Duration = Duration::from_secs(60);

/// A duration as a script argument: whole milliseconds, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Whether a request may reach Redis a second time (a resend after a dead connection, a cluster
/// client's retry after a redirect): the acquire script then accepts a lock already holding the
/// caller's owner token as taken (the first request went through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sending {
    /// The first and only time.
    Once,
    /// Possibly again, after an earlier copy that may have been applied.
    Again,
}

/// One script call: the script, its keys and its arguments.
pub(crate) struct ScriptCall<'a> {
    script: &'static Lua,
    keys: Vec<&'a str>,
    args: Vec<Cow<'a, [u8]>>,
}

impl<'a> ScriptCall<'a> {
    /// `acquire.lua`: take the lock if free or handed over to `req.token`; else register (when
    /// `req.register`) and mark the lock awaited.
    pub(crate) fn acquire(req: &Try<'a>, sending: Sending) -> Self {
        let keys = req.keys;
        // The queue's order: when the caller registered, on its clock (the clocks of several
        // machines only blur the order of turns, never exclusion).
        let score: Cow<'a, [u8]> = if req.register {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
                .to_string()
                .into_bytes()
                .into()
        } else {
            NONE.into()
        };
        let floor: Cow<'a, [u8]> = match req.fence_floor {
            Some(f) => f.to_string().into_bytes().into(),
            None => NONE.into(),
        };
        ScriptCall {
            script: &scripts().acquire,
            keys: vec![&keys.lock, &keys.fence, &keys.queue],
            args: vec![
                req.token.as_bytes().into(),
                arg_millis(req.lease),
                arg_millis(req.lease + FENCE_RETENTION),
                flag(req.others_wait, b"w"),
                score,
                flag(req.queued, b"q"),
                floor,
                flag(sending == Sending::Again, b"r"),
            ],
        }
    }

    /// `release.lua`: delete the lock if `token` still owns it, handing it to the oldest waiting
    /// process if any; with `leave_queue`, also take `token` out of the queue (the clean-up after a
    /// try whose reply never came, which may have registered it).
    pub(crate) fn release(keys: &'a Keys, token: &'a str, leave_queue: bool) -> Self {
        ScriptCall {
            script: &scripts().release,
            keys: vec![&keys.lock, &keys.channel, &keys.queue],
            args: vec![
                token.as_bytes().into(),
                arg_millis(HANDOVER),
                flag(leave_queue, b"z"),
            ],
        }
    }

    /// `renew.lua`: extend the lock to `lease` from now if `token` still owns it.
    pub(crate) fn renew(keys: &'a Keys, token: &'a str, lease: Duration) -> Self {
        ScriptCall {
            script: &scripts().renew,
            keys: vec![&keys.lock],
            args: vec![token.as_bytes().into(), arg_millis(lease)],
        }
    }

    /// `raise_fence.lua`: raise the key's fencing counter to at least `fence` (never lower it), for
    /// as long as a counter lives after an acquisition with `lease`.
    pub(crate) fn raise_fence(keys: &'a Keys, fence: u64, lease: Duration) -> Self {
        ScriptCall {
            script: &scripts().raise_fence,
            keys: vec![&keys.fence],
            args: vec![
                fence.to_string().into_bytes().into(),
                arg_millis(lease + FENCE_RETENTION),
            ],
        }
    }

    /// `EVALSHA` (or, with `eval`, `EVAL`) of this call.
    pub(crate) fn command(&self, eval: bool) -> Cmd {
        let args: Vec<&[u8]> = self.args.iter().map(|a| &**a).collect();
        self.script.command(eval, &self.keys, &args)
    }

    /// The acquire call and `WAIT wanted wait` as one pipeline (`WAIT` counts the replicas that
    /// have the connection's writes up to and including the script's).
    fn with_wait(&self, eval: bool, wanted: u64, wait: Duration) -> Pipeline {
        // Whole milliseconds, rounded up: `WAIT n 0` would wait forever.
        let wait_ms = u64::try_from(wait.as_micros().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1);
        let mut p = Pipeline::with_capacity(2);
        p.add_command(self.command(eval));
        p.cmd("WAIT").arg(wanted).arg(wait_ms);
        p
    }
}

/// The scripts' "no" for an optional argument.
const NONE: &[u8] = b"-";

fn flag(on: bool, letter: &'static [u8]) -> Cow<'static, [u8]> {
    Cow::Borrowed(if on { letter } else { NONE })
}

fn arg_millis(d: Duration) -> Cow<'static, [u8]> {
    millis(d).to_string().into_bytes().into()
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// `EVALSHA` of `call` on `conn`, and `EVAL` (which also fills the script cache) on the same
/// connection after a `NOSCRIPT` — one round trip more, not the two of `SCRIPT LOAD` + `EVALSHA`.
pub(crate) async fn eval<T, C>(
    conn: &mut C,
    call: &ScriptCall<'_>,
    counters: &Counters,
) -> RedisResult<T>
where
    T: FromRedisValue,
    C: ConnectionLike + Send,
{
    counters.commands.fetch_add(1, Ordering::Relaxed);
    match call.command(false).query_async(conn).await {
        Err(e) if is_noscript(&e) => {
            tracing::debug!("script cache was empty (NOSCRIPT): loading it again");
            counters.commands.fetch_add(1, Ordering::Relaxed);
            call.command(true).query_async(conn).await
        }
        other => other,
    }
}

/// The acquire `call` and `WAIT wanted wait` in one pipeline, sent by `send` (the transport
/// decides the connection or route), with one `EVAL` pipeline after a `NOSCRIPT`. The replies go
/// to [`acquired_and_acked`].
pub(crate) async fn acquire_and_wait<F, Fut>(
    call: &ScriptCall<'_>,
    wanted: u64,
    wait: Duration,
    counters: &Counters,
    mut send: F,
) -> RedisResult<Vec<Value>>
where
    F: FnMut(Pipeline) -> Fut,
    Fut: Future<Output = RedisResult<Vec<Value>>>,
{
    counters.commands.fetch_add(1, Ordering::Relaxed);
    // A `NOSCRIPT` comes back as the pipeline's error or as its first reply, by transport.
    match send(call.with_wait(false, wanted, wait)).await {
        Err(e) if is_noscript(&e) => {}
        Ok(v) if matches!(v.first(), Some(Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript)) =>
            {}
        other => return other,
    }
    counters.commands.fetch_add(1, Ordering::Relaxed);
    send(call.with_wait(true, wanted, wait)).await
}

/// The replies of [`acquire_and_wait`]: the script's reply and how many replicas acknowledged.
pub(crate) fn acquired_and_acked(
    keys: &Keys,
    values: Vec<Value>,
) -> Result<((i64, i64), u64), LockError> {
    let protocol =
        |what: String| LockError::backend(Some(&keys.lock), BackendError::Protocol(what));
    let [reply, acked]: [Value; 2] = values
        .try_into()
        .map_err(|v: Vec<_>| protocol(format!("{} replies to acquire and WAIT", v.len())))?;
    let reply = match reply {
        Value::ServerError(e) => {
            return Err(LockError::backend(
                Some(&keys.lock),
                BackendError::Redis(e.into()),
            ));
        }
        reply => redis::from_redis_value(reply).map_err(|e| protocol(e.to_string()))?,
    };
    let acked: i64 = redis::from_redis_value(acked).map_err(|e| protocol(e.to_string()))?;
    Ok((reply, u64::try_from(acked).unwrap_or(0)))
}

/// What the acquire script's reply `{taken, value}` says: taken with the fencing token `value`,
/// valid from `sent` for `lease`; or held, with `value` the holder's `PTTL`.
pub(crate) fn acquire_reply(
    keys: &Keys,
    (taken, value): (i64, i64),
    sent: Instant,
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

/// An acquisition refused for want of replica acknowledgements: releases it (the lease frees it if
/// that fails) and names the key.
pub(crate) async fn not_replicated(
    keys: &Keys,
    acked: u64,
    wanted: u64,
    release: impl Future<Output = Result<bool, LockError>>,
) -> LockError {
    if let Err(e) = release.await {
        // The lease frees it.
        tracing::warn!(key = %keys.lock, error = %e, "could not release an unreplicated lock");
    }
    LockError::NotReplicated {
        key: keys.lock.to_string(),
        acked,
        wanted,
    }
}

/// How a background release goes on after its first answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Landing {
    /// The grant, if any, has surely landed before the release (same connection, or a reply was
    /// read): one answer ends it.
    Before,
    /// The grant may still land after the release (a resent request, no hold on the connection):
    /// release once more after this long, when it has surely landed or failed.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    MaybeAfter(Duration),
}

/// Releases in the background, on the library's own runtime: `release(n)` for the `n`-th try
/// (0 first), retried with backoff (10 ms doubling up to 1 s) after errors until it answers or
/// `give_up` (the lease's end, when the lock frees itself) passes. `what` names the occasion in
/// the logs. `false` when it could not be started (the library's runtime is gone).
pub(crate) fn release_in_background<F>(
    key: Arc<str>,
    what: &'static str,
    give_up: Instant,
    landing: Landing,
    mut release: F,
) -> bool
where
    F: FnMut(u32) -> BoxFuture<'static, Result<bool, LockError>> + Send + 'static,
{
    background::spawn(async move {
        let mut pause = Duration::from_millis(10);
        let mut n = 0;
        let mut again = match landing {
            Landing::Before => None,
            Landing::MaybeAfter(d) => Some(d),
        };
        let mut released = false;
        loop {
            match release(n).await {
                Ok(r) => {
                    released |= r;
                    if let Some(after) = again.take() {
                        tokio::time::sleep(after).await;
                        n += 1;
                        continue;
                    }
                    tracing::debug!(%key, released, what, "released in the background");
                    return;
                }
                Err(e) if Instant::now() + pause >= give_up => {
                    tracing::warn!(%key, error = %e, what, "release failed; the lease will free the lock");
                    return;
                }
                Err(e) => {
                    tracing::debug!(%key, error = %e, what, "release failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    n += 1;
                }
            }
        }
    })
}
