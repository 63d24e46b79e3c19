//! The keyword demo (`examples/keyword_dedupe.rs`) in CI: app instances on loopback ports, each
//! with its own `LockManager` on a real `redis-server` started here, on the embedded SQLite and on
//! PostgreSQL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; a missing
//! PostgreSQL fails these tests, it does not skip them).
//!
//! The unguarded route must show the race (duplicates or failed requests), the guarded and the
//! fenced ones must show neither; and the HTTP answers must be those of the issue: 201, 200, 409,
//! 503, 400. With the `--stall-commit` fault (the first instance's `COMMIT`s land after the body's
//! deadline), the guarded route stores duplicates and the fenced one none.

use std::time::{Duration, Instant};

use lock_guard::{LockKey, LockManager, LockOptions};
use lock_guard_examples::db::{Db, Tables, unique_prefix};
use lock_guard_examples::driver::{BurstPlan, Driver, PhaseReport, Route, table};
use lock_guard_examples::error::ErrorBody;
use lock_guard_examples::instance::Instance;
use lock_guard_examples::keyword::{
    DEFAULT_WORK, KeywordService, MAX_KEYWORD_CHARS, StoredKeyword,
};
use lock_guard_examples::setup::{start_instances, start_instances_stalling};
use lock_guard_examples::{reqwest, serde_json};
use lock_guard_tests::RedisServer;
use reqwest::StatusCode;

/// 5 bursts x 6 users x 2 keywords, each request twice to each of the instances at once.
const PLAN: BurstPlan = BurstPlan {
    bursts: 5,
    users: 6,
    keywords: 2,
    copies: 2,
};

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Fresh tables in the PostgreSQL of `DATABASE_URL` (or the default); panics with what to do when
/// there is none.
async fn postgres() -> Db {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
    let db = Db::open(&url, Tables::new(&unique_prefix()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL: could not connect to {url}: {e}\n\
                 start one (e.g. `apt-get install postgresql`, trust auth for 127.0.0.1) or set \
                 DATABASE_URL=postgres://user@host:port/db"
            )
        });
    db.create_tables().await.expect("create the demo tables");
    db
}

/// The three phases of the demo on `instances` instances of `db`, one manager each.
async fn demo(db: &Db, managers: &[LockManager]) -> (PhaseReport, PhaseReport, PhaseReport) {
    let instances = start_instances(db, managers, DEFAULT_WORK)
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
    let fenced = driver
        .run_phase(Route::Fenced, &PLAN, 2_001, |_| {})
        .await
        .expect("fenced phase");
    for instance in instances {
        instance.stop().await.expect("stop an instance");
    }
    (unguarded, guarded, fenced)
}

fn assert_race_then_exact(
    unguarded: &PhaseReport,
    guarded: &PhaseReport,
    fenced: &PhaseReport,
    instances: usize,
) {
    let shown = table(&[unguarded.clone(), guarded.clone(), fenced.clone()]);
    for r in [unguarded, guarded, fenced] {
        assert_eq!(r.requests, PLAN.requests(instances), "{shown}");
    }
    assert!(
        unguarded.duplicates() + unguarded.errors() > 0,
        "the unguarded check-then-insert should have raced (duplicates or errors):\n{shown}"
    );
    for r in [guarded, fenced] {
        let name = r.route.name();
        assert_eq!(r.duplicates(), 0, "{name} duplicates:\n{shown}");
        assert_eq!(
            r.errors(),
            0,
            "{name} errors (first: {:?}):\n{shown}",
            r.first_error
        );
        // Every (user, keyword) stored exactly once, by exactly one 201.
        assert_eq!(r.rows, PLAN.distinct(), "{shown}");
        assert_eq!(r.outcomes.created, PLAN.distinct(), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sqlite_with_redis_stores_each_keyword_once_only_when_guarded() {
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let db = Db::embedded().await.expect("embedded SQLite");
    let (unguarded, guarded, fenced) = demo(&db, &managers).await;
    assert_race_then_exact(&unguarded, &guarded, &fenced, managers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis_stores_each_keyword_once_only_when_guarded() {
    let server = RedisServer::start();
    let managers = [
        server.manager().await,
        server.manager().await,
        server.manager().await,
    ];
    let db = postgres().await;
    let (unguarded, guarded, fenced) = demo(&db, &managers).await;
    db.drop_tables().await.expect("drop the demo tables");
    assert_race_then_exact(&unguarded, &guarded, &fenced, managers.len());
}

/// The example's default setup: no server at all, two instances sharing one memory manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sqlite_with_one_shared_memory_manager() {
    let shared = LockManager::memory();
    let managers = [shared.clone(), shared];
    let db = Db::embedded().await.expect("embedded SQLite");
    let (unguarded, guarded, fenced) = demo(&db, &managers).await;
    assert_race_then_exact(&unguarded, &guarded, &fenced, managers.len());
}

/// `--stall-commit` on PostgreSQL: the first instance's `COMMIT`s reach the database 2.5 s late,
/// after the body's 2 s deadline. With the lock alone, a later holder's check-then-insert runs
/// before that `COMMIT` lands: duplicates. Fenced: none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_commits_duplicate_rows_when_guarded_and_not_when_fenced() {
    const STALL_PLAN: BurstPlan = BurstPlan {
        bursts: 2,
        users: 8,
        keywords: 1,
        copies: 2,
    };
    let server = RedisServer::start();
    let managers = [server.manager().await, server.manager().await];
    let db = postgres().await;
    let instances = start_instances_stalling(
        &db,
        &managers,
        DEFAULT_WORK,
        Some(Duration::from_millis(2500)),
    )
    .await
    .expect("start the instances");
    let driver = Driver::new(instances.iter().map(Instance::url).collect());
    let guarded = driver
        .run_phase(Route::Guarded, &STALL_PLAN, 1, |_| {})
        .await
        .expect("guarded phase");
    let fenced = driver
        .run_phase(Route::Fenced, &STALL_PLAN, 1_001, |_| {})
        .await
        .expect("fenced phase");
    for instance in instances {
        instance.stop().await.expect("stop an instance");
    }
    // The late COMMITs of the last burst: wait until no session is inside a transaction.
    let deadline = Instant::now() + Duration::from_secs(15);
    while sqlx_busy(&db).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let guarded = driver_recount(&db, guarded, 1, &STALL_PLAN).await;
    let fenced = driver_recount(&db, fenced, 1_001, &STALL_PLAN).await;
    db.drop_tables().await.expect("drop the demo tables");
    let shown = table(&[guarded.clone(), fenced.clone()]);
    assert!(
        guarded.duplicates() > 0,
        "the late COMMITs should have duplicated rows under the lock alone:\n{shown}"
    );
    assert_eq!(fenced.duplicates(), 0, "{shown}");
    assert!(fenced.rows > 0, "{shown}");
}

/// Sessions of the demo database inside a transaction.
async fn sqlx_busy(db: &Db) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(db.pool())
    .await
    .expect("pg_stat_activity")
}

/// `report` with its rows counted again from the table (late COMMITs land after the phase).
async fn driver_recount(
    db: &Db,
    mut report: PhaseReport,
    first_user: i64,
    plan: &BurstPlan,
) -> PhaseReport {
    let t = &db.tables().keywords;
    let (rows, distinct): (i64, i64) = sqlx::query_as(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT (user_id, keyword)) FROM {t} WHERE user_id >= $1 AND user_id < $2"
    ))
    .bind(first_user)
    .bind(first_user + plan.users as i64)
    .fetch_one(db.pool())
    .await
    .expect("count rows");
    report.rows = rows as usize;
    report.distinct = distinct as usize;
    report
}

