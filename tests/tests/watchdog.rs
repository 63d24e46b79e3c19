//! The watchdog: a body three times the lease keeps the lock; a lock deleted or taken behind
//! its back is `Lost` and the body is dropped; renewal stops when the body ends; a Redis that
//! restarts or dies under a watchdog lock never leaves the body running unprotected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{Backend, RedisServer, backend_tests};
use tokio::sync::oneshot;
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

/// A backend whose managers take watchdog locks for [`WATCHDOG_LEASE`].
fn short_watchdog(backend: &mut Backend) {
    backend.configure(|b| b.watchdog_lease(WATCHDOG_LEASE));
}

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut server.connection().await)
        .await
        .unwrap()
}

/// Spawns `locks.run(key, watchdog, body)`; returns its handle once the body has started.
async fn spawn_watchdog_call<F>(
    locks: &LockManager,
    key: &LockKey,
    body: F,
) -> tokio::task::JoinHandle<(Result<(), LockError>, Instant)>
where
    F: Future<Output = Result<(), LockError>> + Send + 'static,
{
    let (started, has_started) = oneshot::channel();
    let (locks, key) = (locks.clone(), key.clone());
    let task = tokio::spawn(async move {
        let body = async move {
            let _ = started.send(());
            body.await
        };
        let result = locks.run(&key, LockOptions::new().watchdog(), body).await;
        (result, Instant::now())
    });
    tokio::time::timeout(Duration::from_secs(5), has_started)
        .await
        .expect("the watchdog call got the lock")
        .unwrap();
    task
}

backend_tests! {
    /// A body of 1.8 s under a 600 ms watchdog lease: all along, nobody else can take the lock
    /// (and on Redis its TTL stays within the watchdog lease); the body's value comes back.
    async fn watchdog_keeps_the_lock_through_a_long_body(backend) {
        short_watchdog(&mut backend);
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("watchdog").part("long-body");
        let redis_key = locks.redis_key(&key);
        let body_len = WATCHDOG_LEASE * 3;
        let start = Instant::now();
        let holder = spawn_watchdog_call(&locks, &key, sleep(body_len).then_ok()).await;
        let mut probes = 0;
        while !holder.is_finished() {
            let ttl = match backend.server() {
                Some(server) => Some(pttl(server, &redis_key).await),
                None => None,
            };
            let probe = other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
            if holder.is_finished() {
                break;
            }
            assert!(
                probe.as_ref().is_err_and(LockError::is_not_acquired),
                "another instance took the lock after {:?}: {probe:?}",
                start.elapsed()
            );
            if let Some(ttl) = ttl {
                assert!(
                    ttl > 0 && ttl <= WATCHDOG_LEASE.as_millis() as i64,
                    "PTTL {ttl} ms after {:?} of a watchdog lock",
                    start.elapsed()
                );
            }
            probes += 1;
            sleep(Duration::from_millis(50)).await;
        }
        let (result, _) = holder.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(start.elapsed() >= body_len);
        assert!(probes >= 10, "only {probes} probes while the body ran");
        let free = other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(free.is_ok(), "the lock is free after the body: {free:?}");
    }

    /// The lock is deleted behind the holder's back: the next renewal finds it gone, the call
    /// returns `Lost` within about a renewal period, and the body never finishes.
    async fn deleted_lock_is_lost_and_the_body_dropped(backend) {
        short_watchdog(&mut backend);
        let locks = backend.manager().await;
        let key = LockKey::new("watchdog").part("deleted");
        let finished = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let body = {
            let finished = finished.clone();
            async move {
                sleep(Duration::from_secs(3)).await;
                finished.store(true, SeqCst);
                Ok(())
            }
        };
        let holder = spawn_watchdog_call(&locks, &key, body).await;
        backend.delete_lock(&locks, &key).await;
        let deleted_at = Instant::now();

        let (result, returned_at) = holder.await.unwrap();
        match result {
            Err(LockError::Lost { key: k }) => assert_eq!(k, locks.redis_key(&key)),
            other => panic!("expected Lost, got {other:?}"),
        }
        let noticed = returned_at - deleted_at;
        eprintln!(
            "{}: deletion noticed after {noticed:?} (renewal every {:?})",
            backend.name(),
            WATCHDOG_LEASE / 3
        );
        assert!(noticed < WATCHDOG_LEASE, "Lost only {noticed:?} after the deletion");
        sleep_until(start + Duration::from_millis(3500)).await;
        assert!(!finished.load(SeqCst), "the body ran on after the lock was lost");
    }

    /// Deleted and at once taken by another instance: `Lost` too, and the watchdog's end leaves
    /// the new owner's lock alone.
    async fn lock_taken_by_another_owner_is_lost(backend) {
        short_watchdog(&mut backend);
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("watchdog").part("taken");
        let holder = spawn_watchdog_call(&locks, &key, std::future::pending()).await;
        backend.delete_lock(&locks, &key).await;
        let new_owner = other
            .lock(&key, LockOptions::new().wait(Duration::ZERO).lease(Duration::from_secs(10)))
            .await
            .expect("the deleted lock is free");
        let (result, _) = tokio::time::timeout(Duration::from_secs(3), holder)
            .await
            .expect("Lost in time")
            .unwrap();
        assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
        let probe = locks.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(probe.as_ref().is_err_and(LockError::is_not_acquired), "the new owner lost the lock: {probe:?}");
        if let Some(server) = backend.server() {
            let ttl = pttl(server, &locks.redis_key(&key)).await;
            assert!(ttl > 5_000, "the new owner's lease was touched: PTTL {ttl}");
        }
        assert!(new_owner.release().await.unwrap());
    }

    /// Renewal stops when the body ends, however it ends: the lock is free at once, and on Redis
    /// the manager sends nothing more.
    async fn renewal_stops_when_the_body_ends(backend) {
        short_watchdog(&mut backend);
        let (locks, other) = (backend.manager().await, backend.manager().await);
        let key = LockKey::new("watchdog").part("stops");
        let ok = locks
            .run(&key, LockOptions::new().watchdog(), sleep(WATCHDOG_LEASE).then_ok())
            .await;
        assert!(ok.is_ok(), "{ok:?}");
        let failed: Result<(), BodyError> = locks
            .run(&key, LockOptions::new().watchdog(), async {
                sleep(WATCHDOG_LEASE / 2).await;
                Err(BodyError)
            })
            .await;
        assert!(failed.is_err());
        let free = other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(free.is_ok(), "the lock is free after the body: {free:?}");
        drop(free);

        let after = locks.metrics().commands;
        // Three renewal periods with no lock held.
        sleep(WATCHDOG_LEASE).await;
        assert_eq!(locks.metrics().commands, after, "the watchdog renewed after its body ended");
    }
}

