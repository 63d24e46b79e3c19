//! The closure form — what `#[concurrency_guard]` expands to: take the lock, run the body under
//! its deadline (renewing a watchdog lease meanwhile), release after the body has ended.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::Instrument;

use super::LockManager;
use crate::backend::Keys;
use crate::context::{self, Held};
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::key::LockKey;
use crate::lease::{self, Bounded, Ended, Validity};
use crate::options::{Lease, LockOptions};

impl LockManager {
    /// Runs `body` under the lock: the closure form, exactly what `#[concurrency_guard]` expands
    /// to.
    ///
    /// Waits for the lock up to `options.wait`; runs `body` until it ends or its deadline (the
    /// earlier of `timeout` after acquisition and the lease's validity), whichever comes first —
    /// at the deadline `body` is dropped, without being polled again, and the call returns
    /// [`LockError::Deadline`]; releases the lock after `body` has finished or been dropped. With a
    /// watchdog lease the lock is renewed while `body` runs, and `body` is dropped with
    /// [`LockError::Lost`] if a renewal finds the lock gone or the last confirmed renewal runs out.
    /// Inside `body`, [`fencing_token`](crate::fencing_token) returns this acquisition's token.
    ///
    /// A nested `run` on the same manager and key, in the same task, runs its body without taking
    /// the lock again, under the earlier of its own deadline and the enclosing one; two such
    /// nested bodies driven at once (`join!`) take turns.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use lock_guard::{LockError, LockKey, LockManager, LockOptions};
    ///
    /// let locks = LockManager::memory();
    /// let key = LockKey::new("invoice").part(7);
    /// let result: Result<u64, LockError> = locks
    ///     .run(&key, LockOptions::new(), async {
    ///         Ok(lock_guard::fencing_token().expect("inside a guarded body"))
    ///     })
    ///     .await;
    /// assert!(result.unwrap() > 0);
    /// # }
    /// ```
    pub async fn run<T, E, F>(&self, key: &LockKey, options: LockOptions, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        let keys = self.keys(key);
        if let Some(enclosing) = context::enclosing(self.id(), &keys.lock) {
            return self.run_nested(&keys, options, &enclosing, body).await;
        }
        let span = tracing::debug_span!(
            "lock_guard",
            key = %keys.lock,
            waited_ms = tracing::field::Empty,
            fencing_token = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            // No subscriber wants it: skip the per-poll enter/exit of an instrumented future.
            self.run_locked(keys, options, body, span).await
        } else {
            self.run_locked(keys, options, body, span.clone())
                .instrument(span)
                .await
        }
    }

    /// A call made inside a body that holds the same key: no new acquisition, but one nested body
    /// at a time, under the earlier of its own deadline and the enclosing one.
    async fn run_nested<T, E, F>(
        &self,
        keys: &Keys,
        options: LockOptions,
        enclosing: &Held,
        body: F,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        let start = Instant::now();
        let turn = match timeout_at(start + options.max_wait(), enclosing.turn.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                tracing::debug!(key = %keys.lock, "a nested body of the same key is running; wait over");
                return Err(LockError::NotAcquired {
                    key: keys.lock.to_string(),
                    waited: start.elapsed(),
                }
                .into());
            }
        };
        tracing::trace!(key = %keys.lock, "reentrant call: the lock is already held by this call chain");
        let acquired = Instant::now();
        let own = options.effective_timeout().map(|t| acquired + t);
        let timeout_at = match (own, enclosing.timeout_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let held = Held::new(
            self.id(),
            keys.lock.clone(),
            enclosing.fence,
            timeout_at,
            enclosing.validity.clone(),
            enclosing.renewed,
        );
        let body = context::scope(held, body);
        let ended = Bounded::new(
            body,
            std::future::pending::<()>(),
            timeout_at,
            &enclosing.validity,
            enclosing.renewed,
        )
        .await;
        drop(turn);
        match ended {
            Ended::Done(r) => r,
            Ended::Deadline => Err(deadline_error(keys, timeout_at, acquired).into()),
            Ended::Lost => Err(LockError::Lost {
                key: keys.lock.to_string(),
            }
            .into()),
            // Nested bodies are not given a hold bound of their own: the enclosing one ends them.
            Ended::MaxHold => Err(LockError::Lost {
                key: keys.lock.to_string(),
            }
            .into()),
        }
    }

