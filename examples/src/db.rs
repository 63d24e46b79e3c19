//! The database of the examples: an embedded SQLite, or PostgreSQL, through `sqlx::Any`, so that
//! one service code runs on both.
//!
//! The tables deliberately have **no** `UNIQUE` constraint on what the services deduplicate
//! (`(user_id, keyword)`, a match per pair): the point of the demos is what a check-then-insert
//! does without one, with and without the lock.
//!
//! # The embedded database
//!
//! An in-memory SQLite database in shared-cache mode, named per run, with
//! `PRAGMA read_uncommitted = true`. Why not a plain SQLite file? SQLite allows one writer at a
//! time: two read-then-write transactions that overlap abort each other (`SQLITE_BUSY`, "database
//! is locked") whoever the rows belong to, so concurrent requests of *different* users would fail
//! too, guard or no guard. In shared-cache mode with `read_uncommitted`, readers take no table
//! locks and a second writer waits for the first one's commit (sqlx waits with
//! `sqlite3_unlock_notify`) instead of aborting: the database behaves for this workload as
//! PostgreSQL does under its default `READ COMMITTED` isolation — two check-then-inserts of the same
//! row both find nothing and both insert. That is the race the lock removes.
//!
//! Fenced transactions (`lock_guard::sqlx`, the demos' "fenced" phase) record their token in the
//! fence table [`Tables::fences`]. In shared-cache mode SQLite locks whole tables, so on the
//! embedded database every fenced transaction holds the one fence table until it commits: fenced
//! calls of *different* keys take turns there (on PostgreSQL only the key's row is locked). Read
//! uncommitted also means a `COMMIT` that lands late (`--stall-commit`) cannot show a duplicate on
//! the embedded database: the next holder already sees the uncommitted row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor as _};

/// Connections per pool, i.e. per app instance.
const POOL_SIZE: u32 = 16;

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// The embedded SQLite (see the module docs).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The table names of one run: `<prefix>keywords`, `<prefix>likes`, `<prefix>matches`,
/// `<prefix>chat_rooms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    prefix: String,
    /// `(id, user_id, keyword)`: the keywords users subscribed to.
    pub keywords: String,
    /// `(id, from_user, to_user)`: who liked whom.
    pub likes: String,
    /// `(id, user_a, user_b)` with `user_a < user_b`: mutual likes.
    pub matches: String,
    /// `(id, match_id)`: one chat room per match.
    pub chat_rooms: String,
    /// The fence table of the fenced transactions (`lock_guard::sqlx`).
    pub fences: String,
}

impl Tables {
    /// The tables named with `prefix`, which must be made of `[a-z0-9_]` (it is pasted into SQL).
    ///
    /// # Panics
    ///
    /// On any other character.
    pub fn new(prefix: &str) -> Tables {
        assert!(
            prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "table prefix `{prefix}` may hold only a-z, 0-9 and _"
        );
        Tables {
            prefix: prefix.to_owned(),
            keywords: format!("{prefix}keywords"),
            likes: format!("{prefix}likes"),
            matches: format!("{prefix}matches"),
            chat_rooms: format!("{prefix}chat_rooms"),
            fences: format!("{prefix}fences"),
        }
    }

    /// The prefix the tables were named with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A prefix no other run uses: `demo_<pid>_<counter>_<millis>_`.
pub fn unique_prefix() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 100_000_000);
    format!(
        "demo_{}_{}_{millis}_",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// A connection pool to the examples' database, and the names of its tables. Cheap to clone.
///
/// Each app instance opens its own pool ([`Db::connect_again`]), as separate servers would.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    kind: DbKind,
    url: Arc<str>,
    tables: Arc<Tables>,
}

