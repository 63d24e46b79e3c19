//! The manager as a value: cheap to clone, `Send + Sync`, shareable across tasks; guards
//! and guarded calls can move between threads.

use std::time::Duration;

use lock_guard::{LockError, LockGuard, LockKey, LockManager, LockOptions};
use lock_guard_tests::backend_tests;

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
fn assert_send<T: Send>(_: &T) {}

#[test]
fn manager_and_guard_types_can_be_shared() {
    assert_send_sync_clone::<LockManager>();
    fn guard_is_send(g: LockGuard) -> impl Send {
        g
    }
    let _ = guard_is_send;
}

backend_tests! {
    /// Clones share the lock space; a guarded call's future is `Send` (it can be spawned) and a
    /// guard moved to another task releases there.
    async fn clones_share_locks_and_calls_can_be_spawned(backend) {
        let locks = backend.manager().await;
        let clone = locks.clone();
        let key = LockKey::new("manager").part("clone");
        let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
        let held = clone.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(held.as_ref().is_err_and(LockError::is_not_acquired), "{held:?}");

        let released = tokio::spawn(async move { guard.release().await }).await.unwrap();
        assert!(released.unwrap());
        let call = {
            let (clone, key) = (clone.clone(), key.clone());
            async move { clone.run(&key, LockOptions::new(), async { Ok::<_, LockError>(1) }).await }
        };
        assert_send(&call);
        assert_eq!(tokio::spawn(call).await.unwrap().unwrap(), 1);
        assert!(format!("{locks:?}").contains(backend.name()), "{locks:?}");
    }
}
