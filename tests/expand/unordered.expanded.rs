//! `key = lock_guard::unordered(a, b)`: `like(7, 9)` and `like(9, 7)` take one lock; an early
//! `return` in the body.
use lock_guard::{LockError, concurrency_guard};
pub async fn like(from: u64, to: u64) -> Result<Option<(u64, u64)>, LockError> {
    let mut __lock_guard_key = ::lock_guard::__private::key("match");
    ::lock_guard::__private::part(&lock_guard::unordered(from, to))
        .push_to(&mut __lock_guard_key);
    ::lock_guard::__private::run(
            ::lock_guard::__private::default_locks(),
            __lock_guard_key,
            ::lock_guard::LockOptions::new()
                .wait(::core::time::Duration::from_millis(250))
                .lease(::core::time::Duration::from_millis(1500)),
            async move {
                if false {
                    let __lock_guard_return: Result<Option<(u64, u64)>, LockError> = ::lock_guard::__private::fake_return();
                    return __lock_guard_return;
                }
                {
                    if from == to {
                        return Ok(None);
                    }
                    Ok(Some((from, to)))
                }
            },
        )
        .await
}
fn main() {}
