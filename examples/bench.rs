//! The lock-guard benchmark (issue #5): what a guarded call costs when nobody contends, how long
//! the next waiter sits idle after a release, what waiting costs Redis, next to a floor of raw
//! round trips measured in the same run. BENCHMARKS.md explains every figure.
//!
//! ```text
//! cargo run --release --example bench -- --spawn            # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example bench
//! cargo run --release --example bench -- --spawn --quick   # short smoke run (CI)
//! cargo run --release --example bench -- --spawn --json --scenario handoff
//! ```
//!
//! Progress goes to stderr; the table (or, with `--json`, one JSON object per scenario) to stdout.
//! The exit status is 0 when the run completed and every correctness check held (the unsynchronised
//! counter came out exact, no acquisition failed), whatever the performance targets say; 1 on an
//! error; 2 when a correctness check failed.

use std::collections::{BTreeMap, HashSet};
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lock_guard::redis::aio::MultiplexedConnection;
use lock_guard::redis::{self, AsyncConnectionConfig, Client};
use lock_guard::{LockError, LockKey, LockManager, LockOptions, concurrency_guard};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const USAGE: &str = "\
usage: bench [--spawn] [--json] [--quick] [--scenario NAME]...

  --spawn          start a redis-server on a free loopback port (no persistence), killed at exit;
                   otherwise use REDIS_URL (default redis://127.0.0.1:6379)
  --json           one JSON object per scenario on stdout instead of the table
  --quick          a short smoke run (smaller counts, 1 s windows)
  --scenario NAME  run only this scenario (repeat or comma-separate for several):
                   floor, uncontended, handoff, idle_wait, distinct, macro";

const SCENARIOS: [&str; 6] = [
    "floor",
    "uncontended",
    "handoff",
    "idle_wait",
    "distinct",
    "macro",
];

/// Commands that the benchmark itself sends (inspection, the handoff counter, connection set-up):
/// left out of the "Redis commands per acquisition" figures. The library uses none of them.
const NOT_LIBRARY: [&str; 7] = [
    "info",
    "hget",
    "hset",
    "client|list",
    "client|setinfo",
    "hello",
    "script|load",
];

// ------------------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Default)]
struct Args {
    spawn: bool,
    json: bool,
    quick: bool,
    scenarios: Vec<String>,
    worker: Option<WorkerArgs>,
}

/// The hidden `--worker` mode: one process of the multi-process handoff.
#[derive(Debug, Default, Clone)]
struct WorkerArgs {
    url: String,
    prefix: String,
    first_task: usize,
    tasks: usize,
    duration_ms: u64,
    hold_ms: u64,
    think_ms: u64,
    epoch_ns: u128,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args::default();
        let mut worker = WorkerArgs::default();
        let mut is_worker = false;
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                "--spawn" => args.spawn = true,
                "--json" => args.json = true,
                "--quick" => args.quick = true,
                "--scenario" => {
                    for s in value("--scenario")?.split(',') {
                        if !SCENARIOS.contains(&s) {
                            return Err(format!(
                                "unknown scenario `{s}`: one of {}",
                                SCENARIOS.join(", ")
                            ));
                        }
                        args.scenarios.push(s.to_owned());
                    }
                }
                "--worker" => is_worker = true,
                "--url" => worker.url = value("--url")?,
                "--prefix" => worker.prefix = value("--prefix")?,
                "--first-task" => worker.first_task = num(&value("--first-task")?)?,
                "--tasks" => worker.tasks = num(&value("--tasks")?)?,
                "--duration-ms" => worker.duration_ms = num(&value("--duration-ms")?)?,
                "--hold-ms" => worker.hold_ms = num(&value("--hold-ms")?)?,
                "--think-ms" => worker.think_ms = num(&value("--think-ms")?)?,
                "--epoch-ns" => worker.epoch_ns = num(&value("--epoch-ns")?)?,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if is_worker {
            args.worker = Some(worker);
        }
        if args.scenarios.is_empty() {
            args.scenarios = SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
        }
        Ok(args)
    }

    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("`{s}` is not a number"))
}

/// How much each scenario does; `--quick` shrinks counts and windows, never the targets.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    floor: usize,
    uncontended: usize,
    warmup: usize,
    handoff: Duration,
    idle_window: Duration,
    idle_keys: usize,
    waiters_per_key: usize,
    distinct_keys: usize,
    distinct_tasks: usize,
    distinct_rounds: usize,
    macro_calls: usize,
    macro_blocks: usize,
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

// ------------------------------------------------------------------------------------------------
// Entry point

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
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
    if let Some(w) = args.worker.clone() {
        return match runtime.block_on(worker(w)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let server = if args.spawn {
        match SpawnedRedis::start() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let url = match &server {
        Some(s) => s.url.clone(),
        None => std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
    };
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = bench(&args, &url) => r,
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

fn progress(line: &str) {
    eprintln!("[bench] {line}");
}

/// Runs the selected scenarios; `Ok(false)` when a correctness check failed.
async fn bench(args: &Args, url: &str) -> Res<bool> {
    let sizes = Sizes::new(args.quick);
    let mut inspect = Inspect::connect(url).await?;
    let version = inspect.server_version().await?;
    let prefix = format!("bench-{}", std::process::id());
    progress(&format!(
        "redis {version} at {}; key prefix `{prefix}`{}",
        shown(url),
        if args.quick { "; quick run" } else { "" }
    ));
    let ctx = Ctx {
        url: url.to_owned(),
        prefix,
        sizes,
    };

    let mut reports = Vec::new();
    // The floor is the reference of the ratios: measured whenever a scenario needs it.
    let needs_floor = ["floor", "uncontended", "handoff"]
        .iter()
        .any(|s| args.runs(s));
    let floor = if needs_floor {
        let (floor, report) = floor(&ctx).await?;
        reports.push(report);
        Some(floor)
    } else {
        None
    };
    for name in SCENARIOS.iter().filter(|s| args.runs(s)) {
        let report = match *name {
            "floor" => continue,
            "uncontended" => uncontended(&ctx, &mut inspect, floor.expect("measured")).await?,
            "handoff" => {
                reports
                    .push(handoff_in_process(&ctx, &mut inspect, floor.expect("measured")).await?);
                handoff_processes(&ctx, &mut inspect, floor.expect("measured")).await?
            }
            "idle_wait" => idle_wait(&ctx, &mut inspect).await?,
            "distinct" => distinct(&ctx, &mut inspect).await?,
            "macro" => macro_overhead(&ctx).await?,
            _ => unreachable!("checked by the parser"),
        };
        reports.push(report);
    }

    if args.json {
        for r in &reports {
            println!("{}", r.json);
        }
    } else {
        print_table(&reports);
    }
    Ok(reports.iter().all(|r| r.sound))
}

struct Ctx {
    url: String,
    prefix: String,
    sizes: Sizes,
}

impl Ctx {
    async fn manager(&self) -> Res<LockManager> {
        Ok(LockManager::builder()
            .url(&self.url)
            .key_prefix(&self.prefix)
            .build()
            .await?)
    }
}

/// The URL without its password.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

// ------------------------------------------------------------------------------------------------
// Redis: the spawned server, connections like the library's, and inspection

/// A `redis-server` on a free loopback port, without persistence; killed on drop.
struct SpawnedRedis {
    child: std::process::Child,
    url: String,
}

impl SpawnedRedis {
    fn start() -> Result<SpawnedRedis, String> {
        let dir = std::env::temp_dir();
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        "redis-server not found: install it (`apt-get install redis-server`) \
                         or run without --spawn against REDIS_URL"
                            .to_owned()
                    } else {
                        format!("cannot start redis-server: {e}")
                    }
                })?;
            let mut server = SpawnedRedis {
                child,
                url: format!("redis://127.0.0.1:{port}"),
            };
            match server.wait_ready() {
                Ok(()) => {
                    progress(&format!("started redis-server on port {port}"));
                    return Ok(server);
                }
                Err(e) => last = e,
            }
        }
        Err(format!("redis-server did not start: {last}"))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} (port taken?)"));
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match pong {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for SpawnedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A multiplexed connection configured as the library configures its pooled ones.
async fn connection(url: &str) -> Res<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(None);
    Ok(Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The benchmark's own connection for `INFO` and `CLIENT LIST`; counts what it sends, so the
/// figures can leave it out.
struct Inspect {
    conn: MultiplexedConnection,
    /// Commands sent so far (counted before sending).
    sent: u64,
}

/// A point-in-time reading of the server's counters.
#[derive(Debug, Clone)]
struct Snapshot {
    calls: BTreeMap<String, u64>,
    /// Microseconds the server spent in `EVALSHA`/`EVAL` (commands inside scripts included).
    script_usec: u64,
    /// Microseconds per command name.
    usec: BTreeMap<String, u64>,
    total: u64,
    inspect_sent: u64,
}

#[derive(Debug, Clone)]
struct ClientInfo {
    id: u64,
    subscriptions: u64,
}

impl Inspect {
    async fn connect(url: &str) -> Res<Inspect> {
        Ok(Inspect {
            conn: connection(url).await?,
            sent: 0,
        })
    }

    async fn info(&mut self, section: &str) -> Res<String> {
        self.sent += 1;
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn)
            .await?)
    }

    async fn server_version(&mut self) -> Res<String> {
        let info = self.info("server").await?;
        Ok(field(&info, "redis_version").unwrap_or("?").to_owned())
    }

    /// `INFO commandstats` and `INFO stats` in one reply (`INFO` takes several sections).
    async fn snapshot(&mut self) -> Res<Snapshot> {
        self.sent += 1;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .arg("stats")
            .query_async(&mut self.conn)
            .await?;
        let mut calls = BTreeMap::new();
        let mut script_usec = 0;
        let mut usec = BTreeMap::new();
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("cmdstat_")
                && let Some((name, stats)) = rest.split_once(':')
                && let Some(n) = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
            {
                calls.insert(name.to_owned(), n);
                let spent = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("usec="))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                usec.insert(name.to_owned(), spent);
                if name == "evalsha" || name == "eval" {
                    script_usec += spent;
                }
            }
        }
        let total = field(&info, "total_commands_processed")
            .and_then(|n| n.parse().ok())
            .ok_or("INFO stats has no total_commands_processed")?;
        Ok(Snapshot {
            calls,
            script_usec,
            usec,
            total,
            inspect_sent: self.sent,
        })
    }

    /// Seconds of CPU the server has used (`used_cpu_sys` + `used_cpu_user`).
    async fn server_cpu(&mut self) -> Res<f64> {
        let info = self.info("cpu").await?;
        let get = |k: &str| -> Res<f64> {
            Ok(field(&info, k)
                .and_then(|v| v.parse().ok())
                .ok_or("INFO cpu lacks used_cpu_*")?)
        };
        Ok(get("used_cpu_sys")? + get("used_cpu_user")?)
    }

    async fn clients(&mut self) -> Res<Vec<ClientInfo>> {
        self.sent += 1;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut self.conn)
            .await?;
        Ok(list
            .lines()
            .filter_map(|line| {
                let get = |k: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                Some(ClientInfo {
                    id: get("id")?,
                    subscriptions: get("sub").unwrap_or(0)
                        + get("psub").unwrap_or(0)
                        + get("ssub").unwrap_or(0),
                })
            })
            .collect())
    }
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// What the server did between two snapshots.
#[derive(Debug, Clone, Default)]
struct Delta {
    /// Calls per command name, the library's only (without [`NOT_LIBRARY`]).
    library: BTreeMap<String, u64>,
    /// Every command the server processed, less the inspection connection's own.
    total: u64,
    /// Microseconds the server spent running scripts.
    script_usec: u64,
    /// Microseconds per command name, the library's only.
    usec: BTreeMap<String, u64>,
}

