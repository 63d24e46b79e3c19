//! Fenced transactions (`lock_guard::sqlx`) against a real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; a missing one fails these tests), SQLite files and
//! real `redis-server`s started here. Every test uses tables of its own (`fx_<test>_<pid>_…`)
//! and drops them.
//!
//! The faults are real: a TCP proxy holding a `COMMIT` on its way to PostgreSQL, worker processes
//! `SIGSTOP`ped or `SIGKILL`ed, Redis restarted empty and from an older snapshot. Each scenario
//! that shows a bug without fencing runs twice: plain transactions (the test asserts the bug
//! appears) and fenced ones (it must not).

use std::str::FromStr as _;
use std::time::Duration;

use lock_guard::sqlx::{FenceError, Fencing};
use lock_guard::{LockKey, LockManager, LockOptions};
use lock_guard_tests::faults::save_snapshot;
use lock_guard_tests::{Direction, Proxy, RedisServer, Worker, field};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor as _, Row as _};
use tokio::time::{Instant, sleep, timeout};

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const WORKER: &str = env!("CARGO_BIN_EXE_fence_worker");

fn pg_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned())
}

fn pg_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&pg_url()).expect("DATABASE_URL")
}

async fn pg_pool(application: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(pg_options().application_name(application))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at {}: {e}\n(scripts/test starts one; or set DATABASE_URL)",
                pg_url()
            )
        })
}

/// `url` with `application_name` set, to find the session in `pg_stat_activity`.
fn with_application(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// Table names no other test or run uses.
fn prefix(test: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 10_000_000);
    format!("fx_{test}_{}_{millis}_", std::process::id())
}

/// `<p>rows` (check-then-insert), `<p>counters` + `<p>history` (the counter workload) and the
/// fence table `<p>fences`.
async fn create_pg_tables(pool: &PgPool, p: &str) -> Fencing {
    for sql in [
        format!(
            "CREATE TABLE {p}rows (id BIGSERIAL PRIMARY KEY, k TEXT NOT NULL, word TEXT NOT NULL, token BIGINT NOT NULL)"
        ),
        format!("CREATE TABLE {p}counters (k TEXT PRIMARY KEY, n BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE {p}history (k TEXT NOT NULL, token BIGINT NOT NULL, seen BIGINT NOT NULL)"
        ),
    ] {
        pool.execute(sql.as_str()).await.expect("create a table");
    }
    let fencing = Fencing::new().table(format!("{p}fences"));
    fencing.ensure(pool).await.expect("ensure the fence table");
    fencing
}

async fn drop_pg_tables(pool: &PgPool, p: &str) {
    for t in ["rows", "counters", "history", "fences"] {
        let _ = pool
            .execute(format!("DROP TABLE IF EXISTS {p}{t}").as_str())
            .await;
    }
}

async fn rows(pool: &PgPool, p: &str) -> Vec<(String, i64)> {
    sqlx::query(&format!("SELECT word, token FROM {p}rows ORDER BY id"))
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until no session named `application` is inside a transaction (committed, rolled back or
/// gone).
async fn settled(pool: &PgPool, application: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state IS DISTINCT FROM 'idle'",
        )
        .bind(application)
        .fetch_one(pool)
        .await
        .unwrap();
        if busy == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "session {application} still in a transaction"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a session named `application` waits for a lock.
async fn waiting_for_lock(pool: &PgPool, application: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock'",
        )
        .bind(application)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "session {application} never waited for a lock"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Check-then-insert of `(k, word)` in a transaction begun by `begin`, committed.
async fn check_then_insert(
    tx: &mut sqlx::PgConnection,
    p: &str,
    k: &str,
    word: &str,
    token: u64,
) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM {p}rows WHERE k = $1 AND word = $2"
    ))
    .bind(k)
    .bind(word)
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_some() {
        return Ok(false);
    }
    sqlx::query(&format!(
        "INSERT INTO {p}rows (k, word, token) VALUES ($1, $2, $3)"
    ))
    .bind(k)
    .bind(word)
    .bind(token as i64)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug in assertion messages")]
