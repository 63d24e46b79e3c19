//! Work that outlives the call that started it — the subscriber connection, releases from `Drop`,
//! clean-ups after cancelled acquisitions — runs on one small runtime of the library's own, on a
//! thread of its own, so it does not die with the runtime that built a manager, and a guard
//! dropped outside any runtime still releases its lock.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};

/// The library's background runtime, started on first use.
fn handle() -> Option<&'static Handle> {
    static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let rt = Builder::new_current_thread()
                .enable_all()
                .thread_name("lock-guard-background")
                .build();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "lock-guard could not start its background runtime");
                    return None;
                }
            };
            let handle = rt.handle().clone();
            let started = std::thread::Builder::new()
                .name("lock-guard-background".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()));
            match started {
                Ok(_) => Some(handle),
                Err(e) => {
                    tracing::error!(error = %e, "lock-guard could not start its background thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Runs `work` in the background; `false` if the background runtime could not be started (the
/// lease then frees whatever the work would have released).
pub(crate) fn spawn(work: impl Future<Output = ()> + Send + 'static) -> bool {
    match handle() {
        Some(h) => {
            h.spawn(work);
            true
        }
        None => false,
    }
}
