//! A fenced store: a second `redis-server` playing "the database" that a lock protects, and the
//! history a Jepsen-style checker reads.
//!
//! A write for a key is accepted only if its fencing token is at least the highest that key has
//! seen (which it then records); a stale holder's write is rejected and counted. Independently of
//! that, **every** operation is appended to the key's history — accepted or fenced out — with the
//! store's own clock (`TIME`, read inside the script), so sections from several processes compare
//! and a checker sees sections the fencing turned away (see [`check_history`]). A section is
//! identified by an id the client picks at its `begin` (process id and a counter), and the holder
//! records [`valid`](FencedStore::valid) once the lock library has confirmed that its lock was
//! still valid after the section's last reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

/// One script for every operation: `KEYS[1]` highest token seen, `KEYS[2]` history of the key
/// (every operation: `op id token now_us accepted`), `KEYS[3]` log of rejections (`op token
/// now_us`); `ARGV[1]` op (`begin`, `end`, `write`, `valid`), `ARGV[2]` token, `ARGV[3]` section
/// id. Replies `{1, now_us}` when accepted, `{0, highest}` when fenced out (`valid` is always
/// accepted: it fences nothing).
const FENCE: &str = r"
local token = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local entry = ARGV[1] .. ' ' .. ARGV[3] .. ' ' .. ARGV[2] .. ' ' .. now
if ARGV[1] == 'valid' then
  redis.call('RPUSH', KEYS[2], entry .. ' 1')
  return {1, now}
end
local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
if token < highest then
  redis.call('RPUSH', KEYS[2], entry .. ' 0')
  redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. now)
  return {0, string.format('%.0f', highest)}
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], entry .. ' 1')
return {1, now}
";

/// One accepted section (or single write) of a key: its token and the store's times, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// The fencing token it carried.
    pub token: u64,
    /// When its `begin` was accepted (for a single write, its own time).
    pub start: u64,
    /// When its `end` (or single write) was accepted.
    pub end: u64,
}

/// Everything the store recorded of one section, accepted or fenced out (times in store µs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The id its client gave it (`<pid>.<n>`).
    pub id: String,
    /// The fencing token it carried.
    pub token: u64,
    /// When its `begin` (or single write) reached the store.
    pub start: Option<u64>,
    /// The position of its `begin` in the key's history: the store runs one operation at a time,
    /// so positions order operations exactly where two times are equal.
    pub start_seq: usize,
    /// The position of its `end` in the key's history (that of its `begin` without an `end`).
    pub end_seq: usize,
    /// Whether the store accepted the `begin`.
    pub begin_accepted: bool,
    /// When its `end` reached the store (a single write ends where it starts).
    pub end: Option<u64>,
    /// Whether the store accepted the `end`.
    pub end_accepted: bool,
    /// Whether its holder recorded that the lock library confirmed the lock valid after the
    /// section's last reply (the body was still being run before its deadline; a guard's
    /// `valid_until` had not passed).
    pub valid: bool,
}

impl Record {
    /// The store-time interval `[start, end]` the section occupied; a section whose `begin` was
    /// fenced out (and that therefore never sent an `end`) occupies its `begin` instant.
    pub fn interval(&self) -> Option<(u64, u64)> {
        let start = self.start?;
        Some((start, self.end.unwrap_or(start)))
    }

    /// Whether the store turned any of its writes away.
    pub fn fenced(&self) -> bool {
        (self.start.is_some() && !self.begin_accepted) || (self.end.is_some() && !self.end_accepted)
    }
}

/// What the store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Accepted at this store time (µs).
    Accepted(u64),
    /// Rejected: the key has seen this higher token.
    Rejected(u64),
}

/// A client of the fenced store at `url` (see the module docs). Clones share the section ids
/// opened by [`begin`](Self::begin).
#[derive(Clone)]
pub struct FencedStore {
    con: MultiplexedConnection,
    script: Script,
    next_id: Arc<AtomicU64>,
    /// Open sections of this process: `(key, token)` → section id.
    open: Arc<Mutex<HashMap<(String, u64), String>>>,
}

impl std::fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FencedStore")
    }
}

