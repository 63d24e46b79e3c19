//! Redlock over 3 independent masters (three `redis-server`s started here): uncontended acquire +
//! release against the floor of one concurrent `EVALSHA` round on all three, distinct keys next to
//! the one-server default manager in the same run, and the hand-over between separate managers.

use lock_guard::{LockKey, LockManager};
use lock_guard_tests::RedisServer;

use crate::deployments::{Nodes, RawFloor, distinct, handoff, uncontended};
use crate::deployments_report::{Shape, distinct_rows, handoff_rows, uncontended_rows};
use crate::floor::Probe;
use crate::handoff::HANDOFF_TASKS;
use crate::inspect::Inspect;
use crate::report::Report;
use crate::stats::{dist, median, t};
use crate::{Ctx, Res, progress};

const NODES: usize = 3;

const SHAPE: Shape = Shape {
    per_round: NODES as f64,
    floor: "one EVALSHA round on all 3",
};

pub(crate) async fn run(ctx: &Ctx, single: &mut Inspect) -> Res<Report> {
    progress(&format!("redlock: starting {NODES} independent masters"));
    // The harness panics (with an install hint) when redis-server is missing: an error of the run.
    let servers: Vec<RedisServer> =
        tokio::task::spawn_blocking(|| (0..NODES).map(|_| RedisServer::start()).collect())
            .await
            .map_err(|_| "redlock: could not start redis-server (see above)")?;
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let manager = async || -> Res<LockManager> {
        Ok(LockManager::builder()
            .redlock(&urls)
            .key_prefix(&ctx.prefix)
            .build()
            .await?)
    };
    let locks = manager().await?;
    let key = LockKey::new("uncontended").part(1);
    let redis_key = locks.redis_key(&key);
    let mut nodes = Nodes::connect(&urls, &[]).await?;
    let mut floors = [
        RawFloor::new(&urls, None, &redis_key).await?,
        RawFloor::new(&urls[..1], None, &redis_key).await?,
    ];

    progress(&format!(
        "redlock: uncontended, {} acquire+release on one key",
        ctx.sizes.uncontended
    ));
    let u = uncontended(ctx, &locks, &key, &mut floors, &mut nodes).await?;
    let mut r = Report::new("redlock");
    r.row(
        "deployment",
        format!("{NODES} independent masters on loopback, LockManager::redlock()"),
    );
    uncontended_rows(
        &mut r,
        &u,
        SHAPE,
        &[
            "one concurrent EVALSHA round on all 3",
            "EVALSHA on one node",
        ],
    );

    progress("redlock: distinct keys, Redlock and the one server in turn");
    let one = ctx.manager().await?;
    let results = distinct(ctx, &[&locks, &one], &mut nodes, single).await?;
    distinct_rows(
        &mut r,
        &[
            "Redlock (3 masters), default manager",
            "one server, default manager",
        ],
        &results,
        ctx.sizes.distinct_tasks,
        ctx.sizes.distinct_keys,
    );

    progress(&format!(
        "redlock: hand-over, {HANDOFF_TASKS} managers, {} s",
        ctx.sizes.handoff.as_secs_f64()
    ));
    let mut managers = Vec::with_capacity(HANDOFF_TASKS);
    for _ in 0..HANDOFF_TASKS {
        managers.push(manager().await?);
    }
    let mut around = floors[0].samples(Probe::SAMPLES).await?;
    let run = handoff(ctx, "redlock hand-over", managers, &mut nodes).await?;
    around.extend(floors[0].samples(Probe::SAMPLES).await?);
    handoff_rows(&mut r, run, SHAPE, dist(&around));
    progress(&format!(
        "redlock: uncontended p50 {} = {:.3} x 2 floor rounds, {:.2} commands sent; distinct {:.0}/s vs {:.0}/s on one server",
        t(u.lat.p50),
        u.ratio,
        u.sent,
        median(&results[0].ops),
        median(&results[1].ops),
    ));
    drop(locks);
    drop(one);
    drop(servers);
    Ok(r.finish())
}
