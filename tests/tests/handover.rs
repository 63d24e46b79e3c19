//! Fair hand-over between processes: the head waiter of each process registers in
//! `<key>:queue` when its try fails; a release of an awaited lock reserves it for the oldest
//! registered process (`claim:<token>` for 100 ms) and names that token in its message, so
//! processes take turns instead of the releasing one winning the race again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisServer, eventually};
use redis::aio::MultiplexedConnection;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout};

/// Holders take the lock with this lease: if the lease were what freed it, the tests would see it.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// How long a release reserves the lock for the process it names (the runtime's `HANDOVER`).
const RESERVATION: Duration = Duration::from_millis(100);
/// The lifetime a registration gives the `:queue` key.
const QUEUE_TTL_MS: i64 = 60_000;

/// The names the runtime derives from a lock key.
struct Names {
    lock: String,
    queue: String,
    channel: String,
}

impl Names {
    fn of(locks: &LockManager, key: &LockKey) -> Names {
        let lock = locks.redis_key(key);
        Names {
            queue: format!("{lock}:queue"),
            channel: format!("{lock}:released"),
            lock,
        }
    }
}

async fn get(con: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(con).await.unwrap()
}

async fn zcard(con: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("ZCARD").arg(key).query_async(con).await.unwrap()
}

async fn queued(con: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(con)
        .await
        .unwrap()
}

async fn exists(con: &mut MultiplexedConnection, key: &str) -> bool {
    let n: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(con)
        .await
        .unwrap();
    n == 1
}

async fn pttl(con: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(con).await.unwrap()
}

/// `PUBLISH` calls the server has run so far.
async fn publishes(server: &RedisServer) -> u64 {
    server
        .command_calls()
        .await
        .get("publish")
        .copied()
        .unwrap_or(0)
}

/// Spawns a task that waits up to `wait` for `key` on `locks`; it returns the outcome (the guard
/// released at once) and when the wait ended.
fn spawn_waiter(
    locks: &LockManager,
    key: &LockKey,
    wait: Duration,
) -> JoinHandle<(Result<u64, LockError>, Instant)> {
    let (locks, key) = (locks.clone(), key.clone());
    tokio::spawn(async move {
        let result = locks.lock(&key, LockOptions::new().wait(wait)).await;
        let at = Instant::now();
        let result = match result {
            Ok(guard) => {
                let fence = guard.fencing_token();
                assert!(guard.release().await.unwrap());
                Ok(fence)
            }
            Err(e) => Err(e),
        };
        (result, at)
    })
}

/// What the critical sections of [`sections`] share.
#[derive(Default)]
struct Shared {
    /// Sections handed out so far (a task takes one before it asks for the lock).
    tickets: AtomicUsize,
    /// Incremented by a non-atomic read, hold, write: an overlap loses an update.
    counter: AtomicU64,
    /// Set while somebody is inside.
    inside: AtomicBool,
    /// (manager, fencing token, wait for the lock) of every section, in the order they ran.
    log: Mutex<Vec<(usize, u64, Duration)>>,
}

const SECTIONS: usize = 150;
const HOLD: Duration = Duration::from_millis(2);
const THINK: Duration = Duration::from_millis(1);

/// One task of manager `me`: acquire → hold → release → think, until the sections run out.
async fn sections(me: usize, locks: LockManager, key: LockKey, shared: Arc<Shared>) {
    let options = LockOptions::new()
        .lease(Duration::from_secs(10))
        .wait(Duration::from_secs(30));
    while shared.tickets.fetch_add(1, Ordering::SeqCst) < SECTIONS {
        let asked = Instant::now();
        let guard = locks
            .lock(&key, options)
            .await
            .expect("every task gets the lock within its wait");
        let waited = asked.elapsed();
        assert!(
            !shared.inside.swap(true, Ordering::SeqCst),
            "manager {me} entered while another holder was inside"
        );
        let read = shared.counter.load(Ordering::SeqCst);
        tokio::time::sleep(HOLD).await;
        shared.counter.store(read + 1, Ordering::SeqCst);
        shared
            .log
            .lock()
            .unwrap()
            .push((me, guard.fencing_token(), waited));
        shared.inside.store(false, Ordering::SeqCst);
        assert!(
            guard.release().await.unwrap(),
            "manager {me}: the lock was no longer ours at the release"
        );
        tokio::time::sleep(THINK).await;
    }
}

