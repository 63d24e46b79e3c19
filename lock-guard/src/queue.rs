//! The per-process FIFO of waiters for each key (S8).
//!
//! Only the head of a key's queue contends in Redis; the others sleep until they become the head.
//! A release message wakes the head alone. The queue also remembers when the current holder's
//! lease ends, so a head whose release message was lost still retries by then.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Called when a key gains its first local waiter (`true`) or loses its last (`false`), while
/// the queue lock is held, so subscribe and unsubscribe requests leave in the order they happen.
pub(crate) type SubscriptionHook = Box<dyn Fn(&Arc<str>, bool) + Send + Sync>;

pub(crate) struct Queues {
    /// Sharded by key, so that calls on different keys (every uncontended call passes through
    /// here) do not contend for one lock.
    shards: Box<[Mutex<Shard>]>,
    hook: Option<SubscriptionHook>,
}

struct KeyQueue {
    waiters: VecDeque<Arc<Waiter>>,
    /// Whether the release channel was subscribed for this queue (on its first failed try).
    subscribed: bool,
    /// When the lock is expected to be free at the latest (the holder's lease end), if known.
    retry_at: Option<Instant>,
}

struct Waiter {
    /// The owner token this waiter will take the lock with: a release that hands the lock to
    /// another process names that process's token, and this head then need not ask.
    token: [u8; 32],
    /// Whether this waiter, as head, has registered in the key's queue of waiting processes.
    registered: AtomicBool,
    notify: Notify,
    /// Set by a wake-up that asks the head to try now (a release, a departed head, a reconnect);
    /// unset for a plain promotion after a local acquisition, where the lock is known to be held.
    try_now: AtomicBool,
}

impl Waiter {
    fn wake(&self, try_now: bool) {
        if try_now {
            self.try_now.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }
}

impl Queues {
    pub(crate) fn new(hook: Option<SubscriptionHook>) -> Self {
        Queues {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hook,
        }
    }

    /// The shard holding `channel`'s queue.
    fn map(&self, channel: &str) -> MutexGuard<'_, Shard> {
        // FNV-1a: cheap, and only spreads keys over the shards.
        let h = channel.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        lock(&self.shards[(h % SHARDS as u64) as usize])
    }

    fn all(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards.iter().map(lock)
    }

    /// Whether anyone in this process waits for the lock behind `channel`.
    pub(crate) fn has_waiters(&self, channel: &str) -> bool {
        self.map(channel).contains_key(channel)
    }

    /// Joins the queue of `channel` at the back. Returns the place and whether it is the first
    /// waiter (the queue was empty).
    pub(crate) fn join(self: &Arc<Self>, channel: &Arc<str>, token: &str) -> (Place, bool) {
        let waiter = Arc::new(Waiter {
            token: {
                // Owner tokens are 32 hex digits; a shorter one is zero-padded.
                let mut t = [0u8; 32];
                let n = token.len().min(32);
                t[..n].copy_from_slice(&token.as_bytes()[..n]);
                t
            },
            registered: AtomicBool::new(false),
            notify: Notify::new(),
            try_now: AtomicBool::new(false),
        });
        let mut map = self.map(channel);
        let first = !map.contains_key(channel);
        map.entry(channel.clone())
            .or_insert_with(|| KeyQueue {
                waiters: VecDeque::with_capacity(4),
                subscribed: false,
                retry_at: None,
            })
            .waiters
            .push_back(waiter.clone());
        drop(map);
        (
            Place {
                queues: self.clone(),
                channel: channel.clone(),
                waiter,
                done: false,
            },
            first,
        )
    }

    /// A release was announced on `channel`: wake the head of its queue to try. A release that
    /// handed the lock to a waiting process names its token (`to`): any other head only re-arms
    /// its timer for the end of that reservation, in case the process it went to is gone.
    pub(crate) fn wake_head(&self, channel: &str, to: &[u8]) {
        if let Some(q) = self.map(channel).get_mut(channel)
            && let Some(head) = q.waiters.front()
        {
            if to.is_empty()
                || to == head.token.as_slice()
                || !head.registered.load(Ordering::Acquire)
            {
                // Named, or not registered yet (a head promoted after a local acquisition): try
                // now, which registers it, so it is not skipped by the next hand-overs.
                head.wake(true);
            } else {
                q.retry_at = Some(Instant::now() + crate::backend::HANDOVER);
                head.wake(false);
            }
        }
    }

    /// Release messages may have been missed (the subscriber reconnected): every head tries.
    pub(crate) fn wake_all_heads(&self) {
        for map in self.all() {
            for q in map.values() {
                if let Some(head) = q.waiters.front() {
                    head.wake(true);
                }
            }
        }
    }

