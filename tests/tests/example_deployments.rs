//! The keyword demo (`examples/keyword_dedupe.rs`) on the other deployments it accepts: Redlock
//! over 3 independent `redis-server`s (`REDLOCK=url,url,url`) and a 3-master Redis Cluster
//! (`REDIS_CLUSTER=host:port,…`), both started here on loopback ports. The managers come from the
//! demo's own [`Setup`], read from those variables as the demo reads them; two app instances, one
//! manager each, on an embedded SQLite. The unguarded route must race, the guarded one must store
//! every keyword exactly once.

use std::collections::HashMap;

use lock_guard_examples::db::Db;
use lock_guard_examples::driver::{BurstPlan, Driver, PhaseReport, Route, table};
use lock_guard_examples::instance::Instance;
use lock_guard_examples::keyword::DEFAULT_WORK;
use lock_guard_examples::setup::{DbSetup, LockSetup, Setup, start_instances};
use lock_guard_tests::{RedisCluster, RedisServer};

/// 4 bursts x 6 users x 2 keywords, each request twice to each instance at once.
const PLAN: BurstPlan = BurstPlan {
    bursts: 4,
    users: 6,
    keywords: 2,
    copies: 2,
};

/// The demo's setup from these environment variables (and nothing else).
fn setup_from(vars: &[(&str, String)]) -> Setup {
    let vars: HashMap<&str, String> = vars.iter().cloned().collect();
    Setup::from_vars(|name| vars.get(name).cloned())
}

/// Both phases of the demo on two instances of a fresh embedded database, with the managers the
/// setup builds; asserts the race without the guard and exactly one row per keyword with it.
async fn demo(setup: &Setup) {
    let managers = setup.lock_managers(2).await.expect("the setup's managers");
    let db = Db::embedded().await.expect("embedded SQLite");
    let instances = start_instances(&db, &managers, DEFAULT_WORK)
        .await
        .expect("start the instances");
    let driver = Driver::new(instances.iter().map(Instance::url).collect());
    let unguarded = driver
        .run_phase(Route::Unguarded, &PLAN, 1, |_| {})
        .await
        .expect("unguarded phase");
    let guarded = driver
        .run_phase(Route::Guarded, &PLAN, 1_001, |_| {})
        .await
        .expect("guarded phase");
    for instance in instances {
        instance.stop().await.expect("stop an instance");
    }
    assert_race_then_exact(&unguarded, &guarded, managers.len());
}

fn assert_race_then_exact(unguarded: &PhaseReport, guarded: &PhaseReport, instances: usize) {
    let shown = table(&[unguarded.clone(), guarded.clone()]);
    for r in [unguarded, guarded] {
        assert_eq!(r.requests, PLAN.requests(instances), "{shown}");
    }
    assert!(
        unguarded.duplicates() + unguarded.errors() > 0,
        "the unguarded check-then-insert should have raced (duplicates or errors):\n{shown}"
    );
    assert_eq!(guarded.duplicates(), 0, "guarded duplicates:\n{shown}");
    assert_eq!(
        guarded.errors(),
        0,
        "guarded errors (first: {:?}):\n{shown}",
        guarded.first_error
    );
    assert_eq!(guarded.rows, PLAN.distinct(), "{shown}");
    assert_eq!(guarded.outcomes.created, PLAN.distinct(), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_demo_on_redlock_of_three_masters_stores_each_keyword_once() {
    let nodes = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let urls = nodes.iter().map(RedisServer::url).collect::<Vec<_>>();
    let setup = setup_from(&[("REDLOCK", urls.join(","))]);
    assert_eq!(setup.locks, LockSetup::Redlock(urls));
    assert!(setup.describe()[0].contains("Redlock over 3 independent masters"));
    demo(&setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_demo_on_a_cluster_stores_each_keyword_once() {
    let cluster = RedisCluster::start().await;
    // As a user writes it: host:port of the masters, no scheme.
    let nodes = cluster.nodes()[..3]
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect::<Vec<_>>();
    let setup = setup_from(&[("REDIS_CLUSTER", nodes.join(", "))]);
    assert_eq!(setup.locks, LockSetup::Cluster(cluster.urls()));
    assert!(setup.describe()[0].contains("Redis Cluster"));
    demo(&setup).await;
}

/// Which variable wins, and that passwords never reach the output.
#[test]
fn the_setup_reads_the_deployment_and_redacts_passwords() {
    let setup = setup_from(&[
        ("REDIS_URL", "redis://single:6379".to_owned()),
        (
            "REDLOCK",
            "redis://:pw1@a:1,rediss://bob:pw2@b:2,c:3".to_owned(),
        ),
        ("DATABASE_URL", "postgres://u:dbpw@h/db".to_owned()),
    ]);
    assert_eq!(
        setup.locks,
        LockSetup::Redlock(vec![
            "redis://:pw1@a:1".to_owned(),
            "rediss://bob:pw2@b:2".to_owned(),
            "redis://c:3".to_owned(),
        ])
    );
    assert_eq!(setup.db, DbSetup::Url("postgres://u:dbpw@h/db".to_owned()));
    assert!(setup.shared_across_processes());
    let [locks, db] = setup.describe();
    assert!(
        locks.contains("redis://:***@a:1, rediss://bob:***@b:2, redis://c:3"),
        "{locks}"
    );
    for secret in ["pw1", "pw2", "dbpw"] {
        assert!(
            !locks.contains(secret) && !db.contains(secret),
            "{locks} {db}"
        );
    }

    let cluster = setup_from(&[
        ("REDIS_CLUSTER", "h1:7000,redis://:pw@h2:7001".to_owned()),
        ("REDLOCK", "redis://a:1".to_owned()),
    ]);
    assert_eq!(
        cluster.locks,
        LockSetup::Cluster(vec![
            "redis://h1:7000".to_owned(),
            "redis://:pw@h2:7001".to_owned()
        ])
    );
    assert!(!cluster.describe()[0].contains("pw@"));
    assert!(!cluster.shared_across_processes(), "no DATABASE_URL");

    let empty = setup_from(&[("REDIS_CLUSTER", " ".to_owned())]);
    assert_eq!(empty.locks, LockSetup::Memory);
    assert_eq!(
        setup_from(&[("REDIS_URL", "redis://x:1".to_owned())]).locks,
        LockSetup::Redis("redis://x:1".to_owned())
    );
}