    async fn run_locked<T, E, F>(
        &self,
        keys: Arc<Keys>,
        options: LockOptions,
        body: F,
        span: tracing::Span,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<LockError>,
    {
        let started = Instant::now();
        let guard = match self.take(keys.clone(), options).await {
            Ok(g) => g,
            Err(e) => {
                span.record("outcome", outcome_name(&e));
                if e.is_backend() {
                    tracing::warn!(key = %keys.lock, error = %e, "lock backend failed; the body did not run");
                } else {
                    tracing::debug!(key = %keys.lock, error = %e, "lock not acquired; the body did not run");
                }
                return Err(e.into());
            }
        };
        let acquired = Instant::now();
        let labels = crate::telemetry::Labels::new(&keys, self.inner.deployment);
        span.record("waited_ms", (acquired - started).as_millis() as u64);
        span.record("fencing_token", guard.fencing_token());

        let renewed = matches!(options.lease_kind(), Lease::Watchdog);
        let timeout_at = options.effective_timeout().map(|t| acquired + t);
        let hold_until = options.max_hold_limit().map(|m| acquired + m);
        let validity = Arc::new(Validity::new(acquired, guard.valid_until()));
        let gone = AtomicBool::new(false);
        let shut = AtomicBool::new(false);
        let ended = {
            let held = Held::new(
                self.id(),
                keys.lock.clone(),
                guard.fencing_token(),
                timeout_at,
                validity.clone(),
                renewed,
            );
            let body = context::scope(held, body);
            let watchdog = async {
                if renewed {
                    if watchdog(&guard, &validity, hold_until, labels).await {
                        gone.store(true, Ordering::Relaxed);
                    }
                } else {
                    std::future::pending::<()>().await;
                }
            };
            // `shutdown` ends the body as a lost lock would, then says why.
            let watchdog = async {
                let closing = self.inner.holdings.closing();
                futures_util::pin_mut!(watchdog, closing);
                if let futures_util::future::Either::Right(_) =
                    futures_util::future::select(watchdog, closing).await
                {
                    shut.store(true, Ordering::Relaxed);
                }
            };
            Bounded::new(body, watchdog, timeout_at, &validity, renewed)
                .hold_until(hold_until)
                .await
            // The body is dropped here, before the lock is released.
        };
        crate::telemetry::seconds("lock_guard_hold_seconds", labels, acquired.elapsed());
        match &ended {
            Ended::Done(_) => {}
            Ended::Deadline => crate::telemetry::count("lock_guard_deadline_total", labels),
            Ended::MaxHold => crate::telemetry::count("lock_guard_max_hold_total", labels),
            Ended::Lost if shut.load(Ordering::Relaxed) => {}
            Ended::Lost => crate::telemetry::count("lock_guard_lost_total", labels),
        }
        match ended {
            Ended::Done(r) => {
                guard.release_after_body().await;
                span.record("outcome", "done");
                r
            }
            Ended::Deadline => {
                guard.release_after_body().await;
                span.record("outcome", "deadline");
                let e = deadline_error(&keys, timeout_at.map(|t| t.min(validity.get())), acquired);
                tracing::warn!(key = %keys.lock, error = %e, "guarded body reached its deadline and was dropped");
                Err(e.into())
            }
            Ended::MaxHold => {
                guard.release_after_body().await;
                span.record("outcome", "max_hold");
                let e = LockError::MaxHold {
                    key: keys.lock.to_string(),
                    max_hold: options.max_hold_limit().unwrap_or_default(),
                };
                tracing::warn!(key = %keys.lock, error = %e, "guarded body held the lock for its max_hold and was dropped");
                Err(e.into())
            }
            Ended::Lost if shut.load(Ordering::Relaxed) => {
                guard.release_after_body().await;
                span.record("outcome", "shut_down");
                tracing::warn!(key = %keys.lock, "lock manager shut down while the body ran; the body was dropped");
                Err(LockError::ShutDown {
                    key: Some(keys.lock.to_string()),
                }
                .into())
            }
            Ended::Lost => {
                if gone.load(Ordering::Relaxed) {
                    guard.forget();
                } else {
                    // The lease ran out unconfirmed: perhaps only the replies were lost. Release
                    // (owner-checked), so a lock that is still ours is freed at once.
                    guard.release_after_body().await;
                }
                span.record("outcome", "lost");
                tracing::warn!(key = %keys.lock, "lock lost while the body ran; the body was dropped");
                Err(LockError::Lost {
                    key: keys.lock.to_string(),
                }
                .into())
            }
        }
    }
}

fn deadline_error(keys: &Keys, deadline: Option<Instant>, acquired: Instant) -> LockError {
    LockError::Deadline {
        key: keys.lock.to_string(),
        timeout: deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(acquired)),
    }
}

