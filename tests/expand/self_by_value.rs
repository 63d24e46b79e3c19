//! `self` by value with `locks = self.locks`: the manager is taken before `self` moves.
use lock_guard::{LockError, LockManager, concurrency_guard};

pub struct Account {
    id: u64,
    balance: i64,
    locks: LockManager,
}

impl Account {
    /// Closes the account.
    #[concurrency_guard(name = "account", key = self.id, locks = self.locks)]
    pub async fn close(self) -> Result<i64, LockError> {
        Ok(self.balance)
    }
}

fn main() {}
