//! The like-match service: when two users have liked each other, they get one match and one chat
//! room.
//!
//! `like(from, to)` records the like, then — if the other side has liked too and there is no match
//! yet — creates the match and its chat room. When both users like each other at the same instant
//! (on two instances), both calls see both likes and no match, and both create one: two matches,
//! two chat rooms. `#[concurrency_guard(name = "like", key = lock_guard::unordered(from, to), …)]`
//! gives `like(7, 9)` and `like(9, 7)` the same lock, so they run one after the other: exactly one
//! match. `like_fenced` does the same in fenced transactions (`lock_guard::sqlx::begin`), which also
//! holds when a `COMMIT` lands after its body's deadline (see [`LikeService::with_stall_commit`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lock_guard::{LockManager, concurrency_guard};
use sqlx::Row as _;

use crate::db::Db;
use crate::error::AppError;
use crate::keyword::UserId;

/// The work done before creating a match by default (provisioning the chat room elsewhere…).
pub const DEFAULT_WORK: Duration = Duration::from_millis(20);

/// What `like` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LikeOutcome {
    /// The like is recorded; the other side has not liked back yet.
    Liked,
    /// Both sides like each other: this call created the match and its chat room.
    Matched {
        /// The match.
        match_id: i64,
        /// Its chat room.
        room_id: i64,
    },
    /// They were matched already.
    AlreadyMatched {
        /// The match.
        match_id: i64,
    },
}

/// The service: a database pool and the lock manager of this instance.
#[derive(Debug, Clone)]
pub struct LikeService {
    db: Db,
    locks: LockManager,
    work: Duration,
    stall_commit: Option<Duration>,
}

/// Which `like` a round calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LikeMode {
    /// `like_unguarded`.
    #[default]
    Unguarded,
    /// `like`, under `#[concurrency_guard]`.
    Guarded,
    /// `like_fenced`: under the lock, in fenced transactions.
    Fenced,
}

impl LikeMode {
    /// `unguarded`, `guarded` or `fenced`.
    pub fn name(self) -> &'static str {
        match self {
            LikeMode::Unguarded => "unguarded",
            LikeMode::Guarded => "guarded",
            LikeMode::Fenced => "fenced",
        }
    }
}

impl LikeService {
    /// A service on `db`, taking its locks from `locks`.
    pub fn new(db: Db, locks: LockManager) -> LikeService {
        LikeService {
            db,
            locks,
            work: DEFAULT_WORK,
            stall_commit: None,
        }
    }

    /// Fault mode: the `COMMIT` that creates a match reaches the database `stall` late (the
    /// transaction is handed to a task that waits, then commits; the body waits for it). Past the
    /// body's 2 s deadline, the call fails, the lock is released, and the late `COMMIT` still lands.
    pub fn with_stall_commit(mut self, stall: Option<Duration>) -> LikeService {
        self.stall_commit = stall;
        self
    }

    /// Sets the work done before creating a match ([`DEFAULT_WORK`]).
    pub fn with_work(mut self, work: Duration) -> LikeService {
        self.work = work;
        self
    }

    /// `from` likes `to`; makes the match and its chat room when the like is mutual — once per
    /// pair, however the two likes interleave: `like(a, b)` and `like(b, a)` take the same lock
    /// (`lock:{like:a:b}` with `a < b`). Both transactions commit inside the body.
    #[concurrency_guard(name = "like", key = lock_guard::unordered(from, to), wait = 2s, lease = 3s, locks = self.locks)]
    pub async fn like(&self, from: UserId, to: UserId) -> Result<LikeOutcome, AppError> {
        self.like_then_match(from, to, false).await
    }

    /// The same under the same lock, both transactions fenced (`lock_guard::sqlx::begin`; one
    /// section fences twice with its one token).
    #[concurrency_guard(name = "like", key = lock_guard::unordered(from, to), wait = 2s, lease = 3s, locks = self.locks)]
    pub async fn like_fenced(&self, from: UserId, to: UserId) -> Result<LikeOutcome, AppError> {
        self.like_then_match(from, to, true).await
    }

    /// The same, without the lock: the bug the demo shows.
    pub async fn like_unguarded(&self, from: UserId, to: UserId) -> Result<LikeOutcome, AppError> {
        self.like_then_match(from, to, false).await
    }

