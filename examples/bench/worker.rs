//! Multi-process hand-overs: the benchmark starts itself again as `bench worker …` (a hidden
//! subcommand), once per process. Each worker connects, prints `{"ready":true}`, waits for
//! `go <start>` on stdin, runs its tasks until the end of the window, prints each section as a
//! JSON line and a final `{"done":true,…}` line.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lock_guard::LockManager;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::floor::Probe;
use crate::hand_rolled::{PollStats, poller_task};
use crate::handoff::{
    Clock, HandoffPlan, HandoffRun, Keys, Section, handoff_task, take_counter, unix_nanos,
};
use crate::inspect::{Delta, Inspect, connection};
use crate::{Ctx, Res, progress};

/// Which lock a worker's tasks take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LockKind {
    /// `LockManager::lock` with the default manager.
    LockGuard,
    /// The hand-rolled polling lock: `SET NX PX`, retried every `--poll-ms`, compare-and-delete.
    Poller,
}

/// The arguments of one worker process (the parent passes them; not meant to be typed).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    prefix: String,
    #[arg(long, value_enum)]
    lock: LockKind,
    #[arg(long)]
    key: String,
    #[arg(long)]
    first_task: usize,
    #[arg(long)]
    tasks: usize,
    #[arg(long)]
    duration_ms: u64,
    #[arg(long)]
    hold_ms: u64,
    #[arg(long)]
    think_ms: u64,
    #[arg(long)]
    poll_ms: u64,
    #[arg(long)]
    epoch_ns: u128,
}

/// A multi-process hand-over run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) processes: usize,
    pub(crate) tasks_per_process: usize,
    pub(crate) hold: Duration,
    pub(crate) think: Duration,
    pub(crate) lock: LockKind,
    /// The lock's name; the counter is `<prefix>:<key>-counter`.
    pub(crate) key: &'static str,
}

/// How long the polling lock sleeps between failed tries (a common hand-rolled choice; the
/// `idle_wait` target quotes a 1 ms poller too).
pub(crate) const POLL: Duration = Duration::from_millis(1);

/// Starts the workers, starts them together, collects their sections and the server's counters.
pub(crate) async fn run_processes(
    ctx: &Ctx,
    inspect: &mut Inspect,
    spec: &Spec,
) -> Res<HandoffRun> {
    let per = spec.tasks_per_process;
    progress(&format!(
        "{}: {} processes x {per} tasks, one key, hold {} ms, think {} ms, {} s",
        spec.name,
        spec.processes,
        spec.hold.as_millis(),
        spec.think.as_millis(),
        ctx.sizes.handoff.as_secs_f64()
    ));
    let mut counter = connection(&ctx.url).await?;
    let keys = Keys::new(&ctx.prefix, spec.key);
    take_counter(&mut counter, &keys.counter).await?;
    let probe = Probe::new(&ctx.url).await?;
    let epoch = unix_nanos();
    let clock = Clock::new(epoch);
    let exe = std::env::current_exe()?;
    let lock = match spec.lock {
        LockKind::LockGuard => "lock-guard",
        LockKind::Poller => "poller",
    };
    let mut workers = Vec::new();
    for p in 0..spec.processes {
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .args(["--url", &ctx.url, "--prefix", &ctx.prefix])
            .args(["--lock", lock, "--key", spec.key])
            .args(["--first-task", &(p * per).to_string()])
            .args(["--tasks", &per.to_string()])
            .args(["--duration-ms", &ctx.sizes.handoff.as_millis().to_string()])
            .args(["--hold-ms", &spec.hold.as_millis().to_string()])
            .args(["--think-ms", &spec.think.as_millis().to_string()])
            .args(["--poll-ms", &POLL.as_millis().to_string()])
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
            return Err(format!("a hand-over worker failed ({status})").into());
        }
    }
    let s1 = inspect.snapshot().await?;
    Ok(HandoffRun {
        name: spec.name,
        around: probe.finish().await?,
        processes: spec.processes,
        tasks: spec.processes * per,
        start,
        sections,
        round_trips,
        subscriber_commands,
        errors,
        counter: take_counter(&mut counter, &keys.counter).await?,
        delta: Delta::between(&s0, &s1),
        hold: spec.hold,
        think: spec.think,
    })
}

/// The worker process: connect, say ready, wait for `go <start>`, run the tasks, print each
/// section as a JSON line and a final summary line.
pub(crate) async fn run(w: WorkerArgs) -> Res<()> {
    let clock = Clock::new(w.epoch_ns);
    let locks = match w.lock {
        LockKind::LockGuard => Some(
            LockManager::builder()
                .url(&w.url)
                .key_prefix(&w.prefix)
                .build()
                .await?,
        ),
        LockKind::Poller => None,
    };
    let counter = connection(&w.url).await?;
    let keys = Keys::new(&w.prefix, &w.key);
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
    let m0 = locks.as_ref().map(LockManager::metrics);
    let poll = PollStats::default();
    let mut handles = Vec::new();
    for i in 0..w.tasks {
        let task = w.first_task + i;
        handles.push(match &locks {
            Some(locks) => tokio::spawn(handoff_task(
                locks.clone(),
                counter.clone(),
                keys.clone(),
                task,
                clock,
                plan,
            )),
            None => {
                let conn = connection(&w.url).await?;
                let lock_key = format!("{}:{}", w.prefix, w.key);
                let poll_every = Duration::from_millis(w.poll_ms);
                tokio::spawn(poller_task(
                    conn,
                    counter.clone(),
                    (lock_key, keys.counter.clone()),
                    (task, clock, plan, poll_every),
                    poll.clone(),
                ))
            }
        });
    }
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
    let (commands, subscriber_commands) = match (&locks, m0) {
        (Some(locks), Some(m0)) => {
            let m1 = locks.metrics();
            (
                m1.commands - m0.commands,
                m1.subscriber_commands - m0.subscriber_commands,
            )
        }
        _ => (poll.commands(), 0),
    };
    let _ = writeln!(
        out,
        "{}",
        json!({
            "done": true,
            "commands": commands,
            "subscriber_commands": subscriber_commands,
            "errors": errors,
        })
    );
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}
