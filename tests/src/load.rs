//! Contention load for fault tests: tasks on several managers take a handful of keys in turn,
//! recording any two bodies of one key running at once and how long each call took to start its
//! body or fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// What a [`load`] run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Bodies that ran to their end.
    pub completed: u64,
    /// Calls that failed, with their errors.
    pub errors: Vec<String>,
    /// Times a body started while another body of the same key was running (must be 0).
    pub overlaps: u64,
    /// The longest a call took to start its body or to fail.
    pub worst_call: Duration,
}

/// `tasks` tasks, spread over `managers`, each taking one of `keys` keys of `name` in turn with
/// `options` for `duration` (and at most 10 000 calls each); bodies last `body`.
pub async fn load(
    managers: &[LockManager],
    name: &str,
    keys: usize,
    tasks: usize,
    duration: Duration,
    options: LockOptions,
    body: Duration,
) -> LoadReport {
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..keys).map(|_| AtomicBool::new(false)).collect());
    let overlaps = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let end = Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let locks = managers[t % managers.len()].clone();
        let (busy, overlaps, completed, report) = (
            busy.clone(),
            overlaps.clone(),
            completed.clone(),
            report.clone(),
        );
        let name = name.to_owned();
        set.spawn(async move {
            for i in 0..10_000usize {
                if Instant::now() >= end {
                    break;
                }
                let k = (t + i) % keys;
                let key = LockKey::new(&name).part(k);
                let start = Instant::now();
                let started = std::sync::Mutex::new(None);
                let result = locks
                    .run(&key, options, async {
                        *started.lock().unwrap() = Some(start.elapsed());
                        if busy[k].swap(true, SeqCst) {
                            overlaps.fetch_add(1, SeqCst);
                        }
                        tokio::time::sleep(body).await;
                        busy[k].store(false, SeqCst);
                        Ok::<_, LockError>(())
                    })
                    .await;
                let took = started.lock().unwrap().unwrap_or_else(|| start.elapsed());
                let mut r = report.lock().await;
                r.worst_call = r.worst_call.max(took);
                match result {
                    Ok(()) => {
                        completed.fetch_add(1, SeqCst);
                    }
                    Err(e) => {
                        // A body dropped at its deadline leaves its flag set: clear it.
                        busy[k].store(false, SeqCst);
                        r.errors.push(e.to_string());
                    }
                }
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("a load task panicked");
    }
    let mut report = std::mem::take(&mut *report.lock().await);
    report.completed = completed.load(SeqCst);
    report.overlaps = overlaps.load(SeqCst);
    report
}

/// Whether every one of the `keys` keys of `name` can be taken at once (`wait = 0`) by
/// `locks`: no lock was left held by nobody. Releases what it takes.
pub async fn all_free(locks: &LockManager, name: &str, keys: usize) -> bool {
    for k in 0..keys {
        let key = LockKey::new(name).part(k);
        match locks
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await
        {
            Ok(guard) => {
                let _ = guard.release().await;
            }
            Err(_) => return false,
        }
    }
    true
}
