//! Mutual exclusion: many tasks on two service instances, one key, one holder at a
//! time, and a non-atomic read-modify-write that stays exact.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::backend_tests;
use tokio::task::JoinSet;

/// Long enough that no task gives up while 15 others take their turns.
const OPTIONS: LockOptions = LockOptions::new()
    .wait(Duration::from_secs(60))
    .lease(Duration::from_secs(10));

/// What the critical sections share: a "row" updated with a read, a pause, and a write, and a
/// count of the tasks inside a critical section right now.
#[derive(Default)]
struct Shared {
    row: AtomicU64,
    inside: AtomicUsize,
    most_inside: AtomicUsize,
    /// Fencing tokens in the order the critical sections ran.
    tokens: Mutex<Vec<u64>>,
}

impl Shared {
    /// A lost update would show if two of these overlapped: read, pause, write read+1.
    async fn critical_section(&self, token: u64) {
        let now_inside = self.inside.fetch_add(1, SeqCst) + 1;
        self.most_inside.fetch_max(now_inside, SeqCst);
        let read = self.row.load(SeqCst);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(300)).await;
        self.row.store(read + 1, SeqCst);
        self.tokens.lock().unwrap().push(token);
        self.inside.fetch_sub(1, SeqCst);
    }

    fn check(&self, expected: u64) {
        assert_eq!(self.most_inside.load(SeqCst), 1, "two holders overlapped");
        assert_eq!(self.row.load(SeqCst), expected, "an update was lost");
        let tokens = self.tokens.lock().unwrap();
        assert_eq!(tokens.len() as u64, expected);
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "fencing tokens must increase in the order the holders ran"
        );
    }
}

/// Spawns `tasks` tasks, alternating between `managers`, each running `rounds` critical sections
/// through `section`.
async fn contend<F, Fut>(managers: &[LockManager], tasks: usize, rounds: usize, section: F)
where
    F: Fn(LockManager, Arc<Shared>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let shared = Arc::new(Shared::default());
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let (locks, shared, section) = (
            managers[t % managers.len()].clone(),
            shared.clone(),
            section.clone(),
        );
        set.spawn(async move {
            for _ in 0..rounds {
                section(locks.clone(), shared.clone()).await;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("a contending task panicked");
    }
    shared.check((tasks * rounds) as u64);
}

backend_tests! {
    /// 16 tasks on two instances × 25 rounds through `run`: 400 exact increments, never two
    /// holders at once.
    async fn run_excludes_across_two_instances(backend) {
        let managers = [backend.manager().await, backend.manager().await];
        contend(&managers, 16, 25, |locks, shared| async move {
            let key = LockKey::new("exclusion").part("run");
            locks
                .run(&key, OPTIONS, async {
                    let token = lock_guard::fencing_token().expect("inside a guarded body");
                    shared.critical_section(token).await;
                    Ok::<_, LockError>(())
                })
                .await
                .expect("every round gets the lock within its wait");
        })
        .await;
    }

    /// The same with the guard form: `lock`, work, `release`.
    async fn guards_exclude_across_two_instances(backend) {
        let managers = [backend.manager().await, backend.manager().await];
        contend(&managers, 16, 15, |locks, shared| async move {
            let key = LockKey::new("exclusion").part("guard");
            let guard = locks.lock(&key, OPTIONS).await.expect("the lock within its wait");
            shared.critical_section(guard.fencing_token()).await;
            assert!(guard.release().await.expect("release"), "the lock was still ours");
        })
        .await;
    }

    /// Different keys do not exclude each other: two holders of two keys at once.
    async fn different_keys_do_not_exclude(backend) {
        let locks = backend.manager().await;
        let other = backend.manager().await;
        let a = locks.lock(&LockKey::new("exclusion").part("a"), OPTIONS).await.unwrap();
        let b = other
            .lock(&LockKey::new("exclusion").part("b"), OPTIONS.wait(Duration::ZERO))
            .await
            .expect("another key is free");
        let held = other
            .lock(&LockKey::new("exclusion").part("a"), OPTIONS.wait(Duration::ZERO))
            .await;
        assert!(matches!(held, Err(LockError::NotAcquired { .. })), "{held:?}");
        assert!(a.release().await.unwrap());
        assert!(b.release().await.unwrap());
    }
}

/// A longer run for when a change touches acquisition or release: 32 tasks × 200 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress run (about 20 s: 6400 critical sections); run with --ignored"]
async fn stress_run_excludes_on_redis() {
    let backend = lock_guard_tests::Backend::redis();
    let managers = [
        backend.manager().await,
        backend.manager().await,
        backend.manager().await,
    ];
    contend(&managers, 32, 200, |locks, shared| async move {
        let key = LockKey::new("exclusion").part("stress");
        locks
            .run(&key, OPTIONS.wait(Duration::from_secs(600)), async {
                shared
                    .critical_section(lock_guard::fencing_token().unwrap())
                    .await;
                Ok::<_, LockError>(())
            })
            .await
            .unwrap();
    })
    .await;
}
