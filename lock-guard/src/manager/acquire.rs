//! Taking a lock, and waiting for it: try once; if held, queue behind this process's other
//! waiters for the key, and let only the head ask the backend — after a release notification,
//! at the holder's lease end, or when the wait runs out.

use std::future::Future;
use std::sync::Arc;

use tokio::time::{Instant, sleep_until, timeout_at};

use super::LockManager;
use crate::backend::{Attempt, Keys, Try};
use crate::background;
use crate::error::{BackendError, LockError};
use crate::guard::{LockGuard, Token};
use crate::key::LockKey;
use crate::options::LockOptions;
use crate::waiting::{HANDOVER, Place};

impl LockManager {
    /// Takes the lock, waiting up to `options.wait`. The guard releases it on
    /// [`release`](LockGuard::release) or on drop.
    ///
    /// Returns within `wait` plus one command timeout, whatever the backend does, and never a
    /// guard whose lease had already run out when the reply came (such a grant is given back and
    /// the call goes on waiting). Without the closure form nothing bounds the caller's work by the
    /// lease: check [`LockGuard::valid_until`], pass [`LockGuard::fencing_token`] to the storage,
    /// or use [`run`](Self::run).
    pub async fn lock(&self, key: &LockKey, options: LockOptions) -> Result<LockGuard, LockError> {
        self.take(self.keys(key), options).await
    }

    pub(super) async fn acquire(
        &self,
        keys: Arc<Keys>,
        options: LockOptions,
    ) -> Result<LockGuard, LockError> {
        let inner = &*self.inner;
        let lease = self.lease_of(&options);
        let token = Token::new();
        let start = Instant::now();
        let wait_end = start + options.max_wait();
        // Whatever the backend does, the call ends by then.
        let hard_end = wait_end + inner.backend.command_timeout();
        let not_acquired = || LockError::NotAcquired {
            key: keys.lock.to_string(),
            waited: start.elapsed(),
        };
        let guard = |fence, valid_until| {
            LockGuard::new(
                inner.backend.clone(),
                keys.clone(),
                token,
                fence,
                lease,
                valid_until,
            )
        };
        let mut ask = Try {
            keys: &keys,
            token: token.as_str(),
            lease,
            // A call that waits registers at once if the lock is held, to be handed it in turn.
            register: !options.max_wait().is_zero(),
            queued: false,
            others_wait: false,
            fence_floor: None,
        };

        // Nobody of this process waits for the key: try at once, without queueing (the only round
        // trip of an uncontended acquisition). `wait = 0` tries exactly once in any case.
        let mut tried: Option<(Instant, Option<std::time::Duration>)> = None;
        if options.max_wait().is_zero() || !inner.waiters.has_waiters(&keys.channel) {
            let sent = Instant::now();
            match self.bounded(hard_end, &keys, ask).await? {
                Attempt::Acquired { fence, valid_until } => return Ok(guard(fence, valid_until)),
                Attempt::Held(_) if options.max_wait().is_zero() => return Err(not_acquired()),
                Attempt::Held(pttl) => {
                    ask.queued = true;
                    tried = Some((sent, pttl));
                }
            }
        }

        // Queue behind the local waiters; only the head asks.
        let (place, first) = inner.waiters.join(&keys.channel, token.as_str());
        // Once this waiter's try as head failed, it is registered in the key's queue of waiting
        // processes; if it gives up (wait over, cancelled, an error), it takes itself out.
        let mut registration = Registration {
            manager: self,
            keys: &keys,
            token: &token,
            active: ask.queued,
        };
        let mut must_try = true;
        if let Some((_, pttl)) = tried {
            place.set_registered();
            if first {
                place.set_retry_at(pttl.map(|p| Instant::now() + p));
            }
        }
        if first {
            // The first waiter of an empty queue subscribes; it tries (again) unless it has tried
            // since the subscription was in place, so a release in between is not missed.
            if let Some(since) = self.subscribe(&place, &keys, hard_end).await {
                // A release that named this waiter before it was queued went unheard: try.
                let named = inner.waiters.was_named(&keys.channel, token.as_str());
                must_try = named || !matches!((since, tried), (Some(s), Some((t, _))) if s < t);
            }
        }
        // When this waiter last woke up (for the hand-over gap metric).
        let mut woken = Instant::now();
        loop {
            if must_try && place.state().0 {
                if Instant::now() >= wait_end {
                    return Err(not_acquired());
                }
                ask.others_wait = place.others_wait();
                registration.active = true;
                match self.bounded(hard_end, &keys, ask).await? {
                    Attempt::Acquired { fence, valid_until } => {
                        registration.active = false;
                        place.acquired(valid_until, ask.others_wait);
                        crate::telemetry::handover(
                            crate::telemetry::Labels::new(&keys, inner.deployment),
                            woken,
                        );
                        return Ok(guard(fence, valid_until));
                    }
                    Attempt::Held(pttl) => {
                        ask.queued = true;
                        place.set_registered();
                        place.set_retry_at(pttl.map(|p| Instant::now() + p));
                    }
                }
                // A head promoted into a queue that never subscribed subscribes now and tries
                // again; a release announced while we asked: ask again.
                if self.subscribe(&place, &keys, hard_end).await.is_some() || place.take_try() {
                    continue;
                }
            }
            let (head, retry_at) = place.state();
            let mut timer = match retry_at {
                Some(at) if head => at.min(wait_end),
                _ => wait_end,
            };
            if head && ask.queued {
                // A release that reserves the lock for another process moves `retry_at` to the
                // reservation's end without waking this task (every waiting process hears every
                // release): look at it again every reservation time, locally.
                timer = timer.min(Instant::now() + HANDOVER);
            }
            tokio::select! {
                try_now = place.notified() => must_try = try_now,
                () = sleep_until(timer) => {
                    let now = Instant::now();
                    if now >= wait_end {
                        return Err(not_acquired());
                    }
                    must_try = matches!(place.state().1, Some(at) if at <= now);
                }
            }
            woken = Instant::now();
        }
    }

