//! The rows of the cluster and Redlock scenarios: uncontended against the deployment's floor,
//! distinct keys next to one server, and the hand-over between separate managers.

use serde_json::json;

use crate::deployments::{DistinctRuns, Uncontended};
use crate::handoff::HandoffRun;
use crate::handoff_report::Figures;
use crate::report::Report;
use crate::stats::{Dist, list, median, round3, t, us};

/// How a deployment's calls go out: `per_round` commands make one round (1 on a cluster, one per
/// node on Redlock, sent at once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) per_round: f64,
    /// The floor's name in the rows, e.g. "EVALSHA on the key's master".
    pub(crate) floor: &'static str,
}

pub(crate) fn uncontended_rows(r: &mut Report, u: &Uncontended, shape: Shape, floors: &[&str]) {
    let rounds = u.sent / shape.per_round;
    r.row("acquire+release per second", format!("{:.0}", u.ops));
    r.row(
        "acquire+release p50 / p99",
        format!("{} / {}", t(u.lat.p50), t(u.lat.p99)),
    );
    if shape.per_round > 1.0 {
        // Redlock: a round is one command to every node at once; a token written back to the
        // nodes that issued a smaller one is a round of its own.
        r.row(
            "rounds per acquire+release",
            format!(
                "{rounds:.3} ({:.2} commands sent, {} nodes at once)",
                u.sent, shape.per_round
            ),
        );
    } else {
        r.target(
            "round trips per acquire+release",
            format!("{rounds:.3}"),
            "exactly 2",
            (rounds - 2.0).abs() < 1e-9,
        );
    }
    r.row(
        "Redis commands per acquire+release",
        format!(
            "{:.2} (all nodes)",
            u.delta.library_total() as f64 / u.n as f64
        ),
    );
    r.row("  by command", u.delta.breakdown(u.n as f64));
    r.row(
        "server time in scripts per acquire+release",
        format!(
            "{:.1} µs (all nodes; one floor round: {:.1} µs)",
            u.script_us, u.floor_script_us
        ),
    );
    r.row(
        "CPU per acquire+release",
        format!(
            "servers {:.1} µs (every node), client {:.1} µs",
            u.server_us, u.client_us
        ),
    );
    for ((name, d), ratio) in floors.iter().zip(&u.floors).zip(&u.ratios) {
        r.row(
            &format!("{name} p50 / p99"),
            format!(
                "{} / {} (acquire+release p50 / 2 of them: {ratio:.3})",
                t(d.p50),
                t(d.p99)
            ),
        );
    }
    r.target(
        &format!("p50 / (2 x {}), paired blocks", shape.floor),
        format!(
            "{:.3} (pooled: {:.3})",
            u.ratio,
            u.lat.p50 / (2.0 * u.floors[0].p50)
        ),
        "<= 1.15",
        u.ratio <= 1.15,
    );
    r.set("iterations", json!(u.n));
    r.set("ops_per_s", json!(u.ops.round()));
    r.set("p50_us", json!(us(u.lat.p50)));
    r.set("p99_us", json!(us(u.lat.p99)));
    r.set("commands_sent_per_acquisition", json!(round3(u.sent)));
    r.set("round_trips_per_acquisition", json!(round3(rounds)));
    r.set(
        "redis_commands_per_acquisition",
        json!(round3(u.delta.library_total() as f64 / u.n as f64)),
    );
    r.set("redis_commands_by_name", u.delta.json(u.n as f64));
    r.set("server_script_us_per_op", json!(round3(u.script_us)));
    r.set("floor_script_us", json!(round3(u.floor_script_us)));
    r.set("server_cpu_us_per_op", json!(round3(u.server_us)));
    r.set("client_cpu_us_per_op", json!(round3(u.client_us)));
    r.set(
        "floors_p50_us",
        json!(u.floors.iter().map(|d| us(d.p50)).collect::<Vec<_>>()),
    );
    r.set("floor_p50_us", json!(us(u.floors[0].p50)));
    r.set("ratio_to_floor", json!(round3(u.ratio)));
    r.set(
        "ratios_to_floors",
        json!(u.ratios.iter().map(|x| round3(*x)).collect::<Vec<_>>()),
    );
}

