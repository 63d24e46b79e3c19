//! The figures of a hand-over run: throughput against its ideal, the idle gap between sections in
//! round trips, waits, fairness, round trips and Redis commands per acquisition, and the
//! unsynchronised counter.

use serde_json::json;

use crate::floor::Floor;
use crate::handoff::HandoffRun;
use crate::progress;
use crate::report::Report;
use crate::stats::{Dist, dist, jain, round3, t, us};

/// The figures every hand-over report shares.
pub(crate) struct Figures {
    pub(crate) n: usize,
    pub(crate) gap: Dist,
    pub(crate) wait: Dist,
    pub(crate) hold: Dist,
    pub(crate) overlaps: usize,
    pub(crate) same_task: usize,
    /// Sections per task.
    pub(crate) counts: Vec<u64>,
    pub(crate) elapsed: f64,
    pub(crate) throughput: f64,
    pub(crate) fairness: f64,
    pub(crate) round_trips: f64,
    pub(crate) commands: f64,
}

impl Figures {
    /// `None` for fewer than two sections.
    pub(crate) fn of(run: &mut HandoffRun) -> Option<Figures> {
        run.sections.sort_by_key(|s| s.acquired);
        let n = run.sections.len();
        if n < 2 {
            return None;
        }
        let gaps: Vec<i64> = run
            .sections
            .windows(2)
            .map(|w| w[1].acquired - w[0].released)
            .collect();
        let waits: Vec<i64> = run.sections.iter().map(|s| s.acquired - s.asked).collect();
        let holds: Vec<i64> = run
            .sections
            .iter()
            .map(|s| s.released - s.acquired)
            .collect();
        let mut counts = vec![0u64; run.tasks];
        for s in &run.sections {
            counts[s.task] += 1;
        }
        let last = run
            .sections
            .iter()
            .map(|s| s.released)
            .max()
            .unwrap_or(run.start);
        let elapsed = (last - run.start) as f64 / 1e9;
        Some(Figures {
            n,
            gap: dist(&gaps),
            wait: dist(&waits),
            hold: dist(&holds),
            overlaps: gaps.iter().filter(|&&g| g < 0).count(),
            same_task: run
                .sections
                .windows(2)
                .filter(|w| w[0].task == w[1].task)
                .count(),
            fairness: jain(&counts),
            counts,
            elapsed,
            throughput: n as f64 / elapsed,
            round_trips: run.round_trips as f64 / n as f64,
            commands: run.delta.library_total() as f64 / n as f64,
        })
    }

    /// The largest share of sections one task took.
    pub(crate) fn max_share(&self) -> f64 {
        self.counts.iter().copied().max().unwrap_or(0) as f64 / self.n as f64
    }
}

/// The report of the 8-managers hand-over: every figure of [`handoff_report`] and the issue-10
/// targets (throughput against 1 / (hold + 1 round trip), wait p99, Jain, Redis commands).
pub(crate) fn issue10_targets(run: HandoffRun, floor: Floor) -> Report {
    handoff_report_with(run, floor, true)
}

pub(crate) fn handoff_report(run: HandoffRun, floor: Floor) -> Report {
    handoff_report_with(run, floor, false)
}

