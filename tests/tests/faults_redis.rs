//! Faults of the Redis server itself: `CLIENT PAUSE … ALL|WRITE` during an
//! acquisition, a fixed-lease body and a release; a restart that empties it; `CLIENT KILL` of the
//! subscriber and of command connections, and `SCRIPT FLUSH`, under load. Stalls during watchdog
//! renewals are in watchdog.rs, restarts from an older snapshot in fencing.rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::faults::{Figures, PauseMode, kill_command_clients, ms, pause};
use lock_guard_tests::{RedisServer, all_free, eventually, load};
use tokio::time::{Instant, sleep, timeout};

/// Scheduling allowance on a shared 2-core machine.
const EPSILON: Duration = Duration::from_millis(100);

async fn manager(server: &RedisServer, command_timeout: Duration) -> LockManager {
    server
        .builder()
        .command_timeout(command_timeout)
        .build()
        .await
        .unwrap()
}

/// Records when it is dropped (a body dropped at its deadline drops it).
struct DropClock(Arc<std::sync::Mutex<Option<Instant>>>);

impl Drop for DropClock {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

/// `CLIENT PAUSE 700 ALL` while a call with `lease = 300ms` acquires (command timeout 1 s): the
/// reply comes back after the lease's validity, so that grant is given back and the body does not
/// run under it. With `wait = 0` the call fails; with time left to wait it takes the lock again,
/// after the pause, and only then runs the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_all_during_acquire_never_starts_the_body() {
    let server = RedisServer::start();
    let locks = manager(&server, Duration::from_secs(1)).await;
    let key = LockKey::new("faults").part("pause-acquire");
    let pause_for = Duration::from_millis(700);
    let (mut failed_after, mut started_after) = (Duration::ZERO, Duration::ZERO);
    for wait in [Duration::ZERO, Duration::from_secs(3)] {
        let options = LockOptions::new()
            .lease(Duration::from_millis(300))
            .wait(wait);
        pause(&server, pause_for, PauseMode::All).await;
        let paused_at = Instant::now();
        let started = std::sync::Mutex::new(None);
        let result = locks
            .run(&key, options, async {
                *started.lock().unwrap() = Some(Instant::now());
                Ok::<_, LockError>(())
            })
            .await;
        let started = *started.lock().unwrap();
        let took = paused_at.elapsed();
        eprintln!("acquire under CLIENT PAUSE 700 ALL, wait {wait:?}: {result:?} after {took:?}");
        if wait.is_zero() {
            assert!(started.is_none(), "the body started under an expired grant");
            assert!(
                matches!(result, Err(LockError::NotAcquired { .. })),
                "the call returned {result:?}"
            );
            failed_after = took;
        } else {
            // Only a grant that came back in time, i.e. one sent after the pause, starts it.
            let started = started.expect("the body runs once the lock is taken again");
            assert!(
                started - paused_at >= pause_for,
                "the body started {:?} into the pause, under the expired grant",
                started - paused_at
            );
            result.expect("taken again after the pause");
            started_after = started - paused_at;
        }
        sleep(Duration::from_millis(400)).await;
    }
    Figures::new(
        "faults_redis::pause_all_during_acquire_never_starts_the_body",
        "`CLIENT PAUSE 700 ALL` during acquire, lease 300 ms",
        "the body never runs under the late grant: with `wait = 0` the call fails; with time left it takes the lock again after the pause (S7)",
    )
    .ms("wait0_failed_after_ms", failed_after)
    .ms("wait3s_started_after_ms", started_after)
    .measured(&format!(
        "`wait = 0`: `NotAcquired` after {}, body never polled; `wait = 3s`: body started {} after the pause began, under a fresh grant",
        ms(failed_after),
        ms(started_after)
    ))
    .print();
}

