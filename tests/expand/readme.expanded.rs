//! The README example: key from the first argument, default manager.
use lock_guard::{LockError, concurrency_guard};
pub struct UserId(pub u64);
pub struct Db;
pub struct Keyword;
pub struct AppError;
impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl From<LockError> for AppError {
    fn from(_: LockError) -> Self {
        AppError
    }
}
pub async fn add_keyword(
    user: UserId,
    word: String,
    db: &Db,
) -> Result<Keyword, AppError> {
    let mut __lock_guard_key = ::lock_guard::__private::key("keyword");
    ::lock_guard::__private::part(&user).push_to(&mut __lock_guard_key);
    ::lock_guard::__private::run(
            ::lock_guard::__private::default_locks(),
            __lock_guard_key,
            ::lock_guard::LockOptions::new()
                .wait(::core::time::Duration::from_millis(5000))
                .lease(::core::time::Duration::from_millis(3000)),
            async move {
                if false {
                    let __lock_guard_return: Result<Keyword, AppError> = ::lock_guard::__private::fake_return();
                    return __lock_guard_return;
                }
                {
                    let _ = (word, db);
                    Ok(Keyword)
                }
            },
        )
        .await
}
fn main() {}
