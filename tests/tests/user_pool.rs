//! `LockManagerBuilder::pool`: the lock commands go over the user's own `deadpool-redis` pool;
//! the pool keeps its connections for its owner; a Redis restart is recovered from; and what a
//! checkout per command would cost, measured.

use std::time::Duration;

use lock_guard::deadpool_redis::{self, Runtime};
use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::RedisServer;
use tokio::time::Instant;

fn pool(url: &str, max: usize) -> deadpool_redis::Pool {
    let mut config = deadpool_redis::Config::from_url(url);
    config.pool = Some(deadpool_redis::PoolConfig::new(max));
    config.create_pool(Some(Runtime::Tokio1)).unwrap()
}

async fn clients(server: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    list.lines().count()
}

/// Two managers on the user's pools: locks, waiting and hand-over work; the commands went through
/// the pools (their connections are the only command connections: one subscriber each besides);
/// every pooled connection is back in its pool, available to its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_work_over_the_users_pool() {
    let server = RedisServer::start();
    let url = server.url();
    let (pool_a, pool_b) = (pool(&url, 4), pool(&url, 4));
    let before = clients(&server).await;
    let a = LockManager::builder()
        .url(&url)
        .pool(pool_a.clone())
        .build()
        .await
        .unwrap();
    let b = LockManager::builder()
        .url(&url)
        .pool(pool_b.clone())
        .build()
        .await
        .unwrap();
    let key = LockKey::new("pool").part(1);
    let held = a.lock(&key, LockOptions::new()).await.unwrap();
    let waiter = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move {
            b.run(
                &key,
                LockOptions::new().wait(Duration::from_secs(5)),
                async { Ok::<_, LockError>(()) },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "b ran while a held the lock");
    held.release().await.unwrap();
    waiter.await.unwrap().unwrap();
    for _ in 0..50 {
        a.run(&key, LockOptions::new(), async { Ok::<_, LockError>(()) })
            .await
            .unwrap();
    }
    let (sa, sb) = (pool_a.status(), pool_b.status());
    eprintln!("pool a {sa:?}, pool b {sb:?}");
    assert!(sa.size >= 1 && sb.size >= 1, "the pools were not used");
    assert_eq!(
        sa.available, sa.size,
        "a connection of pool a is kept checked out"
    );
    assert_eq!(
        sb.available, sb.size,
        "a connection of pool b is kept checked out"
    );
    // The pools' connections, plus one subscriber per manager (plus this test's own).
    let now = clients(&server).await;
    assert!(
        now - before <= sa.size + sb.size + 2,
        "{} new client connections for pools of {} and {} and two subscribers",
        now - before,
        sa.size,
        sb.size
    );
    // The user's own commands still get connections from the pool.
    let mut own = pool_a.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *own).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// A pool for another server, a wrong password, or a pool next to a cluster: errors, not hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pools_are_refused() {
    let server = RedisServer::start();
    let dead = "redis://127.0.0.1:1".to_owned();
    let built = LockManager::builder()
        .url(&server.url())
        .pool(pool(&dead, 2))
        .command_timeout(Duration::from_millis(500))
        .build()
        .await;
    assert!(matches!(built, Err(LockError::Backend { .. })), "{built:?}");
    let built = LockManager::builder()
        .redlock([server.url(), dead.clone(), "redis://127.0.0.1:2".to_owned()])
        .pool(pool(&server.url(), 2))
        .build()
        .await;
    match built {
        Err(LockError::Config { reason }) => assert!(reason.contains("one server"), "{reason}"),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

/// Redis restarts under the manager: the dead pooled connection is dropped and another one checked
/// out of the user's pool; locks work again within a couple of calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_recovered_through_the_pool() {
    let mut server = RedisServer::start();
    let url = server.url();
    let users = pool(&url, 4);
    let locks = LockManager::builder()
        .url(&url)
        .pool(users.clone())
        .build()
        .await
        .unwrap();
    let key = LockKey::new("pool").part("restart");
    locks
        .lock(&key, LockOptions::new())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    server.restart();
    let end = Instant::now() + Duration::from_secs(10);
    let mut errors = 0;
    loop {
        match locks.lock(&key, LockOptions::new()).await {
            Ok(guard) => {
                guard.release().await.unwrap();
                break;
            }
            Err(e) if Instant::now() < end => {
                errors += 1;
                eprintln!("after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no lock 10 s after the restart: {e}"),
        }
    }
    assert!(errors <= 3, "{errors} failed calls after the restart");
}

/// What the commands would cost with a checkout per command (`deadpool-redis` recycles every
/// checkout with a `PING`) against the kept-open clone the manager uses. Prints the figures:
/// `cargo test -p lock-guard-tests --test user_pool -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it on purpose"]
async fn measure_checkout_cost() {
    let server = RedisServer::start();
    let users = pool(&server.url(), 4);
    const N: u32 = 5_000;
    let script = redis::Script::new("return redis.call('SET', KEYS[1], ARGV[1], 'PX', 3000)");
    let kept = {
        let checkout = users.get().await.unwrap();
        (*checkout).clone()
    };
    for round in 0..3 {
        let start = Instant::now();
        for i in 0..N {
            let mut conn = kept.clone();
            let _: () = script
                .key("k")
                .arg(i)
                .invoke_async(&mut conn)
                .await
                .unwrap();
        }
        let kept_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let start = Instant::now();
        for i in 0..N {
            let mut conn = users.get().await.unwrap();
            let _: () = script
                .key("k")
                .arg(i)
                .invoke_async(&mut *conn)
                .await
                .unwrap();
        }
        let checkout_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let locks = LockManager::builder()
            .url(&server.url())
            .pool(users.clone())
            .build()
            .await
            .unwrap();
        let key = LockKey::new("measure").part(round);
        let start = Instant::now();
        for _ in 0..N / 5 {
            locks
                .lock(&key, LockOptions::new())
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        let lock_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N / 5);
        println!(
            "{{\"round\":{round},\"script_kept_open_us\":{kept_us:.1},\"script_with_checkout_us\":{checkout_us:.1},\"lock_release_over_users_pool_us\":{lock_us:.1}}}"
        );
    }
}