enum Failed {
    Lock(lock_guard::LockError),
    Fence(FenceError),
    Db(sqlx::Error),
}
impl From<lock_guard::LockError> for Failed {
    fn from(e: lock_guard::LockError) -> Self {
        Failed::Lock(e)
    }
}
impl From<FenceError> for Failed {
    fn from(e: FenceError) -> Self {
        Failed::Fence(e)
    }
}
impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Failed::Db(e)
    }
}

/// One guarded check-then-insert on `pool`, in a fenced or plain transaction.
async fn guarded_insert(
    locks: &LockManager,
    options: LockOptions,
    fencing: &Fencing,
    fenced: bool,
    pool: &PgPool,
    p: &str,
    word: &str,
) -> Result<bool, Failed> {
    let key = LockKey::new("fenced").part("u1");
    locks
        .run(&key, options, async {
            let token = lock_guard::fence().await?.token();
            let mut tx = if fenced {
                fencing.begin(pool).await?
            } else {
                pool.begin().await?
            };
            let inserted = check_then_insert(&mut tx, p, "u1", word, token).await?;
            tx.commit().await?;
            Ok::<_, Failed>(inserted)
        })
        .await
}

/// (a) A's `COMMIT` is held by a proxy on its way to PostgreSQL past A's deadline; B takes the lock
/// and runs the same check-then-insert; then the `COMMIT` goes through. Returns the rows stored
/// and how A and B ended.
async fn commit_held_past_deadline(fenced: bool) -> (Vec<(String, i64)>, String, String) {
    let redis = RedisServer::start();
    let (locks_a, locks_b) = (redis.manager().await, redis.manager().await);
    let p = prefix(if fenced { "proxy_f" } else { "proxy_p" });
    let app_a = format!("{p}a");
    let direct = pg_pool(&format!("{p}b")).await;
    let fencing = create_pg_tables(&direct, &p).await;
    let proxy = Proxy::start(pg_options().get_port());
    let via_proxy = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            pg_options()
                .host("127.0.0.1")
                .port(proxy.port())
                .application_name(&app_a),
        )
        .await
        .expect("PostgreSQL through the proxy");
    proxy.trap(Direction::Up, b"COMMIT");

    // A: lease 3 s, deadline 1 s; its COMMIT is held.
    let a_options = LockOptions::new()
        .lease(Duration::from_secs(3))
        .timeout(Duration::from_secs(1));
    let a = guarded_insert(
        &locks_a, a_options, &fencing, fenced, &via_proxy, &p, "rust",
    )
    .await;
    assert_eq!(proxy.trapped(), 1, "A's COMMIT was held: {a:?}");

    // B: the lock is free (A's body was dropped at its deadline); same check-then-insert.
    let b_options = LockOptions::new()
        .lease(Duration::from_secs(8))
        .timeout(Duration::from_secs(6));
    let b = timeout(
        Duration::from_secs(10),
        guarded_insert(&locks_b, b_options, &fencing, fenced, &direct, &p, "rust"),
    )
    .await
    .expect("B ends within its deadline");

    // Now A's COMMIT reaches PostgreSQL.
    proxy.free_trapped();
    settled(&direct, &app_a).await;
    let stored = rows(&direct, &p).await;
    via_proxy.close().await;
    drop_pg_tables(&direct, &p).await;
    (stored, format!("{a:?}"), format!("{b:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_in_flight_at_the_deadline_duplicates_rows_with_the_lock_alone() {
    let (stored, a, b) = commit_held_past_deadline(false).await;
    assert!(a.contains("Deadline"), "A: {a}");
    assert_eq!(
        stored.len(),
        2,
        "the bug this suite guards against: A's late COMMIT lands after B's check-then-insert \
         (A: {a}, B: {b}): {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_in_flight_at_the_deadline_stores_one_row_when_fenced() {
    let (stored, a, b) = commit_held_past_deadline(true).await;
    assert!(a.contains("Deadline"), "A: {a}");
    assert_eq!(stored.len(), 1, "A: {a}, B: {b}: {stored:?}");
    assert!(b.starts_with("Ok("), "B: {b}");
}

/// (b) Worker A parks (and is `SIGSTOP`ped) between its fence + insert and its `COMMIT`; B commits
/// the same check-then-insert; A is thawed and sends its `COMMIT`.
async fn frozen_before_commit(fenced: bool) -> (Vec<(String, i64)>, String, String) {
    let redis = RedisServer::start();
    let locks_b = redis.manager().await;
    let p = prefix(if fenced { "stop_f" } else { "stop_p" });
    let direct = pg_pool(&format!("{p}b")).await;
    let fencing = create_pg_tables(&direct, &p).await;
    let park = std::env::temp_dir().join(format!("{p}park"));
    let _ = std::fs::remove_file(&park);
    let mut a = Worker::spawn(
        WORKER,
        &[
            format!("url={}", redis.url()),
            format!("db={}", with_application(&pg_url(), &format!("{p}a"))),
            format!("prefix={p}"),
            format!("fenced={}", u8::from(fenced)),
            "mode=park".to_owned(),
            "key=u1".to_owned(),
            "word=rust".to_owned(),
            "lease_ms=1000".to_owned(),
            format!("park={}", park.display()),
        ],
    );
    let app_a = format!("{p}a");
    let ready = a
        .line("READY", Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("worker A never got ready: {:?}", a.seen));
    a.signal("STOP");
    let b_options = LockOptions::new()
        .lease(Duration::from_secs(8))
        .timeout(Duration::from_secs(6));
    let b = timeout(
        Duration::from_secs(10),
        guarded_insert(&locks_b, b_options, &fencing, fenced, &direct, &p, "rust"),
    )
    .await
    .expect("B ends within its deadline");
    std::fs::write(&park, b"go").unwrap();
    a.signal("CONT");
    let result = a
        .line("RESULT", Duration::from_secs(20))
        .await
        .unwrap_or_default();
    let _ = std::fs::remove_file(&park);
    // The RESULT line may come before PostgreSQL has run the COMMIT that was sent.
    settled(&direct, &app_a).await;
    let stored = rows(&direct, &p).await;
    drop_pg_tables(&direct, &p).await;
    (stored, format!("{ready} / {result}"), format!("{b:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_frozen_before_commit_duplicates_rows_with_the_lock_alone() {
    let (stored, a, b) = frozen_before_commit(false).await;
    assert_eq!(
        stored.len(),
        2,
        "the bug: the thawed holder's COMMIT lands after the next holder's (A: {a}, B: {b}): {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_frozen_before_commit_is_refused_when_fenced() {
    let (stored, a, b) = frozen_before_commit(true).await;
    assert!(a.contains("RESULT err"), "the thawed A must fail: {a}");
    assert!(b.starts_with("Ok(true)"), "B inserted: {b}");
    assert_eq!(stored.len(), 1, "A: {a}, B: {b}: {stored:?}");
    let a_token: i64 = field(&a, 1).parse().unwrap();
    assert!(stored[0].1 > a_token, "the row is B's: {stored:?}, A: {a}");
}

/// (c) Redis restarted empty while A's fenced transaction is in flight: B gets the lock again, with
/// a greater token; B's fence waits for A's transaction and then sees its row; A, fencing again
/// with its old token, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_fencing_still_orders_holders() {
    let mut redis = RedisServer::start();
    let p = prefix("restart");
    let pool = pg_pool(&format!("{p}a")).await;
    let pool_b = pg_pool(&format!("{p}b")).await;
    let fencing = create_pg_tables(&pool, &p).await;
    let key = LockKey::new("fenced").part("u1");
    let long = LockOptions::new().lease(Duration::from_secs(30));

    let a = redis.manager().await.lock(&key, long).await.unwrap();
    let mut tx_a = fencing.begin_with(&a, &pool).await.unwrap();
    assert!(
        check_then_insert(&mut tx_a, &p, "u1", "rust", a.fencing_token())
            .await
            .unwrap()
    );

    redis.restart(); // empty: A's lock and the counter are gone
    let b = redis.manager().await.lock(&key, long).await.unwrap();
    assert!(b.fencing_token() > a.fencing_token());
    let b_side = {
        let (fencing, pool_b, p) = (fencing.clone(), pool_b.clone(), p.clone());
        let b_token = b.fencing_token();
        let b = &b;
        async move {
            let mut tx = fencing.begin_with(b, &pool_b).await?;
            let inserted = check_then_insert(&mut tx, &p, "u1", "rust", b_token).await?;
            tx.commit().await?;
            Ok::<_, Failed>(inserted)
        }
    };
    let committer = async {
        waiting_for_lock(&pool, &format!("{p}b")).await;
        tx_a.commit().await.unwrap();
    };
    let (b_result, ()) = tokio::join!(b_side, committer);
    assert!(
        matches!(b_result, Ok(false)),
        "B waited for A's commit and found its row: {b_result:?}"
    );

    // A fences again with its (now stale) token: refused, naming both tokens.
    match fencing.begin_with(&a, &pool).await {
        Err(FenceError::Refused { key, token, newer }) => {
            assert_eq!(key, "lock:{fenced:u1}");
            assert_eq!(token, a.fencing_token());
            assert_eq!(newer, b.fencing_token());
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(rows(&pool, &p).await.len(), 1);
    drop(a);
    drop(b);
    drop_pg_tables(&pool, &p).await;
}

/// (c) Redis restarted from an older snapshot (its counter behind the fence table's token): the
/// next section's token is still greater, and its fenced transaction is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_an_older_snapshot_tokens_still_pass_the_fence() {
    let mut redis = RedisServer::start();
    let p = prefix("snapshot");
    let pool = pg_pool(&format!("{p}a")).await;
    let fencing = create_pg_tables(&pool, &p).await;
    let key = LockKey::new("fenced").part("u1");
    let mut tokens = Vec::new();
    for round in 0..3 {
        if round == 2 {
            redis.restart(); // loads the snapshot saved after round 0
        }
        let locks = redis.manager().await;
        let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
        let tx = fencing.begin_with(&guard, &pool).await.unwrap_or_else(|e| {
            panic!(
                "round {round}: token {} refused: {e}",
                guard.fencing_token()
            )
        });
        tx.commit().await.unwrap();
        tokens.push(guard.fencing_token());
        guard.release().await.unwrap();
        if round == 0 {
            save_snapshot(&redis).await; // the counter as of round 0
        }
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    drop_pg_tables(&pool, &p).await;
}

/// Per key, the history ordered by token must be a serial execution: the value each section read
/// is the number of sections before it (0, 1, 2, …), and the counter equals the number of
/// sections. Returns (sections, violations).
fn serial(history: &[(String, i64, i64)], counters: &[(String, i64)]) -> (usize, Vec<String>) {
    let mut violations = Vec::new();
    for (k, n) in counters {
        let mut mine: Vec<(i64, i64)> = history
            .iter()
            .filter(|(hk, _, _)| hk == k)
            .map(|(_, token, seen)| (*token, *seen))
            .collect();
        mine.sort_unstable();
        for (i, (token, seen)) in mine.iter().enumerate() {
            if *seen != i as i64 {
                violations.push(format!("{k}: section {i} (token {token}) read {seen}"));
            }
            if i > 0 && mine[i - 1].0 >= *token {
                violations.push(format!("{k}: token {token} repeated"));
            }
        }
        if *n != mine.len() as i64 {
            violations.push(format!("{k}: counter {n} after {} sections", mine.len()));
        }
    }
    (history.len(), violations)
}

/// (d) 4 worker processes x 3 tasks over 3 keys: read a counter, write it + 1, record the read
/// value and the token. Stalls before `COMMIT` inside the workers (5 %, longer than the lease),
/// `SIGSTOP`s from here, one `SIGKILL` and a replacement.
async fn counters_under_faults(fenced: bool) -> (usize, Vec<String>, usize) {
    let redis = RedisServer::start();
    let p = prefix(if fenced { "count_f" } else { "count_p" });
    let pool = pg_pool(&format!("{p}t")).await;
    create_pg_tables(&pool, &p).await;
    let keys = ["k0", "k1", "k2"];
    for k in keys {
        sqlx::query(&format!("INSERT INTO {p}counters (k, n) VALUES ($1, 0)"))
            .bind(k)
            .execute(&pool)
            .await
            .unwrap();
    }
    let args = |seed: u64| {
        vec![
            format!("url={}", redis.url()),
            format!("db={}", pg_url()),
            format!("prefix={p}"),
            format!("fenced={}", u8::from(fenced)),
            "mode=counter".to_owned(),
            format!("keys={}", keys.join(",")),
            "tasks=3".to_owned(),
            "duration_ms=5000".to_owned(),
            "lease_ms=500".to_owned(),
            "pause_pct=5".to_owned(),
            "pause_ms=800".to_owned(),
            format!("seed={seed}"),
        ]
    };
    let mut workers: Vec<Worker> = (0..4)
        .map(|i| Worker::spawn(WORKER, &args(i + 1)))
        .collect();
    // The nemesis: freeze a worker for 700 ms every 600 ms; kill worker 0 at ~2.5 s and start a
    // replacement.
    for step in 0..6u32 {
        sleep(Duration::from_millis(600)).await;
        // Worker 0 is the one killed below: freeze the others (and the replacement).
        let victim = &workers[1 + step as usize % (workers.len() - 1)];
        victim.signal("STOP");
        sleep(Duration::from_millis(700)).await;
        victim.signal("CONT");
        if step == 2 {
            workers[0].signal("KILL");
            workers[0].wait();
            workers.push(Worker::spawn(WORKER, &args(99)));
        }
    }
    let mut done = 0;
    for w in &mut workers {
        if w.line("DONE", Duration::from_secs(30)).await.is_some() {
            done += 1;
        }
    }
    let history: Vec<(String, i64, i64)> =
        sqlx::query(&format!("SELECT k, token, seen FROM {p}history"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    let counters: Vec<(String, i64)> = sqlx::query(&format!("SELECT k, n FROM {p}counters"))
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    drop_pg_tables(&pool, &p).await;
    let (sections, violations) = serial(&history, &counters);
    (sections, violations, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_with_stalls_and_kills_lose_updates_with_the_lock_alone() {
    let (sections, violations, done) = counters_under_faults(false).await;
    assert_eq!(done, 4, "every surviving worker finished");
    assert!(
        !violations.is_empty(),
        "the bug: stalled COMMITs after the lease lose updates ({sections} sections)"
    );
    eprintln!(
        "plain: {sections} sections, {} violations, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_with_stalls_and_kills_equal_a_serial_execution_when_fenced() {
    let (sections, violations, done) = counters_under_faults(true).await;
    assert_eq!(done, 4, "every surviving worker finished");
    assert!(
        sections >= 20,
        "too few sections committed to mean anything: {sections}"
    );
    assert!(violations.is_empty(), "{sections} sections: {violations:?}");
    eprintln!("fenced: {sections} sections, serial");
}

/// (e) Two processes share one SQLite file: fenced counter sections, with stalls before `COMMIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_shared_by_two_processes_equals_a_serial_execution() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    let redis = RedisServer::start();
    let p = prefix("sqlite");
    let path = std::env::temp_dir().join(format!("{p}db.sqlite"));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true),
    )
    .await
    .unwrap();
    for sql in [
        format!("CREATE TABLE {p}counters (k TEXT PRIMARY KEY, n INTEGER NOT NULL)"),
        format!(
            "CREATE TABLE {p}history (k TEXT NOT NULL, token INTEGER NOT NULL, seen INTEGER NOT NULL)"
        ),
        format!("INSERT INTO {p}counters (k, n) VALUES ('k0', 0), ('k1', 0)"),
    ] {
        pool.execute(sql.as_str()).await.unwrap();
    }
    Fencing::new()
        .table(format!("{p}fences"))
        .ensure(&pool)
        .await
        .unwrap();
    let args = |seed: u64| {
        vec![
            format!("url={}", redis.url()),
            format!("db={url}"),
            format!("prefix={p}"),
            "fenced=1".to_owned(),
            "mode=counter".to_owned(),
            "keys=k0,k1".to_owned(),
            "tasks=2".to_owned(),
            "duration_ms=3000".to_owned(),
            "lease_ms=1000".to_owned(),
            "pause_pct=5".to_owned(),
            "pause_ms=1200".to_owned(),
            format!("seed={seed}"),
        ]
    };
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| Worker::spawn(WORKER, &args(i + 7)))
        .collect();
    for w in &mut workers {
        assert!(
            w.line("DONE", Duration::from_secs(30)).await.is_some(),
            "{:?}",
            w.seen
        );
    }
    let history: Vec<(String, i64, i64)> =
        sqlx::query(&format!("SELECT k, token, seen FROM {p}history"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    let counters: Vec<(String, i64)> = sqlx::query(&format!("SELECT k, n FROM {p}counters"))
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    pool.close().await;
    let _ = std::fs::remove_file(&path);
    let (sections, violations) = serial(&history, &counters);
    assert!(sections >= 10, "too few sections: {sections}");
    assert!(violations.is_empty(), "{sections} sections: {violations:?}");
}

/// The section's remaining time is the transaction's own limits, for that transaction only; a
/// section whose deadline passed begins nothing; outside a section there is nothing to fence with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_are_the_sections_remaining_time() {
    let redis = RedisServer::start();
    let locks = redis.manager().await;
    let p = prefix("limits");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pg_options())
        .await
        .expect("PostgreSQL");
    let fencing = create_pg_tables(&pool, &p).await;
    let guard = locks
        .lock(
            &LockKey::new("fenced").part("limits"),
            LockOptions::new().lease(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let setting = |name: &'static str| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let v: String = sqlx::query_scalar(&format!("SELECT current_setting('{name}')"))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            v
        }
    };
    let ms = |v: &str| -> u64 {
        v.strip_suffix("ms")
            .map(|n| n.parse().unwrap())
            .or_else(|| {
                v.strip_suffix('s')
                    .map(|n| n.parse::<u64>().unwrap() * 1000)
            })
            .unwrap_or_else(|| v.parse().unwrap())
    };
    let mut tx = fencing.begin_with(&guard, &pool).await.unwrap();
    for name in [
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
    ] {
        let v: String = sqlx::query_scalar(&format!("SELECT current_setting('{name}')"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let left = ms(&v);
        assert!(left > 5_000 && left <= 10_000, "{name} = {v}");
    }
    tx.commit().await.unwrap();
    assert_eq!(ms(&setting("statement_timeout").await), 0, "SET LOCAL only");
    let tx = fencing
        .clone()
        .time_limits(false)
        .begin_with(&guard, &pool)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // Outside a guarded body: NotHeld, no transaction.
    match fencing.begin(&pool).await {
        Err(FenceError::Lock(lock_guard::LockError::NotHeld { .. })) => {}
        other => panic!("expected NotHeld, got {other:?}"),
    }
    // A section whose deadline passed: Expired, naming the key.
    let short = locks
        .lock(
            &LockKey::new("fenced").part("short"),
            LockOptions::new().lease(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    sleep(Duration::from_millis(150)).await;
    match fencing.begin_with(&short, &pool).await {
        Err(e @ FenceError::Expired { .. }) => {
            assert_eq!(e.key(), Some("lock:{fenced:short}"));
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    // A bad table name: a clear error naming it, nothing sent.
    let err = Fencing::new()
        .table("fences; DROP TABLE x")
        .begin_with(&guard, &pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fences; DROP TABLE x"), "{err}");
    drop(short);
    guard.release().await.unwrap();
    drop_pg_tables(&pool, &p).await;
}
