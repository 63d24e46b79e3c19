//! Network faults through a TCP proxy between the managers and Redis: latency, one
//! direction stalled past the command timeout, connections cut mid-command, a release cancelled
//! in flight, and a manager whose runtime is gone. A reply can arrive after the caller gave up:
//! the lock is never left held by nobody for the rest of its lease, two holders never coexist,
//! and every call returns within `wait` + one command timeout (+ scheduling).

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::faults::{Figures, ms};
use lock_guard_tests::{Direction, Proxy, RedisServer, all_free, eventually, load};
use tokio::time::{Instant, sleep, timeout};

const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling allowance on a shared 2-core machine.
const EPSILON: Duration = Duration::from_millis(100);
const LEASE: Duration = Duration::from_secs(10);

async fn through(proxy: &Proxy) -> LockManager {
    LockManager::builder()
        .url(&proxy.url())
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .await
        .unwrap()
}

/// How long after `since` a direct manager takes `key` (waiting up to 3 s); panics if it cannot.
async fn taken_after(direct: &LockManager, key: &LockKey, since: Instant) -> Duration {
    let guard = direct
        .lock(
            key,
            LockOptions::new().wait(Duration::from_secs(3)).lease(LEASE),
        )
        .await
        .expect("the lock was left held by nobody");
    let took = since.elapsed();
    guard.release().await.unwrap();
    took
}

/// 40 ms of latency each way under contention from two managers: exclusion holds, calls stay
/// within their bound, no lock is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_under_contention() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    proxy.set_latency(Direction::Up, Duration::from_millis(40));
    proxy.set_latency(Direction::Down, Duration::from_millis(40));
    let managers = [through(&proxy).await, through(&proxy).await];
    let wait = Duration::from_secs(2);
    let options = LockOptions::new().wait(wait).lease(Duration::from_secs(2));
    let report = load(
        &managers,
        "latency",
        3,
        6,
        Duration::from_millis(2000),
        options,
        Duration::from_millis(2),
    )
    .await;
    eprintln!("latency 40 ms each way: {report:?}");
    assert_eq!(report.overlaps, 0);
    assert!(report.errors.is_empty(), "calls failed: {report:?}");
    assert!(report.completed > 10, "{report:?}");
    assert!(
        report.worst_call <= wait + COMMAND_TIMEOUT + EPSILON,
        "{report:?}"
    );
    let direct = server.manager().await;
    eventually(Duration::from_secs(1), "no lock left held", || {
        all_free(&direct, "latency", 3)
    })
    .await;
    Figures::new(
        "faults_proxy::latency_under_contention",
        "proxy: 40 ms latency each way",
        "exclusion, no call fails, calls bounded by wait + command timeout",
    )
    .count("bodies", report.completed)
    .count("overlaps", report.overlaps)
    .count("errors", report.errors.len() as u64)
    .ms("worst_call_ms", report.worst_call)
    .measured(&format!(
        "{} bodies, {} overlaps, {} errors, worst call {} (wait 2 s)",
        report.completed,
        report.overlaps,
        report.errors.len(),
        ms(report.worst_call)
    ))
    .print();
}

