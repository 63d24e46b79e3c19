//! The lock-guard benchmark (issues #5 and #10): what a guarded call costs when nobody contends,
//! how long the next waiter sits idle after a release, what waiting costs Redis, how many distinct
//! keys a manager serves against a hand-rolled lock as users would write it, next to a floor of raw
//! round trips measured in the same run. BENCHMARKS.md explains every figure.
//!
//! ```text
//! cargo run --release --example bench -- --spawn            # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example bench
//! cargo run --release --example bench -- --spawn --quick   # short smoke run (CI)
//! cargo run --release --example bench -- --spawn --json --scenario handoff
//! cargo run --release --example bench -- --spawn --scenario cluster,redlock
//! cargo run --release --example bench -- --spawn --scenario fenced   # PostgreSQL + SQLite
//! ```
//!
//! The `cluster` and `redlock` scenarios start their own deployments (a 3-master cluster with the
//! tests' harness, 3 independent masters) whatever `--spawn` says, and compare with the one server.
//!
//! Progress goes to stderr; the table (or, with `--json`, one JSON object per scenario) to stdout.
//! The exit status is 0 when the run completed and every correctness check held (the unsynchronised
//! counter came out exact, no acquisition failed), whatever the performance targets say; 1 on an
//! error (a bad argument included); 2 when a correctness check failed.

mod cluster;
mod deployments;
mod deployments_report;
mod distinct;
mod fenced;
mod floor;
mod hand_rolled;
mod handoff;
mod handoff_report;
mod idle_wait;
mod inspect;
mod macros;
mod redlock;
mod report;
mod saturated;
mod stats;
mod uncontended;
mod worker;

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use lock_guard::LockManager;
use lock_guard_tests::RedisServer;

use crate::inspect::Inspect;
use crate::report::{Report, print_table};

pub(crate) type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The lock-guard benchmark: every figure next to raw round trips measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    /// Start a redis-server on a free loopback port (no persistence), killed at exit; otherwise
    /// use REDIS_URL (default redis://127.0.0.1:6379)
    #[arg(long)]
    spawn: bool,
    /// One JSON object per scenario on stdout instead of the table
    #[arg(long)]
    json: bool,
    /// A short smoke run: smaller counts, 1 s windows, one round (the targets stay)
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (repeat or comma-separate); all when absent
    #[arg(
        long = "scenario",
        value_name = "NAME",
        value_enum,
        value_delimiter = ','
    )]
    scenarios: Vec<Scenario>,
    #[command(subcommand)]
    worker: Option<Hidden>,
}

#[derive(Debug, clap::Subcommand)]
enum Hidden {
    /// One process of a multi-process hand-over (started by the benchmark itself)
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Raw PING / EVALSHA round trips and a pub/sub hand-over by hand
    #[value(name = "floor")]
    Floor,
    /// One task, acquire + release on one key
    #[value(name = "uncontended")]
    Uncontended,
    /// 8 tasks on one key: in one process, and in 4 processes x 2
    #[value(name = "handoff")]
    Handoff,
    /// 8 separate managers (8 processes x 1 task) on one key, hold 2 ms + think 2 ms
    #[value(name = "handoff_8")]
    Handoff8,
    /// 8 managers in 8 processes, no think time, against a hand-rolled polling lock
    #[value(name = "saturated")]
    Saturated,
    /// 1,000 waiters on 100 held keys
    #[value(name = "idle_wait")]
    IdleWait,
    /// 64 tasks over 10,000 distinct keys, against hand-rolled locks and pool sweeps
    #[value(name = "distinct")]
    Distinct,
    /// #[concurrency_guard] vs manager.run vs a manual guard
    #[value(name = "macro")]
    Macro,
    /// A 3-master cluster (tests' harness): uncontended vs EVALSHA on the key's master, distinct
    /// keys next to one server, hand-over
    #[value(name = "cluster")]
    Cluster,
    /// Redlock over 3 masters: uncontended vs one concurrent EVALSHA round on all three,
    /// distinct keys next to one server, hand-over
    #[value(name = "redlock")]
    Redlock,
    /// Fenced transactions (lock_guard::sqlx) vs plain ones on PostgreSQL (DATABASE_URL) and an
    /// SQLite file: one transaction, and distinct keys
    #[value(name = "fenced")]
    Fenced,
}

/// How much each scenario does; `--quick` shrinks counts and windows, never the targets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) floor: usize,
    pub(crate) uncontended: usize,
    pub(crate) warmup: usize,
    pub(crate) handoff: Duration,
    pub(crate) idle_window: Duration,
    pub(crate) idle_keys: usize,
    pub(crate) waiters_per_key: usize,
    pub(crate) distinct_keys: usize,
    pub(crate) distinct_tasks: usize,
    pub(crate) distinct_rounds: usize,
    pub(crate) macro_calls: usize,
    pub(crate) macro_blocks: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        let full = Sizes {
            floor: 5_000,
            uncontended: 5_000,
            warmup: 500,
            handoff: Duration::from_secs(5),
            idle_window: Duration::from_secs(3),
            idle_keys: 100,
            waiters_per_key: 10,
            distinct_keys: 10_000,
            distinct_tasks: 64,
            distinct_rounds: 3,
            macro_calls: 5_000,
            macro_blocks: 50,
        };
        if quick {
            Sizes {
                floor: 500,
                uncontended: 500,
                warmup: 50,
                handoff: Duration::from_secs(1),
                idle_window: Duration::from_secs(1),
                distinct_keys: 1_000,
                distinct_rounds: 1,
                macro_calls: 500,
                macro_blocks: 5,
                ..full
            }
        } else {
            full
        }
    }
}

