//! Leases and deadlines: a forgotten lock frees itself at the lease end; a slow body is
//! dropped at its deadline, before the lock is released, and its later side effects never happen.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockOptions};
use lock_guard_tests::backend_tests;
use tokio::time::{Instant, sleep, sleep_until};

/// Records when it is dropped: put into a body to see when the body's future goes away.
struct DropProbe(Arc<Mutex<Option<Instant>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

/// A service's error type: lock failures convert into it.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the body's own error")]
    Body,
}

backend_tests! {
    /// A guard that is never released nor dropped (`mem::forget`): the lock frees itself when
    /// the lease ends, not before.
    async fn forgotten_lock_frees_at_lease_end(backend) {
        let holder = backend.manager().await;
        let other = backend.manager().await;
        let key = LockKey::new("lease").part("forgotten");
        let lease = Duration::from_millis(800);
        let held_at = Instant::now();
        std::mem::forget(holder.lock(&key, LockOptions::new().lease(lease)).await.unwrap());

        let guard = other
            .lock(&key, LockOptions::new().wait(Duration::from_secs(5)))
            .await
            .expect("the lease frees the forgotten lock");
        let after = held_at.elapsed();
        eprintln!("{}: forgotten lock (lease {lease:?}) taken over after {after:?}", backend.name());
        assert!(after >= lease - Duration::from_millis(50), "taken over after {after:?}, within the lease");
        assert!(after < lease + Duration::from_millis(700), "taken over only after {after:?}");
        assert!(guard.release().await.unwrap());
    }

    /// `timeout = 300ms`, a body that sleeps 1 s and then sets a flag: `Deadline` at 300 ms, the
    /// lock is free at once, and the flag is still unset well after the second.
    async fn deadline_drops_a_slow_body(backend) {
        let locks = backend.manager().await;
        let other = backend.manager().await;
        let key = LockKey::new("lease").part("deadline");
        let flag = Arc::new(AtomicBool::new(false));
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let result: Result<(), LockError> = locks
            .run(&key, LockOptions::new().lease(Duration::from_secs(3)).timeout(timeout), {
                let flag = flag.clone();
                async move {
                    sleep(Duration::from_secs(1)).await;
                    flag.store(true, SeqCst);
                    Ok(())
                }
            })
            .await;
        let elapsed = start.elapsed();
        match result {
            Err(LockError::Deadline { key: k, timeout: t }) => {
                assert_eq!(k, locks.redis_key(&key));
                assert_eq!(t, timeout);
            }
            other => panic!("expected Deadline, got {other:?}"),
        }
        assert!(elapsed >= timeout, "dropped after {elapsed:?}, before the timeout");
        assert!(elapsed < timeout + Duration::from_millis(500), "dropped only after {elapsed:?}");

        let again = other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(again.is_ok(), "the lock is free right after the deadline: {again:?}");

        sleep_until(start + Duration::from_millis(1500)).await;
        assert!(!flag.load(SeqCst), "the dropped body went on running");
    }

    /// Without `timeout`, the deadline is two thirds of a fixed lease.
    async fn default_deadline_is_two_thirds_of_the_lease(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("lease").part("two-thirds");
        let start = Instant::now();
        let result: Result<(), LockError> = locks
            .run(&key, LockOptions::new().lease(Duration::from_millis(900)), std::future::pending())
            .await;
        let elapsed = start.elapsed();
        assert!(matches!(result, Err(LockError::Deadline { .. })), "{result:?}");
        assert!(elapsed >= Duration::from_millis(600), "dropped after {elapsed:?}");
        assert!(elapsed < Duration::from_millis(900), "dropped after {elapsed:?}, past the lease");
    }

    /// The deadline counts from the acquisition, not from the start of the wait: a body of 400 ms
    /// under a 600 ms timeout succeeds after waiting 500 ms for the lock.
    async fn deadline_counts_from_the_acquisition(backend) {
        let holder = backend.manager().await;
        let locks = backend.manager().await;
        let key = LockKey::new("lease").part("after-wait");
        let held = holder.lock(&key, LockOptions::new().lease(Duration::from_secs(10))).await.unwrap();
        let release = async {
            sleep(Duration::from_millis(500)).await;
            held.release().await.unwrap()
        };
        let options = LockOptions::new().lease(Duration::from_secs(3)).timeout(Duration::from_millis(600));
        let start = Instant::now();
        let call = locks.run(&key, options, async {
            sleep(Duration::from_millis(400)).await;
            Ok::<_, LockError>(())
        });
        let (released, result) = tokio::join!(release, call);
        assert!(released);
        assert!(result.is_ok(), "{result:?}");
        assert!(start.elapsed() >= Duration::from_millis(900), "the call did not wait: {:?}", start.elapsed());
    }

    /// A `timeout` longer than the lease does not let the body outlive the lease: the deadline is
    /// the earlier of the two.
    async fn deadline_never_outlives_the_lease(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("lease").part("capped");
        let lease = Duration::from_millis(500);
        // When the body is dropped, not when the call returns (that includes the release).
        struct Dropped(std::sync::Arc<std::sync::Mutex<Option<Instant>>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = Some(Instant::now());
            }
        }
        let dropped_at = std::sync::Arc::new(std::sync::Mutex::new(None));
        let body = {
            let witness = Dropped(dropped_at.clone());
            async move {
                let _witness = witness;
                std::future::pending::<Result<(), LockError>>().await
            }
        };
        let start = Instant::now();
        let result: Result<(), LockError> = locks
            .run(&key, LockOptions::new().lease(lease).timeout(Duration::from_secs(5)), body)
            .await;
        assert!(matches!(result, Err(LockError::Deadline { .. })), "{result:?}");
        let elapsed = dropped_at.lock().unwrap().expect("the body was dropped") - start;
        assert!(elapsed < lease, "the body ran {elapsed:?}, past the lease of {lease:?}");
    }

    /// At the deadline the body is dropped first, the lock released after: a waiter never gets the
    /// lock while the old body still exists.
    async fn lock_is_released_after_the_body_is_dropped(backend) {
        let locks = backend.manager().await;
        let other = backend.manager().await;
        let key = LockKey::new("lease").part("drop-order");
        let dropped_at = Arc::new(Mutex::new(None));
        let holder = tokio::spawn({
            let (locks, key, probe) = (locks.clone(), key.clone(), DropProbe(dropped_at.clone()));
            async move {
                let options = LockOptions::new().lease(Duration::from_secs(10)).timeout(Duration::from_millis(300));
                locks
                    .run(&key, options, async move {
                        let _probe = probe;
                        std::future::pending::<Result<(), LockError>>().await
                    })
                    .await
            }
        });
        let waiter = async {
            // Starts after the holder has the lock.
            lock_guard_tests::eventually(Duration::from_secs(5), "the holder took the lock", || async {
                matches!(other.lock(&key, LockOptions::new().wait(Duration::ZERO)).await, Err(LockError::NotAcquired { .. }))
            })
            .await;
            let guard = other.lock(&key, LockOptions::new().wait(Duration::from_secs(5))).await;
            (guard, Instant::now())
        };
        let (held, (guard, acquired_at)) = tokio::join!(holder, waiter);
        assert!(matches!(held.unwrap(), Err(LockError::Deadline { .. })));
        let guard = guard.expect("the waiter gets the lock after the deadline");
        let dropped_at = dropped_at.lock().unwrap().expect("the body was dropped");
        assert!(dropped_at <= acquired_at, "the waiter got the lock before the old body was dropped");
        assert!(acquired_at - dropped_at < Duration::from_secs(1), "released {:?} after the drop", acquired_at - dropped_at);
        guard.release().await.unwrap();
    }

    /// A release that comes after the lease ran out and someone else took the lock reports
    /// `Ok(false)` and leaves the new owner's lock alone.
    async fn late_release_leaves_the_new_owner_alone(backend) {
        let first = backend.manager().await;
        let second = backend.manager().await;
        let key = LockKey::new("lease").part("late-release");
        let stale = first.lock(&key, LockOptions::new().lease(Duration::from_millis(300))).await.unwrap();
        let current = second
            .lock(&key, LockOptions::new().wait(Duration::from_secs(5)).lease(Duration::from_secs(10)))
            .await
            .expect("the lease frees the lock");
        assert!(current.fencing_token() > stale.fencing_token());

        assert!(!stale.release().await.unwrap(), "the stale holder's release must report Ok(false)");
        let probe = first.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(probe.as_ref().is_err_and(LockError::is_not_acquired), "the new owner lost the lock: {probe:?}");
        assert!(current.release().await.unwrap());
    }

    /// A body that finishes in time: its value comes back, and the lock is free afterwards.
    async fn body_in_time_returns_its_value(backend) {
        let locks = backend.manager().await;
        let key = LockKey::new("lease").part("in-time");
        let value: Result<u32, LockError> = locks
            .run(&key, LockOptions::new(), async {
                sleep(Duration::from_millis(50)).await;
                Ok(42)
            })
            .await;
        assert_eq!(value.unwrap(), 42);
        let err: Result<(), AppError> = locks.run(&key, LockOptions::new(), async { Err(AppError::Body) }).await;
        assert!(matches!(err, Err(AppError::Body)), "{err:?}");
        let free = locks.lock(&key, LockOptions::new().wait(Duration::ZERO)).await;
        assert!(free.is_ok(), "{free:?}");
    }
}
