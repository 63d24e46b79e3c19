//! The keyword-notification service: users subscribe to keywords in announcements.
//!
//! `add_keyword` is a check-then-insert in one transaction: look the keyword up, do some work,
//! insert it if it was missing. Sent twice at once (a double-click, a client retry) to two
//! instances, both transactions find nothing and both insert: the keyword is stored twice (or,
//! on a database that detects the collision, one of them fails). With
//! `#[concurrency_guard(name = "keyword", …)]` keyed by the user, the second call waits for the
//! first one's commit, then finds the keyword and answers `200`.
//!
//! HTTP (see [`router`]):
//!
//! | request | answer |
//! |---|---|
//! | `POST /users/{id}/keywords` `{"keyword": "rust"}` | `201` + the row when new, `200` + the row when it existed |
//! | same, lock busy for the whole `wait` | `409` `{"error": "not_acquired", …}` |
//! | same, lock backend down | `503` `{"error": "lock_backend", …}` |
//! | same, keyword empty or over 64 characters | `400` `{"error": "invalid_input", …}` |
//! | `POST /fenced/users/{id}/keywords` | the same under the lock, in a fenced transaction (`lock_guard::sqlx::begin`) |
//! | `POST /unguarded/users/{id}/keywords` | the same service without the lock (for the demo) |
//! | `GET /users/{id}/keywords` | `200` + every stored row, duplicates included |

use std::fmt;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use lock_guard::{LockManager, concurrency_guard};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::db::Db;
use crate::error::AppError;

/// The longest keyword accepted, in characters.
pub const MAX_KEYWORD_CHARS: usize = 64;

/// The work done between the check and the insert by default (looking the keyword up in a
/// dictionary, calling another service…): it widens the window in which two duplicate requests
/// race, as a busy production system does.
pub const DEFAULT_WORK: Duration = Duration::from_millis(20);

/// A user id: the lock key of `add_keyword` (rendered with `Display`: `lock:{keyword:42}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated keyword: trimmed, not empty, at most [`MAX_KEYWORD_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keyword(String);

impl Keyword {
    /// Validates a keyword as a user typed it.
    pub fn parse(raw: &str) -> Result<Keyword, AppError> {
        let word = raw.trim();
        if word.is_empty() {
            return Err(AppError::Invalid("the keyword is empty".to_owned()));
        }
        let chars = word.chars().count();
        if chars > MAX_KEYWORD_CHARS {
            return Err(AppError::Invalid(format!(
                "the keyword has {chars} characters; at most {MAX_KEYWORD_CHARS} are allowed"
            )));
        }
        if word.chars().any(char::is_control) {
            return Err(AppError::Invalid(
                "the keyword contains control characters".to_owned(),
            ));
        }
        Ok(Keyword(word.to_owned()))
    }

    /// The keyword.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored keyword subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKeyword {
    /// The row id.
    pub id: i64,
    /// Whose it is.
    pub user_id: UserId,
    /// The keyword.
    pub keyword: String,
}

/// What `add_keyword` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The row, new or existing.
    pub row: StoredKeyword,
    /// Whether this call inserted it.
    pub created: bool,
}

/// The service: a database pool and the lock manager of this instance.
#[derive(Debug, Clone)]
pub struct KeywordService {
    db: Db,
    locks: LockManager,
    work: Duration,
    stall_commit: Option<Duration>,
}

impl KeywordService {
    /// A service on `db`, taking its locks from `locks`.
    pub fn new(db: Db, locks: LockManager) -> KeywordService {
        KeywordService {
            db,
            locks,
            work: DEFAULT_WORK,
            stall_commit: None,
        }
    }

    /// Fault mode: every `COMMIT` of an insert reaches the database `stall` late, as when it is
    /// held up in the network — the transaction is handed to a task that waits, then commits,
    /// and the body waits for that task. When the body's deadline drops it meanwhile, the lock is
    /// released and the late `COMMIT` still lands afterwards: with the lock alone, the next
    /// holder's check-then-insert stores a duplicate; a fenced transaction does not.
    pub fn with_stall_commit(mut self, stall: Option<Duration>) -> KeywordService {
        self.stall_commit = stall;
        self
    }

