//! A fenced store: a second `redis-server` playing "the database" that a lock protects. A write
//! for a key is accepted only if its fencing token is at least the highest that key has seen
//! (which it then records); a stale holder's write is rejected and counted. Times are the store's
//! own clock (`TIME`), read inside the script, so sections from several processes compare.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

/// The fencing check, shared by every operation: `KEYS[1]` highest token seen, `KEYS[2]` log of
/// accepted sections, `KEYS[3]` log of rejections, `KEYS[4]` start times of open sections;
/// `ARGV[1]` op (`begin`, `end`, `write`), `ARGV[2]` token. Replies `{1, now_us, start_us}` when
/// accepted, `{0, highest}` when fenced out.
const FENCE: &str = r"
local token = tonumber(ARGV[2])
local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if token < highest then
  redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. string.format('%.0f', now))
  return {0, string.format('%.0f', highest)}
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[1] == 'begin' then
  redis.call('HSET', KEYS[4], ARGV[2], string.format('%.0f', now))
  return {1, string.format('%.0f', now), string.format('%.0f', now)}
end
local start = redis.call('HGET', KEYS[4], ARGV[2]) or string.format('%.0f', now)
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[2] .. ' ' .. start .. ' ' .. string.format('%.0f', now))
return {1, string.format('%.0f', now), start}
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

/// What the store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Accepted at this store time (µs).
    Accepted(u64),
    /// Rejected: the key has seen this higher token.
    Rejected(u64),
}

/// A client of the fenced store at `url` (see the module docs).
#[derive(Clone)]
pub struct FencedStore {
    con: MultiplexedConnection,
    script: Script,
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
        })
    }

    async fn call(&self, op: &str, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        let reply: Vec<String> = self
            .script
            .key(format!("fs:{{{key}}}:highest"))
            .key(format!("fs:{{{key}}}:log"))
            .key(format!("fs:{{{key}}}:rejected"))
            .key(format!("fs:{{{key}}}:open"))
            .arg(op)
            .arg(token)
            .invoke_async(&mut self.con.clone())
            .await?;
        let n = |i: usize| reply.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(match n(0) {
            1 => Fenced::Accepted(n(1)),
            _ => Fenced::Rejected(n(1)),
        })
    }

    /// Opens a critical section of `key` with `token` (recording its start).
    pub async fn begin(&self, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        self.call("begin", key, token).await
    }

    /// Closes the section `token` opened: accepted only if no higher token came meanwhile.
    pub async fn end(&self, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        self.call("end", key, token).await
    }

    /// A single fenced write (a section that starts and ends at once).
    pub async fn write(&self, key: &str, token: u64) -> redis::RedisResult<Fenced> {
        self.call("write", key, token).await
    }

    /// The accepted sections of `key`, in the order they were accepted.
    pub async fn sections(&self, key: &str) -> Vec<Section> {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("fs:{{{key}}}:log"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con.clone())
            .await
            .expect("LRANGE the store's log");
        lines
            .iter()
            .map(|l| {
                let v: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
                Section {
                    token: v[0],
                    start: v[1],
                    end: v[2],
                }
            })
            .collect()
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

/// What [`check`] found over the sections of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Accepted sections.
    pub sections: usize,
    /// Pairs of accepted sections that overlap in store time, described.
    pub overlaps: Vec<String>,
    /// Accepted sections whose token is not above the previous one's, described.
    pub token_regressions: Vec<String>,
}

/// Checks accepted sections (in acceptance order): no two overlap, tokens strictly rise.
pub fn check(sections: &[Section]) -> CheckReport {
    let mut report = CheckReport {
        sections: sections.len(),
        ..CheckReport::default()
    };
    let mut by_start = sections.to_vec();
    by_start.sort_by_key(|s| (s.start, s.end));
    // Against the section reaching furthest so far, not only the one before.
    let mut furthest: Option<Section> = None;
    for s in by_start {
        if let Some(f) = furthest
            && s.start < f.end
        {
            report.overlaps.push(format!("{f:?} overlaps {s:?}"));
        }
        if furthest.is_none_or(|f| s.end > f.end) {
            furthest = Some(s);
        }
    }
    for w in sections.windows(2) {
        if w[1].token <= w[0].token {
            report
                .token_regressions
                .push(format!("token {} after {}", w[1].token, w[0].token));
        }
    }
    report
}