/// The same stall under the guard API: `lock` never hands out a guard whose lease had already run
/// out when the reply came; with time left to wait, it takes the lock again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_all_during_acquire_never_hands_out_an_expired_guard() {
    let server = RedisServer::start();
    let locks = manager(&server, Duration::from_secs(1)).await;
    let key = LockKey::new("faults").part("pause-lock");
    for wait in [Duration::ZERO, Duration::from_secs(3)] {
        let options = LockOptions::new()
            .lease(Duration::from_millis(300))
            .wait(wait);
        pause(&server, Duration::from_millis(700), PauseMode::All).await;
        let result = locks.lock(&key, options).await;
        let now = tokio::time::Instant::now();
        match result {
            Ok(guard) => {
                assert!(
                    !wait.is_zero(),
                    "wait 0 returned a guard after the lease's validity"
                );
                assert!(guard.valid_until() > now, "an expired guard: {guard:?}");
                guard.release().await.unwrap();
            }
            Err(e) => {
                assert!(wait.is_zero(), "{e:?}");
                assert!(e.is_not_acquired(), "{e:?}");
            }
        }
        sleep(Duration::from_millis(400)).await;
    }
    Figures::new(
        "faults_redis::pause_all_during_acquire_never_hands_out_an_expired_guard",
        "`CLIENT PAUSE 700 ALL` during acquire, guard API (`lock`)",
        "never hands out a guard whose validity had passed when the reply came (S7)",
    )
    .measured("`wait = 0`: `NotAcquired`; `wait = 3s`: a guard valid when returned")
    .print();
}

/// `CLIENT PAUSE 1500 ALL` from inside a fixed-lease body (lease 1 s, deadline 666 ms): the
/// deadline is local, so the body is dropped on time; the call returns by the deadline + one
/// command timeout; the lock is free for another instance by the lease's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_all_during_a_fixed_lease_body() {
    let server = RedisServer::start();
    let command_timeout = Duration::from_millis(300);
    let (locks, other) = (
        manager(&server, command_timeout).await,
        server.manager().await,
    );
    let key = LockKey::new("faults").part("pause-body");
    let dropped = Arc::new(std::sync::Mutex::new(None));
    let acquired = std::sync::Mutex::new(None);
    let lease = Duration::from_secs(1);
    let result = locks
        .run(&key, LockOptions::new().lease(lease), async {
            *acquired.lock().unwrap() = Some(Instant::now());
            let _clock = DropClock(dropped.clone());
            pause(&server, Duration::from_millis(1500), PauseMode::All).await;
            sleep(Duration::from_secs(5)).await;
            Ok::<_, LockError>(())
        })
        .await;
    let returned = Instant::now();
    let acquired = acquired.lock().unwrap().unwrap();
    let dropped = dropped.lock().unwrap().expect("the body was dropped");
    eprintln!(
        "paused body: dropped after {:?}, returned after {:?}: {result:?}",
        dropped - acquired,
        returned - acquired
    );
    assert!(
        matches!(result, Err(LockError::Deadline { .. })),
        "{result:?}"
    );
    assert!(dropped - acquired <= lease * 2 / 3 + EPSILON);
    assert!(
        returned - dropped <= command_timeout + EPSILON,
        "the release was not bounded"
    );
    let free = other
        .lock(&key, LockOptions::new().wait(Duration::from_secs(3)))
        .await
        .expect("free after the pause");
    let took = acquired.elapsed();
    eprintln!("paused body: another instance took the lock {took:?} after the acquisition");
    // Redis expires no key while paused: the lease ends at the pause's end at the earliest; one
    // retry of the waiter after that.
    assert!(
        took <= Duration::from_millis(1500) + Duration::from_millis(300),
        "free only after {took:?}"
    );
    free.release().await.unwrap();
    Figures::new(
        "faults_redis::pause_all_during_a_fixed_lease_body",
        "`CLIENT PAUSE 1500 ALL` during a fixed-lease body (lease 1 s)",
        "body dropped at its deadline; call returns within deadline + command timeout (S7, S15)",
    )
    .ms("dropped_after_ms", dropped - acquired)
    .ms("returned_after_ms", returned - acquired)
    .ms("taken_over_after_ms", took)
    .measured(&format!(
        "dropped at {} (deadline 667 ms), returned at {} (command timeout 300 ms); another instance took the lock {} after the acquisition (pause ends at 1.5 s)",
        ms(dropped - acquired),
        ms(returned - acquired),
        ms(took)
    ))
    .print();
}