/// What every scenario needs: where Redis is, the key prefix, the sizes.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) sizes: Sizes,
    /// The redis-server's pid when it runs on this machine (`--spawn`): its `/proc/PID/io`
    /// counts its read/write system calls.
    pub(crate) server_pid: Option<u32>,
}

impl Ctx {
    /// A manager as users build it: URL and key prefix, everything else the default.
    pub(crate) async fn manager(&self) -> Res<LockManager> {
        Ok(LockManager::builder()
            .url(&self.url)
            .key_prefix(&self.prefix)
            .build()
            .await?)
    }

    /// The same with `pool_size(size)`.
    pub(crate) async fn manager_with_pool(&self, size: usize) -> Res<LockManager> {
        Ok(LockManager::builder()
            .url(&self.url)
            .key_prefix(&self.prefix)
            .pool_size(size)
            .build()
            .await?)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            // 2 means "a correctness check failed": a bad argument is an error (1).
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Hidden::Worker(w)) = cli.worker {
        return match runtime.block_on(worker::run(w)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let server = if cli.spawn {
        // The tests' spawner panics with an install hint when redis-server is missing.
        match std::panic::catch_unwind(RedisServer::start) {
            Ok(s) => {
                progress(&format!("started redis-server on port {}", s.port()));
                Some(s)
            }
            Err(_) => {
                eprintln!("bench: could not start redis-server (see above)");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let url = match &server {
        Some(s) => s.url(),
        None => std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
    };
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = bench(&cli, &url) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    // Workers and waiters go first, then the server.
    drop(runtime);
    drop(server);
    match outcome {
        Ok(sound) => {
            progress(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
            if sound {
                ExitCode::SUCCESS
            } else {
                eprintln!("bench: a correctness check failed (see the table)");
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn progress(line: &str) {
    eprintln!("[bench] {line}");
}

/// Runs the selected scenarios; `Ok(false)` when a correctness check failed.
async fn bench(cli: &Cli, url: &str) -> Res<bool> {
    let runs = |s: Scenario| cli.scenarios.is_empty() || cli.scenarios.contains(&s);
    let mut inspect = Inspect::connect(url).await?;
    let version = inspect.server_version().await?;
    let prefix = format!("bench-{}", std::process::id());
    progress(&format!(
        "redis {version} at {}; key prefix `{prefix}`{}",
        shown(url),
        if cli.quick { "; quick run" } else { "" }
    ));
    let ctx = Ctx {
        url: url.to_owned(),
        prefix,
        sizes: Sizes::new(cli.quick),
        server_pid: if cli.spawn {
            inspect.server_pid().await?
        } else {
            None
        },
    };

    let mut reports: Vec<Report> = Vec::new();
    // The floor is the reference of the ratios: measured whenever a scenario needs it.
    let needs_floor = [
        Scenario::Floor,
        Scenario::Uncontended,
        Scenario::Handoff,
        Scenario::Handoff8,
        Scenario::Saturated,
    ]
    .into_iter()
    .any(runs);
    let floor = if needs_floor {
        let (floor, report) = floor::floor(&ctx).await?;
        reports.push(report);
        Some(floor)
    } else {
        None
    };
    for scenario in Scenario::value_variants()
        .iter()
        .copied()
        .filter(|s| runs(*s))
    {
        let floor = || floor.ok_or("the floor was not measured");
        match scenario {
            Scenario::Floor => {}
            Scenario::Uncontended => {
                reports.push(uncontended::run(&ctx, &mut inspect, floor()?).await?);
            }
            Scenario::Handoff => {
                reports.push(handoff::in_process(&ctx, &mut inspect, floor()?).await?);
                reports.push(handoff::four_processes(&ctx, &mut inspect, floor()?).await?);
            }
            Scenario::Handoff8 => {
                reports.push(handoff::eight_managers(&ctx, &mut inspect, floor()?).await?);
            }
            Scenario::Saturated => {
                reports.push(saturated::run(&ctx, &mut inspect, floor()?).await?);
            }
            Scenario::IdleWait => reports.push(idle_wait::run(&ctx, &mut inspect).await?),
            Scenario::Distinct => reports.push(distinct::run(&ctx, &mut inspect).await?),
            Scenario::Macro => reports.push(macros::run(&ctx).await?),
            Scenario::Cluster => reports.push(cluster::run(&ctx, &mut inspect).await?),
            Scenario::Redlock => reports.push(redlock::run(&ctx, &mut inspect).await?),
            Scenario::Fenced => reports.push(fenced::run(&ctx).await?),
        }
    }

    if cli.json {
        for r in &reports {
            println!("{}", r.json);
        }
    } else {
        print_table(&reports);
    }
    Ok(reports.iter().all(|r| r.sound))
}

/// The URL without its password.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
