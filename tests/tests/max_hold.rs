//! `max_hold`: a watchdog lock whose body never ends is held no longer than its bound. The body is
//! dropped with `MaxHold`, the lock is free at once for others, renewals never ask Redis to keep
//! it past the bound, and a holder that freezes leaves it to expire by the bound, not the watchdog
//! lease.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockOptions};
use lock_guard_tests::{RedisServer, Worker, backend_tests};
use tokio::time::{Instant, sleep};

const WATCHDOG_LEASE: Duration = Duration::from_millis(600);
const MAX_HOLD: Duration = Duration::from_millis(1500);
/// The drift allowance of the watchdog lease (1 % + 2 ms), millisecond rounding, and the renewal's
/// transit to Redis (which sets the expiry when the renewal arrives) on a loaded machine.
const SLACK_MS: i64 = 6 + 2 + 1 + 50;
const WORKER: &str = env!("CARGO_BIN_EXE_lock_worker");

backend_tests! {
    /// A watchdog body that never ends: the call returns `MaxHold` after `max_hold` (not before),
    /// nobody else gets the lock meanwhile, on Redis the lock's PTTL never reaches past the bound,
    /// and once the call has returned the lock is free.
    async fn a_stuck_watchdog_body_ends_at_max_hold(backend) {
        backend.configure(|b| b.watchdog_lease(WATCHDOG_LEASE));
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("max-hold").part("stuck");
        let redis_key = locks.redis_key(&key);
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let holder = {
            let (locks, key) = (locks.clone(), key.clone());
            tokio::spawn(async move {
                let options = LockOptions::new().watchdog().max_hold(MAX_HOLD);
                let result: Result<(), LockError> = locks
                    .run(&key, options, async move {
                        let _ = started_tx.send(Instant::now());
                        std::future::pending::<()>().await;
                        Ok(())
                    })
                    .await;
                (result, Instant::now())
            })
        };
        let body_start = tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .expect("the body started")
            .unwrap();
        let hold_until = body_start + MAX_HOLD;
        let mut probes = 0;
        while !holder.is_finished() {
            if let Some(server) = backend.server() {
                let mut connection = server.connection().await;
                let before = Instant::now();
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&redis_key)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                let left = hold_until.saturating_duration_since(before).as_millis() as i64;
                assert!(
                    ttl <= left + SLACK_MS,
                    "PTTL {ttl} ms with {left} ms left of max_hold: the lock outlives its bound"
                );
            }
            let probe_began = Instant::now();
            let probe = other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
            if holder.is_finished() || probe_began + Duration::from_millis(20) >= hold_until {
                // At the bound the lock frees itself, before the holder's call has returned.
                break;
            }
            assert!(
                probe.as_ref().is_err_and(LockError::is_not_acquired),
                "another instance took the lock {:?} into a {MAX_HOLD:?} hold: {probe:?}",
                body_start.elapsed()
            );
            probes += 1;
            sleep(Duration::from_millis(40)).await;
        }
        let (result, returned) = holder.await.unwrap();
        match result {
            Err(LockError::MaxHold { key: k, max_hold }) => {
                assert_eq!(k, redis_key);
                assert_eq!(max_hold, MAX_HOLD);
            }
            other => panic!("expected MaxHold, got {other:?}"),
        }
        let held = returned - body_start;
        eprintln!("{}: returned after {held:?} ({probes} probes)", backend.name());
        assert!(held >= MAX_HOLD - Duration::from_millis(5), "ended early: {held:?}");
        assert!(held < MAX_HOLD * 3, "ended {held:?} after the body started");
        assert!(probes >= 10, "only {probes} probes while the body ran");
        let free = other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(free.is_ok(), "the lock is free after MaxHold: {free:?}");
    }

    /// A body that ends before `max_hold` is unaffected, and a `timeout` that comes first still
    /// ends the body with `Deadline`.
    async fn max_hold_leaves_shorter_bodies_alone(backend) {
        backend.configure(|b| b.watchdog_lease(WATCHDOG_LEASE));
        let locks = backend.manager().await;
        let key = LockKey::new("max-hold").part("short");
        let options = LockOptions::new().watchdog().max_hold(MAX_HOLD);
        let done: Result<u32, LockError> = locks
            .run(&key, options, async {
                sleep(WATCHDOG_LEASE).await;
                Ok(7)
            })
            .await;
        assert_eq!(done.unwrap(), 7);
        let timed_out: Result<(), LockError> = locks
            .run(&key, options.timeout(Duration::from_millis(300)), std::future::pending())
            .await;
        assert!(
            matches!(timed_out, Err(LockError::Deadline { .. })),
            "{timed_out:?}"
        );
    }
}

/// A worker process holds a watchdog lock (default 30 s watchdog lease) with `max_hold = 1s`, and
/// is frozen with SIGSTOP as soon as it has it: nothing renews, nothing releases. The lock frees
/// itself by the bound, so another instance gets it within about a second — not after 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_frees_the_lock_by_max_hold() {
    let server = RedisServer::start();
    let max_hold = Duration::from_secs(1);
    let mut holder = Worker::spawn(
        WORKER,
        &[
            format!("url={}", server.url()),
            "keys=frozen-max-hold".to_owned(),
            "mode=run-write".to_owned(),
            "watchdog=1".to_owned(),
            format!("max_hold_ms={}", max_hold.as_millis()),
            "body_ms=60000".to_owned(),
        ],
    );
    holder
        .line("ACQUIRED", Duration::from_secs(10))
        .await
        .expect("the worker took the lock");
    holder.signal("STOP");
    let frozen = Instant::now();
    let locks = server.manager().await;
    let key = LockKey::new("worker").part("frozen-max-hold");
    let taken = locks
        .lock(&key, LockOptions::new().wait(Duration::from_secs(40)))
        .await;
    let after = frozen.elapsed();
    holder.signal("CONT");
    holder.signal("KILL");
    eprintln!("taken over {after:?} after the holder froze (max_hold {max_hold:?})");
    assert!(taken.is_ok(), "{taken:?}");
    assert!(
        after < max_hold + Duration::from_secs(2),
        "the frozen holder's lock lasted {after:?}, past its max_hold of {max_hold:?}"
    );
}