    /// Sets the work done between the check and the insert ([`DEFAULT_WORK`]).
    pub fn with_work(mut self, work: Duration) -> KeywordService {
        self.work = work;
        self
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The lock manager.
    pub fn locks(&self) -> &LockManager {
        &self.locks
    }

    /// Subscribes `user` to `keyword`, once, whatever the number of concurrent duplicate calls on
    /// however many instances: one call per user at a time runs the body, across every instance
    /// sharing the lock service. The transaction commits inside the body, so the lock is released
    /// only after the commit.
    ///
    /// Waits up to 3 s for the lock (then `LockError::NotAcquired`, HTTP 409); the lease is 3 s and
    /// the body is dropped — its transaction rolled back — after 2 s.
    #[concurrency_guard(name = "keyword", wait = 3s, lease = 3s, locks = self.locks)]
    pub async fn add_keyword(&self, user: UserId, keyword: &Keyword) -> Result<Added, AppError> {
        self.check_then_insert(user, keyword, false).await
    }

    /// The same under the same lock, in a fenced transaction (`lock_guard::sqlx::begin`): also
    /// when a `COMMIT` is still in flight at the deadline, no later holder's insert can commit
    /// before it, and a holder whose lock was lost is refused.
    #[concurrency_guard(name = "keyword", wait = 3s, lease = 3s, locks = self.locks)]
    pub async fn add_keyword_fenced(
        &self,
        user: UserId,
        keyword: &Keyword,
    ) -> Result<Added, AppError> {
        self.check_then_insert(user, keyword, true).await
    }

    /// The same, without the lock: the bug the demo shows.
    pub async fn add_keyword_unguarded(
        &self,
        user: UserId,
        keyword: &Keyword,
    ) -> Result<Added, AppError> {
        self.check_then_insert(user, keyword, false).await
    }

    /// One transaction: look the keyword up; if it is missing, work a little, insert it; commit.
    async fn check_then_insert(
        &self,
        user: UserId,
        keyword: &Keyword,
        fenced: bool,
    ) -> Result<Added, AppError> {
        let table = &self.db.tables().keywords;
        let mut tx = if fenced {
            self.db.fencing().begin(self.db.pool()).await?
        } else {
            self.db.pool().begin().await?
        };
        let existing = sqlx::query(&format!(
            "SELECT id FROM {table} WHERE user_id = $1 AND keyword = $2 ORDER BY id LIMIT 1"
        ))
        .bind(user.0)
        .bind(keyword.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.commit().await?;
            return Ok(Added {
                row: StoredKeyword {
                    id: row.try_get(0)?,
                    user_id: user,
                    keyword: keyword.as_str().to_owned(),
                },
                created: false,
            });
        }
        tokio::time::sleep(self.work).await;
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {table} (user_id, keyword) VALUES ($1, $2) RETURNING id"
        ))
        .bind(user.0)
        .bind(keyword.as_str())
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
        Ok(Added {
            row: StoredKeyword {
                id,
                user_id: user,
                keyword: keyword.as_str().to_owned(),
            },
            created: true,
        })
    }

    /// Every row stored for `user`, duplicates included, in insertion order.
    pub async fn keywords(&self, user: UserId) -> Result<Vec<StoredKeyword>, AppError> {
        let table = &self.db.tables().keywords;
        let rows = sqlx::query(&format!(
            "SELECT id, keyword FROM {table} WHERE user_id = $1 ORDER BY id"
        ))
        .bind(user.0)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKeyword {
                    id: row.try_get(0)?,
                    user_id: user,
                    keyword: row.try_get(1)?,
                })
            })
            .collect()
    }
}

/// The body of `POST …/keywords`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddKeywordRequest {
    /// The keyword to subscribe to.
    pub keyword: String,
}

/// The HTTP API of one instance (see the module docs).
pub fn router(service: KeywordService) -> Router {
    Router::new()
        .route("/users/{id}/keywords", post(add_guarded).get(list))
        .route("/fenced/users/{id}/keywords", post(add_fenced))
        .route("/unguarded/users/{id}/keywords", post(add_unguarded))
        .route("/health", get(|| async { "ok" }))
        .with_state(service)
}

async fn add_guarded(
    State(service): State<KeywordService>,
    Path(user): Path<i64>,
    Json(request): Json<AddKeywordRequest>,
) -> Result<(StatusCode, Json<StoredKeyword>), AppError> {
    let keyword = Keyword::parse(&request.keyword)?;
    let added = service.add_keyword(UserId(user), &keyword).await?;
    Ok(answer(added))
}

async fn add_fenced(
    State(service): State<KeywordService>,
    Path(user): Path<i64>,
    Json(request): Json<AddKeywordRequest>,
) -> Result<(StatusCode, Json<StoredKeyword>), AppError> {
    let keyword = Keyword::parse(&request.keyword)?;
    let added = service.add_keyword_fenced(UserId(user), &keyword).await?;
    Ok(answer(added))
}

async fn add_unguarded(
    State(service): State<KeywordService>,
    Path(user): Path<i64>,
    Json(request): Json<AddKeywordRequest>,
) -> Result<(StatusCode, Json<StoredKeyword>), AppError> {
    let keyword = Keyword::parse(&request.keyword)?;
    let added = service
        .add_keyword_unguarded(UserId(user), &keyword)
        .await?;
    Ok(answer(added))
}

fn answer(added: Added) -> (StatusCode, Json<StoredKeyword>) {
    let status = if added.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(added.row))
}

async fn list(
    State(service): State<KeywordService>,
    Path(user): Path<i64>,
) -> Result<Json<Vec<StoredKeyword>>, AppError> {
    Ok(Json(service.keywords(UserId(user)).await?))
}
