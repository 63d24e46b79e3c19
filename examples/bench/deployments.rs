//! What the cluster and Redlock scenarios share: their floors (raw `EVALSHA` rounds on the nodes a
//! lock's calls reach), the nodes' counters summed, and three measurements run the same way on any
//! deployment — uncontended acquire + release in blocks alternating with the floor, distinct keys
//! next to the one-server default manager, and a hand-over between separate managers.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use lock_guard::redis::aio::MultiplexedConnection;
use lock_guard::redis::cluster_async::ClusterConnection;
use lock_guard::redis::{self};
use lock_guard::{LockKey, LockManager, LockOptions};

use crate::distinct::distinct_library;
use crate::handoff::{
    Clock, HOLD, HandoffPlan, HandoffRun, Keys, THINK, handoff_task, take_counter, unix_nanos,
};
use crate::inspect::{Delta, Inspect, Snapshot, connection};
use crate::stats::{Dist, dist, nanos, paired_ratio};
use crate::{Ctx, Res};

/// A connection a floor round trip goes out on.
#[derive(Clone)]
pub(crate) enum RawConn {
    /// Straight to one node.
    Node(MultiplexedConnection),
    /// Through the cluster client of the `redis` crate, routed by the key (as the library's).
    Cluster(ClusterConnection),
}

/// Raw `EVALSHA <return 1> 1 <key>` on one or several connections at once: one floor "round" is
/// all of them answered.
pub(crate) struct RawFloor {
    conns: Vec<RawConn>,
    sha: String,
    key: String,
}

impl RawFloor {
    /// Loads `return 1` on every node of `urls` (the cluster client's connection, if any, reaches
    /// nodes among them) and sends it with `key` as its key.
    pub(crate) async fn new(
        urls: &[String],
        cluster: Option<ClusterConnection>,
        key: &str,
    ) -> Res<RawFloor> {
        let mut nodes = Vec::new();
        let mut sha = String::new();
        for url in urls {
            let mut conn = connection(url).await?;
            sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg("return 1")
                .query_async(&mut conn)
                .await?;
            nodes.push(RawConn::Node(conn));
        }
        let conns = match cluster {
            Some(c) => vec![RawConn::Cluster(c)],
            None => nodes,
        };
        Ok(RawFloor {
            conns,
            sha,
            key: key.to_owned(),
        })
    }

    /// One round: the `EVALSHA` sent on every connection at once; the time until the last answer.
    pub(crate) async fn round(&mut self) -> Res<i64> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(1).arg(&self.key);
        let t0 = Instant::now();
        try_join_all(self.conns.iter().map(|c| {
            let cmd = cmd.clone();
            let c = c.clone();
            async move {
                match c {
                    RawConn::Node(mut c) => cmd.query_async::<i64>(&mut c).await,
                    RawConn::Cluster(mut c) => cmd.query_async::<i64>(&mut c).await,
                }
            }
        }))
        .await?;
        Ok(nanos(t0.elapsed()))
    }

    pub(crate) async fn samples(&mut self, n: usize) -> Res<Vec<i64>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.round().await?);
        }
        Ok(v)
    }
}

/// The nodes of a deployment, inspected: `INFO commandstats` summed over the nodes that serve
/// commands, `INFO cpu` over every node (a replica's CPU counts too).
pub(crate) struct Nodes {
    serving: Vec<Inspect>,
    others: Vec<Inspect>,
}

impl Nodes {
    pub(crate) async fn connect(serving: &[String], others: &[String]) -> Res<Nodes> {
        let mut nodes = Nodes {
            serving: Vec::new(),
            others: Vec::new(),
        };
        for url in serving {
            nodes.serving.push(Inspect::connect(url).await?);
        }
        for url in others {
            nodes.others.push(Inspect::connect(url).await?);
        }
        Ok(nodes)
    }

    pub(crate) async fn snapshot(&mut self) -> Res<Vec<Snapshot>> {
        let mut v = Vec::with_capacity(self.serving.len());
        for n in &mut self.serving {
            v.push(n.snapshot().await?);
        }
        Ok(v)
    }

    /// Seconds of CPU all nodes have used.
    pub(crate) async fn cpu(&mut self) -> Res<f64> {
        let (serving, others) = self.cpu_split().await?;
        Ok(serving + others)
    }