/// Renews the lock every third of its lease, moving `validity` forward each time Redis confirms;
/// returns when a renewal finds the lock gone, or when the validity runs out before a renewal is
/// confirmed (a renewal still in flight then does not count). Returns `true` when the lock was
/// found gone.
///
/// With `hold_until` (`max_hold`), no renewal asks Redis to keep the lock past it (plus the drift
/// allowance, so that the confirmed validity reaches it), and none is sent after it: the body's
/// bound ends the call then.
async fn watchdog(
    guard: &LockGuard,
    validity: &Validity,
    hold_until: Option<Instant>,
    labels: crate::telemetry::Labels<'_>,
) -> bool {
    let full_lease = guard.lease();
    let period = lease::renew_period(full_lease);
    let mut next = Instant::now() + period;
    loop {
        if let Some(end) = hold_until
            && next >= end
        {
            // Renewals stop: the body ends at `end` (or at the validity, if that comes first).
            return std::future::pending().await;
        }
        sleep_until(next.min(validity.get())).await;
        if Instant::now() >= validity.get() {
            tracing::warn!(key = %guard.key(), "lease ran out before a renewal was confirmed");
            return false;
        }
        let sent = Instant::now();
        let lease = match hold_until {
            Some(end) => lease::capped_lease(full_lease, sent, end),
            None => full_lease,
        };
        let renewal = guard.backend().renew(guard.keys(), guard.token(), lease);
        match timeout_at(validity.get(), renewal).await {
            Ok(Ok(true)) => {
                tracing::trace!(key = %guard.key(), "lease renewed");
                validity.extend(lease::valid_until(sent, lease));
                next = Instant::now() + period;
            }
            Ok(Ok(false)) => {
                tracing::warn!(key = %guard.key(), "renewal found the lock gone");
                return true;
            }
            Ok(Err(e)) => {
                crate::telemetry::count("lock_guard_backend_errors_total", labels);
                tracing::warn!(key = %guard.key(), error = %e, "renewal failed; retrying");
                // Retry soon, but without spinning on an error that comes back at once.
                next = Instant::now() + (period / 4).max(Duration::from_millis(5));
            }
            Err(_) => {
                tracing::warn!(key = %guard.key(), "lease ran out while a renewal was in flight");
                return false;
            }
        }
    }
}

fn outcome_name(e: &LockError) -> &'static str {
    match e {
        LockError::NotAcquired { .. } => "not_acquired",
        LockError::Deadline { .. } => "deadline",
        LockError::Lost { .. } => "lost",
        LockError::MaxHold { .. } => "max_hold",
        LockError::ShutDown { .. } => "shut_down",
        LockError::NotReplicated { .. } => "not_replicated",
        LockError::Backend { .. } => "backend_error",
        LockError::Config { .. } => "config_error",
        LockError::NoDefault => "no_default",
        LockError::NotHeld { .. } => "not_held",
    }
}
