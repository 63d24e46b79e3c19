//! `key = (a, b)`: one part per element, `locks = &state.locks`, a timeout.
use lock_guard::{LockError, LockManager, concurrency_guard};

pub struct Event {
    pub id: u64,
}

pub struct AppState {
    pub locks: LockManager,
}

#[concurrency_guard(name = "invoice", key = (tenant, event.id), timeout = 2s, locks = &state.locks)]
pub async fn create_invoice(
    tenant: &str,
    event: Event,
    state: &AppState,
) -> Result<u64, LockError> {
    Ok(event.id)
}

fn main() {}
