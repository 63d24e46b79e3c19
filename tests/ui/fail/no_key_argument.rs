use lock_guard::{LockError, concurrency_guard};

struct Batch;

impl Batch {
    #[concurrency_guard(name = "batch")]
    async fn run(&self) -> Result<(), LockError> {
        Ok(())
    }
}

fn main() {}
