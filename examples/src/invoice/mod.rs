//! The invoice service: "create invoice" events, consumed from a queue by several instances.
//!
//! An event names an order (`{"order_id": 17}`). Handling it walks the order's invoice through
//! explicit steps, resuming from wherever a previous delivery stopped:
//!
//! ```text
//!   no invoice ──compute amount──▶ create invoice (draft) ──pay──▶ paid
//!   draft      ──compute amount──▶ refresh the draft      ──pay──▶ paid
//!   paid       ──────────────────────────────────────────────────▶ nothing to do (ack)
//! ```
//!
//! A queue delivers an event **at least once**: again after a consumer died or outlived the
//! acknowledgement timeout, again when the publisher retried. Two deliveries of one order handled
//! at once both find no invoice and both create one, both pay, or one refreshes the draft the other
//! has just paid ("overwritten after payment"). The guarded handler
//! ([`InvoiceService::process`], `#[concurrency_guard(name = "invoice", wait = 0s, …)]` keyed by
//! the order id) runs one delivery per order at a time across every instance.
//!
//! # Skip, don't wait — and requeue rather than ack
//!
//! `wait = 0s`: a delivery whose order is being handled elsewhere does not queue behind the
//! holder, keeping a consumer slot (and its prefetched messages) busy for a whole step; it gives
//! up at once. It is then **requeued** (`basic.nack` with `requeue`, after a short back-off), not
//! acked: the copy in hand may be the only live one. A re-delivery usually exists *because* the
//! first delivery is no longer acknowledgeable (its consumer died or its channel timed out), so
//! if the holder fails after this copy was acked, the event would be lost. Requeued, it comes
//! back; once the holder has finished, the next delivery finds the invoice paid and is acked.
//! Waiting (`wait = 5s`) suits callers that need the result (an HTTP request); a queue consumer
//! needs only that the work happens once.
//!
//! # A step that outlives its lease
//!
//! The body runs under a deadline (two thirds of the lease): a step that is still running then is
//! dropped, its delivery requeued. What the deadline cannot stop is a write already on its way
//! when the holder stalls — a stop-the-world pause (GC, swap, a frozen VM) just before a
//! statement goes out, so that it reaches the database after the lease, after another consumer
//! has taken the order over. With `fenced`, every write carries the section's fencing token
//! ([`lock_guard::fence`]) and the database refuses a token smaller than the one stored for the
//! order (one small function, `InvoiceService::write`): the stale holder's write changes nothing.

pub mod amqp;
pub mod queue;
pub mod run;

use std::fmt;
use std::time::Duration;

use lock_guard::{Fence, LockError, LockManager, concurrency_guard};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Executor as _, Row as _};

use crate::db::{Db, DbKind};

/// The largest event accepted, in bytes; a larger one is dead-lettered unread.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// An order id: the lock key of the handler (`lock:{invoice:17}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub i64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The event: "create (and collect) the invoice of this order".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceEvent {
    /// The order.
    pub order_id: OrderId,
    /// Which publication of the event this is: `0` the first, `1…` the publisher's retries.
    #[serde(default)]
    pub copy: u32,
}

impl InvoiceEvent {
    /// The event as published.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Reads an event; a payload over [`MAX_PAYLOAD`] or that is not the event's JSON comes back as
/// the reason to dead-letter it.
pub fn parse_event(payload: &[u8]) -> Result<InvoiceEvent, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes, more than the {MAX_PAYLOAD} accepted",
            payload.len()
        ));
    }
    serde_json::from_slice(payload).map_err(|e| {
        let shown: String = String::from_utf8_lossy(&payload[..payload.len().min(40)]).into();
        format!("not an invoice event ({e}): {shown:?}")
    })
}

/// Which handler the consumers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The steps without the lock: the bug.
    Unguarded,
    /// The steps under `#[concurrency_guard(name = "invoice", wait = 0s, …)]`.
    Guarded,
    /// Guarded, and every write fenced with the section's token.
    Fenced,
}

impl Mode {
    /// Every mode, in the demo's order.
    pub const ALL: [Mode; 3] = [Mode::Unguarded, Mode::Guarded, Mode::Fenced];

