//! Waiting for a lock inside one process: a FIFO of waiters per key, and the release notifications
//! that wake them.
//!
//! Only the head of a key's queue asks the backend; the others sleep until they become the head.
//! A caller joins the queue before its first try, so an uncontended caller is the head of an empty
//! queue and tries at once. The backend delivers notifications ([`Waiters::wake_head`],
//! [`Waiters::wake_all_heads`]) and, when it needs a subscription for them, is told through
//! [`Subscriptions`] which keys have waiters.
//!
//! The cross-process half of the hand-over lives in the backend's scripts: a head whose try fails
//! registers in the key's queue of waiting processes (in order of arrival at the server); a release
//! of an awaited lock reserves it for the oldest registration (for [`HANDOVER`]) and names that
//! token — and the one after it — in its message. This module reads the names. Its invariants:
//!
//! - Only heads try, so a process has at most one registration per key at a time (its head's; for
//!   a moment two, while a head that gave up takes its own out).
//! - A head is marked `registered` after a failed try, which registered it. Its registration is
//!   gone only when a release named it (or the head acquired, or gave up): a release is heard by
//!   every subscribed process, and a head is in its queue from before its first try, so the name
//!   reaches it (a reconnected subscriber, which may have missed names, wakes every head).
//! - Named: the head tries at once (the reservation is its). Named as the one after: it watches the
//!   reservation, trying once when it ends, in case the named process is gone. Not named and
//!   registered: nothing to do, its turn comes by name; its last try's view of the holder's lease
//!   end bounds how long a lost name can hold it up. Not registered (a head promoted after a local
//!   acquisition): it tries, which registers it. So a hand-over costs a constant number of scripts,
//!   however many processes wait.

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
    subscriptions: OnceLock<Box<dyn Subscriptions>>,
}

/// One shard of the queue map: key (release channel) → its queue.
type Shard = HashMap<Arc<str>, KeyQueue>;

/// Shards of the queue map.
const SHARDS: usize = 16;

struct KeyQueue {
    waiters: VecDeque<Arc<Waiter>>,
    /// Whether the release channel was subscribed for this queue (on its first failed try).
    subscribed: bool,
    /// Whether the last release message named a process other than this one (so other processes
    /// wait for the key too): then a head promoted after a local acquisition registers at once,
    /// keeping this process's place in the turns; alone, it need not (the release frees the lock).
    contended: bool,
    /// When the head tries unless woken before: the holder's lease end as the head's last try saw
    /// it, the end of a reservation it watches, or (after a local acquisition) that holder's lease
    /// end.
    retry_at: Option<Instant>,
}

struct Waiter {
    /// The owner token this waiter will take the lock with: a release that hands the lock to
    /// another process names that process's token, and this head then need not ask.
    /// It changes only when the call's try was given back (a late grant) and the next try goes out
    /// under a fresh owner token ([`Place::set_token`]).
    token: Mutex<[u8; 32]>,
    /// Whether this waiter, as head, has registered in the key's queue of waiting processes.
    registered: AtomicBool,
    /// Whether this waiter counts as waiting ([`Waiters::len`]): it joined behind others, or its
    /// first try failed. A caller that is still in its first try (an uncontended acquisition, as a
    /// rule) is not waiting yet.
    waiting: AtomicBool,
    /// Whether this waiter asked for the queue's subscription and has not seen it confirmed: if it
    /// leaves meanwhile, the next head must ask (and wait for the confirmation) itself.
    confirming: AtomicBool,
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

    /// Joins the queue of `channel` at the back (at the head if the queue was empty).
    pub(crate) fn join(self: &Arc<Self>, channel: &Arc<str>, token: &str) -> Place {
        let waiter = Arc::new(Waiter {
            token: Mutex::new(padded(token)),
            registered: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            confirming: AtomicBool::new(false),
            notify: Notify::new(),
            try_now: AtomicBool::new(false),
        });
        let mut map = self.map(channel);
        waiter
            .waiting
            .store(map.contains_key(channel), Ordering::Relaxed);
        map.entry(channel.clone())
            .or_insert_with(|| KeyQueue {
                waiters: VecDeque::with_capacity(4),
                subscribed: false,
                contended: false,
                retry_at: None,
            })
            .waiters
            .push_back(waiter.clone());
        drop(map);
        Place {
            waiters: self.clone(),
            channel: channel.clone(),
            waiter,
            done: false,
        }
    }

