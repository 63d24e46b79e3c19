//! Waiting for a condition with a bounded deadline, instead of sleeping and hoping.

use std::future::Future;
use std::time::{Duration, Instant};

/// Re-checks `condition` every 10 ms until it holds; panics, naming `what`, if it still does not
/// after `within`. Returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still not true after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