impl Delta {
    fn between(before: &Snapshot, after: &Snapshot) -> Delta {
        let library: BTreeMap<String, u64> = after
            .calls
            .iter()
            .filter(|(name, _)| !NOT_LIBRARY.contains(&name.as_str()))
            .map(|(name, &n)| {
                (
                    name.clone(),
                    n - before.calls.get(name).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        // The `INFO` that took `before` is counted in `after.total`, the one taking `after` is not:
        // the inspection commands inside the window are exactly those sent in between.
        let total =
            (after.total - before.total).saturating_sub(after.inspect_sent - before.inspect_sent);
        let usec = after
            .usec
            .iter()
            .filter(|(name, _)| library.contains_key(*name))
            .map(|(name, &u)| {
                (
                    name.clone(),
                    u - before.usec.get(name).copied().unwrap_or(0),
                )
            })
            .collect();
        Delta {
            library,
            total,
            script_usec: after.script_usec - before.script_usec,
            usec,
        }
    }

    fn add(&mut self, other: &Delta) {
        for (name, n) in &other.library {
            *self.library.entry(name.clone()).or_default() += n;
        }
        self.total += other.total;
        self.script_usec += other.script_usec;
        for (name, u) in &other.usec {
            *self.usec.entry(name.clone()).or_default() += u;
        }
    }

    fn library_total(&self) -> u64 {
        self.library.values().sum()
    }

    /// "evalsha 2.00, get 2.00, …" per acquisition.
    fn breakdown(&self, per: f64) -> String {
        let mut v: Vec<_> = self.library.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(name, n)| format!("{name} {:.2}", **n as f64 / per))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn json(&self, per: f64) -> Value {
        Value::Object(
            self.library
                .iter()
                .map(|(k, v)| (k.clone(), json!(round3(*v as f64 / per))))
                .collect(),
        )
    }
}

// ------------------------------------------------------------------------------------------------
// Statistics and reporting

/// A latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Dist {
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn dist(samples: &[i64]) -> Dist {
    if samples.is_empty() {
        return Dist::default();
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    // Nearest rank.
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    Dist {
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1] as f64,
        mean: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
    }
}

/// The median over rounds of p50(`a` in the round) / p50(`b` in the round): blocks run back to
/// back share the machine's state, so this holds up on a machine whose speed drifts.
fn paired_ratio(a: &[Vec<i64>], b: &[Vec<i64>]) -> f64 {
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| dist(a).p50 / dist(b).p50)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN)
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `48.2 µs`, `1.31 ms`, `2.04 s`.
fn t(ns: f64) -> String {
    if ns.abs() < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns.abs() < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn us(ns: f64) -> f64 {
    round3(ns / 1e3)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    if squares == 0.0 {
        0.0
    } else {
        sum * sum / (counts.len() as f64 * squares)
    }
}

/// One scenario's outcome: rows for the table, one JSON object, and whether its correctness
/// checks held.
struct Report {
    name: String,
    rows: Vec<Row>,
    json: Value,
    targets: Vec<Value>,
    sound: bool,
}

struct Row {
    measure: String,
    value: String,
    target: Option<(String, bool)>,
}

impl Report {
    fn new(name: &str) -> Report {
        Report {
            name: name.to_owned(),
            rows: Vec::new(),
            json: json!({ "scenario": name }),
            targets: Vec::new(),
            sound: true,
        }
    }

    fn row(&mut self, measure: &str, value: impl Into<String>) {
        self.rows.push(Row {
            measure: measure.to_owned(),
            value: value.into(),
            target: None,
        });
    }

    /// A row with a target: `held` decides the verdict printed next to it.
    fn target(&mut self, measure: &str, value: impl Into<String>, target: &str, held: bool) {
        let value = value.into();
        self.targets.push(json!({
            "measure": measure, "value": value, "target": target, "held": held,
        }));
        self.rows.push(Row {
            measure: measure.to_owned(),
            value,
            target: Some((target.to_owned(), held)),
        });
    }

    /// A correctness check: failing it fails the run.
    fn check(&mut self, measure: &str, value: impl Into<String>, target: &str, held: bool) {
        self.sound &= held;
        self.target(measure, value, target, held);
    }

    fn set(&mut self, key: &str, value: Value) {
        self.json[key] = value;
    }

    fn finish(mut self) -> Report {
        self.json["targets"] = Value::Array(std::mem::take(&mut self.targets));
        self.json["correct"] = json!(self.sound);
        self
    }
}

fn print_table(reports: &[Report]) {
    let w_measure = reports
        .iter()
        .flat_map(|r| r.rows.iter().map(|row| row.measure.chars().count()))
        .max()
        .unwrap_or(0);
    let w_value = reports
        .iter()
        .flat_map(|r| r.rows.iter().map(|row| row.value.chars().count()))
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<w_measure$}  {:<w_value$}  target",
        "scenario", "measure", "value"
    );
    for r in reports {
        let _ = writeln!(out);
        for (i, row) in r.rows.iter().enumerate() {
            let name = if i == 0 { r.name.as_str() } else { "" };
            let target = match &row.target {
                Some((t, true)) => format!("{t}  held"),
                Some((t, false)) => format!("{t}  NOT HELD"),
                None => String::new(),
            };
            let line = format!(
                "{name:<22} {:<w_measure$}  {:<w_value$}  {target}",
                row.measure, row.value
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    print!("{out}");
}

// ------------------------------------------------------------------------------------------------
// floor

#[derive(Debug, Clone, Copy)]
struct Floor {
    ping: Dist,
    evalsha: Dist,
    /// A handoff by hand on the same client stack: release script (`DEL` + `PUBLISH`) sent →
    /// message read on a `get_async_pubsub` connection → acquire script (`SET NX PX`) answered.
    pubsub: Dist,
}

/// Raw round trips on a multiplexed connection configured as the library's: `PING`, and
/// `EVALSHA` of a script that returns 1.
async fn floor(ctx: &Ctx) -> Res<(Floor, Report)> {
    progress("floor: raw PING and EVALSHA round trips");
    let n = ctx.sizes.floor;
    let mut conn = connection(&ctx.url).await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut conn)
        .await?;
    let mut ping = Vec::with_capacity(n);
    let mut evalsha = Vec::with_capacity(n);
    // Interleaved in blocks, so drift on a shared machine hits both alike; the first block warms up.
    let block = (n / 10).max(1);
    for b in 0..=n.div_ceil(block) {
        for _ in 0..block {
            let t0 = Instant::now();
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            let t1 = Instant::now();
            redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(0)
                .query_async::<i64>(&mut conn)
                .await?;
            let t2 = Instant::now();
            if b > 0 && ping.len() < n {
                ping.push(nanos(t1 - t0));
                evalsha.push(nanos(t2 - t1));
            }
        }
    }
    let floor = Floor {
        ping: dist(&ping),
        evalsha: dist(&evalsha),
        pubsub: pubsub_handoff(ctx, n).await?,
    };
    let mut r = Report::new("floor");
    r.row(
        "PING p50 / p99",
        format!("{} / {}", t(floor.ping.p50), t(floor.ping.p99)),
    );
    r.row(
        "EVALSHA (return 1) p50 / p99",
        format!("{} / {}", t(floor.evalsha.p50), t(floor.evalsha.p99)),
    );
    r.row(
        "pub/sub handoff by hand p50 / p99",
        format!(
            "{} / {} = {:.2} x EVALSHA",
            t(floor.pubsub.p50),
            t(floor.pubsub.p99),
            floor.pubsub.p50 / floor.evalsha.p50
        ),
    );
    r.row("samples each", n.to_string());
    r.set("samples", json!(n));
    r.set("ping_p50_us", json!(us(floor.ping.p50)));
    r.set("ping_p99_us", json!(us(floor.ping.p99)));
    r.set("evalsha_p50_us", json!(us(floor.evalsha.p50)));
    r.set("evalsha_p99_us", json!(us(floor.evalsha.p99)));
    r.set("pubsub_handoff_p50_us", json!(us(floor.pubsub.p50)));
    r.set("pubsub_handoff_p99_us", json!(us(floor.pubsub.p99)));
    progress(&format!(
        "floor: PING p50 {}, EVALSHA p50 {}",
        t(floor.ping.p50),
        t(floor.evalsha.p50)
    ));
    Ok((floor, r.finish()))
}

/// The least a handoff through pub/sub costs on this client stack, without the library: one task
/// sends a release script (`DEL` + `PUBLISH`); another, reading the channel on a
/// `get_async_pubsub` connection as the library's subscriber does, sends an acquire script
/// (`SET NX PX`) on a second multiplexed connection. Measured from the release's send to the
/// acquire's answer, as the handoff gap is.
async fn pubsub_handoff(ctx: &Ctx, n: usize) -> Res<Dist> {
    let client = Client::open(ctx.url.as_str())?;
    let channel = format!("{}:{{floor}}:released", ctx.prefix);
    let key = format!("{}:{{floor}}", ctx.prefix);
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let (_sink, mut stream) = pubsub.split();
    let mut releaser = connection(&ctx.url).await?;
    let mut acquirer = connection(&ctx.url).await?;
    let mut load = async |script: &str| -> Res<String> {
        Ok(redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script)
            .query_async(&mut releaser)
            .await?)
    };
    let release =
        load("redis.call('DEL', KEYS[1]) redis.call('PUBLISH', KEYS[2], '') return 1").await?;
    let acquire =
        load("if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', 3000) then return 1 end return 0")
            .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waiter = {
        let key = key.clone();
        tokio::spawn(async move {
            while futures_util::StreamExt::next(&mut stream).await.is_some() {
                let taken = redis::cmd("EVALSHA")
                    .arg(&acquire)
                    .arg(1)
                    .arg(&key)
                    .arg("floor")
                    .query_async::<i64>(&mut acquirer)
                    .await;
                if tx.send((Instant::now(), taken)).is_err() {
                    return;
                }
            }
        })
    };
    let mut gaps = Vec::with_capacity(n);
    let warmup = (n / 10).max(1);
    for i in 0..warmup + n {
        let sent = Instant::now();
        redis::cmd("EVALSHA")
            .arg(&release)
            .arg(2)
            .arg(&key)
            .arg(&channel)
            .query_async::<i64>(&mut releaser)
            .await?;
        let (acquired, taken) = rx.recv().await.ok_or("pub/sub floor: waiter stopped")?;
        if taken? != 1 {
            return Err("pub/sub floor: the key was not free after the release".into());
        }
        if i >= warmup {
            gaps.push(nanos(acquired - sent));
        }
    }
    waiter.abort();
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut releaser)
        .await?;
    Ok(dist(&gaps))
}

// ------------------------------------------------------------------------------------------------
// uncontended

async fn uncontended(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    let n = ctx.sizes.uncontended;
    progress(&format!(
        "uncontended: {n} acquire+release on one key, one task"
    ));
    let locks = ctx.manager().await?;
    let key = LockKey::new("uncontended").part(1);
    let options = LockOptions::new();
    // Warm-up: loads the scripts (the first EVALSHA answers NOSCRIPT) and the connection.
    for _ in 0..ctx.sizes.warmup {
        locks.lock(&key, options).await?.release().await?;
    }
    // Blocks of the library's loop alternate with blocks of raw `EVALSHA`s on a connection like
    // the library's, so the ratio compares the two under the same conditions.
    let mut conn = connection(&ctx.url).await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut conn)
        .await?;
    let per_block = 100;
    let blocks = n.div_ceil(per_block);
    let (mut lat_blocks, mut raw_blocks) = (Vec::new(), Vec::new());
    let mut delta = Delta::default();
    let (mut sent, mut elapsed, mut server_cpu, mut client_secs) = (0, Duration::ZERO, 0.0, 0.0);
    let mut raw_client_secs = 0.0;
    let mut raw_script_usec = 0;
    for _ in 0..blocks {
        let raw_s0 = inspect.snapshot().await?;
        let client0 = client_cpu()?;
        let mut raw = Vec::with_capacity(per_block);
        for _ in 0..per_block {
            let t0 = Instant::now();
            redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(0)
                .query_async::<i64>(&mut conn)
                .await?;
            raw.push(nanos(t0.elapsed()));
        }
        raw_blocks.push(raw);
        raw_script_usec += Delta::between(&raw_s0, &inspect.snapshot().await?).script_usec;
        raw_client_secs += client_cpu()? - client0;
        let m0 = locks.metrics();
        let (server0, client0) = (inspect.server_cpu().await?, client_cpu()?);
        let s0 = inspect.snapshot().await?;
        let mut lat = Vec::with_capacity(per_block);
        let start = Instant::now();
        for _ in 0..per_block {
            let t0 = Instant::now();
            let guard = locks.lock(&key, options).await?;
            guard.release().await?;
            lat.push(nanos(t0.elapsed()));
        }
        elapsed += start.elapsed();
        lat_blocks.push(lat);
        let s1 = inspect.snapshot().await?;
        let (server1, client1) = (inspect.server_cpu().await?, client_cpu()?);
        let m1 = locks.metrics();
        delta.add(&Delta::between(&s0, &s1));
        sent += m1.commands - m0.commands;
        server_cpu += server1 - server0;
        client_secs += client1 - client0;
    }
    let lat = lat_blocks.concat();
    let raw = raw_blocks.concat();
    let n = lat.len();
    let d = dist(&lat);
    let evalsha = dist(&raw);
    let server_us = server_cpu * 1e6 / n as f64;
    let client_us = client_secs * 1e6 / n as f64;
    let raw_client_us = raw_client_secs * 1e6 / raw.len() as f64;
    let round_trips = sent as f64 / n as f64;
    let commands = delta.library_total() as f64 / n as f64;
    let ratio = paired_ratio(&lat_blocks, &raw_blocks) / 2.0;
    let pooled = d.p50 / (2.0 * evalsha.p50);
    let ratio_floor = d.p50 / (2.0 * floor.evalsha.p50);
    let ops = n as f64 / elapsed.as_secs_f64();