/// `CLIENT PAUSE 1000 ALL` as the body ends (lease 10 s, command timeout 300 ms): the call returns
/// the body's value within a command timeout; the release Redis gets once the pause ends still
/// frees the lock — another instance, waiting, gets it soon after the pause, not at the lease end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_all_during_release() {
    let server = RedisServer::start();
    let command_timeout = Duration::from_millis(300);
    let (locks, other) = (
        manager(&server, command_timeout).await,
        server.manager().await,
    );
    let key = LockKey::new("faults").part("pause-release");
    let options = LockOptions::new().lease(Duration::from_secs(10));
    let mut paused_at = None;
    let body_end = std::sync::Mutex::new(None);
    let result = locks
        .run(&key, options, async {
            pause(&server, Duration::from_millis(1000), PauseMode::All).await;
            paused_at = Some(Instant::now());
            *body_end.lock().unwrap() = Some(Instant::now());
            Ok::<_, LockError>(7)
        })
        .await;
    let returned = Instant::now();
    let body_end = body_end.lock().unwrap().unwrap();
    assert_eq!(result.unwrap(), 7);
    assert!(
        returned - body_end <= command_timeout + EPSILON,
        "returned {:?} after the body",
        returned - body_end
    );
    let waiter = other
        .lock(&key, LockOptions::new().wait(Duration::from_secs(5)))
        .await
        .expect("the lock is freed by the release Redis got");
    let took = paused_at.unwrap().elapsed();
    eprintln!("release under pause: another instance took the lock {took:?} after the pause began");
    assert!(
        took < Duration::from_millis(1000) + Duration::from_millis(500),
        "only after {took:?}"
    );
    waiter.release().await.unwrap();
    Figures::new(
        "faults_redis::pause_all_during_release",
        "`CLIENT PAUSE 1000 ALL` during release (lease 10 s)",
        "the body's value comes back within a command timeout; the lock is freed once Redis answers, not at the lease end (S14)",
    )
    .ms("taken_over_after_pause_began_ms", took)
    .measured(&format!(
        "another instance took the lock {} after the pause began",
        ms(took)
    ))
    .print();
}

/// Redis killed and restarted empty while a lock is held: the lease cannot survive a restart
/// without persistence — another instance takes the lock at once, with a larger token — and the
/// old holder's release reports the lock was no longer its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_empty_frees_the_lock_but_tokens_still_rise() {
    let mut server = RedisServer::start();
    let (locks, other) = (server.manager().await, server.manager().await);
    let key = LockKey::new("faults").part("restart-empty");
    let held = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    server.restart();
    let taken = other
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await
        .expect("the restart lost the lock");
    assert!(taken.fencing_token() > held.fencing_token());
    assert!(
        !held.release().await.unwrap(),
        "the old holder's release must not free the new lock"
    );
    assert!(taken.release().await.unwrap());
    Figures::new(
        "faults_redis::restart_empty_frees_the_lock_but_tokens_still_rise",
        "Redis killed and restarted empty while a lock is held",
        "tokens still rise; an old holder's release does not free the new lock; the lock itself is lost (S11)",
    )
    .measured("the lock was taken at once after the restart, with a higher token; the old release returned `false`")
    .print();
}

