//! Methods: `&self`, `&mut self`, `self` by value with `locks = self.locks` (the manager is taken
//! before `self` moves into the body), a trait impl, and `locks = &state.locks`.

use lock_guard::{LockError, LockManager, concurrency_guard};

struct Account {
    id: u32,
    balance: i64,
    locks: LockManager,
}

impl Account {
    #[concurrency_guard(name = "balance", key = self.id, locks = self.locks)]
    async fn balance(&self) -> Result<i64, LockError> {
        Ok(self.balance)
    }

    #[concurrency_guard(name = "deposit", key = self.id, locks = self.locks)]
    async fn deposit(&mut self, amount: i64) -> Result<i64, LockError> {
        self.balance += amount;
        Ok(self.balance)
    }

    /// `self` moves into the body; the key and the manager were taken before.
    #[concurrency_guard(name = "close", key = self.id, locks = self.locks)]
    async fn close(self) -> Result<i64, LockError> {
        let Account { balance, .. } = self;
        Ok(balance)
    }

    /// The key comes from the first argument that is not `self`.
    #[concurrency_guard(name = "transfer", locks = self.locks)]
    async fn transfer(&self, to: u32, amount: i64) -> Result<(u32, i64), LockError> {
        Ok((to, amount))
    }
}

struct State {
    locks: LockManager,
}

#[concurrency_guard(name = "state", locks = &state.locks)]
async fn with_state(id: u32, state: &State) -> Result<u32, LockError> {
    Ok(id)
}

trait Store {
    async fn put(&self, id: u32) -> Result<u32, LockError>;
}

impl Store for Account {
    #[concurrency_guard(name = "put", locks = self.locks)]
    async fn put(&self, id: u32) -> Result<u32, LockError> {
        Ok(id + self.id)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let locks = LockManager::memory();
    let mut account = Account {
        id: 1,
        balance: 10,
        locks: locks.clone(),
    };
    assert_eq!(account.balance().await.unwrap(), 10);
    assert_eq!(account.deposit(5).await.unwrap(), 15);
    assert_eq!(account.transfer(2, 3).await.unwrap(), (2, 3));
    assert_eq!(account.put(4).await.unwrap(), 5);
    assert_eq!(account.close().await.unwrap(), 15);
    let state = State { locks };
    assert_eq!(with_state(9, &state).await.unwrap(), 9);
}