/// One direction stalled while a call acquires (lease 10 s, wait 0 and 500 ms): the call fails
/// within wait + one command timeout; once the stall ends, the request or reply that arrives
/// after the caller gave up must not leave the lock held — another instance takes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_direction_never_strands_the_lock() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let (locks, direct) = (through(&proxy).await, server.manager().await);
    let mut worst_overrun = Duration::ZERO;
    let mut worst_takeover = Duration::ZERO;
    for (round, direction) in [
        Direction::Down,
        Direction::Up,
        Direction::Down,
        Direction::Up,
    ]
    .into_iter()
    .enumerate()
    {
        for wait in [Duration::ZERO, Duration::from_millis(500)] {
            let key = LockKey::new("stall").part(format!("{round}-{}", wait.as_millis()));
            proxy.stall(direction, true);
            let start = Instant::now();
            let result = timeout(
                Duration::from_secs(5),
                locks.lock(&key, LockOptions::new().wait(wait).lease(LEASE)),
            )
            .await
            .expect("the call hung");
            let took = start.elapsed();
            worst_overrun = worst_overrun.max(took.saturating_sub(wait));
            assert!(
                matches!(&result, Err(e) if e.is_timeout()),
                "{direction:?} stalled: a command timeout expected, got {result:?}"
            );
            assert!(
                took <= wait + COMMAND_TIMEOUT + EPSILON,
                "{direction:?} stalled: failed after {took:?} (wait {wait:?})"
            );
            proxy.stall(direction, false);
            let released = Instant::now();
            let takeover = taken_after(&direct, &key, released).await;
            worst_takeover = worst_takeover.max(takeover);
            assert!(
                takeover < Duration::from_secs(1),
                "{direction:?} stalled: the lock was held by nobody for {takeover:?}"
            );
        }
    }
    eprintln!(
        "stalls: worst overrun past wait {worst_overrun:?}, worst takeover {worst_takeover:?}"
    );
    Figures::new(
        "faults_proxy::stalled_direction_never_strands_the_lock",
        "proxy: requests or replies stalled past the command timeout",
        "call fails (command timeout) within wait + one command timeout; the request/reply arriving later never strands the lock (S14, S15)",
    )
    .ms("worst_overrun_ms", worst_overrun)
    .ms("worst_takeover_ms", worst_takeover)
    .measured(&format!(
        "worst overrun past `wait` {} (command timeout {}), worst takeover {}",
        ms(worst_overrun),
        ms(COMMAND_TIMEOUT),
        ms(worst_takeover)
    ))
    .print();
}

/// Replies held, then every connection cut mid-command (the acquire reached Redis, its reply is
/// lost): the call ends within wait + one command timeout, holding the lock or having freed it —
/// never leaving it held by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_command_never_strand_the_lock() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let (locks, direct) = (through(&proxy).await, server.manager().await);
    let (mut worst, mut acquired) = (Duration::ZERO, 0u64);
    for round in 0..4 {
        let key = LockKey::new("cut").part(round);
        let wait = Duration::from_millis(if round % 2 == 0 { 0 } else { 500 });
        proxy.stall(Direction::Down, true);
        let start = Instant::now();
        let call = tokio::spawn({
            let (locks, key) = (locks.clone(), key.clone());
            async move {
                locks
                    .lock(&key, LockOptions::new().wait(wait).lease(LEASE))
                    .await
            }
        });
        sleep(Duration::from_millis(100)).await;
        proxy.cut_all();
        proxy.stall(Direction::Down, false);
        let result = timeout(Duration::from_secs(5), call)
            .await
            .expect("the call hung")
            .unwrap();
        let took = start.elapsed();
        worst = worst.max(took);
        acquired += u64::from(result.is_ok());
        eprintln!(
            "cut round {round}: {:?} after {took:?}",
            result.as_ref().map(|g| g.fencing_token())
        );
        assert!(
            took <= wait + COMMAND_TIMEOUT + EPSILON,
            "returned after {took:?} (wait {wait:?})"
        );
        match result {
            Ok(guard) => {
                let probe = direct
                    .lock(&key, LockOptions::new().wait(Duration::ZERO))
                    .await;
                assert!(
                    matches!(probe, Err(LockError::NotAcquired { .. })),
                    "two holders: {probe:?}"
                );
                guard.release().await.unwrap();
            }
            Err(_) => {
                let takeover = taken_after(&direct, &key, Instant::now()).await;
                assert!(
                    takeover < Duration::from_secs(1),
                    "the lock was held by nobody for {takeover:?}"
                );
            }
        }
    }
    Figures::new(
        "faults_proxy::connections_cut_mid_command_never_strand_the_lock",
        "proxy: connections cut mid-command",
        "no lock held by nobody, no two holders, bounded (S14)",
    )
    .count("acquired", acquired)
    .ms("worst_call_ms", worst)
    .measured(&format!(
        "{acquired} of 4 rounds acquired through the retry, the others freed; worst call {}",
        ms(worst)
    ))
    .print();
}

