//! A cheap bound on the duration of Redis commands (S15).
//!
//! A tokio timer per command measurably slows the hot path (a timer-wheel entry registered and
//! cleared for every round trip, about 4 % of an uncontended acquire + release here). Commands
//! need only a coarse bound — "an answer within the command timeout, or an error soon after" —
//! so they register in one shared table instead, and one background ticker wakes the commands
//! whose deadline has passed. A command is failed between `timeout` and `timeout + tick` after it
//! started, with `tick` a quarter of the timeout (at most 100 ms).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct Deadlines {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

struct Entry {
    deadline: Instant,
    waker: Waker,
    expired: bool,
}

impl Deadlines {
    /// Starts the ticker on the current runtime; it stops when the table is dropped.
    pub(crate) fn start(timeout: Duration) -> Arc<Deadlines> {
        let table = Arc::new(Deadlines::default());
        let tick = (timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let weak = Arc::downgrade(&table);
        tokio::spawn(tick_loop(weak, tick));
        table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `fut`, or `Err(())` once `timeout` has passed (give or take a tick).
    pub(crate) fn bound<F: Future>(&self, timeout: Duration, fut: F) -> Bounded<'_, F> {
        Bounded {
            table: self,
            deadline: Instant::now() + timeout,
            id: None,
            fut,
        }
    }
}

async fn tick_loop(table: Weak<Deadlines>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(table) = table.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut t = table.lock();
        for e in t.entries.values_mut() {
            if !e.expired && e.deadline <= now {
                e.expired = true;
                e.waker.wake_by_ref();
            }
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct Bounded<'a, F> {
        table: &'a Deadlines,
        deadline: Instant,
        id: Option<u64>,
        #[pin]
        fut: F,
    }

    impl<F> PinnedDrop for Bounded<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(id) = this.id {
                this.table.lock().entries.remove(&id);
            }
        }
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            if let Some(id) = this.id.take() {
                this.table.lock().entries.remove(&id);
            }
            return Poll::Ready(Ok(v));
        }
        let mut t = this.table.lock();
        match this.id {
            Some(id) => match t.entries.get_mut(id) {
                Some(e) if e.expired => {
                    t.entries.remove(id);
                    *this.id = None;
                    return Poll::Ready(Err(()));
                }
                Some(e) if !e.waker.will_wake(cx.waker()) => e.waker = cx.waker().clone(),
                Some(_) => {}
                None => {}
            },
            None => {
                if Instant::now() >= *this.deadline {
                    return Poll::Ready(Err(()));
                }
                let id = t.next_id;
                t.next_id += 1;
                t.entries.insert(
                    id,
                    Entry {
                        deadline: *this.deadline,
                        waker: cx.waker().clone(),
                        expired: false,
                    },
                );
                *this.id = Some(id);
            }
        }
        Poll::Pending
    }
}
