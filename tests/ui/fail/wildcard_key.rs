use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "orders")]
async fn place(_: u64) -> Result<(), LockError> {
    Ok(())
}

fn main() {}