    /// Seconds of CPU the serving nodes and the others (replicas) have used.
    pub(crate) async fn cpu_split(&mut self) -> Res<(f64, f64)> {
        let (mut serving, mut others) = (0.0, 0.0);
        for n in &mut self.serving {
            serving += n.server_cpu().await?;
        }
        for n in &mut self.others {
            others += n.server_cpu().await?;
        }
        Ok((serving, others))
    }
}

/// The commands the serving nodes processed between two snapshots, summed.
pub(crate) fn summed(before: &[Snapshot], after: &[Snapshot]) -> Delta {
    let mut d = Delta::default();
    for (b, a) in before.iter().zip(after) {
        d.add(&Delta::between(b, a));
    }
    d
}

/// Uncontended acquire + release on one key, in blocks alternating with floor rounds.
pub(crate) struct Uncontended {
    pub(crate) lat: Dist,
    pub(crate) ops: f64,
    /// Commands the manager sent per acquire + release (`metrics().commands`).
    pub(crate) sent: f64,
    pub(crate) delta: Delta,
    pub(crate) n: usize,
    /// Each floor's distribution, in the order given.
    pub(crate) floors: Vec<Dist>,
    /// p50 / (2 × the first floor's p50), the median over paired blocks.
    pub(crate) ratio: f64,
    /// The same against every floor, in the order given.
    pub(crate) ratios: Vec<f64>,
    /// Seconds of server CPU (all nodes) and of this process, per acquire + release.
    pub(crate) server_us: f64,
    pub(crate) client_us: f64,
    /// Server time in scripts per acquire + release, and per first-floor round.
    pub(crate) script_us: f64,
    pub(crate) floor_script_us: f64,
}

pub(crate) async fn uncontended(
    ctx: &Ctx,
    locks: &LockManager,
    key: &LockKey,
    floors: &mut [RawFloor],
    nodes: &mut Nodes,
) -> Res<Uncontended> {
    let n = ctx.sizes.uncontended;
    let options = LockOptions::new();
    for _ in 0..ctx.sizes.warmup {
        locks.lock(key, options).await?.release().await?;
    }
    for f in floors.iter_mut() {
        f.samples(ctx.sizes.warmup / 5).await?;
    }
    let per_block = 100;
    let (mut lat_blocks, mut floor_blocks) = (Vec::new(), vec![Vec::new(); floors.len()]);
    let (mut delta, mut floor_delta) = (Delta::default(), Delta::default());
    let (mut elapsed, mut sent, mut server, mut client) = (Duration::ZERO, 0, 0.0, 0.0);
    for _ in 0..n.div_ceil(per_block) {
        let s0 = nodes.snapshot().await?;
        floor_blocks[0].push(floors[0].samples(per_block).await?);
        floor_delta.add(&summed(&s0, &nodes.snapshot().await?));
        for (i, f) in floors.iter_mut().enumerate().skip(1) {
            floor_blocks[i].push(f.samples(per_block).await?);
        }
        let m0 = locks.metrics();
        let (cpu0, client0) = (nodes.cpu().await?, crate::inspect::client_cpu()?);
        let s0 = nodes.snapshot().await?;
        let mut lat = Vec::with_capacity(per_block);
        let start = Instant::now();
        for _ in 0..per_block {
            let t0 = Instant::now();
            locks.lock(key, options).await?.release().await?;
            lat.push(nanos(t0.elapsed()));
        }
        elapsed += start.elapsed();
        let s1 = nodes.snapshot().await?;
        let (cpu1, client1) = (nodes.cpu().await?, crate::inspect::client_cpu()?);
        sent += locks.metrics().commands - m0.commands;
        server += cpu1 - cpu0;
        client += client1 - client0;
        delta.add(&summed(&s0, &s1));
        lat_blocks.push(lat);
    }
    let ratios: Vec<f64> = floor_blocks
        .iter()
        .map(|f| paired_ratio(&lat_blocks, f) / 2.0)
        .collect();
    let ratio = ratios[0];
    let lat = lat_blocks.concat();
    let n = lat.len();
    let floor_n = floor_blocks[0].iter().map(Vec::len).sum::<usize>();
    Ok(Uncontended {
        lat: dist(&lat),
        ops: n as f64 / elapsed.as_secs_f64(),
        sent: sent as f64 / n as f64,
        n,
        floors: floor_blocks.iter().map(|b| dist(&b.concat())).collect(),
        ratio,
        ratios,
        server_us: server * 1e6 / n as f64,
        client_us: client * 1e6 / n as f64,
        script_us: delta.script_usec as f64 / n as f64,
        floor_script_us: floor_delta.script_usec as f64 / floor_n as f64,
        delta,
    })
}

