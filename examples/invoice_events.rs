//! Invoice events: "create invoice" events delivered more than once to several consumers, handled
//! without the lock, with `#[concurrency_guard(name = "invoice", wait = 0s, …)]`, and guarded with
//! fenced writes.
//!
//! ```text
//! cargo run --example invoice_events
//! ```
//!
//! needs nothing installed: the embedded queue (in-process, manual acks, delivering again what is
//! not acked within the ack timeout), `LockManager::memory()` and an embedded SQLite; three
//! consumers in this process.
//!
//! ```text
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f REDLOCK=redis://127.0.0.1:6379,… \
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example invoice_events
//! ```
//!
//! uses RabbitMQ (a queue and a dead-letter queue named for the run, deleted at the end), and —
//! with a lock service (`REDIS_URL`, `REDIS_CLUSTER` or `REDLOCK`, as the other demos take) and
//! `DATABASE_URL` — runs the consumers as separate OS processes (this program, re-executed with
//! `--consume`), each with its own lock manager and database pool. Tables are named for the run
//! and dropped at the end. Options:
//!
//! ```text
//! --orders N --copies N --consumers N --prefetch N --faults N (one order in N slow, one stalled; 0: none)
//! --mode unguarded|guarded|fenced (repeat; default: all three)
//! --consume JSON     run one consumer (what the demo starts in each process)
//! ```
//!
//! Each event is published `--copies` times at once (the publisher retried), and on one order in
//! `--faults` the payment step is slow (longer than the deadline) the first time it runs, on
//! another the consumer stalls (a blocking pause longer than the lease) right before writing the
//! payment. The table: invoices per order (duplicates), customers charged twice, paid invoices
//! overwritten back to drafts, orders left unpaid; deliveries, re-deliveries, deliveries skipped
//! because another consumer held the order, steps dropped at the deadline, stale writes refused by
//! the fence.

use std::process::ExitCode;

use lock_guard_examples::invoice::run::{
    Broker, ConsumerConfig, Extras, Plan, Report, run_mode, table,
};
use lock_guard_examples::invoice::{InvoiceTables, Mode};
use lock_guard_examples::setup::{BoxError, DbSetup, Setup};
use tokio::process::Command;