/// A release cancelled in flight — the `guard.release()` future, or the whole guarded call, is
/// dropped while requests are stalled — still completes once Redis answers: another instance
/// gets the lock well before the lease's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_cancelled_in_flight_still_completes() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let locks = LockManager::builder()
        .url(&proxy.url())
        .command_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let direct = server.manager().await;
    let mut worst_free = Duration::ZERO;
    for round in 0..4 {
        let key = LockKey::new("cancelled-release").part(round);
        let options = LockOptions::new()
            .lease(LEASE)
            .timeout(Duration::from_secs(5));
        if round % 2 == 0 {
            let guard = locks.lock(&key, options).await.unwrap();
            if round == 2 {
                // The pooled connection is dead: the release must reconnect, then stall.
                proxy.cut_all();
            }
            proxy.stall(Direction::Up, true);
            let cancelled = timeout(Duration::from_millis(200), guard.release()).await;
            assert!(
                cancelled.is_err(),
                "the release went through a stalled proxy"
            );
        } else {
            let call = locks.run(&key, options, async {
                if round == 3 {
                    proxy.cut_all();
                }
                proxy.stall(Direction::Up, true);
                Ok::<_, LockError>(())
            });
            let cancelled = timeout(Duration::from_millis(200), call).await;
            assert!(
                cancelled.is_err(),
                "the guarded call's release went through a stalled proxy"
            );
        }
        sleep(Duration::from_millis(100)).await;
        let answered = Instant::now();
        proxy.stall(Direction::Up, false);
        let takeover = taken_after(&direct, &key, answered).await;
        eprintln!(
            "cancelled release round {round}: lock free {takeover:?} after Redis could answer"
        );
        worst_free = worst_free.max(takeover);
        assert!(
            takeover < Duration::from_secs(1),
            "the cancelled release never happened: free only after {takeover:?}"
        );
    }
    Figures::new(
        "faults_proxy::release_cancelled_in_flight_still_completes",
        "release cancelled in flight (guard's `release()` or the guarded call dropped while the proxy stalls requests)",
        "the release still completes once Redis answers (S14)",
    )
    .ms("worst_free_after_ms", worst_free)
    .measured(&format!(
        "free at most {} after Redis could answer (4 rounds)",
        ms(worst_free)
    ))
    .print();
}

/// A manager built on one runtime, that runtime dropped, then used from another: each call works
/// or fails with a clear error within a command timeout (plus its wait) — never hangs.
#[test]
fn manager_outlives_the_runtime_that_built_it() {
    let server = RedisServer::start();
    let url = server.url();
    let first = tokio::runtime::Runtime::new().unwrap();
    let locks = first.block_on(async {
        LockManager::builder()
            .url(&url)
            .command_timeout(COMMAND_TIMEOUT)
            .build()
            .await
            .unwrap()
    });
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let key = LockKey::new("runtime").part("moved");
        let holder = server.manager().await;
        for round in 0..3 {
            let start = Instant::now();
            let result = timeout(
                Duration::from_secs(5),
                locks.lock(&key, LockOptions::new().wait(Duration::ZERO)),
            )
            .await
            .expect("a call on a manager whose runtime is gone hung");
            let took = start.elapsed();
            eprintln!(
                "runtime gone, round {round}: {:?} after {took:?}",
                result.as_ref().map(|g| g.fencing_token())
            );
            assert!(took <= COMMAND_TIMEOUT + EPSILON, "took {took:?}");
            if let Ok(guard) = result {
                guard.release().await.unwrap();
            }
            // Waiting needs the subscriber and timers: held elsewhere, wait 500 ms.
            let held = holder
                .lock(&key, LockOptions::new().lease(Duration::from_secs(5)))
                .await
                .unwrap();
            let wait = Duration::from_millis(500);
            let start = Instant::now();
            let result = timeout(
                Duration::from_secs(5),
                locks.lock(&key, LockOptions::new().wait(wait)),
            )
            .await
            .expect("waiting on a manager whose runtime is gone hung");
            let took = start.elapsed();
            eprintln!(
                "runtime gone, waiting: {:?} after {took:?}",
                result.as_ref().err()
            );
            assert!(
                matches!(result, Err(LockError::NotAcquired { .. })),
                "held elsewhere: {:?}",
                result.as_ref().map(|g| g.fencing_token())
            );
            assert!(took <= wait + COMMAND_TIMEOUT + EPSILON, "took {took:?}");
            held.release().await.unwrap();
        }
        // A stalled Redis: only the manager's own command timeout ends the call.
        server.pause(Duration::from_millis(1500)).await;
        let start = Instant::now();
        let result = timeout(
            Duration::from_secs(5),
            locks.lock(&key, LockOptions::new().wait(Duration::ZERO)),
        )
        .await
        .expect("a call to a paused Redis on a manager whose runtime is gone hung");
        let took = start.elapsed();
        eprintln!(
            "runtime gone, paused redis: {:?} after {took:?}",
            result.as_ref().err()
        );
        assert!(
            matches!(&result, Err(e) if e.is_timeout()),
            "a paused Redis cannot grant a lock: a command timeout expected, got {:?}",
            result.as_ref().map(|g| g.fencing_token())
        );
        assert!(
            took <= COMMAND_TIMEOUT + EPSILON,
            "not bounded by the command timeout: {took:?}"
        );
        Figures::new(
            "faults_proxy::manager_outlives_the_runtime_that_built_it",
            "manager built on a runtime that is then dropped",
            "works or fails clearly within a command timeout, never hangs (S14)",
        )
        .ms("paused_redis_timeout_after_ms", took)
        .measured(&format!(
            "paused Redis → command timeout after {} (command timeout {})",
            ms(took),
            ms(COMMAND_TIMEOUT)
        ))
        .print();
    });
}

