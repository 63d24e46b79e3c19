//! Faults of a lock holder's process: frozen with `SIGSTOP` past its lease, or killed
//! with `SIGKILL`. The holders are real OS processes (`lock_worker`); "the database" is a fenced
//! store on a second `redis-server`.

use std::time::Duration;

use lock_guard::{LockKey, LockOptions};
use lock_guard_tests::faults::Figures;
use lock_guard_tests::{Fenced, FencedStore, RedisServer, Worker, field};
use tokio::time::sleep;

const WORKER: &str = env!("CARGO_BIN_EXE_lock_worker");
const LONG: Duration = Duration::from_secs(10);
/// Scheduling allowance on a shared 2-core machine (RELIABILITY.md, assumptions).
const EPSILON: Duration = Duration::from_millis(100);

fn args(server: &RedisServer, store: &RedisServer, key: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        format!("url={}", server.url()),
        format!("store={}", store.url()),
        format!("keys={key}"),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

/// Another instance (this test process) takes the key and writes through the store with its
/// token; returns that token.
async fn take_over_and_write(server: &RedisServer, store: &FencedStore, key: &str) -> u64 {
    let locks = server.manager().await;
    let guard = locks
        .lock(
            &LockKey::new("worker").part(key),
            LockOptions::new().wait(Duration::from_secs(2)),
        )
        .await
        .expect("the frozen holder's lease has ended: the lock is free");
    let token = guard.fencing_token();
    assert!(matches!(
        store.write(key, token).await.unwrap(),
        Fenced::Accepted(_)
    ));
    guard.release().await.unwrap();
    token
}

/// A holder inside `run` (lease 600 ms, deadline 400 ms) is frozen with SIGSTOP 100 ms into a
/// body that sleeps 300 ms and then writes; it stays frozen 1.5 s while another instance takes the
/// lock and writes; then SIGCONT. Its body's sleep and its deadline are both over when it wakes:
/// the body must not be polled again, so it never announces the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_holder_does_not_write_after_its_deadline() {
    let (server, store_server) = (RedisServer::start(), RedisServer::start());
    let store = FencedStore::connect(&store_server.url()).await.unwrap();
    let key = "frozen-run";
    let mut holder = Worker::spawn(
        WORKER,
        &args(
            &server,
            &store_server,
            key,
            &["mode=run-write", "lease_ms=600", "body_ms=300"],
        ),
    );
    let acquired = holder
        .line("ACQUIRED", LONG)
        .await
        .expect("the worker took the lock");
    sleep(Duration::from_millis(100)).await;
    holder.signal("STOP");
    sleep(Duration::from_millis(1500)).await;
    let newer = take_over_and_write(&server, &store, key).await;
    assert!(newer > field(&acquired, 2).parse().unwrap());
    holder.signal("CONT");
    let lines = holder.finish(LONG).await;
    eprintln!("frozen holder printed: {lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("WRITING")),
        "the body was polled after its deadline and sent its write: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("RESULT err") && l.contains("Deadline")),
        "the call should end with Deadline: {lines:?}"
    );
    assert_eq!(
        store.sections(key).await.len(),
        1,
        "only the new holder's write"
    );
    Figures::new(
        "faults_process::frozen_holder_does_not_write_after_its_deadline",
        "holder frozen (`SIGSTOP`) past its lease, then `SIGCONT`",
        "the body is never polled after its deadline: it does not make the write it was about to make (S7)",
    )
    .measured("no `WRITING`; the call returned `Deadline`")
    .print();
}

