//! Metrics through the `metrics` facade (feature `metrics`): what a dashboard needs about the
//! locks, labelled by the lock's *name* and the deployment — never by key, whose values are
//! unbounded. Without the feature every function here is empty and compiles away.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `lock_guard_acquired_total` | counter | acquisitions |
//! | `lock_guard_not_acquired_total` | counter | `wait` ran out (`NotAcquired`) |
//! | `lock_guard_deadline_total` | counter | bodies dropped at their deadline |
//! | `lock_guard_lost_total` | counter | bodies dropped because the lock was lost |
//! | `lock_guard_max_hold_total` | counter | bodies dropped at `max_hold` |
//! | `lock_guard_backend_errors_total` | counter | acquisitions and renewals that failed on the backend |
//! | `lock_guard_handovers_total` | counter | acquisitions after waiting for the lock |
//! | `lock_guard_wait_seconds` | histogram | time from asking to holding (or giving up) |
//! | `lock_guard_hold_seconds` | histogram | time from acquisition to the body's end (closure form) |
//! | `lock_guard_handover_gap_seconds` | histogram | for acquisitions after a wait: from the wake-up (a release heard, or the holder's lease end) to holding |
//! | `lock_guard_local_waiters` | gauge | tasks of this process inside an acquisition (trying or waiting) |

use std::time::Duration;

use crate::backend::Keys;

/// The lock's name: the tag's first part (`lock:{keyword:42}` → `keyword`).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn name_of(keys: &Keys) -> &str {
    let tag = keys.lock.split_once('{').map_or("", |(_, t)| t);
    tag.split([':', '}']).next().unwrap_or("")
}

/// The labels of one lock's metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Labels<'a> {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    name: &'a str,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    deployment: &'static str,
}

impl<'a> Labels<'a> {
    pub(crate) fn new(keys: &'a Keys, deployment: &'static str) -> Self {
        Labels {
            name: name_of(keys),
            deployment,
        }
    }
}

#[cfg(feature = "metrics")]
mod on {
    use super::*;

    fn labels(l: Labels<'_>) -> [(&'static str, String); 2] {
        [
            ("name", l.name.to_owned()),
            ("deployment", l.deployment.to_owned()),
        ]
    }

    pub(crate) fn count(metric: &'static str, l: Labels<'_>) {
        metrics::counter!(metric, &labels(l)).increment(1);
    }

    pub(crate) fn seconds(metric: &'static str, l: Labels<'_>, d: Duration) {
        metrics::histogram!(metric, &labels(l)).record(d.as_secs_f64());
    }

    pub(crate) fn waiters(l: Labels<'_>, up: bool) {
        let gauge = metrics::gauge!("lock_guard_local_waiters", &labels(l));
        if up {
            gauge.increment(1.0);
        } else {
            gauge.decrement(1.0);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use super::*;

    #[inline(always)]
    pub(crate) fn count(_: &'static str, _: Labels<'_>) {}

    #[inline(always)]
    pub(crate) fn seconds(_: &'static str, _: Labels<'_>, _: Duration) {}

    #[inline(always)]
    pub(crate) fn waiters(_: Labels<'_>, _: bool) {}
}

pub(crate) use on::{count, seconds};

/// Counts a task inside an acquisition in the `lock_guard_local_waiters` gauge while it lives.
#[derive(Debug)]
pub(crate) struct Waiting<'a>(Labels<'a>);

impl<'a> Waiting<'a> {
    pub(crate) fn new(l: Labels<'a>) -> Self {
        on::waiters(l, true);
        Waiting(l)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        on::waiters(self.0, false);
    }
}

/// An acquisition after waiting: counted, with the time since the waiter woke up.
pub(crate) fn handover(l: Labels<'_>, woken: tokio::time::Instant) {
    count("lock_guard_handovers_total", l);
    seconds("lock_guard_handover_gap_seconds", l, woken.elapsed());
}

/// The outcome of an acquisition: the counters and the wait histogram.
pub(crate) fn acquisition(
    l: Labels<'_>,
    waited: Duration,
    result: Result<(), &crate::error::LockError>,
) {
    seconds("lock_guard_wait_seconds", l, waited);
    match result {
        Ok(()) => count("lock_guard_acquired_total", l),
        Err(e) if e.is_not_acquired() => count("lock_guard_not_acquired_total", l),
        Err(e) if e.is_backend() => count("lock_guard_backend_errors_total", l),
        Err(_) => {}
    }
}

/// The deployment's label, from what the backend says of itself in the manager's `Debug`.
pub(crate) fn deployment(backend: &dyn crate::backend::Backend) -> &'static str {
    struct Probe<'a>(&'a dyn crate::backend::Backend);
    impl std::fmt::Debug for Probe<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let mut d = f.debug_struct("");
            self.0.describe(&mut d);
            d.finish()
        }
    }
    let shown = format!("{:?}", Probe(backend));
    ["cluster", "redlock", "memory", "redis"]
        .into_iter()
        .find(|kind| shown.contains(&format!("backend: \"{kind}\"")))
        .unwrap_or("redis")
}
