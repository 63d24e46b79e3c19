//! Like-match: two users liking each other at the same instant get exactly one match and one chat
//! room, with `#[concurrency_guard(name = "like", key = lock_guard::unordered(from, to), …)]`.
//!
//! ```text
//! cargo run --example like_match [-- --pairs 200]
//! ```
//!
//! needs nothing installed (embedded SQLite in memory, `LockManager::memory()` shared by two
//! service instances). With `REDIS_URL` (one `LockManager` per instance on Redis),
//! `REDIS_CLUSTER=host:port,…` (on a Redis Cluster) or `REDLOCK=url,url,url` (Redlock over
//! independent masters), and/or
//! `DATABASE_URL=postgres://…` (tables named for the run, dropped at the end) it uses those.
//!
//! For every pair (a, b), `like(a, b)` goes to one instance and `like(b, a)` to the other at the
//! same instant, a wave of pairs at a time; the table on stdout counts matches and chat rooms,
//! unguarded, guarded, then guarded + fenced (`like_fenced`, in `lock_guard::sqlx::begin`
//! transactions).
//!
//! `--stall-commit` (fault mode, on PostgreSQL): the first instance's match-creating `COMMIT`
//! reaches the database 2.5 s late, past the body's 2 s deadline; the call fails and is retried
//! once on the other instance, as a client retries a timed-out request. With the lock alone the
//! retry creates a second match before the late `COMMIT` lands; fenced, there is one. (The
//! embedded SQLite reads uncommitted rows, so the late `COMMIT` cannot show there.)

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use lock_guard_examples::LikeService;
use lock_guard_examples::like::{DEFAULT_WORK, LikeMode, LikeReport, run_pairs_with, table};
use lock_guard_examples::setup::{BoxError, DbSetup, Setup};

/// Instances of the service (each with its own pool; sharing or not the lock manager, see below).
const INSTANCES: usize = 2;
/// Pairs liking each other at the same time.
const WAVE: usize = 25;

#[tokio::main]
async fn main() -> ExitCode {
    let mut pairs = None;
    let mut stall = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--stall-commit" => stall = Some(std::time::Duration::from_millis(2500)),
            "--pairs" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => pairs = Some(n),
                None => {
                    eprintln!("--pairs takes a number");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: like_match [--pairs N] [--stall-commit]");
                return ExitCode::from(2);
            }
        }
    }
    // Stalled matches hold their pair for the deadline: fewer pairs keep the run short.
    let pairs = pairs.unwrap_or(if stall.is_some() { 50 } else { 200 });
    match run(pairs, stall).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(pairs: usize, stall: Option<std::time::Duration>) -> Result<ExitCode, BoxError> {
    let setup = Setup::from_env();
    println!("lock-guard demo: pairs of users liking each other at the same instant");
    let [locks, db] = setup.describe();
    println!("  {locks}");
    println!("  {db}");
    let db = setup.database().await?;
    let managers = setup.lock_managers(INSTANCES).await?;
    let mut instances = Vec::with_capacity(INSTANCES);
    for (i, locks) in managers.iter().enumerate() {
        instances.push(
            LikeService::new(db.connect_again().await?, locks.clone())
                .with_stall_commit(stall.filter(|_| i == 0)),
        );
    }
    println!(
        "  instances: {INSTANCES} service instances in this process, one database pool each, {}",
        setup.locks.sharing()
    );
    println!(
        "  like(a, b): record the like; if b liked a and they have no match: {} ms of work, insert \
         the match and its chat room (no UNIQUE (user_a, user_b))",
        DEFAULT_WORK.as_millis()
    );
    println!(
        "  load: {pairs} pairs, like(a, b) and like(b, a) on different instances at the same \
         instant, {WAVE} pairs at a time"
    );
    if let Some(stall) = stall {
        println!(
            "  fault: --stall-commit: the first instance's match COMMITs reach the database {} ms \
             late, past the 2 s deadline; a call failing at its deadline is retried once on the \
             other instance",
            stall.as_millis()
        );
        if setup.db == DbSetup::Embedded {
            println!(
                "  note: the embedded SQLite reads uncommitted rows, so a late COMMIT shows no \
                 double match there; set DATABASE_URL=postgres://… to see it"
            );
        }
    }
    println!();

    let mut reports = Vec::new();
    let modes = [LikeMode::Unguarded, LikeMode::Guarded, LikeMode::Fenced];
    for (i, mode) in modes.into_iter().enumerate() {
        let first_user = 1 + (i * 2 * pairs.max(1000)) as i64;
        let retry = stall.is_some();
        let report = run_pairs_with(
            &instances,
            mode,
            retry,
            pairs,
            WAVE,
            first_user,
            |done, all| {
                let mut err = std::io::stderr();
                if err.is_terminal() {
                    let _ = write!(err, "\r\x1b[K  {}: {done}/{all} pairs", mode.name());
                    let _ = err.flush();
                }
            },
        )
        .await;
        let mut err = std::io::stderr();
        if err.is_terminal() {
            let _ = write!(err, "\r\x1b[K");
        }
        reports.push(report?);
    }
    if let DbSetup::Url(_) = setup.db {
        db.drop_tables().await?;
    }
    db.close().await;

    println!("{}", table(&reports));
    for r in &reports {
        if let Some(e) = &r.first_error {
            println!("  {} first failure: {e}", r.mode().name());
        }
    }
    let find = |mode| reports.iter().find(|r: &&LikeReport| r.mode() == mode);
    let stalled = stall.is_some();
    let guarded_ok = find(LikeMode::Guarded).is_some_and(|r| r.exact() && r.errors == 0);
    if guarded_ok {
        println!(
            "  guarded: exactly one match and one chat room per pair — like(a, b) and like(b, a) \
             took the same lock, key = lock_guard::unordered(from, to)"
        );
    } else if let Some(g) = find(LikeMode::Guarded).filter(|_| stalled) {
        println!(
            "  guarded: {} pairs doubled — a late COMMIT landed after the retry's: the lock alone \
             cannot stop that",
            g.doubled
        );
    } else {
        println!("  guarded: UNEXPECTED counts (see the table)");
    }
    let fenced_ok = find(LikeMode::Fenced).is_some_and(|r| {
        r.doubled == 0 && r.chat_rooms == r.matches && (stalled || (r.exact() && r.errors == 0))
    });
    if fenced_ok {
        println!(
            "  fenced:  no pair doubled — each match transaction fenced with the pair's token \
             (lock_guard::sqlx::begin)"
        );
    } else {
        println!("  fenced:  UNEXPECTED counts (see the table)");
    }
    Ok(if fenced_ok && (guarded_ok || stalled) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
