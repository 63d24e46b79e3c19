//! Keyword-add dedupe: duplicate "add keyword" requests against several instances, without and
//! with `#[concurrency_guard]`.
//!
//! ```text
//! cargo run --example keyword_dedupe
//! ```
//!
//! needs nothing installed: an embedded SQLite (in memory, through sqlx) and
//! `LockManager::memory()`, two app instances in this process on loopback ports sharing one lock
//! manager (as instances share one lock service).
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example keyword_dedupe [-- --instances 3]
//! ```
//!
//! runs the instances as separate OS processes (this program, re-executed with `--serve`), each
//! with its own `LockManager` on Redis and its own pool to PostgreSQL: the lock holds across
//! processes. Instead of `REDIS_URL`, `REDIS_CLUSTER=host:port,host:port,…` runs the locks on a
//! Redis Cluster (`LockManager::cluster`, through any of its nodes) and `REDLOCK=url,url,url` on
//! Redlock over independent masters (`LockManager::redlock`); the first line of the output says
//! which one is in use (passwords shown as `***`). Tables are named for the run and dropped at the end. Other options:
//!
//! ```text
//! --serve [--port N] [--tables PREFIX]   serve one instance (prints `listening on http://…`);
//!                                        without --tables it uses (and keeps) keyword_demo_* tables
//! --target URL (repeat)                  drive instances started elsewhere instead
//! --bursts N --users N --keywords N --copies N --work-ms N
//! --stall-commit [--stall-ms N]          fault mode: the first instance's inserts' COMMITs reach
//!                                        the database N ms late (default 2500, past the 2 s
//!                                        deadline), as over a slow link
//! ```
//!
//! Three phases: unguarded, guarded (`#[concurrency_guard]`), and guarded + fenced (the same, in a
//! `lock_guard::sqlx::begin` transaction). With `--stall-commit` the body's deadline drops the
//! call while its `COMMIT` is still on its way; the lock is released and the next copy of the
//! request runs its check-then-insert before that `COMMIT` lands: duplicates with the lock alone,
//! none when fenced. Run it on PostgreSQL (`DATABASE_URL`): the embedded SQLite reads uncommitted
//! rows (see `lock_guard_examples::db`), so a late `COMMIT` cannot show there.
//!
//! The table on stdout: per route, requests, answers (201 new, 200 existing, 409 lock busy), rows
//! stored, duplicates, errors (database conflicts, deadlocks, timeouts, other), p50/p99 latency.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_guard_examples::db::{Db, Tables};
use lock_guard_examples::driver::{BurstPlan, Driver, PhaseReport, Progress, Route, table};
use lock_guard_examples::instance::Instance;
use lock_guard_examples::keyword::{DEFAULT_WORK, KeywordService};
use lock_guard_examples::setup::{
    BoxError, DbSetup, LISTENING, ServerProcess, Setup, start_instances_stalling,
};

/// How late a `COMMIT` lands with `--stall-commit`: past the guarded body's 2 s deadline.
const DEFAULT_STALL: Duration = Duration::from_millis(2500);

