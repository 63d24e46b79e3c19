//! [`LockGuard`]: a held lock, released on [`release`](LockGuard::release) or on drop (S9, S14).

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Keys;
use crate::error::LockError;
use crate::manager::LockManager;
use crate::options::drift;

/// A 128-bit owner token, as 32 hex digits: 64 random bits per process and a 64-bit counter mixed
/// with 64 more random bits, so two acquisitions never share one.
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

/// A held lock. Release it with [`release`](Self::release); dropping it releases it from a task
/// spawned on the current tokio runtime (without a runtime, the lease frees it).
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    held: Option<Held>,
}

struct Held {
    manager: LockManager,
    keys: Arc<Keys>,
    token: Token,
    fence: u64,
    lease: Duration,
    valid_until: Instant,
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
        manager: LockManager,
        keys: Arc<Keys>,
        token: Token,
        fence: u64,
        lease: Duration,
        sent: Instant,
    ) -> Self {
        tracing::debug!(key = %keys.lock, fencing_token = fence, "lock acquired");
        LockGuard {
            held: Some(Held {
                manager,
                keys,
                token,
                fence,
                lease,
                // S7: the lease counts from when the request left, less the drift allowance.
                valid_until: sent + lease.saturating_sub(drift(lease)),
            }),
        }
    }

    fn held(&self) -> &Held {
        // `held` is only taken by `release` and `forget`, which consume the guard.
        self.held
            .as_ref()
            .expect("a LockGuard holds its lock until consumed")
    }

    /// This acquisition's fencing token: strictly greater than every token issued before for the
    /// same key (S11).
    pub fn fencing_token(&self) -> u64 {
        self.held().fence
    }

    /// The Redis key of the lock, e.g. `lock:{keyword:42}`.
    pub fn key(&self) -> &str {
        &self.held().keys.lock
    }

    /// Until when the lease is surely valid (monotonic clock), renewals aside.
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

    /// Releases the lock now. `Ok(true)` when released, `Ok(false)` when it was no longer ours
    /// (its lease ran out and perhaps someone else took it; a warning is logged).
    pub async fn release(mut self) -> Result<bool, LockError> {
        let Some(h) = self.held.take() else {
            return Ok(false);
        };
        release(&h).await
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
    let released = h
        .manager
        .inner
        .backend
        .release(&h.keys, h.token.as_str())
        .await?;
    if released {
        tracing::debug!(key = %h.keys.lock, fencing_token = h.fence, "lock released");
    } else {
        tracing::warn!(key = %h.keys.lock, fencing_token = h.fence, "lock was no longer ours at release (lease expired)");
    }
    Ok(released)
}

/// Runs cleanup work on the current tokio runtime, if there is one (a drop cannot await).
/// Returns `false` when there is none.
pub(crate) fn spawn_cleanup(work: impl Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(work);
            true
        }
        Err(_) => false,
    }
}

/// Releases `token`'s hold on `keys` from a task on the current runtime, if there is one; quiet,
/// since the lock may well not be held.
pub(crate) fn spawn_release(manager: LockManager, keys: Arc<Keys>, token: String) {
    spawn_cleanup(async move {
        match manager.inner.backend.release(&keys, &token).await {
            Ok(true) => {
                tracing::debug!(key = %keys.lock, "released a lock granted to a cancelled acquisition")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(key = %keys.lock, error = %e, "release after a cancelled acquisition failed")
            }
        }
    });
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(h) = self.held.take() else {
            return;
        };
        // Dropped while held: the caller gave up the future, or the body panicked (S14).
        let key = h.keys.lock.clone();
        let spawned = spawn_cleanup(async move {
            if let Err(e) = release(&h).await {
                tracing::warn!(key = %h.keys.lock, error = %e, "release of a dropped guard failed; the lease will free the lock");
            }
        });
        if !spawned {
            tracing::warn!(%key, "guard dropped outside a tokio runtime; the lease will free the lock");
        }
    }
}
