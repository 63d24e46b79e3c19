//! Hand-over on one key: 8 tasks in one process, 4 processes x 2 tasks, and 8 separate managers
//! (8 processes x 1 task). Every section is recorded as (asked, acquired, released) on one
//! timeline shared by the processes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lock_guard::redis::aio::MultiplexedConnection;
use lock_guard::redis::{self};
use lock_guard::{LockKey, LockManager, LockOptions};

use crate::floor::{Floor, Probe};
use crate::handoff_report::{handoff_report, issue10_targets};
use crate::inspect::{Delta, Inspect, connection};
use crate::report::Report;
use crate::stats::{Dist, nanos};
use crate::worker::{LockKind, Spec, run_processes};
use crate::{Ctx, Res, progress};

/// One critical section on the merged timeline: nanoseconds since the run's epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section {
    pub(crate) task: usize,
    pub(crate) asked: i64,
    pub(crate) acquired: i64,
    pub(crate) released: i64,
}

/// A process's view of the shared time base: the parent's `SystemTime` epoch, measured once with
/// the wall clock and from then on with this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
    /// Nanoseconds from the epoch to `base`.
    offset: i64,
}

impl Clock {
    pub(crate) fn new(epoch_ns: u128) -> Clock {
        let base = Instant::now();
        Clock {
            base,
            offset: i64::try_from(unix_nanos() as i128 - epoch_ns as i128).unwrap_or(0),
        }
    }

    pub(crate) fn at(&self, t: Instant) -> i64 {
        self.offset + nanos(t - self.base)
    }

    pub(crate) fn instant(&self, ns: i64) -> Instant {
        let d = ns - self.offset;
        if d >= 0 {
            self.base + Duration::from_nanos(d as u64)
        } else {
            self.base
        }
    }
}

pub(crate) fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// When a task starts and stops, how long it holds the lock and thinks between sections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandoffPlan {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) hold: Duration,
    pub(crate) think: Duration,
}

/// The critical section's body: read a counter (`HGET` of a hash field), hold, write it + 1
/// (`HSET`). Unsynchronised, so the counter comes out exact only if no two sections overlapped.
pub(crate) async fn counter_body(
    counter: &mut MultiplexedConnection,
    counter_key: &str,
    hold: Duration,
) -> Res<()> {
    let n: Option<u64> = redis::cmd("HGET")
        .arg(counter_key)
        .arg("n")
        .query_async(counter)
        .await?;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    redis::cmd("HSET")
        .arg(counter_key)
        .arg("n")
        .arg(n.unwrap_or(0) + 1)
        .query_async::<()>(counter)
        .await?;
    Ok(())
}

/// The counter's value, and the key deleted for the next run.
pub(crate) async fn take_counter(conn: &mut MultiplexedConnection, key: &str) -> Res<u64> {
    let value: Option<u64> = redis::cmd("HGET")
        .arg(key)
        .arg("n")
        .query_async(conn)
        .await?;
    redis::cmd("DEL").arg(key).query_async::<()>(conn).await?;
    Ok(value.unwrap_or(0))
}

/// The keys of a hand-over run: the lock's name (the manager adds its prefix) and the counter's
/// key, prefixed by hand.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) lock: String,
    pub(crate) counter: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str) -> Keys {
        Keys {
            lock: name.to_owned(),
            counter: format!("{prefix}:{name}-counter"),
        }
    }
}

/// One task of a hand-over: acquire; the counter body; release; think; until the end of the run.
/// Returns the sections and the number of failures.
pub(crate) async fn handoff_task(
    locks: LockManager,
    mut counter: MultiplexedConnection,
    keys: Keys,
    task: usize,
    clock: Clock,
    plan: HandoffPlan,
) -> (Vec<Section>, u64) {
    let key = LockKey::new(keys.lock.as_str());
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
        if let Err(e) = counter_body(&mut counter, &keys.counter, plan.hold).await {
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
        if !plan.think.is_zero() {
            tokio::time::sleep(plan.think).await;
        }
    }
    (sections, errors)
}

/// Everything a hand-over run yields, from one process or several.
#[derive(Debug)]
pub(crate) struct HandoffRun {
    pub(crate) name: &'static str,
    pub(crate) processes: usize,
    pub(crate) tasks: usize,
    pub(crate) start: i64,
    pub(crate) sections: Vec<Section>,
    pub(crate) round_trips: u64,
    pub(crate) subscriber_commands: u64,
    pub(crate) errors: u64,
    pub(crate) counter: u64,
    pub(crate) delta: Delta,
    pub(crate) hold: Duration,
    pub(crate) think: Duration,
    /// Raw `EVALSHA` round trips measured just before and just after the run.
    pub(crate) around: Dist,
}

pub(crate) const HANDOFF_TASKS: usize = 8;
pub(crate) const HOLD: Duration = Duration::from_millis(2);
pub(crate) const THINK: Duration = Duration::from_millis(2);

/// 8 tasks of one manager in this process.
pub(crate) async fn in_process(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    progress(&format!(
        "handoff: {HANDOFF_TASKS} tasks in one process, one key, {} s",
        ctx.sizes.handoff.as_secs_f64()
    ));
    let locks = ctx.manager().await?;
    let mut counter = connection(&ctx.url).await?;
    let keys = Keys::new(&ctx.prefix, "handoff");
    redis::cmd("DEL")
        .arg(&keys.counter)
        .query_async::<()>(&mut counter)
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
                keys.clone(),
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
        counter: take_counter(&mut counter, &keys.counter).await?,
        delta: Delta::between(&s0, &s1),
        hold: HOLD,
        think: THINK,
    };
    Ok(handoff_report(run, floor))
}

/// 4 processes x 2 tasks, one manager each.
pub(crate) async fn four_processes(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    let spec = Spec {
        name: "handoff (4 processes)",
        processes: 4,
        tasks_per_process: 2,
        hold: HOLD,
        think: THINK,
        lock: LockKind::LockGuard,
        key: "handoff",
    };
    let run = run_processes(ctx, inspect, &spec).await?;
    Ok(handoff_report(run, floor))
}

/// 8 separate managers (8 processes x 1 task): the issue-10 hand-over, with its targets.
pub(crate) async fn eight_managers(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    let spec = Spec {
        name: "handoff (8 managers)",
        processes: 8,
        tasks_per_process: 1,
        hold: HOLD,
        think: THINK,
        lock: LockKind::LockGuard,
        key: "handoff-8",
    };
    let run = run_processes(ctx, inspect, &spec).await?;
    Ok(issue10_targets(run, floor))
}
