//! Replica acknowledgement (§6): `wait_for_replicas(n, timeout)` pipelines `WAIT` with the acquire
//! script (one round trip); too few acknowledgements — a replica frozen with `SIGSTOP`, or fewer
//! replicas than wanted — release the lock and fail with `NotReplicated`, naming the key.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::RedisServer;
use tokio::time::Instant;

const WAIT_TIMEOUT: Duration = Duration::from_millis(200);

async fn manager(primary: &RedisServer, replicas: u64) -> LockManager {
    LockManager::builder()
        .url(&primary.url())
        .command_timeout(Duration::from_secs(1))
        .wait_for_replicas(replicas, WAIT_TIMEOUT)
        .build()
        .await
        .expect("a manager on the primary")
}

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut server.connection().await)
        .await
        .expect("GET")
}

/// Acknowledged acquisitions are on the replica when the call returns, and each costs one round
/// trip: the script and `WAIT` in one pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_acquisitions_are_on_the_replica_in_one_round_trip() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary).await;
    let locks = manager(&primary, 1).await;
    // Warm the script cache.
    let key = LockKey::new("replicas").part(0);
    locks
        .lock(&key, LockOptions::new())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    let calls_before = primary.command_calls().await;
    let commands_before = locks.metrics().commands;
    const ROUNDS: u64 = 20;
    for i in 1..=ROUNDS {
        let key = LockKey::new("replicas").part(i);
        let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
        let on_replica = get(&replica, &locks.redis_key(&key)).await;
        assert!(
            on_replica.is_some(),
            "acquisition {i} not on the replica when granted"
        );
        std::mem::forget(guard); // keep the lease; releases are not the subject here
    }
    assert_eq!(
        locks.metrics().commands - commands_before,
        ROUNDS,
        "one round trip each"
    );
    let calls = primary.command_calls().await;
    let delta = |name: &str| calls.get(name).unwrap_or(&0) - calls_before.get(name).unwrap_or(&0);
    assert_eq!(delta("wait"), ROUNDS);
    assert_eq!(delta("evalsha"), ROUNDS);
}

/// A replica frozen with SIGSTOP acknowledges nothing: the acquisition is released and the call
/// fails with NotReplicated naming the key, after the WAIT timeout — not after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_means_not_replicated_and_nothing_held() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary).await;
    let locks = manager(&primary, 1).await;
    let key = LockKey::new("replicas").part("frozen");
    let redis_key = locks.redis_key(&key);

    replica.freeze();
    let start = Instant::now();
    let result = locks
        .lock(&key, LockOptions::new().wait(Duration::from_secs(5)))
        .await;
    let took = start.elapsed();
    replica.thaw();
    match result {
        Err(LockError::NotReplicated { key, acked, wanted }) => {
            assert_eq!((key.as_str(), acked, wanted), (redis_key.as_str(), 0, 1));
        }
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    assert!(
        took >= WAIT_TIMEOUT && took < WAIT_TIMEOUT + Duration::from_millis(500),
        "took {took:?}"
    );
    assert_eq!(
        get(&primary, &redis_key).await,
        None,
        "the unreplicated lock was kept"
    );

    // Without wait_for_replicas, the same frozen replica does not matter.
    let plain = primary.manager().await;
    replica.freeze();
    let guard = plain.lock(&key, LockOptions::new()).await;
    replica.thaw();
    guard
        .expect("acquired without waiting for replicas")
        .release()
        .await
        .unwrap();
    lock_guard_tests::faults::Figures::new(
        "replicas::a_frozen_replica_means_not_replicated_and_nothing_held",
        "`WAIT`: the only replica frozen (`SIGSTOP`), `wait_for_replicas(1, …)`",
        "the call fails with `NotReplicated` naming the key after the `WAIT` timeout, not the wait; nothing left held (S12)",
    )
    .ms("failed_after_ms", took)
    .ms("wait_timeout_ms", WAIT_TIMEOUT)
    .measured(&format!(
        "`NotReplicated` after {} (`WAIT` timeout {}, wait 5 s); the lock key gone",
        lock_guard_tests::faults::ms(took),
        lock_guard_tests::faults::ms(WAIT_TIMEOUT)
    ))
    .print();
}

