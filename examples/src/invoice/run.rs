//! Running the invoice demo: publish each order's event (and the publisher's retries), let
//! consumers handle them until every order is paid and nothing moves any more, then count what
//! the database holds.
//!
//! Consumers are tasks of this process (each with its own lock manager and database pool), on the
//! embedded queue ([`MemQueue`]) or on RabbitMQ; or, on RabbitMQ with a shared lock service and
//! database, separate OS processes ([`ConsumerProcess`]).

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::amqp::{self, AmqpQueues};
use super::queue::MemQueue;
use super::{
    Disposition, Faults, InvoiceEvent, InvoiceService, InvoiceTables, Mode, OrderId, Timing,
};
use crate::db::{Db, Tables};
use crate::setup::{BoxError, DbSetup, Setup};

/// The shape of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Orders, one event each.
    pub orders: usize,
    /// Publications of each event: the first, and the publisher's retries, all at once.
    pub copies: u32,
    /// Consumers (app instances).
    pub consumers: usize,
    /// Deliveries each consumer handles at once (its prefetch).
    pub prefetch: u16,
    /// The embedded queue's acknowledgement timeout (RabbitMQ's is the broker's own).
    pub ack_timeout: Duration,
    /// How long things take.
    pub timing: Timing,
    /// The injected slow steps and stalls.
    pub faults: Faults,
}

impl Plan {
    /// The demo's plan: 40 orders, each event published twice, 3 consumers handling up to 8
    /// deliveries each, ack timeout 300 ms, [`Timing::DEMO`], a fault on one order in 10 of each kind.
    pub const DEMO: Plan = Plan {
        orders: 40,
        copies: 2,
        consumers: 3,
        prefetch: 8,
        ack_timeout: Duration::from_millis(300),
        timing: Timing::DEMO,
        faults: Faults { one_in: 10 },
    };
}

/// The message broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The embedded queue, in this process.
    Embedded,
    /// RabbitMQ at this URL (`AMQP_URL`).
    Amqp(String),
}

impl Broker {
    /// `AMQP_URL`, else the embedded queue.
    pub fn from_env() -> Broker {
        match std::env::var("AMQP_URL") {
            Ok(url) if !url.trim().is_empty() => Broker::Amqp(url.trim().to_owned()),
            _ => Broker::Embedded,
        }
    }

    /// One line for the demo's header.
    pub fn describe(&self, plan: &Plan) -> String {
        match self {
            Broker::Embedded => format!(
                "queue:    embedded (in-process, manual acks, delivers again what is not acked \
                 within {} ms; set AMQP_URL=amqp://… to use RabbitMQ)",
                plan.ack_timeout.as_millis()
            ),
            Broker::Amqp(url) => {
                format!("queue:    RabbitMQ at {}, manual acks", amqp::redact(url))
            }
        }
    }
}

/// What one consumer process runs: `invoice_events --consume '<this as JSON>'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    /// The broker.
    pub amqp_url: String,
    /// The event queue.
    pub queue: String,
    /// The dead-letter queue.
    pub dlq: String,
    /// The table prefix of the run (in the database of `DATABASE_URL`).
    pub tables: String,
    /// The handler.
    pub mode: Mode,
    /// Deliveries handled at once.
    pub prefetch: u16,
    /// How long things take.
    pub timing: Timing,
    /// Injected faults.
    pub faults: Faults,
}

/// What a consumer process prints on stdout once it consumes, followed by the queue name (a test
/// harness may print before it on the same line).
pub const CONSUMING: &str = "invoice consumer ready: ";

/// A consumer process's main: the lock service and database from the environment (as
/// [`Setup::from_env`] reads them; `DATABASE_URL` is required), the rest from `config`. Returns
/// only on failure.
pub async fn consume_from_config(config: ConsumerConfig) -> Result<(), BoxError> {
    let setup = Setup::from_env();
    let DbSetup::Url(url) = &setup.db else {
        return Err(
            "a consumer process needs DATABASE_URL (the database shared with the others)".into(),
        );
    };
    let db = Db::open(url, Tables::new(&config.tables)).await?;
    let locks = setup.lock_managers(1).await?.remove(0);
    let service =
        InvoiceService::new(db, locks, config.mode, config.timing).with_faults(config.faults);
    amqp::consume(
        &config.amqp_url,
        &config.queue,
        &config.dlq,
        service,
        config.prefetch,
        || {
            use std::io::Write as _;
            println!("{CONSUMING}{}", config.queue);
            let _ = std::io::stdout().flush();
        },
    )
    .await
}

