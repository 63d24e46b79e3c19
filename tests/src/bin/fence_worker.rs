//! A worker process for the fenced-transaction tests: takes locks on a Redis through lock-guard
//! and writes to a database (PostgreSQL or an SQLite file, through `sqlx::Any`) in fenced
//! (`lock_guard::sqlx::begin`) or plain (`pool.begin()`) transactions. One line per event on
//! stdout, flushed at once.
//!
//! Arguments are `name=value`: `url` (Redis), `db` (database URL), `prefix` (table names:
//! `<prefix>counters`, `<prefix>history`, `<prefix>fences`), `fenced` (`1`/`0`), `lease_ms`,
//! `wait_ms`, and `mode`:
//!
//! - `park`: one section on `key`: check-then-insert of `(key, word)` into `<prefix>rows`, then
//!   print `READY <token>` and park the whole process *inside that poll* (past the body's last
//!   clock check) until the file `park` exists; then `COMMIT`, and print `RESULT ok` or
//!   `RESULT err <error>`.
//! - `counter`: `tasks` tasks on a single-threaded runtime for `duration_ms`, each taking random
//!   keys of `keys` in turn; a section reads the key's counter, sets it to the value read + 1 and
//!   records `(key, token, value read)` in the history, then commits. With probability
//!   `pause_pct` % the process stalls (a blocking sleep of `pause_ms`, like a GC pause) right
//!   before the `COMMIT`, past its last clock check. Prints `COMMITTED <key> <token> <seen>` and
//!   `FAILED <key> <error>`, and `DONE <committed> <failed>` at the end.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use lock_guard::{LockKey, LockManager, LockOptions};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Args(HashMap<String, String>);

impl Args {
    fn get(&self, name: &str) -> &str {
        self.0
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("argument `{name}=…` missing"))
    }
    fn num(&self, name: &str, default: u64) -> u64 {
        self.0.get(name).map_or(default, |v| v.parse().expect(name))
    }
}

#[derive(Debug)]
#[allow(dead_code, reason = "printed with Debug")]
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

async fn begin(
    fenced: bool,
    fencing: &lock_guard::sqlx::Fencing,
    pool: &AnyPool,
) -> Result<Transaction<'static, Any>, Failure> {
    Ok(if fenced {
        fencing.begin(pool).await?
    } else {
        pool.begin().await?
    })
}

fn main() {
    let args = Args(
        std::env::args()
            .skip(1)
            .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    install_default_drivers();
    let locks = LockManager::redis(args.get("url"))
        .await
        .expect("lock manager");
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .connect(args.get("db"))
        .await
        .expect("database");
    let prefix = args.get("prefix").to_owned();
    let fencing = lock_guard::sqlx::Fencing::new().table(format!("{prefix}fences"));
    let fenced = args.get("fenced") == "1";
    let options = LockOptions::new()
        .lease(Duration::from_millis(args.num("lease_ms", 1000)))
        .wait(Duration::from_millis(args.num("wait_ms", 10_000)));
    match args.get("mode") {
        "park" => {
            let key = LockKey::new("fenced").part(args.get("key"));
            let park = args.get("park").to_owned();
            let word = args.get("word").to_owned();
            let table = format!("{prefix}rows");
            let result = locks
                .run(&key, options, async {
                    let token = lock_guard::fence().await?.token();
                    let mut tx = begin(fenced, &fencing, &pool).await?;
                    let found: Option<i64> = sqlx::query_scalar(&format!(
                        "SELECT id FROM {table} WHERE k = $1 AND word = $2"
                    ))
                    .bind(args.get("key"))
                    .bind(&word)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if found.is_none() {
                        sqlx::query(&format!(
                            "INSERT INTO {table} (k, word, token) VALUES ($1, $2, $3)"
                        ))
                        .bind(args.get("key"))
                        .bind(&word)
                        .bind(token as i64)
                        .execute(&mut *tx)
                        .await?;
                    }
                    say(&format!("READY {token}"));
                    // Parked inside this poll: no clock check until the COMMIT is sent.
                    while !std::path::Path::new(&park).exists() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    tx.commit().await?;
                    Ok::<_, Failure>(())
                })
                .await;
            match result {
                Ok(()) => say("RESULT ok"),
                Err(e) => say(&format!("RESULT err {e:?}").replace('\n', " ")),
            }
        }
        "counter" => {
            let keys: Vec<String> = args.get("keys").split(',').map(str::to_owned).collect();
            let tasks = args.num("tasks", 3);
            let duration = Duration::from_millis(args.num("duration_ms", 3000));
            let pause_pct = args.num("pause_pct", 0);
            let pause = Duration::from_millis(args.num("pause_ms", 0));
            let seed = args.num("seed", u64::from(std::process::id()));
            let end = tokio::time::Instant::now() + duration;
            let mut handles = Vec::new();
            for t in 0..tasks {
                let (locks, pool, fencing, keys, prefix) = (
                    locks.clone(),
                    pool.clone(),
                    fencing.clone(),
                    keys.clone(),
                    prefix.clone(),
                );
                let mut rng = seed.wrapping_mul(31).wrapping_add(t) | 1;
                handles.push(tokio::spawn(async move {
                    let (mut committed, mut failed) = (0u64, 0u64);
                    while tokio::time::Instant::now() < end {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let k = &keys[(rng % keys.len() as u64) as usize];
                        let stall = rng / 7 % 100 < pause_pct;
                        let key = LockKey::new("counter").part(k);
                        let result = locks
                            .run(&key, options, async {
                                let token = lock_guard::fence().await?.token();
                                let mut tx = begin(fenced, &fencing, &pool).await?;
                                let seen: i64 = sqlx::query_scalar(&format!(
                                    "SELECT n FROM {prefix}counters WHERE k = $1"
                                ))
                                .bind(k)
                                .fetch_one(&mut *tx)
                                .await?;
                                sqlx::query(&format!(
                                    "UPDATE {prefix}counters SET n = $1 WHERE k = $2"
                                ))
                                .bind(seen + 1)
                                .bind(k)
                                .execute(&mut *tx)
                                .await?;
                                sqlx::query(&format!(
                                    "INSERT INTO {prefix}history (k, token, seen) VALUES ($1, $2, $3)"
                                ))
                                .bind(k)
                                .bind(token as i64)
                                .bind(seen)
                                .execute(&mut *tx)
                                .await?;
                                if stall {
                                    // The whole process stalls here, past the last clock check.
                                    std::thread::sleep(pause);
                                }
                                tx.commit().await?;
                                Ok::<_, Failure>((token, seen))
                            })
                            .await;
                        match result {
                            Ok((token, seen)) => {
                                committed += 1;
                                say(&format!("COMMITTED {k} {token} {seen}"));
                            }
                            Err(e) => {
                                failed += 1;
                                say(&format!("FAILED {k} {e:?}").replace('\n', " "));
                            }
                        }
                    }
                    (committed, failed)
                }));
            }
            let (mut committed, mut failed) = (0, 0);
            for h in handles {
                let (c, f) = h.await.expect("task");
                committed += c;
                failed += f;
            }
            say(&format!("DONE {committed} {failed}"));
        }
        other => panic!("unknown mode `{other}`"),
    }
}
