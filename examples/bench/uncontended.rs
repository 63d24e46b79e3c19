//! One task, acquire + release on one key: round trips, Redis commands, server and client CPU and
//! system calls per call, against raw `EVALSHA` round trips in blocks alongside.

use std::time::{Duration, Instant};

use lock_guard::redis;
use lock_guard::{LockKey, LockOptions};
use serde_json::{Value, json};

use crate::floor::Floor;
use crate::inspect::{Delta, Inspect, Syscalls, client_cpu, connection};
use crate::report::Report;
use crate::stats::{dist, nanos, paired_ratio, round3, t, us};
use crate::{Ctx, Res, progress};

pub(crate) async fn run(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
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
    let (mut client_sys, mut server_sys) = (Syscalls::default(), Syscalls::default());
    let (mut raw_client_sys, mut raw_server_sys) = (Syscalls::default(), Syscalls::default());
    for _ in 0..blocks {
        let raw_s0 = inspect.snapshot().await?;
        let client0 = client_cpu()?;
        let (sys_client0, sys_server0) = (Syscalls::of(None), Syscalls::of(ctx.server_pid));
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
        let (sys_client1, sys_server1) = (Syscalls::of(None), Syscalls::of(ctx.server_pid));
        raw_client_sys.add(sys_client1.since(sys_client0));
        raw_server_sys.add(sys_server1.since(sys_server0));
        raw_blocks.push(raw);
        raw_script_usec += Delta::between(&raw_s0, &inspect.snapshot().await?).script_usec;
        raw_client_secs += client_cpu()? - client0;
        let m0 = locks.metrics();
        let (server0, client0) = (inspect.server_cpu().await?, client_cpu()?);
        let s0 = inspect.snapshot().await?;
        let (sys_client0, sys_server0) = (Syscalls::of(None), Syscalls::of(ctx.server_pid));
        let mut lat = Vec::with_capacity(per_block);
        let start = Instant::now();
        for _ in 0..per_block {
            let t0 = Instant::now();
            let guard = locks.lock(&key, options).await?;
            guard.release().await?;
            lat.push(nanos(t0.elapsed()));
        }
        elapsed += start.elapsed();
        let (sys_client1, sys_server1) = (Syscalls::of(None), Syscalls::of(ctx.server_pid));
        client_sys.add(sys_client1.since(sys_client0));
        server_sys.add(sys_server1.since(sys_server0));
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
    if ctx.server_pid.is_some() {
        r.row(
            "system calls per acquire+release",
            format!(
                "server read {:.2} write {:.2}; client write {:.2} (eventfd wake-ups included)",
                server_sys.reads as f64 / n as f64,
                server_sys.writes as f64 / n as f64,
                client_sys.writes as f64 / n as f64,
            ),
        );
        r.row(
            "context switches per acquire+release",
            format!(
                "server {:.2}, client {:.2} (raw EVALSHA: server {:.2}, client {:.2})",
                server_sys.switches as f64 / n as f64,
                client_sys.switches as f64 / n as f64,
                raw_server_sys.switches as f64 / raw.len() as f64,
                raw_client_sys.switches as f64 / raw.len() as f64,
            ),
        );
        r.set(
            "raw_evalsha_server_syscalls",
            raw_server_sys.json(raw.len() as f64),
        );
        r.set(
            "raw_evalsha_client_syscalls",
            raw_client_sys.json(raw.len() as f64),
        );
        r.set("server_syscalls_per_op", server_sys.json(n as f64));
        r.set("client_syscalls_per_op", client_sys.json(n as f64));
    }
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
