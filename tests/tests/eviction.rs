//! S16: a server whose `maxmemory-policy` can evict keys deletes held locks under memory pressure
//! (every lock key has a TTL; `volatile-ttl` takes the ones closest to their lease end first), and a
//! second holder takes the lock while the first still runs. The manager refuses such a server —
//! when it is built (one server, every master of a cluster, every Redlock node) and after a
//! reconnect — unless the user opted in with `allow_eviction(true)`.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisCluster, RedisServer, ServerOptions};

const EVICTING: [&str; 4] = ["--maxmemory", "4mb", "--maxmemory-policy", "volatile-ttl"];

fn assert_refused(built: Result<LockManager, LockError>, policy: &str) {
    match built {
        Err(LockError::Config { reason }) => {
            assert!(reason.contains(policy), "names the policy: {reason}");
            assert!(
                reason.contains("noeviction") && reason.contains("allow_eviction"),
                "says what to do: {reason}"
            );
        }
        Err(other) => panic!("expected a Config error naming `{policy}`, got {other:?}"),
        Ok(_) => panic!("a server with maxmemory-policy {policy} was accepted"),
    }
}

#[tokio::test]
async fn a_server_that_can_evict_locks_is_refused_at_build() {
    let server = RedisServer::start_with_args(ServerOptions::new(), &EVICTING);
    assert_refused(server.builder().build().await, "volatile-ttl");
}

#[tokio::test]
async fn a_memory_limit_without_eviction_is_accepted() {
    let server = RedisServer::start_with_args(
        ServerOptions::new(),
        &["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"],
    );
    let locks = server.builder().build().await.expect("noeviction is safe");
    let guard = locks
        .lock(&LockKey::new("evict").part(1), LockOptions::new())
        .await
        .unwrap();
    assert!(guard.release().await.unwrap());
}

/// Why the refusal: with the opt-in, filling the memory evicts a held lock and a second manager
/// takes the same key while the first still holds it.
#[tokio::test]
async fn with_the_opt_in_a_full_memory_evicts_a_held_lock() {
    let server = RedisServer::start_with_args(ServerOptions::new(), &EVICTING);
    let build = || server.builder().allow_eviction(true).build();
    let (first, second) = (build().await.unwrap(), build().await.unwrap());
    let key = LockKey::new("evict").part(2);
    let held = first
        .lock(&key, LockOptions::new().lease(Duration::from_secs(60)))
        .await
        .unwrap();

    // Fill the memory with keys that live longer than the lock's lease.
    let mut conn = server.connection().await;
    let value = vec![b'x'; 16 * 1024];
    for batch in 0..64 {
        let mut pipe = redis::pipe();
        for i in 0..16 {
            pipe.cmd("SET")
                .arg(format!("filler:{batch}:{i}"))
                .arg(&value)
                .arg("PX")
                .arg(600_000)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    let evicted: u64 = server
        .info("stats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        evicted > 0,
        "the filler must have pushed the server into eviction"
    );

    let stolen = second
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(
        stolen.is_ok(),
        "the held lock was evicted, so a second holder gets it: {stolen:?}"
    );
    drop(held);
}

/// A failover or restart behind the same address can bring a server configured otherwise: the
/// check runs on every new connection, and the error says why.
#[tokio::test]
async fn a_reconnect_to_a_server_that_now_evicts_fails_clearly() {
    let server = RedisServer::start_with_args(
        ServerOptions::new(),
        &["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"],
    );
    let locks = server.builder().build().await.unwrap();
    let key = LockKey::new("evict").part(3);
    let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
    assert!(guard.release().await.unwrap());

    let mut conn = server.connection().await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let _ = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async::<u64>(&mut conn)
        .await;

    match locks
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await
    {
        Err(e @ LockError::Backend { .. }) => {
            let shown = e.to_string();
            assert!(
                shown.contains("allkeys-lru") && shown.contains("noeviction"),
                "the error names the policy and the fix: {shown}"
            );
        }
        other => panic!("a lock on a server that now evicts: {other:?}"),
    }
}

#[tokio::test]
async fn a_cluster_with_one_evicting_master_is_refused() {
    let cluster = RedisCluster::start().await;
    let master = &cluster.nodes()[1];
    let mut conn = master.connection().await;
    for (name, value) in [("maxmemory", "64mb"), ("maxmemory-policy", "volatile-lru")] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let builder = || {
        LockManager::builder()
            .cluster(cluster.urls())
            .command_timeout(Duration::from_secs(1))
    };
    assert_refused(builder().build().await, "volatile-lru");
    builder()
        .allow_eviction(true)
        .build()
        .await
        .expect("accepted when opted in");
}

#[tokio::test]
async fn a_redlock_with_one_evicting_node_is_refused() {
    let servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start_with_args(ServerOptions::new(), &EVICTING),
    ];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    assert_refused(
        LockManager::builder().redlock(&urls).build().await,
        "volatile-ttl",
    );
}
