use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "orders", crate = "lock guard")]
async fn place(order: u64) -> Result<(), LockError> {
    let _ = order;
    Ok(())
}

#[concurrency_guard(name = "orders", crate = 3)]
async fn cancel(order: u64) -> Result<(), LockError> {
    let _ = order;
    Ok(())
}

fn main() {}
