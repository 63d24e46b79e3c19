//! Fenced transactions: a database transaction that can only commit while its lock's fencing
//! token is the newest the database has seen for that key (features `sqlx-postgres`,
//! `sqlx-sqlite`, `sqlx-any`; sqlx 0.8).
//!
//! Inside a guarded body, [`begin`] opens a transaction exactly as sqlx's `begin` does (on a pool,
//! a `&mut` connection, or anything else that is [`sqlx::Acquire`]), and runs one
//! statement first: an upsert of the section's lock key and fencing token into a fence table,
//! which succeeds only if no greater token is recorded for that key.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use lock_guard::{LockKey, LockManager, LockOptions};
//! use sqlx::sqlite::SqlitePoolOptions;
//!
//! // One connection: each connection to `sqlite::memory:` is a database of its own.
//! let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//! lock_guard::sqlx::ensure(&pool).await?; // or the migration in the module docs
//! sqlx::query("CREATE TABLE keywords (user_id INTEGER, keyword TEXT)").execute(&pool).await?;
//!
//! let locks = LockManager::memory();
//! let key = LockKey::new("keyword").part(7);
//! locks
//!     .run(&key, LockOptions::new(), async {
//!         let mut tx = lock_guard::sqlx::begin(&pool).await?;
//!         let found: Option<i64> =
//!             sqlx::query_scalar("SELECT 1 FROM keywords WHERE user_id = 7 AND keyword = 'rust'")
//!                 .fetch_optional(&mut *tx)
//!                 .await?;
//!         if found.is_none() {
//!             sqlx::query("INSERT INTO keywords VALUES (7, 'rust')").execute(&mut *tx).await?;
//!         }
//!         tx.commit().await?;
//!         Ok::<_, lock_guard::sqlx::FenceError>(())
//!     })
//!     .await?;
//!
//! // Outside a guarded body there is no lock to fence with: an error, not a panic.
//! let outside = lock_guard::sqlx::begin(&pool).await;
//! assert!(matches!(outside, Err(lock_guard::sqlx::FenceError::Lock(lock_guard::LockError::NotHeld { .. }))));
//! # Ok(())
//! # }
//! ```
//!
//! With `#[concurrency_guard]` the body is the function: `let mut tx =
//! lock_guard::sqlx::begin(&pool).await?;` is the only line that changes (give your error type a
//! `From<FenceError>`). With a [`LockGuard`] taken by hand, use [`begin_with`]`(&guard, &pool)`.
//!
//! # What it guarantees
//!
//! The lock alone makes holders take turns as long as every holder stops writing before its lease
//! ends. A fenced transaction also covers the cases where one does not: a `COMMIT` still in flight
//! when the body's deadline dropped it, a process frozen between its last clock check and its
//! `COMMIT` (a GC or VM pause, `SIGSTOP`), a lock lost when Redis failed over or restarted. For the
//! rows a fenced transaction touches, the committed history is the same as if the holders had run
//! one after another in token order:
//!
//! - the fence row of the key stays locked by the transaction until it commits or rolls back, so a
//!   newer holder's fence waits for an older transaction still in flight, and then sees its
//!   writes;
//! - an older holder whose fence arrives after a newer one's is refused
//!   ([`FenceError::Refused`], naming the key, its token and the newer one) and its transaction is
//!   rolled back;
//! - the section's remaining time becomes the database's own limits, so a transaction whose client
//!   froze is ended by the server, not left holding the fence row (see below).
//!
//! Conditions: the rows are read and written inside the fenced transaction, the fence table is in
//! the same database (so it commits with them), every writer of those rows fences under the same
//! lock key, and the isolation level is PostgreSQL's default `READ COMMITTED` (under `REPEATABLE
//! READ` or `SERIALIZABLE`, a fence that waited for an older transaction fails with a serialization
//! error instead: safe, but an error) — or SQLite, where writers are serialized anyway.
//!
//! # The database's own time limits
//!
//! From the section's deadline ([`section_deadline`](crate::section_deadline) inside a guarded
//! body, [`LockGuard::valid_until`] with a guard), the time left is set, in the same statement as
//! the fence (one round trip after `BEGIN`, prepared once per connection on PostgreSQL), as:
//!
//! - PostgreSQL: `SET LOCAL statement_timeout`, `lock_timeout` and
//!   `idle_in_transaction_session_timeout` (for this transaction only). A client that froze inside
//!   the transaction loses its session at the deadline, which rolls the transaction back and frees
//!   the fence row for the next holder.
//! - SQLite: `PRAGMA busy_timeout` (for the connection: it stays set until the next fenced
//!   `begin` on it). SQLite has no server to end a frozen client's transaction: a writer frozen
//!   inside one holds the database's write lock until it wakes (its commit then goes through or
//!   fails, but never after a newer holder's, which waited or failed with `SQLITE_BUSY`).
//!
//! [`Fencing::time_limits`]`(false)` leaves them out. With `lease = watchdog` the limit is the
//! validity at `begin`; a transaction longer than one renewal period needs them off.
//!
//! # The fence table
//!
//! One row per lock key (`lock_key`, `token`, `updated_at`): it grows with the keys used, not with
//! traffic. [`ensure`] creates it if missing (handy for tests and quick starts); in production,
//! add it with your migrations ([`Fencing::migration`] gives the statement):
//!
//! ```sql
//! -- PostgreSQL
//! CREATE TABLE IF NOT EXISTS lock_guard_fences (
//!     lock_key   TEXT PRIMARY KEY,
//!     token      BIGINT NOT NULL,
//!     updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
//! );
//! -- SQLite
//! CREATE TABLE IF NOT EXISTS lock_guard_fences (
//!     lock_key   TEXT PRIMARY KEY NOT NULL,
//!     token      INTEGER NOT NULL,
//!     updated_at INTEGER NOT NULL
//! );
//! ```
//!
//! The name (optionally `schema.table`) is set with [`Fencing::table`]. **Pruning:** a row may be
//! deleted once no section that read a token for its key can still begin a fenced transaction —
//! e.g. `DELETE FROM lock_guard_fences WHERE updated_at < now() - interval '1 day'` when no
//! section runs (or stays frozen) for a day. Deleting a row earlier lets a stale holder of that
//! key in again.
//!
//! # Why a feature of `lock-guard`, not a crate of its own
//!
//! [`begin`] reads the section of the calling task — the same task-local context that
//! [`fence`](crate::fence) and reentrancy use — so it lives in the crate that owns that context,
//! and `lock_guard::sqlx::begin` reads like sqlx's own `begin`. Without the features, nothing of
//! sqlx is compiled.