/// The first of `results` is the deployment, the second the one server.
pub(crate) fn distinct_rows(
    r: &mut Report,
    labels: &[&str],
    results: &[DistinctRuns],
    tasks: usize,
    keys: usize,
) {
    r.row("distinct: tasks / keys", format!("{tasks} / {keys}"));
    let cpu = |d: &DistinctRuns, i: usize| median(&d.cpu.iter().map(|c| c[i]).collect::<Vec<_>>());
    let (dep, one) = (&results[0], &results[1]);
    let replicas = if dep.cpu.iter().any(|c| c[1] > 0.0) {
        format!(", replicas {:.1} µs", cpu(dep, 1))
    } else {
        String::new()
    };
    r.row(
        labels[0],
        format!(
            "{:.0}/s (rounds: {}); server CPU/op: nodes {:.1} µs{replicas}",
            median(&dep.ops),
            list(&dep.ops),
            cpu(dep, 0),
        ),
    );
    r.row(
        labels[1],
        format!(
            "{:.0}/s (rounds: {}); server CPU/op {:.1} µs",
            median(&one.ops),
            list(&one.ops),
            cpu(one, 2)
        ),
    );
    let ratio = median(&dep.ops) / median(&one.ops);
    r.row(
        &format!(
            "  {} / one server",
            labels[0].split(',').next().unwrap_or("")
        ),
        format!("{ratio:.3}"),
    );
    let rounds = |d: &DistinctRuns| d.ops.iter().map(|x| x.round()).collect::<Vec<_>>();
    r.set(
        "distinct",
        json!({
            "tasks": tasks,
            "keys": keys,
            "ops_per_s": median(&dep.ops).round(),
            "rounds_ops_per_s": rounds(dep),
            "nodes_cpu_us_per_op": round3(cpu(dep, 0)),
            "replicas_cpu_us_per_op": round3(cpu(dep, 1)),
            "one_server_ops_per_s": median(&one.ops).round(),
            "one_server_rounds_ops_per_s": rounds(one),
            "one_server_cpu_us_per_op": round3(cpu(one, 2)),
            "ratio_to_one_server": round3(ratio),
        }),
    );
}

/// The hand-over's rows; `floor` is the deployment's floor round, measured around the run.
pub(crate) fn handoff_rows(r: &mut Report, mut run: HandoffRun, shape: Shape, floor: Dist) {
    let Some(f) = Figures::of(&mut run) else {
        r.check(
            "hand-over: critical sections",
            run.sections.len().to_string(),
            ">= 2",
            false,
        );
        return;
    };
    let ideal = 1e9 / (f.hold.mean + floor.p50);
    let share = f.throughput / ideal;
    let gap_rounds = f.gap.p50 / floor.p50;
    let (min, max) = (
        f.counts.iter().copied().min().unwrap_or(0),
        f.counts.iter().copied().max().unwrap_or(0),
    );
    r.row(
        "hand-over: managers",
        format!(
            "{} separate managers in this process, 1 task each, hold {} ms + think {} ms",
            run.tasks,
            run.hold.as_millis(),
            run.think.as_millis()
        ),
    );
    r.row(
        "  critical sections / s",
        format!(
            "{:.1} ({} in {:.2} s) = {:.1} % of 1 / (hold mean {} + 1 floor round)",
            f.throughput,
            f.n,
            f.elapsed,
            100.0 * share,
            t(f.hold.mean)
        ),
    );
    r.row(
        "  gap p50 / p99",
        format!(
            "{} / {} = {gap_rounds:.2} floor rounds ({}: {})",
            t(f.gap.p50),
            t(f.gap.p99),
            shape.floor,
            t(floor.p50)
        ),
    );
    r.row(
        "  wait p50 / p99",
        format!("{} / {}", t(f.wait.p50), t(f.wait.p99)),
    );
    r.row(
        "  Jain's fairness index",
        format!("{:.4} (per manager {min}..{max})", f.fairness),
    );
    r.row(
        "  commands sent per acquisition",
        format!(
            "{:.2} (= {:.2} rounds); SUBSCRIBE/UNSUBSCRIBE {}",
            f.round_trips,
            f.round_trips / shape.per_round,
            run.subscriber_commands
        ),
    );
    r.row(
        "  Redis commands per acquisition",
        format!("{:.2} (all nodes)", f.commands),
    );
    r.row("    by command", run.delta.breakdown(f.n as f64));
    r.check(
        "  unsynchronised counter",
        format!(
            "{} after {} sections, {} overlaps, {} failures",
            run.counter, f.n, f.overlaps, run.errors
        ),
        "exact, no failure",
        run.counter == f.n as u64 && f.overlaps == 0 && run.errors == 0,
    );
    r.set(
        "handoff",
        json!({
            "managers": run.tasks,
            "sections": f.n,
            "sections_per_s": round3(f.throughput),
            "hold_mean_us": us(f.hold.mean),
            "share_of_ideal_rtt": round3(share),
            "gap_p50_us": us(f.gap.p50),
            "gap_p99_us": us(f.gap.p99),
            "gap_p50_floor_rounds": round3(gap_rounds),
            "floor_p50_us": us(floor.p50),
            "wait_p50_us": us(f.wait.p50),
            "wait_p99_us": us(f.wait.p99),
            "jain": round3(f.fairness * 10.0) / 10.0,
            "per_manager": f.counts,
            "commands_sent_per_acquisition": round3(f.round_trips),
            "redis_commands_per_acquisition": round3(f.commands),
            "redis_commands_by_name": run.delta.json(f.n as f64),
            "counter": run.counter,
            "overlaps": f.overlaps,
            "failed_acquisitions": run.errors,
        }),
    );
}