/// `managers` instances with `tasks` looping tasks each share one key for [`SECTIONS`] sections:
/// the count is exact, no two sections overlap, fencing tokens rise in section order, every
/// instance gets at least `min_share` of the mean share, and the releasing instance rarely takes
/// the next section itself.
async fn fair_turns(managers: usize, tasks: usize, min_share: f64) {
    let server = RedisServer::start();
    let mut instances = Vec::with_capacity(managers);
    for _ in 0..managers {
        instances.push(server.manager().await);
    }
    let key = LockKey::new("handover").part(format!("fair-{managers}x{tasks}"));
    let names = Names::of(&instances[0], &key);
    let shared = Arc::new(Shared::default());

    let start = Instant::now();
    let mut set = JoinSet::new();
    for (me, locks) in instances.iter().enumerate() {
        for _ in 0..tasks {
            set.spawn(sections(me, locks.clone(), key.clone(), shared.clone()));
        }
    }
    timeout(Duration::from_secs(120), async {
        while let Some(joined) = set.join_next().await {
            joined.expect("a section task panicked");
        }
    })
    .await
    .expect("150 short sections finish well within 2 minutes");
    let elapsed = start.elapsed();

    assert_eq!(
        shared.counter.load(Ordering::SeqCst),
        SECTIONS as u64,
        "lost updates: two sections overlapped"
    );
    let log = shared.log.lock().unwrap().clone();
    assert_eq!(log.len(), SECTIONS);
    for pair in log.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "fencing tokens out of section order: {pair:?}"
        );
    }

    let mut share = vec![0usize; managers];
    for &(me, _, _) in &log {
        share[me] += 1;
    }
    let repeats = log.windows(2).filter(|p| p[0].0 == p[1].0).count();
    let max_wait = log.iter().map(|&(_, _, w)| w).max().unwrap_or_default();
    eprintln!(
        "{managers} managers x {tasks} task(s): {SECTIONS} sections in {elapsed:?}; share per manager {share:?}; \
         same manager twice in a row {repeats}/{}; longest wait {max_wait:?}",
        SECTIONS - 1
    );
    let mean = SECTIONS as f64 / managers as f64;
    for (me, &n) in share.iter().enumerate() {
        assert!(
            n as f64 >= min_share * mean,
            "manager {me} got {n} of {SECTIONS} sections (mean {mean:.1}): shares {share:?}"
        );
    }

    assert!(
        repeats <= SECTIONS / 5,
        "the releasing instance took the next section itself {repeats} times in {SECTIONS}"
    );

    // Nobody waits any more: the lock is free and nobody is left registered.
    let mut con = server.connection().await;
    assert_eq!(get(&mut con, &names.lock).await, None);
    assert_eq!(zcard(&mut con, &names.queue).await, 0, "registrations left");
}

/// Four instances, one task each, take turns: each gets a fair share. (Measured: 37 or 38 of 150
/// each with the hand-over; before it, the smallest share was 10 to 26 in 8 runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_take_fair_turns() {
    fair_turns(4, 1, 0.8).await;
}

/// The same with two tasks per instance, so that a releasing instance always has a local waiter
/// ready to take the lock again. (Measured: smallest share 32 to 36, at most 20 repeats, with the
/// hand-over; before it, smallest share 13 to 27 and 61 to 82 repeats in 8 runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_with_two_tasks_each_take_fair_turns() {
    fair_turns(4, 2, 0.7).await;
}

/// A registered process that vanished (its head never comes to take the lock) is handed the lock
/// once, and delays the next waiter by the reservation only — not by the holder's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_claimant_delays_others_by_the_reservation_only() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let marker = server.manager().await;
    let waiter = server.manager().await;
    let key = LockKey::new("handover").part("vanished");
    let names = Names::of(&holder, &key);
    let mut con = server.connection().await;

    let held = holder
        .lock(&key, LockOptions::new().lease(LONG_LEASE))
        .await
        .unwrap();
    // A head that registered long ago, in a process that is gone.
    let added: u64 = redis::cmd("ZADD")
        .arg(&names.queue)
        .arg(1)
        .arg("fake-token")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(added, 1);
    // A failed try marks the lock as awaited.
    let refused = marker
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(
        refused.as_ref().is_err_and(LockError::is_not_acquired),
        "{refused:?}"
    );
    let value = get(&mut con, &names.lock).await.expect("the lock is held");
    assert!(value.ends_with('+'), "a failed try marks the lock: {value}");

    let mut observer = server.client().get_async_pubsub().await.unwrap();
    observer.subscribe(&names.channel).await.unwrap();

    let task = spawn_waiter(&waiter, &key, Duration::from_secs(20));
    eventually(
        Duration::from_secs(5),
        "the real waiter registered behind the vanished one",
        || async { queued(&mut con.clone(), &names.queue).await.len() == 2 },
    )
    .await;
    assert_eq!(
        queued(&mut con, &names.queue).await[0],
        "fake-token",
        "the oldest registration comes first"
    );

    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    // Best effort: the reservation is visible unless the waiter already took the lock over.
    let during = get(&mut con, &names.lock).await;

    let message = timeout(Duration::from_secs(2), observer.on_message().next())
        .await
        .expect("the release of an awaited lock publishes")
        .expect("the observer's subscription is open");
    let named: String = message.get_payload().unwrap();
    let mut named = named.split(' ');
    assert_eq!(
        named.next(),
        Some("fake-token"),
        "the release names the oldest registration"
    );
    assert!(
        named.next().is_some_and(|t| t.len() == 32),
        "the release names the registration after it, which watches the reservation"
    );

    let (result, acquired_at) = timeout(Duration::from_secs(10), task)
        .await
        .expect("the waiter is not stranded")
        .unwrap();
    result.expect("the waiter gets the lock");
    let delay = acquired_at - released_at;
    eprintln!(
        "vanished claimant: value right after the release {during:?}; waiter acquired {delay:?} after the release"
    );
    assert!(
        during
            .as_deref()
            .is_none_or(|v| !v.starts_with("claim:") || v == "claim:fake-token"),
        "the reservation is for the vanished claimant: {during:?}"
    );
    // The lock was reserved for the vanished claimant: nobody else took it before that ended.
    assert!(
        delay >= RESERVATION - Duration::from_millis(10),
        "the waiter took the lock after {delay:?}, inside the {RESERVATION:?} reservation"
    );
    assert!(
        delay < Duration::from_secs(1),
        "the waiter got the lock only {delay:?} after the release"
    );
    // The vanished registration was consumed by the hand-over, the waiter's by its acquisition.
    assert_eq!(zcard(&mut con, &names.queue).await, 0);
    assert_eq!(
        get(&mut con, &names.lock).await,
        None,
        "the waiter released"
    );
}

