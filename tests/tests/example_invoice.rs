//! The invoice demo (`examples/invoice_events.rs`): on its embedded default (in-process queue,
//! `LockManager::memory()`, SQLite), and on a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) with consumers in separate OS processes, locks on
//! Redlock over 3 `redis-server`s started here and the PostgreSQL of `DATABASE_URL`. A missing
//! RabbitMQ or PostgreSQL fails these tests, it does not skip them (`scripts/test` starts both).
//!
//! The consumer processes are this test binary, re-executed to run the ignored test
//! `invoice_consumer_process` with its configuration in `INVOICE_CONSUMER`.

use std::time::{Duration, Instant};

use lock_guard_examples::db::{Db, Tables, unique_prefix};
use lock_guard_examples::invoice::amqp::AmqpQueues;
use lock_guard_examples::invoice::run::{
    Broker, ConsumerConfig, ConsumerProcess, Extras, Plan, Report, consume_from_config, count,
    run_mode, settle, table,
};
use lock_guard_examples::invoice::{Faults, InvoiceEvent, InvoiceTables, Mode, OrderId, Timing};
use lock_guard_examples::serde_json;
use lock_guard_examples::setup::{DbSetup, LockSetup, Setup};
use lock_guard_tests::RedisServer;
use tokio::process::Command;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP.to_owned())
}

fn postgres_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned())
}

/// Fresh invoice tables in PostgreSQL; panics with what to do when there is none.
async fn postgres() -> (Db, InvoiceTables) {
    let url = postgres_url();
    let db = Db::open(&url, Tables::new(&unique_prefix()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL: could not connect to {url}: {e}\n\
                 run scripts/test, or set DATABASE_URL=postgres://user@host:port/db"
            )
        });
    let tables = InvoiceTables::of(&db);
    tables.create(&db).await.expect("create the invoice tables");
    (db, tables)
}

/// The command that runs one consumer process on `locks` (env `REDLOCK` or `REDIS_URL`).
fn consumer_command(config: &ConsumerConfig, locks: &LockSetup) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "--exact",
            "invoice_consumer_process",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("INVOICE_CONSUMER", serde_json::to_string(config).unwrap())
        .env("DATABASE_URL", postgres_url())
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER")
        .env_remove("REDLOCK");
    match locks {
        LockSetup::Redlock(urls) => command.env("REDLOCK", urls.join(",")),
        LockSetup::Redis(url) => command.env("REDIS_URL", url),
        other => panic!("consumer processes need a lock server, not {other:?}"),
    };
    command
}

/// Not a test: the consumer process the other tests start (see the module docs).
#[test]
#[ignore = "the consumer process the other tests start"]
fn invoice_consumer_process() {
    let Ok(json) = std::env::var("INVOICE_CONSUMER") else {
        return;
    };
    let config: ConsumerConfig = serde_json::from_str(&json).expect("INVOICE_CONSUMER");
    // Exit with the test that started this process (its end of stdin closes).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = runtime.block_on(consume_from_config(config)) {
        eprintln!("consumer failed: {e}");
        std::process::exit(1);
    }
}

fn assert_unguarded_races(r: &Report, shown: &str) {
    assert!(
        r.duplicates + r.charged_twice + r.overwritten > 0,
        "the unguarded handler should have created, charged or overwritten twice:\n{shown}"
    );
    assert_eq!(r.unpaid, 0, "no event may be lost:\n{shown}");
}

fn assert_exactly_once(r: &Report, shown: &str) {
    assert!(
        r.exactly_once(),
        "{}: one invoice per order, charged once, never overwritten, none unpaid:\n{shown}",
        r.mode.name()
    );
    assert_eq!(r.invoices, r.orders as i64, "{shown}");
}