/// The command line.
#[derive(Debug)]
struct Args {
    serve: bool,
    port: u16,
    tables: Option<String>,
    exit_with_parent: bool,
    targets: Vec<String>,
    instances: Option<usize>,
    plan: BurstPlan,
    bursts_given: bool,
    work: Duration,
    stall_commit: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        serve: false,
        port: 0,
        tables: None,
        exit_with_parent: false,
        targets: Vec::new(),
        instances: None,
        plan: BurstPlan::DEMO,
        bursts_given: false,
        work: DEFAULT_WORK,
        stall_commit: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let mut number = |name: &str| -> Result<usize, String> {
            let v = value(name)?;
            v.parse()
                .map_err(|_| format!("{name} takes a number, not `{v}`"))
        };
        match arg.as_str() {
            "--serve" => args.serve = true,
            "--port" => args.port = number("--port")?.try_into().map_err(|_| "bad --port")?,
            "--tables" => args.tables = Some(value("--tables")?),
            "--exit-with-parent" => args.exit_with_parent = true,
            "--target" => args
                .targets
                .push(value("--target")?.trim_end_matches('/').to_owned()),
            "--instances" => args.instances = Some(number("--instances")?.max(1)),
            "--bursts" => {
                args.plan.bursts = number("--bursts")?.max(1);
                args.bursts_given = true;
            }
            "--stall-commit" => {
                args.stall_commit.get_or_insert(DEFAULT_STALL);
            }
            "--stall-ms" => {
                args.stall_commit = Some(Duration::from_millis(number("--stall-ms")? as u64));
            }
            "--users" => args.plan.users = number("--users")?.max(1),
            "--keywords" => args.plan.keywords = number("--keywords")?.max(1),
            "--copies" => args.plan.copies = number("--copies")?.max(1),
            "--work-ms" => args.work = Duration::from_millis(number("--work-ms")? as u64),
            "-h" | "--help" => {
                return Err("usage: see the top of examples/keyword_dedupe.rs".to_owned());
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = if args.serve {
        serve(args).await
    } else {
        drive(args).await
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--serve`: one instance, until killed (or, with `--exit-with-parent`, until stdin closes).
async fn serve(args: Args) -> Result<ExitCode, BoxError> {
    let setup = Setup::from_env();
    let locks = setup.lock_managers(1).await?.remove(0);
    let db = match (&setup.db, &args.tables) {
        (DbSetup::Url(url), Some(prefix)) => Db::open(url, Tables::new(prefix)).await?,
        (DbSetup::Url(url), None) => {
            let db = Db::open(url, Tables::new("keyword_demo_")).await?;
            db.create_tables().await?;
            db
        }
        (DbSetup::Embedded, _) => Db::embedded().await?,
    };
    let lock_manager = locks.clone();
    let instance = Instance::start(
        KeywordService::new(db, locks)
            .with_work(args.work)
            .with_stall_commit(args.stall_commit),
        args.port,
    )
    .await?;
    println!("{LISTENING}{}", instance.url());
    let [locks, db] = setup
        .describe()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "));
    eprintln!(
        "[pid {}] serving {} ({locks}; {db})",
        std::process::id(),
        instance.url()
    );
    if !setup.shared_across_processes() {
        eprintln!(
            "[pid {}] warning: without a Redis (REDIS_URL, REDIS_CLUSTER or REDLOCK) and DATABASE_URL this instance shares locks and \
             rows with nobody",
            std::process::id()
        );
    }
    if args.exit_with_parent {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    tokio::signal::ctrl_c().await?;
    // Graceful shutdown: stop accepting and let the requests in flight finish, then give back
    // every lock this instance still holds, so the other instances need not wait for a lease.
    instance.stop().await?;
    lock_manager.shutdown(Duration::from_secs(5)).await?;
    Ok(ExitCode::SUCCESS)
}

/// Where the driver sends its requests, and what to clean up after.
enum Fleet {
    InProcess(Vec<Instance>),
    Processes(Vec<ServerProcess>),
    Given,
}

async fn drive(args: Args) -> Result<ExitCode, BoxError> {
    let setup = Setup::from_env();
    println!("lock-guard demo: duplicate \"add keyword\" requests against several app instances");
    let [locks, db] = setup.describe();
    println!("  {locks}");
    println!("  {db}");

    let mut database = None;
    let (fleet, targets) = if !args.targets.is_empty() {
        println!(
            "  instances: {} given with --target (their own lock service and database)",
            args.targets.len()
        );
        (Fleet::Given, args.targets.clone())
    } else if setup.shared_across_processes() {
        let n = args.instances.unwrap_or(3);
        let db = setup.database().await?;
        let exe = std::env::current_exe()?;
        let child_args = vec![
            "--serve".to_owned(),
            "--exit-with-parent".to_owned(),
            "--tables".to_owned(),
            db.tables().prefix().to_owned(),
            "--work-ms".to_owned(),
            args.work.as_millis().to_string(),
        ];
        let mut processes = Vec::with_capacity(n);
        for i in 0..n {
            let mut child_args = child_args.clone();
            if let Some(stall) = args.stall_commit.filter(|_| i == 0) {
                child_args.extend(["--stall-ms".to_owned(), stall.as_millis().to_string()]);
            }
            processes.push(ServerProcess::spawn(&exe, &child_args).await?);
        }
        println!(
            "  instances: {n} separate OS processes ({} --serve), pids {}, {}, tables {}*",
            exe.file_name().unwrap_or_default().to_string_lossy(),
            processes
                .iter()
                .map(|p| p.id().map_or("?".to_owned(), |id| id.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            setup.locks.sharing(),
            db.tables().prefix(),
        );
        let urls = processes.iter().map(|p| p.url().to_owned()).collect();
        database = Some(db);
        (Fleet::Processes(processes), urls)
    } else {
        let n = args.instances.unwrap_or(2);
        let db = setup.database().await?;
        let managers = setup.lock_managers(n).await?;
        let instances =
            start_instances_stalling(&db, &managers, args.work, args.stall_commit).await?;
        let sharing = setup.locks.sharing();
        println!(
            "  instances: {n} app instances in this process on {}, {sharing}; one database pool each",
            instances
                .iter()
                .map(|i| i.addr().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
        );
        let urls = instances.iter().map(Instance::url).collect();
        database = Some(db);
        (Fleet::InProcess(instances), urls)
    };
    let mut plan = args.plan;
    if args.stall_commit.is_some() && !args.bursts_given {
        // Stalled inserts hold their key for the deadline: fewer bursts keep the run short.
        plan.bursts = 3;
    }
    println!(
        "  service: one transaction: SELECT the keyword, {} ms of work, INSERT it if it was missing, \
         COMMIT; no UNIQUE (user_id, keyword)",
        args.work.as_millis()
    );
    if let Some(stall) = args.stall_commit {
        println!(
            "  fault: --stall-commit: the first instance's inserts' COMMITs reach the database {} ms \
             late, past the body's 2 s deadline",
            stall.as_millis()
        );
        if setup.db == DbSetup::Embedded {
            println!(
                "  note: the embedded SQLite reads uncommitted rows, so a late COMMIT shows no \
                 duplicate there; set DATABASE_URL=postgres://… to see it"
            );
        }
    }
    println!(
        "  load: {} bursts x {} users x {} keywords, each request sent {}x to each of {} instances \
         at once = {} requests per route",
        plan.bursts,
        plan.users,
        plan.keywords,
        plan.copies,
        targets.len(),
        plan.requests(targets.len()),
    );
    println!();

    let driver = Driver::new(targets);
    // Fresh users for every phase (and every run, for instances given with --target).
    let first_user = match fleet {
        Fleet::Given => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (secs % 1_000_000) as i64 * 1_000
        }
        _ => 1,
    };
    let mut reports: Vec<PhaseReport> = Vec::new();
    let mut result = Ok(());
    for (i, route) in [Route::Unguarded, Route::Guarded, Route::Fenced]
        .into_iter()
        .enumerate()
    {
        let users = first_user + (i * plan.users.max(100)) as i64;
        if !std::io::stderr().is_terminal() {
            eprintln!("  {}: sending {} bursts…", route.name(), plan.bursts);
        }
        match driver.run_phase(route, &plan, users, show_progress).await {
            Ok(report) => {
                end_progress(&report);
                reports.push(report);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }

    // Clean up before reporting, so that an error above still stops the instances.
    match fleet {
        Fleet::InProcess(instances) => {
            for instance in instances {
                let _ = instance.stop().await;
            }
        }
        Fleet::Processes(processes) => {
            for process in processes {
                process.stop().await;
            }
        }
        Fleet::Given => {}
    }
    if let Some(db) = database {
        if let DbSetup::Url(_) = setup.db {
            db.drop_tables().await?;
        }
        db.close().await;
    }
    result?;

    println!("{}", table(&reports));
    println!(
        "  201 created · 200 already there · 409 lock still busy after `wait` (NotAcquired, deliberate) · \
         rows = rows stored for the phase's users ({} distinct asked for)",
        plan.distinct()
    );
    for r in &reports {
        if let Some(e) = &r.first_error {
            println!("  {} first failure: {}", r.route.name(), shorten(e));
        }
    }
    let find = |route| reports.iter().find(|r| r.route == route);
    if let Some(u) = find(Route::Unguarded) {
        println!(
            "  unguarded: {} duplicate rows and {} failed requests from the check-then-insert race",
            u.duplicates(),
            u.errors()
        );
    }
    let stalled = args.stall_commit.is_some();
    let (guarded, fenced) = (find(Route::Guarded), find(Route::Fenced));
    if let Some(g) = guarded {
        if g.duplicates() == 0 && g.errors() == 0 {
            println!(
                "  guarded:   no duplicates, no errors — #[concurrency_guard(name = \"keyword\", …)] \
                 keyed by the user ran one add per user at a time across the instances"
            );
        } else if stalled {
            println!(
                "  guarded:   {} duplicate rows — the late COMMITs landed after the next holder's \
                 check-then-insert: the lock alone cannot stop that",
                g.duplicates()
            );
        } else {
            println!("  guarded:   UNEXPECTED duplicates or errors (see the table)");
        }
    }
    let Some(f) = fenced else {
        return Ok(ExitCode::FAILURE);
    };
    let fenced_ok = f.duplicates() == 0 && (stalled || f.errors() == 0);
    let guarded_ok = stalled || guarded.is_some_and(|g| g.duplicates() == 0 && g.errors() == 0);
    if fenced_ok {
        println!(
            "  fenced:    no duplicates — lock_guard::sqlx::begin: a newer holder's fence waits for \
             (or the database ends) an older transaction still in flight{}",
            if stalled {
                "; the stalled calls' errors are their deadlines"
            } else {
                ""
            }
        );
    } else {
        println!("  fenced:    UNEXPECTED duplicates or errors (see the table)");
    }
    Ok(if fenced_ok && guarded_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show_progress(p: &Progress) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(
            err,
            "\r\x1b[K  {}: burst {}/{}, {} answered, {} errors",
            p.route.name(),
            p.burst,
            p.bursts,
            p.answered,
            p.errors
        );
        let _ = err.flush();
    }
}

fn end_progress(r: &PhaseReport) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K");
    }
    let _ = writeln!(
        err,
        "  {}: {} requests in {:.1}s",
        r.route.name(),
        r.requests,
        r.elapsed.as_secs_f64()
    );
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