    /// Asks for release notifications for the queue of `place` if nobody did yet, and waits (at
    /// most a command timeout, and never past `hard_end`) for the confirmation. `None` when it did
    /// not ask; else `Some` of the instant since which the subscription is in place, if confirmed.
    async fn subscribe(
        &self,
        place: &Place,
        keys: &Keys,
        hard_end: Instant,
    ) -> Option<Option<Instant>> {
        let confirmation = place.subscribe()?;
        let Some(confirmed) = confirmation else {
            return Some(None);
        };
        let bound = hard_end.min(Instant::now() + self.inner.backend.command_timeout());
        Some(match timeout_at(bound, confirmed).await {
            Ok(Ok(Ok(since))) => Some(since),
            Ok(Ok(Err(e))) => {
                tracing::debug!(key = %keys.lock, error = %e, "release channel not subscribed; waiting on the lease");
                None
            }
            _ => {
                tracing::debug!(key = %keys.lock, "release channel subscription unconfirmed; waiting on the lease");
                None
            }
        })
    }

    /// One try, cut short at `hard_end` (the end of the wait plus one command timeout) when that
    /// comes before the command timeout does. A try cut short cleans up after itself (see
    /// [`Backend`](crate::backend::Backend)). A lock granted by a reply that came back after the
    /// lease's validity is given back at once and reported as held, never handed out expired.
    async fn bounded(
        &self,
        hard_end: Instant,
        keys: &Arc<Keys>,
        ask: Try<'_>,
    ) -> Result<Attempt, LockError> {
        let backend = &self.inner.backend;
        let attempt = backend.try_acquire(ask);
        let attempt = if Instant::now() + backend.command_timeout() <= hard_end {
            attempt.await?
        } else {
            cut_at(hard_end, keys, backend.command_timeout(), attempt).await?
        };
        match attempt {
            Attempt::Acquired { fence, valid_until } if valid_until <= Instant::now() => {
                tracing::warn!(key = %keys.lock, "the lock was granted after its lease's validity; giving it back");
                // Released in the background, as a dropped guard is.
                drop(LockGuard::new(
                    backend.clone(),
                    keys.clone(),
                    Token::from_str(ask.token),
                    fence,
                    ask.lease,
                    valid_until,
                ));
                Ok(Attempt::Held(Some(std::time::Duration::ZERO)))
            }
            other => Ok(other),
        }
    }
}

async fn cut_at<T>(
    end: Instant,
    keys: &Keys,
    timeout: std::time::Duration,
    work: impl Future<Output = Result<T, LockError>>,
) -> Result<T, LockError> {
    match timeout_at(end, work).await {
        Ok(r) => r,
        Err(_) => Err(LockError::backend(
            Some(&keys.lock),
            BackendError::Timeout {
                what: "acquire (the wait ran out while the command was in flight)",
                timeout,
            },
        )),
    }
}

/// A head's place in the key's queue of waiting processes, given up on drop unless the lock was
/// taken (taking it removes the entry).
struct Registration<'a> {
    manager: &'a LockManager,
    keys: &'a Arc<Keys>,
    token: &'a Token,
    active: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let backend = self.manager.inner.backend.clone();
        let keys = self.keys.clone();
        let token = self.token.as_str().to_owned();
        background::spawn(async move {
            if let Err(e) = backend.leave_queue(&keys, &token).await {
                // The entry is handed the lock once, for a moment, then dropped.
                tracing::debug!(key = %keys.lock, error = %e, "could not leave the wait queue");
            }
        });
    }
}