/// A head registered behind a long holder that gives up at the end of its wait takes its entry
/// out of the queue; the entry's key has a lifetime meanwhile; the next release hands the lock to
/// nobody that left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_the_queue() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let waiter = server.manager().await;
    let key = LockKey::new("handover").part("gives-up");
    let names = Names::of(&holder, &key);
    let mut con = server.connection().await;
    let held = holder
        .lock(&key, LockOptions::new().lease(LONG_LEASE))
        .await
        .unwrap();

    // Long enough that the registration is seen even on a busy machine.
    let wait = Duration::from_millis(1000);
    let task = spawn_waiter(&waiter, &key, wait);
    eventually(wait, "the waiter registered in the queue", || async {
        zcard(&mut con.clone(), &names.queue).await == 1
    })
    .await;
    let ttl = pttl(&mut con, &names.queue).await;
    assert!(
        ttl > 0 && ttl <= QUEUE_TTL_MS,
        "the queue key has a lifetime: PTTL {ttl}"
    );

    let (result, _) = task.await.unwrap();
    assert!(
        result.as_ref().is_err_and(LockError::is_not_acquired),
        "{result:?}"
    );
    let took = eventually(
        Duration::from_secs(2),
        "the waiter's entry left the queue",
        || async { !exists(&mut con.clone(), &names.queue).await },
    )
    .await;
    eprintln!("gave-up waiter's entry gone {took:?} after its NotAcquired");

    // Nobody is registered: the (marked) release frees the lock instead of reserving it.
    assert!(held.release().await.unwrap());
    assert_eq!(get(&mut con, &names.lock).await, None);
}

/// A registered waiter whose task is cancelled takes its entry out of the queue too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiter_leaves_the_queue() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let waiter = server.manager().await;
    let key = LockKey::new("handover").part("cancelled");
    let names = Names::of(&holder, &key);
    let mut con = server.connection().await;
    let held = holder
        .lock(&key, LockOptions::new().lease(LONG_LEASE))
        .await
        .unwrap();

    let task = spawn_waiter(&waiter, &key, Duration::from_secs(20));
    eventually(
        Duration::from_secs(5),
        "the waiter registered in the queue",
        || async { zcard(&mut con.clone(), &names.queue).await == 1 },
    )
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually(
        Duration::from_secs(2),
        "the cancelled waiter's entry left the queue",
        || async { !exists(&mut con.clone(), &names.queue).await },
    )
    .await;
    assert_eq!(waiter.metrics().waiters, 0);

    assert!(held.release().await.unwrap());
    assert_eq!(
        get(&mut con, &names.lock).await,
        None,
        "no reservation for a waiter that left"
    );
}

/// A lock nobody waited for: its releases publish nothing and nothing registers. A try-once
/// caller that fails marks the lock (one message at the release) but does not register either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_release_publishes_nothing() {
    let server = RedisServer::start();
    let locks = server.manager().await;
    let other = server.manager().await;
    let key = LockKey::new("handover").part("uncontended");
    let names = Names::of(&locks, &key);
    let mut con = server.connection().await;

    let before = publishes(&server).await;
    for _ in 0..20 {
        let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
        let value = get(&mut con, &names.lock).await.expect("the lock is held");
        assert!(
            !value.ends_with('+'),
            "nobody waited, yet the lock is marked: {value}"
        );
        assert!(guard.release().await.unwrap());
        assert!(!exists(&mut con, &names.lock).await, "released");
    }
    assert_eq!(
        publishes(&server).await,
        before,
        "uncontended releases published"
    );
    assert!(!exists(&mut con, &names.queue).await, "a queue appeared");

    // The counter does see a release that somebody waited for.
    let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
    let refused = other
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(
        refused.as_ref().is_err_and(LockError::is_not_acquired),
        "{refused:?}"
    );
    assert!(guard.release().await.unwrap());
    assert_eq!(publishes(&server).await, before + 1);
    assert!(
        !exists(&mut con, &names.queue).await,
        "a try-once caller registered"
    );
    assert!(!exists(&mut con, &names.lock).await, "released");
}
