//! The lease and deadline policy, in one place: the defaults, how long a lease is surely ours, when
//! a body must stop, how often a watchdog renews — and the future that enforces the deadline.
//!
//! A lease counts from the moment the acquire request was *sent* (the server may have set it any
//! time after that), less a drift allowance for clocks that run at slightly different rates:
//! `valid_until = sent + lease − (1 % of lease + 2 ms)`, on the monotonic clock. A body runs until
//! the earlier of its `timeout` (counted from the acquisition) and that validity, and is never
//! polled once the deadline has passed — not even for its first poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// `wait` when none is given.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// A fixed lease when none is given. The attribute's compile-time `timeout < lease` check mirrors
/// this value (a test pins the two together).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(3);
/// The lease taken with `lease = watchdog` unless the manager says otherwise.
pub(crate) const DEFAULT_WATCHDOG_LEASE: Duration = Duration::from_secs(30);

/// Drift allowance of a lease: 1 % of it plus 2 ms.
pub(crate) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// Until when a lease taken (or renewed) by a request sent at `sent` is surely ours.
pub(crate) fn valid_until(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(drift(lease))
}

/// The body's timeout when none is given: two thirds of a fixed lease, none with a watchdog.
pub(crate) fn default_timeout(fixed_lease: Option<Duration>) -> Option<Duration> {
    fixed_lease.map(|l| l * 2 / 3)
}

/// How often a watchdog renews: every third of its lease.
pub(crate) fn renew_period(lease: Duration) -> Duration {
    lease / 3
}

/// The lease a renewal sent at `sent` asks for when the lock must not outlive `hold_until`: the
/// full lease, or only what is left until `hold_until` plus the full lease's drift allowance (so
/// that the renewal's confirmed validity still reaches `hold_until`), at least 1 ms.
pub(crate) fn capped_lease(lease: Duration, sent: Instant, hold_until: Instant) -> Duration {
    let left = hold_until.saturating_duration_since(sent) + drift(lease);
    // Whole milliseconds, rounded up: Redis takes `PEXPIRE` in milliseconds.
    let left =
        Duration::from_millis(u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX));
    left.clamp(Duration::from_millis(1), lease)
}

/// A lease's validity that renewals move forward, shared between the watchdog (which extends it
/// once Redis confirmed a renewal) and the body's deadline (which reads it). Stored as nanoseconds
/// after a base instant, so it is `Sync` and the guarded future stays `Send`.
#[derive(Debug)]
pub(crate) struct Validity {
    base: Instant,
    nanos: AtomicU64,
}

impl Validity {
    pub(crate) fn new(base: Instant, until: Instant) -> Self {
        let v = Validity {
            base,
            nanos: AtomicU64::new(0),
        };
        v.extend(until);
        v
    }

    pub(crate) fn get(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }

    /// Moves the validity to `until` if that is later.
    pub(crate) fn extend(&self, until: Instant) {
        let n = u64::try_from(until.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX);
        self.nanos.fetch_max(n, Ordering::AcqRel);
    }
}

/// How a bounded body ended.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    /// It finished, with this output.
    Done(T),
    /// Its `timeout` passed (or, with a fixed lease, the lease's validity): it was dropped.
    Deadline,
    /// The lease's validity passed with no renewal confirmed, or the watchdog found the lock gone:
    /// it was dropped.
    Lost,
    /// The lock's `max_hold` passed: it was dropped.
    MaxHold,
}

pin_project_lite::pin_project! {
    /// Runs a body until it ends or its deadline passes, whichever is first, and never polls it
    /// once the deadline has passed: the clock is read before every poll (a task that wakes late —
    /// a frozen process, a busy runtime — finds both the body and the timer ready, and the timer
    /// wins). No timer is armed before the body first returns `Pending`, so a body that completes
    /// at once costs none.
    pub(crate) struct Bounded<'v, B, W> {
        #[pin]
        body: B,
        #[pin]
        watchdog: W,
        timeout_at: Option<Instant>,
        // With a fixed lease: its validity, fixed; with a watchdog: moved by confirmed renewals.
        validity: &'v Validity,
        // Whether running past the validity means the lock is lost (watchdog) or the body simply
        // ran out of time (fixed lease).
        renewed: bool,
        // `max_hold` after the acquisition, if bounded.
        hold_until: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<'v, B, W> Bounded<'v, B, W> {
    /// `watchdog` ends when the lock is lost; a fixed lease passes a future that never ends.
    pub(crate) fn new(
        body: B,
        watchdog: W,
        timeout_at: Option<Instant>,
        validity: &'v Validity,
        renewed: bool,
    ) -> Self {
        Bounded {
            body,
            watchdog,
            timeout_at,
            validity,
            renewed,
            hold_until: None,
            timer: None,
        }
    }

    /// Ends the body with [`Ended::MaxHold`] at `hold_until`.
    pub(crate) fn hold_until(mut self, hold_until: Option<Instant>) -> Self {
        self.hold_until = hold_until;
        self
    }
}

impl<B: Future, W: Future<Output = ()>> Future for Bounded<'_, B, W> {
    type Output = Ended<B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let now = Instant::now();
        let valid = this.validity.get();
        // The bound came first (a task woken late finds both passed): the lock was ours until it.
        if this.hold_until.is_some_and(|t| now >= t && t <= valid) {
            return Poll::Ready(Ended::MaxHold);
        }
        if now >= valid {
            return Poll::Ready(if *this.renewed {
                Ended::Lost
            } else {
                Ended::Deadline
            });
        }
        if this.timeout_at.is_some_and(|t| now >= t) {
            return Poll::Ready(Ended::Deadline);
        }
        // The watchdog first: a renewal it has just confirmed moves the validity forward.
        if this.watchdog.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ended::Lost);
        }
        if let Poll::Ready(out) = this.body.as_mut().poll(cx) {
            return Poll::Ready(Ended::Done(out));
        }
        // Read again: the watchdog may have moved it.
        let valid = this.validity.get();
        let deadline = this.timeout_at.map_or(valid, |t| t.min(valid));
        let deadline = this.hold_until.map_or(deadline, |t| t.min(deadline));
        match this.timer.as_mut().as_pin_mut() {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.reset(deadline);
                }
            }
            None => this.timer.set(Some(tokio::time::sleep_until(deadline))),
        }
        if let Some(timer) = this.timer.as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            // Woken at the deadline: the next poll (now) reports it without touching the body.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
