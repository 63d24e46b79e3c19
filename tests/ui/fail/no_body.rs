use lock_guard::{LockError, concurrency_guard};

trait Orders {
    #[concurrency_guard(name = "orders")]
    async fn place(&self, order: u64) -> Result<(), LockError>;
}

fn main() {}