    /// The channels that have local waiters now.
    pub(crate) fn channels(&self) -> Vec<Arc<str>> {
        self.all()
            .flat_map(|m| m.keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Number of local waiters on all keys.
    pub(crate) fn len(&self) -> usize {
        self.all()
            .map(|m| m.values().map(|q| q.waiters.len()).sum::<usize>())
            .sum()
    }
}

/// A waiter's place in its key's queue; leaving is automatic on drop (S14).
pub(crate) struct Place {
    queues: Arc<Queues>,
    channel: Arc<str>,
    waiter: Arc<Waiter>,
    done: bool,
}

impl Place {
    /// Whether this place is the head, and when the lock should be free at the latest.
    pub(crate) fn state(&self) -> (bool, Option<Instant>) {
        let map = self.queues.map(&self.channel);
        match map.get(&self.channel) {
            Some(q) => (
                q.waiters
                    .front()
                    .is_some_and(|w| Arc::ptr_eq(w, &self.waiter)),
                q.retry_at,
            ),
            None => (false, None),
        }
    }

    /// Records when the holder's lease ends, as the head just learnt it.
    pub(crate) fn set_retry_at(&self, at: Option<Instant>) {
        if let Some(q) = self.queues.map(&self.channel).get_mut(&self.channel) {
            q.retry_at = at;
        }
    }

    /// Waits for a wake-up; returns whether it asks to try now.
    pub(crate) async fn notified(&self) -> bool {
        self.waiter.notify.notified().await;
        self.waiter.try_now.swap(false, Ordering::AcqRel)
    }

    /// Whether a wake-up asking to try arrived since the last one was taken.
    pub(crate) fn take_try(&self) -> bool {
        self.waiter.try_now.swap(false, Ordering::AcqRel)
    }

    /// Subscribes the release channel for this queue if nobody did yet (after its first failed
    /// try); returns whether this call did.
    pub(crate) fn subscribe(&self) -> bool {
        let mut map = self.queues.map(&self.channel);
        let Some(q) = map.get_mut(&self.channel) else {
            return false;
        };
        if q.subscribed {
            return false;
        }
        q.subscribed = true;
        if let Some(hook) = &self.queues.hook {
            hook(&self.channel, true);
        }
        true
    }

    /// This head's failed try registered it in the key's queue of waiting processes.
    pub(crate) fn set_registered(&self) {
        self.waiter.registered.store(true, Ordering::Release);
    }

    /// Whether other waiters queue behind this one.
    pub(crate) fn others_wait(&self) -> bool {
        self.queues
            .map(&self.channel)
            .get(&self.channel)
            .is_some_and(|q| q.waiters.len() > 1)
    }

    /// The head took the lock until `lease_end`: leave the queue; the next waiter becomes head
    /// and waits for the release (or the lease end) without asking Redis in between — provided
    /// the lock was marked as awaited when taken (`marked`), so its release will announce itself.
    /// Otherwise the next head tries once, which fails and marks it.
    pub(crate) fn acquired(mut self, lease_end: Instant, marked: bool) {
        self.leave(Some((lease_end, marked)));
    }

    fn leave(&mut self, acquired: Option<(Instant, bool)>) {
        if self.done {
            return;
        }
        self.done = true;
        let mut map = self.queues.map(&self.channel);
        let Some(q) = map.get_mut(&self.channel) else {
            return;
        };
        let was_head = q
            .waiters
            .front()
            .is_some_and(|w| Arc::ptr_eq(w, &self.waiter));
        q.waiters.retain(|w| !Arc::ptr_eq(w, &self.waiter));
        if q.waiters.is_empty() {
            let subscribed = q.subscribed;
            map.remove(&self.channel);
            if let (true, Some(hook)) = (subscribed, &self.queues.hook) {
                hook(&self.channel, false);
            }
            return;
        }
        if was_head {
            if let Some((until, _)) = acquired {
                q.retry_at = Some(until);
            }
            if let Some(next) = q.waiters.front() {
                // After a local acquisition of a marked lock, the next head only re-arms its
                // timer. A head that gave up hands on the turn to try.
                // A queue not subscribed yet must first subscribe: the next head tries (and
                // subscribes after that failed try) rather than wait for a message it cannot hear.
                next.wake(!matches!(acquired, Some((_, true))) || !q.subscribed);
            }
        }
    }
}

/// One shard of the queue map: key (release channel) → its queue.
type Shard = HashMap<Arc<str>, KeyQueue>;

/// Shards of the queue map.
const SHARDS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map holds no invariant a panic could break halfway; keep going after a poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave(None);
    }
}