/// The demo's default: embedded queue, one shared memory manager, SQLite; all three handlers
/// with the demo's faults. Unguarded races; guarded has one invoice per order but a consumer that
/// stalled past its lease still charged again; guarded + fenced is exact, the fence refusing the
/// stale writes; the slow steps are dropped at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_demo_races_unguarded_stale_writes_guarded_exact_fenced() {
    let setup = Setup {
        locks: LockSetup::Memory,
        db: DbSetup::Embedded,
    };
    let db = Db::embedded().await.expect("embedded SQLite");
    InvoiceTables::of(&db).create(&db).await.unwrap();
    let plan = Plan::DEMO;
    let mut reports = Vec::new();
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let first = 1 + i as i64 * 100_000;
        let report = run_mode(
            &setup,
            &Broker::Embedded,
            &db,
            mode,
            &plan,
            first,
            Extras::default(),
        )
        .await
        .expect("run");
        reports.push(report);
    }
    let shown = table(&reports);
    println!("{shown}");
    let [unguarded, guarded, fenced] = &reports[..] else {
        unreachable!()
    };
    assert_unguarded_races(unguarded, &shown);
    assert_eq!(guarded.duplicates, 0, "{shown}");
    assert_eq!(guarded.overwritten, 0, "{shown}");
    assert_eq!(guarded.unpaid, 0, "{shown}");
    let stalled = (first_orders(plan.orders))
        .filter(|o| plan.faults.stall(*o))
        .count() as i64;
    assert!(
        guarded.charged_twice >= 1 && guarded.charged_twice <= stalled,
        "without the fence, a consumer that stalled past its lease charges again (at most once \
         per stalled order):\n{shown}"
    );
    assert_exactly_once(fenced, &shown);
    assert!(
        fenced.refused >= 1,
        "the fence refused no stale write:\n{shown}"
    );
    let slow = first_orders(plan.orders)
        .filter(|o| plan.faults.slow(*o))
        .count() as i64;
    for r in [guarded, fenced] {
        assert!(
            r.deadline >= slow,
            "slow steps dropped at the deadline:\n{shown}"
        );
        assert!(r.skipped > 0, "duplicates skipped (wait = 0s):\n{shown}");
    }
}

/// Orders `1..=n` (the fault pattern repeats every `one_in`, so any range of `n` has as many).
fn first_orders(n: usize) -> impl Iterator<Item = OrderId> {
    (1..=n as i64).map(OrderId)
}

