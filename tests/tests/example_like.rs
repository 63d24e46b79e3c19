//! The like demo (`examples/like_match.rs`) in CI: two service instances, each with its own
//! `LockManager` on a real `redis-server` started here, on the embedded SQLite and on PostgreSQL
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; a missing PostgreSQL fails
//! the test, it does not skip it).
//!
//! Unguarded, pairs who like each other at the same instant get two matches (or none); guarded
//! with `key = lock_guard::unordered(from, to)`, and guarded + fenced, exactly one match and one
//! chat room each. With the `--stall-commit` fault (the first instance's match `COMMIT`s land after
//! the deadline, and the failed call is retried on the other instance), guarded pairs get doubled
//! matches and fenced ones do not.

use lock_guard::LockManager;
use lock_guard_examples::LikeService;
use lock_guard_examples::db::{Db, Tables, unique_prefix};
use lock_guard_examples::keyword::UserId;
use lock_guard_examples::like::{
    LikeMode, LikeOutcome, LikeReport, run_pairs, run_pairs_with, table,
};
use lock_guard_tests::RedisServer;

const PAIRS: usize = 100;
const WAVE: usize = 25;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn postgres() -> Db {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
    let db = Db::open(&url, Tables::new(&unique_prefix()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "this test needs PostgreSQL: could not connect to {url}: {e}\n\
                 start one (e.g. `apt-get install postgresql`, trust auth for 127.0.0.1) or set \
                 DATABASE_URL=postgres://user@host:port/db"
            )
        });
    db.create_tables().await.expect("create the demo tables");
    db
}

async fn services(db: &Db, managers: &[LockManager]) -> Vec<LikeService> {
    let mut services = Vec::new();
    for locks in managers {
        let pool = db.connect_again().await.expect("a pool per instance");
        services.push(LikeService::new(pool, locks.clone()));
    }
    services
}

async fn rounds(services: &[LikeService]) -> (LikeReport, LikeReport, LikeReport) {
    let unguarded = run_pairs(services, false, PAIRS, WAVE, 1, |_, _| {})
        .await
        .expect("unguarded round");
    let guarded = run_pairs(services, true, PAIRS, WAVE, 100_001, |_, _| {})
        .await
        .expect("guarded round");
    let fenced = run_pairs_with(
        services,
        LikeMode::Fenced,
        false,
        PAIRS,
        WAVE,
        200_001,
        |_, _| {},
    )
    .await
    .expect("fenced round");
    (unguarded, guarded, fenced)
}

fn assert_race_then_exact(unguarded: &LikeReport, guarded: &LikeReport, fenced: &LikeReport) {
    let shown = table(&[unguarded.clone(), guarded.clone(), fenced.clone()]);
    assert!(
        fenced.exact() && fenced.errors + fenced.not_acquired == 0,
        "fenced (first failure: {:?}):\n{shown}",
        fenced.first_error
    );
    assert!(
        unguarded.doubled + unguarded.missed + unguarded.errors > 0,
        "the unguarded likes should have raced (doubled or missed matches, or errors):\n{shown}"
    );
    assert_eq!(
        guarded.errors + guarded.not_acquired,
        0,
        "guarded failures (first: {:?}):\n{shown}",
        guarded.first_error
    );
    assert_eq!(guarded.doubled, 0, "{shown}");
    assert_eq!(guarded.missed, 0, "{shown}");
    assert_eq!(guarded.matches, PAIRS, "{shown}");
    assert_eq!(guarded.chat_rooms, PAIRS, "{shown}");
    assert!(guarded.exact(), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sqlite_with_redis_makes_one_match_per_pair_only_when_guarded() {
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let db = Db::embedded().await.expect("embedded SQLite");
    let (unguarded, guarded, fenced) = rounds(&services(&db, &managers).await).await;
    assert_race_then_exact(&unguarded, &guarded, &fenced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis_makes_one_match_per_pair_only_when_guarded() {
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let db = postgres().await;
    let (unguarded, guarded, fenced) = rounds(&services(&db, &managers).await).await;
    db.drop_tables().await.expect("drop the demo tables");
    assert_race_then_exact(&unguarded, &guarded, &fenced);
}

/// The outcomes one pair sees, in either order, on one instance: liked, then matched, then
/// already matched; a self-like is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn like_outcomes_in_sequence() {
    let db = Db::embedded().await.expect("embedded SQLite");
    let service = LikeService::new(db, LockManager::memory());
    let (a, b) = (UserId(9), UserId(7));
    assert_eq!(service.like(a, b).await.unwrap(), LikeOutcome::Liked);
    let LikeOutcome::Matched { match_id, .. } = service.like(b, a).await.unwrap() else {
        panic!("the second like of a pair makes the match");
    };
    assert_eq!(
        service.like(a, b).await.unwrap(),
        LikeOutcome::AlreadyMatched { match_id }
    );
    let err = service.like(a, a).await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
}

/// `--stall-commit` on PostgreSQL: the first instance's match `COMMIT`s land 2.5 s late, after the
/// body's 2 s deadline; the failed call is retried on the other instance. Guarded: doubled
/// matches. Fenced: none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_commits_double_matches_when_guarded_and_not_when_fenced() {
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let db = postgres().await;
    let mut instances = Vec::new();
    for (i, locks) in managers.iter().enumerate() {
        let pool = db.connect_again().await.expect("a pool per instance");
        let stall = Some(std::time::Duration::from_millis(2500)).filter(|_| i == 0);
        instances.push(LikeService::new(pool, locks.clone()).with_stall_commit(stall));
    }
    const STALLED: usize = 30;
    let guarded = run_pairs_with(
        &instances,
        LikeMode::Guarded,
        true,
        STALLED,
        STALLED,
        1,
        |_, _| {},
    )
    .await
    .expect("guarded round");
    let fenced = run_pairs_with(
        &instances,
        LikeMode::Fenced,
        true,
        STALLED,
        STALLED,
        100_001,
        |_, _| {},
    )
    .await
    .expect("fenced round");
    // Late COMMITs may land after a round's count: wait until no session is inside a
    // transaction, then count again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(db.pool())
        .await
        .expect("pg_stat_activity");
        if busy == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let doubled = |first: i64| {
        let db = db.clone();
        async move {
            let t = db.tables();
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT COUNT(*) FROM (SELECT user_a FROM {} WHERE user_a >= $1 AND user_a < $2 \
                 GROUP BY user_a, user_b HAVING COUNT(*) > 1) d",
                t.matches
            ))
            .bind(first)
            .bind(first + 2 * STALLED as i64)
            .fetch_one(db.pool())
            .await
            .expect("count doubled pairs")
        }
    };
    let (guarded_doubled, fenced_doubled) = (doubled(1).await, doubled(100_001).await);
    db.drop_tables().await.expect("drop the demo tables");
    let shown = table(&[guarded.clone(), fenced.clone()]);
    assert!(
        guarded.retried > 0 && fenced.retried > 0,
        "the fault fired:\n{shown}"
    );
    assert!(
        guarded_doubled > 0,
        "the late COMMITs should have doubled matches:\n{shown}"
    );
    assert_eq!(fenced_doubled, 0, "{shown}");
    assert_eq!(fenced.doubled, 0, "{shown}");
}
