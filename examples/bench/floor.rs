//! The floor: the least a round trip and a pub/sub hand-over cost on the client stack the library
//! uses, measured in the same run as every ratio that refers to them.

use std::time::Instant;

use lock_guard::redis::aio::MultiplexedConnection;
use lock_guard::redis::{self, Client};
use serde_json::json;

use crate::inspect::connection;
use crate::report::Report;
use crate::stats::{Dist, dist, nanos, t, us};
use crate::{Ctx, Res, progress};
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    pub(crate) ping: Dist,
    pub(crate) evalsha: Dist,
    /// A handoff by hand on the same client stack: release script (`DEL` + `PUBLISH`) sent →
    /// message read on a `get_async_pubsub` connection → acquire script (`SET NX PX`) answered.
    pub(crate) pubsub: Dist,
}

/// Raw round trips on a multiplexed connection configured as the library's: `PING`, and
/// `EVALSHA` of a script that returns 1.
pub(crate) async fn floor(ctx: &Ctx) -> Res<(Floor, Report)> {
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

pub(crate) struct Probe {
    conn: MultiplexedConnection,
    sha: String,
    samples: Vec<i64>,
}

impl Probe {
    pub(crate) const SAMPLES: usize = 1_000;

    pub(crate) async fn new(url: &str) -> Res<Probe> {
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

    pub(crate) async fn measure(&mut self) -> Res<()> {
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

    pub(crate) async fn finish(mut self) -> Res<Dist> {
        self.measure().await?;
        Ok(dist(&self.samples))
    }
}