    async fn begin(&self, fenced: bool) -> Result<sqlx::Transaction<'static, sqlx::Any>, AppError> {
        Ok(if fenced {
            self.db.fencing().begin(self.db.pool()).await?
        } else {
            self.db.pool().begin().await?
        })
    }

    async fn like_then_match(
        &self,
        from: UserId,
        to: UserId,
        fenced: bool,
    ) -> Result<LikeOutcome, AppError> {
        if from == to {
            return Err(AppError::Invalid(
                "a user cannot like themselves".to_owned(),
            ));
        }
        let t = self.db.tables();

        // 1. The like, in its own transaction: it stands whether or not a match follows.
        let mut tx = self.begin(fenced).await?;
        let liked = sqlx::query(&format!(
            "SELECT id FROM {} WHERE from_user = $1 AND to_user = $2",
            t.likes
        ))
        .bind(from.0)
        .bind(to.0)
        .fetch_optional(&mut *tx)
        .await?;
        if liked.is_none() {
            sqlx::query(&format!(
                "INSERT INTO {} (from_user, to_user) VALUES ($1, $2)",
                t.likes
            ))
            .bind(from.0)
            .bind(to.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        // 2. The match: if the other side liked too and they are not matched yet.
        let (a, b) = (from.min(to), from.max(to));
        let mut tx = self.begin(fenced).await?;
        let liked_back = sqlx::query(&format!(
            "SELECT id FROM {} WHERE from_user = $1 AND to_user = $2",
            t.likes
        ))
        .bind(to.0)
        .bind(from.0)
        .fetch_optional(&mut *tx)
        .await?;
        if liked_back.is_none() {
            tx.commit().await?;
            return Ok(LikeOutcome::Liked);
        }
        let existing = sqlx::query(&format!(
            "SELECT id FROM {} WHERE user_a = $1 AND user_b = $2 ORDER BY id LIMIT 1",
            t.matches
        ))
        .bind(a.0)
        .bind(b.0)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.commit().await?;
            return Ok(LikeOutcome::AlreadyMatched {
                match_id: row.try_get(0)?,
            });
        }
        tokio::time::sleep(self.work).await;
        let match_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (user_a, user_b) VALUES ($1, $2) RETURNING id",
            t.matches
        ))
        .bind(a.0)
        .bind(b.0)
        .fetch_one(&mut *tx)
        .await?;
        let room_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (match_id) VALUES ($1) RETURNING id",
            t.chat_rooms
        ))
        .bind(match_id)
        .fetch_one(&mut *tx)
        .await?;
        match self.stall_commit {
            None => tx.commit().await?,
            Some(stall) => {
                let late = tokio::spawn(async move {
                    tokio::time::sleep(stall).await;
                    tx.commit().await
                });
                late.await
                    .map_err(|e| AppError::Invalid(format!("commit task: {e}")))??;
            }
        }
        Ok(LikeOutcome::Matched { match_id, room_id })
    }
}

/// The result of one round of the like demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LikeReport {
    /// Whether the guarded `like` (or `like_fenced`) was called.
    pub guarded: bool,
    /// Whether `like_fenced` was called.
    pub fenced: bool,
    /// Calls retried after failing at their deadline (with `retry_deadline`).
    pub retried: usize,
    /// Pairs of users who liked each other at the same instant.
    pub pairs: usize,
    /// `like` calls (two per pair).
    pub calls: usize,
    /// Matches stored for those pairs.
    pub matches: usize,
    /// Chat rooms stored for those matches.
    pub chat_rooms: usize,
    /// Pairs with more than one match.
    pub doubled: usize,
    /// Pairs with no match.
    pub missed: usize,
    /// `like` calls that failed with a lock `NotAcquired` (deliberate: retry later).
    pub not_acquired: usize,
    /// Other failed `like` calls.
    pub errors: usize,
    /// The first failure, for the reader.
    pub first_error: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl LikeReport {
    /// `unguarded`, `guarded` or `fenced`.
    pub fn mode(&self) -> LikeMode {
        match (self.guarded, self.fenced) {
            (_, true) => LikeMode::Fenced,
            (true, false) => LikeMode::Guarded,
            (false, false) => LikeMode::Unguarded,
        }
    }

    /// Whether every pair got exactly one match and one chat room.
    pub fn exact(&self) -> bool {
        self.doubled == 0
            && self.missed == 0
            && self.matches == self.pairs
            && self.chat_rooms == self.pairs
    }
}

/// Makes `pairs` pairs of users like each other at the same instant, `wave` pairs at a time: user
/// `first_user + 2i` likes `first_user + 2i + 1` on the first instance while the reverse like
/// goes to the second (instances are used round-robin). Then counts matches and chat rooms.
///
/// # Panics
///
/// If `instances` is empty.
pub async fn run_pairs(
    instances: &[LikeService],
    guarded: bool,
    pairs: usize,
    wave: usize,
    first_user: i64,
    progress: impl FnMut(usize, usize),
) -> Result<LikeReport, AppError> {
    let mode = if guarded {
        LikeMode::Guarded
    } else {
        LikeMode::Unguarded
    };
    run_pairs_with(instances, mode, false, pairs, wave, first_user, progress).await
}

