//! The README shape: a free function, key from the first argument, `?` and early `return` in the
//! body, a borrowed argument.

use lock_guard::{LockError, LockManager, concurrency_guard};

#[derive(Debug)]
struct UserId(u64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

struct Db {
    rows: std::sync::Mutex<Vec<String>>,
}

#[derive(Debug)]
enum AppError {
    Lock(LockError),
    Empty,
    Parse(std::num::ParseIntError),
}

impl From<LockError> for AppError {
    fn from(e: LockError) -> Self {
        AppError::Lock(e)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Parse(e)
    }
}

/// Adds a keyword once per user at a time.
#[concurrency_guard(name = "keyword", wait = 5s, lease = 3s)]
async fn add_keyword(user: UserId, word: String, db: &Db) -> Result<usize, AppError> {
    if word.is_empty() {
        return Err(AppError::Empty);
    }
    let n: usize = word.len().to_string().parse()?;
    let mut rows = db.rows.lock().unwrap();
    rows.push(format!("{user}:{word}"));
    Ok(n + rows.len() - rows.len())
}

#[concurrency_guard(name = "parse")]
async fn parse(text: &str) -> Result<u32, AppError> {
    Ok(text.parse::<u32>()?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    lock_guard::set_default(LockManager::memory());
    let db = Db {
        rows: Default::default(),
    };
    assert_eq!(add_keyword(UserId(7), "rust".into(), &db).await.unwrap(), 4);
    assert!(matches!(
        add_keyword(UserId(7), String::new(), &db).await,
        Err(AppError::Empty)
    ));
    assert!(matches!(parse("x").await, Err(AppError::Parse(_))));
    assert_eq!(parse("12").await.unwrap(), 12);
    assert_eq!(db.rows.lock().unwrap().as_slice(), ["7:rust"]);
    let _ = AppError::Lock(LockError::NoDefault);
}