/// The runtime that built a manager (and ran its subscriber) is gone; a waiter on another runtime
/// is still woken by the release, not by the holder's lease end: the subscriber starts again where
/// it is needed.
#[test]
fn release_notifications_survive_the_runtime_that_built_the_manager() {
    let server = RedisServer::start();
    let url = server.url();
    let first = tokio::runtime::Runtime::new().unwrap();
    let locks = first.block_on(async { LockManager::redis(&url).await.unwrap() });
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let holder = server.manager().await;
        let mut worst = Duration::ZERO;
        for round in 0..3 {
            let key = LockKey::new("runtime").part(round);
            let held = holder
                .lock(&key, LockOptions::new().lease(LEASE))
                .await
                .unwrap();
            let waiter = tokio::spawn({
                let (locks, key) = (locks.clone(), key.clone());
                async move {
                    let guard = locks
                        .lock(&key, LockOptions::new().wait(Duration::from_secs(5)))
                        .await;
                    (Instant::now(), guard.map(drop))
                }
            });
            eventually(Duration::from_secs(5), "the waiter queued", || async {
                locks.metrics().waiters == 1
            })
            .await;
            // Past the waiter's subscription and confirming try.
            sleep(Duration::from_millis(100)).await;
            let released_at = Instant::now();
            held.release().await.unwrap();
            let (acquired_at, result) = waiter.await.unwrap();
            result.expect("the waiter gets the lock");
            let took = acquired_at - released_at;
            eprintln!(
                "runtime gone, round {round}: the waiter took the lock {took:?} after the release"
            );
            assert!(
                took < Duration::from_millis(200),
                "woken only after {took:?}, not by the release"
            );
            worst = worst.max(took);
        }
        Figures::new(
            "faults_proxy::release_notifications_survive_the_runtime_that_built_the_manager",
            "manager built on a runtime that is then dropped; a waiter on another runtime",
            "woken by the release, not by the lease end (S8, S14)",
        )
        .ms("worst_woken_after_ms", worst)
        .measured(&format!(
            "woken at most {} after the release (3 rounds)",
            ms(worst)
        ))
        .print();
    });
}

