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
//! unguarded then guarded.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use lock_guard_examples::LikeService;
use lock_guard_examples::like::{DEFAULT_WORK, LikeReport, run_pairs, table};
use lock_guard_examples::setup::{BoxError, DbSetup, Setup};

/// Instances of the service (each with its own pool; sharing or not the lock manager, see below).
const INSTANCES: usize = 2;
/// Pairs liking each other at the same time.
const WAVE: usize = 25;

#[tokio::main]
async fn main() -> ExitCode {
    let mut pairs = 200;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--pairs", Some(n)) => pairs = n,
            _ => {
                eprintln!("usage: like_match [--pairs N]");
                return ExitCode::from(2);
            }
        }
    }
    match run(pairs).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(pairs: usize) -> Result<ExitCode, BoxError> {
    let setup = Setup::from_env();
    println!("lock-guard demo: pairs of users liking each other at the same instant");
    let [locks, db] = setup.describe();
    println!("  {locks}");
    println!("  {db}");
    let db = setup.database().await?;
    let managers = setup.lock_managers(INSTANCES).await?;
    let mut instances = Vec::with_capacity(INSTANCES);
    for locks in &managers {
        instances.push(LikeService::new(db.connect_again().await?, locks.clone()));
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
    println!();

    let mut reports = Vec::new();
    for (i, guarded) in [false, true].into_iter().enumerate() {
        let first_user = 1 + (i * 2 * pairs.max(1000)) as i64;
        let report = run_pairs(&instances, guarded, pairs, WAVE, first_user, |done, all| {
            let mut err = std::io::stderr();
            if err.is_terminal() {
                let name = if guarded { "guarded" } else { "unguarded" };
                let _ = write!(err, "\r\x1b[K  {name}: {done}/{all} pairs");
                let _ = err.flush();
            }
        })
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
            println!(
                "  {} first failure: {e}",
                if r.guarded { "guarded" } else { "unguarded" }
            );
        }
    }
    let ok = reports
        .iter()
        .any(|r: &LikeReport| r.guarded && r.exact() && r.errors == 0);
    if ok {
        println!(
            "  guarded: exactly one match and one chat room per pair — like(a, b) and like(b, a) \
             took the same lock, key = lock_guard::unordered(from, to)"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  guarded: UNEXPECTED counts (see the table)");
        Ok(ExitCode::FAILURE)
    }
}