/// Runs contention on 4 keys from two managers (command timeout 500 ms, wait 3 s) for 2.5 s while
/// `fault` runs every 150 ms; then checks: no two bodies of a key ever overlapped, every call
/// started its body or failed within wait + one command timeout + ε, no lock was left held, and
/// (once idle) no channel stays subscribed.
async fn under_load<F, Fut>(name: &str, figures: Figures, fault: F)
where
    F: Fn(Arc<RedisServer>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let server = Arc::new(RedisServer::start());
    let command_timeout = Duration::from_millis(500);
    let managers = [
        manager(&server, command_timeout).await,
        manager(&server, command_timeout).await,
    ];
    let wait = Duration::from_secs(3);
    let options = LockOptions::new().wait(wait).lease(Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let nemesis = tokio::spawn({
        let (server, stop) = (server.clone(), stop.clone());
        async move {
            let mut n = 0u32;
            while !stop.load(SeqCst) && n < 100 {
                sleep(Duration::from_millis(150)).await;
                fault(server.clone()).await;
                n += 1;
            }
            n
        }
    });
    let report = load(
        &managers,
        name,
        4,
        8,
        Duration::from_millis(2500),
        options,
        Duration::from_millis(3),
    )
    .await;
    stop.store(true, SeqCst);
    let faults = nemesis.await.unwrap();
    eprintln!(
        "{name}: {faults} faults, {} bodies, {} errors, worst call {:?}, overlaps {}; errors: {:?}",
        report.completed,
        report.errors.len(),
        report.worst_call,
        report.overlaps,
        report.errors.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(report.overlaps, 0, "two bodies of one key ran at once");
    // The faults are transparent to callers: reconnects, resubscribes and script reloads happen
    // within the call.
    assert!(
        report.errors.is_empty(),
        "{} calls failed, e.g. {:?}",
        report.errors.len(),
        report.errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(report.completed > 50, "too little progress: {report:?}");
    assert!(
        report.worst_call <= wait + command_timeout + EPSILON,
        "a call took {:?} (wait {wait:?} + command timeout {command_timeout:?})",
        report.worst_call
    );
    let fresh = server.manager().await;
    eventually(
        Duration::from_secs(1),
        "no lock left held by nobody",
        || all_free(&fresh, name, 4),
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "no channel left subscribed",
        || async { server.pubsub_channels().await.is_empty() },
    )
    .await;
    figures
        .count("faults", u64::from(faults))
        .count("bodies", report.completed)
        .count("errors", report.errors.len() as u64)
        .count("overlaps", report.overlaps)
        .ms("worst_call_ms", report.worst_call)
        .measured(&format!(
            "{faults} faults, {} bodies, {} errors, {} overlaps, worst call {} (bound {})",
            report.completed,
            report.errors.len(),
            report.overlaps,
            ms(report.worst_call),
            ms(wait + command_timeout + EPSILON)
        ))
        .print();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_subscriber_under_load() {
    let figures = Figures::new(
        "faults_redis::client_kill_of_the_subscriber_under_load",
        "`CLIENT KILL TYPE pubsub` every 150 ms under load",
        "no two holders; no call fails; calls within wait + command timeout; no channel left subscribed (S8, S14)",
    );
    under_load("kill-pubsub", figures, |server| async move {
        server.kill_pubsub_clients().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_command_connections_under_load() {
    let figures = Figures::new(
        "faults_redis::client_kill_of_command_connections_under_load",
        "`CLIENT KILL TYPE normal` every 150 ms under load",
        "no two holders; no call fails; calls within wait + command timeout; no channel left subscribed (S8, S14)",
    );
    under_load("kill-normal", figures, |server| async move {
        kill_command_clients(&server).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_under_load() {
    let figures = Figures::new(
        "faults_redis::script_flush_under_load",
        "`SCRIPT FLUSH` every 150 ms under load",
        "`NOSCRIPT` reloaded transparently: no call fails (S9)",
    );
    under_load("script-flush", figures, |server| async move {
        server.script_flush().await;
    })
    .await;
}

/// Waiters come and go — some give up (wait runs out), some are cancelled, some get the lock —
/// across a subscriber reconnect (`CLIENT KILL TYPE pubsub`): once idle, `PUBSUB CHANNELS` is
/// empty within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subscription_outlives_its_waiters() {
    let server = RedisServer::start();
    let (locks, holder) = (server.manager().await, server.manager().await);
    let mut empty_after = Vec::new();
    for round in 0..3 {
        let keys: Vec<LockKey> = (0..4)
            .map(|i| LockKey::new("subs").part(format!("{round}-{i}")))
            .collect();
        let mut guards = Vec::new();
        for key in &keys {
            guards.push(
                holder
                    .lock(key, LockOptions::new().lease(Duration::from_secs(5)))
                    .await
                    .unwrap(),
            );
        }
        let mut waiters = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let (locks, key) = (locks.clone(), key.clone());
            let wait = Duration::from_millis(if i % 2 == 0 { 400 } else { 3000 });
            waiters.spawn(async move {
                locks
                    .lock(&key, LockOptions::new().wait(wait))
                    .await
                    .map(drop)
            });
        }
        eventually(
            Duration::from_secs(3),
            "every waiter subscribed",
            || async { server.pubsub_channels().await.len() == keys.len() },
        )
        .await;
        if round != 1 {
            server.kill_pubsub_clients().await;
        }
        // One waiter cancelled outright, one key released (its waiter gets the lock).
        let cancelled = {
            let (locks, key) = (locks.clone(), keys[3].clone());
            tokio::spawn(async move { locks.lock(&key, LockOptions::new()).await.map(drop) })
        };
        sleep(Duration::from_millis(100)).await;
        cancelled.abort();
        guards.remove(1).release().await.unwrap();
        let results = timeout(Duration::from_secs(5), async {
            let mut v = Vec::new();
            while let Some(r) = waiters.join_next().await {
                v.push(r.unwrap());
            }
            v
        })
        .await
        .expect("every waiter ended within its wait");
        eprintln!("round {round}: waiters ended {results:?}");
        for guard in guards {
            guard.release().await.unwrap();
        }
        let took = eventually(
            Duration::from_secs(3),
            "no channel left subscribed once idle",
            || async { server.pubsub_channels().await.is_empty() },
        )
        .await;
        eprintln!("round {round}: channels empty {took:?} after the last waiter");
        empty_after.push(took);
    }
    print_empty_after(
        Figures::new(
            "faults_redis::no_subscription_outlives_its_waiters",
            "waiters come and go across a subscriber reconnect",
            "`PUBSUB CHANNELS` empty once idle (S8, S14)",
        ),
        &empty_after,
        "the last waiter",
    );
}

/// Prints how soon `PUBSUB CHANNELS` was empty, over the rounds.
fn print_empty_after(figures: Figures, rounds: &[Duration], after: &str) {
    let (min, max) = (
        rounds.iter().min().copied().unwrap_or_default(),
        rounds.iter().max().copied().unwrap_or_default(),
    );
    figures
        .count("rounds", rounds.len() as u64)
        .ms("empty_after_min_ms", min)
        .ms("empty_after_max_ms", max)
        .measured(&format!(
            "empty {}–{} after {after} ({} rounds)",
            ms(min),
            ms(max),
            rounds.len()
        ))
        .print();
}

/// Waits until `PUBSUB CHANNELS` is empty (at most the unsubscribe grace of 500 ms and 1.5 s of
/// slack); returns how long it took.
async fn no_channel_left(server: &RedisServer, what: &str) -> Duration {
    eventually(Duration::from_secs(2), what, || async {
        server.pubsub_channels().await.is_empty()
    })
    .await
}

/// The subscriber reconnects (`CLIENT KILL TYPE pubsub`) while a call that never asked for
/// notifications is in flight (an uncontended acquisition held up by `CLIENT PAUSE WRITE`; a
/// waiter on another key keeps the subscriber in pub/sub mode so it can be killed): the reconnect
/// must subscribe only the channels of queues that asked, or unsubscribe the others once idle — a
/// channel subscribed for a queue that never asked is never unsubscribed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_after_a_reconnect_leaves_no_channel_behind() {
    let server = RedisServer::start();
    let (locks, holder) = (
        manager(&server, Duration::from_secs(2)).await,
        server.manager().await,
    );
    let mut empty_after = Vec::new();
    for round in 0..3 {
        let anchor = LockKey::new("subs-anchor").part(round);
        let held = holder
            .lock(&anchor, LockOptions::new().lease(LEASE_10S))
            .await
            .unwrap();
        let anchored = tokio::spawn({
            let (locks, anchor) = (locks.clone(), anchor.clone());
            async move {
                locks
                    .lock(&anchor, LockOptions::new().wait(Duration::from_secs(5)))
                    .await
            }
        });
        eventually(
            Duration::from_secs(2),
            "the anchor waiter subscribed",
            || async { server.pubsub_channels().await.len() == 1 },
        )
        .await;
        let key = LockKey::new("subs-reconnect").part(round);
        pause(&server, Duration::from_millis(800), PauseMode::Write).await;
        let call = tokio::spawn({
            let (locks, key) = (locks.clone(), key.clone());
            async move {
                locks
                    .lock(&key, LockOptions::new().wait(Duration::from_secs(3)))
                    .await
            }
        });
        // The acquisition is held by the pause (scripts are writes) while the subscriber
        // reconnects.
        sleep(Duration::from_millis(100)).await;
        assert!(
            !call.is_finished(),
            "the acquisition was not held by the pause"
        );
        assert!(
            server.kill_pubsub_clients().await >= 1,
            "no subscriber to kill"
        );
        let guard = timeout(Duration::from_secs(5), call)
            .await
            .expect("the call hung")
            .unwrap()
            .expect("an uncontended lock is taken once the pause ends");
        guard.release().await.unwrap();
        held.release().await.unwrap();
        let anchor_guard = timeout(Duration::from_secs(5), anchored)
            .await
            .expect("the anchor waiter hung")
            .unwrap()
            .expect("the anchor waiter gets the lock");
        anchor_guard.release().await.unwrap();
        let took = no_channel_left(&server, "no channel left subscribed after a reconnect").await;
        eprintln!("reconnect round {round}: channels empty {took:?} after the last release");
        empty_after.push(took);
    }
    print_empty_after(
        Figures::new(
            "faults_redis::resubscribing_after_a_reconnect_leaves_no_channel_behind",
            "subscriber reconnect (`CLIENT KILL TYPE pubsub`) while an acquisition that never asked for notifications is in flight (held by `CLIENT PAUSE 800 WRITE`)",
            "no channel stays subscribed once idle (S8, S14)",
        ),
        &empty_after,
        "the last release",
    );
}

/// A channel lingers (its queue emptied a moment ago, 500 ms grace) when a new call on the same
/// key arrives, whose first try gets the lock without ever asking for notifications (held up by
/// `CLIENT PAUSE WRITE` across the end of the grace): the channel must still be unsubscribed once
/// that call is gone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_channel_is_unsubscribed_after_a_queue_that_never_asked() {
    let server = RedisServer::start();
    let (locks, holder) = (
        manager(&server, Duration::from_secs(2)).await,
        server.manager().await,
    );
    let mut empty_after = Vec::new();
    for round in 0..3 {
        let key = LockKey::new("subs-linger").part(round);
        // A waiter subscribes, is woken by the release and takes the lock: its queue empties and
        // the channel lingers for the grace period.
        let held = holder
            .lock(&key, LockOptions::new().lease(LEASE_10S))
            .await
            .unwrap();
        let waiter = tokio::spawn({
            let (locks, key) = (locks.clone(), key.clone());
            async move {
                locks
                    .lock(&key, LockOptions::new().wait(Duration::from_secs(3)))
                    .await
            }
        });
        eventually(Duration::from_secs(2), "the waiter subscribed", || async {
            server.pubsub_channels().await.len() == 1
        })
        .await;
        held.release().await.unwrap();
        let guard = waiter.await.unwrap().expect("the waiter gets the lock");
        guard.release().await.unwrap();
        // Within the grace: a new call, held by the pause past the grace's end, then acquiring
        // on its first try.
        pause(&server, Duration::from_millis(900), PauseMode::Write).await;
        let guard = timeout(
            Duration::from_secs(5),
            locks.lock(&key, LockOptions::new().wait(Duration::from_secs(3))),
        )
        .await
        .expect("the call hung")
        .expect("a free lock is taken once the pause ends");
        guard.release().await.unwrap();
        let took = no_channel_left(&server, "no channel left subscribed after the grace").await;
        eprintln!("linger round {round}: channels empty {took:?} after the last call");
        empty_after.push(took);
    }
    print_empty_after(
        Figures::new(
            "faults_redis::a_lingering_channel_is_unsubscribed_after_a_queue_that_never_asked",
            "a channel lingering (500 ms grace) when a call on the same key arrives that takes the lock on its first try, held by `CLIENT PAUSE 900 WRITE` across the grace's end",
            "no channel stays subscribed once idle (S8, S14)",
        ),
        &empty_after,
        "the last call",
    );
}

const LEASE_10S: Duration = Duration::from_secs(10);
