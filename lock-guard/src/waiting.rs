//! Waiting for a lock inside one process: a FIFO of waiters per key, and the release notifications
//! that wake them.
//!
//! Only the head of a key's queue asks the backend; the others sleep until they become the head.
//! A release notification wakes the head alone. The queue also remembers when the current holder's
//! lease ends, so a head whose notification was lost still retries by then. The backend delivers
//! notifications ([`Waiters::wake_head`], [`Waiters::wake_all_heads`]) and, when it needs a
//! subscription for them, is told through [`Subscriptions`] which keys have waiters.
//!
//! The cross-process half of the hand-over (a release reserves the lock for the oldest waiting
//! process and names it in the notification) lives in the backend's scripts; this module only reads
//! the name: the head it names tries at once, other heads wait out the reservation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::error::LockError;

/// How long a released lock stays reserved for the oldest waiting process (`claim:<token>`):
/// long enough for a live process to hear of it and take it, short enough that a process that
/// died meanwhile delays the others only briefly.
pub(crate) const HANDOVER: std::time::Duration = std::time::Duration::from_millis(100);

/// How a backend that needs a subscription for release notifications (Redis pub/sub) hears which
/// keys have waiters. Both calls are made under the queue's lock, so the requests leave in the
/// order the queues changed.
pub(crate) trait Subscriptions: Send + Sync {
    /// A key's queue needs notifications (its head's try failed). The receiver answers once the
    /// subscription is confirmed, with the instant since which it has been in place: a release
    /// after that is not missed.
    fn subscribe(&self, channel: &Arc<str>) -> oneshot::Receiver<Result<Instant, LockError>>;
    /// The key's queue is gone: its subscription may go (after a grace period, at the backend's
    /// discretion).
    fn unsubscribe(&self, channel: &Arc<str>);
}

/// The waiters of one process (one manager), by key.
pub(crate) struct Waiters {
    /// Sharded by key, so that calls on different keys do not contend for one lock.
    shards: Box<[Mutex<Shard>]>,
    /// Per shard, the last few tokens that releases named while no local waiter held them: a
    /// caller that tried before joining its queue finds out whether a release named it meanwhile.
    unheard: Box<[Mutex<VecDeque<[u8; 32]>>]>,
    subscriptions: OnceLock<Box<dyn Subscriptions>>,
}

/// One shard of the queue map: key (release channel) → its queue.
type Shard = HashMap<Arc<str>, KeyQueue>;

/// Shards of the queue map.
const SHARDS: usize = 16;

/// Named tokens remembered per shard for callers not queued yet (see [`Waiters::was_named`]): a
/// caller joins its queue a moment after its try, so only the last few matter.
const UNHEARD: usize = 8;

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

impl Waiters {
    pub(crate) fn new() -> Self {
        Waiters {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            unheard: (0..SHARDS)
                .map(|_| Mutex::new(VecDeque::with_capacity(UNHEARD)))
                .collect(),
            subscriptions: OnceLock::new(),
        }
    }

    /// Installs the backend's subscription handler (once, when the manager is built).
    pub(crate) fn set_subscriptions(&self, subscriptions: Box<dyn Subscriptions>) {
        let _ = self.subscriptions.set(subscriptions);
    }