use std::borrow::Cow;
use std::time::Duration;

use ::sqlx::{Acquire, Transaction};
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::{Fence, LockError, LockGuard};

/// The default name of the fence table.
pub const DEFAULT_TABLE: &str = "lock_guard_fences";

/// Why a fenced transaction did not begin.
///
/// Convert it into your error type with `From`; [`key`](Self::key) names the lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// No lock to fence with ([`LockError::NotHeld`] outside a guarded body), or the lock backend
    /// failed while the token was read.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The database failed: connection, a time limit reached while waiting for an older holder's
    /// transaction, … The transaction was rolled back.
    #[error("database: {0}")]
    Database(#[from] ::sqlx::Error),
    /// A later holder of the lock already recorded a newer token: this section's lock was lost (it
    /// expired while the holder was paused, or Redis lost it). The transaction was rolled back;
    /// nothing of it is written.
    #[error(
        "fenced transaction for lock `{key}` refused: its token {token} is older than {newer}, \
         recorded by a later holder; the transaction was rolled back"
    )]
    Refused {
        /// The lock key (the Redis key, e.g. `lock:{keyword:42}`).
        key: String,
        /// This section's token.
        token: u64,
        /// The newer token the fence table holds.
        newer: u64,
    },
    /// The section's deadline had passed before the transaction began: nothing was written.
    #[error("the section of lock `{key}` reached its deadline before the fenced transaction began")]
    Expired {
        /// The lock key.
        key: String,
    },
    /// The fence table name is not `table` or `schema.table` made of ASCII letters, digits and
    /// `_` (not starting with a digit, at most 63 characters each).
    #[error("invalid fence table name `{name}`: {reason}")]
    InvalidTable {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The database behind `sqlx::Any` is not one fenced transactions support.
    #[error(
        "fenced transactions do not support the `{backend}` database (PostgreSQL and SQLite do)"
    )]
    Unsupported {
        /// The backend's name.
        backend: String,
    },
}