/// A client, and the URL of the keyword route of `user`.
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(instance: &Instance) -> Api {
        Api {
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: instance.url(),
        }
    }

    async fn post_raw(&self, path: &str, body: &str) -> (StatusCode, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("an HTTP answer");
        (response.status(), response.text().await.unwrap())
    }

    async fn add(&self, user: &str, keyword: &str) -> (StatusCode, String) {
        let body = serde_json::json!({ "keyword": keyword }).to_string();
        self.post_raw(&format!("/users/{user}/keywords"), &body)
            .await
    }
}

fn error_of(body: &str) -> ErrorBody {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_201_200_409_503_and_400() {
    let mut server = RedisServer::start();
    let locks = server.manager().await;
    let db = Db::embedded().await.expect("embedded SQLite");
    let instance = Instance::start(KeywordService::new(db, locks.clone()), 0)
        .await
        .unwrap();
    let api = Api::new(&instance);

    // 201 for a new keyword, 200 with the same row for an existing one.
    let (status, body) = api.add("7", "rust").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created: StoredKeyword = serde_json::from_str(&body).unwrap();
    assert_eq!(created.keyword, "rust");
    let (status, body) = api.add("7", "  rust ").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let existing: StoredKeyword = serde_json::from_str(&body).unwrap();
    assert_eq!(existing, created);

    // 400 for empty or over-long keywords; exactly the limit is fine.
    for bad in ["", "   ", &"k".repeat(MAX_KEYWORD_CHARS + 1), "tab\tbed"] {
        let (status, body) = api.add("7", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(error_of(&body).error, "invalid_input");
    }
    let (status, body) = api.add("7", &"é".repeat(MAX_KEYWORD_CHARS)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Malformed requests are rejected by axum, never a panic: the instance keeps answering.
    let malformed = [
        ("/users/7/keywords", "{not json"),
        ("/users/7/keywords", "{\"word\": \"rust\"}"),
        ("/users/7/keywords", "[]"),
        ("/users/seven/keywords", "{\"keyword\": \"rust\"}"),
        (
            "/users/99999999999999999999/keywords",
            "{\"keyword\": \"rust\"}",
        ),
        ("/unguarded/users/-/keywords", "{\"keyword\": \"rust\"}"),
    ];
    for (path, body) in malformed {
        let (status, answer) = api.post_raw(path, body).await;
        assert!(
            matches!(status.as_u16(), 400 | 415 | 422),
            "{path} {body}: {status} {answer}"
        );
    }

    // 409 naming the error when the lock stays held for the whole wait (3 s).
    let held = locks
        .lock(
            &LockKey::new("keyword").part(8),
            LockOptions::new().lease(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (status, body) = api.add("8", "busy").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = error_of(&body);
    assert_eq!(error.error, "not_acquired");
    assert!(
        error.message.contains("lock:{keyword:8}"),
        "{}",
        error.message
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Another user is not blocked meanwhile.
    assert_eq!(api.add("9", "free").await.0, StatusCode::CREATED);
    held.release().await.unwrap();
    assert_eq!(api.add("8", "busy").await.0, StatusCode::CREATED);

    // 503 when the lock backend is down, in bounded time.
    server.kill();
    let started = Instant::now();
    let (status, body) = api.add("10", "down").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_of(&body).error, "lock_backend");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The unguarded route does not need the lock service.
    let (status, body) = api
        .post_raw("/unguarded/users/10/keywords", "{\"keyword\": \"down\"}")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Every row listed, nothing stored by the rejected requests.
    let list: Vec<StoredKeyword> = api
        .client
        .get(format!("{}/users/7/keywords", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    instance.stop().await.unwrap();
}
