//! `lease = watchdog` bounded by `max_hold`: renewals stop after ten minutes.
use lock_guard::{LockError, concurrency_guard};
pub async fn export(job: u64) -> Result<u64, LockError> {
    let mut __lock_guard_key = ::lock_guard::__private::key("export");
    ::lock_guard::__private::part(&job).push_to(&mut __lock_guard_key);
    ::lock_guard::__private::run(
            ::lock_guard::__private::default_locks(),
            __lock_guard_key,
            ::lock_guard::LockOptions::new()
                .watchdog()
                .max_hold(::core::time::Duration::from_millis(600000)),
            async move {
                if false {
                    let __lock_guard_return: Result<u64, LockError> = ::lock_guard::__private::fake_return();
                    return __lock_guard_return;
                }
                { Ok(job) }
            },
        )
        .await
}
fn main() {}