impl FenceError {
    /// `true` for [`FenceError::Refused`]: a newer holder came first.
    pub fn is_refused(&self) -> bool {
        matches!(self, FenceError::Refused { .. })
    }

    /// The lock key the error concerns, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            FenceError::Refused { key, .. } | FenceError::Expired { key } => Some(key),
            FenceError::Lock(e) => e.key(),
            _ => None,
        }
    }
}

/// The SQL dialects fenced transactions speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

mod sealed {
    pub trait Sealed {}
}

/// A sqlx database fenced transactions work on: [`Postgres`](::sqlx::Postgres) (feature
/// `sqlx-postgres`), [`Sqlite`](::sqlx::Sqlite) (`sqlx-sqlite`), [`Any`](::sqlx::Any) on either
/// (`sqlx-any`). Sealed.
pub trait FencedDatabase: ::sqlx::Database + sealed::Sealed {
    #[doc(hidden)]
    fn __dialect(conn: &Self::Connection) -> Result<Dialect, FenceError>;

    /// Runs `sql` (one or more statements, no parameters) and returns the first column of every
    /// row, as integers.
    #[doc(hidden)]
    fn __integers<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<Vec<i64>, ::sqlx::Error>>;

    /// Runs the prepared statement `sql` with `$1` = `key`, `$2` = `token` and, when given,
    /// `$3` = `limit` (milliseconds, as text); returns the first column of every row.
    #[doc(hidden)]
    fn __prepared<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        key: &'c str,
        token: i64,
        limit: Option<String>,
    ) -> BoxFuture<'c, Result<Vec<i64>, ::sqlx::Error>>;
}

#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-sqlite",
    feature = "sqlx-any"
))]
macro_rules! integers {
    () => {
        fn __integers<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
        ) -> BoxFuture<'c, Result<Vec<i64>, ::sqlx::Error>> {
            use ::sqlx::Row as _;
            use futures_util::FutureExt as _;
            ::sqlx::Executor::fetch_all(conn, ::sqlx::raw_sql(sql))
                .map(|rows| rows?.iter().map(|row| row.try_get::<i64, _>(0)).collect())
                .boxed()
        }

        fn __prepared<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            key: &'c str,
            token: i64,
            limit: Option<String>,
        ) -> BoxFuture<'c, Result<Vec<i64>, ::sqlx::Error>> {
            use ::sqlx::Row as _;
            use futures_util::FutureExt as _;
            let query = ::sqlx::query(sql).bind(key).bind(token);
            let query = match limit {
                Some(ms) => query.bind(ms),
                None => query,
            };
            ::sqlx::Executor::fetch_all(conn, query)
                .map(|rows| rows?.iter().map(|row| row.try_get::<i64, _>(0)).collect())
                .boxed()
        }
    };
}

#[cfg(feature = "sqlx-postgres")]
impl sealed::Sealed for ::sqlx::Postgres {}
#[cfg(feature = "sqlx-postgres")]
impl FencedDatabase for ::sqlx::Postgres {
    fn __dialect(_: &Self::Connection) -> Result<Dialect, FenceError> {
        Ok(Dialect::Postgres)
    }
    integers!();
}

#[cfg(feature = "sqlx-sqlite")]
impl sealed::Sealed for ::sqlx::Sqlite {}
#[cfg(feature = "sqlx-sqlite")]
impl FencedDatabase for ::sqlx::Sqlite {
    fn __dialect(_: &Self::Connection) -> Result<Dialect, FenceError> {
        Ok(Dialect::Sqlite)
    }
    integers!();
}

#[cfg(feature = "sqlx-any")]
impl sealed::Sealed for ::sqlx::Any {}
#[cfg(feature = "sqlx-any")]
impl FencedDatabase for ::sqlx::Any {
    fn __dialect(conn: &Self::Connection) -> Result<Dialect, FenceError> {
        match conn.backend_name() {
            "PostgreSQL" => Ok(Dialect::Postgres),
            "SQLite" => Ok(Dialect::Sqlite),
            other => Err(FenceError::Unsupported {
                backend: other.to_owned(),
            }),
        }
    }
    integers!();
}