/// A consumer in a child process, killed (SIGKILL) on [`kill`](Self::kill) or drop.
#[derive(Debug)]
pub struct ConsumerProcess {
    child: Child,
}

impl ConsumerProcess {
    /// Runs `command` (which runs [`consume_from_config`]) and waits up to 30 s for its
    /// `invoice consumer ready: …` line.
    pub async fn spawn(command: Command) -> io::Result<ConsumerProcess> {
        let (child, _) =
            crate::setup::spawn_until(command, CONSUMING, "that it is consuming").await?;
        Ok(ConsumerProcess { child })
    }

    /// Its process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it with SIGKILL and waits for it to exit.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What a mode's run left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The handler.
    pub mode: Mode,
    /// Orders published.
    pub orders: usize,
    /// Invoices stored for them.
    pub invoices: i64,
    /// Invoices beyond one per order.
    pub duplicates: i64,
    /// Charges beyond one per order.
    pub charged_twice: i64,
    /// Writes that turned a paid invoice back into a draft.
    pub overwritten: i64,
    /// Orders without a paid invoice (lost events).
    pub unpaid: i64,
    /// Deliveries handled (bad messages included).
    pub deliveries: i64,
    /// Of which re-deliveries.
    pub redeliveries: i64,
    /// Skipped because another consumer held the order (requeued).
    pub skipped: i64,
    /// Dropped at the deadline (requeued).
    pub deadline: i64,
    /// Stale writes refused by the fence (counted by the database).
    pub refused: i64,
    /// Dead-lettered messages and their reasons.
    pub dead_letters: Vec<(Vec<u8>, String)>,
    /// Wall time until the consumers were stopped.
    pub elapsed: Duration,
}

impl Report {
    /// Whether every order has exactly one invoice, charged once, never overwritten.
    pub fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.charged_twice == 0 && self.overwritten == 0 && self.unpaid == 0
    }
}

/// The demo's table.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>6} {:>8} {:>10} {:>13} {:>11} {:>6}   {:>10} {:>12} {:>7} {:>8} {:>7}",
        "handler",
        "orders",
        "invoices",
        "duplicates",
        "charged twice",
        "overwritten",
        "unpaid",
        "deliveries",
        "redeliveries",
        "skipped",
        "deadline",
        "refused",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<15} {:>6} {:>8} {:>10} {:>13} {:>11} {:>6}   {:>10} {:>12} {:>7} {:>8} {:>7}",
            r.mode.name(),
            r.orders,
            r.invoices,
            r.duplicates,
            r.charged_twice,
            r.overwritten,
            r.unpaid,
            r.deliveries,
            r.redeliveries,
            r.skipped,
            r.deadline,
            r.refused,
        );
    }
    out
}

/// Counts what the database holds for orders `first..first + n`.
pub async fn count(
    db: &Db,
    tables: &InvoiceTables,
    first: i64,
    n: usize,
) -> Result<Counts, sqlx::Error> {
    let last = first + n as i64 - 1;
    let InvoiceTables {
        orders,
        invoices,
        deliveries,
    } = tables;
    let row = sqlx::query(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT order_id), \
         CAST(COALESCE(SUM(charges), 0) AS BIGINT), \
         CAST(COALESCE(SUM(overwritten), 0) AS BIGINT), \
         CAST(COALESCE(SUM(refused), 0) AS BIGINT) \
         FROM {invoices} WHERE order_id BETWEEN $1 AND $2"
    ))
    .bind(first)
    .bind(last)
    .fetch_one(db.pool())
    .await?;
    let charged: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(DISTINCT order_id) FROM {invoices} \
         WHERE order_id BETWEEN $1 AND $2 AND charges > 0"
    ))
    .bind(first)
    .bind(last)
    .fetch_one(db.pool())
    .await?;
    let unpaid: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {orders} o WHERE o.id BETWEEN $1 AND $2 AND NOT EXISTS \
         (SELECT 1 FROM {invoices} i WHERE i.order_id = o.id AND i.status = 'paid')"
    ))
    .bind(first)
    .bind(last)
    .fetch_one(db.pool())
    .await?;
    let log = sqlx::query(&format!(
        "SELECT outcome, COUNT(*), CAST(COALESCE(SUM(redelivered), 0) AS BIGINT) \
         FROM {deliveries} WHERE order_id IS NULL OR order_id BETWEEN $1 AND $2 GROUP BY outcome"
    ))
    .bind(first)
    .bind(last)
    .fetch_all(db.pool())
    .await?;
    let mut counts = Counts {
        invoices: row.try_get(0)?,
        duplicates: row.try_get::<i64, _>(0)? - row.try_get::<i64, _>(1)?,
        charged_twice: row.try_get::<i64, _>(2)? - charged,
        overwritten: row.try_get(3)?,
        refused: row.try_get(4)?,
        unpaid,
        ..Counts::default()
    };
    for row in log {
        let outcome: String = row.try_get(0)?;
        let n: i64 = row.try_get(1)?;
        counts.deliveries += n;
        counts.redeliveries += row.try_get::<i64, _>(2)?;
        match outcome.as_str() {
            "busy" => counts.skipped += n,
            "deadline" => counts.deadline += n,
            _ => {}
        }
    }
    Ok(counts)
}

