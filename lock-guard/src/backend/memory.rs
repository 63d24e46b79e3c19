//! The in-process backend: the same semantics as Redis (leases, fencing, wake-ups), in a map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Attempt, Keys};
use crate::queue::Queues;

pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    /// Where a release wakes the next local waiter, as a Redis publish does.
    pub(crate) queues: Weak<Queues>,
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
    pub(crate) fn new(queues: Weak<Queues>) -> Self {
        MemoryBackend {
            state: Mutex::new(State {
                locks: HashMap::new(),
                last_fence: 0,
                swept_at: 64,
            }),
            queues,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn try_acquire(&self, keys: &Keys, token: &str, lease: Duration) -> Attempt {
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
        Attempt::Acquired(fence)
    }

    pub(crate) fn release(&self, keys: &Keys, token: &str) -> bool {
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
        if ours && let Some(q) = self.queues.upgrade() {
            q.wake_head(&keys.channel, b"");
        }
        ours
    }

    pub(crate) fn renew(&self, keys: &Keys, token: &str, lease: Duration) -> bool {
        let now = Instant::now();
        match self.state().locks.get_mut(&keys.lock) {
            Some(e) if e.token == token && e.expires > now => {
                e.expires = now + lease;
                true
            }
            _ => false,
        }
    }

    /// Deletes a lock whoever holds it, as `DEL` would in Redis: for tests of lost locks.
    pub(crate) fn force_delete(&self, keys: &Keys) -> bool {
        self.state().locks.remove(&keys.lock).is_some()
    }
}
