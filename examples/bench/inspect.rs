//! The Redis side of the figures: connections like the library's, `INFO` snapshots and their
//! deltas (`INFO commandstats`, `INFO stats`, `INFO cpu`), `CLIENT LIST`, and this process's and
//! the server's CPU and system calls from `/proc`.

use std::collections::BTreeMap;
use std::time::Duration;

use lock_guard::redis::aio::MultiplexedConnection;
use lock_guard::redis::{self, AsyncConnectionConfig, Client};
use serde_json::{Value, json};

use crate::Res;
use crate::stats::round3;

/// Commands that the benchmark itself sends (inspection, the handoff counter, connection set-up):
/// left out of the "Redis commands per acquisition" figures. The library uses none of them.
/// `replconf` is a cluster replica's acknowledgement to its master.
pub(crate) const NOT_LIBRARY: [&str; 8] = [
    "info",
    "replconf",
    "hget",
    "hset",
    "client|list",
    "client|setinfo",
    "hello",
    "script|load",
];

/// A multiplexed connection configured as the library configures its pooled ones.
pub(crate) async fn connection(url: &str) -> Res<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(None);
    Ok(Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The benchmark's own connection for `INFO` and `CLIENT LIST`; counts what it sends, so the
/// figures can leave it out.
pub(crate) struct Inspect {
    conn: MultiplexedConnection,
    /// Commands sent so far (counted before sending).
    sent: u64,
}

/// A point-in-time reading of the server's counters.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    calls: BTreeMap<String, u64>,
    /// Microseconds the server spent in `EVALSHA`/`EVAL` (commands inside scripts included).
    script_usec: u64,
    /// Microseconds per command name.
    usec: BTreeMap<String, u64>,
    total: u64,
    inspect_sent: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    pub(crate) id: u64,
    pub(crate) subscriptions: u64,
}

impl Inspect {
    pub(crate) async fn connect(url: &str) -> Res<Inspect> {
        Ok(Inspect {
            conn: connection(url).await?,
            sent: 0,
        })
    }

    pub(crate) async fn info(&mut self, section: &str) -> Res<String> {
        self.sent += 1;
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn)
            .await?)
    }

    pub(crate) async fn server_version(&mut self) -> Res<String> {
        let info = self.info("server").await?;
        Ok(field(&info, "redis_version").unwrap_or("?").to_owned())
    }

    /// `INFO server` `process_id`.
    pub(crate) async fn server_pid(&mut self) -> Res<Option<u32>> {
        let info = self.info("server").await?;
        Ok(field(&info, "process_id").and_then(|p| p.parse().ok()))
    }

    /// `INFO commandstats` and `INFO stats` in one reply (`INFO` takes several sections).
    pub(crate) async fn snapshot(&mut self) -> Res<Snapshot> {
        self.sent += 1;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .arg("stats")
            .query_async(&mut self.conn)
            .await?;
        let mut calls = BTreeMap::new();
        let mut script_usec = 0;
        let mut usec = BTreeMap::new();
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("cmdstat_")
                && let Some((name, stats)) = rest.split_once(':')
                && let Some(n) = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
            {
                calls.insert(name.to_owned(), n);
                let spent = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("usec="))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                usec.insert(name.to_owned(), spent);
                if name == "evalsha" || name == "eval" {
                    script_usec += spent;
                }
            }
        }
        let total = field(&info, "total_commands_processed")
            .and_then(|n| n.parse().ok())
            .ok_or("INFO stats has no total_commands_processed")?;
        Ok(Snapshot {
            calls,
            script_usec,
            usec,
            total,
            inspect_sent: self.sent,
        })
    }

    /// Seconds of CPU the server has used (`used_cpu_sys` + `used_cpu_user`).
    pub(crate) async fn server_cpu(&mut self) -> Res<f64> {
        let info = self.info("cpu").await?;
        let get = |k: &str| -> Res<f64> {
            Ok(field(&info, k)
                .and_then(|v| v.parse().ok())
                .ok_or("INFO cpu lacks used_cpu_*")?)
        };
        Ok(get("used_cpu_sys")? + get("used_cpu_user")?)
    }

    pub(crate) async fn clients(&mut self) -> Res<Vec<ClientInfo>> {
        self.sent += 1;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut self.conn)
            .await?;
        Ok(list
            .lines()
            .filter_map(|line| {
                let get = |k: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                Some(ClientInfo {
                    id: get("id")?,
                    subscriptions: get("sub").unwrap_or(0)
                        + get("psub").unwrap_or(0)
                        + get("ssub").unwrap_or(0),
                })
            })
            .collect())
    }
}

pub(crate) fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// What the server did between two snapshots.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delta {
    /// Calls per command name, the library's only (without [`NOT_LIBRARY`]).
    pub(crate) library: BTreeMap<String, u64>,
    /// Every command the server processed, less the inspection connection's own.
    pub(crate) total: u64,
    /// Microseconds the server spent running scripts.
    pub(crate) script_usec: u64,
    /// Microseconds per command name, the library's only.
    pub(crate) usec: BTreeMap<String, u64>,
}