    /// `unguarded`, `guarded`, `guarded+fenced`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Unguarded => "unguarded",
            Mode::Guarded => "guarded",
            Mode::Fenced => "guarded+fenced",
        }
    }
}

/// How long things take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// The lock's lease; the body's deadline is two thirds of it.
    pub lease: Duration,
    /// The work of each step (looking up prices, rendering the invoice, calling the PSP).
    pub step: Duration,
    /// A slow payment step (see [`Faults`]): longer than the deadline.
    pub slow_step: Duration,
    /// A stall just before the payment is written (see [`Faults`]): longer than the lease.
    pub stall: Duration,
    /// How long a delivery whose order is busy waits before it is requeued.
    pub busy_backoff: Duration,
}

impl Timing {
    /// The demo's timing: lease 1 s (deadline 667 ms), steps of 25 ms, a slow step of 1.5 s, a
    /// stall of 2 s, back-off 150 ms.
    pub const DEMO: Timing = Timing {
        lease: Duration::from_secs(1),
        step: Duration::from_millis(25),
        slow_step: Duration::from_millis(1_500),
        stall: Duration::from_secs(2),
        busy_backoff: Duration::from_millis(150),
    };
}

/// The faults the demo injects, on the first run of an order's steps only (the one that finds no
/// invoice yet): a re-delivery after the fault finds the draft and runs normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Faults {
    /// With `n > 7`: orders with `id % n == 3` have a slow payment step ([`Timing::slow_step`]),
    /// and orders with `id % n == 7` stall ([`Timing::stall`], blocking the thread as a
    /// stop-the-world pause does) just before their payment is written. `0`: no faults.
    pub one_in: i64,
}

impl Faults {
    /// Whether `order`'s payment step is slow.
    pub fn slow(&self, order: OrderId) -> bool {
        self.one_in > 7 && order.0.rem_euclid(self.one_in) == 3
    }

    /// Whether `order` stalls before writing its payment.
    pub fn stall(&self, order: OrderId) -> bool {
        self.one_in > 7 && order.0.rem_euclid(self.one_in) == 7
    }
}

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    /// The lock: busy (`wait = 0s`), deadline, lost, backend down.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The event names an order that does not exist.
    #[error("unknown order {0}")]
    UnknownOrder(OrderId),
    /// A fenced write was refused: a holder with a greater token wrote the order since.
    #[error("write for order {order} refused: token {token} is older than the order's fence")]
    Stale {
        /// The order.
        order: OrderId,
        /// The refused token.
        token: u64,
    },
}

/// What a delivery achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The steps ran to the end: the invoice is paid.
    Paid,
    /// The invoice was already paid: a duplicate, nothing done.
    AlreadyPaid,
}

/// What the consumer does with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// `basic.ack`: done.
    Ack,
    /// `basic.nack` with `requeue`: deliver it again later.
    Requeue,
    /// Publish it to the dead-letter queue with this reason, then ack it.
    DeadLetter(String),
}

/// The invoice tables of a run, named from the database's table prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceTables {
    /// `(id, amount_cents, fence)`: the orders; `fence` is the greatest token that wrote the order.
    pub orders: String,
    /// `(id, order_id, amount_cents, status, charges, overwritten, refused, applied)`: no
    /// `UNIQUE (order_id)`.
    pub invoices: String,
    /// `(id, order_id, outcome, redelivered)`: one row per handled delivery.
    pub deliveries: String,
}

impl InvoiceTables {
    /// The tables of `db` (`<prefix>inv_orders`, …).
    pub fn of(db: &Db) -> InvoiceTables {
        let p = db.tables().prefix();
        InvoiceTables {
            orders: format!("{p}inv_orders"),
            invoices: format!("{p}inv_invoices"),
            deliveries: format!("{p}inv_deliveries"),
        }
    }