impl FencedStore {
    /// Connects to the store's `redis-server` (replies wait up to 10 s).
    pub async fn connect(url: &str) -> redis::RedisResult<FencedStore> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let con = Client::open(url)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(FencedStore {
            con,
            script: Script::new(FENCE),
            next_id: Arc::new(AtomicU64::new(0)),
            open: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn fresh_id(&self) -> String {
        format!(
            "{}.{}",
            std::process::id(),
            self.next_id.fetch_add(1, Relaxed)
        )
    }

    fn open_id(&self, key: &str, token: u64) -> String {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get(&(key.to_owned(), token)) {
            Some(id) => id.clone(),
            None => {
                drop(open);
                self.fresh_id()
            }
        }
    }

    async fn call(&self, op: &str, key: &str, token: u64, id: &str) -> redis::RedisResult<Fenced> {
        let reply: Vec<String> = self
            .script
            .key(format!("fs:{{{key}}}:highest"))
            .key(format!("fs:{{{key}}}:history"))
            .key(format!("fs:{{{key}}}:rejected"))
            .arg(op)
            .arg(token)
            .arg(id)
            .invoke_async(&mut self.con.clone())
            .await?;
        let n = |i: usize| reply.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(match n(0) {
            1 => Fenced::Accepted(n(1)),
            _ => Fenced::Rejected(n(1)),
        })
    }

    /// Opens a critical section of `key` with `token` (recording its start, fenced or not).
    pub async fn begin(&self, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        let id = self.fresh_id();
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((key.to_owned(), token), id.clone());
        self.call("begin", key, token, &id).await
    }

    /// Closes the section `token` opened: accepted only if no higher token came meanwhile (its
    /// end is recorded either way).
    pub async fn end(&self, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        self.call("end", key, token, &self.open_id(key, token))
            .await
    }

    /// Records that the lock library confirmed the lock of the section `token` opened still valid
    /// after the section's last reply: call it only when the holder knows that (a guarded body
    /// still being run after the reply, or a guard whose `valid_until` had not passed when the
    /// reply came). The checker holds such sections to mutual exclusion.
    pub async fn valid(&self, key: &str, token: u64) -> redis::RedisResult<()> {
        let id = self.open_id(key, token);
        self.call("valid", key, token, &id).await?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(key.to_owned(), token));
        Ok(())
    }

    /// A single fenced write (a section that starts and ends at once).
    pub async fn write(&self, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        self.call("write", key, token, &self.fresh_id()).await
    }

    /// The store's clock (`TIME`), in µs: the clock every recorded time is on.
    pub async fn now(&self) -> u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.con.clone())
            .await
            .expect("TIME of the store");
        secs * 1_000_000 + micros
    }

    /// Every section of `key` the store heard of — accepted or fenced out, valid or not — in the
    /// order their first operation arrived.
    pub async fn history(&self, key: &str) -> Vec<Record> {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("fs:{{{key}}}:history"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con.clone())
            .await
            .expect("LRANGE the store's history");
        let mut order: Vec<String> = Vec::new();
        let mut records: HashMap<String, Record> = HashMap::new();
        for (seq, line) in lines.iter().enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            let (op, id) = (f[0], f[1]);
            let (token, now) = (f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0));
            let accepted = f[4] == "1";
            let r = records.entry(id.to_owned()).or_insert_with(|| {
                order.push(id.to_owned());
                Record {
                    id: id.to_owned(),
                    token,
                    ..Record::default()
                }
            });
            match op {
                "begin" => {
                    (r.start, r.begin_accepted) = (Some(now), accepted);
                    (r.start_seq, r.end_seq) = (seq, seq);
                }
                "end" => (r.end, r.end_accepted, r.end_seq) = (Some(now), accepted, seq),
                "write" => {
                    (r.start, r.begin_accepted) = (Some(now), accepted);
                    (r.end, r.end_accepted) = (Some(now), accepted);
                    (r.start_seq, r.end_seq) = (seq, seq);
                }
                _ => r.valid = true,
            }
        }
        order
            .into_iter()
            .filter_map(|id| records.remove(&id))
            .collect()
    }

    /// The accepted sections of `key` (`begin` and `end` both accepted, or a single accepted
    /// write), in the order their end was accepted.
    pub async fn sections(&self, key: &str) -> Vec<Section> {
        let mut accepted: Vec<Section> = self
            .history(key)
            .await
            .into_iter()
            .filter(|r| r.begin_accepted && r.end_accepted)
            .filter_map(|r| {
                Some(Section {
                    token: r.token,
                    start: r.start?,
                    end: r.end?,
                })
            })
            .collect();
        accepted.sort_by_key(|s| s.end);
        accepted
    }

    /// The rejections for `key`, each `(operation, token)`.
    pub async fn rejected(&self, key: &str) -> Vec<(String, u64)> {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("fs:{{{key}}}:rejected"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con.clone())
            .await
            .expect("LRANGE the store's rejections");
        lines
            .iter()
            .map(|l| {
                let mut it = l.split(' ');
                let op = it.next().unwrap_or_default().to_owned();
                (op, it.next().and_then(|t| t.parse().ok()).unwrap_or(0))
            })
            .collect()
    }
}

