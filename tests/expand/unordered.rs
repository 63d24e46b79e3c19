//! `key = lock_guard::unordered(a, b)`: `like(7, 9)` and `like(9, 7)` take one lock; an early
//! `return` in the body.
use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "match", key = lock_guard::unordered(from, to), wait = 250ms, lease = 1.5s)]
pub async fn like(from: u64, to: u64) -> Result<Option<(u64, u64)>, LockError> {
    if from == to {
        return Ok(None);
    }
    Ok(Some((from, to)))
}

fn main() {}
