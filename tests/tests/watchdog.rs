//! The watchdog (S10): a body three times the lease keeps the lock; a lock deleted behind its back
//! is `Lost` and the body is dropped; renewal stops when the body ends.
//!
//! Redis only: the memory backend's watchdog lease is fixed at 30 s (not configurable), which
//! would make these tests take minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::RedisServer;
use tokio::time::{Instant, sleep, sleep_until};

const WATCHDOG_LEASE: Duration = Duration::from_millis(600);

async fn watchdog_manager(server: &RedisServer) -> LockManager {
    server
        .builder()
        .watchdog_lease(WATCHDOG_LEASE)
        .build()
        .await
        .unwrap()
}

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut server.connection().await)
        .await
        .unwrap()
}

/// A body of 1.8 s under a 600 ms watchdog lease: all along, nobody else can take the lock and its
/// TTL stays within the watchdog lease; the body's value comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_keeps_the_lock_through_a_long_body() {
    let server = RedisServer::start();
    let locks = watchdog_manager(&server).await;
    let other = server.manager().await;
    let key = LockKey::new("watchdog").part("long-body");
    let redis_key = locks.redis_key(&key);
    let body_len = WATCHDOG_LEASE * 3;

    let holder = tokio::spawn({
        let (locks, key) = (locks.clone(), key.clone());
        async move {
            locks
                .run(&key, LockOptions::new().watchdog(), async {
                    sleep(body_len).await;
                    Ok::<_, LockError>("done")
                })
                .await
        }
    });
    // Wait for the holder to have the lock, then probe it every 50 ms while the body runs.
    lock_guard_tests::eventually(
        Duration::from_secs(5),
        "the holder took the lock",
        || async { pttl(&server, &redis_key).await > 0 },
    )
    .await;
    let start = Instant::now();
    let mut probes = 0;
    while !holder.is_finished() {
        let ttl = pttl(&server, &redis_key).await;
        if holder.is_finished() {
            break;
        }
        assert!(
            ttl > 0 && ttl <= WATCHDOG_LEASE.as_millis() as i64,
            "PTTL {ttl} ms after {:?} of a watchdog lock",
            start.elapsed()
        );
        let probe = other
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await;
        if holder.is_finished() {
            break;
        }
        assert!(
            probe.as_ref().is_err_and(LockError::is_not_acquired),
            "another instance took the lock after {:?}: {probe:?}",
            start.elapsed()
        );
        probes += 1;
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holder.await.unwrap().unwrap(), "done");
    assert!(start.elapsed() >= body_len - Duration::from_millis(300));
    assert!(probes >= 10, "only {probes} probes while the body ran");
    let free = other
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(free.is_ok(), "the lock is free after the body: {free:?}");
}

/// The lock is deleted behind the holder's back: the next renewal finds it gone, the call
/// returns `Lost` within about a renewal period, and the body never finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_lock_is_lost_and_the_body_dropped() {
    let server = RedisServer::start();
    let locks = watchdog_manager(&server).await;
    let key = LockKey::new("watchdog").part("deleted");
    let redis_key = locks.redis_key(&key);
    let finished = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let holder = tokio::spawn({
        let (locks, key, finished) = (locks.clone(), key.clone(), finished.clone());
        async move {
            let result = locks
                .run(&key, LockOptions::new().watchdog(), async {
                    sleep(Duration::from_secs(3)).await;
                    finished.store(true, SeqCst);
                    Ok::<_, LockError>(())
                })
                .await;
            (result, Instant::now())
        }
    });
    lock_guard_tests::eventually(
        Duration::from_secs(5),
        "the holder took the lock",
        || async { pttl(&server, &redis_key).await > 0 },
    )
    .await;
    let deleted: u64 = redis::cmd("DEL")
        .arg(&redis_key)
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let deleted_at = Instant::now();

    let (result, returned_at) = holder.await.unwrap();
    match result {
        Err(LockError::Lost { key: k }) => assert_eq!(k, redis_key),
        other => panic!("expected Lost, got {other:?}"),
    }
    let noticed = returned_at - deleted_at;
    eprintln!(
        "watchdog: deletion noticed after {noticed:?} (renewal every {:?})",
        WATCHDOG_LEASE / 3
    );
    assert!(
        noticed < WATCHDOG_LEASE,
        "Lost only {noticed:?} after the deletion"
    );
    sleep_until(start + Duration::from_millis(3500)).await;
    assert!(
        !finished.load(SeqCst),
        "the body ran on after the lock was lost"
    );
}

