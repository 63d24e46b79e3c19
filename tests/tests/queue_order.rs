//! The processes waiting for a lock take turns in the order their registrations reached the
//! server, whatever their hosts' clocks say: a worker process whose wall clock is an hour behind
//! (run under `faketime`, Debian package `faketime`) does not jump the queue.

use std::time::Duration;

use lock_guard::{LockKey, LockOptions};
use lock_guard_tests::{RedisServer, Worker, eventually, field, unix_micros};

const WORKER: &str = env!("CARGO_BIN_EXE_lock_worker");
const LONG: Duration = Duration::from_secs(20);

fn worker_args(server: &RedisServer, key: &str) -> Vec<String> {
    vec![
        format!("url={}", server.url()),
        format!("keys={key}"),
        "mode=acquire".to_owned(),
        "wait_ms=20000".to_owned(),
        "lease_ms=5000".to_owned(),
    ]
}

async fn registrations(server: &RedisServer, queue: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(queue)
        .query_async(&mut server.connection().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_clock_is_behind_does_not_go_first() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let name = "clock-behind";
    let key = LockKey::new("worker").part(name);
    let queue = format!("{}:queue", holder.redis_key(&key));
    let held = holder
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();

    // First in line: a process with a correct clock.
    let mut on_time = Worker::spawn(WORKER, &worker_args(&server, name));
    eventually(LONG, "the first worker registered", || async {
        registrations(&server, &queue).await == 1
    })
    .await;
    // Second in line: a process whose wall clock is an hour behind (its monotonic clock, which
    // times its waits, is left alone).
    let mut behind_args = vec![
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_owned(),
        "faketime".to_owned(),
        "-f".to_owned(),
        "-1h".to_owned(),
        WORKER.to_owned(),
    ];
    behind_args.extend(worker_args(&server, name));
    let mut behind = Worker::spawn("env", &behind_args);
    eventually(LONG, "the second worker registered", || async {
        registrations(&server, &queue).await == 2
    })
    .await;

    assert!(held.release().await.unwrap());
    let first = on_time
        .line("ACQUIRED", LONG)
        .await
        .expect("the first worker gets the lock");
    let second = behind
        .line("ACQUIRED", LONG)
        .await
        .expect("the second worker gets the lock");
    // `ACQUIRED <key> <token> <sent_unix_us> <acquired_unix_us>`: the skewed worker's clock
    // really is behind (else this test proves nothing).
    let skew = unix_micros() as i64 - field(&second, 4).parse::<i64>().unwrap();
    assert!(
        skew > 3_000_000_000,
        "the second worker's clock is not an hour behind (skew {skew} µs): is faketime working?"
    );
    // Fencing tokens rise in the order the lock was taken.
    let (t1, t2): (u64, u64) = (
        field(&first, 2).parse().unwrap(),
        field(&second, 2).parse().unwrap(),
    );
    eprintln!("on time: token {t1}; an hour behind (skew {skew} µs): token {t2}");
    assert!(
        t1 < t2,
        "the process whose clock is behind took the lock first ({t2} before {t1}), though it \
         registered second"
    );
}
