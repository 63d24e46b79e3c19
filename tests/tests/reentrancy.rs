//! Reentrancy: a guarded call nested in a guarded body, same task, same manager and key,
//! runs at once without taking the lock again; a task spawned from the body is another owner.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisServer, backend_tests};
use tokio::time::Instant;

const WAIT: LockOptions = LockOptions::new()
    .wait(Duration::from_secs(5))
    .lease(Duration::from_secs(10));

/// Tries the lock once from a freshly spawned task (a different owner); `true` if it was free.
async fn free_for_another_task(locks: &LockManager, key: &LockKey) -> bool {
    let (locks, key) = (locks.clone(), key.clone());
    tokio::spawn(async move {
        locks
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await
            .is_ok()
    })
    .await
    .unwrap()
}

backend_tests! {
    /// A nested call keeps its own deadline: the earlier of its own and the enclosing one.
    /// An inner body with `timeout = 200ms` inside an outer one of 5 s is dropped at ~200 ms with
    /// `Deadline`, and the outer body goes on holding the lock.
    async fn nested_call_keeps_its_own_deadline(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("reentrancy").part("nested-deadline");
        let outer = locks
            .run(&key, WAIT.timeout(Duration::from_secs(5)), async {
                let start = Instant::now();
                let inner = locks
                    .run(&key, WAIT.timeout(Duration::from_millis(200)), async {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok::<_, LockError>(())
                    })
                    .await;
                let took = start.elapsed();
                Ok::<_, LockError>((inner, took))
            })
            .await;
        let (inner, took) = outer.expect("the outer call succeeds");
        eprintln!("{}: nested call ended after {took:?}: {inner:?}", backend.name());
        assert!(matches!(inner, Err(LockError::Deadline { .. })), "the nested call ignored its deadline: {inner:?}");
        assert!(took < Duration::from_millis(400), "the nested body ran {took:?}");
        lock_guard_tests::faults::Figures::new(
            &format!("reentrancy::{}::nested_call_keeps_its_own_deadline", backend.name()),
            &format!("nested reentrant call with a shorter `timeout` ({})", backend.name()),
            "keeps its own deadline (S13)",
        )
        .ms("ended_after_ms", took)
        .measured(&format!("ended at {} (timeout 200 ms)", lock_guard_tests::faults::ms(took)))
        .print();
    }

    /// Two bodies of one key driven by `join!` in one task never run at the same time: the
    /// second waits for the first or fails clearly.
    async fn joined_bodies_of_one_key_never_overlap(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("reentrancy").part("joined");
        let busy = std::sync::atomic::AtomicBool::new(false);
        let overlaps = std::sync::atomic::AtomicU32::new(0);
        let body = || async {
            if busy.swap(true, std::sync::atomic::Ordering::SeqCst) {
                overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            busy.store(false, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, LockError>(())
        };
        let outer = locks
            .run(&key, WAIT, async {
                let (a, b) = tokio::join!(locks.run(&key, WAIT, body()), locks.run(&key, WAIT, body()));
                Ok::<_, LockError>((a, b))
            })
            .await;
        let (a, b) = outer.expect("the outer call succeeds");
        eprintln!("{}: joined nested bodies: {a:?} {b:?}", backend.name());
        assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "two bodies of one key ran at once");
        assert!(a.is_ok() || b.is_ok(), "at least one body runs: {a:?} {b:?}");
        let (la, lb) = tokio::join!(locks.run(&key, WAIT, body()), locks.run(&key, WAIT, body()));
        assert!(la.is_ok() && lb.is_ok(), "un-nested, both run in turn: {la:?} {lb:?}");
        assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "two bodies of one key ran at once");
        lock_guard_tests::faults::Figures::new(
            &format!("reentrancy::{}::joined_bodies_of_one_key_never_overlap", backend.name()),
            &format!("two nested bodies of one key under `join!` ({})", backend.name()),
            "never run at the same time (S13)",
        )
        .measured("no overlap; nested and un-nested")
        .print();
    }

    /// Nested three deep, each with a 5 s wait: the inner calls return at once, see the outer
    /// token, send nothing to Redis, and the lock is still held after they return.
    async fn nested_call_runs_at_once(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("reentrancy").part("nested");
        let outer = locks
            .run(&key, WAIT, async {
                let token = lock_guard::fencing_token().unwrap();
                let commands = locks.metrics().commands;
                let start = Instant::now();
                let inner = locks
                    .run(&key, WAIT, async {
                        locks
                            .run(&key, WAIT.wait(Duration::ZERO), async { Ok::<_, LockError>(lock_guard::fencing_token()) })
                            .await
                    })
                    .await?;
                let took = start.elapsed();
                assert!(took < Duration::from_millis(100), "the nested calls took {took:?}");
                assert_eq!(inner, Some(token), "the nested body sees the outer acquisition's token");
                assert_eq!(locks.metrics().commands, commands, "the nested calls sent commands");
                assert!(!free_for_another_task(&locks, &key).await, "a nested call released the outer lock");
                Ok::<_, LockError>(token)
            })
            .await;
        assert!(outer.is_ok(), "{outer:?}");
        assert!(free_for_another_task(&locks, &key).await, "the outer call released the lock at its end");
    }

    /// A task spawned from the body is a different owner: `wait = 0` gives `NotAcquired`, and a
    /// waiting one gets the lock only after the body has ended.
    async fn spawned_task_is_another_owner(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("reentrancy").part("spawned");
        let (tried_once, waiting, body_end) = locks
            .run(&key, WAIT, async {
                let tried_once = tokio::spawn({
                    let (locks, key) = (locks.clone(), key.clone());
                    async move {
                        locks.run(&key, WAIT.wait(Duration::ZERO), async { Ok::<_, LockError>(()) }).await
                    }
                })
                .await
                .unwrap();
                let waiting = tokio::spawn({
                    let (locks, key) = (locks.clone(), key.clone());
                    async move {
                        locks.run(&key, WAIT, async { Ok::<_, LockError>(Instant::now()) }).await
                    }
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, LockError>((tried_once, waiting, Instant::now()))
            })
            .await
            .unwrap();
        assert!(tried_once.as_ref().is_err_and(LockError::is_not_acquired), "{tried_once:?}");
        let acquired_at = waiting.await.unwrap().expect("the spawned waiter gets the lock after the body");
        assert!(acquired_at >= body_end, "the spawned task ran inside the body's lock");
    }

    /// A nested call on another key takes that key's lock normally.
    async fn nested_call_on_another_key_takes_its_lock(backend) {
        let locks = backend.manager().await;
        let (a, b) = (LockKey::new("reentrancy").part("a"), LockKey::new("reentrancy").part("b"));
        let result = locks
            .run(&a, WAIT, async {
                let outer = lock_guard::fencing_token();
                locks
                    .run(&b, WAIT, async {
                        assert_ne!(lock_guard::fencing_token(), None);
                        assert!(!free_for_another_task(&locks, &b).await, "b is held by the nested call");
                        assert!(!free_for_another_task(&locks, &a).await, "a is still held");
                        Ok::<_, LockError>(())
                    })
                    .await?;
                assert_eq!(lock_guard::fencing_token(), outer, "back in the outer body, its token again");
                assert!(free_for_another_task(&locks, &b).await, "b released after the nested call");
                Ok::<_, LockError>(())
            })
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    /// Reentrancy does not outlive the call: the same task's next guarded call takes the lock
    /// afresh (a new, larger token).
    async fn sequential_calls_take_the_lock_afresh(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("reentrancy").part("sequential");
        let token = || async { lock_guard::fencing_token() };
        let first = locks.run(&key, WAIT, async { Ok::<_, LockError>(token().await) }).await.unwrap();
        let second = locks.run(&key, WAIT, async { Ok::<_, LockError>(token().await) }).await.unwrap();
        // Both must be tokens: `Some(_) > None` would hide a missing one.
        let (first, second) = (first.expect("a token in the first body"), second.expect("a token in the second body"));
        assert!(second > first, "{second} after {first}");
    }
}

/// Reentrancy is per manager: a nested call for the same key on another manager (another service
/// instance) is another owner, and with `wait = 0` gets `NotAcquired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_call_on_another_manager_is_not_reentrant() {
    let server = RedisServer::start();
    let (locks, other) = (server.manager().await, server.manager().await);
    let key = LockKey::new("reentrancy").part("other-manager");
    let nested = locks
        .run(&key, WAIT, async {
            Ok::<_, LockError>(
                other
                    .run(&key, WAIT.wait(Duration::ZERO), async {
                        Ok::<_, LockError>(())
                    })
                    .await,
            )
        })
        .await
        .unwrap();
    assert!(
        nested.as_ref().is_err_and(LockError::is_not_acquired),
        "{nested:?}"
    );
}
