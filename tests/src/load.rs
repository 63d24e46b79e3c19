//! Contention load for fault tests: tasks on several managers take a handful of keys in turn,
//! recording any two bodies of one key running at once and how long each call took to start its
//! body or fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// What a [`load`] run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Bodies that ran to their end.
    pub completed: u64,
    /// The errors of the calls that failed.
    pub errors: Vec<LockError>,
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
    // Per key, how many bodies are inside it right now.
    let inside: Arc<Vec<AtomicU32>> = Arc::new((0..keys).map(|_| AtomicU32::new(0)).collect());
    let overlaps = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let end = Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let locks = managers[t % managers.len()].clone();
        let (inside, overlaps, completed, report) = (
            inside.clone(),
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
                        // Leaves when the body ends or is dropped (at its deadline): before the
                        // release, never after it.
                        let _inside = Inside::enter(&inside[k], &overlaps);
                        tokio::time::sleep(body).await;
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
                    Err(e) => r.errors.push(e),
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

/// A body inside its key: counts an overlap when another body already was, and leaves when
/// dropped.
struct Inside<'a>(&'a AtomicU32);

impl<'a> Inside<'a> {
    fn enter(inside: &'a AtomicU32, overlaps: &AtomicU64) -> Self {
        if inside.fetch_add(1, SeqCst) > 0 {
            overlaps.fetch_add(1, SeqCst);
        }
        Inside(inside)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
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
