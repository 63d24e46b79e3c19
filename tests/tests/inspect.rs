//! Inspection: `inspect` and `list` report what the servers hold — on one server, in memory, on a
//! cluster (every master) and on Redlock (the majority's view).

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisCluster, RedisServer, backend_tests, eventually};

async fn redis_cmd(server: &RedisServer, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut server.connection().await)
        .await
        .unwrap()
}

backend_tests! {
    /// Free, then held (remaining lease within the lease, the token issued), then released.
    async fn inspect_follows_a_lock(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("inspect").part(1);
        let free = locks.inspect(&key).await.unwrap();
        assert!(!free.held && free.remaining.is_none(), "{free:?}");
        assert_eq!(free.key, locks.redis_key(&key));
        let lease = Duration::from_secs(3);
        let guard = locks.lock(&key, LockOptions::new().lease(lease)).await.unwrap();
        let held = locks.inspect(&key).await.unwrap();
        assert!(held.held, "{held:?}");
        let left = held.remaining.expect("a remaining lease");
        assert!(left > Duration::ZERO && left <= lease, "{left:?}");
        if backend.server().is_some() {
            assert_eq!(held.fencing_token, Some(guard.fencing_token()));
        }
        assert!(!held.handover_reserved && held.waiting_processes == 0);
        guard.release().await.unwrap();
        assert!(!locks.inspect(&key).await.unwrap().held);
    }

    /// `list` finds the held locks of a name (and only those: not other names, not released
    /// locks, not the derived keys), bounded by its limit; a name with glob characters matches
    /// itself only.
    async fn list_finds_held_locks(backend) {
        let locks = backend.manager().await;
        let mut guards = Vec::new();
        for part in 0..5 {
            let key = LockKey::new("invoice").part(part);
            guards.push(locks.lock(&key, LockOptions::new().lease(Duration::from_secs(10))).await.unwrap());
        }
        let other = locks.lock(&LockKey::new("other").part(1), LockOptions::new()).await.unwrap();
        let star = locks.lock(&LockKey::new("a*b").part(1), LockOptions::new()).await.unwrap();
        let axb = locks.lock(&LockKey::new("axb").part(1), LockOptions::new()).await.unwrap();
        guards.pop().unwrap().release().await.unwrap();

        let listed = locks.list("invoice", 100).await.unwrap();
        let mut keys: Vec<&str> = listed.iter().map(|s| s.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["lock:{invoice:0}", "lock:{invoice:1}", "lock:{invoice:2}", "lock:{invoice:3}"]
        );
        assert!(listed.iter().all(|s| s.held && s.remaining.is_some()));
        assert_eq!(locks.list("invoice", 2).await.unwrap().len(), 2);
        assert_eq!(locks.list("", 100).await.unwrap().len(), 7);
        let starred = locks.list("a*", 100).await.unwrap();
        assert_eq!(starred.len(), 1, "{starred:?}");
        assert_eq!(starred[0].key, "lock:{a*b:1}");
        drop((other, star, axb));
    }
}

/// Another process waits (a manager of its own): one waiting process, and one local waiter as
/// that manager sees it; a hand-over reservation is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_and_reserved_handover_on_redis() {
    let server = RedisServer::start();
    let (holder, waiter) = (server.manager().await, server.manager().await);
    let key = LockKey::new("inspect").part("queued");
    let guard = holder.lock(&key, LockOptions::new()).await.unwrap();
    let waiting = {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move {
            waiter
                .run(
                    &key,
                    LockOptions::new().wait(Duration::from_secs(5)),
                    async { Ok::<_, LockError>(()) },
                )
                .await
        })
    };
    eventually(
        Duration::from_secs(3),
        "one waiting process, one local waiter",
        || async {
            let s = waiter.inspect(&key).await.unwrap();
            s.waiting_processes == 1 && s.local_waiters == 1 && s.held
        },
    )
    .await;
    let seen = holder.inspect(&key).await.unwrap();
    assert_eq!(seen.local_waiters, 0, "{seen:?}");
    assert_eq!(seen.waiting_processes, 1, "{seen:?}");
    guard.release().await.unwrap();
    waiting.await.unwrap().unwrap();

    // A reservation as release.lua writes it, held for a waiting process that has not taken it.
    let redis_key = holder.redis_key(&key);
    let _ = redis_cmd(
        &server,
        &["SET", &redis_key, "claim:0123456789abcdef", "PX", "5000"],
    )
    .await;
    let reserved = holder.inspect(&key).await.unwrap();
    assert!(reserved.held && reserved.handover_reserved, "{reserved:?}");
}

/// Bad keys name themselves; an unreachable server is an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_dead_servers() {
    let mut server = RedisServer::start();
    let locks = LockManager::builder()
        .url(&server.url())
        .command_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    match locks.inspect_redis_key("orders:42").await {
        Err(LockError::Config { reason }) => assert!(reason.contains("`orders:42`"), "{reason}"),
        other => panic!("expected a Config error, got {other:?}"),
    }
    server.kill();
    let started = tokio::time::Instant::now();
    let dead = locks.inspect(&LockKey::new("inspect").part(1)).await;
    assert!(matches!(dead, Err(LockError::Backend { .. })), "{dead:?}");
    let dead = locks.list("", 10).await;
    assert!(matches!(dead, Err(LockError::Backend { .. })), "{dead:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// On a cluster, `list` scans every master: locks whose slots live on different masters are all
/// found; `inspect` is routed to the key's master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lists_every_master() {
    let cluster = RedisCluster::start().await;
    let locks = cluster.manager().await;
    let mut guards = Vec::new();
    let mut masters = std::collections::BTreeSet::new();
    for part in 0..12 {
        let key = LockKey::new("spread").part(part);
        let redis_key = locks.redis_key(&key);
        let slot = cluster.slot(&redis_key).await;
        masters.insert(cluster.master_of(slot).await.port());
        guards.push(
            locks
                .lock(&key, LockOptions::new().lease(Duration::from_secs(10)))
                .await
                .unwrap(),
        );
        assert!(locks.inspect(&key).await.unwrap().held);
    }
    assert!(
        masters.len() >= 2,
        "the keys landed on {} master(s)",
        masters.len()
    );
    let listed = locks.list("spread", 100).await.unwrap();
    assert_eq!(listed.len(), 12, "{listed:?}");
}

/// On Redlock the majority decides: a lock deleted on one node of three is still held (its
/// remaining lease is the second longest), deleted on two it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_reports_the_majoritys_view() {
    let servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let locks = LockManager::redlock(&urls).await.unwrap();
    let key = LockKey::new("inspect").part("redlock");
    let redis_key = locks.redis_key(&key);
    let _guard = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(10)))
        .await
        .unwrap();
    let _ = redis_cmd(&servers[0], &["DEL", &redis_key]).await;
    let state = locks.inspect(&key).await.unwrap();
    assert!(state.held, "{state:?}");
    assert_eq!(locks.list("inspect", 10).await.unwrap().len(), 1);
    let _ = redis_cmd(&servers[1], &["DEL", &redis_key]).await;
    let state = locks.inspect(&key).await.unwrap();
    assert!(!state.held, "one node of three is no majority: {state:?}");
    assert!(locks.list("inspect", 10).await.unwrap().is_empty());
}
