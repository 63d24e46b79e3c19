//! [`LockGuard`]: a held lock, released on [`release`](LockGuard::release) or on drop, and the
//! owner tokens that tell holders apart.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::protocol::{self, Landing};
use crate::backend::{Backend, Keys};
use crate::error::LockError;

/// A 128-bit owner token, as 32 hex digits: 64 random bits per process and a 64-bit counter mixed
/// with 64 more random bits, so two acquisitions never share one.
#[derive(Clone, Copy)]
pub(crate) struct Token([u8; 32]);

impl Token {
    pub(crate) fn new() -> Token {
        static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (hi, mix) = *SEED.get_or_init(|| {
            let s = std::collections::hash_map::RandomState::new();
            let mut a = s.build_hasher();
            a.write_u64(std::process::id().into());
            let mut b = s.build_hasher();
            b.write_u64(!u64::from(std::process::id()));
            (a.finish(), b.finish())
        });
        let lo = splitmix(COUNTER.fetch_add(1, Ordering::Relaxed) ^ mix);
        let mut out = [0u8; 32];
        let digits = u128::from(hi) << 64 | u128::from(lo);
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = b"0123456789abcdef"[((digits >> (124 - 4 * i)) & 0xf) as usize];
        }
        Token(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A bijective mix, so distinct counters give distinct tokens.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A held lock. Release it with [`release`](Self::release); dropping it releases it from the
/// library's background task (so it works outside a runtime too).
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    held: Option<Held>,
}

struct Held {
    backend: Arc<dyn Backend>,
    keys: Arc<Keys>,
    token: Token,
    fence: u64,
    lease: Duration,
    valid_until: Instant,
    /// Its entry in the manager's holdings, removed once the release has completed.
    registration: Option<crate::manager::Registration>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LockGuard");
        if let Some(h) = &self.held {
            d.field("key", &h.keys.lock)
                .field("fencing_token", &h.fence);
        }
        d.finish_non_exhaustive()
    }
}

impl LockGuard {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        keys: Arc<Keys>,
        token: Token,
        fence: u64,
        lease: Duration,
        valid_until: Instant,
    ) -> Self {
        tracing::debug!(key = %keys.lock, fencing_token = fence, "lock acquired");
        LockGuard {
            held: Some(Held {
                backend,
                keys,
                token,
                fence,
                lease,
                valid_until,
                registration: None,
            }),
        }
    }

    pub(crate) fn set_registration(&mut self, registration: crate::manager::Registration) {
        if let Some(h) = &mut self.held {
            h.registration = Some(registration);
        }
    }

    pub(crate) fn keys_arc(&self) -> Arc<Keys> {
        self.held().keys.clone()
    }

    pub(crate) fn owner_token(&self) -> Token {
        self.held().token
    }

    fn held(&self) -> &Held {
        // `held` is only taken by `release`, `forget` and `drop`, which consume the guard.
        self.held
            .as_ref()
            .expect("a LockGuard holds its lock until consumed")
    }

    /// This acquisition's fencing token: strictly greater than every token issued before for the
    /// same key.
    pub fn fencing_token(&self) -> u64 {
        self.held().fence
    }

    /// This section's fencing token with the lock's key: what a fenced store records (see
    /// [`fence`](crate::fence)).
    pub async fn fence(&self) -> Result<Fence, LockError> {
        let h = self.held();
        Ok(Fence::new(h.keys.lock.clone(), h.fence))
    }

    /// The Redis key of the lock, e.g. `lock:{keyword:42}`.
    pub fn key(&self) -> &str {
        &self.held().keys.lock
    }

    /// Until when the lease is surely valid (monotonic clock), renewals aside: the lease counted
    /// from when the acquire request was sent, less a drift allowance of 1 % + 2 ms. Work after
    /// this instant is no longer protected by the lock (only by the [fencing
    /// token](Self::fencing_token)).
    pub fn valid_until(&self) -> Instant {
        self.held().valid_until
    }

    pub(crate) fn lease(&self) -> Duration {
        self.held().lease
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.held().keys
    }

    pub(crate) fn token(&self) -> &str {
        self.held().token.as_str()
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.held().backend
    }

    /// Releases the lock now. `Ok(true)` when released, `Ok(false)` when it was no longer ours
    /// (its lease ran out and perhaps someone else took it; a warning is logged).
    ///
    /// A release that does not complete — this future dropped, or an error such as a command
    /// timeout, after which Redis may or may not have run it — is finished in the background,
    /// retried until it succeeds or the lease is over: the lock is never left held for the rest of
    /// its lease by a release that went astray.
    pub async fn release(mut self) -> Result<bool, LockError> {
        let r = match &self.held {
            Some(h) => release(h).await,
            None => return Ok(false),
        };
        if r.is_ok() {
            // Done: nothing left for `Drop` to release.
            self.held = None;
        }
        r
    }

    /// Releases after a guarded body: whatever happens is logged, never changes the body's result.
    pub(crate) async fn release_after_body(self) {
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "release failed; the lease will free the lock");
        }
    }

    /// Gives the guard up without releasing (the lock is known to be gone).
    pub(crate) fn forget(mut self) {
        self.held = None;
    }
}

async fn release(h: &Held) -> Result<bool, LockError> {
    let released = h.backend.release(&h.keys, h.token.as_str()).await?;
    if released {
        tracing::debug!(key = %h.keys.lock, fencing_token = h.fence, "lock released");
    } else {
        tracing::warn!(key = %h.keys.lock, fencing_token = h.fence, "lock was no longer ours at release (lease expired)");
    }
    Ok(released)
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(h) = self.held.take() else {
            return;
        };
        // Dropped while held: the caller gave up the future, the body panicked, or a release did
        // not complete (sending it again is harmless: it is owner-checked). Nothing renews the
        // lease any more: by then it has freed the lock anyway.
        let key = h.keys.lock.clone();
        let give_up = Instant::now() + h.lease;
        let h = Arc::new(h);
        let spawned = protocol::release_in_background(
            key.clone(),
            "dropped guard",
            give_up,
            Landing::Before,
            move |_| {
                let h = h.clone();
                Box::pin(async move { h.backend.release(&h.keys, h.token.as_str()).await })
            },
        );
        if !spawned {
            tracing::warn!(%key, "dropped guard not released; the lease will free the lock");
        }
    }
}

/// A section's fencing token and the lock key it was issued for: what a fenced store records per
/// key, refusing a token smaller than the greatest it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    key: Arc<str>,
    token: u64,
}

impl Fence {
    pub(crate) fn new(key: Arc<str>, token: u64) -> Self {
        Fence { key, token }
    }

    /// The Redis key of the lock, e.g. `lock:{keyword:42}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token: strictly greater than every token issued to an earlier section of the key.
    pub fn token(&self) -> u64 {
        self.token
    }
}