#[derive(Debug)]
struct BodyError;

impl From<LockError> for BodyError {
    fn from(e: LockError) -> Self {
        panic!("no lock error expected: {e}")
    }
}

/// `future.then_ok()`: the future's completion as `Ok(())`, for bodies that just take time.
trait ThenOk: Future<Output = ()> + Sized {
    fn then_ok(self) -> impl Future<Output = Result<(), LockError>> + Send
    where
        Self: Send,
    {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: Future<Output = ()>> ThenOk for F {}

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
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    // The last successful renewal (at most a lease ago) granted at most WATCHDOG_LEASE.
    assert!(
        took <= WATCHDOG_LEASE + Duration::from_millis(100),
        "the body ran {took:?} after the kill"
    );
    assert!(!finished.load(SeqCst));
}

/// Redis stalls writes (`CLIENT PAUSE 2000 WRITE`, scripts included) 250 ms into a watchdog body
/// (watchdog lease 600 ms, command timeout 1 s): the renewal in flight cannot extend the lease, so
/// the body is dropped by the last validity Redis confirmed — at most a lease after the pause
/// began (the last renewal that succeeded was sent before it) — not when that renewal times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_renewals_drop_the_body_by_the_last_confirmed_validity() {
    let server = RedisServer::start();
    let locks = server
        .builder()
        .watchdog_lease(WATCHDOG_LEASE)
        .command_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let key = LockKey::new("watchdog").part("stalled-renewals");
    let dropped = Arc::new(std::sync::Mutex::new(None::<Instant>));
    struct DropClock(Arc<std::sync::Mutex<Option<Instant>>>);
    impl Drop for DropClock {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }
    let paused_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let result = locks
        .run(&key, LockOptions::new().watchdog(), {
            let (dropped, paused_at, server) = (dropped.clone(), paused_at.clone(), &server);
            async move {
                let _clock = DropClock(dropped);
                sleep(Duration::from_millis(250)).await;
                // Everything the manager sent before this reply was confirmed is not paused.
                lock_guard_tests::faults::pause(
                    server,
                    Duration::from_millis(2000),
                    lock_guard_tests::faults::PauseMode::Write,
                )
                .await;
                *paused_at.lock().unwrap() = Some(Instant::now());
                sleep(Duration::from_secs(3)).await;
                Ok::<_, LockError>(())
            }
        })
        .await;
    let paused_at = paused_at.lock().unwrap().expect("the pause was set");
    let dropped = dropped.lock().unwrap().expect("the body was dropped");
    let after = dropped.saturating_duration_since(paused_at);
    eprintln!(
        "watchdog under CLIENT PAUSE WRITE: body dropped {after:?} after the pause began: {result:?}"
    );
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    assert!(
        after <= WATCHDOG_LEASE + Duration::from_millis(50),
        "the body ran {after:?} after the pause began; the last confirmed lease ended by {WATCHDOG_LEASE:?}"
    );
    lock_guard_tests::faults::Figures::new(
        "watchdog::stalled_renewals_drop_the_body_by_the_last_confirmed_validity",
        "`CLIENT PAUSE 2000 WRITE` at 250 ms of a watchdog body (lease 600 ms, command timeout 1 s)",
        "body dropped by the last validity Redis confirmed (≤ 600 ms after the pause began) (S7, S10)",
    )
    .ms("dropped_after_pause_ms", after)
    .measured(&format!(
        "dropped {} after the pause began (`Lost`)",
        lock_guard_tests::faults::ms(after)
    ))
    .print();
}
