//! The hand-rolled lock a user would write instead of lock-guard: `SET key token NX PX 3000` to
//! take it, `EVALSHA` of a compare-and-delete script to release it; on a fixed set of multiplexed
//! connections (one, or a few) or on a deadpool-redis pool. Also its polling form for the
//! saturated hand-over: a failed `SET NX` sleeps and tries again.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lock_guard::redis::aio::MultiplexedConnection;
use lock_guard::redis::{self};

use crate::Res;
use crate::handoff::{Clock, HandoffPlan, Section, counter_body};

/// Compare-and-delete, as a hand-rolled lock releases.
pub(crate) const COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Loads [`COMPARE_AND_DELETE`]; its SHA.
pub(crate) async fn load_compare_and_delete(conn: &mut MultiplexedConnection) -> Res<String> {
    Ok(redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(COMPARE_AND_DELETE)
        .query_async(conn)
        .await?)
}

/// Where a hand-rolled lock gets its connections.
#[derive(Clone)]
pub(crate) enum Baseline {
    /// A fixed set of multiplexed connections: task `i` uses connection `i mod pool`.
    Connections(Vec<MultiplexedConnection>),
    /// A `deadpool-redis` pool, one checkout per command (it recycles with `UNWATCH` + `PING`).
    Deadpool(lock_guard::deadpool_redis::Pool),
}

impl Baseline {
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        task: usize,
        cmd: &redis::Cmd,
    ) -> Res<T> {
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
pub(crate) async fn distinct_baseline(
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

/// Requests the polling lock's tasks sent (every `SET NX` try and every release).
#[derive(Debug, Clone, Default)]
pub(crate) struct PollStats(Arc<AtomicU64>);

impl PollStats {
    pub(crate) fn commands(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn sent(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// One task of the polling lock under the hand-over load: `SET lock token NX PX 3000` until it
/// succeeds (sleeping `poll` after each failure); the counter body; compare-and-delete; think.
pub(crate) async fn poller_task(
    mut conn: MultiplexedConnection,
    mut counter: MultiplexedConnection,
    (lock_key, counter_key): (String, String),
    (task, clock, plan, poll): (usize, Clock, HandoffPlan, Duration),
    stats: PollStats,
) -> (Vec<Section>, u64) {
    let mut sections = Vec::new();
    let mut errors = 0;
    let sha = match load_compare_and_delete(&mut conn).await {
        Ok(sha) => sha,
        Err(e) => {
            eprintln!("bench: poller task {task}: {e}");
            return (sections, 1);
        }
    };
    tokio::time::sleep_until(plan.start.into()).await;
    let mut seq = 0u64;
    while Instant::now() < plan.end {
        seq += 1;
        let token = format!("{:08x}{task:04x}{seq:016x}", std::process::id());
        let asked = Instant::now();
        loop {
            stats.sent();
            let taken: Result<Option<String>, _> = redis::cmd("SET")
                .arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(3000)
                .query_async(&mut conn)
                .await;
            match taken {
                Ok(Some(_)) => break,
                Ok(None) => tokio::time::sleep(poll).await,
                Err(e) => {
                    eprintln!("bench: poller task {task}: {e}");
                    errors += 1;
                    tokio::time::sleep(poll).await;
                }
            }
        }
        let acquired = Instant::now();
        if let Err(e) = counter_body(&mut counter, &counter_key, plan.hold).await {
            eprintln!("bench: poller task {task}: counter: {e}");
            errors += 1;
        }
        let released = Instant::now();
        stats.sent();
        let deleted: Result<i64, _> = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(&lock_key)
            .arg(&token)
            .query_async(&mut conn)
            .await;
        if deleted.as_ref().ok() != Some(&1) {
            eprintln!("bench: poller task {task}: release: {deleted:?}");
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
