//! 64 tasks over 10,000 distinct keys, each acquired and released once: lock-guard as users build
//! it (the default manager) and over a sweep of `pool_size`, against the hand-rolled lock on one
//! shared multiplexed connection and over a sweep of connections, and on a deadpool-redis pool.
//! Per variant: acquisitions per second, server and client CPU, Redis commands and system calls
//! per acquire + release.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use serde_json::{Value, json};

use crate::hand_rolled::{Baseline, distinct_baseline, load_compare_and_delete};
use crate::inspect::{Delta, Inspect, Syscalls, client_cpu, connection};
use crate::report::Report;
use crate::stats::{list, median, round3};
use crate::{Ctx, Res, progress};

/// The pool (connection) counts swept, for lock-guard and for the hand-rolled lock.
const SWEEP: [usize; 5] = [1, 2, 4, 8, 32];
/// The pool of the first comparison (issue #5): lock-guard and the hand-rolled lock on 32.
const POOL: usize = 32;

/// What takes the locks.
enum Runner {
    Library(LockManager),
    HandRolled(Baseline),
}

/// One way of taking distinct locks, and what it cost over the rounds.
struct Variant {
    label: String,
    runner: Runner,
    ops: Vec<f64>,
    /// Server CPU (`INFO cpu`) and client CPU (every thread of this process) per acquire+release,
    /// in µs.
    server_us: Vec<f64>,
    client_us: Vec<f64>,
    delta: Delta,
    server_sys: Syscalls,
    client_sys: Syscalls,
    done: u64,
}

impl Variant {
    fn new(label: impl Into<String>, runner: Runner) -> Variant {
        Variant {
            label: label.into(),
            runner,
            ops: Vec::new(),
            server_us: Vec::new(),
            client_us: Vec::new(),
            delta: Delta::default(),
            server_sys: Syscalls::default(),
            client_sys: Syscalls::default(),
            done: 0,
        }
    }

    async fn run(&self, ctx: &Ctx, sha: &str, base: u64, keys: usize) -> Res<f64> {
        let tasks = ctx.sizes.distinct_tasks;
        match &self.runner {
            Runner::Library(locks) => distinct_library(locks, base, keys, tasks).await,
            Runner::HandRolled(b) => {
                distinct_baseline(b, sha, &ctx.prefix, base, keys, tasks).await
            }
        }
    }

    async fn measure(
        &mut self,
        ctx: &Ctx,
        inspect: &mut Inspect,
        sha: &str,
        base: u64,
        keys: usize,
    ) -> Res<()> {
        let (server0, client0) = (inspect.server_cpu().await?, client_cpu()?);
        let s0 = inspect.snapshot().await?;
        let (sys_client0, sys_server0) = (Syscalls::of(None), Syscalls::of(ctx.server_pid));
        let secs = self.run(ctx, sha, base, keys).await?;
        let (sys_client1, sys_server1) = (Syscalls::of(None), Syscalls::of(ctx.server_pid));
        let s1 = inspect.snapshot().await?;
        let (server1, client1) = (inspect.server_cpu().await?, client_cpu()?);
        self.ops.push(keys as f64 / secs);
        self.server_us.push((server1 - server0) * 1e6 / keys as f64);
        self.client_us.push((client1 - client0) * 1e6 / keys as f64);
        self.delta.add(&Delta::between(&s0, &s1));
        self.server_sys.add(sys_server1.since(sys_server0));
        self.client_sys.add(sys_client1.since(sys_client0));
        self.done += keys as u64;
        Ok(())
    }

    fn ops(&self) -> f64 {
        median(&self.ops)
    }

    fn row(&self) -> String {
        format!(
            "{:.0}/s (rounds: {}); CPU/op: server {:.1} µs, client {:.1} µs",
            self.ops(),
            list(&self.ops),
            median(&self.server_us),
            median(&self.client_us)
        )
    }

    /// Where the time goes: Redis commands and system calls per acquire + release.
    fn costs(&self, with_syscalls: bool) -> String {
        let per = self.done as f64;
        let mut s = format!(
            "{:.2} commands ({})",
            self.delta.library_total() as f64 / per,
            self.delta.breakdown(per)
        );
        if with_syscalls {
            s += &format!(
                "; syscalls: server read {:.2} write {:.2}, client write {:.2}; context switches: \
                 server {:.2}, client {:.2}",
                self.server_sys.reads as f64 / per,
                self.server_sys.writes as f64 / per,
                self.client_sys.writes as f64 / per,
                self.server_sys.switches as f64 / per,
                self.client_sys.switches as f64 / per
            );
        }
        s
    }

