//! The like-match service: when two users have liked each other, they get one match and one chat
//! room.
//!
//! `like(from, to)` records the like, then — if the other side has liked too and there is no match
//! yet — creates the match and its chat room. When both users like each other at the same instant
//! (on two instances), both calls see both likes and no match, and both create one: two matches,
//! two chat rooms. `#[concurrency_guard(name = "like", key = lock_guard::unordered(from, to), …)]`
//! gives `like(7, 9)` and `like(9, 7)` the same lock, so they run one after the other: exactly one
//! match.

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
}

impl LikeService {
    /// A service on `db`, taking its locks from `locks`.
    pub fn new(db: Db, locks: LockManager) -> LikeService {
        LikeService {
            db,
            locks,
            work: DEFAULT_WORK,
        }
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
        self.like_then_match(from, to).await
    }

    /// The same, without the lock: the bug the demo shows.
    pub async fn like_unguarded(&self, from: UserId, to: UserId) -> Result<LikeOutcome, AppError> {
        self.like_then_match(from, to).await
    }

    async fn like_then_match(&self, from: UserId, to: UserId) -> Result<LikeOutcome, AppError> {
        if from == to {
            return Err(AppError::Invalid(
                "a user cannot like themselves".to_owned(),
            ));
        }
        let t = self.db.tables();
        let pool = self.db.pool();

        // 1. The like, in its own transaction: it stands whether or not a match follows.
        let mut tx = pool.begin().await?;
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
        let mut tx = pool.begin().await?;
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
        tx.commit().await?;
        Ok(LikeOutcome::Matched { match_id, room_id })
    }
}

/// The result of one round of the like demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LikeReport {
    /// Whether the guarded `like` was called.
    pub guarded: bool,
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
    mut progress: impl FnMut(usize, usize),
) -> Result<LikeReport, AppError> {
    assert!(
        !instances.is_empty(),
        "run_pairs needs at least one instance"
    );
    let started = Instant::now();
    let mut report = LikeReport {
        guarded,
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
                let mut ready = ready.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = ready.wait_for(|go| *go).await;
                    if guarded {
                        service.like(from, to).await
                    } else {
                        service.like_unguarded(from, to).await
                    }
                }));
            }
        }
        let _ = go.send(true);
        for task in tasks {
            report.calls += 1;
            let failure = match task.await {
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
        "{:<10} {:>6} {:>6} {:>8} {:>11} {:>14} {:>13} {:>5} {:>7} {:>8}",
        "like",
        "pairs",
        "calls",
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
            "{:<10} {:>6} {:>6} {:>8} {:>11} {:>14} {:>13} {:>5} {:>7} {:>7.2}s",
            if r.guarded { "guarded" } else { "unguarded" },
            r.pairs,
            r.calls,
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