/// The database's side of a [`Report`] (the fields mean the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Invoices stored.
    pub invoices: i64,
    /// Invoices beyond one per order.
    pub duplicates: i64,
    /// Charges beyond one per order.
    pub charged_twice: i64,
    /// Paid invoices rewritten as drafts.
    pub overwritten: i64,
    /// Orders without a paid invoice.
    pub unpaid: i64,
    /// Deliveries handled.
    pub deliveries: i64,
    /// Of which re-deliveries.
    pub redeliveries: i64,
    /// Skipped (order held elsewhere), requeued.
    pub skipped: i64,
    /// Dropped at the deadline, requeued.
    pub deadline: i64,
    /// Stale writes refused by the fence.
    pub refused: i64,
}

/// Waits until every order is paid, `pending()` says the queue is empty and the deliveries log
/// has not grown for `quiet` (a stalled consumer may still write late); gives up after `limit`.
pub async fn settle<F, Fut>(
    db: &Db,
    tables: &InvoiceTables,
    first: i64,
    n: usize,
    quiet: Duration,
    limit: Duration,
    mut pending: F,
) -> Result<Counts, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, BoxError>>,
{
    let start = Instant::now();
    let mut last: Option<(Counts, Instant)> = None;
    loop {
        let counts = count(db, tables, first, n).await?;
        let queued = pending().await?;
        let now = Instant::now();
        match last {
            Some((seen, since)) if seen == counts => {
                if counts.unpaid == 0 && queued == 0 && now - since >= quiet {
                    return Ok(counts);
                }
            }
            _ => last = Some((counts, now)),
        }
        if now - start > limit {
            return Err(format!(
                "the consumers did not settle within {limit:?}: {counts:?}, {queued} queued"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How to start a consumer process for a config (the demo re-executes itself with `--consume`).
pub type Spawner<'a> = &'a (dyn Fn(&ConsumerConfig) -> Command + Sync);

/// What a run adds to the plan.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Messages published after the events (bad ones, for the tests).
    pub messages: &'a [Vec<u8>],
    /// How to start consumer processes; `None`: consumers are tasks of this process.
    pub spawn: Option<Spawner<'a>>,
}

impl std::fmt::Debug for Extras<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("messages", &self.messages.len())
            .field("spawn", &self.spawn.is_some())
            .finish()
    }
}

/// Runs one mode: seeds orders `first..first + plan.orders` in `db`'s invoice tables (created
/// beforehand), starts the consumers, publishes every event `plan.copies` times (then
/// `extras.messages`), settles, stops the consumers, counts. With `extras.spawn`, the consumers
/// are processes (RabbitMQ and a database URL needed); otherwise tasks of this process.
pub async fn run_mode(
    setup: &Setup,
    broker: &Broker,
    db: &Db,
    mode: Mode,
    plan: &Plan,
    first: i64,
    extras: Extras<'_>,
) -> Result<Report, BoxError> {
    let Extras {
        messages: extra,
        spawn,
    } = extras;
    let tables = InvoiceTables::of(db);
    tables.seed(db, first, plan.orders).await?;
    let events: Vec<Vec<u8>> = (first..first + plan.orders as i64)
        .flat_map(|id| {
            (0..plan.copies).map(move |copy| {
                InvoiceEvent {
                    order_id: OrderId(id),
                    copy,
                }
                .to_bytes()
            })
        })
        .collect();
    let quiet = if plan.faults.one_in > 7 {
        plan.timing.stall + Duration::from_millis(700)
    } else {
        Duration::from_millis(700)
    };
    let limit = Duration::from_secs(120);
    let start = Instant::now();
    match broker {
        Broker::Embedded => {
            if spawn.is_some() {
                return Err("consumer processes need RabbitMQ (AMQP_URL)".into());
            }
            let queue = MemQueue::new(plan.ack_timeout);
            let mut consumers = JoinSet::new();
            for locks in setup.lock_managers(plan.consumers).await? {
                let service =
                    InvoiceService::new(db.connect_again().await?, locks, mode, plan.timing)
                        .with_faults(plan.faults);
                consumers.spawn(consume_mem(queue.clone(), service, plan.prefetch));
            }
            for payload in events.iter().chain(extra) {
                queue.publish(payload.as_slice());
            }
            let settled = settle(db, &tables, first, plan.orders, quiet, limit, || {
                let pending = queue.pending() as u64;
                async move { Ok(pending) }
            })
            .await;
            queue.close();
            consumers.abort_all();
            while consumers.join_next().await.is_some() {}
            let counts = settled?;
            Ok(report(
                mode,
                plan,
                counts,
                queue
                    .dead_letters()
                    .iter()
                    .map(|(p, r)| (p.to_vec(), r.clone()))
                    .collect(),
                start,
            ))
        }
        Broker::Amqp(url) => {
            let name = format!("invoice_{}{}", db.tables().prefix(), mode_tag(mode));
            let dlq = format!("{name}_dead");
            let queues = AmqpQueues::declare(url, &name, &dlq).await?;
            let result = async {
                let mut tasks = JoinSet::new();
                let mut processes = Vec::new();
                if let Some(spawn) = spawn {
                    let config = ConsumerConfig {
                        amqp_url: url.clone(),
                        queue: name.clone(),
                        dlq: dlq.clone(),
                        tables: db.tables().prefix().to_owned(),
                        mode,
                        prefetch: plan.prefetch,
                        timing: plan.timing,
                        faults: plan.faults,
                    };
                    for _ in 0..plan.consumers {
                        processes.push(ConsumerProcess::spawn(spawn(&config)).await?);
                    }
                } else {
                    for locks in setup.lock_managers(plan.consumers).await? {
                        let service = InvoiceService::new(
                            db.connect_again().await?,
                            locks,
                            mode,
                            plan.timing,
                        )
                        .with_faults(plan.faults);
                        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                        let (url, name, dlq, prefetch) =
                            (url.clone(), name.clone(), dlq.clone(), plan.prefetch);
                        tasks.spawn(async move {
                            amqp::consume(&url, &name, &dlq, service, prefetch, move || {
                                let _ = ready_tx.send(());
                            })
                            .await
                        });
                        ready_rx
                            .await
                            .map_err(|_| "a consumer failed to start (see its error above)")?;
                    }
                }
                for payload in events.iter().chain(extra) {
                    queues.publish(payload).await?;
                }
                let settled = settle(db, &tables, first, plan.orders, quiet, limit, || async {
                    Ok(u64::from(queues.ready().await?))
                })
                .await;
                tasks.abort_all();
                for process in processes {
                    process.kill().await;
                }
                let counts = settled?;
                let dead = queues.take_dead_letters().await?;
                Ok::<_, BoxError>(report(mode, plan, counts, dead, start))
            }
            .await;
            queues.delete().await?;
            result
        }
    }
}

fn mode_tag(mode: Mode) -> &'static str {
    match mode {
        Mode::Unguarded => "unguarded",
        Mode::Guarded => "guarded",
        Mode::Fenced => "fenced",
    }
}

fn report(
    mode: Mode,
    plan: &Plan,
    c: Counts,
    dead_letters: Vec<(Vec<u8>, String)>,
    start: Instant,
) -> Report {
    Report {
        mode,
        orders: plan.orders,
        invoices: c.invoices,
        duplicates: c.duplicates,
        charged_twice: c.charged_twice,
        overwritten: c.overwritten,
        unpaid: c.unpaid,
        deliveries: c.deliveries,
        redeliveries: c.redeliveries,
        skipped: c.skipped,
        deadline: c.deadline,
        refused: c.refused,
        dead_letters,
        elapsed: start.elapsed(),
    }
}

/// One consumer on the embedded queue: up to `prefetch` deliveries handled at once.
async fn consume_mem(queue: MemQueue, service: InvoiceService, prefetch: u16) {
    let slots = std::sync::Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
    let mut handlers = JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(delivery) = queue.receive().await else {
            return;
        };
        let (queue, service) = (queue.clone(), service.clone());
        handlers.spawn(async move {
            match service
                .handle(&delivery.payload, delivery.redelivered)
                .await
            {
                Disposition::Ack => queue.ack(delivery.tag),
                Disposition::Requeue => queue.requeue(delivery.tag),
                Disposition::DeadLetter(reason) => queue.dead_letter(delivery.tag, reason),
            };
            drop(slot);
        });
        while handlers.try_join_next().is_some() {}
    }
}
