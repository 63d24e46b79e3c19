//! `LockManager::shutdown`: a process that calls it and exits leaves no lock behind — another
//! instance takes its locks at once, not after the watchdog lease — and a release that was still
//! in flight in the background is completed before it returns.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockOptions};
use lock_guard_tests::{Direction, Proxy, RedisServer, Worker};
use tokio::time::Instant;

const WORKER: &str = env!("CARGO_BIN_EXE_lock_worker");

/// A worker holds a watchdog lock inside a running body and another one with a guard (watchdog
/// lease 30 s, the default), calls `shutdown(2s)` and exits. Both locks are free at once: another
/// manager takes each with `wait = 0`. The body's call ended with `ShutDown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_shuts_down_leaves_no_lock_behind() {
    let server = RedisServer::start();
    let mut worker = Worker::spawn(
        WORKER,
        &[
            format!("url={}", server.url()),
            "keys=svc-body,svc-guard".to_owned(),
            "mode=exit".to_owned(),
            "shutdown=1".to_owned(),
        ],
    );
    worker
        .line("ACQUIRED", Duration::from_secs(10))
        .await
        .expect("the worker took both locks");
    let report = worker
        .line("SHUTDOWN", Duration::from_secs(10))
        .await
        .expect("the worker shut its manager down");
    eprintln!("{report}");
    assert!(report.contains("Ok(Shutdown"), "{report}");
    assert!(report.contains("body=Err(ShutDown"), "{report}");
    assert!(report.contains("svc-body"), "{report}");
    worker.finish(Duration::from_secs(5)).await;
    let exited = Instant::now();
    let locks = server.manager().await;
    for name in ["svc-body", "svc-guard"] {
        let key = LockKey::new("worker").part(name);
        let taken = locks
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await;
        assert!(
            taken.is_ok(),
            "{name} still held {:?} after the worker exited: {taken:?}",
            exited.elapsed()
        );
    }
}

/// A guard dropped while Redis answers slowly (200 ms each way through a proxy): its release goes
/// on in the background. `shutdown` returns only once it is done — the key is gone right after —
/// and the manager takes no new lock afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_a_release_in_flight() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let locks = lock_guard::LockManager::builder()
        .url(&proxy.url())
        .build()
        .await
        .unwrap();
    let key = LockKey::new("shutdown").part("in-flight");
    let redis_key = locks.redis_key(&key);
    let guard = locks
        .lock(&key, LockOptions::new().watchdog())
        .await
        .unwrap();
    proxy.set_latency(Direction::Up, Duration::from_millis(200));
    drop(guard);
    let started = Instant::now();
    let done = locks.shutdown(Duration::from_secs(5)).await;
    let took = started.elapsed();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&redis_key)
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    eprintln!("shutdown took {took:?}: {done:?}");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(
        exists, 0,
        "the lock is still in Redis after shutdown returned"
    );
    let after = locks
        .lock(&LockKey::new("shutdown").part("new"), LockOptions::new())
        .await;
    assert!(
        matches!(after, Err(LockError::ShutDown { .. })),
        "{after:?}"
    );
}