impl Db {
    /// A fresh embedded database (see the module docs), with its tables created. It lives as long
    /// as one pool to it is open.
    pub async fn embedded() -> Result<Db, sqlx::Error> {
        static DATABASES: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "lock-guard-demo-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let db = Db::open(
            &format!("sqlite:file:{name}?mode=memory&cache=shared"),
            Tables::new("demo_"),
        )
        .await?;
        db.create_tables().await?;
        Ok(db)
    }

    /// A pool to the database at `url` (`postgres://…` or `sqlite:…`), using `tables`. Creates
    /// nothing: see [`create_tables`](Self::create_tables).
    pub async fn open(url: &str, tables: Tables) -> Result<Db, sqlx::Error> {
        install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else {
            DbKind::Postgres
        };
        if kind == DbKind::Postgres {
            // One plain connection first: a refused connection or a bad login fails here, at once
            // and with its own message, instead of as a pool timeout.
            AnyConnection::connect(url).await?.close().await?;
        }
        let options = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10));
        let pool = match kind {
            // The in-memory database disappears with its last connection: keep one open.
            DbKind::Sqlite => options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA read_uncommitted = true").await?;
                        Ok(())
                    })
                }),
            DbKind::Postgres => options,
        }
        .connect(url)
        .await?;
        Ok(Db {
            pool,
            kind,
            url: url.into(),
            tables: Arc::new(tables),
        })
    }

    /// Another pool to the same database and tables: what a second app instance opens.
    pub async fn connect_again(&self) -> Result<Db, sqlx::Error> {
        Db::open(&self.url, (*self.tables).clone()).await
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// How this database's fenced transactions are made: the fence table [`Tables::fences`].
    pub fn fencing(&self) -> lock_guard::sqlx::Fencing {
        lock_guard::sqlx::Fencing::new().table(self.tables.fences.clone())
    }

    /// Creates the tables if they do not exist.
    pub async fn create_tables(&self) -> Result<(), sqlx::Error> {
        let id = match self.kind {
            DbKind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            DbKind::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let Tables {
            keywords,
            likes,
            matches,
            chat_rooms,
            ..
        } = &*self.tables;
        // No UNIQUE (user_id, keyword), no UNIQUE (user_a, user_b): see the module docs.
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {keywords} \
                 (id {id}, user_id BIGINT NOT NULL, keyword TEXT NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {keywords}_user ON {keywords} (user_id)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {likes} \
                 (id {id}, from_user BIGINT NOT NULL, to_user BIGINT NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {likes}_pair ON {likes} (from_user, to_user)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {matches} \
                 (id {id}, user_a BIGINT NOT NULL, user_b BIGINT NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {matches}_pair ON {matches} (user_a, user_b)"),
            format!("CREATE TABLE IF NOT EXISTS {chat_rooms} (id {id}, match_id BIGINT NOT NULL)"),
        ];
        for statement in statements {
            self.pool.execute(statement.as_str()).await?;
        }
        self.fencing()
            .ensure(&self.pool)
            .await
            .map_err(|e| match e {
                lock_guard::sqlx::FenceError::Database(e) => e,
                other => sqlx::Error::Configuration(other.into()),
            })?;
        Ok(())
    }

    /// Drops the tables (PostgreSQL runs clean up after themselves).
    pub async fn drop_tables(&self) -> Result<(), sqlx::Error> {
        let t = &*self.tables;
        for table in [&t.keywords, &t.likes, &t.matches, &t.chat_rooms, &t.fences] {
            self.pool
                .execute(format!("DROP TABLE IF EXISTS {table}").as_str())
                .await?;
        }
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// What kind of database failure an error is, for the demos' error columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database aborted a transaction that collided with another one (SQLite `BUSY`,
    /// PostgreSQL serialization failure or lock not available).
    Conflict,
    /// Transactions waited on each other (SQLite `LOCKED`, PostgreSQL `40P01`).
    Deadlock,
    /// No connection or no answer in time.
    Timeout,
    /// Anything else.
    Other,
}

impl DbFailure {
    /// Classifies an error from sqlx.
    pub fn of(error: &sqlx::Error) -> DbFailure {
        match error {
            sqlx::Error::PoolTimedOut => DbFailure::Timeout,
            sqlx::Error::Database(e) => match e.code().as_deref() {
                // SQLite: BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT
                Some("5" | "261" | "517" | "773") => DbFailure::Conflict,
                // SQLite: LOCKED, LOCKED_SHAREDCACHE (unlock_notify saw a deadlock)
                Some("6" | "262") => DbFailure::Deadlock,
                // PostgreSQL: serialization_failure, lock_not_available
                Some("40001" | "55P03") => DbFailure::Conflict,
                Some("40P01") => DbFailure::Deadlock,
                Some("57014") => DbFailure::Timeout,
                _ => DbFailure::Other,
            },
            _ => DbFailure::Other,
        }
    }
}
