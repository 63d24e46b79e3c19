//! One hot key, several processes: every process is served in proportion, none starves.
//!
//! Several managers (each stands in for one service instance: its own connections, subscriber and
//! local queue) run many tasks each, all looping `lock` → (hold) → release on one key for a few
//! seconds. Every manager always has tasks waiting, so under a fair hand-over the managers take
//! turns: Jain's fairness index over the per-manager section counts stays close to 1, and no
//! manager waits more than a bounded number of other managers' sections for its next one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_guard::{LockKey, LockManager, LockOptions};
use lock_guard_tests::{RedisCluster, RedisServer};
use tokio::task::JoinSet;
use tokio::time::Instant;

const MANAGERS: usize = 4;
const TASKS: usize = 16;
const WINDOW: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(5);

/// What one window of contention produced.
#[derive(Debug)]
struct Report {
    /// Sections per manager.
    counts: Vec<usize>,
    /// Jain's fairness index over `counts`: 1 when equal, 1/n when one manager got everything.
    jain: f64,
    /// Per manager, the most sections other managers ran in a row while it waited, once the
    /// window's first `managers × TASKS` sections are over (up to the end of the window).
    max_turns: Vec<usize>,
    /// Per manager, the longest time between two of its sections (or the window's start or end).
    max_gap: Vec<Duration>,
    /// Calls that ended in an error.
    errors: usize,
}