    let mut r = Report::new("uncontended");
    r.row("acquire+release per second", format!("{ops:.0}"));
    r.row(
        "acquire+release p50 / p99",
        format!("{} / {}", t(d.p50), t(d.p99)),
    );
    r.target(
        "round trips per acquire+release",
        format!("{round_trips:.3}"),
        "exactly 2",
        sent == 2 * n as u64,
    );
    r.row(
        "Redis commands per acquire+release",
        format!("{commands:.2}"),
    );
    r.row("  by command", delta.breakdown(n as f64));
    let script_us = delta.script_usec as f64 / n as f64;
    let raw_script_us = raw_script_usec as f64 / raw.len() as f64;
    r.row(
        "server time in scripts per acquire+release",
        format!("{script_us:.1} µs (EVALSHA return 1: {raw_script_us:.1} µs)"),
    );
    r.row(
        "  inside them, by command",
        delta
            .usec
            .iter()
            .filter(|(name, _)| !name.starts_with("eval"))
            .map(|(name, u)| format!("{name} {:.2} µs", *u as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", "),
    );
    r.set("server_script_us_per_op", json!(round3(script_us)));
    r.set(
        "server_us_by_command",
        Value::Object(
            delta
                .usec
                .iter()
                .map(|(k, u)| (k.clone(), json!(round3(*u as f64 / n as f64))))
                .collect(),
        ),
    );
    r.set("raw_evalsha_script_us", json!(round3(raw_script_us)));
    r.row(
        "CPU per acquire+release",
        format!(
            "server {server_us:.1} µs, client {client_us:.1} µs (raw EVALSHA: client {raw_client_us:.1} µs)"
        ),
    );
    r.row(
        "EVALSHA p50 in blocks alongside",
        format!(
            "{} (floor scenario: {})",
            t(evalsha.p50),
            t(floor.evalsha.p50)
        ),
    );
    r.target(
        "p50 / (2 x EVALSHA p50), paired blocks",
        format!("{ratio:.3} (pooled: {pooled:.3}; to the floor scenario: {ratio_floor:.3})"),
        "<= 1.15",
        ratio <= 1.15,
    );
    r.set("iterations", json!(n));
    r.set("ops_per_s", json!(ops.round()));
    r.set("p50_us", json!(us(d.p50)));
    r.set("p99_us", json!(us(d.p99)));
    r.set("round_trips_per_acquisition", json!(round3(round_trips)));
    r.set("redis_commands_per_acquisition", json!(round3(commands)));
    r.set("redis_commands_by_name", delta.json(n as f64));
    r.set("evalsha_alongside_p50_us", json!(us(evalsha.p50)));
    r.set("ratio_to_floor", json!(round3(ratio)));
    r.set("ratio_to_floor_pooled", json!(round3(pooled)));
    r.set("ratio_to_floor_scenario", json!(round3(ratio_floor)));
    r.set("server_cpu_us_per_op", json!(round3(server_us)));
    r.set("client_cpu_us_per_op", json!(round3(client_us)));
    r.set("raw_evalsha_client_cpu_us", json!(round3(raw_client_us)));
    progress(&format!(
        "uncontended: {ops:.0}/s, p50 {}, {round_trips:.2} round trips, ratio {ratio:.3}",
        t(d.p50)
    ));
    Ok(r.finish())
}

// ------------------------------------------------------------------------------------------------
// handoff

/// One critical section on the merged timeline: nanoseconds since the run's epoch.
#[derive(Debug, Clone, Copy)]
struct Section {
    task: usize,
    asked: i64,
    acquired: i64,
    released: i64,
}

/// A process's view of the shared time base: the parent's `SystemTime` epoch, measured once with
/// the wall clock and from then on with this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    /// Nanoseconds from the epoch to `base`.
    offset: i64,
}

