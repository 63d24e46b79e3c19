use lock_guard::{LockError, concurrency_guard};

struct Order {
    id: u64,
}

#[concurrency_guard(name = "orders")]
async fn place(order: Order) -> Result<u64, LockError> {
    Ok(order.id)
}

fn main() {}
