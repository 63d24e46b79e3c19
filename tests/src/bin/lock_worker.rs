//! A worker process for the cross-process fault tests: takes locks on a Redis through lock-guard
//! and writes through the fenced store, printing one machine-readable line per event on stdout
//! (flushed at once):
//!
//! - `ACQUIRED <key> <token> <sent_unix_us> <acquired_unix_us>`: the body started (or the guard
//!   was taken); `sent` is just before the acquisition was asked for;
//! - `WRITING <key> <token>`: about to send the fenced write;
//! - `WROTE <key> <token> <store_us>` / `REJECTED <key> <token> <highest>`: the store's answer;
//! - `RESULT ok` / `RESULT err <error>`: how the guarded call ended;
//! - `SECTION <key> <token> <begin> <end>` (jepsen mode): `accepted`/`fenced`/`skipped` for
//!   each step; `DONE <completed> <fenced> <errors>` at the end.
//!
//! Arguments are `name=value`: `url` (Redis of the locks), `store` (the fenced store; optional),
//! `keys` (comma-separated), `lease_ms`, `wait_ms`, `body_ms`, `timeout_ms`, `tasks`,
//! `duration_ms`, `command_timeout_ms`, `watchdog=1` (a watchdog lease), `max_hold_ms`, and
//! `mode`:
//!
//! - `run-write`: one `run` with a fixed lease; the body sleeps `body_ms`, then writes;
//! - `guard-write`: the same with `lock` and a guard (nothing bounds the body: fencing must);
//! - `hold`: takes the lock with a guard and sleeps until killed;
//! - `acquire`: takes the lock (waiting up to `wait_ms`), prints, releases, exits;
//! - `exit`: a watchdog body on the first key and a guard on the second, then the process exits
//!   at once — after `LockManager::shutdown` with `shutdown=1` (`SHUTDOWN <result>`);
//! - `jepsen`: `tasks` tasks for `duration_ms`, each taking random keys in turn and running a
//!   section (`begin`, a short sleep, `end`) through the store.
//!
//! In jepsen mode each section records [`valid`](lock_guard_tests::FencedStore::valid) in the
//! store once the library vouched for its lock after the section's last reply (a `run` body still
//! being run; a guard before its `valid_until`).
//!
//! `broken=grant-everyone` (jepsen mode, tests of the checker only): every task locks a key of
//! its own while writing to the shared store key, so the "lock" excludes nobody.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{Fenced, FencedStore, unix_micros};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Args(HashMap<String, String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
    fn ms(&self, name: &str, default: u64) -> Duration {
        Duration::from_millis(self.get(name).map_or(default, |v| v.parse().expect(name)))
    }
}

/// Why a body failed; printed with `Debug` on the `RESULT` line.
#[derive(Debug)]
#[allow(dead_code, reason = "the fields are read through Debug")]
enum Failure {
    Lock(LockError),
    Store(redis::RedisError),
}

impl From<LockError> for Failure {
    fn from(e: LockError) -> Self {
        Failure::Lock(e)
    }
}