/// How fenced transactions are made: the fence table's name, and whether the section's deadline
/// becomes the database's time limits. [`begin`], [`begin_with`] and [`ensure`] use
/// `Fencing::new()`.
///
/// ```
/// let fencing = lock_guard::sqlx::Fencing::new().table("app.lock_fences");
/// # let _ = fencing;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fencing {
    table: Cow<'static, str>,
    time_limits: bool,
}

impl Default for Fencing {
    fn default() -> Self {
        Fencing::new()
    }
}

impl Fencing {
    /// The table [`DEFAULT_TABLE`], time limits on.
    pub const fn new() -> Self {
        Fencing {
            table: Cow::Borrowed(DEFAULT_TABLE),
            time_limits: true,
        }
    }

    /// Uses the fence table `name` (`table` or `schema.table`); checked when used
    /// ([`FenceError::InvalidTable`]).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Cow::Owned(name.into());
        self
    }

    /// Whether the transaction carries the section's remaining time as the database's time limits
    /// (default `true`; see the [module docs](self)).
    pub fn time_limits(mut self, on: bool) -> Self {
        self.time_limits = on;
        self
    }

    /// The fence table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Inside a guarded body: begins a transaction on `conn` fenced by the body's lock. See
    /// [`begin`].
    pub async fn begin<'c, A>(&self, conn: A) -> Result<Transaction<'c, A::Database>, FenceError>
    where
        A: Acquire<'c>,
        A::Database: FencedDatabase,
    {
        let fence = crate::fence().await.map_err(|e| match e {
            LockError::NotHeld { .. } => LockError::NotHeld {
                what: "lock_guard::sqlx::begin",
            },
            // E.g. the lock found lost when the token was read: passed on as it is.
            other => other,
        })?;
        let deadline = crate::section_deadline();
        self.begin_fenced(fence, deadline, conn).await
    }

    /// Begins a transaction on `conn` fenced by `guard`'s lock. See [`begin_with`].
    pub async fn begin_with<'c, A>(
        &self,
        guard: &LockGuard,
        conn: A,
    ) -> Result<Transaction<'c, A::Database>, FenceError>
    where
        A: Acquire<'c>,
        A::Database: FencedDatabase,
    {
        let fence = guard.fence().await?;
        self.begin_fenced(fence, Some(guard.valid_until()), conn)
            .await
    }

    /// Creates the fence table if it does not exist.
    pub async fn ensure<'c, A>(&self, conn: A) -> Result<(), FenceError>
    where
        A: Acquire<'c>,
        A::Database: FencedDatabase,
    {
        let mut conn = conn.acquire().await?;
        let dialect = A::Database::__dialect(&*conn)?;
        let sql = self.migration(dialect)?;
        A::Database::__integers(&mut *conn, &sql).await?;
        Ok(())
    }

    /// The statement that creates the fence table in `dialect` (for your migrations).
    ///
    /// ```
    /// use lock_guard::sqlx::{Dialect, Fencing};
    /// let sql = Fencing::new().migration(Dialect::Postgres).unwrap();
    /// assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS lock_guard_fences"));
    /// ```
    pub fn migration(&self, dialect: Dialect) -> Result<String, FenceError> {
        let t = self.checked_table()?;
        Ok(match dialect {
            Dialect::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {t} (lock_key TEXT PRIMARY KEY, token BIGINT NOT NULL, \
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {t} (lock_key TEXT PRIMARY KEY NOT NULL, token INTEGER \
                 NOT NULL, updated_at INTEGER NOT NULL)"
            ),
        })
    }

    fn checked_table(&self) -> Result<&str, FenceError> {
        let name = &*self.table;
        let bad = |reason| FenceError::InvalidTable {
            name: name.to_owned(),
            reason,
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(bad("at most one `.` (schema.table)"));
        }
        for part in parts {
            if part.is_empty() || part.len() > 63 {
                return Err(bad("each part must have 1 to 63 characters"));
            }
            if part.as_bytes()[0].is_ascii_digit() {
                return Err(bad("a name must not start with a digit"));
            }
            if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(bad("only ASCII letters, digits and `_` are allowed"));
            }
        }
        Ok(name)
    }

    async fn begin_fenced<'c, A>(
        &self,
        fence: Fence,
        deadline: Option<Instant>,
        conn: A,
    ) -> Result<Transaction<'c, A::Database>, FenceError>
    where
        A: Acquire<'c>,
        A::Database: FencedDatabase,
    {
        let table = self.checked_table()?;
        let key = fence.key().to_owned();
        let token = i64::try_from(fence.token()).map_err(|_| FenceError::InvalidTable {
            name: table.to_owned(),
            reason: "the token does not fit a BIGINT column",
        })?;
        let limit = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(FenceError::Expired { key });
                }
                self.time_limits.then_some(left)
            }
            None => None,
        };
        let mut tx = conn.begin().await?;
        let dialect = A::Database::__dialect(&*tx)?;
        let accepted = match dialect {
            Dialect::Postgres => {
                // One prepared statement (cached per connection): the limits and the upsert.
                let sql = pg_fence_sql(table, limit.is_some());
                let ms = limit.map(|l| l.as_millis().clamp(1, i32::MAX as u128).to_string());
                A::Database::__prepared(&mut *tx, &sql, &key, token, ms).await?
            }
            Dialect::Sqlite => {
                let sql = sqlite_fence_sql(table, &key, token, limit);
                A::Database::__integers(&mut *tx, &sql).await?
            }
        };
        if accepted.is_empty() {
            let sql = stored_sql(dialect, table, &key);
            let stored = A::Database::__integers(&mut *tx, &sql).await;
            // Nothing was written: roll back now (dropping would too, later).
            let _ = tx.rollback().await;
            let newer = stored?.first().copied().unwrap_or(i64::MAX);
            return Err(FenceError::Refused {
                key,
                token: fence.token(),
                newer: u64::try_from(newer).unwrap_or(0),
            });
        }
        tracing::debug!(key = %key, fencing_token = fence.token(), ?limit, "fenced transaction began");
        Ok(tx)
    }
}

