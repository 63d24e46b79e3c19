//! `#[concurrency_guard]` end to end: functions written with the attribute, run against a real
//! `redis-server` (and the memory backend), behave as the runtime's closure form does: mutual
//! exclusion across managers, lock failures converted into the user's error,
//! `?` and early `return` releasing the lock, reentrancy, fencing tokens, deadlines, the default
//! manager.

use std::num::ParseIntError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions, concurrency_guard, fencing_token};
use lock_guard_tests::{RedisServer, backend_tests};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("empty input")]
    Empty,
    #[error(transparent)]
    Parse(#[from] ParseIntError),
}

/// Whether another owner (a freshly spawned task) could take `key` at once.
async fn free_for_another_task(locks: &LockManager, key: &LockKey) -> bool {
    let (locks, key) = (locks.clone(), key.clone());
    tokio::spawn(async move {
        match locks
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await
        {
            Ok(guard) => {
                guard.release().await.unwrap();
                true
            }
            Err(e) if e.is_not_acquired() => false,
            Err(e) => panic!("unexpected {e}"),
        }
    })
    .await
    .unwrap()
}

// ---- exclusion: a non-atomic read-modify-write, many tasks on two managers ----

#[derive(Default)]
struct Shared {
    count: AtomicU64,
    inside: AtomicU64,
    max_inside: AtomicU64,
}

impl Shared {
    /// Reads, yields for a millisecond, writes back: loses updates unless callers are exclusive.
    async fn racy_increment(&self) {
        let inside = self.inside.fetch_add(1, SeqCst) + 1;
        self.max_inside.fetch_max(inside, SeqCst);
        let value = self.count.load(SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.count.store(value + 1, SeqCst);
        self.inside.fetch_sub(1, SeqCst);
    }
}

/// One service instance: its own manager, the shared state.
struct Instance {
    locks: LockManager,
    shared: Arc<Shared>,
}

impl Instance {
    #[concurrency_guard(name = "macro-count", wait = 30s, lease = 5s, locks = self.locks)]
    async fn increment(&self, account: u32) -> Result<(), LockError> {
        self.shared.racy_increment().await;
        Ok(())
    }