    /// Creates them if missing.
    pub async fn create(&self, db: &Db) -> Result<(), sqlx::Error> {
        let id = match db.kind() {
            DbKind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            DbKind::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let InvoiceTables {
            orders,
            invoices,
            deliveries,
        } = self;
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {orders} (id BIGINT PRIMARY KEY, \
                 amount_cents BIGINT NOT NULL, fence BIGINT NOT NULL DEFAULT 0)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {invoices} (id {id}, order_id BIGINT NOT NULL, \
                 amount_cents BIGINT NOT NULL, status TEXT NOT NULL, \
                 charges BIGINT NOT NULL DEFAULT 0, overwritten BIGINT NOT NULL DEFAULT 0, \
                 refused BIGINT NOT NULL DEFAULT 0, applied BIGINT NOT NULL DEFAULT 1)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {invoices}_order ON {invoices} (order_id)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {deliveries} (id {id}, order_id BIGINT, \
                 outcome TEXT NOT NULL, redelivered BIGINT NOT NULL)"
            ),
        ] {
            db.pool().execute(statement.as_str()).await?;
        }
        Ok(())
    }

    /// Drops them.
    pub async fn drop_all(&self, db: &Db) -> Result<(), sqlx::Error> {
        for table in [&self.orders, &self.invoices, &self.deliveries] {
            db.pool()
                .execute(format!("DROP TABLE IF EXISTS {table}").as_str())
                .await?;
        }
        Ok(())
    }

    /// Inserts the orders `first..first + n`, 10.00 to 99.99 each.
    pub async fn seed(&self, db: &Db, first: i64, n: usize) -> Result<(), sqlx::Error> {
        let orders = &self.orders;
        let mut tx = db.pool().begin().await?;
        for id in first..first + n as i64 {
            sqlx::query(&format!(
                "INSERT INTO {orders} (id, amount_cents) VALUES ($1, $2)"
            ))
            .bind(id)
            .bind(1_000 + (id * 7_919).rem_euclid(9_000))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

/// Where an order's invoice stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NoInvoice,
    Draft { invoice: i64 },
    Paid,
}

/// One write of the steps.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Record the holder's token on the order (fenced handlers do it first).
    Claim,
    /// Insert the draft invoice.
    Create { amount: i64 },
    /// Rewrite the draft with a fresh amount.
    Refresh { invoice: i64, amount: i64 },
    /// Charge the customer and mark the invoice paid.
    Pay { invoice: i64 },
}

/// The service of one consumer: a database pool, the lock manager, the mode.
#[derive(Debug, Clone)]
pub struct InvoiceService {
    db: Db,
    tables: InvoiceTables,
    locks: LockManager,
    mode: Mode,
    timing: Timing,
    faults: Faults,
}

impl InvoiceService {
    /// A service on `db` (its invoice tables created beforehand), taking locks from `locks`.
    pub fn new(db: Db, locks: LockManager, mode: Mode, timing: Timing) -> InvoiceService {
        InvoiceService {
            tables: InvoiceTables::of(&db),
            db,
            locks,
            mode,
            timing,
            faults: Faults::default(),
        }
    }

