//! The `maxmemory-policy` check: every lock key carries a TTL, so a server that may evict keys
//! (any policy but `noeviction`, once `maxmemory` is set) can delete a held lock under memory
//! pressure — `volatile-ttl` evicts the locks with the least lease left first — and a second holder
//! takes it. The manager refuses such a server unless the user opted in
//! ([`LockManagerBuilder::allow_eviction`](crate::LockManagerBuilder::allow_eviction)).
//!
//! The check reads `INFO memory` (allowed where `CONFIG` is renamed away, as on managed services)
//! on every connection the manager opens: at start, and after every reconnect (a failover or a
//! restart may bring a server with another configuration).

use redis::{ErrorKind, RedisError};

/// What a refused server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Evicting {
    pub(crate) policy: String,
    pub(crate) maxmemory: u64,
}

/// Marks a connection refused for its eviction policy (so the manager's build can report it as a
/// configuration error rather than a backend failure).
const REFUSED: &str = "lock-guard refuses a server whose maxmemory-policy can evict locks";

/// The server's eviction setting from its `INFO memory` text, when it can evict keys with a TTL:
/// a policy other than `noeviction` with a memory limit. No limit (`maxmemory:0`) never evicts.
pub(crate) fn evicting(info: &str) -> Option<Evicting> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let policy = field("maxmemory_policy")?;
    let maxmemory = field("maxmemory")?.parse::<u64>().ok()?;
    (policy != "noeviction" && maxmemory > 0).then(|| Evicting {
        policy: policy.to_owned(),
        maxmemory,
    })
}

/// The reason a server is refused, naming its setting and both ways out.
pub(crate) fn reason(server: &str, e: &Evicting) -> String {
    format!(
        "{server} has maxmemory-policy `{}` with maxmemory {} bytes: under memory pressure Redis may \
         evict held locks (every lock key has a TTL) and hand the same key to a second holder. Set \
         `maxmemory-policy noeviction` on that server, or, knowingly, \
         LockManagerBuilder::allow_eviction(true)",
        e.policy, e.maxmemory
    )
}

/// Reads `INFO memory` on a fresh connection; an error naming the policy if it may evict.
pub(crate) async fn check(
    conn: &mut impl redis::aio::ConnectionLike,
    server: &str,
) -> Result<(), RedisError> {
    let info: String = match redis::cmd("INFO").arg("memory").query_async(conn).await {
        Ok(info) => info,
        Err(e) if e.code() == Some("NOPERM") => {
            tracing::warn!(
                server,
                "not allowed to read INFO memory: the eviction policy is not checked"
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match evicting(&info) {
        None => Ok(()),
        Some(e) => Err(refusal(server, &e)),
    }
}

pub(crate) fn refusal(server: &str, e: &Evicting) -> RedisError {
    RedisError::from((ErrorKind::Client, REFUSED, reason(server, e)))
}

/// The configuration error behind a connection refused by [`check`], if `e` is one.
pub(crate) fn as_config(e: &RedisError) -> Option<crate::LockError> {
    (e.kind() == ErrorKind::Client && e.to_string().contains(REFUSED))
        .then(|| crate::LockError::config(e.detail().unwrap_or(REFUSED)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_policy() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory:1048576\r\nmaxmemory_human:1.00M\r\nmaxmemory_policy:volatile-ttl\r\n";
        assert_eq!(
            evicting(info),
            Some(Evicting {
                policy: "volatile-ttl".into(),
                maxmemory: 1_048_576
            })
        );
        assert_eq!(
            evicting("maxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n"),
            None,
            "no limit, no eviction"
        );
        assert_eq!(
            evicting("maxmemory:100\r\nmaxmemory_policy:noeviction\r\n"),
            None
        );
        assert_eq!(evicting("garbage"), None);
    }

    #[test]
    fn the_refusal_is_a_config_error_naming_the_policy() {
        let e = refusal(
            "redis://127.0.0.1:1",
            &Evicting {
                policy: "allkeys-lru".into(),
                maxmemory: 10,
            },
        );
        let config = as_config(&e).expect("recognised").to_string();
        assert!(config.contains("allkeys-lru"), "{config}");
        assert!(config.contains("allow_eviction"), "{config}");
        assert!(as_config(&RedisError::from((ErrorKind::Client, "other"))).is_none());
    }
}
