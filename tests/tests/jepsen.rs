//! A Jepsen-style run: several worker OS processes × tasks take a handful of keys
//! while a nemesis freezes (SIGSTOP/SIGCONT), kills and restarts workers, freezes a worker whose
//! bare-guard task is mid-section for longer than the lease (its late write must be fenced out),
//! and stalls (`CLIENT PAUSE`) or restarts Redis at random. Every critical section goes through the fenced
//! store (`begin` and `end`, timed by the store's clock); afterwards a checker proves that no two
//! accepted sections of a key overlap and that accepted tokens only rise, and counts what was
//! fenced out.
//!
//! `LOCK_GUARD_JEPSEN_SECS` sets the duration of [`jepsen_short`] (default 5 s); [`jepsen_minute`]
//! is the minute-long run: `cargo test -p lock-guard-tests --test jepsen -- --ignored --nocapture`.

use std::time::Duration;

use lock_guard_tests::faults::{PauseMode, pause};
use lock_guard_tests::{FencedStore, RedisServer, Worker, check, field, unix_micros};
use tokio::time::{Instant, sleep};

const WORKER: &str = env!("CARGO_BIN_EXE_lock_worker");
const KEYS: [&str; 3] = ["a", "b", "c"];
const WORKERS: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spawn_worker(server: &RedisServer, store: &RedisServer, remaining: Duration) -> Worker {
    Worker::spawn(
        WORKER,
        &[
            format!("url={}", server.url()),
            format!("store={}", store.url()),
            format!("keys={}", KEYS.join(",")),
            "mode=jepsen".to_owned(),
            "tasks=3".to_owned(),
            "guard_tasks=1".to_owned(),
            "lease_ms=400".to_owned(),
            "wait_ms=1000".to_owned(),
            "command_timeout_ms=300".to_owned(),
            format!("duration_ms={}", remaining.as_millis()),
        ],
    )
}

async fn run(duration: Duration) {
    let mut server = RedisServer::start();
    let store_server = RedisServer::start();
    let store = FencedStore::connect(&store_server.url()).await.unwrap();
    let seed = unix_micros() | 1;
    eprintln!("jepsen: {duration:?}, seed {seed}");
    let mut rng = Rng(seed);
    let end = Instant::now() + duration;
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|_| spawn_worker(&server, &store_server, duration))
        .collect();
    let mut retired: Vec<Worker> = Vec::new();
    // freeze, kill, pause all, pause write, restart redis, freeze a bare-guard holder mid-section
    let mut faults = [0u32; 6];
    let mut stale_freezes_missed = 0u32;
    // Bounded in count as well as in time.
    for step in 0..1000 {
        if Instant::now() + Duration::from_millis(700) >= end {
            break;
        }
        sleep(Duration::from_millis(200 + rng.below(400))).await;
        let w = rng.below(WORKERS as u64) as usize;
        // The first fault freezes a bare-guard holder, so every run exercises the fencing.
        let action = if step == 0 { 11 } else { rng.below(12) };
        match action {
            0..=3 => {
                workers[w].signal("STOP");
                sleep(Duration::from_millis(200 + rng.below(600))).await;
                workers[w].signal("CONT");
                faults[0] += 1;
            }
            4..=5 => {
                workers[w].signal("KILL");
                workers[w].wait();
                let remaining = end.saturating_duration_since(Instant::now());
                let fresh = spawn_worker(&server, &store_server, remaining);
                retired.push(std::mem::replace(&mut workers[w], fresh));
                faults[1] += 1;
            }
            6..=7 => {
                let mode = if rng.below(2) == 0 {
                    PauseMode::All
                } else {
                    PauseMode::Write
                };
                pause(&server, Duration::from_millis(100 + rng.below(500)), mode).await;
                faults[if mode == PauseMode::All { 2 } else { 3 }] += 1;
            }
            8 => {
                server.restart();
                faults[4] += 1;
            }
            _ => {
                // A bare-guard holder frozen mid-section past its lease (400 ms): when thawed,
                // it ends its section late, and the store must fence that write out.
                workers[w].drain();
                if workers[w]
                    .line("BEGUN", Duration::from_secs(1))
                    .await
                    .is_some()
                {
                    workers[w].signal("STOP");
                    sleep(Duration::from_millis(700 + rng.below(300))).await;
                    workers[w].signal("CONT");
                    faults[5] += 1;
                } else {
                    stale_freezes_missed += 1;
                }
            }
        }
    }
    // Every worker ends by its duration; a bounded wait for their last lines.
    let (mut completed, mut fenced, mut errors) = (0u64, 0u64, 0u64);
    for worker in &mut workers {
        worker.signal("CONT");
        let done = worker.line("DONE", Duration::from_secs(10)).await;
        let done =
            done.unwrap_or_else(|| panic!("a worker did not finish: {:?}", worker.seen.last()));
        completed += field(&done, 1).parse::<u64>().unwrap();
        fenced += field(&done, 2).parse::<u64>().unwrap();
        errors += field(&done, 3).parse::<u64>().unwrap();
    }
    drop(retired);
    drop(workers);

    let (mut sections, mut rejected, mut violations) = (0usize, 0usize, Vec::new());
    for key in KEYS {
        let report = check(&store.sections(key).await);
        sections += report.sections;
        rejected += store.rejected(key).await.len();
        violations.extend(report.overlaps);
        violations.extend(report.token_regressions);
    }
    eprintln!(
        "jepsen: faults injected: {} freezes, {} kills, {} CLIENT PAUSE ALL, {} CLIENT PAUSE WRITE, \
         {} Redis restarts, {} bare-guard holders frozen mid-section ({} found none in 1 s)",
        faults[0], faults[1], faults[2], faults[3], faults[4], faults[5], stale_freezes_missed
    );
    eprintln!(
        "jepsen: {sections} accepted sections in the store ({completed} reported by live workers), \
         {rejected} stale writes fenced out ({fenced} seen by live workers), {errors} calls failed, \
         {} violations",
        violations.len()
    );
    assert!(violations.is_empty(), "violations: {violations:#?}");
    assert!(sections > 0, "no section was accepted");
    assert!(
        faults.iter().sum::<u32>() > 0 || duration < Duration::from_secs(2),
        "no fault injected"
    );
}

/// The short run the default test suite keeps, so CI exercises the checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jepsen_short() {
    let secs = std::env::var("LOCK_GUARD_JEPSEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    run(Duration::from_secs(secs)).await;
}

/// The minute-long run; its last figures are in RELIABILITY.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long: cargo test -p lock-guard-tests --test jepsen -- --ignored --nocapture"]
async fn jepsen_minute() {
    run(Duration::from_secs(60)).await;
}

/// The checker itself finds overlapping sections and tokens that do not rise.
#[test]
fn checker_finds_violations() {
    use lock_guard_tests::Section;
    let s = |token, start, end| Section { token, start, end };
    assert!(check(&[s(1, 0, 10), s(2, 10, 20)]).overlaps.is_empty());
    assert_eq!(
        check(&[s(1, 0, 30), s(2, 10, 20), s(3, 25, 40)])
            .overlaps
            .len(),
        2
    );
    assert_eq!(
        check(&[s(2, 0, 10), s(2, 20, 30)]).token_regressions.len(),
        1
    );
}