impl Delta {
    pub(crate) fn between(before: &Snapshot, after: &Snapshot) -> Delta {
        let library: BTreeMap<String, u64> = after
            .calls
            .iter()
            .filter(|(name, _)| !NOT_LIBRARY.contains(&name.as_str()))
            .map(|(name, &n)| {
                (
                    name.clone(),
                    n - before.calls.get(name).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        // The `INFO` that took `before` is counted in `after.total`, the one taking `after` is not:
        // the inspection commands inside the window are exactly those sent in between.
        let total =
            (after.total - before.total).saturating_sub(after.inspect_sent - before.inspect_sent);
        let usec = after
            .usec
            .iter()
            .filter(|(name, _)| library.contains_key(*name))
            .map(|(name, &u)| {
                (
                    name.clone(),
                    u - before.usec.get(name).copied().unwrap_or(0),
                )
            })
            .collect();
        Delta {
            library,
            total,
            script_usec: after.script_usec - before.script_usec,
            usec,
        }
    }

    pub(crate) fn add(&mut self, other: &Delta) {
        for (name, n) in &other.library {
            *self.library.entry(name.clone()).or_default() += n;
        }
        self.total += other.total;
        self.script_usec += other.script_usec;
        for (name, u) in &other.usec {
            *self.usec.entry(name.clone()).or_default() += u;
        }
    }

    pub(crate) fn library_total(&self) -> u64 {
        self.library.values().sum()
    }

    /// "evalsha 2.00, get 2.00, …" per acquisition.
    pub(crate) fn breakdown(&self, per: f64) -> String {
        let mut v: Vec<_> = self.library.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(name, n)| format!("{name} {:.2}", **n as f64 / per))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn json(&self, per: f64) -> Value {
        Value::Object(
            self.library
                .iter()
                .map(|(k, v)| (k.clone(), json!(round3(*v as f64 / per))))
                .collect(),
        )
    }
}

/// CPU time of every thread of this process so far, in seconds.
pub(crate) fn client_cpu() -> Res<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(path) {
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// This process's resident memory (`VmRSS`), in KiB.
pub(crate) fn rss_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(field(&status, "VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS in /proc/self/status")?)
}

/// `syscr` and `syscw` of `/proc/PID/io`: the `read`-family and `write`-family system calls a
/// process has made; and its context switches (`/proc/…/status`, voluntary + involuntary: how
/// often a thread went to sleep or was preempted), every thread's for this process, the main
/// thread's (the one that serves commands) for redis-server. redis-server reads and writes its sockets with `read`/`write`, so its
/// figures count them exactly; a Rust client receives with `recv` (not counted) and sends with
/// `write` (counted), and tokio's wake-ups read and write an eventfd (both counted).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Syscalls {
    pub(crate) reads: u64,
    pub(crate) writes: u64,
    pub(crate) switches: u64,
}

impl Syscalls {
    /// The counters of `pid` (this process for `None`); zero where `/proc` does not tell.
    pub(crate) fn of(pid: Option<u32>) -> Syscalls {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/io"),
            None => "/proc/self/io".to_owned(),
        };
        let io = std::fs::read_to_string(path).unwrap_or_default();
        let get = |k: &str| field(&io, k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let switches = match pid {
            Some(pid) => context_switches(&format!("/proc/{pid}/status")),
            None => std::fs::read_dir("/proc/self/task")
                .map(|tasks| {
                    tasks
                        .filter_map(Result::ok)
                        .map(|t| context_switches(&t.path().join("status").to_string_lossy()))
                        .sum()
                })
                .unwrap_or(0),
        };
        Syscalls {
            reads: get("syscr"),
            writes: get("syscw"),
            switches,
        }
    }

    pub(crate) fn add(&mut self, other: Syscalls) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.switches += other.switches;
    }

    /// Per operation: `{"read": 1.0, "write": 1.0}`.
    pub(crate) fn json(self, per: f64) -> Value {
        json!({
            "read": round3(self.reads as f64 / per),
            "write": round3(self.writes as f64 / per),
            "context_switches": round3(self.switches as f64 / per),
        })
    }

    pub(crate) fn since(self, before: Syscalls) -> Syscalls {
        Syscalls {
            reads: self.reads - before.reads,
            writes: self.writes - before.writes,
            // A thread that ended in between takes its count with it.
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a `/proc/…/status` file; 0 if
/// unreadable (a thread may end between the listing and the read).
fn context_switches(path: &str) -> u64 {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let get = |k: &str| -> u64 { field(&status, k).and_then(|v| v.parse().ok()).unwrap_or(0) };
    get("voluntary_ctxt_switches") + get("nonvoluntary_ctxt_switches")
}
