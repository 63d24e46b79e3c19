//! The `metrics` feature, read through `metrics-util`'s `DebuggingRecorder` (installed once for
//! this test binary): every documented metric moves when its event happens, on Redis and in
//! memory, labelled by the lock's name and the deployment — never by key.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::RedisServer;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Every metric seen: (metric, name label, deployment label) → counter value, gauge value, or the
/// number of histogram samples. A snapshot drains what it reads (counters and gauges are swapped
/// to zero, histograms cleared), so the snapshots are summed here.
#[derive(Debug, Default)]
struct Seen(BTreeMap<(String, String, String), f64>);

fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        s
    })
}

impl Seen {
    fn update(&mut self) {
        for (key, _, _, value) in snapshotter().snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let label = |n: &str| {
                key.labels()
                    .find(|l| l.key() == n)
                    .map_or_else(String::new, |l| l.value().to_owned())
            };
            for l in key.labels() {
                assert!(
                    matches!(l.key(), "name" | "deployment"),
                    "unexpected label {l:?} on {}",
                    key.name()
                );
            }
            let id = (key.name().to_owned(), label("name"), label("deployment"));
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.0.entry(id).or_default() += n as f64;
                }
                (MetricKind::Gauge, DebugValue::Gauge(g)) => {
                    *self.0.entry(id).or_default() += g.into_inner();
                }
                (MetricKind::Histogram, DebugValue::Histogram(samples)) => {
                    *self.0.entry(id).or_default() += samples.len() as f64;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn get(&mut self, metric: &str, name: &str, deployment: &str) -> f64 {
        self.update();
        self.0
            .get(&(metric.to_owned(), name.to_owned(), deployment.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }
}

async fn scenario(locks: LockManager, other: LockManager, deployment: &str, seen: &mut Seen) {
    let opts = LockOptions::new().wait(Duration::from_secs(2));
    // Acquired ×3, each with a wait sample and (closure form) a hold sample.
    for part in 0..3 {
        locks
            .run(&LockKey::new("metered").part(part), opts, async {
                Ok::<_, LockError>(())
            })
            .await
            .unwrap();
    }
    assert_eq!(
        seen.get("lock_guard_acquired_total", "metered", deployment),
        3.0
    );
    assert_eq!(
        seen.get("lock_guard_wait_seconds", "metered", deployment),
        3.0
    );
    assert_eq!(
        seen.get("lock_guard_hold_seconds", "metered", deployment),
        3.0
    );

    // Not acquired.
    let key = LockKey::new("contended").part(42);
    let held = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(5)))
        .await
        .unwrap();
    let refused = other
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(refused.is_err_and(|e| e.is_not_acquired()));
    assert_eq!(
        seen.get("lock_guard_not_acquired_total", "contended", deployment),
        1.0
    );

    // A waiter (the local-waiters gauge shows it), then a hand-over with its gap.
    let waiter = {
        let (other, key) = (other.clone(), key.clone());
        tokio::spawn(async move {
            other
                .lock(&key, LockOptions::new().wait(Duration::from_secs(5)))
                .await
        })
    };
    lock_guard_tests::eventually(Duration::from_secs(3), "one local waiter", || {
        let v = seen.get("lock_guard_local_waiters", "contended", deployment);
        async move { v == 1.0 }
    })
    .await;
    held.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
    assert_eq!(
        seen.get("lock_guard_local_waiters", "contended", deployment),
        0.0
    );
    assert_eq!(
        seen.get("lock_guard_handovers_total", "contended", deployment),
        1.0
    );
    assert_eq!(
        seen.get("lock_guard_handover_gap_seconds", "contended", deployment),
        1.0
    );

    // Deadline.
    let late: Result<(), LockError> = locks
        .run(
            &LockKey::new("slow").part(1),
            LockOptions::new().timeout(Duration::from_millis(50)),
            std::future::pending(),
        )
        .await;
    assert!(matches!(late, Err(LockError::Deadline { .. })));
    assert_eq!(
        seen.get("lock_guard_deadline_total", "slow", deployment),
        1.0
    );

    // Lost: deleted behind a watchdog body's back.
    let key = LockKey::new("stolen").part(1);
    let body = {
        let (locks, key) = (locks.clone(), key.clone());
        tokio::spawn(async move {
            locks
                .run(
                    &key,
                    LockOptions::new().watchdog(),
                    std::future::pending::<Result<(), LockError>>(),
                )
                .await
        })
    };
    lock_guard_tests::eventually(Duration::from_secs(3), "the watchdog lock is held", || {
        let locks = locks.clone();
        let key = key.clone();
        async move { locks.inspect(&key).await.unwrap().held }
    })
    .await;
    assert!(other.force_unlock(&key).await.unwrap());
    let lost = tokio::time::timeout(Duration::from_secs(5), body)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(lost, Err(LockError::Lost { .. })), "{lost:?}");
    assert_eq!(seen.get("lock_guard_lost_total", "stolen", deployment), 1.0);
    assert_eq!(
        seen.0
            .keys()
            .filter(|(_, name, _)| name.contains("42"))
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_on_redis_and_in_memory() {
    snapshotter();
    let mut seen = Seen::default();
    let server = RedisServer::start();
    let short = |b: lock_guard::LockManagerBuilder| b.watchdog_lease(Duration::from_millis(600));
    let (a, b) = (
        short(server.builder()).build().await.unwrap(),
        short(server.builder()).build().await.unwrap(),
    );
    scenario(a, b, "redis", &mut seen).await;
    let memory = short(LockManager::builder().memory())
        .build()
        .await
        .unwrap();
    scenario(memory.clone(), memory, "memory", &mut seen).await;

    // A backend error.
    let dead = LockManager::builder()
        .url(&server.url())
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    drop(server);
    let failed = dead
        .lock(&LockKey::new("down").part(1), LockOptions::new())
        .await;
    assert!(failed.is_err_and(|e| e.is_backend()));
    assert_eq!(
        seen.get("lock_guard_backend_errors_total", "down", "redis"),
        1.0
    );
    eprintln!("{:#?}", seen.0);
}