#[derive(Debug)]
struct Args {
    plan: Plan,
    modes: Vec<Mode>,
    consume: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        plan: Plan::DEMO,
        modes: Vec::new(),
        consume: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let mut number = |name: &str| -> Result<u64, String> {
            let v = value(name)?;
            v.parse()
                .map_err(|_| format!("{name} takes a number, not `{v}`"))
        };
        match arg.as_str() {
            "--orders" => args.plan.orders = number("--orders")?.max(1) as usize,
            "--copies" => args.plan.copies = number("--copies")?.clamp(1, 10) as u32,
            "--consumers" => args.plan.consumers = number("--consumers")?.clamp(1, 32) as usize,
            "--prefetch" => args.plan.prefetch = number("--prefetch")?.clamp(1, 1000) as u16,
            "--faults" => args.plan.faults.one_in = number("--faults")? as i64,
            "--mode" => args.modes.push(match value("--mode")?.as_str() {
                "unguarded" => Mode::Unguarded,
                "guarded" => Mode::Guarded,
                "fenced" => Mode::Fenced,
                other => {
                    return Err(format!(
                        "unknown mode `{other}`: unguarded, guarded or fenced"
                    ));
                }
            }),
            "--consume" => args.consume = Some(value("--consume")?),
            "-h" | "--help" => {
                return Err("usage: see the top of examples/invoice_events.rs".to_owned());
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    if args.modes.is_empty() {
        args.modes = Mode::ALL.to_vec();
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = match &args.consume {
        Some(json) => consume(json).await,
        None => drive(&args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--consume JSON`: one consumer process, until killed or its parent exits (stdin closes).
async fn consume(json: &str) -> Result<ExitCode, BoxError> {
    let config: ConsumerConfig =
        serde_json::from_str(json).map_err(|e| format!("--consume: bad configuration: {e}"))?;
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    lock_guard_examples::invoice::run::consume_from_config(config).await?;
    Ok(ExitCode::SUCCESS)
}

async fn drive(args: &Args) -> Result<ExitCode, BoxError> {
    let setup = Setup::from_env();
    let broker = Broker::from_env();
    let plan = args.plan;
    println!(
        "lock-guard demo: \"create invoice\" events delivered more than once to several consumers"
    );
    println!("  {}", broker.describe(&plan));
    let [locks, db_line] = setup.describe();
    println!("  {locks}");
    println!("  {db_line}");
    let processes = matches!(broker, Broker::Amqp(_)) && setup.shared_across_processes();
    let exe = std::env::current_exe()?;
    let spawner = move |config: &ConsumerConfig| {
        let mut command = Command::new(&exe);
        command
            .arg("--consume")
            .arg(serde_json::to_string(config).unwrap_or_default());
        command
    };
    println!(
        "  consumers: {} {}, each handling up to {} deliveries at once; {}",
        plan.consumers,
        if processes {
            "separate OS processes (invoice_events --consume)"
        } else {
            "in this process"
        },
        plan.prefetch,
        setup.locks.sharing(),
    );
    println!(
        "  load: {} orders, each event published {}x at once; lease {} ms (deadline 2/3 of it), \
         steps {} ms; faults: 1 order in {} pays slowly ({} ms) the first time, 1 in {} \
         stalls {} ms before writing its payment",
        plan.orders,
        plan.copies,
        plan.timing.lease.as_millis(),
        plan.timing.step.as_millis(),
        plan.faults.one_in,
        plan.timing.slow_step.as_millis(),
        plan.faults.one_in,
        plan.timing.stall.as_millis(),
    );
    println!();

    let db = setup.database().await?;
    let tables = InvoiceTables::of(&db);
    tables.create(&db).await?;
    let mut reports: Vec<Report> = Vec::new();
    let mut result = Ok(());
    for (i, mode) in args.modes.iter().enumerate() {
        eprintln!(
            "  {}: publishing {} events…",
            mode.name(),
            plan.orders * plan.copies as usize
        );
        let first = 1 + i as i64 * 100_000;
        let spawn = processes.then_some(&spawner as _);
        match run_mode(
            &setup,
            &broker,
            &db,
            *mode,
            &plan,
            first,
            Extras {
                messages: &[],
                spawn,
            },
        )
        .await
        {
            Ok(report) => {
                eprintln!(
                    "  {}: settled in {:.1}s",
                    mode.name(),
                    report.elapsed.as_secs_f64()
                );
                reports.push(report);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let DbSetup::Url(_) = setup.db {
        tables.drop_all(&db).await?;
        db.drop_tables().await?;
    }
    db.close().await;
    result?;

    println!("{}", table(&reports));
    println!(
        "  duplicates = invoices beyond one per order · charged twice = charges beyond one per order · \
         overwritten = paid invoices rewritten as drafts · unpaid = orders left without a paid invoice"
    );
    println!(
        "  skipped = deliveries that found the order held elsewhere (wait = 0s), requeued · deadline = \
         steps dropped at the deadline, requeued · refused = stale writes the fence refused"
    );
    let mut ok = true;
    for r in &reports {
        let verdict = match r.mode {
            Mode::Unguarded => format!(
                "{} duplicate invoices, {} double charges, {} overwritten after payment",
                r.duplicates, r.charged_twice, r.overwritten
            ),
            Mode::Guarded if r.exactly_once() => {
                "one invoice per order, charged once (no consumer stalled past its lease)"
                    .to_owned()
            }
            Mode::Guarded => format!(
                "{} duplicate invoices, {} double charges, {} overwritten: a consumer that stalled \
                 past its lease wrote after the next holder (the lock alone cannot stop a write \
                 already on its way)",
                r.duplicates, r.charged_twice, r.overwritten
            ),
            Mode::Fenced if r.exactly_once() => format!(
                "one invoice per order, charged once; {} stale writes refused by the fence",
                r.refused
            ),
            Mode::Fenced => {
                ok = false;
                "UNEXPECTED duplicates, double charges, overwrites or unpaid orders".to_owned()
            }
        };
        println!("  {:<15} {verdict}", format!("{}:", r.mode.name()));
        if r.unpaid > 0 {
            ok = false;
            println!("  {:<15} {} orders UNPAID", "", r.unpaid);
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
