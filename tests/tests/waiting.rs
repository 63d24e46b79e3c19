//! Waiting: bounded by `wait`, `0s` tries once, no polling, arrival order within a process,
//! and a lost subscriber connection never strands a waiter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisServer, backend_tests, eventually};
use tokio::task::JoinSet;
use tokio::time::Instant;

const LONG_LEASE: Duration = Duration::from_secs(30);

fn held_long() -> LockOptions {
    LockOptions::new().lease(LONG_LEASE)
}

/// Waits until `locks` has `n` tasks queued for a lock.
async fn until_waiters(locks: &LockManager, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} waiters queued"),
        || async { locks.metrics().waiters == n },
    )
    .await;
}

/// Script calls (`EVAL`/`EVALSHA`) the server has run so far.
async fn script_calls(server: &RedisServer) -> u64 {
    let calls = server.command_calls().await;
    calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0)
}

backend_tests! {
    /// A held lock and `wait = 700ms`: `NotAcquired` after the wait, not before, not much after.
    async fn not_acquired_after_wait(backend) {
        let holder = backend.manager().await;
        let waiter = backend.manager().await;
        let key = LockKey::new("waiting").part("bound");
        let _held = holder.lock(&key, held_long()).await.unwrap();

        let wait = Duration::from_millis(700);
        let start = Instant::now();
        let result = waiter.lock(&key, LockOptions::new().wait(wait)).await;
        let elapsed = start.elapsed();
        match result {
            Err(LockError::NotAcquired { key: k, waited }) => {
                assert_eq!(k, waiter.redis_key(&key));
                assert!(waited >= wait, "reported waited {waited:?} < wait {wait:?}");
            }
            other => panic!("expected NotAcquired, got {other:?}"),
        }
        assert!(elapsed >= wait, "gave up after {elapsed:?}, before the wait of {wait:?}");
        assert!(elapsed < wait + Duration::from_secs(1), "gave up only after {elapsed:?}");
    }

    /// The closure form gives the same error, and the body never runs.
    async fn run_not_acquired_skips_the_body(backend) {
        let holder = backend.manager().await;
        let waiter = backend.manager().await;
        let key = LockKey::new("waiting").part("run-bound");
        let _held = holder.lock(&key, held_long()).await.unwrap();
        let result: Result<(), LockError> = waiter
            .run(&key, LockOptions::new().wait(Duration::from_millis(200)), async {
                panic!("the body ran without the lock")
            })
            .await;
        assert!(result.as_ref().is_err_and(LockError::is_not_acquired), "{result:?}");
    }

    /// `wait = 0s` on a held lock: an immediate `NotAcquired`.
    async fn wait_zero_gives_up_at_once(backend) {
        let holder = backend.manager().await;
        let waiter = backend.manager().await;
        let key = LockKey::new("waiting").part("zero");
        let _held = holder.lock(&key, held_long()).await.unwrap();
        let start = Instant::now();
        let result = waiter.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(result.as_ref().is_err_and(LockError::is_not_acquired), "{result:?}");
        assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
        assert_eq!(waiter.metrics().waiters, 0, "a try-once call never queues");
    }

    /// Waiters in one process take the lock in the order they arrived.
    async fn local_waiters_take_turns_in_arrival_order(backend) {
        let holder = backend.manager().await;
        let waiters = backend.manager().await;
        let key = LockKey::new("waiting").part("order");
        let held = holder.lock(&key, held_long()).await.unwrap();

        let order = Arc::new(Mutex::new(Vec::new()));
        let mut set = JoinSet::new();
        for i in 0..6 {
            let (locks, key, order) = (waiters.clone(), key.clone(), order.clone());
            set.spawn(async move {
                locks
                    .run(&key, LockOptions::new().wait(Duration::from_secs(20)), async {
                        order.lock().unwrap().push(i);
                        Ok::<_, LockError>(())
                    })
                    .await
            });
            // The next one arrives only once this one has its place.
            until_waiters(&waiters, i + 1).await;
        }
        assert!(held.release().await.unwrap());
        while let Some(joined) = set.join_next().await {
            joined.unwrap().expect("every waiter gets its turn");
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    }

    /// A release hands the lock to a waiter at once, not at the holder's lease end.
    async fn release_wakes_a_waiter_promptly(backend) {
        let holder = backend.manager().await;
        let waiter = backend.manager().await;
        let key = LockKey::new("waiting").part("wake");
        let held = holder.lock(&key, held_long()).await.unwrap();
        let task = tokio::spawn({
            let (waiter, key) = (waiter.clone(), key.clone());
            async move {
                let guard = waiter.lock(&key, LockOptions::new().wait(Duration::from_secs(20))).await;
                (guard, Instant::now())
            }
        });
        until_waiters(&waiter, 1).await;
        let released_at = Instant::now();
        assert!(held.release().await.unwrap());
        let (guard, acquired_at) = task.await.unwrap();
        drop(guard.expect("the waiter gets the lock"));
        let latency = acquired_at - released_at;
        eprintln!("{}: release -> waiter acquired in {latency:?}", backend.name());
        assert!(latency < Duration::from_secs(1), "woken only after {latency:?}");
    }

    /// A lock that frees without a release message (deleted, as an expiry would): the waiter
    /// retries when the holder's remaining lease runs out, not at the end of its own wait.
    async fn waiter_without_a_release_message_retries_at_the_lease_end(backend) {
        let holder = backend.manager().await;
        let waiter = backend.manager().await;
        let key = LockKey::new("waiting").part("silent-release");
        let lease = Duration::from_millis(1500);
        let held_at = Instant::now();
        let held = holder.lock(&key, LockOptions::new().lease(lease)).await.unwrap();
        let task = tokio::spawn({
            let (waiter, key) = (waiter.clone(), key.clone());
            async move {
                let options = LockOptions::new().wait(Duration::from_secs(10));
                let guard = waiter.lock(&key, options).await;
                (guard.map(drop), Instant::now())
            }
        });
        until_waiters(&waiter, 1).await;
        backend.delete_lock(&holder, &key).await;
        let (guard, acquired_at) = task.await.unwrap();
        guard.expect("the waiter gets the lock");
        let after = acquired_at - held_at;
        eprintln!("{}: silent release: waiter acquired {after:?} after the holder", backend.name());
        assert!(after < lease + Duration::from_millis(500), "acquired only {after:?} after the holder");
        assert!(!held.release().await.unwrap(), "the deleted lock is no longer the holder's");
    }
}

/// `wait = 0s` is exactly one script call, on the manager's count and on the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_zero_tries_exactly_once() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let waiter = server.manager().await;
    let key = LockKey::new("waiting").part("once");
    let _held = holder.lock(&key, held_long()).await.unwrap();
    // Loads nothing new: the holder's acquisition already cached the script on the server.

    let (manager_before, server_before) = (waiter.metrics().commands, script_calls(&server).await);
    let result = waiter
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(
        result.as_ref().is_err_and(LockError::is_not_acquired),
        "{result:?}"
    );
    assert_eq!(
        waiter.metrics().commands - manager_before,
        1,
        "manager metrics"
    );
    assert_eq!(
        script_calls(&server).await - server_before,
        1,
        "INFO commandstats"
    );

    // And a free lock with `wait = 0s`: taken in one call too.
    let free = LockKey::new("waiting").part("once-free");
    let before = script_calls(&server).await;
    let guard = waiter
        .lock(&free, LockOptions::new().wait(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(script_calls(&server).await - before, 1);
    guard.release().await.unwrap();
}

/// 20 waiters (10 on each of two instances) behind a holder that keeps the lock 1.5 s: nothing
/// reaches Redis while they wait, and each costs a small fixed number of commands in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_do_not_poll() {
    const WAITERS: usize = 20;
    let server = RedisServer::start();
    let holder = server.manager().await;
    let instances = [server.manager().await, server.manager().await];
    let key = LockKey::new("waiting").part("no-polling");

    // What one round of inspection costs the server's counter (connection set-up and INFO).
    let overhead = {
        let a = server.total_commands().await;
        server.total_commands().await - a
    };
    let commands = || instances.iter().map(|m| m.metrics().commands).sum::<u64>();
    let subscriber_commands = || {
        instances
            .iter()
            .map(|m| m.metrics().subscriber_commands)
            .sum::<u64>()
    };

    let held = holder.lock(&key, held_long()).await.unwrap();
    let held_at = Instant::now();
    let (server_start, manager_start) = (server.total_commands().await, commands());
    let calls_start = server.command_calls().await;

    let mut set = JoinSet::new();
    for i in 0..WAITERS {
        let (locks, key) = (instances[i % 2].clone(), key.clone());
        set.spawn(async move {
            locks
                .run(
                    &key,
                    LockOptions::new().wait(Duration::from_secs(20)),
                    async { Ok::<_, LockError>(Instant::now()) },
                )
                .await
        });
    }
    for locks in &instances {
        until_waiters(locks, WAITERS / 2).await;
    }

    // The quiet part: everyone queued, the holder still holds.
    let (server_queued, manager_queued) = (server.total_commands().await, commands());
    tokio::time::sleep_until(held_at + Duration::from_millis(1500)).await;
    let (server_quiet, manager_quiet) = (server.total_commands().await, commands());
    assert_eq!(
        manager_quiet - manager_queued,
        0,
        "the waiters sent commands while the lock was held"
    );
    assert_eq!(
        server_quiet - server_queued - overhead,
        0,
        "Redis received commands while the lock was held"
    );

    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let mut last = released_at;
    while let Some(joined) = set.join_next().await {
        last = last.max(joined.unwrap().expect("every waiter gets the lock"));
    }
    let calls_end = server.command_calls().await;
    let delta = |name: &str| {
        calls_end.get(name).copied().unwrap_or(0) - calls_start.get(name).copied().unwrap_or(0)
    };
    let script_calls = delta("evalsha") + delta("eval");
    // INFO counts the commands a script runs inside it too (SET, GET, TIME, PTTL, PUBLISH, …).
    let server_total = server.total_commands().await - server_start - 3 * overhead;
    let manager_total = commands() - manager_start;
    let per_waiter = |n: u64| n as f64 / WAITERS as f64;
    eprintln!(
        "no-polling: {WAITERS} waiters: {manager_total} manager commands ({:.1}/waiter), \
         {script_calls} script calls on the server ({:.1}/waiter), \
         {server_total} server commands counting those inside scripts ({:.1}/waiter), \
         {} subscriber commands; all served {:?} after the release",
        per_waiter(manager_total),
        per_waiter(script_calls),
        per_waiter(server_total),
        subscriber_commands(),
        last - released_at
    );
    // Each waiter: a try on arrival (queue heads only), its acquisition, its release, and a lost
    // race when a release wakes the head of each instance. Polling every 100 ms would have cost
    // 15 calls per waiter during the hold alone.
    let bound = 6 * WAITERS as u64;
    assert!(manager_total <= bound, "{manager_total} manager commands");
    assert!(script_calls <= bound, "{script_calls} script calls");
    assert!(server_total <= 4 * bound, "{server_total} server commands");
    assert!(
        subscriber_commands() <= 8,
        "{} subscriber commands",
        subscriber_commands()
    );
    assert!(
        last - released_at < Duration::from_secs(3),
        "hand-offs took {:?}",
        last - released_at
    );
}

/// Sixteen waiters on one instance, queued one after the other: each release wakes only the head
/// of the local queue, so the hand-offs cost an acquisition and a release per waiter — not a
/// stampede of failed tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_one_local_waiter_not_all() {
    const WAITERS: u64 = 16;
    let server = RedisServer::start();
    let holder = server.manager().await;
    let waiters = server.manager().await;
    let key = LockKey::new("waiting").part("one-woken");
    let failed_tries = || async {
        let calls = server.command_calls().await;
        calls.get("pttl").copied().unwrap_or(0)
    };
    let held = holder.lock(&key, held_long()).await.unwrap();
    let (arrival_commands, arrival_failed) = (waiters.metrics().commands, failed_tries().await);
    let mut set = JoinSet::new();
    for i in 0..WAITERS {
        let (locks, key) = (waiters.clone(), key.clone());
        set.spawn(async move {
            let options = LockOptions::new().wait(Duration::from_secs(20));
            locks
                .run(&key, options, async { Ok::<_, LockError>(()) })
                .await
        });
        until_waiters(&waiters, i as usize + 1).await;
    }
    let (handoff_commands, handoff_failed) = (waiters.metrics().commands, failed_tries().await);
    assert!(held.release().await.unwrap());
    while let Some(joined) = set.join_next().await {
        joined.unwrap().expect("every waiter gets the lock");
    }
    let arrival = (
        handoff_commands - arrival_commands,
        handoff_failed - arrival_failed,
    );
    let handoff = (
        waiters.metrics().commands - handoff_commands,
        failed_tries().await - handoff_failed,
    );
    eprintln!(
        "one woken: {WAITERS} local waiters: arrival {} commands ({} failed tries), \
         hand-offs {} commands ({} failed tries)",
        arrival.0, arrival.1, handoff.0, handoff.1
    );
    // Arrival: the head tries, subscribes and tries again; the others only queue.
    assert!(
        arrival.0 <= 2,
        "{} commands to queue {WAITERS} waiters",
        arrival.0
    );
    // Hand-offs: an acquisition and a release per waiter, and at most a stray failed try (a
    // release message racing a local hand-off). Waking every waiter on each release would cost
    // about WAITERS²/2 = 128 failed tries.
    assert!(
        handoff.1 <= 2,
        "{} failed tries during the hand-offs",
        handoff.1
    );
    assert!(
        handoff.0 <= 2 * WAITERS + 2,
        "{} commands for {WAITERS} hand-offs",
        handoff.0
    );
}