impl Clock {
    fn new(epoch_ns: u128) -> Clock {
        let base = Instant::now();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Clock {
            base,
            offset: i64::try_from(now as i128 - epoch_ns as i128).unwrap_or(0),
        }
    }

    fn at(&self, t: Instant) -> i64 {
        self.offset + nanos(t - self.base)
    }

    fn instant(&self, ns: i64) -> Instant {
        let d = ns - self.offset;
        if d >= 0 {
            self.base + Duration::from_nanos(d as u64)
        } else {
            self.base
        }
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[derive(Debug, Clone, Copy)]
struct HandoffPlan {
    start: Instant,
    end: Instant,
    hold: Duration,
    think: Duration,
}

/// One task of the handoff: acquire; read the counter; hold; write the counter + 1; release;
/// think; until the end of the run. The counter is a Redis hash field read with `HGET` and written
/// with `HSET`: unsynchronised, so it comes out exact only if no two sections overlapped.
async fn handoff_task(
    locks: LockManager,
    mut counter: MultiplexedConnection,
    counter_key: String,
    task: usize,
    clock: Clock,
    plan: HandoffPlan,
) -> (Vec<Section>, u64) {
    let key = LockKey::new("handoff");
    let options = LockOptions::new().wait(Duration::from_secs(30));
    let mut sections = Vec::new();
    let mut errors = 0;
    tokio::time::sleep_until(plan.start.into()).await;
    while Instant::now() < plan.end {
        let asked = Instant::now();
        let guard = match locks.lock(&key, options).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("bench: handoff task {task}: {e}");
                errors += 1;
                continue;
            }
        };
        let acquired = Instant::now();
        let body = async {
            let n: Option<u64> = redis::cmd("HGET")
                .arg(&counter_key)
                .arg("n")
                .query_async(&mut counter)
                .await?;
            tokio::time::sleep(plan.hold).await;
            redis::cmd("HSET")
                .arg(&counter_key)
                .arg("n")
                .arg(n.unwrap_or(0) + 1)
                .query_async::<()>(&mut counter)
                .await
        };
        if let Err(e) = body.await {
            eprintln!("bench: handoff task {task}: counter: {e}");
            errors += 1;
        }
        let released = Instant::now();
        if let Err(e) = guard.release().await {
            eprintln!("bench: handoff task {task}: release: {e}");
            errors += 1;
        }
        sections.push(Section {
            task,
            asked: clock.at(asked),
            acquired: clock.at(acquired),
            released: clock.at(released),
        });
        tokio::time::sleep(plan.think).await;
    }
    (sections, errors)
}

/// Everything a handoff run yields, from one process or several.
struct HandoffRun {
    name: &'static str,
    processes: usize,
    tasks: usize,
    start: i64,
    sections: Vec<Section>,
    round_trips: u64,
    subscriber_commands: u64,
    errors: u64,
    counter: u64,
    delta: Delta,
    hold: Duration,
    /// Raw `EVALSHA` round trips measured just before and just after the run.
    around: Dist,
}

/// Raw `EVALSHA`s of `return 1` on a connection like the library's, to take the floor again right
/// next to a scenario (a shared machine drifts within seconds).
struct Probe {
    conn: MultiplexedConnection,
    sha: String,
    samples: Vec<i64>,
}

impl Probe {
    const SAMPLES: usize = 1_000;

    async fn new(url: &str) -> Res<Probe> {
        let mut conn = connection(url).await?;
        let sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg("return 1")
            .query_async(&mut conn)
            .await?;
        let mut probe = Probe {
            conn,
            sha,
            samples: Vec::new(),
        };
        probe.measure().await?;
        Ok(probe)
    }

    async fn measure(&mut self) -> Res<()> {
        for _ in 0..Self::SAMPLES {
            let t0 = Instant::now();
            redis::cmd("EVALSHA")
                .arg(&self.sha)
                .arg(0)
                .query_async::<i64>(&mut self.conn)
                .await?;
            self.samples.push(nanos(t0.elapsed()));
        }
        Ok(())
    }

    async fn finish(mut self) -> Res<Dist> {
        self.measure().await?;
        Ok(dist(&self.samples))
    }
}

const HANDOFF_TASKS: usize = 8;
const HANDOFF_PROCESSES: usize = 4;
const HOLD: Duration = Duration::from_millis(2);
const THINK: Duration = Duration::from_millis(2);

