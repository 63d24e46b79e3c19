//! The saturated hand-over: 8 managers in 8 processes on one key, no hold beyond the
//! unsynchronised counter's read and write, no think time; next to the hand-rolled polling lock
//! (`SET NX PX` retried every millisecond, compare-and-delete) under the same load.

use std::time::Duration;

use serde_json::{Value, json};

use crate::floor::Floor;
use crate::handoff::HandoffRun;
use crate::handoff_report::Figures;
use crate::inspect::Inspect;
use crate::report::Report;
use crate::stats::{round3, t, us};
use crate::worker::{LockKind, POLL, Spec, run_processes};
use crate::{Ctx, Res, progress};

const PROCESSES: usize = 8;

fn spec(name: &'static str, lock: LockKind, key: &'static str) -> Spec {
    Spec {
        name,
        processes: PROCESSES,
        tasks_per_process: 1,
        hold: Duration::ZERO,
        think: Duration::ZERO,
        lock,
        key,
    }
}

pub(crate) async fn run(ctx: &Ctx, inspect: &mut Inspect, floor: Floor) -> Res<Report> {
    let ours = spec("saturated: lock-guard", LockKind::LockGuard, "saturated");
    let mut ours = run_processes(ctx, inspect, &ours).await?;
    let theirs = spec("saturated: poller", LockKind::Poller, "saturated-poller");
    let mut theirs = run_processes(ctx, inspect, &theirs).await?;

    let mut r = Report::new("saturated");
    r.row(
        "managers / hold / think",
        format!(
            "{PROCESSES} processes x 1 task; the counter's HGET + HSET only; none (poller retries every {} ms)",
            POLL.as_millis()
        ),
    );
    let (Some(a), Some(b)) = (Figures::of(&mut ours), Figures::of(&mut theirs)) else {
        r.check(
            "critical sections",
            format!("{} / {}", ours.sections.len(), theirs.sections.len()),
            ">= 2 each",
            false,
        );
        return Ok(r.finish());
    };
    let ours_json = side(&mut r, "lock-guard", &ours, &a, floor);
    let theirs_json = side(&mut r, "hand-rolled poller", &theirs, &b, floor);
    let ratio = a.throughput / b.throughput;
    r.target(
        "lock-guard / poller, sections per second",
        format!("{ratio:.3}"),
        ">= 1.0",
        ratio >= 1.0,
    );
    r.target(
        "lock-guard: largest share of turns",
        format!(
            "{:.1} % (even: {:.1} %)",
            100.0 * a.max_share(),
            100.0 / PROCESSES as f64
        ),
        "<= 15 %",
        a.max_share() <= 0.15,
    );
    r.set("processes", json!(PROCESSES));
    r.set("poll_ms", json!(POLL.as_millis() as u64));
    r.set("lock_guard", ours_json);
    r.set("poller", theirs_json);
    r.set("ratio_to_poller", json!(round3(ratio)));
    progress(&format!(
        "saturated: lock-guard {:.0}/s (max share {:.1} %), poller {:.0}/s (max share {:.1} %), ratio {ratio:.3}",
        a.throughput,
        100.0 * a.max_share(),
        b.throughput,
        100.0 * b.max_share()
    ));
    Ok(r.finish())
}

/// One side's rows; its JSON object.
fn side(r: &mut Report, label: &str, run: &HandoffRun, f: &Figures, floor: Floor) -> Value {
    let shares: Vec<f64> = f
        .counts
        .iter()
        .map(|&c| 100.0 * c as f64 / f.n as f64)
        .collect();
    r.row(
        &format!("{label}: sections / s"),
        format!("{:.1} ({} in {:.2} s)", f.throughput, f.n, f.elapsed),
    );
    r.row(
        "  share of turns per worker",
        shares
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
            + " %",
    );
    r.row(
        "  Jain / same worker twice in a row",
        format!(
            "{:.4} / {:.1} %",
            f.fairness,
            100.0 * f.same_task as f64 / (f.n - 1) as f64
        ),
    );
    r.row(
        "  gap p50 / p99",
        format!(
            "{} / {} ({:.2} x EVALSHA p50 {}; floor scenario {})",
            t(f.gap.p50),
            t(f.gap.p99),
            f.gap.p50 / run.around.p50,
            t(run.around.p50),
            t(floor.evalsha.p50)
        ),
    );
    r.row(
        "  wait p50 / p99 / max",
        format!("{} / {} / {}", t(f.wait.p50), t(f.wait.p99), t(f.wait.max)),
    );
    r.row(
        "  round trips / Redis commands per acquisition",
        format!(
            "{:.2} / {:.2} ({})",
            f.round_trips,
            f.commands,
            run.delta.breakdown(f.n as f64)
        ),
    );
    r.check(
        &format!("  {label}: unsynchronised counter"),
        format!(
            "{} after {} sections, {} overlaps, {} failures",
            run.counter, f.n, f.overlaps, run.errors
        ),
        "exact, no failure",
        run.counter == f.n as u64 && f.overlaps == 0 && run.errors == 0,
    );
    json!({
        "sections": f.n,
        "sections_per_s": round3(f.throughput),
        "share_pct_per_worker": shares.iter().map(|s| round3(*s)).collect::<Vec<_>>(),
        "max_share_pct": round3(100.0 * f.max_share()),
        "jain": round3(f.fairness),
        "same_worker_twice_pct": round3(100.0 * f.same_task as f64 / (f.n - 1) as f64),
        "gap_p50_us": us(f.gap.p50),
        "gap_p99_us": us(f.gap.p99),
        "gap_p50_round_trips": round3(f.gap.p50 / run.around.p50),
        "wait_p50_us": us(f.wait.p50),
        "wait_p99_us": us(f.wait.p99),
        "wait_max_us": us(f.wait.max),
        "hold_mean_us": us(f.hold.mean),
        "round_trips_per_acquisition": round3(f.round_trips),
        "redis_commands_per_acquisition": round3(f.commands),
        "redis_commands_by_name": run.delta.json(f.n as f64),
        "counter": run.counter,
        "overlaps": f.overlaps,
        "failed": run.errors,
    })
}
