//! Taking a lock, and waiting for it: try once; if held, queue behind this process's other
//! waiters for the key, and let only the head ask the backend — after a release notification,
//! at the holder's lease end, or when the wait runs out.

use std::future::Future;
use std::sync::Arc;

use tokio::time::{Instant, sleep_until, timeout_at};

use super::LockManager;
use crate::backend::protocol::{self, Landing};
use crate::backend::{Attempt, Keys, Try};
use crate::background;
use crate::error::{BackendError, LockError};
use crate::guard::{LockGuard, Token};
use crate::key::LockKey;
use crate::options::LockOptions;
use crate::waiting::Place;

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
        // A fresh owner token after every grant given back (see `bounded`).
        let mut token = Token::new();
        let start = Instant::now();
        let wait_end = start + options.max_wait();
        // Whatever the backend does, the call ends by then.
        let hard_end = wait_end + inner.backend.command_timeout();
        let not_acquired = || LockError::NotAcquired {
            key: keys.lock.to_string(),
            waited: start.elapsed(),
        };
        let guard = |token, fence, valid_until| {
            LockGuard::new(
                inner.backend.clone(),
                keys.clone(),
                token,
                fence,
                lease,
                valid_until,
            )
        };
        // Sent with the current owner token (`Try { token, ..ask }`).
        let mut ask = Try {
            keys: &keys,
            token: "",
            lease,
            // A call that waits registers at once if the lock is held, to be handed it in turn.
            register: !options.max_wait().is_zero(),
            queued: false,
            others_wait: false,
            fence_floor: None,
        };

        // `wait = 0`: exactly one try, outside the queue, and no registration.
        if options.max_wait().is_zero() {
            return match self.bounded(hard_end, &keys, ask, &mut token).await? {
                Attempt::Acquired { fence, valid_until } => Ok(guard(token, fence, valid_until)),
                Attempt::Held(_) => Err(not_acquired()),
            };
        }

        // Join the local queue *before* the first try: only the head asks, so the head is the only
        // waiter of this process that registers in the key's queue of waiting processes, and it is
        // in the local queue whenever a release can name it (see `waiting.rs`). An uncontended
        // acquisition is still one round trip: the caller is the head of an empty queue and tries
        // at once.
        let place = inner.waiters.join(&keys.channel, token.as_str());
        // Once this waiter's try as head failed, it is registered in the key's queue of waiting
        // processes; if it gives up (wait over, cancelled, an error), it takes itself out.
        let mut registration = Registration {
            manager: self,
            keys: &keys,
            token,
            active: false,
        };
        let mut must_try = true;
        // When this waiter last woke up from waiting (for the hand-over metrics): `None` until it
        // has waited, so an acquisition at the first try is not counted as a hand-over.
        let mut woken = None;
        loop {
            if must_try && place.state().0 {
                if Instant::now() >= wait_end {
                    return Err(not_acquired());
                }
                ask.others_wait = place.others_wait();
                registration.active = true;
                let sent = Instant::now();
                let attempt = self.bounded(hard_end, &keys, ask, &mut token).await;
                // The try's entry in the queue (if any) is under the token it was sent with;
                // after a give-back the next try registers under the fresh one, and a release
                // must find this waiter by that one.
                if registration.token.as_str() != token.as_str() {
                    place.set_token(token.as_str());
                }
                registration.token = token;
                match attempt? {
                    Attempt::Acquired { fence, valid_until } => {
                        registration.active = false;
                        place.acquired(valid_until, ask.others_wait);
                        if let Some(woken) = woken {
                            crate::telemetry::handover(
                                crate::telemetry::Labels::new(&keys, inner.deployment),
                                woken,
                            );
                        }
                        return Ok(guard(token, fence, valid_until));
                    }
                    Attempt::Held(pttl) => {
                        ask.queued = true;
                        place.set_registered();
                        place.set_retry_at(pttl.map(|p| Instant::now() + p));
                    }
                }
                // A queue that never subscribed subscribes now, then tries once more unless the
                // subscription was in place before that try was sent (a release in between would
                // have gone unheard); a release announced while we asked: ask again.
                match self.subscribe(&place, &keys, hard_end).await {
                    Some(Some(since)) if since < sent => {}
                    Some(_) => continue,
                    None => {}
                }
                if place.take_try() {
                    continue;
                }
            }
            // The head sleeps until a release wakes it (named, or the lock freed, or asked to
            // watch a reservation: see `Waiters::wake_head`) or until `retry_at`: the end of the
            // holder's lease as its last try saw it, or of a reservation it watches. Its last try
            // registered it, so its turn comes by name; the lease end only bounds how long a lost
            // name (or a registration the server lost) can hold it up.
            let (head, retry_at) = place.state();
            let timer = match retry_at {
                Some(at) if head => at.min(wait_end),
                _ => wait_end,
            };
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
            woken = Some(Instant::now());
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
        let confirmation = timeout_at(bound, confirmed).await;
        place.confirmed();
        Some(match confirmation {
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

    /// One try with owner token `token`, cut short at `hard_end` (the end of the wait plus one
    /// command timeout) when that comes before the command timeout does. A try cut short cleans up
    /// after itself (see [`Backend`](crate::backend::Backend)).
    ///
    /// A lock granted by a reply that came back after the lease's validity is given back and
    /// reported as held, never handed out expired. The give-back is a release under the try's
    /// owner token, in the background; `token` is replaced by a fresh one for the tries after it,
    /// so that the give-back — which may reach Redis after a later try's grant (another
    /// connection, a client's resend, a retry of the release) — can only ever delete the lock it
    /// gives back.
    async fn bounded(
        &self,
        hard_end: Instant,
        keys: &Arc<Keys>,
        ask: Try<'_>,
        token: &mut Token,
    ) -> Result<Attempt, LockError> {
        let backend = &self.inner.backend;
        let lease = ask.lease;
        let ask = Try {
            token: token.as_str(),
            ..ask
        };
        let attempt = backend.try_acquire(ask);
        let attempt = if Instant::now() + backend.command_timeout() <= hard_end {
            attempt.await?
        } else {
            cut_at(hard_end, keys, backend.command_timeout(), attempt).await?
        };
        match attempt {
            Attempt::Acquired { valid_until, .. } if valid_until <= Instant::now() => {
                tracing::warn!(key = %keys.lock, "the lock was granted after its lease's validity; giving it back");
                let given_back = *token;
                *token = Token::new();
                let (backend, keys) = (backend.clone(), keys.clone());
                protocol::release_in_background(
                    keys.lock.clone(),
                    "giving back a grant that came after its lease's validity",
                    Instant::now() + lease,
                    Landing::Before,
                    move |_| {
                        let (backend, keys) = (backend.clone(), keys.clone());
                        Box::pin(async move { backend.release(&keys, given_back.as_str()).await })
                    },
                );
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
    token: Token,
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
