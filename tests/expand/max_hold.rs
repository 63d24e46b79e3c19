//! `lease = watchdog` bounded by `max_hold`: renewals stop after ten minutes.
use lock_guard::{LockError, concurrency_guard};

#[concurrency_guard(name = "export", lease = watchdog, max_hold = 10m)]
pub async fn export(job: u64) -> Result<u64, LockError> {
    Ok(job)
}

fn main() {}
