//! Backend failures: a Redis that is down, paused or unreachable yields `Backend` within the
//! command timeout — never a hang — and an exhausted pool yields an error, not a deadlock.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisServer, eventually};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
/// Every failing call must come back well within this; a hang shows as this timeout expiring.
const NEVER_A_HANG: Duration = Duration::from_secs(4);
/// How long a failure may take: a checkout, a connect and a command, each bounded by the timeout.
const BOUNDED: Duration = Duration::from_millis(2000);

/// Scheduling allowance on a shared 2-core machine.
const SCHEDULING: Duration = Duration::from_millis(100);

/// A body for calls that must fail before it runs.
async fn never_runs() -> Result<(), LockError> {
    panic!("the body ran without the lock")
}

async fn manager(server: &RedisServer) -> LockManager {
    server
        .builder()
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .await
        .unwrap()
}

/// Runs `call`, which must fail with `Backend` within [`BOUNDED`]; returns the error.
async fn backend_error<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, LockError>>,
) -> LockError {
    let start = Instant::now();
    let result = timeout(NEVER_A_HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: hung for {NEVER_A_HANG:?}"));
    let took = start.elapsed();
    let err = result.expect_err(&format!("{what}: must fail"));
    eprintln!("{what}: {err} (after {took:?})");
    assert!(err.is_backend(), "{what}: expected Backend, got {err:?}");
    assert!(took < BOUNDED, "{what}: failed only after {took:?}");
    err
}

/// Redis killed: taking, running and releasing all fail with `Backend`, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_gives_backend_errors() {
    let mut server = RedisServer::start();
    let locks = manager(&server).await;
    let key = LockKey::new("failures").part("killed");
    let held = locks.lock(&key, LockOptions::new()).await.unwrap();
    server.kill();

    backend_error("release on a killed redis", held.release()).await;
    backend_error(
        "lock on a killed redis",
        locks.lock(&key, LockOptions::new()),
    )
    .await;
    let err = backend_error(
        "run on a killed redis",
        locks.run(&key, LockOptions::new(), never_runs()),
    )
    .await;
    assert_eq!(
        err.key(),
        Some(locks.redis_key(&key).as_str()),
        "the error names the key"
    );
    let err = backend_error(
        "connecting to a killed redis",
        server.builder().command_timeout(COMMAND_TIMEOUT).build(),
    )
    .await;
    assert_eq!(
        err.key(),
        None,
        "a connection failure concerns no lock: {err}"
    );
}

/// Redis paused (`CLIENT PAUSE 5000 ALL`): every call times out with `Backend` within the
/// command timeout, long before the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_gives_backend_timeouts() {
    let server = RedisServer::start();
    let locks = manager(&server).await;
    let key = LockKey::new("failures").part("paused");
    let held = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    server.pause(Duration::from_secs(5)).await;

    let err = backend_error(
        "lock on a paused redis",
        locks.lock(&LockKey::new("failures").part("other"), LockOptions::new()),
    )
    .await;
    assert!(err.is_timeout(), "expected a timeout: {err:?}");
    let err = backend_error("release on a paused redis", held.release()).await;
    assert!(err.is_timeout(), "expected a timeout: {err:?}");
    let err = backend_error(
        "run on a paused redis",
        locks.run(&key, LockOptions::new(), never_runs()),
    )
    .await;
    assert!(err.is_timeout(), "expected a timeout: {err:?}");
    let err = backend_error(
        "connecting to a paused redis",
        server.builder().command_timeout(COMMAND_TIMEOUT).build(),
    )
    .await;
    assert!(err.is_timeout(), "expected a timeout: {err:?}");
    assert_eq!(
        err.key(),
        None,
        "a connection failure concerns no lock: {err}"
    );
}

/// The body succeeds but its release cannot reach Redis (paused during the body): the body's
/// result still comes back, in bounded time; the lease frees the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_release_keeps_the_body_result() {
    let server = RedisServer::start();
    let locks = manager(&server).await;
    let key = LockKey::new("failures").part("release");
    let start = Instant::now();
    let call = locks.run(&key, LockOptions::new(), async {
        server.pause(Duration::from_secs(5)).await;
        Ok::<_, LockError>(7)
    });
    let result = timeout(NEVER_A_HANG, call)
        .await
        .expect("the call hung on its release");
    assert_eq!(result.unwrap(), 7);
    assert!(start.elapsed() < BOUNDED, "took {:?}", start.elapsed());
}

