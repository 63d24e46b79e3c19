//! Cancellation and panics: a dropped holder or a panicking body frees the lock within a
//! round trip, not at the lease end; a dropped waiter gives up its subscription and queue place.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisServer, backend_tests, eventually};
use tokio::time::Instant;

/// Holders take the lock with this lease: if the lease were what freed it, the tests would see it.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// How soon after a drop or panic another instance must have the lock.
const PROMPTLY: Duration = Duration::from_secs(1);

fn long() -> LockOptions {
    LockOptions::new()
        .lease(LONG_LEASE)
        .wait(Duration::from_secs(20))
}

/// Takes the lock on `other` (waiting up to 5 s) and returns how long that took.
async fn takeover(other: &LockManager, key: &LockKey) -> Duration {
    let start = Instant::now();
    let guard = other
        .lock(key, LockOptions::new().wait(Duration::from_secs(5)))
        .await
        .expect("the lock is freed well before its lease ends");
    let took = start.elapsed();
    guard.release().await.unwrap();
    took
}

/// Spawns a task that waits for `key` on `locks` (20 s), and waits until it is queued.
async fn queued_waiter(
    locks: &LockManager,
    key: &LockKey,
    queued: usize,
) -> tokio::task::JoinHandle<Instant> {
    let task = tokio::spawn({
        let (locks, key) = (locks.clone(), key.clone());
        async move {
            let guard = locks
                .lock(&key, long())
                .await
                .expect("the waiter gets the lock");
            let at = Instant::now();
            guard.release().await.unwrap();
            at
        }
    });
    eventually(Duration::from_secs(5), "the waiter queued", || async {
        locks.metrics().waiters == queued
    })
    .await;
    task
}

backend_tests! {
    /// A guard dropped without `release`: released by a spawned task, at once.
    async fn dropped_guard_releases_promptly(backend) {
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("cancel").part("dropped-guard");
        drop(locks.lock(&key, long()).await.unwrap());
        let took = takeover(&other, &key).await;
        eprintln!("{}: lock taken over {took:?} after the guard was dropped", backend.name());
        assert!(took < PROMPTLY, "taken over only after {took:?}");
    }

    /// A guarded call dropped while its body runs (here by a `timeout` around it).
    async fn dropped_call_releases_promptly(backend) {
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("cancel").part("dropped-call");
        let call = locks.run(&key, long(), std::future::pending::<Result<(), LockError>>());
        assert!(tokio::time::timeout(Duration::from_millis(300), call).await.is_err());
        let took = takeover(&other, &key).await;
        eprintln!("{}: lock taken over {took:?} after the call was dropped", backend.name());
        assert!(took < PROMPTLY, "taken over only after {took:?}");
    }

    /// A body that panics: the panic reaches the caller, and the lock is free at once.
    async fn panicking_body_releases_promptly(backend) {
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("cancel").part("panic");
        let task = tokio::spawn({
            let (locks, key) = (locks.clone(), key.clone());
            async move {
                locks
                    .run(&key, long(), async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        panic!("the body panics");
                        #[allow(unreachable_code)]
                        Ok::<(), LockError>(())
                    })
                    .await
            }
        });
        let panic = task.await.expect_err("the panic continues to unwind").into_panic();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"the body panics"));
        let took = takeover(&other, &key).await;
        eprintln!("{}: lock taken over {took:?} after the panic", backend.name());
        assert!(took < PROMPTLY, "taken over only after {took:?}");
    }

    /// A waiter dropped from the middle of the queue gives up its place: the one behind it gets
    /// the lock at the release, not later.
    async fn dropped_waiter_gives_up_its_queue_place(backend) {
        let holder = backend.manager().await;
        let waiters = backend.manager().await;
        let key = LockKey::new("cancel").part("queue-place");
        let held = holder.lock(&key, long()).await.unwrap();
        let first = queued_waiter(&waiters, &key, 1).await;
        let second = queued_waiter(&waiters, &key, 2).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        eventually(Duration::from_secs(2), "the dropped waiter left the queue", || async {
            waiters.metrics().waiters == 1
        })
        .await;
        let released_at = Instant::now();
        assert!(held.release().await.unwrap());
        let acquired_at = second.await.unwrap();
        assert!(acquired_at - released_at < PROMPTLY, "the next waiter got the lock only after {:?}", acquired_at - released_at);
    }

    /// Waiters dropped at the moment the lock is handed to them, 30 times over: none strands the
    /// lock (a grant to a cancelled waiter is released, not kept for the lease).
    async fn waiter_dropped_during_handoff_strands_nothing(backend) {
        let holder = backend.manager().await;
        let waiters = backend.manager().await;
        let other = backend.manager().await;
        let key = LockKey::new("cancel").part("handoff");
        for round in 0..30 {
            let held = holder.lock(&key, long()).await.unwrap();
            let waiter = queued_waiter(&waiters, &key, 1).await;
            // Release and cancel together; vary which comes first.
            if round % 2 == 0 {
                tokio::join!(async { held.release().await.unwrap() }, async { waiter.abort() });
            } else {
                waiter.abort();
                held.release().await.unwrap();
            }
            let _ = waiter.await;
            let took = takeover(&other, &key).await;
            assert!(took < PROMPTLY, "round {round}: the lock was stranded for {took:?}");
        }
    }

    /// A guard dropped where no runtime runs (a plain thread) does not panic; the lease frees it.
    async fn guard_dropped_outside_a_runtime_is_freed_by_the_lease(backend) {
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("cancel").part("no-runtime");
        let lease = Duration::from_millis(600);
        let guard = locks.lock(&key, LockOptions::new().lease(lease)).await.unwrap();
        let held_at = Instant::now();
        std::thread::spawn(move || drop(guard)).join().expect("dropping a guard outside a runtime must not panic");
        let taken = other.lock(&key, LockOptions::new().wait(Duration::from_secs(5))).await;
        drop(taken.expect("the lease frees the lock"));
        assert!(held_at.elapsed() < lease + Duration::from_millis(700));
    }
}

/// A dropped waiter leaves no subscription behind: `PUBSUB CHANNELS` empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waiter_leaves_no_subscription() {
    let server = RedisServer::start();
    let (holder, waiters) = (server.manager().await, server.manager().await);
    let key = LockKey::new("cancel").part("subscription");
    let channel = format!("{}:released", waiters.redis_key(&key));
    let _held = holder.lock(&key, long()).await.unwrap();

    let waiter = queued_waiter(&waiters, &key, 1).await;
    eventually(Duration::from_secs(5), "the waiter subscribed", || async {
        server.pubsub_channels().await == [channel.clone()]
    })
    .await;
    waiter.abort();
    let took = eventually(
        Duration::from_secs(2),
        "the subscription is given up",
        || async { server.pubsub_channels().await.is_empty() },
    )
    .await;
    eprintln!("dropped waiter: unsubscribed within {took:?}");
    assert_eq!(waiters.metrics().waiters, 0);
}