    /// Injects `faults` (the demo's slow step and stall).
    pub fn with_faults(mut self, faults: Faults) -> InvoiceService {
        self.faults = faults;
        self
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Handles one delivery of `payload` and says what to do with it. `redelivered`: the queue
    /// delivered it before. Never panics on bad input: it is dead-lettered with the reason.
    pub async fn handle(&self, payload: &[u8], redelivered: bool) -> Disposition {
        let event = match parse_event(payload) {
            Ok(event) => event,
            Err(reason) => {
                self.log(None, "dead_letter", redelivered).await;
                return Disposition::DeadLetter(reason);
            }
        };
        let order = event.order_id;
        let result = match self.mode {
            Mode::Unguarded => self.steps(order, None).await,
            Mode::Guarded | Mode::Fenced => self.process(order).await,
        };
        let (outcome, disposition) = match &result {
            Ok(Handled::Paid) => ("paid", Disposition::Ack),
            Ok(Handled::AlreadyPaid) => ("already_paid", Disposition::Ack),
            Err(InvoiceError::UnknownOrder(_)) => (
                "dead_letter",
                Disposition::DeadLetter(format!("unknown order {order}")),
            ),
            Err(InvoiceError::Lock(LockError::NotAcquired { .. })) => {
                tokio::time::sleep(self.timing.busy_backoff).await;
                ("busy", Disposition::Requeue)
            }
            Err(InvoiceError::Lock(LockError::Deadline { .. })) => {
                ("deadline", Disposition::Requeue)
            }
            Err(InvoiceError::Stale { .. }) => ("stale_refused", Disposition::Requeue),
            Err(e) => {
                tracing::warn!(%order, error = %e, "invoice step failed; requeued");
                tokio::time::sleep(self.timing.busy_backoff).await;
                ("error", Disposition::Requeue)
            }
        };
        self.log(Some(order), outcome, redelivered).await;
        disposition
    }

    /// The handler: the steps under the order's lock. `wait = 0s`: when another delivery of the
    /// order is being handled, this one returns `LockError::NotAcquired` at once (and is
    /// requeued). With [`Mode::Fenced`] every write carries the section's fencing token.
    #[concurrency_guard(name = "invoice", wait = 0s, lease = self.timing.lease, locks = self.locks)]
    pub async fn process(&self, order: OrderId) -> Result<Handled, InvoiceError> {
        let fence = match self.mode {
            Mode::Fenced => Some(lock_guard::fence().await?),
            Mode::Unguarded | Mode::Guarded => None,
        };
        self.steps(order, fence.as_ref()).await
    }

    /// The state machine: compute amount → create (or refresh) the draft → pay.
    async fn steps(&self, order: OrderId, fence: Option<&Fence>) -> Result<Handled, InvoiceError> {
        let mut conn = self.db.pool().acquire().await?;
        let conn: &mut AnyConnection = &mut conn;
        let Some(order_amount) = self.order_amount(conn, order).await? else {
            return Err(InvoiceError::UnknownOrder(order));
        };
        if fence.is_some() {
            self.write(conn, order, Change::Claim, fence).await?;
        }
        let state = self.state(conn, order).await?;
        // The demo's faults hit the first run of an order's steps (no invoice yet), whichever
        // delivery it is.
        let first = state == State::NoInvoice;
        let invoice = match state {
            State::Paid => return Ok(Handled::AlreadyPaid),
            State::NoInvoice => {
                let amount = self.compute_amount(order_amount).await;
                self.write(conn, order, Change::Create { amount }, fence)
                    .await?
            }
            State::Draft { invoice } => {
                let amount = self.compute_amount(order_amount).await;
                self.write(conn, order, Change::Refresh { invoice, amount }, fence)
                    .await?
            }
        };
        // Step 3: charge through the payment provider, then record it.
        if first && self.faults.slow(order) {
            tokio::time::sleep(self.timing.slow_step).await;
        } else {
            tokio::time::sleep(self.timing.step).await;
        }
        if first && self.faults.stall(order) {
            // A stop-the-world pause right before the write goes out: this task is not polled,
            // so not even its deadline can act (the runtime's other tasks move to other threads).
            let stall = self.timing.stall;
            match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(|| std::thread::sleep(stall));
                }
                _ => std::thread::sleep(stall),
            }
        }
        self.write(conn, order, Change::Pay { invoice }, fence)
            .await?;
        Ok(Handled::Paid)
    }

    /// Step 1: the amount to invoice (the order's amount plus 20 % tax), after the step's work.
    async fn compute_amount(&self, order_amount: i64) -> i64 {
        tokio::time::sleep(self.timing.step).await;
        order_amount * 120 / 100
    }

    async fn order_amount(
        &self,
        conn: &mut AnyConnection,
        order: OrderId,
    ) -> Result<Option<i64>, sqlx::Error> {
        let orders = &self.tables.orders;
        sqlx::query_scalar(&format!("SELECT amount_cents FROM {orders} WHERE id = $1"))
            .bind(order.0)
            .fetch_optional(conn)
            .await
    }

    async fn state(&self, conn: &mut AnyConnection, order: OrderId) -> Result<State, sqlx::Error> {
        let invoices = &self.tables.invoices;
        let rows = sqlx::query(&format!(
            "SELECT id, status FROM {invoices} WHERE order_id = $1 ORDER BY id"
        ))
        .bind(order.0)
        .fetch_all(conn)
        .await?;
        let mut state = State::NoInvoice;
        for row in rows {
            let status: String = row.try_get(1)?;
            if status == "paid" {
                return Ok(State::Paid);
            }
            if state == State::NoInvoice {
                state = State::Draft {
                    invoice: row.try_get(0)?,
                };
            }
        }
        Ok(state)
    }

    /// Every write of the steps, and the only place the fence is checked: each is one statement
    /// that applies only while the holder's token is at least the order's fence (the greatest
    /// token recorded by [`Change::Claim`]), so a holder whose lease ended — its order since
    /// claimed with a greater token — changes nothing, whenever its statement arrives. A refused
    /// update of an invoice counts itself in the invoice's `refused` column (the holder may never
    /// hear of it: its deadline has usually dropped it by then). Unguarded and unfenced writes
    /// carry token 0, which passes against the fence 0 of an order no fenced holder touched.
    /// Returns the invoice written; a refused write is [`InvoiceError::Stale`].
    ///
    /// One statement, so that a write sent just before a stall is checked when it arrives. On
    /// PostgreSQL a claim and a stale write committing in the same instant can still interleave
    /// under `READ COMMITTED`; a fenced transaction that locks a fence row (SPEC S17) closes that.
    async fn write(
        &self,
        conn: &mut AnyConnection,
        order: OrderId,
        change: Change,
        fence: Option<&Fence>,
    ) -> Result<i64, InvoiceError> {
        let token = fence.map_or(0, Fence::token);
        let t = i64::try_from(token).map_err(|_| InvoiceError::Stale { order, token })?;
        let InvoiceTables {
            orders, invoices, ..
        } = &self.tables;
        // The fence check: the holder's token against the order's fence.
        let ok = format!("($1 >= (SELECT fence FROM {orders} WHERE id = $2))");
        let written = match change {
            Change::Claim => sqlx::query(&format!(
                "UPDATE {orders} SET fence = $1 WHERE id = $2 AND fence <= $3"
            ))
            .bind(t)
            .bind(order.0)
            .bind(t)
            .execute(conn)
            .await?
            .rows_affected()
            .eq(&1)
            .then_some(0),
            Change::Create { amount } => {
                sqlx::query_scalar(&format!(
                    "INSERT INTO {invoices} (order_id, amount_cents, status) \
                 SELECT $3, $4, 'created' WHERE {ok} RETURNING id"
                ))
                .bind(t)
                .bind(order.0)
                .bind(order.0)
                .bind(amount)
                .fetch_optional(conn)
                .await?
            }
            Change::Refresh { invoice, amount } => sqlx::query_scalar::<_, i64>(&format!(
                "UPDATE {invoices} SET \
                 overwritten = overwritten + CASE WHEN {ok} AND status = 'paid' THEN 1 ELSE 0 END, \
                 amount_cents = CASE WHEN {ok} THEN $3 ELSE amount_cents END, \
                 status = CASE WHEN {ok} THEN 'created' ELSE status END, \
                 refused = refused + CASE WHEN {ok} THEN 0 ELSE 1 END, \
                 applied = CASE WHEN {ok} THEN 1 ELSE 0 END \
                 WHERE id = $4 RETURNING applied"
            ))
            .bind(t)
            .bind(order.0)
            .bind(amount)
            .bind(invoice)
            .fetch_optional(conn)
            .await?
            .filter(|applied| *applied == 1)
            .map(|_| invoice),
            Change::Pay { invoice } => sqlx::query_scalar::<_, i64>(&format!(
                "UPDATE {invoices} SET \
                 charges = charges + CASE WHEN {ok} THEN 1 ELSE 0 END, \
                 status = CASE WHEN {ok} THEN 'paid' ELSE status END, \
                 refused = refused + CASE WHEN {ok} THEN 0 ELSE 1 END, \
                 applied = CASE WHEN {ok} THEN 1 ELSE 0 END \
                 WHERE id = $3 RETURNING applied"
            ))
            .bind(t)
            .bind(order.0)
            .bind(invoice)
            .fetch_optional(conn)
            .await?
            .filter(|applied| *applied == 1)
            .map(|_| invoice),
        };
        written.ok_or(InvoiceError::Stale { order, token })
    }

    /// Records a handled delivery (best effort: the log is for the report).
    async fn log(&self, order: Option<OrderId>, outcome: &str, redelivered: bool) {
        let deliveries = &self.tables.deliveries;
        let result = sqlx::query(&format!(
            "INSERT INTO {deliveries} (order_id, outcome, redelivered) VALUES ($1, $2, $3)"
        ))
        .bind(order.map(|o| o.0))
        .bind(outcome)
        .bind(i64::from(redelivered))
        .execute(self.db.pool())
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not log a delivery");
        }
    }
}
