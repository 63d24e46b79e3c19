//! Keys: the first argument through a reference, `key = (a, b)`, `key = lock_guard::unordered(a, b)`,
//! a field of a pattern-bound argument, and an expression.

use lock_guard::{LockError, LockManager, concurrency_guard, fencing_token};

struct Order {
    id: u64,
}

#[concurrency_guard(name = "by_ref")]
async fn by_ref(user: &&str) -> Result<(), LockError> {
    let _ = user;
    Ok(())
}

#[concurrency_guard(name = "tuple", key = (tenant, order.id))]
async fn tuple(tenant: &str, order: &Order) -> Result<u64, LockError> {
    Ok(order.id)
}

#[concurrency_guard(name = "like", key = lock_guard::unordered(a, b))]
async fn like(a: u32, b: u32) -> Result<(u32, u32), LockError> {
    Ok((a, b))
}

#[concurrency_guard(name = "pattern", key = id)]
async fn pattern((id, _name): (u32, String)) -> Result<u32, LockError> {
    Ok(id)
}

#[concurrency_guard(name = "expr", key = a + b)]
async fn expr(a: u32, b: u32) -> Result<u32, LockError> {
    Ok(a + b)
}

#[concurrency_guard(name = "constant", key = "all")]
async fn constant() -> Result<Option<u64>, LockError> {
    Ok(fencing_token())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    lock_guard::set_default(LockManager::memory());
    by_ref(&"alice").await.unwrap();
    assert_eq!(tuple("t", &Order { id: 3 }).await.unwrap(), 3);
    assert_eq!(like(9, 7).await.unwrap(), (9, 7));
    assert_eq!(pattern((4, "x".into())).await.unwrap(), 4);
    assert_eq!(expr(1, 2).await.unwrap(), 3);
    assert!(constant().await.unwrap().is_some());
}
