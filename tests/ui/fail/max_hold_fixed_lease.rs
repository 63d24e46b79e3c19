use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "export", lease = 5s, max_hold = 10m)]
async fn export(job: u64) -> Result<(), LockError> {
    let _ = job;
    Ok(())
}

#[concurrency_guard(name = "import", max_hold = 10m)]
async fn import(job: u64) -> Result<(), LockError> {
    let _ = job;
    Ok(())
}

fn main() {}