async fn handoff_in_process(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    progress(&format!(
        "handoff: {HANDOFF_TASKS} tasks in one process, one key, {} s",
        ctx.sizes.handoff.as_secs_f64()
    ));
    let locks = ctx.manager().await?;
    let counter = connection(&ctx.url).await?;
    let counter_key = format!("{}:handoff-counter", ctx.prefix);
    redis::cmd("DEL")
        .arg(&counter_key)
        .query_async::<()>(&mut counter.clone())
        .await?;
    let probe = Probe::new(&ctx.url).await?;
    let clock = Clock::new(unix_nanos());
    let start = Instant::now() + Duration::from_millis(50);
    let plan = HandoffPlan {
        start,
        end: start + ctx.sizes.handoff,
        hold: HOLD,
        think: THINK,
    };
    let m0 = locks.metrics();
    let s0 = inspect.snapshot().await?;
    let handles: Vec<_> = (0..HANDOFF_TASKS)
        .map(|task| {
            tokio::spawn(handoff_task(
                locks.clone(),
                counter.clone(),
                counter_key.clone(),
                task,
                clock,
                plan,
            ))
        })
        .collect();
    let mut sections = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (s, e) = h.await?;
        sections.extend(s);
        errors += e;
    }
    let s1 = inspect.snapshot().await?;
    let m1 = locks.metrics();
    let value: Option<u64> = redis::cmd("HGET")
        .arg(&counter_key)
        .arg("n")
        .query_async(&mut counter.clone())
        .await?;
    redis::cmd("DEL")
        .arg(&counter_key)
        .query_async::<()>(&mut counter.clone())
        .await?;
    let run = HandoffRun {
        name: "handoff (1 process)",
        around: probe.finish().await?,
        processes: 1,
        tasks: HANDOFF_TASKS,
        start: clock.at(start),
        sections,
        round_trips: m1.commands - m0.commands,
        subscriber_commands: m1.subscriber_commands - m0.subscriber_commands,
        errors,
        counter: value.unwrap_or(0),
        delta: Delta::between(&s0, &s1),
        hold: HOLD,
    };
    Ok(handoff_report(run, floor))
}