    fn json(&self) -> Value {
        let per = self.done as f64;
        json!({
            "ops_per_s": self.ops().round(),
            "rounds_ops_per_s": self.ops.iter().map(|x| x.round()).collect::<Vec<_>>(),
            "server_cpu_us_per_op": round3(median(&self.server_us)),
            "client_cpu_us_per_op": round3(median(&self.client_us)),
            "redis_commands_per_op": round3(self.delta.library_total() as f64 / per),
            "redis_commands_by_name": self.delta.json(per),
            "server_syscalls_per_op": self.server_sys.json(per),
            "client_syscalls_per_op": self.client_sys.json(per),
        })
    }
}

/// The best (highest median ops/s) of some variants.
fn best(variants: &[Variant]) -> &Variant {
    variants
        .iter()
        .max_by(|a, b| a.ops().total_cmp(&b.ops()))
        .expect("a sweep has variants")
}

pub(crate) async fn run(ctx: &Ctx, inspect: &mut Inspect) -> Res<Report> {
    let (keys, tasks) = (ctx.sizes.distinct_keys, ctx.sizes.distinct_tasks);
    progress(&format!(
        "distinct: {tasks} tasks over {keys} keys; lock-guard (default, pool_size {SWEEP:?}) vs \
         SET NX PX + compare-and-delete ({SWEEP:?} connections, deadpool-redis), {} round(s)",
        ctx.sizes.distinct_rounds
    ));
    let mut default = Variant::new(
        "lock-guard, default manager",
        Runner::Library(ctx.manager().await?),
    );
    let mut pools = Vec::new();
    for size in SWEEP {
        let locks = ctx.manager_with_pool(size).await?;
        pools.push(Variant::new(
            format!("  pool_size({size})"),
            Runner::Library(locks),
        ));
    }
    let mut conns = Vec::new();
    for _ in 0..POOL {
        conns.push(connection(&ctx.url).await?);
    }
    let sha = load_compare_and_delete(&mut conns[0]).await?;
    let mut hand = Vec::new();
    for n in SWEEP {
        let label = if n == 1 {
            "SET NX PX + EVALSHA del, 1 shared conn".to_owned()
        } else {
            format!("  {n} conns")
        };
        hand.push(Variant::new(
            label,
            Runner::HandRolled(Baseline::Connections(conns[..n].to_vec())),
        ));
    }
    let mut deadpool = Variant::new(
        "same on deadpool-redis (PING/checkout)",
        Runner::HandRolled(Baseline::Deadpool(
            lock_guard::deadpool_redis::Config::from_url(ctx.url.as_str())
                .builder()?
                .max_size(POOL)
                .runtime(lock_guard::deadpool_redis::Runtime::Tokio1)
                .build()?,
        )),
    );
    // Warm-up: the pools fill and the library's scripts load.
    let warm = (u64::MAX / 2, 2 * POOL);
    for v in std::iter::once(&default)
        .chain(&pools)
        .chain(&hand)
        .chain([&deadpool])
    {
        v.run(ctx, &sha, warm.0, warm.1).await?;
    }

    // Interleaved rounds on fresh keys, so drift on a shared machine hits all alike.
    let count = 2 + 2 * SWEEP.len();
    for round in 0..ctx.sizes.distinct_rounds {
        let mut base = (count * round * keys) as u64;
        let all = std::iter::once(&mut default)
            .chain(&mut pools)
            .chain(&mut hand)
            .chain([&mut deadpool]);
        for v in all {
            v.measure(ctx, inspect, &sha, base, keys).await?;
            base += keys as u64;
        }
    }
    Ok(report(ctx, &default, &pools, &hand, &deadpool))
}

