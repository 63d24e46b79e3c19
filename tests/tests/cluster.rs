//! Redis Cluster (§6) on a 3-master + 3-replica cluster the test starts: exclusion with two managers
//! on keys spread over all three masters, waiting on release notifications without polling, and a
//! `CLUSTER FAILOVER` under load with no two holders and no token going backwards. The attribute
//! is used unchanged.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions, concurrency_guard};
use lock_guard_tests::{RedisCluster, eventually};
use tokio::task::JoinSet;
use tokio::time::Instant;

const KEYS: usize = 12;

/// Per key: whether a body runs, how many overlaps were seen, the tokens in the order the bodies
/// ran.
#[derive(Default)]
struct Ledger {
    busy: Vec<AtomicBool>,
    overlaps: AtomicU64,
    tokens: Mutex<HashMap<usize, Vec<u64>>>,
}

impl Ledger {
    fn new(keys: usize) -> Self {
        Ledger {
            busy: (0..keys).map(|_| AtomicBool::new(false)).collect(),
            ..Ledger::default()
        }
    }

    async fn body(&self, k: usize, token: u64) {
        self.hold(k, token, tokio::time::sleep(Duration::from_millis(1)))
            .await;
    }

    /// A body of key `k` that lasts until `until` completes.
    async fn hold(&self, k: usize, token: u64, until: impl Future<Output = ()>) {
        if self.busy[k].swap(true, SeqCst) {
            self.overlaps.fetch_add(1, SeqCst);
        }
        self.tokens
            .lock()
            .unwrap()
            .entry(k)
            .or_default()
            .push(token);
        until.await;
        self.busy[k].store(false, SeqCst);
    }

    fn check(&self) -> usize {
        assert_eq!(
            self.overlaps.load(SeqCst),
            0,
            "two holders of one key overlapped"
        );
        let tokens = self.tokens.lock().unwrap();
        for (k, t) in tokens.iter() {
            assert!(
                t.windows(2).all(|w| w[0] < w[1]),
                "tokens of key {k} went backwards: {t:?}"
            );
        }
        tokens.values().map(Vec::len).sum()
    }
}

fn key(k: usize) -> LockKey {
    LockKey::new("cluster").part(k)
}

/// The fencing token of the current guarded body.
fn token() -> u64 {
    lock_guard::fencing_token().expect("inside a guarded body")
}