async fn handoff_processes(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    let per = HANDOFF_TASKS / HANDOFF_PROCESSES;
    progress(&format!(
        "handoff: {HANDOFF_PROCESSES} processes x {per} tasks, one key, {} s",
        ctx.sizes.handoff.as_secs_f64()
    ));
    let mut counter = connection(&ctx.url).await?;
    let counter_key = format!("{}:handoff-counter", ctx.prefix);
    redis::cmd("DEL")
        .arg(&counter_key)
        .query_async::<()>(&mut counter)
        .await?;
    let probe = Probe::new(&ctx.url).await?;
    let epoch = unix_nanos();
    let clock = Clock::new(epoch);
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for p in 0..HANDOFF_PROCESSES {
        let mut child = tokio::process::Command::new(&exe)
            .arg("--worker")
            .args(["--url", &ctx.url, "--prefix", &ctx.prefix])
            .args(["--first-task", &(p * per).to_string()])
            .args(["--tasks", &per.to_string()])
            .args(["--duration-ms", &ctx.sizes.handoff.as_millis().to_string()])
            .args(["--hold-ms", &HOLD.as_millis().to_string()])
            .args(["--think-ms", &THINK.as_millis().to_string()])
            .args(["--epoch-ns", &epoch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("worker stdin")?;
        let lines = BufReader::new(child.stdout.take().ok_or("worker stdout")?).lines();
        workers.push((child, stdin, lines));
    }
    // Every worker has connected before the clock starts.
    for (_, _, lines) in &mut workers {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "a worker did not start within 10 s")??
            .ok_or("a worker exited before it was ready")?;
        let ready: Value = serde_json::from_str(&line)?;
        if ready["ready"] != json!(true) {
            return Err(format!("unexpected worker line: {line}").into());
        }
    }
    let s0 = inspect.snapshot().await?;
    let start = clock.at(Instant::now() + Duration::from_millis(50));
    for (_, stdin, _) in &mut workers {
        stdin.write_all(format!("go {start}\n").as_bytes()).await?;
        stdin.flush().await?;
    }
    let mut sections = Vec::new();
    let (mut round_trips, mut subscriber_commands, mut errors) = (0, 0, 0);
    for (mut child, _, mut lines) in workers {
        let mut done = false;
        while let Some(line) = lines.next_line().await? {
            let v: Value = serde_json::from_str(&line)?;
            if v["done"] == json!(true) {
                round_trips += v["commands"].as_u64().unwrap_or(0);
                subscriber_commands += v["subscriber_commands"].as_u64().unwrap_or(0);
                errors += v["errors"].as_u64().unwrap_or(0);
                done = true;
            } else {
                let get = |k: &str| v[k].as_i64().ok_or(format!("bad worker line: {line}"));
                sections.push(Section {
                    task: usize::try_from(get("t")?)?,
                    asked: get("w")?,
                    acquired: get("a")?,
                    released: get("r")?,
                });
            }
        }
        let status = child.wait().await?;
        if !done || !status.success() {
            return Err(format!("a handoff worker failed ({status})").into());
        }
    }
    let s1 = inspect.snapshot().await?;
    let value: Option<u64> = redis::cmd("HGET")
        .arg(&counter_key)
        .arg("n")
        .query_async(&mut counter)
        .await?;
    redis::cmd("DEL")
        .arg(&counter_key)
        .query_async::<()>(&mut counter)
        .await?;
    let run = HandoffRun {
        name: "handoff (4 processes)",
        around: probe.finish().await?,
        processes: HANDOFF_PROCESSES,
        tasks: HANDOFF_TASKS,
        start,
        sections,
        round_trips,
        subscriber_commands,
        errors,
        counter: value.unwrap_or(0),
        delta: Delta::between(&s0, &s1),
        hold: HOLD,
    };
    Ok(handoff_report(run, floor))
}

/// The hidden `--worker` mode: connect, say ready, wait for `go <start>`, run the handoff tasks,
/// print each section as a JSON line and a final summary line.
async fn worker(w: WorkerArgs) -> Res<()> {
    let clock = Clock::new(w.epoch_ns);
    let locks = LockManager::builder()
        .url(&w.url)
        .key_prefix(&w.prefix)
        .build()
        .await?;
    let counter = connection(&w.url).await?;
    let counter_key = format!("{}:handoff-counter", w.prefix);
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"{\"ready\":true}\n").await?;
    stdout.flush().await?;
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    let start_ns: i64 = line
        .trim()
        .strip_prefix("go ")
        .ok_or("expected `go <start>`")?
        .parse()?;
    let start = clock.instant(start_ns);
    let plan = HandoffPlan {
        start,
        end: start + Duration::from_millis(w.duration_ms),
        hold: Duration::from_millis(w.hold_ms),
        think: Duration::from_millis(w.think_ms),
    };
    let m0 = locks.metrics();
    let handles: Vec<_> = (0..w.tasks)
        .map(|i| {
            tokio::spawn(handoff_task(
                locks.clone(),
                counter.clone(),
                counter_key.clone(),
                w.first_task + i,
                clock,
                plan,
            ))
        })
        .collect();
    let mut out = String::new();
    let mut errors = 0;
    for h in handles {
        let (sections, e) = h.await?;
        errors += e;
        for s in sections {
            let _ = writeln!(
                out,
                "{{\"t\":{},\"w\":{},\"a\":{},\"r\":{}}}",
                s.task, s.asked, s.acquired, s.released
            );
        }
    }
    let m1 = locks.metrics();
    let _ = writeln!(
        out,
        "{}",
        json!({
            "done": true,
            "commands": m1.commands - m0.commands,
            "subscriber_commands": m1.subscriber_commands - m0.subscriber_commands,
            "errors": errors,
        })
    );
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

fn handoff_report(mut run: HandoffRun, floor: Floor) -> Report {
    run.sections.sort_by_key(|s| s.acquired);
    let n = run.sections.len();
    let mut r = Report::new(run.name);
    if n < 2 {
        r.check("critical sections", n.to_string(), ">= 2", false);
        return r.finish();
    }
    let gaps: Vec<i64> = run
        .sections
        .windows(2)
        .map(|w| w[1].acquired - w[0].released)
        .collect();
    let overlaps = gaps.iter().filter(|&&g| g < 0).count();
    let same_task = run
        .sections
        .windows(2)
        .filter(|w| w[0].task == w[1].task)
        .count();
    let waits: Vec<i64> = run.sections.iter().map(|s| s.acquired - s.asked).collect();
    let holds: Vec<i64> = run
        .sections
        .iter()
        .map(|s| s.released - s.acquired)
        .collect();
    let mut counts = vec![0u64; run.tasks];
    for s in &run.sections {
        counts[s.task] += 1;
    }
    let last = run
        .sections
        .iter()
        .map(|s| s.released)
        .max()
        .unwrap_or(run.start);
    let elapsed = (last - run.start) as f64 / 1e9;
    let throughput = n as f64 / elapsed;
    let gap = dist(&gaps);
    let wait = dist(&waits);
    let hold = dist(&holds);
    let ideal = 1e9 / (hold.mean + gap.p50);
    let fairness = jain(&counts);
    let round_trips = run.round_trips as f64 / n as f64;
    let commands = run.delta.library_total() as f64 / n as f64;
    let gap_floor = gap.p50 / run.around.p50;
    let gap_floor_scenario = gap.p50 / floor.evalsha.p50;
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);

    r.row(
        "tasks",
        format!(
            "{} ({} process{} x {})",
            run.tasks,
            run.processes,
            if run.processes == 1 { "" } else { "es" },
            run.tasks / run.processes
        ),
    );
    r.row(
        "critical sections / s",
        format!("{throughput:.1} ({n} in {elapsed:.2} s)"),
    );
    r.target(
        "  vs 1 / (hold mean + gap p50)",
        format!(
            "{:.1} % of {ideal:.1}/s (hold mean {})",
            100.0 * throughput / ideal,
            t(hold.mean)
        ),
        ">= 90 %",
        throughput >= 0.9 * ideal,
    );
    r.row(
        "EVALSHA p50 before + after the run",
        format!(
            "{} (floor scenario: {})",
            t(run.around.p50),
            t(floor.evalsha.p50)
        ),
    );
    r.target(
        "handoff gap p50",
        format!(
            "{} = {gap_floor:.2} x EVALSHA (floor scenario: {gap_floor_scenario:.2} x)",
            t(gap.p50)
        ),
        "<= 3 floor round trips",
        gap_floor <= 3.0,
    );
    r.row(
        "  vs pub/sub handoff by hand p50",
        format!("{:.2} x", gap.p50 / floor.pubsub.p50),
    );
    r.target(
        "handoff gap p99 / max",
        format!("{} / {}", t(gap.p99), t(gap.max)),
        "p99 <= 2 ms",
        gap.p99 <= 2e6,
    );
    r.row(
        "wait p50 / p99 / max",
        format!("{} / {} / {}", t(wait.p50), t(wait.p99), t(wait.max)),
    );
    r.target(
        "Jain's fairness index",
        format!("{fairness:.4} (per task {min}..{max})"),
        ">= 0.95",
        fairness >= 0.95,
    );
    r.target(
        "no task starves",
        format!("fewest sections {min}, failed acquisitions {}", run.errors),
        "every task > 0, no failure",
        min > 0 && run.errors == 0,
    );
    r.row(
        "same task twice in a row",
        format!(
            "{:.1} % of handoffs",
            100.0 * same_task as f64 / (n - 1) as f64
        ),
    );
    let per = run.tasks / run.processes;
    let mut per_process = vec![0u64; run.processes];
    for s in &run.sections {
        per_process[s.task / per] += 1;
    }
    let same_process = run
        .sections
        .windows(2)
        .filter(|w| w[0].task / per == w[1].task / per)
        .count();
    if run.processes > 1 {
        r.row(
            "same process twice in a row",
            format!(
                "{:.1} % of handoffs (even spread: {:.0} %)",
                100.0 * same_process as f64 / (n - 1) as f64,
                100.0 / run.processes as f64
            ),
        );
        r.row(
            "sections per process",
            per_process
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
        );
    }

    if run.processes == 1 {
        r.target(
            "round trips per acquisition",
            format!("{round_trips:.3}"),
            "<= 3",
            round_trips <= 3.0,
        );
    } else {
        r.row("round trips per acquisition", format!("{round_trips:.3}"));
    }
    r.row(
        "  SUBSCRIBE/UNSUBSCRIBE sent",
        run.subscriber_commands.to_string(),
    );
    r.row("Redis commands per acquisition", format!("{commands:.2}"));
    r.row("  by command", run.delta.breakdown(n as f64));
    r.check(
        "unsynchronised counter",
        format!("{} after {n} sections, {overlaps} overlaps", run.counter),
        "exact",
        run.counter == n as u64 && overlaps == 0,
    );
    r.set("processes", json!(run.processes));
    r.set("tasks", json!(run.tasks));
    r.set("hold_ms", json!(run.hold.as_millis() as u64));
    r.set("think_ms", json!(THINK.as_millis() as u64));
    r.set("sections", json!(n));
    r.set("sections_per_s", json!(round3(throughput)));
    r.set("ideal_per_s", json!(round3(ideal)));
    r.set("hold_mean_us", json!(us(hold.mean)));
    r.set("gap_p50_us", json!(us(gap.p50)));
    r.set("gap_p99_us", json!(us(gap.p99)));
    r.set("gap_max_us", json!(us(gap.max)));
    r.set("evalsha_around_p50_us", json!(us(run.around.p50)));
    r.set("gap_p50_floor_round_trips", json!(round3(gap_floor)));
    r.set(
        "gap_p50_floor_scenario_round_trips",
        json!(round3(gap_floor_scenario)),
    );
    r.set("wait_p50_us", json!(us(wait.p50)));
    r.set("wait_p99_us", json!(us(wait.p99)));
    r.set("wait_max_us", json!(us(wait.max)));
    r.set("jain", json!(round3(fairness * 10.0) / 10.0));
    r.set("per_task", json!(counts));
    r.set(
        "same_task_twice_pct",
        json!(round3(100.0 * same_task as f64 / (n - 1) as f64)),
    );
    r.set("per_process", json!(per_process));
    r.set(
        "same_process_twice_pct",
        json!(round3(100.0 * same_process as f64 / (n - 1) as f64)),
    );
    r.set(
        "gap_p50_pubsub_floor",
        json!(round3(gap.p50 / floor.pubsub.p50)),
    );
    r.set("round_trips_per_acquisition", json!(round3(round_trips)));
    r.set("subscriber_commands", json!(run.subscriber_commands));
    r.set("redis_commands_per_acquisition", json!(round3(commands)));
    r.set("redis_commands_by_name", run.delta.json(n as f64));
    r.set("counter", json!(run.counter));
    r.set("overlaps", json!(overlaps));
    r.set("failed_acquisitions", json!(run.errors));
    progress(&format!(
        "{}: {throughput:.0}/s, gap p50 {} p99 {}, Jain {fairness:.3}, {round_trips:.2} round trips, counter {}/{n}",
        run.name,
        t(gap.p50),
        t(gap.p99),
        run.counter
    ));
    r.finish()
}

// ------------------------------------------------------------------------------------------------
// idle_wait

fn rss_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(field(&status, "VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS in /proc/self/status")?)
}

