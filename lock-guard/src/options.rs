//! [`LockOptions`]: how long to wait, how long to lease, how long the body may run. The defaults
//! and the deadline rules themselves live in `lease.rs`.

use std::time::Duration;

use crate::lease;

/// How long a lock is leased for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lease {
    /// Redis frees the lock this long after it was taken, whatever the holder does.
    Fixed(Duration),
    /// The lock is taken for the manager's watchdog lease and renewed every third of it while the
    /// body runs; the body is dropped if the lock is found gone, or if the last renewal Redis
    /// confirmed runs out.
    Watchdog,
}

/// Options of one acquisition: `wait`, `lease`, `timeout`, `max_hold`.
///
/// The defaults — the attribute's too, which passes only what it was given — are `wait = 5s`,
/// `lease = 3s`, `timeout` two thirds of a fixed lease.
///
/// ```
/// use std::time::Duration;
/// use lock_guard::LockOptions;
/// let opts = LockOptions::new().wait(Duration::from_millis(250)).lease(Duration::from_secs(9));
/// assert_eq!(opts.effective_timeout(), Some(Duration::from_secs(6)));
/// assert_eq!(opts.max_wait(), Duration::from_millis(250));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    pub(crate) wait: Duration,
    pub(crate) lease: Lease,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_hold: Option<Duration>,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LockOptions {
    /// `wait = 5s`, `lease = 3s`, `timeout` two thirds of the lease.
    pub const fn new() -> Self {
        LockOptions {
            wait: lease::DEFAULT_WAIT,
            lease: Lease::Fixed(lease::DEFAULT_LEASE),
            timeout: None,
            max_hold: None,
        }
    }

    /// Longest time to wait for the lock; zero tries exactly once.
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// A fixed lease.
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = Lease::Fixed(lease);
        self
    }

    /// Holds the lock for as long as the body runs, renewing it.
    pub const fn watchdog(mut self) -> Self {
        self.lease = Lease::Watchdog;
        self
    }

    /// The body's deadline, counted from the acquisition. With a fixed lease the body is also
    /// bounded by the lease's validity, whichever comes first.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The longest the lock may be held, counted from the acquisition: meant for watchdog locks,
    /// which a body that never ends would otherwise hold forever.
    ///
    /// With `lease = watchdog`, renewals stop at `max_hold` — the last renewal asks Redis for no
    /// more than what is left of it, so even a holder that freezes or dies then leaves the lock to
    /// expire by `max_hold` (plus the drift allowance and the renewal's transit to Redis) — and,
    /// when `max_hold` is shorter than the watchdog lease, the acquisition asks for no more than
    /// `max_hold` either. The body, if still running, is
    /// dropped and the call returns [`LockError::MaxHold`](crate::LockError::MaxHold); the lock is
    /// released after it. With a fixed lease it bounds the body in the same way (the lease already
    /// bounds the lock). A `timeout` that comes first still ends the body with `Deadline`.
    pub const fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// The longest the lock may be held, if bounded (see [`max_hold`](Self::max_hold)).
    pub const fn max_hold_limit(&self) -> Option<Duration> {
        self.max_hold
    }

    /// The longest time to wait for the lock.
    pub const fn max_wait(&self) -> Duration {
        self.wait
    }

    /// The lease: fixed, or renewed by a watchdog.
    pub const fn lease_kind(&self) -> Lease {
        self.lease
    }

    /// The body's timeout in force: the one set, or two thirds of a fixed lease, or none with a
    /// watchdog.
    pub fn effective_timeout(&self) -> Option<Duration> {
        self.timeout.or_else(|| {
            lease::default_timeout(match self.lease {
                Lease::Fixed(l) => Some(l),
                Lease::Watchdog => None,
            })
        })
    }
}