/// The bad messages of the tests, with a word of the reason each must be dead-lettered with.
fn bad_messages() -> Vec<(Vec<u8>, &'static str)> {
    let mut huge = br#"{"order_id": 1, "pad": ""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1 << 20));
    huge.extend(br#""}"#);
    vec![
        (b"hello, not json".to_vec(), "not an invoice event"),
        (br#"{"order": 5}"#.to_vec(), "not an invoice event"),
        (
            InvoiceEvent {
                order_id: OrderId(999_999_999),
                copy: 0,
            }
            .to_bytes(),
            "unknown order 999999999",
        ),
        (huge, "bytes, more than the 65536 accepted"),
    ]
}

fn assert_dead_letters(report: &Report) {
    let bad = bad_messages();
    assert_eq!(
        report.dead_letters.len(),
        bad.len(),
        "{:?}",
        report
            .dead_letters
            .iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
    );
    for (payload, reason) in &bad {
        assert!(
            report
                .dead_letters
                .iter()
                .any(|(p, r)| p == payload && r.contains(reason)),
            "no dead letter with reason `{reason}`: {:?}",
            report
                .dead_letters
                .iter()
                .map(|(_, r)| r)
                .collect::<Vec<_>>()
        );
    }
}

/// Bad messages on the embedded queue: dead-lettered with their reason, the good ones handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_bad_messages_are_dead_lettered_with_a_reason() {
    let setup = Setup {
        locks: LockSetup::Memory,
        db: DbSetup::Embedded,
    };
    let db = Db::embedded().await.expect("embedded SQLite");
    InvoiceTables::of(&db).create(&db).await.unwrap();
    let plan = Plan {
        orders: 12,
        faults: Faults::default(),
        ..Plan::DEMO
    };
    let bad: Vec<Vec<u8>> = bad_messages().into_iter().map(|(p, _)| p).collect();
    let extras = Extras {
        messages: &bad,
        spawn: None,
    };
    let report = run_mode(
        &setup,
        &Broker::Embedded,
        &db,
        Mode::Fenced,
        &plan,
        1,
        extras,
    )
    .await
    .expect("run");
    assert_exactly_once(&report, &table(std::slice::from_ref(&report)));
    assert_dead_letters(&report);
}

/// RabbitMQ, 3 consumer processes, Redlock over 3 masters, PostgreSQL: unguarded races, guarded
/// is exact (no faults); then guarded + fenced with the demo's faults (slow steps, stalls) is
/// exact too, and bad messages are dead-lettered while no consumer crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_consumer_processes_on_redlock_of_three_handle_each_order_once() {
    let nodes = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let locks = LockSetup::Redlock(nodes.iter().map(RedisServer::url).collect());
    let setup = Setup {
        locks: locks.clone(),
        db: DbSetup::Url(postgres_url()),
    };
    let (db, tables) = postgres().await;
    let broker = Broker::Amqp(amqp_url());
    let spawn = move |config: &ConsumerConfig| consumer_command(config, &locks);
    let quiet = Plan {
        orders: 30,
        faults: Faults::default(),
        ..Plan::DEMO
    };
    let bad: Vec<Vec<u8>> = bad_messages().into_iter().map(|(p, _)| p).collect();
    let mut reports = Vec::new();
    for (i, (mode, plan, messages)) in [
        (Mode::Unguarded, quiet, &[][..]),
        (Mode::Guarded, quiet, &[][..]),
        (Mode::Fenced, Plan::DEMO, &bad[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let extras = Extras {
            messages,
            spawn: Some(&spawn),
        };
        let report = run_mode(
            &setup,
            &broker,
            &db,
            mode,
            &plan,
            1 + i as i64 * 100_000,
            extras,
        )
        .await
        .unwrap_or_else(|e| panic!("{} on RabbitMQ at {}: {e}", mode.name(), amqp_url()));
        reports.push(report);
    }
    tables.drop_all(&db).await.unwrap();
    let shown = table(&reports);
    println!("{shown}");
    assert_unguarded_races(&reports[0], &shown);
    assert_exactly_once(&reports[1], &shown);
    assert!(reports[1].skipped > 0, "duplicates skipped:\n{shown}");
    assert_exactly_once(&reports[2], &shown);
    assert_dead_letters(&reports[2]);
}

/// A consumer killed with SIGKILL in the middle of the steps (draft created, not paid): RabbitMQ
/// delivers the event again to another consumer, which finds the order still locked by the dead
/// one's lease, requeues, then takes over and pays — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_killed_mid_step_leaves_the_event_to_another_which_pays_once() {
    let server = RedisServer::start();
    let locks = LockSetup::Redis(server.url());
    let (db, tables) = postgres().await;
    let name = format!("invoice_{}kill", db.tables().prefix());
    let dlq = format!("{name}_dead");
    let queues = AmqpQueues::declare(&amqp_url(), &name, &dlq)
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {}: {e}", amqp_url()));
    let config = ConsumerConfig {
        amqp_url: amqp_url(),
        queue: name.clone(),
        dlq,
        tables: db.tables().prefix().to_owned(),
        mode: Mode::Fenced,
        prefetch: 4,
        // Steps of 400 ms under a 3 s lease: the kill lands between "create" and "pay".
        timing: Timing {
            lease: Duration::from_secs(3),
            step: Duration::from_millis(400),
            ..Timing::DEMO
        },
        faults: Faults::default(),
    };
    let order = 7;
    tables.seed(&db, order, 1).await.unwrap();
    let first = ConsumerProcess::spawn(consumer_command(&config, &locks))
        .await
        .expect("start the first consumer");
    queues
        .publish(
            &InvoiceEvent {
                order_id: OrderId(order),
                copy: 0,
            }
            .to_bytes(),
        )
        .await
        .unwrap();
    // Wait for the draft: the first consumer is now inside the payment step.
    let start = Instant::now();
    loop {
        let c = count(&db, &tables, order, 1).await.unwrap();
        if c.invoices == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no draft: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().await;
    let killed = count(&db, &tables, order, 1).await.unwrap();
    assert_eq!(
        (killed.invoices, killed.unpaid),
        (1, 1),
        "killed after the draft, before the payment: {killed:?}"
    );
    let second = ConsumerProcess::spawn(consumer_command(&config, &locks))
        .await
        .expect("start the second consumer");
    let done = settle(
        &db,
        &tables,
        order,
        1,
        Duration::from_millis(700),
        Duration::from_secs(60),
        || async { Ok(u64::from(queues.ready().await?)) },
    )
    .await
    .expect("the event is handled after the kill");
    second.kill().await;
    let _ = queues.delete().await;
    tables.drop_all(&db).await.unwrap();
    assert_eq!(
        (
            done.invoices,
            done.duplicates,
            done.charged_twice,
            done.unpaid
        ),
        (1, 0, 0, 0),
        "{done:?}"
    );
    assert!(
        done.redeliveries >= 1,
        "the broker delivered the event again: {done:?}"
    );
    assert!(
        done.skipped >= 1,
        "the dead consumer's lease still held the order: the re-delivery was skipped and \
         requeued until it expired: {done:?}"
    );
}
