//! Ownership and scripts: a flushed script cache is reloaded transparently; a release
//! publishes on the key's channel; owner tokens differ per acquisition; a late release warns.

use std::time::Duration;

use futures_util::StreamExt as _;
use lock_guard::{LockError, LockKey, LockOptions};
use lock_guard_tests::{LogCapture, RedisServer};
use tokio::time::timeout;

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut server.connection().await)
        .await
        .unwrap()
}

/// `SCRIPT FLUSH` before each kind of call (acquire, a held acquire, release, renew): nothing
/// visible changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_changes_nothing_visible() {
    let server = RedisServer::start();
    let locks = server.manager().await;
    let other = server
        .builder()
        .watchdog_lease(Duration::from_millis(600))
        .build()
        .await
        .unwrap();
    let key = LockKey::new("scripts").part("flush");

    let first = locks.lock(&key, LockOptions::new()).await.unwrap();
    server.script_flush().await;
    let held = other
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await;
    assert!(
        held.as_ref().is_err_and(LockError::is_not_acquired),
        "held acquire after a flush: {held:?}"
    );
    server.script_flush().await;
    assert!(first.release().await.unwrap(), "release after a flush");
    assert_eq!(
        get(&server, &locks.redis_key(&key)).await,
        None,
        "the release deleted the key"
    );

    server.script_flush().await;
    let second = locks
        .lock(&key, LockOptions::new())
        .await
        .expect("acquire after a flush");
    assert!(second.release().await.unwrap());

    // The watchdog's renewals run after a flush in the middle of the body.
    let renewed = other
        .run(&key, LockOptions::new().watchdog(), async {
            server.script_flush().await;
            tokio::time::sleep(Duration::from_millis(900)).await;
            Ok::<_, LockError>(())
        })
        .await;
    assert!(renewed.is_ok(), "renewal after a flush: {renewed:?}");
}

/// A release publishes on `<redis key>:released`, the channel waiters subscribe to, once somebody
/// has waited for the lock (a failed try marks it); a release nobody waited for publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_publishes_on_the_release_channel_when_awaited() {
    let server = RedisServer::start();
    let locks = server.manager().await;
    let other = server.manager().await;
    let key = LockKey::new("scripts").part("publish");
    let channel = format!("{}:released", locks.redis_key(&key));
    let mut pubsub = server.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();

    let published = || async {
        server
            .command_calls()
            .await
            .get("publish")
            .copied()
            .unwrap_or(0)
    };
    let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
    assert!(guard.release().await.unwrap());
    assert_eq!(published().await, 0, "nobody waited: no message");

    let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
    let refused = other
        .lock(&key, LockOptions::new().wait(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(refused.is_not_acquired());
    assert!(guard.release().await.unwrap());
    let message = timeout(Duration::from_secs(2), pubsub.on_message().next())
        .await
        .expect("a message on the release channel")
        .unwrap();
    assert_eq!(message.get_channel_name(), channel);
    assert_eq!(published().await, 1);
}

/// Each acquisition stores its own owner token (at least 128 bits of hex), whichever instance
/// takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_tokens_differ_per_acquisition() {
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let key = LockKey::new("scripts").part("owners");
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let locks = &managers[i % 2];
        let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
        let owner = get(&server, &locks.redis_key(&key))
            .await
            .expect("the lock key holds the owner token");
        assert!(
            owner.len() >= 32,
            "owner token {owner:?} is shorter than 128 bits of hex"
        );
        assert!(
            seen.insert(owner.clone()),
            "owner token {owner} issued twice"
        );
        guard.release().await.unwrap();
    }
}

/// A release that finds the lock taken by someone else logs a warning naming the key.
#[tokio::test]
async fn late_release_warns_with_the_key() {
    let server = RedisServer::start();
    let (first, second) = (server.manager().await, server.manager().await);
    let key = LockKey::new("scripts").part("late");
    let logs = LogCapture::new();
    let _capture = logs.install();

    let stale = first
        .lock(&key, LockOptions::new().lease(Duration::from_millis(200)))
        .await
        .unwrap();
    let current = second
        .lock(&key, LockOptions::new().wait(Duration::from_secs(3)))
        .await
        .unwrap();
    assert!(!stale.release().await.unwrap());
    let redis_key = first.redis_key(&key);
    let warning = logs
        .lines()
        .into_iter()
        .find(|l| l.starts_with("event WARN") && l.contains(&redis_key));
    assert!(
        warning.is_some(),
        "no warning naming {redis_key}:\n{}",
        logs.text()
    );
    current.release().await.unwrap();
}