fn handoff_report_with(mut run: HandoffRun, floor: Floor, issue10: bool) -> Report {
    let mut r = Report::new(run.name);
    let Some(f) = Figures::of(&mut run) else {
        let n = run.sections.len();
        r.check("critical sections", n.to_string(), ">= 2", false);
        return r.finish();
    };
    let Figures {
        n,
        gap,
        wait,
        hold,
        overlaps,
        same_task,
        elapsed,
        throughput,
        fairness,
        round_trips,
        commands,
        ..
    } = f;
    let counts = &f.counts;
    let ideal = 1e9 / (hold.mean + gap.p50);
    let gap_floor = gap.p50 / run.around.p50;
    let gap_floor_scenario = gap.p50 / floor.evalsha.p50;
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);

    r.row(
        "tasks",
        format!(
            "{} ({} process{} x {})",
            run.tasks,
            run.processes,
            if run.processes == 1 { "" } else { "es" },
            run.tasks / run.processes
        ),
    );
    r.row(
        "critical sections / s",
        format!("{throughput:.1} ({n} in {elapsed:.2} s)"),
    );
    r.target(
        "  vs 1 / (hold mean + gap p50)",
        format!(
            "{:.1} % of {ideal:.1}/s (hold mean {})",
            100.0 * throughput / ideal,
            t(hold.mean)
        ),
        ">= 90 %",
        throughput >= 0.9 * ideal,
    );
    r.row(
        "EVALSHA p50 before + after the run",
        format!(
            "{} (floor scenario: {})",
            t(run.around.p50),
            t(floor.evalsha.p50)
        ),
    );
    r.target(
        "handoff gap p50",
        format!(
            "{} = {gap_floor:.2} x EVALSHA (floor scenario: {gap_floor_scenario:.2} x)",
            t(gap.p50)
        ),
        "<= 3 floor round trips",
        gap_floor <= 3.0,
    );
    r.row(
        "  vs pub/sub handoff by hand p50",
        format!("{:.2} x", gap.p50 / floor.pubsub.p50),
    );
    r.target(
        "handoff gap p99 / max",
        format!("{} / {}", t(gap.p99), t(gap.max)),
        "p99 <= 2 ms",
        gap.p99 <= 2e6,
    );
    r.row(
        "wait p50 / p99 / max",
        format!("{} / {} / {}", t(wait.p50), t(wait.p99), t(wait.max)),
    );
    r.target(
        "Jain's fairness index",
        format!("{fairness:.4} (per task {min}..{max})"),
        ">= 0.95",
        fairness >= 0.95,
    );
    r.target(
        "no task starves",
        format!("fewest sections {min}, failed acquisitions {}", run.errors),
        "every task > 0, no failure",
        min > 0 && run.errors == 0,
    );
    r.row(
        "same task twice in a row",
        format!(
            "{:.1} % of handoffs",
            100.0 * same_task as f64 / (n - 1) as f64
        ),
    );
    let per = run.tasks / run.processes;
    let mut per_process = vec![0u64; run.processes];
    for s in &run.sections {
        per_process[s.task / per] += 1;
    }
    let same_process = run
        .sections
        .windows(2)
        .filter(|w| w[0].task / per == w[1].task / per)
        .count();
    if run.processes > 1 {
        r.row(
            "same process twice in a row",
            format!(
                "{:.1} % of handoffs (even spread: {:.0} %)",
                100.0 * same_process as f64 / (n - 1) as f64,
                100.0 / run.processes as f64
            ),
        );
        r.row(
            "sections per process",
            per_process
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
        );
    }

    if run.processes == 1 {
        r.target(
            "round trips per acquisition",
            format!("{round_trips:.3}"),
            "<= 3",
            round_trips <= 3.0,
        );
    } else {
        r.row("round trips per acquisition", format!("{round_trips:.3}"));
    }
    r.row(
        "  SUBSCRIBE/UNSUBSCRIBE sent",
        run.subscriber_commands.to_string(),
    );
    if issue10 {
        r.target(
            "Redis commands per acquisition",
            format!("{commands:.2}"),
            "<= 10",
            commands <= 10.0,
        );
    } else {
        r.row("Redis commands per acquisition", format!("{commands:.2}"));
    }
    r.row("  by command", run.delta.breakdown(n as f64));
    if issue10 {
        // A lock that idles exactly one round trip between sections.
        let ideal_rtt = 1e9 / (hold.mean + run.around.p50);
        let share = throughput / ideal_rtt;
        r.target(
            "sections / s vs 1 / (hold mean + 1 RTT)",
            format!(
                "{:.1} % of {ideal_rtt:.1}/s (RTT: EVALSHA p50 {})",
                100.0 * share,
                t(run.around.p50)
            ),
            ">= 95 %",
            share >= 0.95,
        );
        // In a steady round robin a task waits for the others' sections and gaps, less its own
        // think time: the least any lock can do with this hold.
        let tasks = run.tasks as f64;
        let least_wait = ((tasks - 1.0) * hold.mean + tasks * run.around.p50
            - run.think.as_nanos() as f64)
            .max(0.0);
        r.target(
            "wait p99",
            format!(
                "{} (a round robin with this hold and 1 RTT gaps waits {})",
                t(wait.p99),
                t(least_wait)
            ),
            "<= 20 ms",
            wait.p99 <= 20e6,
        );
        r.set("least_wait_us", json!(us(least_wait)));
        r.target(
            "Jain's fairness index (issue 10)",
            format!("{fairness:.4}"),
            ">= 0.99",
            fairness >= 0.99,
        );
        r.set("ideal_rtt_per_s", json!(round3(ideal_rtt)));
        r.set("share_of_ideal_rtt", json!(round3(share)));
    }
    r.check(
        "unsynchronised counter",
        format!("{} after {n} sections, {overlaps} overlaps", run.counter),
        "exact",
        run.counter == n as u64 && overlaps == 0,
    );
    r.set("processes", json!(run.processes));
    r.set("tasks", json!(run.tasks));
    r.set("hold_ms", json!(run.hold.as_millis() as u64));
    r.set("think_ms", json!(run.think.as_millis() as u64));
    r.set("sections", json!(n));
    r.set("sections_per_s", json!(round3(throughput)));
    r.set("ideal_per_s", json!(round3(ideal)));
    r.set("hold_mean_us", json!(us(hold.mean)));
    r.set("gap_p50_us", json!(us(gap.p50)));
    r.set("gap_p99_us", json!(us(gap.p99)));
    r.set("gap_max_us", json!(us(gap.max)));
    r.set("evalsha_around_p50_us", json!(us(run.around.p50)));
    r.set("gap_p50_floor_round_trips", json!(round3(gap_floor)));
    r.set(
        "gap_p50_floor_scenario_round_trips",
        json!(round3(gap_floor_scenario)),
    );
    r.set("wait_p50_us", json!(us(wait.p50)));
    r.set("wait_p99_us", json!(us(wait.p99)));
    r.set("wait_max_us", json!(us(wait.max)));
    r.set("jain", json!(round3(fairness * 10.0) / 10.0));
    r.set("per_task", json!(counts));
    r.set(
        "same_task_twice_pct",
        json!(round3(100.0 * same_task as f64 / (n - 1) as f64)),
    );
    r.set("per_process", json!(per_process));
    r.set(
        "same_process_twice_pct",
        json!(round3(100.0 * same_process as f64 / (n - 1) as f64)),
    );
    r.set(
        "gap_p50_pubsub_floor",
        json!(round3(gap.p50 / floor.pubsub.p50)),
    );
    r.set("round_trips_per_acquisition", json!(round3(round_trips)));
    r.set("subscriber_commands", json!(run.subscriber_commands));
    r.set("redis_commands_per_acquisition", json!(round3(commands)));
    r.set("redis_commands_by_name", run.delta.json(n as f64));
    r.set("counter", json!(run.counter));
    r.set("overlaps", json!(overlaps));
    r.set("failed_acquisitions", json!(run.errors));
    progress(&format!(
        "{}: {throughput:.0}/s, gap p50 {} p99 {}, Jain {fairness:.3}, {round_trips:.2} round trips, counter {}/{n}",
        run.name,
        t(gap.p50),
        t(gap.p99),
        run.counter
    ));
    r.finish()
}