async fn idle_wait(ctx: &Ctx, inspect: &mut Inspect) -> Res<Report> {
    let keys = ctx.sizes.idle_keys;
    let waiters = keys * ctx.sizes.waiters_per_key;
    let window = ctx.sizes.idle_window;
    progress(&format!(
        "idle_wait: {keys} held keys, {waiters} waiters, {} s idle",
        window.as_secs_f64()
    ));
    let key = |k: usize| LockKey::new("idle").part(k);
    // The holders stand for other instances: their own manager.
    let holders = ctx.manager().await?;
    let mut guards = Vec::with_capacity(keys);
    for k in 0..keys {
        let lease = LockOptions::new()
            .wait(Duration::ZERO)
            .lease(Duration::from_secs(120));
        guards.push(holders.lock(&key(k), lease).await?);
    }
    let before: HashSet<u64> = inspect.clients().await?.iter().map(|c| c.id).collect();
    let rss_empty = rss_kib()?;
    let locks = ctx.manager().await?;
    // The pool's connections are a cost per manager, not per waiter: open them all first.
    let warm: Vec<_> = (0..2 * POOL)
        .map(|i| {
            let locks = locks.clone();
            tokio::spawn(async move {
                let key = LockKey::new("idle-warm").part(i);
                locks.lock(&key, LockOptions::new()).await?.release().await
            })
        })
        .collect();
    for h in warm {
        h.await??;
    }
    let options = LockOptions::new().wait(Duration::from_secs(60));
    let future_size = std::mem::size_of_val(&locks.lock(&key(0), options));
    let rss0 = rss_kib()?;
    let handles: Vec<_> = (0..waiters)
        .map(|i| {
            let locks = locks.clone();
            let key = key(i % keys);
            tokio::spawn(async move {
                let guard = locks.lock(&key, options).await?;
                let at = Instant::now();
                guard.release().await?;
                Ok::<Instant, LockError>(at)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while locks.metrics().waiters < waiters {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {waiters} waiters queued after 10 s",
                locks.metrics().waiters
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Subscriptions confirmed and second tries answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss1 = rss_kib()?;
    let clients = inspect.clients().await?;
    let new: Vec<_> = clients.iter().filter(|c| !before.contains(&c.id)).collect();
    let subscribers = new.iter().filter(|c| c.subscriptions > 0).count();
    let channels: u64 = new.iter().map(|c| c.subscriptions).sum();

    let m0 = locks.metrics();
    let s0 = inspect.snapshot().await?;
    tokio::time::sleep(window).await;
    let s1 = inspect.snapshot().await?;
    let m1 = locks.metrics();
    let idle = Delta::between(&s0, &s1);
    let per_waiter = idle.total as f64 / window.as_secs_f64() / waiters as f64;

    let released = Instant::now();
    let releases: Vec<_> = guards
        .into_iter()
        .map(|g| tokio::spawn(g.release()))
        .collect();
    let mut failed = 0;
    let mut last = released;
    for h in handles {
        match h.await? {
            Ok(at) => last = last.max(at),
            Err(e) => {
                eprintln!("bench: idle_wait waiter: {e}");
                failed += 1;
            }
        }
    }
    for h in releases {
        h.await??;
    }
    let drained = last - released;
    let s2 = inspect.snapshot().await?;
    let drain = Delta::between(&s1, &s2);
    let kib_per_waiter = (rss1 as f64 - rss0 as f64) / waiters as f64;

    let mut r = Report::new("idle_wait");
    r.row(
        "held keys / waiters",
        format!("{keys} / {waiters} ({} per key)", ctx.sizes.waiters_per_key),
    );
    r.target(
        "Redis commands / s / waiter while held",
        format!(
            "{per_waiter:.4} ({} commands in {:.1} s)",
            idle.total,
            window.as_secs_f64()
        ),
        "<= 0.1",
        per_waiter <= 0.1,
    );
    r.row(
        "  client round trips while held",
        format!("{}", m1.commands - m0.commands),
    );
    r.target(
        "all waiters held once, after release",
        format!("{} (failed: {failed})", t(nanos(drained) as f64)),
        "<= 1 s",
        drained <= Duration::from_secs(1) && failed == 0,
    );
    r.row(
        "  Redis commands per waiter in the drain",
        format!("{:.2}", drain.library_total() as f64 / waiters as f64),
    );
    r.target(
        "subscriber connections (this process)",
        format!("{subscribers} ({channels} channels)"),
        "1",
        subscribers == 1,
    );
    r.row(
        "Redis connections of the waiting manager",
        format!("{}", new.len()),
    );
    r.target(
        "client memory per waiter (VmRSS)",
        format!("{kib_per_waiter:.2} KiB ({rss0} -> {rss1} KiB)"),
        "<= 2 KiB",
        kib_per_waiter <= 2.0,
    );
    r.row(
        "  the manager and its open pool, before",
        format!("{} KiB", rss0 as i64 - rss_empty as i64),
    );
    r.row("  size of a lock() future", format!("{future_size} bytes"));
    r.check("failed acquisitions", failed.to_string(), "0", failed == 0);
    r.set("keys", json!(keys));
    r.set("waiters", json!(waiters));
    r.set("idle_window_s", json!(window.as_secs_f64()));
    r.set("idle_commands", json!(idle.total));
    r.set("idle_commands_per_s_per_waiter", json!(per_waiter));
    r.set("idle_client_round_trips", json!(m1.commands - m0.commands));
    r.set("drain_ms", json!(round3(drained.as_secs_f64() * 1e3)));
    r.set(
        "drain_redis_commands_per_waiter",
        json!(round3(drain.library_total() as f64 / waiters as f64)),
    );
    r.set("drain_redis_commands_by_name", drain.json(waiters as f64));
    r.set("subscriber_connections", json!(subscribers));
    r.set("subscribed_channels", json!(channels));
    r.set("connections", json!(new.len()));
    r.set("rss_manager_kib", json!(rss0 as i64 - rss_empty as i64));
    r.set("lock_future_bytes", json!(future_size));
    r.set("rss_before_kib", json!(rss0));
    r.set("rss_after_kib", json!(rss1));
    r.set("kib_per_waiter", json!(round3(kib_per_waiter)));
    r.set("failed_acquisitions", json!(failed));
    progress(&format!(
        "idle_wait: {per_waiter:.4} commands/s/waiter, drained in {}, {subscribers} subscriber connection(s), {kib_per_waiter:.2} KiB/waiter",
        t(nanos(drained) as f64)
    ));
    Ok(r.finish())
}

// ------------------------------------------------------------------------------------------------
// distinct

const POOL: usize = 32;

/// Compare-and-delete, as a hand-rolled lock releases.
const COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Throughput and CPU of one way of taking distinct locks, over the rounds.
#[derive(Debug, Default)]
struct Variant {
    ops: Vec<f64>,
    /// Server CPU (`INFO cpu`) and client CPU (every thread of this process) per acquire+release,
    /// in µs.
    server_us: Vec<f64>,
    client_us: Vec<f64>,
}

impl Variant {
    async fn measure<F>(&mut self, inspect: &mut Inspect, keys: usize, run: F) -> Res<()>
    where
        F: Future<Output = Res<f64>>,
    {
        let (server0, client0) = (inspect.server_cpu().await?, client_cpu()?);
        let secs = run.await?;
        let (server1, client1) = (inspect.server_cpu().await?, client_cpu()?);
        self.ops.push(keys as f64 / secs);
        self.server_us.push((server1 - server0) * 1e6 / keys as f64);
        self.client_us.push((client1 - client0) * 1e6 / keys as f64);
        Ok(())
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn ops(&self) -> f64 {
        Self::median(&self.ops)
    }

    fn row(&self) -> String {
        format!(
            "{:.0}/s (rounds: {}); CPU/op: server {:.1} µs, client {:.1} µs",
            self.ops(),
            list(&self.ops),
            Self::median(&self.server_us),
            Self::median(&self.client_us)
        )
    }

    fn json(&self) -> Value {
        json!({
            "ops_per_s": self.ops().round(),
            "rounds_ops_per_s": self.ops.iter().map(|x| x.round()).collect::<Vec<_>>(),
            "server_cpu_us_per_op": round3(Self::median(&self.server_us)),
            "client_cpu_us_per_op": round3(Self::median(&self.client_us)),
        })
    }
}

/// CPU time of every thread of this process so far, in seconds.
fn client_cpu() -> Res<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(path) {
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

async fn distinct(ctx: &Ctx, inspect: &mut Inspect) -> Res<Report> {
    let (keys, tasks) = (ctx.sizes.distinct_keys, ctx.sizes.distinct_tasks);
    progress(&format!(
        "distinct: {tasks} tasks over {keys} keys, library vs SET NX PX + compare-and-delete, {} round(s)",
        ctx.sizes.distinct_rounds
    ));
    let locks = LockManager::builder()
        .url(&ctx.url)
        .key_prefix(&ctx.prefix)
        .pool_size(POOL)
        .build()
        .await?;
    let mut conns = Vec::with_capacity(POOL);
    for _ in 0..POOL {
        conns.push(connection(&ctx.url).await?);
    }
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(COMPARE_AND_DELETE)
        .query_async(&mut conns[0])
        .await?;
    let connections = Baseline::Connections(conns);
    let deadpool = Baseline::Deadpool(
        lock_guard::deadpool_redis::Config::from_url(ctx.url.as_str())
            .builder()?
            .max_size(POOL)
            .runtime(lock_guard::deadpool_redis::Runtime::Tokio1)
            .build()?,
    );
    // Warm-up: the pools fill and the library's scripts load.
    distinct_library(&locks, u64::MAX / 2, 2 * POOL, tasks).await?;
    distinct_baseline(&deadpool, &sha, &ctx.prefix, u64::MAX / 2, 2 * POOL, tasks).await?;

    let (mut ours, mut theirs, mut pooled) =
        (Variant::default(), Variant::default(), Variant::default());
    // Interleaved rounds on fresh keys, so drift on a shared machine hits all alike.
    for round in 0..ctx.sizes.distinct_rounds {
        let base = (3 * round * keys) as u64;
        ours.measure(inspect, keys, distinct_library(&locks, base, keys, tasks))
            .await?;
        let base = base + keys as u64;
        let run = distinct_baseline(&connections, &sha, &ctx.prefix, base, keys, tasks);
        theirs.measure(inspect, keys, run).await?;
        let base = base + keys as u64;
        let run = distinct_baseline(&deadpool, &sha, &ctx.prefix, base, keys, tasks);
        pooled.measure(inspect, keys, run).await?;
    }
    let ratio = ours.ops() / theirs.ops();
    let mut r = Report::new("distinct");
    r.row(
        "tasks / keys / pool",
        format!("{tasks} / {keys} / {POOL} connections"),
    );
    r.row("lock-guard acquire+release", ours.row());
    r.row("SET NX PX + EVALSHA del, 32 conns", theirs.row());
    r.target(
        "lock-guard / baseline",
        format!("{ratio:.3}"),
        ">= 0.8",
        ratio >= 0.8,
    );
    r.row("same on deadpool-redis (PING/checkout)", pooled.row());
    r.row(
        "  lock-guard / deadpool-redis baseline",
        format!("{:.3}", ours.ops() / pooled.ops()),
    );
    r.set("tasks", json!(tasks));
    r.set("keys", json!(keys));
    r.set("pool", json!(POOL));
    r.set("lock_guard", ours.json());
    r.set("baseline", theirs.json());
    r.set("deadpool_baseline", pooled.json());
    r.set("ratio", json!(round3(ratio)));
    r.set(
        "ratio_to_deadpool",
        json!(round3(ours.ops() / pooled.ops())),
    );
    progress(&format!(
        "distinct: {:.0}/s vs baseline {:.0}/s, ratio {ratio:.3}",
        ours.ops(),
        theirs.ops()
    ));
    Ok(r.finish())
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `tasks` tasks share `keys` keys numbered from `base`, each acquired and released once;
/// returns the seconds it took.
async fn distinct_library(locks: &LockManager, base: u64, keys: usize, tasks: usize) -> Res<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (locks, next) = (locks.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return Ok::<(), LockError>(());
                    }
                    let key = LockKey::new("distinct").part(base + i as u64);
                    locks
                        .lock(&key, LockOptions::new())
                        .await?
                        .release()
                        .await?;
                }
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Where a hand-rolled lock gets its connections.
#[derive(Clone)]
enum Baseline {
    /// A fixed set of multiplexed connections: task `i` uses connection `i mod pool`.
    Connections(Vec<MultiplexedConnection>),
    /// A `deadpool-redis` pool, one checkout per command (it recycles with `UNWATCH` + `PING`).
    Deadpool(lock_guard::deadpool_redis::Pool),
}

impl Baseline {
    async fn query<T: redis::FromRedisValue>(&self, task: usize, cmd: &redis::Cmd) -> Res<T> {
        Ok(match self {
            Baseline::Connections(conns) => {
                cmd.query_async(&mut conns[task % conns.len()].clone())
                    .await?
            }
            Baseline::Deadpool(pool) => cmd.query_async(&mut pool.get().await?).await?,
        })
    }
}

/// The same with a hand-rolled lock: `SET key token NX PX 3000`, then compare-and-delete by
/// `EVALSHA`.
async fn distinct_baseline(
    baseline: &Baseline,
    sha: &str,
    prefix: &str,
    base: u64,
    keys: usize,
    tasks: usize,
) -> Res<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let baseline = baseline.clone();
            let (next, sha, prefix) = (next.clone(), sha.to_owned(), prefix.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return Ok::<(), Box<dyn Error + Send + Sync>>(());
                    }
                    let key = format!("{prefix}:baseline:{{distinct:{}}}", base + i as u64);
                    let token = format!("{:016x}{:016x}", std::process::id(), base + i as u64);
                    let mut set = redis::cmd("SET");
                    set.arg(&key).arg(&token).arg("NX").arg("PX").arg(3000);
                    let taken: Option<String> = baseline.query(task, &set).await?;
                    if taken.is_none() {
                        return Err(format!("baseline key {key} was taken").into());
                    }
                    let mut del = redis::cmd("EVALSHA");
                    del.arg(&sha).arg(1).arg(&key).arg(&token);
                    let deleted: i64 = baseline.query(task, &del).await?;
                    if deleted != 1 {
                        return Err(format!("baseline key {key} was not ours").into());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

// ------------------------------------------------------------------------------------------------
// macro

/// The uncontended loop's body, through the attribute.
#[concurrency_guard(name = "macro", wait = 5s, lease = 3s, locks = locks)]
async fn guarded(id: u64, locks: &LockManager) -> Result<(), LockError> {
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Macro,
    Run,
    Manual,
}

async fn one_call(form: Form, locks: &LockManager) -> Result<(), LockError> {
    let options = LockOptions::new()
        .wait(Duration::from_secs(5))
        .lease(Duration::from_secs(3));
    match form {
        Form::Macro => guarded(1, locks).await,
        Form::Run => {
            let key = LockKey::new("macro").part(1);
            locks.run(&key, options, async { Ok(()) }).await
        }
        Form::Manual => {
            let key = LockKey::new("macro").part(1);
            locks.lock(&key, options).await?.release().await.map(drop)
        }
    }
}

async fn macro_overhead(ctx: &Ctx) -> Res<Report> {
    let (calls, blocks) = (ctx.sizes.macro_calls, ctx.sizes.macro_blocks);
    progress(&format!(
        "macro: {calls} uncontended calls each through #[concurrency_guard], manager.run and a manual guard"
    ));
    let locks = ctx.manager().await?;
    let forms = [Form::Macro, Form::Run, Form::Manual];
    for _ in 0..ctx.sizes.warmup {
        for form in forms {
            one_call(form, &locks).await?;
        }
    }
    let mut lat: [Vec<i64>; 3] = Default::default();
    let mut rounds: [Vec<Vec<i64>>; 3] = Default::default();
    let mut busy = [Duration::ZERO; 3];
    let per_block = calls.div_ceil(blocks);
    // Rounds of three short blocks back to back, rotating the order.
    for b in 0..blocks {
        for k in 0..3 {
            let i = (b + k) % 3;
            let mut block = Vec::with_capacity(per_block);
            let start = Instant::now();
            for _ in 0..per_block {
                let t0 = Instant::now();
                one_call(forms[i], &locks).await?;
                block.push(nanos(t0.elapsed()));
            }
            busy[i] += start.elapsed();
            lat[i].extend_from_slice(&block);
            rounds[i].push(block);
        }
    }
    let d: Vec<Dist> = lat.iter().map(|l| dist(l)).collect();
    let ops: Vec<f64> = (0..3)
        .map(|i| lat[i].len() as f64 / busy[i].as_secs_f64())
        .collect();
    let ratio = paired_ratio(&rounds[0], &rounds[2]);
    let ratio_run = paired_ratio(&rounds[0], &rounds[1]);
    let pooled = d[0].p50 / d[2].p50;
    let mut r = Report::new("macro");
    for (i, label) in [
        "#[concurrency_guard]",
        "manager.run",
        "manual lock + release",
    ]
    .iter()
    .enumerate()
    {
        r.row(
            &format!("{label} p50 / p99"),
            format!("{} / {} ({:.0}/s)", t(d[i].p50), t(d[i].p99), ops[i]),
        );
    }
    r.target(
        "macro / manual, median of paired p50s",
        format!("{ratio:.3} (pooled p50s: {pooled:.3}; {blocks} rounds)"),
        "<= 1.02",
        ratio <= 1.02,
    );
    r.row(
        "macro / manager.run, median of paired p50s",
        format!("{ratio_run:.3}"),
    );
    r.set("calls", json!(lat[0].len()));
    for (i, name) in ["macro", "run", "manual"].iter().enumerate() {
        r.set(&format!("{name}_p50_us"), json!(us(d[i].p50)));
        r.set(&format!("{name}_p99_us"), json!(us(d[i].p99)));
        r.set(&format!("{name}_mean_us"), json!(us(d[i].mean)));
        r.set(&format!("{name}_ops_per_s"), json!(ops[i].round()));
    }
    r.set("ratio_macro_manual_p50", json!(round3(ratio)));
    r.set("ratio_macro_manual_pooled_p50", json!(round3(pooled)));
    r.set("rounds", json!(blocks));
    r.set("ratio_macro_run_p50", json!(round3(ratio_run)));
    progress(&format!(
        "macro: p50 macro {} run {} manual {}, ratio {ratio:.3}",
        t(d[0].p50),
        t(d[1].p50),
        t(d[2].p50)
    ));
    Ok(r.finish())
}
