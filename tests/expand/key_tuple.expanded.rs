//! `key = (a, b)`: one part per element, `locks = &state.locks`, a timeout.
use lock_guard::{LockError, LockManager, concurrency_guard};
pub struct Event {
    pub id: u64,
}
pub struct AppState {
    pub locks: LockManager,
}
pub async fn create_invoice(
    tenant: &str,
    event: Event,
    state: &AppState,
) -> Result<u64, LockError> {
    let __lock_guard_locks = ::lock_guard::__private::locks(&&state.locks);
    let mut __lock_guard_key = ::lock_guard::__private::key("invoice");
    ::lock_guard::__private::part(&tenant).push_to(&mut __lock_guard_key);
    ::lock_guard::__private::part(&event.id).push_to(&mut __lock_guard_key);
    ::lock_guard::__private::run(
            __lock_guard_locks,
            __lock_guard_key,
            ::lock_guard::LockOptions::new()
                .timeout(::core::time::Duration::from_millis(2000)),
            async move {
                if false {
                    let __lock_guard_return: Result<u64, LockError> = ::lock_guard::__private::fake_return();
                    return __lock_guard_return;
                }
                { Ok(event.id) }
            },
        )
        .await
}
fn main() {}