    /// The shard of `channel`.
    fn shard(channel: &str) -> usize {
        // FNV-1a: cheap, and only spreads keys over the shards.
        let h = channel.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % SHARDS as u64) as usize
    }

    /// The shard holding `channel`'s queue.
    fn map(&self, channel: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[Self::shard(channel)])
    }

    fn all(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards.iter().map(lock)
    }

    /// Whether a release named `token` on `channel` while it was not queued here (and forgets
    /// it): the caller tried before joining its queue, and must try again rather than wait.
    pub(crate) fn was_named(&self, channel: &str, token: &str) -> bool {
        let mut unheard = lock(&self.unheard[Self::shard(channel)]);
        match unheard
            .iter()
            .position(|t| t.as_slice() == token.as_bytes())
        {
            Some(i) => {
                unheard.remove(i);
                true
            }
            None => false,
        }
    }

    /// Whether anyone in this process waits for the lock behind `channel`.
    pub(crate) fn has_waiters(&self, channel: &str) -> bool {
        self.map(channel).contains_key(channel)
    }

    /// How many tasks of this process wait for the lock behind `channel` (for inspection).
    pub(crate) fn waiting_on(&self, channel: &str) -> usize {
        self.map(channel)
            .get(channel)
            .map_or(0, |q| q.waiters.len())
    }

    /// Whether `channel`'s queue exists and asked for notifications.
    pub(crate) fn wants_notifications(&self, channel: &str) -> bool {
        self.map(channel).get(channel).is_some_and(|q| q.subscribed)
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
                waiters: self.clone(),
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
        let mut map = self.map(channel);
        let q = map.get_mut(channel);
        let named_at = match (&q, to.is_empty()) {
            (Some(q), false) => q.waiters.iter().position(|w| w.token.as_slice() == to),
            _ => None,
        };
        if !to.is_empty() && named_at.is_none() && to.len() == 32 {
            // Perhaps a caller of this process between its try and its queue (or another
            // process's): remember it for a moment.
            let mut unheard = lock(&self.unheard[Self::shard(channel)]);
            if unheard.len() == UNHEARD {
                unheard.pop_front();
            }
            let mut t = [0u8; 32];
            t.copy_from_slice(to);
            unheard.push_back(t);
        }
        let Some(q) = q else {
            return;
        };
        // Named but not the head (callers arriving together each registered on their first try):
        // the lock is reserved for it, so it goes first.
        if let Some(i) = named_at.filter(|&i| i > 0)
            && let Some(named) = q.waiters.remove(i)
        {
            q.waiters.push_front(named);
        }
        if let Some(head) = q.waiters.front() {
            if to.is_empty() || named_at.is_some() || !head.registered.load(Ordering::Acquire) {
                // Named, or not registered yet (a head promoted after a local acquisition): try
                // now, which registers it, so it is not skipped by the next hand-overs.
                head.wake(true);
            } else {
                // Reserved for another process: if that one is gone, try when the reservation
                // ends. The head reads this when its timer next looks; no need to wake it now.
                q.retry_at = Some(Instant::now() + HANDOVER);
            }
        }
    }

    /// Notifications may have been missed (the subscriber reconnected): every head tries.
    pub(crate) fn wake_all_heads(&self) {
        for map in self.all() {
            for q in map.values() {
                if let Some(head) = q.waiters.front() {
                    head.wake(true);
                }
            }
        }
    }

    /// The channels whose queues asked for notifications.
    pub(crate) fn subscribed_channels(&self) -> Vec<Arc<str>> {
        self.all()
            .flat_map(|m| {
                m.iter()
                    .filter(|(_, q)| q.subscribed)
                    .map(|(ch, _)| ch.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of local waiters on all keys.
    pub(crate) fn len(&self) -> usize {
        self.all()
            .map(|m| m.values().map(|q| q.waiters.len()).sum::<usize>())
            .sum()
    }
}

/// A waiter's place in its key's queue; leaving is automatic on drop.
pub(crate) struct Place {
    waiters: Arc<Waiters>,
    channel: Arc<str>,
    waiter: Arc<Waiter>,
    done: bool,
}

impl Place {
    /// Whether this place is the head, and when the lock should be free at the latest.
    pub(crate) fn state(&self) -> (bool, Option<Instant>) {
        let map = self.waiters.map(&self.channel);
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
        if let Some(q) = self.waiters.map(&self.channel).get_mut(&self.channel) {
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

    /// Asks for notifications for this queue if nobody did yet (after its first failed try).
    /// `None` when the queue asked already; else `Some` of the confirmation to wait for (`None`
    /// inside when the backend needs no subscription), after which the head tries once more, so a
    /// release in between is not missed.
    #[allow(clippy::type_complexity)]
    pub(crate) fn subscribe(
        &self,
    ) -> Option<Option<oneshot::Receiver<Result<Instant, LockError>>>> {
        let mut map = self.waiters.map(&self.channel);
        let q = map.get_mut(&self.channel)?;
        if q.subscribed {
            return None;
        }
        q.subscribed = true;
        Some(
            self.waiters
                .subscriptions
                .get()
                .map(|s| s.subscribe(&self.channel)),
        )
    }

    /// This head's failed try registered it in the key's queue of waiting processes.
    pub(crate) fn set_registered(&self) {
        self.waiter.registered.store(true, Ordering::Release);
    }

    /// Whether other waiters queue behind this one.
    pub(crate) fn others_wait(&self) -> bool {
        self.waiters
            .map(&self.channel)
            .get(&self.channel)
            .is_some_and(|q| q.waiters.len() > 1)
    }

    /// The head took the lock until `lease_end`: leave the queue; the next waiter becomes head
    /// and waits for the release (or the lease end) without asking the backend in between —
    /// provided the lock was marked as awaited when taken (`marked`), so its release will announce
    /// itself. Otherwise the next head tries once, which fails and marks it.
    pub(crate) fn acquired(mut self, lease_end: Instant, marked: bool) {
        self.leave(Some((lease_end, marked)));
    }

    fn leave(&mut self, acquired: Option<(Instant, bool)>) {
        if self.done {
            return;
        }
        self.done = true;
        let mut map = self.waiters.map(&self.channel);
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
            if let (true, Some(subscriptions)) = (subscribed, self.waiters.subscriptions.get()) {
                subscriptions.unsubscribe(&self.channel);
            }
            return;
        }
        if was_head {
            if let Some((until, _)) = acquired {
                q.retry_at = Some(until);
            }
            if let Some(next) = q.waiters.front() {
                // After a local acquisition of a marked lock, the next head only re-arms its
                // timer. A head that gave up hands on the turn to try. A queue not subscribed yet
                // must first subscribe: the next head tries (and subscribes after that failed try)
                // rather than wait for a message it cannot hear.
                next.wake(!matches!(acquired, Some((_, true))) || !q.subscribed);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map holds no invariant a panic could break halfway; keep going after a poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave(None);
    }
}
