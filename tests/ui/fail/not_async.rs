use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "orders")]
fn place(order: u64) -> Result<(), LockError> {
    let _ = order;
    Ok(())
}

fn main() {
    // the item is still emitted: the rest of the crate type-checks
    let _: Result<(), LockError> = place(1);
}