    /// A release was announced on `channel`. `message` is empty when the release freed the lock,
    /// else the token it reserved the lock for, followed by a space and the token registered after
    /// it, if any (see the module's docs for what each head does).
    pub(crate) fn wake_head(&self, channel: &str, message: &[u8]) {
        let mut parts = message.split(|&b| b == b' ');
        let to = parts.next().unwrap_or_default();
        let after = parts.next().unwrap_or_default();
        let mut map = self.map(channel);
        let Some(q) = map.get_mut(channel) else {
            return;
        };
        let Some(head) = q.waiters.front() else {
            return;
        };
        let ours = *lock(&head.token);
        let ours = ours.as_slice();
        q.contended = (!to.is_empty() && to != ours) || (!after.is_empty() && after != ours);
        if to.is_empty() || to == ours || !head.registered.load(Ordering::Acquire) {
            // Freed, or reserved for this head, or a head that has not registered yet (its try
            // registers it, so that the next hand-overs do not skip it): try now.
            head.wake(true);
        } else if after == ours {
            // Next in line: if the process the lock is reserved for is gone, the reservation
            // lapses unclaimed and nobody would be told. Look once when it ends.
            q.retry_at = Some(Instant::now() + HANDOVER);
            head.wake(false);
        }
        // Otherwise reserved for another process while this head is registered further back:
        // nothing to do until it is named.
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

    /// Number of local waiters on all keys (see `Waiter::waiting`).
    pub(crate) fn len(&self) -> usize {
        self.all()
            .map(|m| {
                m.values()
                    .flat_map(|q| &q.waiters)
                    .filter(|w| w.waiting.load(Ordering::Relaxed))
                    .count()
            })
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

    /// The call's next try goes out under a fresh owner token (its last grant was given back): a
    /// release must find this waiter by the new one.
    pub(crate) fn set_token(&self, token: &str) {
        *lock(&self.waiter.token) = padded(token);
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
        let confirmation = self
            .waiters
            .subscriptions
            .get()
            .map(|s| s.subscribe(&self.channel));
        self.waiter
            .confirming
            .store(confirmation.is_some(), Ordering::Relaxed);
        Some(confirmation)
    }

    /// The confirmation asked for with [`subscribe`](Self::subscribe) came (or will not).
    pub(crate) fn confirmed(&self) {
        self.waiter.confirming.store(false, Ordering::Relaxed);
    }

    /// This head's failed try registered it in the key's queue of waiting processes.
    pub(crate) fn set_registered(&self) {
        self.waiter.waiting.store(true, Ordering::Relaxed);
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
        if self.waiter.confirming.load(Ordering::Relaxed) {
            // Gone before the subscription it asked for was confirmed: a release before that
            // would go unheard, so the next head asks again (it is told at once if the
            // subscription is in place by then) and tries once more after that.
            q.subscribed = false;
        }
        if was_head {
            if let Some((until, _)) = acquired {
                q.retry_at = Some(until);
            }
            if let Some(next) = q.waiters.front() {
                // After a local acquisition of a marked lock, the next head only re-arms its
                // timer: the release will wake it (and its try then registers it). Unless other
                // processes wait too: then it tries (and registers) now, so that its process's
                // place in the turns does not hang on how soon it hears that release. A head that
                // gave up hands on the turn to try. A queue not subscribed yet must first
                // subscribe: the next head tries (and subscribes after that failed try) rather
                // than wait for a message it cannot hear.
                next.wake(!matches!(acquired, Some((_, true))) || !q.subscribed || q.contended);
            }
        }
    }
}

/// Owner tokens are 32 hex digits; a shorter one is zero-padded.
fn padded(token: &str) -> [u8; 32] {
    let mut t = [0u8; 32];
    let n = token.len().min(32);
    t[..n].copy_from_slice(&token.as_bytes()[..n]);
    t
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