/// The subscriber connection is killed while a waiter waits, and the holder's release message is
/// lost with it: the waiter still gets the lock by the holder's lease end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_does_not_strand_a_waiter() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let waiter = server.manager().await;
    let key = LockKey::new("waiting").part("killed-subscriber");
    let lease = Duration::from_secs(2);
    let held_at = Instant::now();
    let held = holder
        .lock(&key, LockOptions::new().lease(lease))
        .await
        .unwrap();

    let task = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key.clone());
        async move {
            let guard = waiter
                .lock(&key, LockOptions::new().wait(Duration::from_secs(10)))
                .await;
            (guard, Instant::now())
        }
    });
    let channel = format!("{}:released", waiter.redis_key(&key));
    eventually(Duration::from_secs(5), "the waiter subscribed", || async {
        server.pubsub_channels().await.contains(&channel)
    })
    .await;
    assert!(server.kill_pubsub_clients().await >= 1);
    assert!(held.release().await.unwrap());

    let (guard, acquired_at) = task.await.unwrap();
    drop(guard.expect("the waiter gets the lock"));
    let after = acquired_at - held_at;
    eprintln!("killed subscriber: waiter acquired {after:?} after the holder (lease {lease:?})");
    assert!(
        after < lease + Duration::from_millis(500),
        "acquired only {after:?} after the holder"
    );

    // The subscriber comes back: a later release wakes a later waiter at once, not at the end of
    // a 30 s lease.
    let held = holder.lock(&key, held_long()).await.unwrap();
    let task = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key.clone());
        async move {
            let guard = waiter
                .lock(&key, LockOptions::new().wait(Duration::from_secs(10)))
                .await;
            (guard.map(drop), Instant::now())
        }
    });
    eventually(
        Duration::from_secs(5),
        "the waiter subscribed again",
        || async { server.pubsub_channels().await.contains(&channel) },
    )
    .await;
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let (guard, acquired_at) = task.await.unwrap();
    guard.expect("the later waiter gets the lock");
    let latency = acquired_at - released_at;
    assert!(
        latency < Duration::from_secs(1),
        "woken only after {latency:?}"
    );
}
