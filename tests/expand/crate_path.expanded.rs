//! `crate = …`: lock-guard reached through a facade module (or a renamed dependency); every path
//! the attribute writes goes through it. A tuple value as the key; an inner attribute stays first.
mod facade {
    pub use lock_guard::*;
}
use facade::LockError;
pub async fn by_pair(pair: (u64, &str)) -> Result<u64, LockError> {
    #![allow(clippy::needless_return)]
    let mut __lock_guard_key = crate::facade::__private::key("pair");
    crate::facade::__private::part(&pair).push_to(&mut __lock_guard_key);
    crate::facade::__private::run(
            crate::facade::__private::default_locks(),
            __lock_guard_key,
            crate::facade::LockOptions::new()
                .timeout(::core::time::Duration::from_millis(1000)),
            async move {
                if false {
                    let __lock_guard_return: Result<u64, LockError> = crate::facade::__private::fake_return();
                    return __lock_guard_return;
                }
                {
                    return Ok(pair.0);
                }
            },
        )
        .await
}
fn main() {}