/// [`run_pairs`] calling `mode`'s `like`; with `retry_deadline`, a call that fails at its body's
/// deadline (`lock_deadline`) is sent once more, as a client retries a request that timed out.
///
/// # Panics
///
/// If `instances` is empty.
pub async fn run_pairs_with(
    instances: &[LikeService],
    mode: LikeMode,
    retry_deadline: bool,
    pairs: usize,
    wave: usize,
    first_user: i64,
    mut progress: impl FnMut(usize, usize),
) -> Result<LikeReport, AppError> {
    assert!(
        !instances.is_empty(),
        "run_pairs needs at least one instance"
    );
    let started = Instant::now();
    let mut report = LikeReport {
        guarded: mode != LikeMode::Unguarded,
        fenced: mode == LikeMode::Fenced,
        pairs,
        ..LikeReport::default()
    };
    let mut done = 0;
    while done < pairs {
        let n = wave.max(1).min(pairs - done);
        let (go, ready) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::with_capacity(2 * n);
        for i in done..done + n {
            let a = UserId(first_user + 2 * i as i64);
            let b = UserId(a.0 + 1);
            for (k, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
                let service = instances[(i + k) % instances.len()].clone();
                // A retry goes to the next instance, as through a load balancer.
                let other = instances[(i + k + 1) % instances.len()].clone();
                let mut ready = ready.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = ready.wait_for(|go| *go).await;
                    let call = |service: LikeService| async move {
                        match mode {
                            LikeMode::Unguarded => service.like_unguarded(from, to).await,
                            LikeMode::Guarded => service.like(from, to).await,
                            LikeMode::Fenced => service.like_fenced(from, to).await,
                        }
                    };
                    match call(service).await {
                        Err(e) if retry_deadline && e.code() == "lock_deadline" => {
                            (call(other).await, true)
                        }
                        result => (result, false),
                    }
                }));
            }
        }
        let _ = go.send(true);
        for task in tasks {
            report.calls += 1;
            let result = task.await.map(|(result, retried)| {
                report.retried += usize::from(retried);
                result
            });
            let failure = match result {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if e.code() == "not_acquired" => {
                    report.not_acquired += 1;
                    e.to_string()
                }
                Ok(Err(e)) => {
                    report.errors += 1;
                    format!("{}: {e}", e.code())
                }
                Err(e) => {
                    report.errors += 1;
                    format!("task failed: {e}")
                }
            };
            report.first_error.get_or_insert(failure);
        }
        done += n;
        progress(done, pairs);
    }

    let (db, t) = (&instances[0].db, instances[0].db.tables());
    let last_user = first_user + 2 * pairs as i64;
    let per_pair: HashMap<(i64, i64), i64> = sqlx::query(&format!(
        "SELECT user_a, user_b, COUNT(*) FROM {} WHERE user_a >= $1 AND user_a < $2 \
         GROUP BY user_a, user_b",
        t.matches
    ))
    .bind(first_user)
    .bind(last_user)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    report.matches = per_pair.values().sum::<i64>() as usize;
    report.doubled = per_pair.values().filter(|&&n| n > 1).count();
    report.missed = pairs - per_pair.len();
    let rooms: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {} c JOIN {} m ON c.match_id = m.id \
         WHERE m.user_a >= $1 AND m.user_a < $2",
        t.chat_rooms, t.matches
    ))
    .bind(first_user)
    .bind(last_user)
    .fetch_one(db.pool())
    .await?;
    report.chat_rooms = rooms as usize;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The like demo's table: one row per round.
pub fn table(reports: &[LikeReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>6} {:>7} {:>8} {:>11} {:>14} {:>13} {:>5} {:>7} {:>8}",
        "like",
        "pairs",
        "calls",
        "retried",
        "matches",
        "chat rooms",
        "pairs doubled",
        "pairs missed",
        "409",
        "errors",
        "time"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<10} {:>6} {:>6} {:>7} {:>8} {:>11} {:>14} {:>13} {:>5} {:>7} {:>7.2}s",
            r.mode().name(),
            r.pairs,
            r.calls,
            r.retried,
            r.matches,
            r.chat_rooms,
            r.doubled,
            r.missed,
            r.not_acquired,
            r.errors,
            r.elapsed.as_secs_f64(),
        );
    }
    out
}
