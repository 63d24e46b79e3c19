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

/// Options of one acquisition: `wait`, `lease`, `timeout`.
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