/// Runs `during` (a failover) while a body of every key runs through `locks`: the bodies start
/// before it and end after it, and `probe` tries every key (`wait = 0`) every 20 ms meanwhile
/// (waiters sleep until a release, so only fresh tries would notice a lock gone), so a lock the
/// failover lost is taken by the probe while its holder still runs — an overlap the ledger
/// reports. Each body must end `Ok`: the library held its lock throughout.
async fn spanning<F: Future>(
    locks: &LockManager,
    probe: &LockManager,
    ledger: &Arc<Ledger>,
    during: F,
) -> F::Output {
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let (end_tx, end) = tokio::sync::watch::channel(false);
    let mut holders = JoinSet::new();
    for k in 0..KEYS {
        let (locks, ledger, entered_tx, mut end) = (
            locks.clone(),
            ledger.clone(),
            entered_tx.clone(),
            end.clone(),
        );
        holders.spawn(async move {
            let options = LockOptions::new()
                .wait(Duration::from_secs(10))
                .lease(Duration::from_secs(30));
            locks
                .run(&key(k), options, async {
                    let _ = entered_tx.send(k);
                    let until = async {
                        let _ = end.wait_for(|e| *e).await;
                    };
                    ledger.hold(k, token(), until).await;
                    Ok::<_, LockError>(())
                })
                .await
        });
    }
    for _ in 0..KEYS {
        tokio::time::timeout(Duration::from_secs(15), entered.recv())
            .await
            .expect("every key taken before the failover");
    }
    let prober = tokio::spawn({
        let (probe, ledger, end) = (probe.clone(), ledger.clone(), end.clone());
        async move {
            while !*end.borrow() {
                for k in 0..KEYS {
                    // NotAcquired is the answer expected; backend errors while the slots move.
                    let _ = probe
                        .run(&key(k), LockOptions::new().wait(Duration::ZERO), async {
                            ledger.body(k, token()).await;
                            Ok::<_, LockError>(())
                        })
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let out = during.await;
    end_tx.send(true).unwrap();
    prober.await.unwrap();
    while let Some(r) = holders.join_next().await {
        r.unwrap()
            .expect("a body spanning the failover kept its lock");
    }
    out
}

/// Keys 0..KEYS land on all three masters (so the test covers every shard).
async fn masters_covered(cluster: &RedisCluster, locks: &LockManager) -> usize {
    let mut ports = BTreeSet::new();
    for k in 0..KEYS {
        let slot = cluster.slot(&locks.redis_key(&key(k))).await;
        ports.insert(cluster.master_of(slot).await.port());
    }
    ports.len()
}

struct Instance {
    locks: LockManager,
    ledger: Arc<Ledger>,
}

impl Instance {
    #[concurrency_guard(name = "cluster-attr", wait = 30s, lease = 5s, locks = self.locks)]
    async fn work(&self, k: usize) -> Result<(), LockError> {
        let token = lock_guard::fencing_token().expect("inside a guarded body");
        self.ledger.body(k, token).await;
        Ok(())
    }
}

/// Two managers, 24 tasks, 12 keys spread over the three masters, through the attribute: one
/// holder per key at a time, tokens rising per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_exclude_each_other_on_every_shard() {
    let cluster = RedisCluster::start().await;
    let ledger = Arc::new(Ledger::new(KEYS));
    let instances = [
        Arc::new(Instance {
            locks: cluster.manager().await,
            ledger: ledger.clone(),
        }),
        Arc::new(Instance {
            locks: cluster.manager().await,
            ledger: ledger.clone(),
        }),
    ];
    assert_eq!(masters_covered(&cluster, &instances[0].locks).await, 3);
    let mut tasks = JoinSet::new();
    for t in 0..2 * KEYS {
        let instance = instances[t % 2].clone();
        tasks.spawn(async move {
            for round in 0..8 {
                instance.work((t + round) % KEYS).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(ledger.check(), 2 * KEYS * 8);
}

/// A waiter behind a holder sends nothing while it waits (classic pub/sub through one node
/// carries the release of a key on any master), and takes the lock promptly after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_does_not_poll_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let (holder, waiter) = (cluster.manager().await, cluster.manager().await);
    // A key whose master is not the subscriber's node (the first URL).
    let mut k = 0;
    while cluster
        .master_of(cluster.slot(&holder.redis_key(&key(k))).await)
        .await
        .port()
        == cluster.nodes()[0].port()
    {
        k += 1;
    }
    let lease = Duration::from_secs(8);
    let guard = holder
        .lock(&key(k), LockOptions::new().lease(lease))
        .await
        .unwrap();
    let before = (
        waiter.metrics().commands,
        cluster.command_calls("evalsha").await,
    );
    let task = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key(k));
        async move {
            let g = waiter
                .lock(
                    &key,
                    LockOptions::new()
                        .wait(Duration::from_secs(10))
                        .lease(lease),
                )
                .await;
            (Instant::now(), g)
        }
    });
    eventually(Duration::from_secs(2), "the waiter queued", || {
        let waiter = waiter.clone();
        async move { waiter.metrics().waiters == 1 }
    })
    .await;
    let queued = (
        waiter.metrics().commands,
        cluster.command_calls("evalsha").await,
    );
    assert!(
        queued.0 - before.0 <= 3,
        "{} commands to queue",
        queued.0 - before.0
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(waiter.metrics().commands, queued.0, "the waiter polled");
    assert_eq!(
        cluster.command_calls("evalsha").await,
        queued.1,
        "scripts ran on the cluster while the lock was held"
    );
    let released_at = Instant::now();
    guard.release().await.unwrap();
    let (acquired_at, g) = task.await.unwrap();
    let g = g.expect("acquired after the release");
    let after = acquired_at - released_at;
    assert!(
        after < Duration::from_secs(1),
        "woke {after:?} after the release"
    );
    g.release().await.unwrap();
}

/// `CLUSTER FAILOVER` of the master of busy keys, twice (there and back), while two managers
/// contend for them: no two holders of a key, its tokens never go backwards, errors only while
/// the slots move, and every key is usable afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_keeps_exclusion_and_tokens() {
    let cluster = RedisCluster::start().await;
    let managers = [cluster.manager().await, cluster.manager().await];
    let ledger = Arc::new(Ledger::new(KEYS));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for t in 0..2 * KEYS {
        let (locks, ledger, stop, errors) = (
            managers[t % 2].clone(),
            ledger.clone(),
            stop.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut i = 0;
            while !stop.load(SeqCst) {
                let k = (t + i) % KEYS;
                i += 1;
                let options = LockOptions::new()
                    .wait(Duration::from_secs(5))
                    .lease(Duration::from_secs(3));
                let r = locks
                    .run(&key(k), options, async {
                        let token = lock_guard::fencing_token().unwrap();
                        ledger.body(k, token).await;
                        Ok::<_, LockError>(())
                    })
                    .await;
                if let Err(e) = r {
                    errors.lock().unwrap().push((Instant::now(), e));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slot = cluster.slot(&managers[0].redis_key(&key(0))).await;
    let master = cluster.master_of(slot).await;
    let replica = cluster.replica_of(master).await;
    // Each failover runs while a body of every key spans it.
    let moving = Instant::now();
    spanning(
        &managers[0],
        &managers[1],
        &ledger,
        cluster.failover(replica),
    )
    .await;
    let first = moving.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    spanning(
        &managers[1],
        &managers[0],
        &ledger,
        cluster.failover(master),
    )
    .await;
    eprintln!("failover under load: the first failover took {first:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let bodies = ledger.check();
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    eprintln!(
        "failover under load: {bodies} bodies, {} errors: {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(bodies > 100, "only {bodies} bodies ran");
    lock_guard_tests::faults::Figures::new(
        "cluster::failover_under_load_keeps_exclusion_and_tokens",
        "Cluster: `CLUSTER FAILOVER` of a busy master and back, under load from two managers, while a body of every key spans each failover",
        "no two holders of a key; tokens never go backwards; errors only while the slots move (S12, S16)",
    )
    .count("bodies", bodies as u64)
    .count("errors", errors.len() as u64)
    .ms("first_failover_ms", first)
    .measured(&format!(
        "{bodies} bodies, {} overlaps, {} errors; a failover took {}",
        ledger.overlaps.load(SeqCst),
        errors.len(),
        lock_guard_tests::faults::ms(first)
    ))
    .print();
    // Errors only once the slots started to move, and only of the backend (the move itself) or a
    // wait that ran out behind the bodies spanning a failover.
    for (at, e) in &errors {
        assert!(*at >= moving, "an error before any failover: {e:?}");
        assert!(e.is_backend() || e.is_not_acquired(), "{e:?}");
    }
    // Every key works after the failovers.
    for k in 0..KEYS {
        let g = managers[0]
            .lock(&key(k), LockOptions::new().wait(Duration::from_secs(5)))
            .await
            .expect("usable after the failovers");
        g.release().await.unwrap();
    }
}

fn node(cluster: &RedisCluster, port: u16) -> &lock_guard_tests::RedisServer {
    cluster.nodes().iter().find(|n| n.port() == port).unwrap()
}

/// A lossy failover: the replica of a key's master is cut off (SIGSTOP); with
/// `wait_for_replicas(1, …)` acquisitions fail with NotReplicated and leave nothing; without it
/// they succeed — and the replica misses them. The master is then killed (SIGKILL) and the stale
/// replica takes over: its tokens still rise above every token the dead master issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_failover_not_replicated_and_tokens_still_rise() {
    let mut cluster = RedisCluster::start().await;
    let plain = cluster.manager().await;
    let acked = LockManager::builder()
        .cluster(cluster.urls())
        .command_timeout(Duration::from_secs(1))
        .wait_for_replicas(1, Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    // A key whose master is not the subscriber's node, so that node stays up.
    let mut k = 0;
    let (master_port, replica_port) = loop {
        let slot = cluster.slot(&plain.redis_key(&key(k))).await;
        let master = cluster.master_of(slot).await;
        if master.port() != cluster.nodes()[0].port() {
            break (master.port(), cluster.replica_of(master).await.port());
        }
        k += 1;
    };
    let redis_key = plain.redis_key(&key(k));

    // Replicated while the replica is live.
    let g = acked
        .lock(&key(k), LockOptions::new())
        .await
        .expect("acknowledged");
    let mut last = g.fencing_token();
    g.release().await.unwrap();

    node(&cluster, replica_port).freeze();
    let err = acked
        .lock(&key(k), LockOptions::new())
        .await
        .expect_err("the replica is cut off");
    assert!(
        matches!(&err, LockError::NotReplicated { key, acked: 0, wanted: 1 } if *key == redis_key),
        "{err:?}"
    );
    let held: Option<String> = redis::cmd("GET")
        .arg(&redis_key)
        .query_async(&mut node(&cluster, master_port).connection().await)
        .await
        .unwrap();
    assert_eq!(held, None, "the unreplicated lock was kept");
    // Without acknowledgement: granted, and lost with the master.
    for _ in 0..5 {
        let g = plain.lock(&key(k), LockOptions::new()).await.unwrap();
        assert!(g.fencing_token() > last);
        last = g.fencing_token();
        g.release().await.unwrap();
    }
    cluster.kill(master_port);
    node(&cluster, replica_port).thaw();
    cluster.takeover(node(&cluster, replica_port)).await;

    // The promoted replica never saw the last tokens; the first acquisition on it may meet a
    // stale slot map and fail once while the client follows the move.
    let start = Instant::now();
    let g = loop {
        match plain.lock(&key(k), LockOptions::new()).await {
            Ok(g) => break g,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                eprintln!("after takeover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no lock after the takeover: {e}"),
        }
    };
    assert!(
        g.fencing_token() > last,
        "token {} after {last}: went backwards across the lossy failover",
        g.fencing_token()
    );
    lock_guard_tests::faults::Figures::new(
        "cluster::lossy_failover_not_replicated_and_tokens_still_rise",
        "Cluster: the replica cut off (`SIGSTOP`), the master killed, the stale replica takes over",
        "with `wait_for_replicas` acquisitions fail `NotReplicated` and leave nothing; tokens still rise across the lossy failover (S11, S12)",
    )
    .count("last_before", last)
    .count("first_after", g.fencing_token())
    .measured(&format!(
        "`NotReplicated` (0 of 1 acknowledged), nothing held; last token before {last}, first after {}",
        g.fencing_token()
    ))
    .print();
    g.release().await.unwrap();
}

/// `kill -9` of a busy master under load, with `wait_for_replicas(1, …)`: every acquisition was on
/// the replica before its body ran, so after the automatic failover no two bodies of a key overlap
/// and tokens never go backwards; calls fail (in bounded time) while the slots move. Afterwards the
/// shard has no replica: acknowledged locks on it fail with NotReplicated, plain ones work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_under_load_with_acknowledged_locks() {
    let mut cluster = RedisCluster::start().await;
    let urls = cluster.urls();
    let acked = || async {
        LockManager::builder()
            .cluster(urls.clone())
            .command_timeout(Duration::from_secs(1))
            .wait_for_replicas(1, Duration::from_millis(300))
            .build()
            .await
            .unwrap()
    };
    let managers = [acked().await, acked().await];
    let ledger = Arc::new(Ledger::new(KEYS));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for t in 0..2 * KEYS {
        let (locks, ledger, stop, errors) = (
            managers[t % 2].clone(),
            ledger.clone(),
            stop.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut i = 0;
            while !stop.load(SeqCst) {
                let k = (t + i) % KEYS;
                i += 1;
                let options = LockOptions::new()
                    .wait(Duration::from_secs(5))
                    .lease(Duration::from_secs(2));
                let r = locks
                    .run(&key(k), options, async {
                        let token = lock_guard::fencing_token().unwrap();
                        ledger.body(k, token).await;
                        Ok::<_, LockError>(())
                    })
                    .await;
                if let Err(e) = r {
                    errors.lock().unwrap().push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slot = cluster.slot(&managers[0].redis_key(&key(0))).await;
    let master = cluster.master_of(slot).await.port();
    let killed_at = Instant::now();
    // The kill and the failover run while a body of every key spans them.
    spanning(&managers[0], &managers[1], &ledger, async {
        cluster.kill(master);
        // The replica is promoted once the others agree the master failed (node timeout 1 s).
        cluster.settle().await;
    })
    .await;
    let failed_over = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let bodies = ledger.check();
    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "kill -9 under load: failover took {failed_over:?}; {bodies} bodies, {} errors, e.g. {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(bodies > 100, "only {bodies} bodies ran");
    lock_guard_tests::faults::Figures::new(
        "cluster::master_killed_under_load_with_acknowledged_locks",
        "Cluster: `kill -9` of a busy master under load, `wait_for_replicas(1, …)`, a body of every key spanning the kill and the failover",
        "no two bodies of a key overlap, tokens never go backwards; calls fail in bounded time while the slots move (S12, S16)",
    )
    .count("bodies", bodies as u64)
    .count("errors", errors.len() as u64)
    .ms("failover_ms", failed_over)
    .measured(&format!(
        "failover took {}; {bodies} bodies, {} overlaps, {} failed calls",
        lock_guard_tests::faults::ms(failed_over),
        ledger.overlaps.load(SeqCst),
        errors.len()
    ))
    .print();
    // The promoted master has no replica left: acknowledged locks on its slots now fail clearly…
    // (asked through a fresh manager: the loaded ones' connections may still be held up by the
    // backlog of WAITs their timed-out tries left on them, each holding its connection for up to
    // 300 ms — a documented cost of pipelining WAIT on a shared connection.)
    let fresh = acked().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fresh.lock(&key(0), LockOptions::new()).await {
            Err(LockError::NotReplicated {
                acked: 0,
                wanted: 1,
                ..
            }) => break,
            Err(e) if e.is_timeout() && Instant::now() < deadline => {}
            other => panic!("expected NotReplicated, got {other:?}"),
        }
    }
    // …and every key is usable without acknowledgement (locks whose release went to the dead
    // master expire with their 2 s lease).
    let plain = cluster.manager().await;
    for k in 0..KEYS {
        let g = plain
            .lock(&key(k), LockOptions::new().wait(Duration::from_secs(5)))
            .await
            .expect("usable after the failover");
        g.release().await.unwrap();
    }
}

/// The node the subscriber is connected to (the first URL) dies: the subscriber moves to another
/// seed node, and a waiter is still woken by the release, not by the holder's lease end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_moves_on_when_its_node_dies() {
    let mut cluster = RedisCluster::start().await;
    let (holder, waiter) = (cluster.manager().await, cluster.manager().await);
    let first = cluster.nodes()[0].port();
    let replica_port = cluster.replica_of(&cluster.nodes()[0]).await.port();
    cluster.kill(first);
    cluster.takeover(node(&cluster, replica_port)).await;
    let lease = Duration::from_secs(8);
    for round in 0..3 {
        let k = key(1000 + round);
        let guard = holder
            .lock(
                &k,
                LockOptions::new().lease(lease).wait(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        let task = tokio::spawn({
            let (waiter, k) = (waiter.clone(), k.clone());
            async move {
                let g = waiter
                    .lock(&k, LockOptions::new().wait(Duration::from_secs(10)))
                    .await;
                (Instant::now(), g)
            }
        });
        eventually(Duration::from_secs(2), "the waiter queued", || {
            let waiter = waiter.clone();
            async move { waiter.metrics().waiters == 1 }
        })
        .await;
        // Past the waiter's subscription and confirming try.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released_at = Instant::now();
        guard.release().await.unwrap();
        let (acquired_at, g) = task.await.unwrap();
        let g = g.expect("acquired after the release");
        let after = acquired_at - released_at;
        eprintln!("subscriber's node dead, round {round}: woken {after:?} after the release");
        assert!(
            after < Duration::from_secs(1),
            "woke {after:?} after the release, not by it"
        );
        g.release().await.unwrap();
    }
}

/// A cluster whose nodes require a login (ACL user, default user off): the manager logs in with
/// the credentials of the URLs and a key prefix, and the password shows nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_cluster_takes_locks_with_the_urls_credentials() {
    let cluster = RedisCluster::start_with(lock_guard_tests::ServerOptions::new().acl()).await;
    let urls = cluster.urls();
    assert!(urls[0].contains("alice:secret@"), "{urls:?}");
    let locks = LockManager::builder()
        .cluster(urls)
        .key_prefix("acl")
        .command_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("a manager that logs in");
    let shown = format!("{locks:?}");
    assert!(!shown.contains("secret"), "{shown}");
    for k in 0..KEYS {
        let guard = locks.lock(&key(k), LockOptions::new()).await.unwrap();
        assert!(guard.key().starts_with("acl:{"), "{}", guard.key());
        guard.release().await.unwrap();
    }
    // Wrong password: refused at build time, as a backend error.
    let wrong: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.replace("alice:secret@", "alice:wrong@"))
        .collect();
    let err = LockManager::builder()
        .cluster(wrong)
        .command_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect_err("a wrong password");
    assert!(err.is_backend(), "{err:?}");
    assert!(!err.to_string().contains("wrong@"), "{err}");
}

/// With `wait_for_replicas`, a release is never queued behind other acquisitions' `WAIT` on the
/// same master: the replica of a key's master is frozen, acquisitions of other keys of that master
/// each `WAIT` their whole timeout (800 ms), and a lock taken before is released meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_not_held_up_by_other_acquisitions_wait() {
    let cluster = RedisCluster::start().await;
    let plain = cluster.manager().await;
    let wait = Duration::from_millis(800);
    let acked = LockManager::builder()
        .cluster(cluster.urls())
        .command_timeout(Duration::from_secs(2))
        .wait_for_replicas(1, wait)
        .build()
        .await
        .unwrap();
    let master_of = |k: usize| {
        let plain = &plain;
        let cluster = &cluster;
        async move {
            let slot = cluster.slot(&plain.redis_key(&key(k))).await;
            cluster.master_of(slot).await.port()
        }
    };
    let master = master_of(0).await;
    let mut others = Vec::new();
    let mut k = 1;
    while others.len() < 4 {
        if master_of(k).await == master {
            others.push(k);
        }
        k += 1;
    }
    let replica = cluster.replica_of(node(&cluster, master)).await.port();
    let held = acked
        .lock(&key(0), LockOptions::new())
        .await
        .expect("acknowledged");
    node(&cluster, replica).freeze();
    let tries: Vec<_> = others
        .iter()
        .map(|&k| {
            let acked = acked.clone();
            tokio::spawn(async move {
                acked
                    .lock(&key(k), LockOptions::new().wait(Duration::ZERO))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let released = held.release().await;
    let took = start.elapsed();
    let mut results = Vec::new();
    for t in tries {
        results.push(t.await.unwrap());
    }
    node(&cluster, replica).thaw();
    eprintln!(
        "cluster: release took {took:?} behind other acquisitions' WAIT; their results: {results:?}"
    );
    assert!(matches!(released, Ok(true)), "{released:?}");
    assert!(
        took < Duration::from_millis(300),
        "a release waited {took:?} behind other acquisitions' WAIT ({wait:?})"
    );
    // Each acquisition waited on its own, not behind the others' WAITs (which would add up past
    // the command timeout).
    for r in results {
        assert!(matches!(r, Err(LockError::NotReplicated { .. })), "{r:?}");
    }
}
