//! What the `metrics` feature costs per acquisition: lock + release in a loop, first with no
//! recorder installed (the facade's no-op), then with a recorder (`metrics-util`'s
//! `DebuggingRecorder`, which stores every sample), in memory (where the metrics are most of the
//! work) and on Redis, in the same run. Without the feature the calls do not exist.
//!
//! `cargo test --release -p lock-guard-tests --test metrics_cost -- --ignored --nocapture`

use std::time::Duration;

use lock_guard::{LockKey, LockManager, LockOptions};
use lock_guard_tests::RedisServer;
use tokio::time::Instant;

async fn per_acquisition(locks: &LockManager, n: u32) -> Duration {
    let key = LockKey::new("cost").part(1);
    let start = Instant::now();
    for _ in 0..n {
        locks
            .lock(&key, LockOptions::new())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    start.elapsed() / n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it on purpose"]
async fn metrics_cost_per_acquisition() {
    let server = RedisServer::start();
    let memory = LockManager::memory();
    let redis = server.manager().await;
    // Warm up.
    per_acquisition(&memory, 10_000).await;
    per_acquisition(&redis, 500).await;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push((
            per_acquisition(&memory, 100_000).await,
            per_acquisition(&redis, 3_000).await,
        ));
    }
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    for (i, (memory_off, redis_off)) in rounds.into_iter().enumerate() {
        let memory_on = per_acquisition(&memory, 100_000).await;
        let redis_on = per_acquisition(&redis, 3_000).await;
        // Drain the stored samples between rounds, as an exporter would.
        let _ = snapshotter.snapshot();
        println!(
            "{{\"round\":{i},\"memory_no_recorder_ns\":{},\"memory_recorder_ns\":{},\"redis_no_recorder_us\":{:.1},\"redis_recorder_us\":{:.1}}}",
            memory_off.as_nanos(),
            memory_on.as_nanos(),
            redis_off.as_secs_f64() * 1e6,
            redis_on.as_secs_f64() * 1e6
        );
    }
}
