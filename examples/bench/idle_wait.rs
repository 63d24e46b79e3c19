//! 1,000 waiters on 100 held keys: what waiting costs Redis while the keys are held, how fast
//! all of them get the lock once released, and what a waiter costs the client.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lock_guard::{LockError, LockKey, LockOptions};
use serde_json::json;

use crate::inspect::{Delta, Inspect, rss_kib};
use crate::report::Report;
use crate::stats::{nanos, round3, t};
use crate::{Ctx, Res, progress};

/// The waiting manager's pool is opened first by twice this many concurrent lock + release
/// calls (32 was the default pool size when the scenario was written).
const POOL: usize = 32;

pub(crate) async fn run(ctx: &Ctx, inspect: &mut Inspect) -> Res<Report> {
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
    r.target(
        "  the same, issue 10",
        t(nanos(drained) as f64),
        "<= 25 ms",
        drained <= Duration::from_millis(25),
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
