//! The README example: key from the first argument, default manager.
use lock_guard::{LockError, concurrency_guard};

pub struct UserId(pub u64);
pub struct Db;
pub struct Keyword;
pub struct AppError;

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<LockError> for AppError {
    fn from(_: LockError) -> Self {
        AppError
    }
}

#[concurrency_guard(name = "keyword", wait = 5s, lease = 3s)]
pub async fn add_keyword(user: UserId, word: String, db: &Db) -> Result<Keyword, AppError> {
    let _ = (word, db);
    Ok(Keyword)
}

fn main() {}
