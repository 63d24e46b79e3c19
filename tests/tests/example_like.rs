//! The like demo (`examples/like_match.rs`) in CI: two service instances, each with its own
//! `LockManager` on a real `redis-server` started here, on the embedded SQLite and on PostgreSQL
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; a missing PostgreSQL fails
//! the test, it does not skip it).
//!
//! Unguarded, pairs who like each other at the same instant get two matches (or none); guarded
//! with `key = lock_guard::unordered(from, to)`, exactly one match and one chat room each.

use lock_guard::LockManager;
use lock_guard_examples::LikeService;
use lock_guard_examples::db::{Db, Tables, unique_prefix};
use lock_guard_examples::keyword::UserId;
use lock_guard_examples::like::{LikeOutcome, LikeReport, run_pairs, table};
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

async fn rounds(services: &[LikeService]) -> (LikeReport, LikeReport) {
    let unguarded = run_pairs(services, false, PAIRS, WAVE, 1, |_, _| {})
        .await
        .expect("unguarded round");
    let guarded = run_pairs(services, true, PAIRS, WAVE, 100_001, |_, _| {})
        .await
        .expect("guarded round");
    (unguarded, guarded)
}

fn assert_race_then_exact(unguarded: &LikeReport, guarded: &LikeReport) {
    let shown = table(&[unguarded.clone(), guarded.clone()]);
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
    let (unguarded, guarded) = rounds(&services(&db, &managers).await).await;
    assert_race_then_exact(&unguarded, &guarded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis_makes_one_match_per_pair_only_when_guarded() {
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let db = postgres().await;
    let (unguarded, guarded) = rounds(&services(&db, &managers).await).await;
    db.drop_tables().await.expect("drop the demo tables");
    assert_race_then_exact(&unguarded, &guarded);
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
