//! The same uncontended call through `#[concurrency_guard]`, `manager.run` and a manual guard:
//! what the attribute adds.

use std::time::{Duration, Instant};

use lock_guard::{LockError, LockKey, LockManager, LockOptions, concurrency_guard};
use serde_json::json;

use crate::report::Report;
use crate::stats::{Dist, dist, nanos, paired_ratio, round3, t, us};
use crate::{Ctx, Res, progress};

/// The uncontended loop's body, through the attribute.
#[concurrency_guard(name = "macro", wait = 5s, lease = 3s, locks = locks)]
async fn guarded(id: u64, locks: &LockManager) -> Result<(), LockError> {
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Macro,
    Run,
    Manual,
}

async fn one_call(form: Form, locks: &LockManager) -> Result<(), LockError> {
    let options = LockOptions::new()
        .wait(Duration::from_secs(5))
        .lease(Duration::from_secs(3));
    match form {
        Form::Macro => guarded(1, locks).await,
        Form::Run => {
            let key = LockKey::new("macro").part(1);
            locks.run(&key, options, async { Ok(()) }).await
        }
        Form::Manual => {
            let key = LockKey::new("macro").part(1);
            locks.lock(&key, options).await?.release().await.map(drop)
        }
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Res<Report> {
    let (calls, blocks) = (ctx.sizes.macro_calls, ctx.sizes.macro_blocks);
    progress(&format!(
        "macro: {calls} uncontended calls each through #[concurrency_guard], manager.run and a manual guard"
    ));
    let locks = ctx.manager().await?;
    let forms = [Form::Macro, Form::Run, Form::Manual];
    for _ in 0..ctx.sizes.warmup {
        for form in forms {
            one_call(form, &locks).await?;
        }
    }
    let mut lat: [Vec<i64>; 3] = Default::default();
    let mut rounds: [Vec<Vec<i64>>; 3] = Default::default();
    let mut busy = [Duration::ZERO; 3];
    let per_block = calls.div_ceil(blocks);
    // Rounds of three short blocks back to back, rotating the order.
    for b in 0..blocks {
        for k in 0..3 {
            let i = (b + k) % 3;
            let mut block = Vec::with_capacity(per_block);
            let start = Instant::now();
            for _ in 0..per_block {
                let t0 = Instant::now();
                one_call(forms[i], &locks).await?;
                block.push(nanos(t0.elapsed()));
            }
            busy[i] += start.elapsed();
            lat[i].extend_from_slice(&block);
            rounds[i].push(block);
        }
    }
    let d: Vec<Dist> = lat.iter().map(|l| dist(l)).collect();
    let ops: Vec<f64> = (0..3)
        .map(|i| lat[i].len() as f64 / busy[i].as_secs_f64())
        .collect();
    let ratio = paired_ratio(&rounds[0], &rounds[2]);
    let ratio_run = paired_ratio(&rounds[0], &rounds[1]);
    let pooled = d[0].p50 / d[2].p50;
    let mut r = Report::new("macro");
    for (i, label) in [
        "#[concurrency_guard]",
        "manager.run",
        "manual lock + release",
    ]
    .iter()
    .enumerate()
    {
        r.row(
            &format!("{label} p50 / p99"),
            format!("{} / {} ({:.0}/s)", t(d[i].p50), t(d[i].p99), ops[i]),
        );
    }
    r.target(
        "macro / manual, median of paired p50s",
        format!("{ratio:.3} (pooled p50s: {pooled:.3}; {blocks} rounds)"),
        "<= 1.02",
        ratio <= 1.02,
    );
    r.row(
        "macro / manager.run, median of paired p50s",
        format!("{ratio_run:.3}"),
    );
    r.set("calls", json!(lat[0].len()));
    for (i, name) in ["macro", "run", "manual"].iter().enumerate() {
        r.set(&format!("{name}_p50_us"), json!(us(d[i].p50)));
        r.set(&format!("{name}_p99_us"), json!(us(d[i].p99)));
        r.set(&format!("{name}_mean_us"), json!(us(d[i].mean)));
        r.set(&format!("{name}_ops_per_s"), json!(ops[i].round()));
    }
    r.set("ratio_macro_manual_p50", json!(round3(ratio)));
    r.set("ratio_macro_manual_pooled_p50", json!(round3(pooled)));
    r.set("rounds", json!(blocks));
    r.set("ratio_macro_run_p50", json!(round3(ratio_run)));
    progress(&format!(
        "macro: p50 macro {} run {} manual {}, ratio {ratio:.3}",
        t(d[0].p50),
        t(d[1].p50),
        t(d[2].p50)
    ));
    Ok(r.finish())
}