/// An acquisition whose request is held on its connection until the call has timed out: the
/// cleanup release must not overtake it. With two pooled connections, a cleanup sent on the other
/// one reaches Redis first, finds nothing to release, and the acquisition arriving after it keeps
/// the lock for the whole lease, held by nobody. Released behind the acquisition on the same
/// connection, the lock is free as soon as both arrive. Rounds 0–3 hold the request for less than
/// a command timeout after the call gave up (the cleanup's own reply still comes in time); rounds
/// 4–5 for a second, so that the cleanup's reply times out too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_acquisition_is_not_overtaken_by_its_cleanup() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let locks = LockManager::builder()
        .url(&proxy.url())
        .pool_size(2)
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .await
        .unwrap();
    let direct = server.manager().await;
    // Both pooled connections open, the scripts loaded.
    for i in 0..4 {
        let key = LockKey::new("abandoned").part(format!("warm-{i}"));
        locks
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let mut worst_free = Duration::ZERO;
    for round in 0..6u32 {
        let wait = Duration::from_millis(if round % 2 == 0 { 0 } else { 500 });
        let key = LockKey::new("abandoned").part(round);
        let held_after = Duration::from_millis(if round < 4 { 100 } else { 1000 });
        // The next script call — this acquisition — is held on its own connection only.
        proxy.trap(Direction::Up, b"EVALSHA");
        let start = Instant::now();
        let result = timeout(
            Duration::from_secs(5),
            locks.lock(&key, LockOptions::new().wait(wait).lease(LEASE)),
        )
        .await
        .expect("the call hung");
        let took = start.elapsed();
        assert_eq!(
            proxy.trapped(),
            u64::from(round) + 1,
            "the acquisition was not held"
        );
        assert!(
            matches!(&result, Err(e) if e.is_timeout()),
            "acquired through a held request, or not a command timeout: {result:?}"
        );
        assert!(
            took <= wait + COMMAND_TIMEOUT + EPSILON,
            "failed after {took:?} (wait {wait:?})"
        );
        // Time for the cleanup to go out (and, on another connection, to reach Redis first).
        sleep(held_after).await;
        let freed = Instant::now();
        proxy.free_trapped();
        let takeover = taken_after(&direct, &key, freed).await;
        eprintln!(
            "abandoned acquisition round {round} (held {held_after:?} after the call): lock free \
             {takeover:?} after the request could arrive"
        );
        assert!(
            takeover < Duration::from_secs(1),
            "the cleanup overtook the acquisition: the lock was held by nobody for {takeover:?} \
             (lease {LEASE:?})"
        );
        worst_free = worst_free.max(takeover);
    }
    Figures::new(
        "faults_proxy::abandoned_acquisition_is_not_overtaken_by_its_cleanup",
        "proxy: the acquisition's request held on its own connection (trap on `EVALSHA`; `pool_size(2)`) until the call timed out, then 100 ms or 1 s more",
        "the cleanup release never overtakes it: the lock is free as soon as the request arrives, not at the lease end (10 s) (S14)",
    )
    .ms("worst_free_after_ms", worst_free)
    .measured(&format!(
        "free at most {} after the request could arrive (6 rounds, wait 0 and 500 ms)",
        ms(worst_free)
    ))
    .print();
}

/// The wait never overruns by more than one command timeout: a waiter (wait 100 ms) whose
/// subscription is never confirmed (the subscriber's replies held) gives up once its wait and one
/// command timeout are over, and does not then start another try of a command timeout of its own
/// (requests stalled from then on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_subscription_does_not_double_the_wait_overrun() {
    let command_timeout = Duration::from_millis(500);
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let locks = LockManager::builder()
        .url(&proxy.url())
        .command_timeout(command_timeout)
        .build()
        .await
        .unwrap();
    let holder = server.manager().await;
    let mut worst = Duration::ZERO;
    for round in 0..3u32 {
        let wait = Duration::from_millis(100);
        let key = LockKey::new("overrun").part(round);
        let held = holder
            .lock(&key, LockOptions::new().lease(LEASE))
            .await
            .unwrap();
        // The subscriber's confirmation of this key's channel is held.
        proxy.trap(Direction::Down, b"SUBSCRIBE");
        let start = Instant::now();
        let call = tokio::spawn({
            let (locks, key) = (locks.clone(), key.clone());
            async move { locks.lock(&key, LockOptions::new().wait(wait)).await }
        });
        eventually(
            Duration::from_secs(2),
            "the SUBSCRIBE was caught",
            || async { proxy.trapped() == u64::from(round) + 1 },
        )
        .await;
        // Every request from now on is held: a try after the unconfirmed subscription would take
        // a whole command timeout.
        proxy.stall(Direction::Up, true);
        let result = timeout(Duration::from_secs(5), call)
            .await
            .expect("the call hung")
            .unwrap();
        let took = start.elapsed();
        worst = worst.max(took.saturating_sub(wait));
        eprintln!(
            "unconfirmed subscription round {round}: {:?} after {took:?}",
            result.as_ref().err()
        );
        assert!(
            matches!(&result, Err(LockError::NotAcquired { .. })),
            "acquired a held lock: {result:?}"
        );
        assert!(
            took <= wait + command_timeout + EPSILON,
            "returned after {took:?}: more than wait {wait:?} + one command timeout \
             {command_timeout:?}"
        );
        proxy.stall(Direction::Up, false);
        proxy.free_trapped();
        held.release().await.unwrap();
    }
    eprintln!("unconfirmed subscription: worst overrun past wait {worst:?}");
    Figures::new(
        "faults_proxy::unconfirmed_subscription_does_not_double_the_wait_overrun",
        "proxy: the subscriber's confirmation held (trap on `SUBSCRIBE`), then every request stalled; wait 100 ms, command timeout 500 ms",
        "the call ends (`NotAcquired`) within wait + one command timeout (S15)",
    )
    .ms("worst_overrun_ms", worst)
    .measured(&format!("worst overrun past `wait` {} (3 rounds)", ms(worst)))
    .print();
}

