//! The in-process backend: the same semantics as Redis (leases, fencing, wake-ups), in a map.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Attempt, Backend, BoxFuture, Counters, Keys, Try};
use crate::error::LockError;
use crate::lease;
use crate::waiting::Waiters;

pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    /// Where a release wakes the next local waiter, as a Redis publish does.
    waiters: Weak<Waiters>,
    counters: Counters,
}

struct State {
    locks: HashMap<Arc<str>, Entry>,
    /// One counter for every key: tokens increase per key, and nothing per key is kept after a
    /// release, so memory stays bounded by the locks held.
    last_fence: u64,
    /// Size of the map after the last sweep of expired entries.
    swept_at: usize,
}

struct Entry {
    token: String,
    expires: Instant,
}

impl MemoryBackend {
    pub(crate) fn new(waiters: Weak<Waiters>) -> Self {
        MemoryBackend {
            state: Mutex::new(State {
                locks: HashMap::new(),
                last_fence: 0,
                swept_at: 64,
            }),
            waiters,
            counters: Counters::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, keys: &Keys, token: &str, lease: Duration) -> Attempt {
        let now = Instant::now();
        let mut st = self.state();
        if let Some(e) = st.locks.get(&keys.lock)
            && e.expires > now
        {
            return Attempt::Held(Some(e.expires - now));
        }
        if st.locks.len() >= st.swept_at * 2 {
            // Forgotten locks (leases that ran out unreleased) would otherwise stay in the map.
            st.locks.retain(|_, e| e.expires > now);
            st.swept_at = st.locks.len().max(64);
        }
        st.last_fence += 1;
        let fence = st.last_fence;
        st.locks.insert(
            keys.lock.clone(),
            Entry {
                token: token.to_owned(),
                expires: now + lease,
            },
        );
        Attempt::Acquired {
            fence,
            valid_until: lease::valid_until(now, lease),
        }
    }

    fn free(&self, keys: &Keys, token: &str) -> bool {
        let now = Instant::now();
        let ours = {
            let mut st = self.state();
            match st.locks.get(&keys.lock) {
                Some(e) if e.token == token => {
                    let live = e.expires > now;
                    st.locks.remove(&keys.lock);
                    live
                }
                _ => false,
            }
        };
        if ours && let Some(q) = self.waiters.upgrade() {
            q.wake_head(&keys.channel, b"");
        }
        ours
    }

    fn extend(&self, keys: &Keys, token: &str, lease: Duration) -> bool {
        let now = Instant::now();
        match self.state().locks.get_mut(&keys.lock) {
            Some(e) if e.token == token && e.expires > now => {
                e.expires = now + lease;
                true
            }
            _ => false,
        }
    }

    fn delete(&self, keys: &Keys) -> bool {
        let now = Instant::now();
        self.state()
            .locks
            .remove(&keys.lock)
            .is_some_and(|e| e.expires > now)
    }
}

impl Backend for MemoryBackend {
    fn inspect<'a>(
        &'a self,
        route: super::inspect::Route<'a>,
    ) -> BoxFuture<'a, super::inspect::Answers> {
        use super::inspect::{Answers, Raw, Route};
        let now = Instant::now();
        let st = self.state();
        let raw = |key: &Arc<str>, e: &Entry| Raw {
            key: key.to_string(),
            pttl: Some(e.expires.saturating_duration_since(now).as_millis() as u64),
            value: Some(e.token.clone()),
            // No counter per key is kept in memory.
            fence: None,
            queue: 0,
        };
        let raws = match route {
            Route::Lock(keys) => st
                .locks
                .get_key_value(&keys.lock)
                .filter(|(_, e)| e.expires > now)
                .map(|(k, e)| raw(k, e))
                .into_iter()
                .collect(),
            Route::Scan { prefix, limit, .. } => st
                .locks
                .iter()
                .filter(|(k, e)| e.expires > now && k.starts_with(prefix))
                .take(limit)
                .map(|(k, e)| raw(k, e))
                .collect(),
        };
        Box::pin(std::future::ready(Answers::Memory(raws)))
    }

    fn try_acquire<'a>(&'a self, req: Try<'a>) -> BoxFuture<'a, Result<Attempt, LockError>> {
        let r = self.take(req.keys, req.token, req.lease);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn release<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(std::future::ready(Ok(self.free(keys, token))))
    }

    fn renew<'a>(
        &'a self,
        keys: &'a Keys,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(std::future::ready(Ok(self.extend(keys, token, lease))))
    }

    fn leave_queue<'a>(&'a self, _: &'a Keys, _: &'a str) -> BoxFuture<'a, Result<(), LockError>> {
        // No queue of waiting processes: there is only this one.
        Box::pin(std::future::ready(Ok(())))
    }

    fn force_unlock<'a>(&'a self, keys: &'a Keys) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(std::future::ready(Ok(self.delete(keys))))
    }

    fn command_timeout(&self) -> Duration {
        // Nothing here waits on I/O; a bound for the wait arithmetic only.
        Duration::from_millis(100)
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        f.field("backend", &"memory");
    }
}
