//! Fenced transactions (`lock_guard::sqlx`) against plain ones, in the same run, on PostgreSQL
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`) and on an SQLite file:
//!
//! - one transaction (`BEGIN`, one `UPDATE`, `COMMIT`) under a held lock, in blocks alternating
//!   plain / fenced / fenced without time limits, next to the database's own round trip
//!   (`SELECT 1`) and a plain transaction with one more `UPDATE` measured in the same blocks: what
//!   the fence adds (the median over blocks of the difference of the block's p50s). PostgreSQL
//!   runs with `synchronous_commit = off` and SQLite in WAL mode with `synchronous = NORMAL`, so
//!   that the disk's flush does not hide the difference;
//! - 16 tasks over distinct keys, each call a guarded section with one transaction inserting a
//!   row, plain and fenced in alternating windows: throughput.
//!
//! Both run through `sqlx::Any`, so the two databases run the same code.

use std::time::{Duration, Instant};

use lock_guard::sqlx::Fencing;
use lock_guard::{LockGuard, LockKey, LockManager, LockOptions};
use serde_json::json;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor as _};

use crate::report::Report;
use crate::stats::{dist, median, nanos, t};
use crate::{Ctx, Res, progress};

const BLOCKS: usize = 10;
const TASKS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    /// The plain transaction with one more statement (an `UPDATE` of another row) where the fence
    /// would be: what one more write round trip costs.
    PlainPlusOne,
    Fenced,
    FencedNoLimits,
}

struct Db {
    name: &'static str,
    pool: AnyPool,
    table: String,
    fencing: Fencing,
    cleanup: Option<std::path::PathBuf>,
}

async fn open(name: &'static str, url: &str, prefix: &str) -> Res<Db> {
    install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        .max_connections(TASKS as u32)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // What a server application runs SQLite with: WAL, no fsync per commit.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
                        .await?;
                } else {
                    // No WAL flush per commit: the disk's fsync time (milliseconds, and shared
                    // with everything else on the machine) would hide what the fence adds.
                    conn.execute("SET synchronous_commit = off").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    let table = format!("{prefix}rows");
    let fencing = Fencing::new().table(format!("{prefix}fences"));
    pool.execute(format!("DROP TABLE IF EXISTS {table}").as_str())
        .await?;
    pool.execute(format!("CREATE TABLE {table} (k TEXT PRIMARY KEY, n BIGINT NOT NULL)").as_str())
        .await?;
    pool.execute(format!("INSERT INTO {table} (k, n) VALUES ('one', 0), ('two', 0)").as_str())
        .await?;
    fencing.ensure(&pool).await?;
    Ok(Db {
        name,
        pool,
        table,
        fencing,
        cleanup: None,
    })
}

impl Db {
    async fn close(self) {
        let _ = self
            .pool
            .execute(format!("DROP TABLE IF EXISTS {}", self.table).as_str())
            .await;
        let _ = self
            .pool
            .execute(format!("DROP TABLE IF EXISTS {}", self.fencing.table_name()).as_str())
            .await;
        self.pool.close().await;
        if let Some(path) = self.cleanup {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }

    /// One transaction of `kind` under `guard`: BEGIN (+ fence), UPDATE, COMMIT.
    async fn one(&self, kind: Kind, guard: &LockGuard) -> Res<()> {
        let mut tx = match kind {
            Kind::Plain => self.pool.begin().await?,
            Kind::PlainPlusOne => {
                let mut tx = self.pool.begin().await?;
                sqlx::query(&format!(
                    "UPDATE {} SET n = n + 1 WHERE k = 'two'",
                    self.table
                ))
                .execute(&mut *tx)
                .await?;
                tx
            }
            Kind::Fenced => self.fencing.begin_with(guard, &self.pool).await?,
            Kind::FencedNoLimits => {
                self.fencing
                    .clone()
                    .time_limits(false)
                    .begin_with(guard, &self.pool)
                    .await?
            }
        };
        sqlx::query(&format!(
            "UPDATE {} SET n = n + 1 WHERE k = 'one'",
            self.table
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Res<Report> {
    let mut r = Report::new("fenced");
    let prefix = format!("bench_fence_{}_", std::process::id());
    let pg_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let sqlite_path = std::env::temp_dir().join(format!("{prefix}bench.sqlite"));
    let sqlite_url = format!("sqlite://{}?mode=rwc", sqlite_path.display());
    let locks = ctx.manager().await?;
    let n = (ctx.sizes.uncontended / 5).max(100);
    for (name, url) in [
        ("postgres", pg_url.as_str()),
        ("sqlite", sqlite_url.as_str()),
    ] {
        let mut db = match open(name, url, &prefix).await {
            Ok(db) => db,
            Err(e) => {
                r.row(&format!("{name}: not measured"), format!("{e}"));
                continue;
            }
        };
        if name == "sqlite" {
            db.cleanup = Some(sqlite_path.clone());
        }
        progress(&format!(
            "fenced: {name}, {BLOCKS} blocks x {} transactions of each kind",
            n / BLOCKS
        ));
        one_transaction(&mut r, &db, &locks, n).await?;
        progress(&format!("fenced: {name}, {TASKS} tasks over distinct keys"));
        distinct(&mut r, &db, &locks, ctx).await?;
        db.close().await;
    }
    Ok(r.finish())
}

async fn one_transaction(r: &mut Report, db: &Db, locks: &LockManager, n: usize) -> Res<()> {
    let guard = locks
        .lock(
            &LockKey::new("bench-fence").part(db.name),
            LockOptions::new().lease(Duration::from_secs(600)),
        )
        .await?;
    let kinds = [
        Kind::Plain,
        Kind::PlainPlusOne,
        Kind::Fenced,
        Kind::FencedNoLimits,
    ];
    let mut samples: [Vec<i64>; 4] = Default::default();
    // Per block, p50 of each kind: differences are taken within a block (same machine state).
    let mut blocks: Vec<[f64; 4]> = Vec::new();
    let mut rtt: Vec<i64> = Vec::new();
    // Warm-up: connections open, statements parsed.
    for kind in kinds {
        for _ in 0..20 {
            db.one(kind, &guard).await?;
        }
    }
    for _ in 0..BLOCKS {
        let mut block = [0.0; 4];
        for (i, kind) in kinds.into_iter().enumerate() {
            let mut these = Vec::with_capacity(n / BLOCKS);
            for _ in 0..n / BLOCKS {
                let started = Instant::now();
                db.one(kind, &guard).await?;
                these.push(nanos(started.elapsed()));
            }
            block[i] = dist(&these).p50;
            samples[i].extend(these);
        }
        blocks.push(block);
        for _ in 0..n / BLOCKS {
            let started = Instant::now();
            let _: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&db.pool).await?;
            rtt.push(nanos(started.elapsed()));
        }
    }
    guard.release().await?;
    let [plain, plus_one, fenced, no_limits] = samples.map(|s| dist(&s));
    let rtt = dist(&rtt);
    let name = db.name;
    r.row(
        &format!("{name}: plain transaction"),
        format!("p50 {}, p99 {}", t(plain.p50), t(plain.p99)),
    );
    r.row(
        &format!("{name}: plain + one UPDATE"),
        format!("p50 {}, p99 {}", t(plus_one.p50), t(plus_one.p99)),
    );
    r.row(
        &format!("{name}: fenced transaction"),
        format!("p50 {}, p99 {}", t(fenced.p50), t(fenced.p99)),
    );
    r.row(
        &format!("{name}: fenced, no time limits"),
        format!("p50 {}, p99 {}", t(no_limits.p50), t(no_limits.p99)),
    );
    r.row(
        &format!("{name}: SELECT 1 round trip"),
        format!("p50 {}", t(rtt.p50)),
    );
    let within =
        |a: usize, b: usize| median(&blocks.iter().map(|x| x[a] - x[b]).collect::<Vec<_>>());
    let added = within(2, 0);
    let one_more = within(1, 0);
    let limits = within(2, 3);
    let in_rtt = added / rtt.p50;
    let in_writes = added / one_more;
    r.row(
        &format!("{name}: one more UPDATE adds"),
        format!("{} = {:.2} x SELECT 1", t(one_more), one_more / rtt.p50),
    );
    if name == "postgres" {
        r.target(
            &format!("{name}: fence adds"),
            format!(
                "{} = {in_writes:.2} x one more UPDATE, {in_rtt:.2} x SELECT 1",
                t(added)
            ),
            "<= 1.5 x SELECT 1 (one round trip)",
            in_rtt <= 1.5,
        );
    } else {
        r.row(
            &format!("{name}: fence adds"),
            format!(
                "{} = {in_writes:.2} x one more UPDATE, {in_rtt:.2} x SELECT 1",
                t(added)
            ),
        );
    }
    r.row(
        &format!("{name}: of which time limits"),
        format!("{} (fenced - fenced without limits)", t(limits)),
    );
    r.set(
        &format!("{name}_one_transaction"),
        json!({
            "transactions_per_kind": samples_len(n),
            "plain_p50_us": plain.p50 / 1e3, "plain_p99_us": plain.p99 / 1e3,
            "plain_plus_one_p50_us": plus_one.p50 / 1e3,
            "fenced_p50_us": fenced.p50 / 1e3, "fenced_p99_us": fenced.p99 / 1e3,
            "fenced_no_limits_p50_us": no_limits.p50 / 1e3,
            "select1_p50_us": rtt.p50 / 1e3,
            "added_p50_us": added / 1e3, "added_select1_round_trips": in_rtt,
            "added_in_updates": in_writes,
            "time_limits_p50_us": limits / 1e3,
        }),
    );
    Ok(())
}

fn samples_len(n: usize) -> usize {
    n / BLOCKS * BLOCKS
}

async fn distinct(r: &mut Report, db: &Db, locks: &LockManager, ctx: &Ctx) -> Res<()> {
    let window = if ctx.sizes.distinct_rounds > 1 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(700)
    };
    let rounds = ctx.sizes.distinct_rounds.max(1);
    let mut ops: [Vec<f64>; 2] = Default::default();
    let mut failed = 0u64;
    let mut first_error: Option<String> = None;
    let mut next = 0u64;
    for _ in 0..rounds {
        for (i, fenced) in [false, true].into_iter().enumerate() {
            let end = Instant::now() + window;
            let started = Instant::now();
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let (locks, pool, fencing, table) = (
                    locks.clone(),
                    db.pool.clone(),
                    db.fencing.clone(),
                    db.table.clone(),
                );
                let base = next + task as u64 * 1_000_000;
                tasks.push(tokio::spawn(async move {
                    let (mut done, mut failed, mut first) = (0u64, 0u64, None);
                    while Instant::now() < end {
                        let k = format!("d{}", base + done + failed);
                        let key = LockKey::new("bench-fence-distinct").part(&k);
                        let result = locks
                            .run(&key, LockOptions::new(), async {
                                let mut tx = if fenced {
                                    fencing.begin(&pool).await?
                                } else {
                                    pool.begin().await?
                                };
                                sqlx::query(&format!("INSERT INTO {table} (k, n) VALUES ($1, 1)"))
                                    .bind(&k)
                                    .execute(&mut *tx)
                                    .await?;
                                tx.commit().await?;
                                Ok::<_, Failure>(())
                            })
                            .await;
                        match result {
                            Ok(()) => done += 1,
                            Err(e) => {
                                failed += 1;
                                first.get_or_insert_with(|| format!("{e:?}"));
                            }
                        }
                    }
                    (done, failed, first)
                }));
            }
            let mut total = 0;
            for task in tasks {
                let (d, f, first) = task.await?;
                total += d;
                failed += f;
                if first_error.is_none() {
                    first_error =
                        first.map(|e| format!("{}: {e}", if fenced { "fenced" } else { "plain" }));
                }
            }
            next += 100_000_000;
            ops[i].push(total as f64 / started.elapsed().as_secs_f64());
        }
    }
    let (plain, fenced) = (median(&ops[0]), median(&ops[1]));
    let name = db.name;
    r.row(
        &format!("{name}: distinct keys, plain"),
        format!("{plain:.0} sections/s ({TASKS} tasks, median of {rounds})"),
    );
    r.row(
        &format!("{name}: distinct keys, fenced"),
        format!("{fenced:.0} sections/s = {:.2} x plain", fenced / plain),
    );
    if let Some(e) = &first_error {
        progress(&format!("fenced: {name}: first failure: {e}"));
    }
    r.check(
        &format!("{name}: failed sections"),
        failed.to_string(),
        "0",
        failed == 0,
    );
    r.set(
        &format!("{name}_distinct"),
        json!({ "tasks": TASKS, "plain_per_s": ops[0], "fenced_per_s": ops[1], "failed": failed }),
    );
    Ok(())
}

#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug")]
enum Failure {
    Lock(lock_guard::LockError),
    Fence(lock_guard::sqlx::FenceError),
    Db(sqlx::Error),
}
impl From<lock_guard::LockError> for Failure {
    fn from(e: lock_guard::LockError) -> Self {
        Failure::Lock(e)
    }
}
impl From<lock_guard::sqlx::FenceError> for Failure {
    fn from(e: lock_guard::sqlx::FenceError) -> Self {
        Failure::Fence(e)
    }
}
impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Db(e)
    }
}