    async fn increment_unguarded(&self, account: u32) -> Result<(), LockError> {
        let _ = account;
        self.shared.racy_increment().await;
        Ok(())
    }
}

const TASKS_PER_INSTANCE: usize = 20;
const ROUNDS: usize = 5;

/// Runs `TASKS_PER_INSTANCE` tasks on each instance, each calling `increment` `ROUNDS` times on
/// account 1.
async fn hammer(instances: &[Arc<Instance>], guarded: bool) {
    let mut tasks = Vec::new();
    for instance in instances {
        for _ in 0..TASKS_PER_INSTANCE {
            let instance = instance.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    match guarded {
                        true => instance.increment(1).await.unwrap(),
                        false => instance.increment_unguarded(1).await.unwrap(),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

backend_tests! {
    /// Two managers (two service instances), one key, 200 guarded read-modify-writes: the count
    /// is exact and no two bodies ever overlap. The same load without the attribute loses updates,
    /// so the assertion can fail.
    async fn exact_count_across_two_managers(backend) {
        let shared = Arc::new(Shared::default());
        let instances = [
            Arc::new(Instance { locks: backend.manager().await, shared: shared.clone() }),
            Arc::new(Instance { locks: backend.manager().await, shared: shared.clone() }),
        ];

        hammer(&instances, false).await;
        assert!(
            shared.max_inside.load(SeqCst) > 1,
            "the unguarded control run never overlapped: this test could not catch a broken lock"
        );

        shared.count.store(0, SeqCst);
        shared.max_inside.store(0, SeqCst);
        hammer(&instances, true).await;
        assert_eq!(shared.max_inside.load(SeqCst), 1, "two guarded bodies overlapped");
        assert_eq!(shared.count.load(SeqCst), (2 * TASKS_PER_INSTANCE * ROUNDS) as u64);
        let key = LockKey::new("macro-count").part(1);
        assert!(free_for_another_task(&instances[0].locks, &key).await, "the lock outlived the calls");
    }

    /// `return Err(..)` and `?` leave the body with the user's error, and the lock is released
    /// after them as after `Ok`.
    async fn early_return_and_question_mark_release_the_lock(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("macro-early").part(7);
        assert!(matches!(parse_under_lock(7, "", &locks).await, Err(AppError::Empty)));
        assert!(free_for_another_task(&locks, &key).await, "held after an early return");
        assert!(matches!(parse_under_lock(7, "x", &locks).await, Err(AppError::Parse(_))));
        assert!(free_for_another_task(&locks, &key).await, "held after `?`");
        assert_eq!(parse_under_lock(7, "35", &locks).await.unwrap(), 42);
        assert!(free_for_another_task(&locks, &key).await, "held after Ok");
    }

    /// A lock held elsewhere with `wait = 0s`: the call returns the user's error wrapping
    /// `NotAcquired` for the right key, and the body does not run.
    async fn lock_failure_comes_back_as_the_users_error(backend) {
        let locks = backend.manager().await;
        let other = backend.manager().await;
        let runs = AtomicU64::new(0);
        let guard = other
            .lock(&LockKey::new("macro-busy").part(3), LockOptions::new())
            .await
            .unwrap();
        match busy(3, &locks, &runs).await {
            Err(AppError::Lock(e)) => {
                assert!(e.is_not_acquired(), "{e}");
                assert_eq!(e.key(), Some(locks.redis_key(&LockKey::new("macro-busy").part(3)).as_str()));
            }
            other => panic!("expected NotAcquired, got {other:?}"),
        }
        assert_eq!(runs.load(SeqCst), 0, "the body ran without the lock");
        guard.release().await.unwrap();
        busy(3, &locks, &runs).await.unwrap();
        assert_eq!(runs.load(SeqCst), 1);
    }

    /// `key = (a, b)` with characters that structure keys, and the lock seen from Redis under
    /// the documented key while the body runs.
    async fn tuple_key_is_encoded_and_held(backend) {
        let locks = backend.manager().await;
        let expected = LockKey::new("macro-tuple").part("acme:eu").part(7);
        assert_eq!(locks.redis_key(&expected), "lock:{macro-tuple:acme%3Aeu:7}");
        let seen = tuple_key("acme:eu", 7, &locks, backend.server()).await.unwrap();
        if backend.server().is_some() {
            assert!(seen, "the Redis key was not there while the body ran");
        }
        assert!(free_for_another_task(&locks, &expected).await);
    }

    /// `key = lock_guard::unordered(a, b)`: `like(9, 7)` waits for `like(7, 9)`.
    async fn unordered_key_takes_the_same_lock(backend) {
        let locks = backend.manager().await;
        let other = locks.clone();
        let blocked = like(7, 9, &locks, async move {
            // a different task is a different owner
            tokio::spawn(async move { like(9, 7, &other, async {}).await }).await.unwrap()
        })
        .await
        .unwrap();
        match blocked {
            Err(e) => assert!(e.is_not_acquired(), "{e}"),
            Ok(()) => panic!("like(9, 7) ran while like(7, 9) held the lock"),
        }
        like(9, 7, &locks, async {}).await.unwrap();
    }

    /// A guarded call inside a guarded body, same task, manager and key, runs at once (its
    /// `wait = 0s` would fail otherwise) under the outer acquisition's fencing token.
    async fn nested_guarded_call_is_reentrant(backend) {
        let locks = backend.manager().await;
        let (outer_token, inner_token) = outer(5, &locks).await.unwrap();
        assert_eq!(outer_token, inner_token);
        assert!(free_for_another_task(&locks, &LockKey::new("macro-reentrant").part(5)).await);
    }

    /// `fencing_token()` is `Some` inside a guarded body, `None` outside, and strictly increases
    /// from one acquisition to the next, whichever manager takes the lock.
    async fn fencing_token_inside_the_body(backend) {
        let managers = [backend.manager().await, backend.manager().await];
        assert_eq!(fencing_token(), None);
        let mut last = 0;
        for round in 0..10 {
            let token = token_of(11, &managers[round % 2]).await.unwrap().expect("no token inside the body");
            assert!(token > last, "token {token} after {last}");
            last = token;
        }
        assert_eq!(fencing_token(), None);
    }

    /// `timeout = 200ms`: a body that overruns is dropped at its deadline, the call returns
    /// `Deadline`, and the lock is free right after.
    async fn timeout_drops_the_body(backend) {
        let locks = backend.manager().await;
        let start = Instant::now();
        let finished = AtomicU64::new(0);
        let result = slow(1, &locks, &finished).await;
        let took = start.elapsed();
        assert!(matches!(&result, Err(AppError::Lock(LockError::Deadline { .. }))), "{result:?}");
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(finished.load(SeqCst), 0, "the body ran past its deadline");
        assert!(free_for_another_task(&locks, &LockKey::new("macro-slow").part(1)).await);
    }
}

#[concurrency_guard(name = "macro-early", wait = 0s, lease = 5s, locks = locks)]
async fn parse_under_lock(id: u32, text: &str, locks: &LockManager) -> Result<u32, AppError> {
    if text.is_empty() {
        return Err(AppError::Empty);
    }
    let n: u32 = text.parse()?;
    Ok(n + id)
}

#[concurrency_guard(name = "macro-busy", wait = 0s, locks = locks)]
async fn busy(id: u32, locks: &LockManager, runs: &AtomicU64) -> Result<(), AppError> {
    runs.fetch_add(1, SeqCst);
    Ok(())
}

/// Returns whether the lock's key existed in Redis while the body ran (`false` without a server).
#[concurrency_guard(name = "macro-tuple", key = (tenant, user), locks = locks)]
async fn tuple_key(
    tenant: &str,
    user: u32,
    locks: &LockManager,
    server: Option<&RedisServer>,
) -> Result<bool, LockError> {
    let Some(server) = server else {
        return Ok(false);
    };
    let mut con = server.connection().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("lock:{macro-tuple:acme%3Aeu:7}")
        .query_async(&mut con)
        .await
        .unwrap();
    Ok(exists)
}

/// Runs `during` while holding the `(a, b)` lock, and returns its result.
#[concurrency_guard(name = "macro-like", key = lock_guard::unordered(a, b), wait = 0s, locks = locks)]
async fn like<F, T>(a: u32, b: u32, locks: &LockManager, during: F) -> Result<T, LockError>
where
    F: Future<Output = T> + Send,
{
    Ok(during.await)
}

#[concurrency_guard(name = "macro-reentrant", wait = 5s, locks = locks)]
async fn outer(id: u32, locks: &LockManager) -> Result<(u64, u64), LockError> {
    let token = fencing_token().expect("a token inside the body");
    let inner = inner(id, locks).await?;
    Ok((token, inner))
}

#[concurrency_guard(name = "macro-reentrant", wait = 0s, locks = locks)]
async fn inner(id: u32, locks: &LockManager) -> Result<u64, LockError> {
    Ok(fencing_token().expect("a token inside the nested body"))
}

#[concurrency_guard(name = "macro-token", locks = locks)]
async fn token_of(id: u32, locks: &LockManager) -> Result<Option<u64>, LockError> {
    Ok(fencing_token())
}

#[concurrency_guard(name = "macro-slow", lease = 3s, timeout = 200ms, locks = locks)]
async fn slow(id: u32, locks: &LockManager, finished: &AtomicU64) -> Result<(), AppError> {
    tokio::time::sleep(Duration::from_secs(10)).await;
    finished.fetch_add(1, SeqCst);
    Ok(())
}

// ---- Redis only ----

/// Holds the lock for `hold` under a watchdog lease.
#[concurrency_guard(name = "macro-watchdog", lease = watchdog, locks = locks)]
async fn watched(id: u32, locks: &LockManager, hold: Duration) -> Result<bool, LockError> {
    tokio::time::sleep(hold).await;
    Ok(free_for_another_task(locks, &LockKey::new("macro-watchdog").part(id)).await)
}

/// `lease = watchdog` through the attribute: with a 600 ms watchdog lease, a body that runs
/// 1.5 s keeps the lock the whole time (another owner cannot take it at the end of the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_lease_outlives_the_body() {
    let server = RedisServer::start();
    let locks = server
        .builder()
        .watchdog_lease(Duration::from_millis(600))
        .build()
        .await
        .unwrap();
    let free_at_end = watched(1, &locks, Duration::from_millis(1_500))
        .await
        .unwrap();
    assert!(!free_at_end, "the lock expired under a running body");
    assert!(free_for_another_task(&locks, &LockKey::new("macro-watchdog").part(1)).await);
}

/// The process default: without `locks = …` and before `set_default`, a guarded call returns
/// `NoDefault` and does not run its body; after `set_default`, it runs on that manager. (The only
/// test in this binary that touches the process default.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_manager_or_no_default() {
    let runs = AtomicU64::new(0);
    match on_default(1, &runs).await {
        Err(AppError::Lock(LockError::NoDefault)) => {}
        other => panic!("expected NoDefault, got {other:?}"),
    }
    assert_eq!(runs.load(SeqCst), 0);

    let server = RedisServer::start();
    let locks = server.manager().await;
    lock_guard::set_default(locks.clone());
    assert!(on_default(1, &runs).await.unwrap().is_some());
    assert_eq!(runs.load(SeqCst), 1);
    let commands = locks.metrics().commands;
    on_default(1, &runs).await.unwrap();
    assert!(
        locks.metrics().commands > commands,
        "the default manager was not used"
    );
}

#[concurrency_guard(name = "macro-default")]
async fn on_default(id: u32, runs: &AtomicU64) -> Result<Option<u64>, AppError> {
    runs.fetch_add(1, SeqCst);
    Ok(fencing_token())
}