/// Wanting more replicas than there are fails the same way, with the count that did acknowledge;
/// a script cache emptied by `SCRIPT FLUSH` is reloaded inside the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_replicas_than_wanted_and_noscript() {
    let primary = RedisServer::start();
    let _replica = RedisServer::start_replica_of(&primary).await;
    let key = LockKey::new("replicas").part("two");
    let err = manager(&primary, 2)
        .await
        .lock(&key, LockOptions::new())
        .await
        .expect_err("only one replica");
    assert!(
        matches!(
            err,
            LockError::NotReplicated {
                acked: 1,
                wanted: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("acknowledged by 1 replica"),
        "{err}"
    );

    primary.script_flush().await;
    let locks = manager(&primary, 1).await;
    let guard = locks
        .lock(&key, LockOptions::new())
        .await
        .expect("reloaded");
    assert!(guard.fencing_token() > 0);
    guard.release().await.unwrap();
}

/// A WAIT timeout that the command timeout would cut, or replicas on Redlock, are configuration
/// errors.
#[tokio::test]
async fn replica_configuration_is_checked() {
    let err = LockManager::builder()
        .url("redis://127.0.0.1:1")
        .command_timeout(Duration::from_millis(100))
        .wait_for_replicas(1, Duration::from_millis(100))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    let err = LockManager::builder()
        .redlock([
            "redis://127.0.0.1:1",
            "redis://127.0.0.1:2",
            "redis://127.0.0.1:3",
        ])
        .wait_for_replicas(1, Duration::from_millis(100))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Redlock"), "{err}");
}

/// A `WAIT` timeout below one millisecond is still a bound: it must not become `WAIT n 0`, which
/// waits forever (the call would end only by the command timeout, with a backend error, and block
/// its connection). With a replica frozen, the call fails with `NotReplicated` within a few
/// milliseconds of the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_millisecond_wait_timeout_still_bounds_the_wait() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary).await;
    let locks = LockManager::builder()
        .url(&primary.url())
        .command_timeout(Duration::from_secs(2))
        .wait_for_replicas(1, Duration::from_micros(500))
        .build()
        .await
        .expect("a manager on the primary");
    // Warm the connections and the script cache while the replica answers.
    let warm = LockKey::new("replicas").part("sub-ms-warm");
    if let Ok(g) = locks.lock(&warm, LockOptions::new()).await {
        g.release().await.unwrap();
    }
    let key = LockKey::new("replicas").part("sub-ms");
    replica.freeze();
    let start = Instant::now();
    let result = locks
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    let took = start.elapsed();
    replica.thaw();
    eprintln!("sub-millisecond WAIT timeout: {result:?} after {took:?}");
    assert!(
        matches!(
            result,
            Err(LockError::NotReplicated {
                acked: 0,
                wanted: 1,
                ..
            })
        ),
        "expected NotReplicated, got {result:?} after {took:?}"
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

/// Releases and renewals are never queued behind another acquisition's `WAIT`: with a replica
/// frozen, acquisitions of other keys each `WAIT` their whole timeout (800 ms) while a lock taken
/// before is released — the release must not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_not_held_up_by_other_acquisitions_wait() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary).await;
    let wait = Duration::from_millis(800);
    let locks = LockManager::builder()
        .url(&primary.url())
        .command_timeout(Duration::from_secs(2))
        .pool_size(2)
        .wait_for_replicas(1, wait)
        .build()
        .await
        .expect("a manager on the primary");
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let held = locks
            .lock(&LockKey::new("replicas").part("held"), LockOptions::new())
            .await
            .expect("acquired while the replica answers");
        replica.freeze();
        // Acquisitions of other keys, each waiting for the frozen replica.
        let others: Vec<_> = (0..4)
            .map(|i| {
                let locks = locks.clone();
                tokio::spawn(async move {
                    let key = LockKey::new("replicas").part(format!("other-{round}-{i}"));
                    locks
                        .lock(&key, LockOptions::new().wait(Duration::ZERO))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let released = held.release().await;
        let took = start.elapsed();
        for o in others {
            let r = o.await.unwrap();
            assert!(matches!(r, Err(LockError::NotReplicated { .. })), "{r:?}");
        }
        replica.thaw();
        assert!(matches!(released, Ok(true)), "{released:?}");
        eprintln!("round {round}: release took {took:?} behind other acquisitions' WAIT");
        worst = worst.max(took);
    }
    assert!(
        worst < Duration::from_millis(300),
        "a release waited {worst:?} behind other acquisitions' WAIT ({wait:?})"
    );
}
