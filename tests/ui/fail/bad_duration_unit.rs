use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "orders", lease = 3sec)]
async fn place(order: u64) -> Result<(), LockError> {
    let _ = order;
    Ok(())
}

fn main() {}
