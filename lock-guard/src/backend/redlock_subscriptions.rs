//! Redlock's release notifications: one subscriber per node, all waking the same local waiters.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::background;
use crate::error::LockError;
use crate::waiting::Subscriptions;

/// The subscriptions of every node's subscriber: a key's waiters hear a release from whichever
/// node announces it. Confirmed once a majority confirmed — a majority shares a node with the
/// holder's, where the release is announced — so a frozen node does not hold the waiter up.
pub(super) struct Fanout {
    pub(super) nodes: Vec<Box<dyn Subscriptions>>,
    pub(super) quorum: usize,
}

impl Subscriptions for Fanout {
    fn subscribe(&self, channel: &Arc<str>) -> oneshot::Receiver<Result<Instant, LockError>> {
        let mut confirmations: FuturesUnordered<_> =
            self.nodes.iter().map(|n| n.subscribe(channel)).collect();
        let (tx, rx) = oneshot::channel();
        let (quorum, nodes) = (self.quorum, self.nodes.len());
        // If it cannot be spawned, the dropped sender reads as "unconfirmed".
        background::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            // In place on a majority since the latest of their confirmations.
            let mut since: Option<Instant> = None;
            let mut first_error = None;
            while let Some(r) = confirmations.next().await {
                match r {
                    Ok(Ok(at)) => {
                        ok += 1;
                        since = since.max(Some(at));
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                    Err(_) => failed += 1,
                }
                if let (true, Some(since)) = (ok >= quorum, since) {
                    let _ = tx.send(Ok(since));
                    return;
                }
                if failed > nodes - quorum {
                    break;
                }
            }
            if let Some(e) = first_error {
                let _ = tx.send(Err(e));
            }
        });
        rx
    }

    fn unsubscribe(&self, channel: &Arc<str>) {
        for n in &self.nodes {
            n.unsubscribe(channel);
        }
    }
}