/// Inside a guarded body (`#[concurrency_guard]` or [`LockManager::run`](crate::LockManager::run)):
/// begins a transaction on `conn` — a `&Pool`, a `&mut` connection, anything sqlx's `begin`
/// accepts through [`Acquire`] — whose first statement records the body's lock key and fencing
/// token in the fence table [`DEFAULT_TABLE`]. See the [module docs](self) for what it
/// guarantees.
///
/// Errors: outside a guarded body, [`FenceError::Lock`]`(`[`LockError::NotHeld`]`)`; a newer
/// token already recorded for the key, [`FenceError::Refused`] (rolled back); the section's
/// deadline already past, [`FenceError::Expired`]; the database, [`FenceError::Database`].
///
/// Given a connection already in a transaction (`&mut tx`), the fenced transaction is a savepoint
/// of it, and the fence row stays locked until the outer transaction ends.
pub async fn begin<'c, A>(conn: A) -> Result<Transaction<'c, A::Database>, FenceError>
where
    A: Acquire<'c>,
    A::Database: FencedDatabase,
{
    Fencing::new().begin(conn).await
}

/// Begins a transaction on `conn` fenced by `guard`'s lock (its key, its token, and its
/// [`valid_until`](LockGuard::valid_until) as the time limits), for locks taken with
/// [`LockManager::lock`](crate::LockManager::lock).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use lock_guard::{LockKey, LockManager, LockOptions};
///
/// let pool = sqlx::sqlite::SqlitePoolOptions::new()
///     .max_connections(1)
///     .connect("sqlite::memory:")
///     .await?;
/// lock_guard::sqlx::ensure(&pool).await?;
/// let locks = LockManager::memory();
/// let guard = locks.lock(&LockKey::new("invoice").part(42), LockOptions::new()).await?;
/// let tx = lock_guard::sqlx::begin_with(&guard, &pool).await?;
/// tx.commit().await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub async fn begin_with<'c, A>(
    guard: &LockGuard,
    conn: A,
) -> Result<Transaction<'c, A::Database>, FenceError>
where
    A: Acquire<'c>,
    A::Database: FencedDatabase,
{
    Fencing::new().begin_with(guard, conn).await
}