/// The EVALSHA hash of one of the library's scripts, to trap its calls in the proxy.
fn script_hash(source: &str) -> String {
    redis::Script::new(source).get_hash().to_owned()
}

/// A grant whose reply comes back after the lease's validity is given back, and the call goes on
/// trying. The give-back must never delete the grant of a later try of the same call: here the
/// give-back's release is held in the proxy while the next try is granted, then let through. The
/// lock must still be the caller's afterwards — another manager is refused while the caller's
/// guard is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_grant_give_back_never_deletes_the_next_grant() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let a = LockManager::builder()
        .url(&proxy.url())
        .command_timeout(Duration::from_secs(5))
        .pool_size(2)
        .build()
        .await
        .unwrap();
    let direct = server.manager().await;
    let acquire = script_hash(include_str!("../../lock-guard/src/scripts/acquire.lua"));
    let release = script_hash(include_str!("../../lock-guard/src/scripts/release.lua"));
    let lease = Duration::from_secs(2);
    let mut two_holders = 0;
    let rounds = 3;
    for round in 0..rounds {
        let key = LockKey::new("late-grant").part(round);
        // Both pooled connections open, both scripts cached.
        for _ in 0..2 {
            a.lock(&key, LockOptions::new().wait(Duration::ZERO))
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        let sprung = proxy.trapped();
        // The next acquisition's reply is held past the lease: the grant is late.
        proxy.trap(Direction::Down, acquire.as_bytes());
        let call = tokio::spawn({
            let (a, key) = (a.clone(), key.clone());
            async move {
                a.lock(
                    &key,
                    LockOptions::new()
                        .wait(Duration::from_secs(10))
                        .lease(lease),
                )
                .await
            }
        });
        eventually(
            Duration::from_secs(2),
            "the acquisition's reply trapped",
            || {
                let n = proxy.trapped();
                async move { n > sprung }
            },
        )
        .await;
        sleep(lease + Duration::from_millis(300)).await;
        // Let the late reply through, and hold the give-back that follows it.
        proxy.trap(Direction::Up, release.as_bytes());
        let guard = timeout(Duration::from_secs(5), call)
            .await
            .expect("the call ends")
            .unwrap()
            .expect("a later try takes the lock");
        assert_eq!(proxy.trapped(), sprung + 2, "the give-back was not held");
        // The give-back reaches Redis now, after the later try's grant.
        proxy.free_trapped();
        sleep(Duration::from_millis(200)).await;
        let other = direct
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await;
        assert!(
            Instant::now() < guard.valid_until(),
            "the check came after the guard's validity (machine too slow): inconclusive"
        );
        match other {
            Err(LockError::NotAcquired { .. }) => {}
            Ok(g) => {
                two_holders += 1;
                g.release().await.unwrap();
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        let _ = guard.release().await;
    }
    eprintln!("late grant: two holders in {two_holders} of {rounds} rounds");
    assert_eq!(
        two_holders, 0,
        "two holders in {two_holders} of {rounds} rounds"
    );
}
