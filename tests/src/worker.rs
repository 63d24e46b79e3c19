//! Worker OS processes (the `lock_worker` binary) for cross-process fault tests, and signals
//! (`SIGSTOP`, `SIGCONT`, `SIGKILL`) sent to them with `kill`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// A running `lock_worker` process; its stdout lines come through [`line`](Self::line). Killed
/// (SIGKILL) on drop.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Worker {
    /// Starts `bin` (pass `env!("CARGO_BIN_EXE_lock_worker")`) with `args` (`name=value` each).
    pub fn spawn(bin: &str, args: &[String]) -> Worker {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start the worker {bin}: {e}"));
        let stdout = child.stdout.take().expect("the worker's stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Worker {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line starting with `prefix` (other lines are kept in [`seen`](Self::seen)), or
    /// `None` if the worker's output ended or `within` passed first.
    pub async fn line(&mut self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .ok()??;
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
    }

    /// Moves the lines the worker printed so far into [`seen`](Self::seen) without waiting, so the
    /// next [`line`](Self::line) returns a line printed from now on.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Reads every line until the worker's output ends (or `within` passes); returns them all.
    pub async fn finish(&mut self, within: Duration) -> Vec<String> {
        while self.line("\u{0}", within).await.is_some() {}
        self.seen.clone()
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`) with `kill -<signal> <pid>`.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for the process to exit (after a `KILL`, at once).
    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -<signal> <pid>`.
///
/// # Panics
///
/// If `kill` cannot be run.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    // A process that already exited is not an error for a nemesis.
    let _ = status;
}

/// Microseconds since the Unix epoch, by the system clock (the one the worker prints).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The whitespace-separated field `n` of a worker line (`ACQUIRED key token …` has the key at 1).
pub fn field(line: &str, n: usize) -> &str {
    line.split_whitespace().nth(n).unwrap_or_default()
}
