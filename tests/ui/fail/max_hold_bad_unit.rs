use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "export", lease = watchdog, max_hold = 10h)]
async fn export(job: u64) -> Result<(), LockError> {
    let _ = job;
    Ok(())
}

fn main() {}