async fn write(store: Option<&FencedStore>, key: &str, token: u64) -> Result<(), Failure> {
    say(&format!("WRITING {key} {token}"));
    if let Some(store) = store {
        match store.write(key, token).await.map_err(Failure::Store)? {
            Fenced::Accepted(at) => say(&format!("WROTE {key} {token} {at}")),
            Fenced::Rejected(highest) => say(&format!("REJECTED {key} {token} {highest}")),
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args(
        std::env::args()
            .skip(1)
            .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
    );
    let url = args.get("url").expect("url=redis://…");
    let locks = LockManager::builder()
        .url(url)
        .command_timeout(args.ms("command_timeout_ms", 1000))
        .build()
        .await
        .expect("a lock manager");
    let store = match args.get("store") {
        Some(url) => Some(FencedStore::connect(url).await.expect("the fenced store")),
        None => None,
    };
    let keys: Vec<String> = args
        .get("keys")
        .unwrap_or("k")
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut options = LockOptions::new()
        .wait(args.ms("wait_ms", 5000))
        .lease(args.ms("lease_ms", 3000));
    if args.get("timeout_ms").is_some() {
        options = options.timeout(args.ms("timeout_ms", 0));
    }
    if args.get("watchdog") == Some("1") {
        options = options.watchdog();
    }
    if args.get("max_hold_ms").is_some() {
        options = options.max_hold(args.ms("max_hold_ms", 0));
    }
    let body = args.ms("body_ms", 0);
    let key = LockKey::new("worker").part(&keys[0]);
    let mode = args.get("mode").unwrap_or("acquire");
    match mode {
        "run-write" => {
            let sent = unix_micros();
            let result = locks
                .run(&key, options, async {
                    let token = lock_guard::fencing_token().expect("a token in the body");
                    say(&format!(
                        "ACQUIRED {} {token} {sent} {}",
                        keys[0],
                        unix_micros()
                    ));
                    tokio::time::sleep(body).await;
                    write(store.as_ref(), &keys[0], token).await
                })
                .await;
            match result {
                Ok(()) => say("RESULT ok"),
                Err(e) => say(&format!("RESULT err {e:?}")),
            }
        }
        "guard-write" | "hold" | "acquire" => {
            let sent = unix_micros();
            let guard = match locks.lock(&key, options).await {
                Ok(g) => g,
                Err(e) => return say(&format!("RESULT err {e:?}")),
            };
            let token = guard.fencing_token();
            say(&format!(
                "ACQUIRED {} {token} {sent} {}",
                keys[0],
                unix_micros()
            ));
            if mode == "hold" {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(body).await;
            if mode == "guard-write"
                && let Err(e) = write(store.as_ref(), &keys[0], token).await
            {
                say(&format!("RESULT err {e:?}"));
            }
            match guard.release().await {
                Ok(released) => say(&format!("RESULT ok released={released}")),
                Err(e) => say(&format!("RESULT err {e:?}")),
            }
        }
        "exit" => {
            // A service going down: a watchdog body runs on `keys[0]` and a guard is held on
            // `keys[1]`; then the process exits — after `LockManager::shutdown` with `shutdown=1`.
            let (started, has_started) = tokio::sync::oneshot::channel();
            let body_locks = locks.clone();
            let body_key = key.clone();
            let body = tokio::spawn(async move {
                body_locks
                    .run(&body_key, options.watchdog(), async move {
                        let _ = started.send(());
                        std::future::pending::<Result<(), LockError>>().await
                    })
                    .await
            });
            has_started.await.expect("the body started");
            let guard_key = LockKey::new("worker").part(keys.get(1).expect("keys=a,b"));
            let guard = locks
                .lock(&guard_key, options.watchdog())
                .await
                .expect("the second lock");
            say(&format!("ACQUIRED {} {}", keys[0], keys[1]));
            if args.get("shutdown") == Some("1") {
                let done = locks.shutdown(args.ms("shutdown_ms", 2000)).await;
                let body = body.await.expect("the body's task");
                say(&format!("SHUTDOWN {done:?} body={body:?}"));
            }
            drop(guard);
            std::process::exit(0);
        }
        "jepsen" => jepsen(&args, locks, store.expect("store=…"), keys, options).await,
        other => panic!("unknown mode {other}"),
    }
}

async fn jepsen(
    args: &Args,
    locks: LockManager,
    store: FencedStore,
    keys: Vec<String>,
    options: LockOptions,
) {
    let tasks: u64 = args.get("tasks").map_or(4, |v| v.parse().expect("tasks"));
    // The first `guard_tasks` tasks hold a bare guard instead of running a bounded body: nothing
    // stops such a section when its lease runs out (a frozen process, say); only the store's
    // fencing rejects its late writes.
    let guard_tasks: u64 = args
        .get("guard_tasks")
        .map_or(0, |v| v.parse().expect("guard_tasks"));
    let end = tokio::time::Instant::now() + args.ms("duration_ms", 5000);
    let grant_everyone = args.get("broken") == Some("grant-everyone");
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let (locks, store, keys, counts) =
            (locks.clone(), store.clone(), keys.clone(), counts.clone());
        set.spawn(async move {
            // A cheap per-task pseudo-random sequence (no dependency needed).
            let mut seed = unix_micros()
                ^ (task.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                ^ u64::from(std::process::id());
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            // Bounded in count as well as in time.
            for _ in 0..100_000 {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                let name = &keys[(next() % keys.len() as u64) as usize];
                let mut key = LockKey::new("jepsen").part(name);
                if grant_everyone {
                    key = key.part(std::process::id()).part(task);
                }
                let pause = Duration::from_millis(next() % 15);
                if task < guard_tasks {
                    let result = guarded_section(&locks, &store, &key, name, options, pause).await;
                    match result {
                        Ok(true) => counts[0].fetch_add(1, Relaxed),
                        Ok(false) => counts[1].fetch_add(1, Relaxed),
                        Err(_) => counts[2].fetch_add(1, Relaxed),
                    };
                    continue;
                }
                let result = locks
                    .run(&key, options, async {
                        let token = lock_guard::fencing_token().expect("a token in the body");
                        let begin = store.begin(name, token).await.map_err(Failure::Store)?;
                        if matches!(begin, Fenced::Rejected(_)) {
                            // Still being run after the reply: the library vouches for the lock.
                            store.valid(name, token).await.map_err(Failure::Store)?;
                            say(&format!("SECTION {name} {token} fenced skipped"));
                            return Ok(false);
                        }
                        tokio::time::sleep(pause).await;
                        let end = store.end(name, token).await.map_err(Failure::Store)?;
                        store.valid(name, token).await.map_err(Failure::Store)?;
                        let accepted = matches!(end, Fenced::Accepted(_));
                        let word = if accepted { "accepted" } else { "fenced" };
                        say(&format!("SECTION {name} {token} accepted {word}"));
                        Ok::<_, Failure>(accepted)
                    })
                    .await;
                match result {
                    Ok(true) => counts[0].fetch_add(1, Relaxed),
                    Ok(false) => counts[1].fetch_add(1, Relaxed),
                    Err(_) => counts[2].fetch_add(1, Relaxed),
                };
            }
        });
    }
    while set.join_next().await.is_some() {}
    say(&format!(
        "DONE {} {} {}",
        counts[0].load(Relaxed),
        counts[1].load(Relaxed),
        counts[2].load(Relaxed)
    ));
}

/// One section under a bare guard: `BEGUN` is printed once the store accepted its start, then the
/// section lasts 20 ms more than `pause`, so a nemesis that reads the line can freeze the process
/// mid-section.
async fn guarded_section(
    locks: &LockManager,
    store: &FencedStore,
    key: &LockKey,
    name: &str,
    options: LockOptions,
    pause: Duration,
) -> Result<bool, Failure> {
    let guard = locks.lock(key, options).await?;
    let token = guard.fencing_token();
    let begin = store.begin(name, token).await.map_err(Failure::Store)?;
    let accepted = if matches!(begin, Fenced::Rejected(_)) {
        say(&format!("SECTION {name} {token} fenced skipped"));
        false
    } else {
        say(&format!("BEGUN {name} {token}"));
        tokio::time::sleep(pause + Duration::from_millis(20)).await;
        let end = store.end(name, token).await.map_err(Failure::Store)?;
        let accepted = matches!(end, Fenced::Accepted(_));
        let word = if accepted { "accepted" } else { "fenced" };
        say(&format!("SECTION {name} {token} guard {word}"));
        accepted
    };
    // The last reply came before the guard's validity ended: the library vouches for the lock.
    if tokio::time::Instant::now() < guard.valid_until() {
        store.valid(name, token).await.map_err(Failure::Store)?;
    }
    // Reports `false` when the lease ran out meanwhile (the lock had moved on).
    let _ = guard.release().await;
    Ok(accepted)
}
