//! An error in the body is reported on the user's code, as without the attribute: here a `?` whose
//! error does not convert into the function's error type.
use lock_guard::{LockError, concurrency_guard};

#[derive(Debug)]
pub enum AppError {
    Lock(LockError),
}

impl From<LockError> for AppError {
    fn from(e: LockError) -> Self {
        AppError::Lock(e)
    }
}

#[concurrency_guard(name = "orders")]
async fn place(order: &str) -> Result<u64, AppError> {
    let id: u64 = order.parse()?;
    Ok(id)
}

fn main() {}