/// One variant of [`distinct`]: per round, ops/s and server CPU per acquire + release (µs): the
/// deployment's serving nodes, its other nodes (replicas), the one server.
#[derive(Debug, Clone, Default)]
pub(crate) struct DistinctRuns {
    pub(crate) ops: Vec<f64>,
    pub(crate) cpu: Vec<[f64; 3]>,
}

/// Distinct keys: `ctx.sizes.distinct_tasks` tasks, each variant in turn on fresh keys, for
/// `ctx.sizes.distinct_rounds` rounds.
pub(crate) async fn distinct(
    ctx: &Ctx,
    variants: &[&LockManager],
    nodes: &mut Nodes,
    single: &mut Inspect,
) -> Res<Vec<DistinctRuns>> {
    let (keys, tasks) = (ctx.sizes.distinct_keys, ctx.sizes.distinct_tasks);
    for (i, locks) in variants.iter().enumerate() {
        distinct_library(locks, u64::MAX / 2 + (i * 1000) as u64, 2 * tasks, tasks).await?;
    }
    let mut out = vec![DistinctRuns::default(); variants.len()];
    let mut base = 0u64;
    for _ in 0..ctx.sizes.distinct_rounds {
        for (i, locks) in variants.iter().enumerate() {
            let ((a0, b0), c0) = (nodes.cpu_split().await?, single.server_cpu().await?);
            let secs = distinct_library(locks, base, keys, tasks).await?;
            let ((a1, b1), c1) = (nodes.cpu_split().await?, single.server_cpu().await?);
            let per = |x: f64| x * 1e6 / keys as f64;
            out[i].ops.push(keys as f64 / secs);
            out[i].cpu.push([per(a1 - a0), per(b1 - b0), per(c1 - c0)]);
            base += keys as u64;
        }
    }
    Ok(out)
}

/// A hand-over between separate managers in this process (one task each, hold 2 ms + think
/// 2 ms): their own connections and subscribers, so every hand-over goes through Redis. The
/// counter lives on the benchmark's one server. `around` of the run is left to the caller.
pub(crate) async fn handoff(
    ctx: &Ctx,
    name: &'static str,
    managers: Vec<LockManager>,
    nodes: &mut Nodes,
) -> Res<HandoffRun> {
    let mut counter = connection(&ctx.url).await?;
    let keys = Keys::new(&ctx.prefix, &name.replace([' ', '(', ')'], "-"));
    take_counter(&mut counter, &keys.counter).await?;
    let clock = Clock::new(unix_nanos());
    let start = Instant::now() + Duration::from_millis(50);
    let plan = HandoffPlan {
        start,
        end: start + ctx.sizes.handoff,
        hold: HOLD,
        think: THINK,
    };
    let m0: Vec<_> = managers.iter().map(LockManager::metrics).collect();
    let s0 = nodes.snapshot().await?;
    let handles: Vec<_> = managers
        .iter()
        .enumerate()
        .map(|(task, locks)| {
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
    let s1 = nodes.snapshot().await?;
    let (mut round_trips, mut subscriber_commands) = (0, 0);
    for (locks, m0) in managers.iter().zip(m0) {
        let m1 = locks.metrics();
        round_trips += m1.commands - m0.commands;
        subscriber_commands += m1.subscriber_commands - m0.subscriber_commands;
    }
    Ok(HandoffRun {
        name,
        processes: 1,
        tasks: managers.len(),
        start: clock.at(start),
        sections,
        round_trips,
        subscriber_commands,
        errors,
        counter: take_counter(&mut counter, &keys.counter).await?,
        delta: summed(&s0, &s1),
        hold: HOLD,
        think: THINK,
        // The callers measure their own floor around the run.
        around: Dist::default(),
    })
}