/// A lock taken by someone else after it expired behind the watchdog's back (here: deleted, then
/// taken by another instance before the renewal) is `Lost` too, and the new owner keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_taken_by_another_owner_is_lost() {
    let server = RedisServer::start();
    let locks = watchdog_manager(&server).await;
    let other = server.manager().await;
    let key = LockKey::new("watchdog").part("taken");
    let redis_key = locks.redis_key(&key);
    let holder = tokio::spawn({
        let (locks, key) = (locks.clone(), key.clone());
        async move {
            locks
                .run(
                    &key,
                    LockOptions::new().watchdog(),
                    std::future::pending::<Result<(), LockError>>(),
                )
                .await
        }
    });
    lock_guard_tests::eventually(
        Duration::from_secs(5),
        "the holder took the lock",
        || async { pttl(&server, &redis_key).await > 0 },
    )
    .await;
    let _: u64 = redis::cmd("DEL")
        .arg(&redis_key)
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    let new_owner = other
        .lock(
            &key,
            LockOptions::new()
                .wait(Duration::ZERO)
                .lease(Duration::from_secs(10)),
        )
        .await
        .expect("the deleted lock is free");
    let result = tokio::time::timeout(Duration::from_secs(3), holder)
        .await
        .expect("Lost in time")
        .unwrap();
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    // The watchdog's end must not have released the new owner's lock.
    let ttl = pttl(&server, &redis_key).await;
    assert!(ttl > 5_000, "the new owner's lock was touched: PTTL {ttl}");
    assert!(new_owner.release().await.unwrap());
}

/// Renewal stops when the body ends, however it ends: no commands from the manager afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_stops_when_the_body_ends() {
    let server = RedisServer::start();
    let locks = watchdog_manager(&server).await;
    let key = LockKey::new("watchdog").part("stops");

    let ok = locks
        .run(&key, LockOptions::new().watchdog(), async {
            sleep(WATCHDOG_LEASE).await;
            Ok::<_, LockError>(())
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    #[derive(Debug)]
    struct BodyError;
    impl From<LockError> for BodyError {
        fn from(e: LockError) -> Self {
            panic!("no lock error expected: {e}")
        }
    }
    let failed: Result<(), BodyError> = locks
        .run(&key, LockOptions::new().watchdog(), async {
            sleep(WATCHDOG_LEASE / 2).await;
            Err(BodyError)
        })
        .await;
    assert!(failed.is_err());

    let after = locks.metrics().commands;
    // Three renewal periods with no lock held.
    sleep(WATCHDOG_LEASE).await;
    assert_eq!(
        locks.metrics().commands,
        after,
        "the watchdog renewed after its body ended"
    );
    let free = server
        .manager()
        .await
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(free.is_ok(), "{free:?}");
}

/// Redis restarts (without persistence) while a watchdog body runs: the next renewal finds the
/// lock gone, and the call returns `Lost` instead of running on unprotected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_a_watchdog_lock_is_lost() {
    let mut server = RedisServer::start();
    let locks = watchdog_manager(&server).await;
    let key = LockKey::new("watchdog").part("restart");
    let redis_key = locks.redis_key(&key);
    let holder = tokio::spawn({
        let (locks, key) = (locks.clone(), key.clone());
        async move {
            let never = std::future::pending::<Result<(), LockError>>();
            locks.run(&key, LockOptions::new().watchdog(), never).await
        }
    });
    lock_guard_tests::eventually(
        Duration::from_secs(5),
        "the holder took the lock",
        || async { pttl(&server, &redis_key).await > 0 },
    )
    .await;
    server.restart();
    let restarted_at = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(4), holder)
        .await
        .expect("the body ran on after the restart lost its lock")
        .unwrap();
    let took = restarted_at.elapsed();
    eprintln!("watchdog: restart noticed after {took:?}: {result:?}");
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    assert!(
        took < WATCHDOG_LEASE + Duration::from_millis(500),
        "noticed only after {took:?}"
    );
}

/// Redis dies while a watchdog body runs: renewals fail, and the body is dropped by the end of
/// the last granted lease at the latest — it never runs unprotected past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_redis_under_a_watchdog_lock_drops_the_body_by_the_lease_end() {
    let mut server = RedisServer::start();
    let locks = server
        .builder()
        .watchdog_lease(WATCHDOG_LEASE)
        .command_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let key = LockKey::new("watchdog").part("dead");
    let redis_key = locks.redis_key(&key);
    let finished = Arc::new(AtomicBool::new(false));
    let holder = tokio::spawn({
        let (locks, key, finished) = (locks.clone(), key.clone(), finished.clone());
        async move {
            let body = async {
                sleep(Duration::from_secs(3)).await;
                finished.store(true, SeqCst);
                Ok::<_, LockError>(())
            };
            locks.run(&key, LockOptions::new().watchdog(), body).await
        }
    });
    lock_guard_tests::eventually(
        Duration::from_secs(5),
        "the holder took the lock",
        || async { pttl(&server, &redis_key).await > 0 },
    )
    .await;
    server.kill();
    let killed_at = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(4), holder)
        .await
        .expect("the body ran on with its Redis dead")
        .unwrap();
    let took = killed_at.elapsed();
    eprintln!("watchdog: dead redis -> {result:?} after {took:?}");
    assert!(result.is_err(), "{result:?}");
    // The last successful renewal (at most a lease ago) granted at most WATCHDOG_LEASE.
    assert!(
        took <= WATCHDOG_LEASE + Duration::from_millis(100),
        "the body ran {took:?} after the kill"
    );
    assert!(!finished.load(SeqCst));
}
