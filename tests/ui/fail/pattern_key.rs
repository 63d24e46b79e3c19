use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "orders")]
async fn place((tenant, order): (u32, u64)) -> Result<(), LockError> {
    let _ = (tenant, order);
    Ok(())
}

fn main() {}
