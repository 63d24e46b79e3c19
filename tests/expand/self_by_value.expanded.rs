//! `self` by value with `locks = self.locks`: the manager is taken before `self` moves.
use lock_guard::{LockError, LockManager, concurrency_guard};
pub struct Account {
    id: u64,
    balance: i64,
    locks: LockManager,
}
impl Account {
    /// Closes the account.
    pub async fn close(self) -> Result<i64, LockError> {
        let __lock_guard_locks = ::lock_guard::__private::locks(&self.locks);
        let mut __lock_guard_key = ::lock_guard::__private::key("account");
        ::lock_guard::__private::part(&self.id).push_to(&mut __lock_guard_key);
        ::lock_guard::__private::run(
                __lock_guard_locks,
                __lock_guard_key,
                ::lock_guard::LockOptions::new(),
                async move {
                    if false {
                        let __lock_guard_return: Result<i64, LockError> = ::lock_guard::__private::fake_return();
                        return __lock_guard_return;
                    }
                    { Ok(self.balance) }
                },
            )
            .await
    }
}
fn main() {}