/// The same freeze for a holder that took a guard (`lock`): nothing bounds its work by the lease,
/// so it does write late — and the fenced store rejects that write (the lease alone cannot
/// protect; the token does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_guard_holder_write_is_fenced_out() {
    let (server, store_server) = (RedisServer::start(), RedisServer::start());
    let store = FencedStore::connect(&store_server.url()).await.unwrap();
    let key = "frozen-guard";
    let mut holder = Worker::spawn(
        WORKER,
        &args(
            &server,
            &store_server,
            key,
            &["mode=guard-write", "lease_ms=600", "body_ms=300"],
        ),
    );
    let acquired = holder
        .line("ACQUIRED", LONG)
        .await
        .expect("the worker took the lock");
    let stale: u64 = field(&acquired, 2).parse().unwrap();
    holder.signal("STOP");
    sleep(Duration::from_millis(1200)).await;
    let newer = take_over_and_write(&server, &store, key).await;
    holder.signal("CONT");
    let rejected = holder.line("REJECTED", LONG).await;
    let lines = holder.finish(LONG).await;
    eprintln!("frozen guard holder printed: {lines:?}");
    let rejected = rejected.expect("the late write reached the store and was rejected");
    assert_eq!(field(&rejected, 2), stale.to_string());
    assert_eq!(
        field(&rejected, 3),
        newer.to_string(),
        "fenced by the newer token"
    );
    assert!(
        lines.iter().any(|l| l.contains("released=false")),
        "its release found the lock gone: {lines:?}"
    );
    let sections = store.sections(key).await;
    assert_eq!(
        sections.iter().map(|s| s.token).collect::<Vec<_>>(),
        vec![newer]
    );
    assert_eq!(store.rejected(key).await, vec![("write".to_owned(), stale)]);
    Figures::new(
        "faults_process::frozen_guard_holder_write_is_fenced_out",
        "holder using a bare guard (`lock`) frozen (`SIGSTOP`) past its lease, then `SIGCONT`",
        "a lease alone cannot stop it; the fenced store rejects its late write (S11)",
    )
    .measured("late write `REJECTED` by the newer token; `release` returned `false`")
    .print();
}

/// A holder killed with SIGKILL (lease 1 s): another process, already waiting, holds the key by
/// the lease's end + ε. ε is measured against the moment the killed holder *sent* its acquire
/// (its lease cannot end later than that + lease), on the same machine's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_replaced_by_the_lease_end() {
    let (server, store_server) = (RedisServer::start(), RedisServer::start());
    let key = "killed";
    let lease_ms = 1000u64;
    let mut worst = 0i64;
    for round in 0..3 {
        let mut holder = Worker::spawn(
            WORKER,
            &args(
                &server,
                &store_server,
                key,
                &["mode=hold", &format!("lease_ms={lease_ms}")],
            ),
        );
        let acquired = holder
            .line("ACQUIRED", LONG)
            .await
            .expect("the holder took the lock");
        let sent: i64 = field(&acquired, 3).parse().unwrap();
        let mut next = Worker::spawn(
            WORKER,
            &args(
                &server,
                &store_server,
                key,
                &["mode=acquire", "wait_ms=5000"],
            ),
        );
        sleep(Duration::from_millis(200)).await;
        holder.signal("KILL");
        holder.wait();
        let taken = next
            .line("ACQUIRED", LONG)
            .await
            .expect("another process takes the key");
        let at: i64 = field(&taken, 4).parse().unwrap();
        let epsilon_us = at - (sent + lease_ms as i64 * 1000);
        eprintln!(
            "SIGKILL round {round}: taken over {:.1} ms after the lease's end",
            epsilon_us as f64 / 1000.0
        );
        worst = worst.max(epsilon_us);
        assert!(
            at >= sent + (lease_ms as i64 - 20) * 1000,
            "taken before the lease ended: {taken}"
        );
        next.finish(LONG).await;
    }
    eprintln!("SIGKILL takeover: worst ε {:.1} ms", worst as f64 / 1000.0);
    // The promise (RELIABILITY.md): by the lease's end + the suite's scheduling allowance.
    assert!(
        worst < EPSILON.as_micros() as i64,
        "taken over only {worst} µs after the lease's end (allowance {EPSILON:?})"
    );
    let worst = Duration::from_micros(worst.max(0) as u64);
    Figures::new(
        "faults_process::killed_holder_is_replaced_by_the_lease_end",
        "holder killed (`SIGKILL`), lease 1 s",
        "another process holds the key by the lease's end + ε, ε = 100 ms (the suite's scheduling allowance) (S8)",
    )
    .ms("worst_epsilon_ms", worst)
    .measured(&format!(
        "worst ε {} over 3 rounds",
        lock_guard_tests::faults::ms(worst)
    ))
    .print();
}