/// A window of store time (µs) in which the lock server was down and came back empty: every
/// lock granted before it was lost (the documented limit of a Redis without persistence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Store time just before the server was killed.
    pub from: u64,
    /// Store time once it answered again.
    pub to: u64,
}

/// What [`check_history`] found over the history of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Sections the store heard of (accepted or not).
    pub sections: usize,
    /// Of them, sections whose lock the library confirmed valid: the ones held to exclusion.
    pub valid: usize,
    /// Sections with a write the store turned away (stale tokens).
    pub fenced: usize,
    /// Pairs of valid sections that overlap in store time, valid sections whose tokens do not rise
    /// in the order they started, and valid sections fenced out (a higher token was written while
    /// the library said the lock was still theirs) — described. Must be empty.
    pub violations: Vec<String>,
    /// The same findings where the lower-token section's lock was granted before an empty
    /// restart of the lock server and lost to it ([`Outage`]): what a Redis without persistence
    /// allows (only fencing protects), listed apart.
    pub lost_to_restarts: Vec<String>,
}

/// Checks the history of one key (every section the store heard of, see
/// [`FencedStore::history`]): among the sections whose lock the library confirmed valid, no two
/// overlap (in the store's order of operations), tokens strictly rise in the order they started,
/// and none was fenced out. A finding where the lower-token section's lease (`lease` before its
/// last operation) includes one of `outages` is listed under `lost_to_restarts` instead.
pub fn check_history(records: &[Record], lease: Duration, outages: &[Outage]) -> CheckReport {
    let lease_us = lease.as_micros() as u64;
    let mut report = CheckReport {
        sections: records.iter().filter(|r| r.start.is_some()).count(),
        fenced: records.iter().filter(|r| r.fenced()).count(),
        ..CheckReport::default()
    };
    let lost = |r: &Record| {
        let Some((_, end)) = r.interval() else {
            return false;
        };
        outages
            .iter()
            .any(|o| o.from <= end && o.to >= end.saturating_sub(lease_us))
    };
    let mut finding = |what: String, a: &Record, b: &Record| {
        let lower = if a.token <= b.token { a } else { b };
        if a.token != b.token && lost(lower) {
            report.lost_to_restarts.push(what);
        } else {
            report.violations.push(what);
        }
    };
    let mut valid: Vec<&Record> = records
        .iter()
        .filter(|r| r.valid && r.start.is_some())
        .collect();
    valid.sort_by_key(|r| (r.start_seq, r.end_seq));
    // Overlaps: against the section reaching furthest so far, not only the one before.
    let mut furthest: Option<&Record> = None;
    // Token order: against the highest token so far.
    let mut highest: Option<&Record> = None;
    for &r in &valid {
        if let Some(f) = furthest
            && r.start_seq < f.end_seq
        {
            finding(format!("{f:?} overlaps {r:?}"), f, r);
        }
        if furthest.is_none_or(|f| r.end_seq > f.end_seq) {
            furthest = Some(r);
        }
        if let Some(h) = highest
            && r.token <= h.token
        {
            finding(
                format!(
                    "token {} started after token {}: {r:?} after {h:?}",
                    r.token, h.token
                ),
                h,
                r,
            );
        }
        if highest.is_none_or(|h| r.token > h.token) {
            highest = Some(r);
        }
    }
    for &r in &valid {
        if r.fenced() {
            // A higher token reached the store while this lock was said to be valid.
            let what = format!("fenced out while its lock was valid: {r:?}");
            if lost(r) {
                report.lost_to_restarts.push(what);
            } else {
                report.violations.push(what);
            }
        }
    }
    report.valid = valid.len();
    report
}
