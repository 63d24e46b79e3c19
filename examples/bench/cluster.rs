//! A Redis Cluster of 3 masters (+ 3 replicas), started with the tests' harness
//! (`lock_guard_tests::RedisCluster`): uncontended acquire + release against raw `EVALSHA` on the
//! key's master (and through the cluster client), distinct keys on the cluster next to the
//! one-server default manager in the same run, and the hand-over between separate managers.

use std::time::Instant;

use lock_guard::redis::cluster::ClusterClient;
use lock_guard::{LockKey, LockManager};
use lock_guard_tests::{RedisCluster, RedisServer};
use serde_json::json;

use crate::deployments::{Nodes, RawFloor, distinct, handoff, uncontended};
use crate::deployments_report::{Shape, distinct_rows, handoff_rows, uncontended_rows};
use crate::floor::Probe;
use crate::handoff::HANDOFF_TASKS;
use crate::inspect::Inspect;
use crate::report::Report;
use crate::stats::{dist, t};
use crate::{Ctx, Res, progress};

const SHAPE: Shape = Shape {
    per_round: 1.0,
    floor: "EVALSHA on the key's master",
};

pub(crate) async fn run(ctx: &Ctx, single: &mut Inspect) -> Res<Report> {
    progress("cluster: starting 3 masters + 3 replicas with the tests' harness");
    let started = Instant::now();
    // The harness panics (with an install hint) when redis-server is missing or the cluster does
    // not form: an error of the run, not a crash.
    let cluster = tokio::spawn(RedisCluster::start())
        .await
        .map_err(|_| "cluster: could not start the cluster (see above)")?;
    let formed = started.elapsed();
    let urls = cluster.urls();
    let replicas: Vec<String> = cluster.nodes()[3..].iter().map(RedisServer::url).collect();
    let manager = async || -> Res<LockManager> {
        Ok(LockManager::builder()
            .cluster(&urls)
            .key_prefix(&ctx.prefix)
            .build()
            .await?)
    };
    let locks = manager().await?;
    let key = LockKey::new("uncontended").part(1);
    let redis_key = locks.redis_key(&key);
    let master = cluster
        .master_of(cluster.slot(&redis_key).await)
        .await
        .url();
    let mut nodes = Nodes::connect(&urls, &replicas).await?;
    let through_client = ClusterClient::new(urls.clone())?
        .get_async_connection()
        .await?;
    let mut floors = [
        RawFloor::new(std::slice::from_ref(&master), None, &redis_key).await?,
        RawFloor::new(&urls, Some(through_client), &redis_key).await?,
    ];

    progress(&format!(
        "cluster: formed in {:.1} s; uncontended, {} acquire+release on one key",
        formed.as_secs_f64(),
        ctx.sizes.uncontended
    ));
    let u = uncontended(ctx, &locks, &key, &mut floors, &mut nodes).await?;
    let mut r = Report::new("cluster");
    r.row(
        "deployment",
        format!(
            "3 masters + 3 replicas on loopback (formed in {:.1} s), LockManager::cluster()",
            formed.as_secs_f64()
        ),
    );
    uncontended_rows(
        &mut r,
        &u,
        SHAPE,
        &[
            "EVALSHA on the key's master",
            "EVALSHA through the cluster client",
        ],
    );

    progress("cluster: distinct keys, the cluster and the one server in turn");
    let one = ctx.manager().await?;
    let results = distinct(ctx, &[&locks, &one], &mut nodes, single).await?;
    distinct_rows(
        &mut r,
        &[
            "cluster (3 masters), default manager",
            "one server, default manager",
        ],
        &results,
        ctx.sizes.distinct_tasks,
        ctx.sizes.distinct_keys,
    );

    progress(&format!(
        "cluster: hand-over, {HANDOFF_TASKS} managers, {} s",
        ctx.sizes.handoff.as_secs_f64()
    ));
    let mut managers = Vec::with_capacity(HANDOFF_TASKS);
    for _ in 0..HANDOFF_TASKS {
        managers.push(manager().await?);
    }
    let mut around = floors[0].samples(Probe::SAMPLES).await?;
    let run = handoff(ctx, "cluster hand-over", managers, &mut nodes).await?;
    around.extend(floors[0].samples(Probe::SAMPLES).await?);
    let around = dist(&around);
    handoff_rows(&mut r, run, SHAPE, around);
    r.set(
        "formed_s",
        json!((formed.as_secs_f64() * 10.0).round() / 10.0),
    );
    progress(&format!(
        "cluster: uncontended p50 {} = {:.3} x 2 floor rounds, {:.2} round trips; distinct {:.0}/s vs {:.0}/s on one server",
        t(u.lat.p50),
        u.ratio,
        u.sent,
        crate::stats::median(&results[0].ops),
        crate::stats::median(&results[1].ops),
    ));
    drop(locks);
    drop(one);
    Ok(r.finish())
}