fn jain(counts: &[usize]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

/// Runs `TASKS` tasks on each of `managers` for `WINDOW`, each looping acquire → hold → release
/// on `key`, and reports the shares.
async fn contend(managers: &[LockManager], key: &LockKey, hold: Duration) -> Report {
    let options = LockOptions::new().wait(WAIT).lease(LEASE);
    // (manager, start) of every section, in section order (pushed while holding the lock).
    let log: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let errors: Arc<Mutex<usize>> = Arc::default();
    let start = Instant::now();
    let end = start + WINDOW;
    let mut set = JoinSet::new();
    for (me, locks) in managers.iter().enumerate() {
        for _ in 0..TASKS {
            let (locks, key, log, errors) =
                (locks.clone(), key.clone(), log.clone(), errors.clone());
            set.spawn(async move {
                while Instant::now() < end {
                    match locks.lock(&key, options).await {
                        Ok(guard) => {
                            log.lock().unwrap().push((me, Instant::now()));
                            if !hold.is_zero() {
                                tokio::time::sleep(hold).await;
                            }
                            if !guard.release().await.unwrap_or(false) {
                                *errors.lock().unwrap() += 1;
                            }
                        }
                        Err(e) => {
                            eprintln!("manager {me}: {e}");
                            *errors.lock().unwrap() += 1;
                        }
                    }
                }
            });
        }
    }
    // The window ends: the tasks still waiting are dropped (cancelled), as a caller's timeout
    // would. A starved manager's tasks are among them.
    tokio::time::sleep_until(end).await;
    let log = std::mem::take(&mut *log.lock().unwrap());
    set.shutdown().await;
    if let Ok(path) = std::env::var("HOT_KEY_DUMP") {
        let seq: String = log
            .iter()
            .map(|(m, _)| char::from(b'0' + *m as u8))
            .collect();
        std::fs::write(format!("{path}-{}", hold.as_millis()), seq).unwrap();
    }
    // Let cancelled waiters' clean-ups and released guards settle before the next window.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut counts = vec![0usize; managers.len()];
    let mut max_turns = vec![0usize; managers.len()];
    let mut max_gap = vec![Duration::ZERO; managers.len()];
    let mut run = vec![0usize; managers.len()];
    let mut last = vec![start; managers.len()];
    // At the start every caller's first try registers it (each one of them), in whatever order
    // the tries reach the server: turns are counted once those registrations are served.
    let warmup = managers.len() * TASKS;
    for (i, &(me, at)) in log.iter().filter(|(_, at)| *at < end).enumerate() {
        counts[me] += 1;
        max_gap[me] = max_gap[me].max(at - last[me]);
        last[me] = at;
        if i == warmup {
            run.iter_mut().for_each(|r| *r = 0);
        }
        if i >= warmup {
            max_turns[me] = max_turns[me].max(run[me]);
        }
        run[me] = 0;
        for (other, r) in run.iter_mut().enumerate() {
            if other != me {
                *r += 1;
            }
        }
    }
    for me in 0..managers.len() {
        max_turns[me] = max_turns[me].max(run[me]);
        max_gap[me] = max_gap[me].max(end - last[me]);
    }
    Report {
        jain: jain(&counts),
        counts,
        max_turns,
        max_gap,
        errors: *errors.lock().unwrap(),
    }
}

/// How long a release reserves the lock for the process it names (the runtime's `HANDOVER`).
const RESERVATION: Duration = Duration::from_millis(100);

/// The most sections other managers may run while one manager waits for its next section, when
/// sections are not much shorter than a hand-over (`hold` of 1 ms or more).
///
/// Each process has at most one registration in the key's queue of waiting processes (its local
/// head's), registered when that head's try fails, and a release hands the lock to the oldest
/// registration. While other processes wait, a manager's next head tries (and registers) as soon
/// as the manager takes the lock, so it is behind at most the `n - 1` other processes' heads:
/// served after at most `n - 1` of their sections. Once more if its own reservation lapsed (its
/// process took longer than the reservation to react, on a loaded machine, and re-registered at
/// the back): `2 (n - 1)`. A starved process waits through hundreds.
///
/// With sections of well under a millisecond (`hold` 0), the other processes can run a few
/// sections while the registering try waits for a scheduler slot (measured: up to 20 for 4
/// processes on a loaded 2-core machine, a few milliseconds); there only the time bound applies.
fn turn_bound(n: usize) -> usize {
    2 * (n - 1)
}

/// The longest a manager may go without a section, whatever the sections' length here: behind at
/// most `n - 1` other processes' turns and its own late registration, each of which may cost at
/// worst a lapsed reservation before the next in line takes the lock — `n` reservations — doubled
/// for a loaded machine. (Measured: at most 0.15 s; a starved process waits the whole window.)
fn gap_bound(n: usize) -> Duration {
    RESERVATION * 2 * n as u32
}

fn print(what: &str, hold: Duration, r: &Report) {
    eprintln!(
        "{what}, hold {hold:?}: per-manager sections {:?}; Jain {:.3}; most turns of others in a \
         row {:?} (bound {}); longest gap {:?}; errors {}",
        r.counts,
        r.jain,
        r.max_turns,
        turn_bound(r.counts.len()),
        r.max_gap,
        r.errors
    );
}

fn check(what: &str, hold: Duration, r: &Report) {
    assert_eq!(r.errors, 0, "{what}: calls failed within their 30 s wait");
    let total: usize = r.counts.iter().sum();
    assert!(
        total >= 10 * r.counts.len(),
        "{what}: too few sections to judge ({total})"
    );
    assert!(
        r.jain >= 0.95,
        "{what}, hold {hold:?}: unfair shares {:?} (Jain {:.3})",
        r.counts,
        r.jain
    );
    let n = r.counts.len();
    for (me, &gap) in r.max_gap.iter().enumerate() {
        assert!(
            gap <= gap_bound(n),
            "{what}, hold {hold:?}: manager {me} went {gap:?} without a section (bound {:?}); \
             shares {:?}",
            gap_bound(n),
            r.counts
        );
    }
    for (me, &turns) in r.max_turns.iter().enumerate() {
        if hold.is_zero() {
            break;
        }
        assert!(
            turns <= turn_bound(r.counts.len()),
            "{what}, hold {hold:?}: manager {me} waited through {turns} sections of others \
             (bound {}); shares {:?}",
            turn_bound(r.counts.len()),
            r.counts
        );
    }
}

/// Rounds per hold time (`HOT_KEY_ROUNDS` to measure more): the starvation this guards against
/// showed in one window in ten to one in two, so several windows each.
fn rounds() -> usize {
    std::env::var("HOT_KEY_ROUNDS").map_or(4, |r| r.parse().expect("HOT_KEY_ROUNDS"))
}

async fn managers_take_turns(make: impl AsyncFn() -> LockManager, what: &str) {
    let mut reports = Vec::new();
    for round in 0..rounds() {
        for hold in [Duration::ZERO, Duration::from_millis(1)] {
            // Fresh managers per window: the starvation was tied to how they started.
            let mut managers = Vec::with_capacity(MANAGERS);
            for _ in 0..MANAGERS {
                managers.push(make().await);
            }
            let key = LockKey::new("hot").part(format!("{round}-{}", hold.as_millis()));
            let report = contend(&managers, &key, hold).await;
            reports.push((hold, report));
        }
    }
    for (hold, report) in &reports {
        print(what, *hold, report);
    }
    for (hold, report) in &reports {
        check(what, *hold, report);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manager_is_served_in_turn_on_one_server() {
    let server = RedisServer::start();
    managers_take_turns(async || server.manager().await, "one server").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manager_is_served_in_turn_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    managers_take_turns(async || cluster.manager().await, "cluster").await;
}

/// Many processes on one key: a hand-over costs a constant number of commands, not one per
/// waiting process. Sections are held longer than a reservation, so every reservation ends while
/// its claimant holds the lock: a design in which every waiting process re-checks at the end of
/// each reservation costs a script per waiting process per section here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_costs_the_same_however_many_processes_wait() {
    const PROCESSES: usize = 50;
    const WARMUP: usize = 5;
    const MEASURED: usize = 10;
    let hold = RESERVATION + Duration::from_millis(50);
    let server = RedisServer::start();
    let mut managers = Vec::with_capacity(PROCESSES);
    for _ in 0..PROCESSES {
        managers.push(server.manager().await);
    }
    let key = LockKey::new("hot").part("many-processes");
    let options = LockOptions::new()
        .wait(Duration::from_secs(60))
        .lease(LEASE);
    let sections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Commands sent by all managers when the section numbered by the index began.
    let marks: Arc<Mutex<Vec<u64>>> = Arc::default();
    let all_commands = {
        let managers = managers.clone();
        move || managers.iter().map(|m| m.metrics().commands).sum::<u64>()
    };
    let mut set = JoinSet::new();
    for locks in &managers {
        let (locks, key, sections, marks, all_commands) = (
            locks.clone(),
            key.clone(),
            sections.clone(),
            marks.clone(),
            all_commands.clone(),
        );
        set.spawn(async move {
            loop {
                let guard = locks.lock(&key, options).await.expect("served within 60 s");
                let n = sections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                marks.lock().unwrap().push(all_commands());
                if n >= WARMUP + MEASURED {
                    guard.release().await.unwrap();
                    return;
                }
                tokio::time::sleep(hold).await;
                guard.release().await.unwrap();
            }
        });
    }
    // Once the last measured section began, the remaining tasks are cancelled.
    while sections.load(std::sync::atomic::Ordering::SeqCst) <= WARMUP + MEASURED {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set.shutdown().await;
    let marks = marks.lock().unwrap().clone();
    let per_section = (marks[WARMUP + MEASURED] - marks[WARMUP]) as f64 / MEASURED as f64;
    eprintln!(
        "{PROCESSES} processes, sections of {hold:?}: {per_section:.1} commands per section \
         (all managers, over {MEASURED} sections after {WARMUP})"
    );
    // Per section: the release, the claimant's acquisition, the releasing process's next try (it
    // queues again at once, and registers), the check of the one watching the reservation, and
    // a little slack for a try that met a reservation. Not one per waiting process.
    assert!(
        per_section <= 8.0,
        "{per_section:.1} commands per section with {PROCESSES} processes waiting"
    );
}