fn report(
    ctx: &Ctx,
    default: &Variant,
    pools: &[Variant],
    hand: &[Variant],
    deadpool: &Variant,
) -> Report {
    let (keys, tasks) = (ctx.sizes.distinct_keys, ctx.sizes.distinct_tasks);
    let pool32 = &pools[SWEEP.iter().position(|&n| n == POOL).expect("32 is swept")];
    let hand32 = &hand[SWEEP.iter().position(|&n| n == POOL).expect("32 is swept")];
    let (one, hand_best, pool_best) = (&hand[0], best(hand), best(pools));
    let ratio = pool32.ops() / hand32.ops();
    let ratio_one = default.ops() / one.ops();
    let ratio_hand_best = default.ops() / hand_best.ops();
    let ratio_pool_best = default.ops() / pool_best.ops();
    let syscalls = ctx.server_pid.is_some();

    let mut r = Report::new("distinct");
    r.row("tasks / keys", format!("{tasks} / {keys}"));
    r.row(&default.label, default.row());
    r.row("  where the time goes, per op", default.costs(syscalls));
    for v in pools {
        r.row(&v.label, v.row());
    }
    r.row(
        "  best pool_size",
        format!("{} ({:.0}/s)", pool_best.label.trim(), pool_best.ops()),
    );
    r.row(&one.label, one.row());
    r.row("  where the time goes, per op", one.costs(syscalls));
    for v in &hand[1..] {
        r.row(&v.label, v.row());
    }
    r.row(
        "  best connection count",
        format!("{} ({:.0}/s)", hand_best.label.trim(), hand_best.ops()),
    );
    r.target(
        "default manager / hand-rolled on 1 conn",
        format!("{ratio_one:.3}"),
        ">= 0.8",
        ratio_one >= 0.8,
    );
    r.row(
        "default manager / hand-rolled, best conns",
        format!("{ratio_hand_best:.3}"),
    );
    r.target(
        "default manager / best pool_size",
        format!("{ratio_pool_best:.3} (best: {})", pool_best.label.trim()),
        ">= 0.9",
        ratio_pool_best >= 0.9,
    );
    r.target(
        "lock-guard / baseline, both on 32 conns",
        format!("{ratio:.3}"),
        ">= 0.8",
        ratio >= 0.8,
    );
    r.row(&deadpool.label, deadpool.row());
    r.row(
        "  lock-guard (32) / deadpool-redis baseline",
        format!("{:.3}", pool32.ops() / deadpool.ops()),
    );
    r.set("tasks", json!(tasks));
    r.set("keys", json!(keys));
    r.set("pool", json!(POOL));
    r.set("lock_guard_default", default.json());
    r.set(
        "lock_guard_pool_sweep",
        Value::Object(
            SWEEP
                .iter()
                .zip(pools)
                .map(|(n, v)| (n.to_string(), v.json()))
                .collect(),
        ),
    );
    r.set(
        "hand_rolled_conn_sweep",
        Value::Object(
            SWEEP
                .iter()
                .zip(hand)
                .map(|(n, v)| (n.to_string(), v.json()))
                .collect(),
        ),
    );
    // The issue-5 keys: lock-guard and the baseline, both on 32 connections.
    r.set("lock_guard", pool32.json());
    r.set("baseline", hand32.json());
    r.set("deadpool_baseline", deadpool.json());
    r.set("ratio", json!(round3(ratio)));
    r.set("ratio_default_to_one_conn", json!(round3(ratio_one)));
    r.set(
        "ratio_default_to_best_conns",
        json!(round3(ratio_hand_best)),
    );
    r.set("ratio_default_to_best_pool", json!(round3(ratio_pool_best)));
    r.set(
        "best_pool_size",
        json!(
            SWEEP[pools
                .iter()
                .position(|v| std::ptr::eq(v, pool_best))
                .unwrap_or(0)]
        ),
    );
    r.set(
        "best_conns",
        json!(
            SWEEP[hand
                .iter()
                .position(|v| std::ptr::eq(v, hand_best))
                .unwrap_or(0)]
        ),
    );
    r.set(
        "ratio_to_deadpool",
        json!(round3(pool32.ops() / deadpool.ops())),
    );
    progress(&format!(
        "distinct: default {:.0}/s, hand-rolled on 1 conn {:.0}/s (ratio {ratio_one:.3}), best pool_size {} ({ratio_pool_best:.3})",
        default.ops(),
        one.ops(),
        pool_best.label.trim(),
    ));
    r.finish()
}

/// `tasks` tasks share `keys` keys numbered from `base`, each acquired and released once;
/// returns the seconds it took.
pub(crate) async fn distinct_library(
    locks: &LockManager,
    base: u64,
    keys: usize,
    tasks: usize,
) -> Res<f64> {
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
