//! The returned future is `Send` whenever the body is: it can be spawned on a multi-threaded
//! runtime, for free functions and methods alike.

use std::future::Future;

use lock_guard::{LockError, LockManager, concurrency_guard};

fn require_send<F: Future + Send>(future: F) -> F {
    future
}

#[concurrency_guard(name = "send", lease = watchdog)]
async fn guarded(id: u32, data: &[u8]) -> Result<usize, LockError> {
    tokio::task::yield_now().await;
    Ok(data.len() + id as usize)
}

struct Service {
    locks: LockManager,
}

impl Service {
    #[concurrency_guard(name = "service", locks = self.locks)]
    async fn call(&self, id: u32) -> Result<u32, LockError> {
        tokio::task::yield_now().await;
        Ok(id)
    }
}

#[tokio::main]
async fn main() {
    lock_guard::set_default(LockManager::memory());
    let data = vec![1, 2, 3];
    assert_eq!(require_send(guarded(1, &data)).await.unwrap(), 4);
    let service = std::sync::Arc::new(Service {
        locks: LockManager::memory(),
    });
    let handle = tokio::spawn({
        let service = service.clone();
        async move { require_send(service.call(5)).await }
    });
    assert_eq!(handle.await.unwrap().unwrap(), 5);
    let spawned = tokio::spawn(async move { guarded(2, &[0u8; 2]).await });
    assert_eq!(spawned.await.unwrap().unwrap(), 4);
}