/// Creates the fence table [`DEFAULT_TABLE`] if it does not exist (see [`Fencing::migration`]
/// for the statement, and [`Fencing::table`] for another name).
pub async fn ensure<'c, A>(conn: A) -> Result<(), FenceError>
where
    A: Acquire<'c>,
    A::Database: FencedDatabase,
{
    Fencing::new().ensure(conn).await
}

/// PostgreSQL's fence, one statement with parameters (`$1` key, `$2` token, `$3` the limit in
/// ms as text): the time limits set for the rest of the transaction (`set_config(…, true)` is
/// `SET LOCAL`; `lock_timeout` already bounds this statement's wait for the row), then the upsert
/// that decides.
fn pg_fence_sql(table: &str, limits: bool) -> String {
    let upsert = format!(
        "INSERT INTO {table} AS f (lock_key, token, updated_at) {{source}} \
         ON CONFLICT (lock_key) DO UPDATE SET token = EXCLUDED.token, updated_at = EXCLUDED.updated_at \
         WHERE f.token <= EXCLUDED.token RETURNING f.token"
    );
    if limits {
        format!(
            "WITH limits AS (SELECT set_config('lock_timeout', $3, true) AS l, \
             set_config('statement_timeout', $3, true) AS s, \
             set_config('idle_in_transaction_session_timeout', $3, true) AS i) {}",
            upsert.replace("{source}", "SELECT $1, $2, now() FROM limits")
        )
    } else {
        upsert.replace("{source}", "VALUES ($1, $2, now())")
    }
}

/// SQLite's fence as literals in one batch: the busy timeout, then the upsert that decides.
fn sqlite_fence_sql(table: &str, key: &str, token: i64, limit: Option<Duration>) -> String {
    let mut sql = String::new();
    if let Some(limit) = limit {
        let ms = limit.as_millis().clamp(1, i32::MAX as u128);
        sql.push_str(&format!("PRAGMA busy_timeout = {ms}; "));
    }
    let key = sqlite_literal(key);
    sql.push_str(&format!(
        "INSERT INTO {table} AS f (lock_key, token, updated_at) \
         VALUES ({key}, {token}, CAST(strftime('%s', 'now') AS INTEGER)) \
         ON CONFLICT (lock_key) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at \
         WHERE f.token <= excluded.token RETURNING token"
    ));
    sql
}

fn stored_sql(dialect: Dialect, table: &str, key: &str) -> String {
    let key = match dialect {
        Dialect::Postgres => pg_literal(key),
        Dialect::Sqlite => sqlite_literal(key),
    };
    format!("SELECT token FROM {table} WHERE lock_key = {key}")
}

/// `s` dollar-quoted with a tag it does not contain: no escaping rule of the server applies.
fn pg_literal(s: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = format!("$lg{n}$");
        if !s.contains(&tag) && !s.ends_with(&tag[..tag.len() - 1]) {
            return format!("{tag}{s}{tag}");
        }
        n += 1;
    }
}

/// `s` as an SQLite string literal (quotes doubled; SQLite has no backslash escapes).
fn sqlite_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_survive_quotes_and_tags() {
        assert_eq!(sqlite_literal("a'b"), "'a''b'");
        assert_eq!(pg_literal("lock:{k:1}"), "$lg0$lock:{k:1}$lg0$");
        assert_eq!(pg_literal("x$lg0$y"), "$lg1$x$lg0$y$lg1$");
        // A key ending in the start of the tag would merge with the closing tag.
        assert_eq!(pg_literal("x$lg0"), "$lg1$x$lg0$lg1$");
    }

    #[test]
    fn table_names_are_checked() {
        for good in ["fences", "app.fences", "_f1"] {
            assert!(Fencing::new().table(good).checked_table().is_ok(), "{good}");
        }
        for bad in ["", "1f", "a.b.c", "f; DROP TABLE x", "a.", "f-1", "fénce"] {
            let err = Fencing::new().table(bad).checked_table().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