/// Redis restarts between two calls: the next call runs on a fresh connection instead of failing
/// on the dead pooled one — also when several pooled connections died at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_calls_is_invisible() {
    let mut server = RedisServer::start();
    let locks = manager(&server).await;
    let key = LockKey::new("failures").part("restart");
    // Eight calls at once, so the pool holds several connections.
    let mut set = JoinSet::new();
    for i in 0..8 {
        let locks = locks.clone();
        set.spawn(async move {
            let key = LockKey::new("failures").part(i);
            locks
                .run(&key, LockOptions::new(), async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, LockError>(())
                })
                .await
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap().unwrap();
    }
    server.restart();
    for round in 0..3 {
        let guard = locks.lock(&key, LockOptions::new()).await;
        let guard = guard.unwrap_or_else(|e| panic!("call {round} after the restart failed: {e}"));
        assert!(guard.release().await.unwrap());
    }
}

/// A pool of one connection and twelve calls against a paused Redis: each call fails in bounded
/// time (checkout or command timeout), none waits forever for the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_gives_errors_not_a_deadlock() {
    let server = RedisServer::start();
    let locks = server
        .builder()
        .command_timeout(COMMAND_TIMEOUT)
        .pool_size(1)
        .build()
        .await
        .unwrap();
    server.pause(Duration::from_secs(5)).await;
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..12 {
        let locks = locks.clone();
        set.spawn(async move {
            locks
                .lock(&LockKey::new("failures").part(i), LockOptions::new())
                .await
                .map(drop)
        });
    }
    let all = timeout(NEVER_A_HANG, async {
        let mut errors = Vec::new();
        while let Some(joined) = set.join_next().await {
            errors.push(
                joined
                    .unwrap()
                    .expect_err("a paused redis cannot grant a lock"),
            );
        }
        errors
    })
    .await
    .expect("the calls on an exhausted pool hung");
    eprintln!(
        "exhausted pool: 12 calls failed within {:?}",
        start.elapsed()
    );
    assert!(all.iter().all(LockError::is_backend), "{all:?}");
    assert!(start.elapsed() < BOUNDED, "took {:?}", start.elapsed());
}

/// A waiter whose Redis dies while it waits: the call ends by its `wait` (with an error), not
/// later, and the next call reports `Backend`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_on_a_dying_redis_ends_in_time() {
    let mut server = RedisServer::start();
    let holder = manager(&server).await;
    let waiter = manager(&server).await;
    let key = LockKey::new("failures").part("dying");
    let _held = holder
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    let wait = Duration::from_millis(1500);
    let start = Instant::now();
    let task = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key.clone());
        async move {
            waiter
                .lock(&key, LockOptions::new().wait(wait))
                .await
                .map(drop)
        }
    });
    eventually(Duration::from_secs(5), "the waiter queued", || async {
        waiter.metrics().waiters == 1
    })
    .await;
    server.kill();
    let result = timeout(NEVER_A_HANG, task)
        .await
        .expect("the waiter hung")
        .unwrap();
    let took = start.elapsed();
    eprintln!("waiter on a dying redis: {result:?} after {took:?}");
    let err = result.expect_err("no lock from a dead redis");
    assert!(err.is_backend() || err.is_not_acquired(), "{err:?}");
    // `wait` + one command timeout, plus scheduling.
    assert!(
        took <= wait + COMMAND_TIMEOUT + SCHEDULING,
        "ended only after {took:?} (wait {wait:?} + command timeout {COMMAND_TIMEOUT:?})"
    );
    backend_error(
        "lock after the waiter's redis died",
        waiter.lock(&key, LockOptions::new()),
    )
    .await;
    lock_guard_tests::faults::Figures::new(
        "failures::waiter_on_a_dying_redis_ends_in_time",
        "a waiter whose Redis dies",
        "ends by wait + one command timeout + 100 ms (S15)",
    )
    .ms("ended_after_ms", took)
    .measured(&format!(
        "ended after {} (wait {}, command timeout {})",
        lock_guard_tests::faults::ms(took),
        lock_guard_tests::faults::ms(wait),
        lock_guard_tests::faults::ms(COMMAND_TIMEOUT)
    ))
    .print();
}

/// Nothing listens on the port: `Backend` from the builder, quickly. A URL that cannot work is a
/// `Config` error, before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_urls_give_backend_errors_malformed_ones_config_errors() {
    let port = {
        let mut server = RedisServer::start();
        server.kill();
        server.port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let err = backend_error(
        "connecting to a closed port",
        LockManager::builder()
            .url(&url)
            .command_timeout(COMMAND_TIMEOUT)
            .build(),
    )
    .await;
    assert_eq!(
        err.key(),
        None,
        "a connection failure concerns no lock: {err}"
    );
    for url in [
        "not a url",
        "http://127.0.0.1:1",
        "redis://alice:secret@[::1",
    ] {
        let err = LockManager::redis(url).await.expect_err(url);
        assert!(matches!(err, LockError::Config { .. }), "{url}: {err:?}");
        assert!(!err.to_string().contains("secret"), "{url}: {err}");
    }
}
