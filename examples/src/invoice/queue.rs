//! The embedded queue: an in-process message queue with manual acknowledgements that delivers
//! each message at least once, as a broker does.
//!
//! A delivered message stays *in flight* until it is acked, requeued or dead-lettered. One that
//! is still in flight after the acknowledgement timeout is delivered again (flagged
//! `redelivered`) — to whichever consumer asks next, while the first consumer may still be
//! working on it; the first delivery's late ack or nack is then ignored, as a broker ignores an
//! ack on a channel it has closed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// One delivery.
#[derive(Debug, Clone)]
pub struct MemDelivery {
    /// Its tag, for [`MemQueue::ack`] and the others.
    pub tag: u64,
    /// The message.
    pub payload: Arc<[u8]>,
    /// Whether the message was delivered before.
    pub redelivered: bool,
}

#[derive(Debug)]
struct Message {
    payload: Arc<[u8]>,
    delivered: bool,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Message>,
    in_flight: HashMap<u64, (Message, Instant)>,
    next_tag: u64,
    dead: Vec<(Arc<[u8]>, String)>,
    closed: bool,
}

impl State {
    /// Moves the in-flight messages whose timeout passed back to the front of the queue.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in expired {
            if let Some((message, _)) = self.in_flight.remove(&tag) {
                self.ready.push_front(message);
            }
        }
    }
}

/// The queue; cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct MemQueue {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    ack_timeout: Duration,
}

impl MemQueue {
    /// An empty queue that delivers again what is not acknowledged within `ack_timeout`.
    pub fn new(ack_timeout: Duration) -> MemQueue {
        MemQueue {
            state: Arc::default(),
            changed: Arc::new(Notify::new()),
            ack_timeout,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every change is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a message.
    pub fn publish(&self, payload: impl Into<Arc<[u8]>>) {
        self.state().ready.push_back(Message {
            payload: payload.into(),
            delivered: false,
        });
        self.changed.notify_waiters();
    }

    /// The next delivery, waiting for one; `None` once the queue is closed.
    pub async fn receive(&self) -> Option<MemDelivery> {
        loop {
            let changed = self.changed.notified();
            let next_expiry = {
                let mut state = self.state();
                if state.closed {
                    return None;
                }
                let now = Instant::now();
                state.expire(now);
                if let Some(mut message) = state.ready.pop_front() {
                    let delivery = MemDelivery {
                        tag: state.next_tag,
                        payload: message.payload.clone(),
                        redelivered: message.delivered,
                    };
                    message.delivered = true;
                    state.next_tag += 1;
                    state
                        .in_flight
                        .insert(delivery.tag, (message, now + self.ack_timeout));
                    return Some(delivery);
                }
                state
                    .in_flight
                    .values()
                    .map(|(_, deadline)| *deadline)
                    .min()
            };
            match next_expiry {
                Some(at) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Acknowledges a delivery; `false` when it is no longer in flight (timed out, delivered
    /// again).
    pub fn ack(&self, tag: u64) -> bool {
        self.state().in_flight.remove(&tag).is_some()
    }

    /// Puts a delivery back at the end of the queue (`nack` with `requeue`).
    pub fn requeue(&self, tag: u64) -> bool {
        let mut state = self.state();
        let Some((message, _)) = state.in_flight.remove(&tag) else {
            return false;
        };
        state.ready.push_back(message);
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// Moves a delivery to the dead-letter list with `reason`.
    pub fn dead_letter(&self, tag: u64, reason: String) -> bool {
        let mut state = self.state();
        let Some((message, _)) = state.in_flight.remove(&tag) else {
            return false;
        };
        state.dead.push((message.payload, reason));
        true
    }

    /// Messages ready or in flight.
    pub fn pending(&self) -> usize {
        let state = self.state();
        state.ready.len() + state.in_flight.len()
    }

    /// The dead-lettered messages and their reasons.
    pub fn dead_letters(&self) -> Vec<(Arc<[u8]>, String)> {
        self.state().dead.clone()
    }

    /// Ends every [`receive`](Self::receive).
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_waiters();
    }
}
