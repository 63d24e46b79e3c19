//! The subscriber with thousands of waiting keys: it subscribes (and after a lost connection,
//! subscribes again) many release channels per command, and every waiter is still woken by its
//! release.

use std::time::Duration;

use lock_guard::{LockKey, LockOptions};
use lock_guard_tests::{RedisServer, eventually};
use tokio::task::JoinSet;
use tokio::time::Instant;

const KEYS: usize = 5_000;

/// How many pub/sub channels the server has (counted, not listed, to keep each look cheap).
async fn channels(server: &RedisServer) -> usize {
    let n: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("*:released")
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    n.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_waiting_keys_resubscribe_in_batches_and_every_waiter_is_woken() {
    let server = RedisServer::start();
    let holder = server.manager().await;
    let waiter = server.manager().await;
    let keys: Vec<LockKey> = (0..KEYS)
        .map(|i| LockKey::new("many").part(i.to_string()))
        .collect();
    // Held far longer than the test: only a release can hand a key over in time.
    let lease = Duration::from_secs(120);
    let mut guards = Vec::with_capacity(KEYS);
    for key in &keys {
        guards.push(
            holder
                .lock(key, LockOptions::new().lease(lease))
                .await
                .unwrap(),
        );
    }

    let mut set = JoinSet::new();
    for key in &keys {
        let (waiter, key) = (waiter.clone(), key.clone());
        set.spawn(async move {
            waiter
                .lock(&key, LockOptions::new().wait(Duration::from_secs(90)))
                .await
                .map(drop)
                .map(|()| Instant::now())
        });
    }
    let started = Instant::now();
    eventually(
        Duration::from_secs(60),
        "every waiter queued and subscribed",
        || async { waiter.metrics().waiters == KEYS && channels(&server).await == KEYS },
    )
    .await;
    let subscribed_in = started.elapsed();
    let first_subscribes = waiter.metrics().subscriber_commands;

    // The subscriber connection is cut: it reconnects and subscribes every channel again.
    let before = waiter.metrics().subscriber_commands;
    let killed_at = Instant::now();
    assert!(server.kill_pubsub_clients().await >= 1);
    eventually(
        Duration::from_secs(60),
        "every channel subscribed again",
        || async { channels(&server).await == KEYS },
    )
    .await;
    let resubscribed_in = killed_at.elapsed();
    let resubscribes = waiter.metrics().subscriber_commands - before;
    eprintln!(
        "{KEYS} waiting keys: subscribed in {subscribed_in:?} with {first_subscribes} SUBSCRIBE \
         commands; after CLIENT KILL TYPE pubsub, subscribed again in {resubscribed_in:?} with \
         {resubscribes} commands"
    );

    // Every waiter is woken by its key's release, long before the holder's lease would end.
    let released_at = Instant::now();
    for guard in guards {
        assert!(guard.release().await.unwrap());
    }
    let mut last = released_at;
    while let Some(joined) = set.join_next().await {
        let at = joined
            .unwrap()
            .expect("every waiter gets its lock within its wait");
        last = last.max(at);
    }
    eprintln!(
        "all {KEYS} waiters served {:?} after the releases began",
        last - released_at
    );
    assert!(
        last - released_at < Duration::from_secs(60),
        "the last waiter was served {:?} after the releases began",
        last - released_at
    );
    // Batched: a command per thousand channels, not one per channel (a few more when requests
    // arrive spread over time, as the first subscriptions do).
    assert!(
        resubscribes <= (KEYS / 1000 + 1) as u64,
        "{resubscribes} commands to subscribe {KEYS} channels again"
    );
    assert!(
        first_subscribes < (KEYS / 10) as u64,
        "{first_subscribes} commands to subscribe {KEYS} channels"
    );
}
