//! The services' error type, and how the HTTP layer answers it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lock_guard::LockError;
use serde::{Deserialize, Serialize};

use crate::db::DbFailure;

/// Why a service call failed. Lock failures come back through `From<LockError>`, as
/// `#[concurrency_guard]` requires.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The lock: not acquired within `wait`, backend down, deadline, lost.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A fenced transaction did not begin: refused (a newer holder's token is recorded — this
    /// call's lock was lost), the section's deadline passed, or its database failed.
    #[error(transparent)]
    Fence(lock_guard::sqlx::FenceError),
    /// Input the service refuses.
    #[error("{0}")]
    Invalid(String),
}

impl AppError {
    /// The stable name of the error, as the JSON body's `error` field carries it.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Lock(e) => match e {
                LockError::NotAcquired { .. } => "not_acquired",
                LockError::Backend { .. } => "lock_backend",
                LockError::Deadline { .. } => "lock_deadline",
                LockError::Lost { .. } => "lock_lost",
                LockError::NoDefault => "no_lock_manager",
                _ => "lock_error",
            },
            AppError::Db(e) => match DbFailure::of(e) {
                DbFailure::Conflict => "db_conflict",
                DbFailure::Deadlock => "db_deadlock",
                DbFailure::Timeout => "db_timeout",
                DbFailure::Other => "db_error",
            },
            AppError::Fence(e) if e.is_refused() => "fence_refused",
            AppError::Fence(_) => "fence_error",
            AppError::Invalid(_) => "invalid_input",
        }
    }

    /// The HTTP status: `409` when the lock stayed busy for the whole `wait` (the same request is
    /// being served; retry later), `503` when the lock service or the database is unavailable or
    /// too slow, `400` for bad input, `500` otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Lock(LockError::NotAcquired { .. }) => StatusCode::CONFLICT,
            AppError::Lock(
                LockError::Backend { .. } | LockError::Deadline { .. } | LockError::Lost { .. },
            ) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Lock(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Db(e) if DbFailure::of(e) == DbFailure::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Fence(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<lock_guard::sqlx::FenceError> for AppError {
    fn from(e: lock_guard::sqlx::FenceError) -> Self {
        use lock_guard::sqlx::FenceError;
        match e {
            FenceError::Lock(e) => AppError::Lock(e),
            FenceError::Database(e) => AppError::Db(e),
            other => AppError::Fence(other),
        }
    }
}

/// The JSON body of every error answer: `{"error": "not_acquired", "message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable name of the error ([`AppError::code`]).
    pub error: String,
    /// A human-readable explanation.
    pub message: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::debug!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}
