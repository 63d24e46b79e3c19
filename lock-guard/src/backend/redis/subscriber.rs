//! The subscriber: one pub/sub connection per manager that carries the release notifications of
//! every key with local waiters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::Counters;
use crate::background;
use crate::error::{BackendError, LockError};
use crate::waiting::{Subscriptions, Waiters};

/// Where a subscription request hears when its channel is subscribed since (or why not).
type Confirm = oneshot::Sender<Result<Instant, LockError>>;

pub(super) enum SubCmd {
    Subscribe(Arc<str>, Confirm),
    Unsubscribe(Arc<str>),
}

/// The waiters' side: requests to the subscriber task, which it starts (again) as needed.
pub(super) struct Requests {
    tx: Mutex<mpsc::UnboundedSender<SubCmd>>,
    /// Where the subscriber may connect: one server, or the seed nodes of a cluster (any node
    /// hears every classic `PUBLISH`), tried in turn.
    clients: Arc<[Client]>,
    waiters: Weak<Waiters>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl Requests {
    /// Starts the subscriber task for `waiters`.
    pub(super) fn start(
        clients: Vec<Client>,
        waiters: &Arc<Waiters>,
        timeout: Duration,
        counters: Arc<Counters>,
    ) -> Requests {
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = Requests {
            tx: Mutex::new(tx),
            clients: clients.into(),
            waiters: Arc::downgrade(waiters),
            timeout,
            counters,
        };
        requests.spawn(rx, false);
        requests
    }

    /// Runs the task on the caller's runtime: a release message then wakes its waiter without a
    /// hop between threads (hand-over gap p50 298 µs against 455 µs from a thread of its own,
    /// `bench --scenario handoff_8`). If that runtime goes away, the task goes with it, and the
    /// next request starts a new one where it is made (the library's background runtime outside
    /// any runtime).
    fn spawn(&self, rx: mpsc::UnboundedReceiver<SubCmd>, restarted: bool) {
        let task = SubscriberTask {
            clients: self.clients.clone(),
            next: 0,
            waiters: self.waiters.clone(),
            rx,
            timeout: self.timeout,
            counters: self.counters.clone(),
            restarted,
        };
        let started = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(task.run());
                true
            }
            Err(_) => background::spawn(task.run()),
        };
        if !started {
            tracing::warn!("no subscriber for release notifications; waiters retry at lease ends");
        }
    }

    fn send(&self, cmd: SubCmd) {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(mpsc::error::SendError(cmd)) = tx.send(cmd) {
            tracing::debug!(
                "lock-guard subscriber task gone (its runtime stopped); starting another"
            );
            let (new_tx, rx) = mpsc::unbounded_channel();
            self.spawn(rx, true);
            // A failure now means the new task is gone too; a subscriber's reply then says so.
            let _ = new_tx.send(cmd);
            *tx = new_tx;
        }
    }
}

impl Subscriptions for Requests {
    fn subscribe(&self, channel: &Arc<str>) -> oneshot::Receiver<Result<Instant, LockError>> {
        let (tx, rx) = oneshot::channel();
        self.send(SubCmd::Subscribe(channel.clone(), tx));
        rx
    }

    fn unsubscribe(&self, channel: &Arc<str>) {
        self.send(SubCmd::Unsubscribe(channel.clone()));
    }
}

/// A subscribed channel: confirmed since when, last asked for when.
#[derive(Clone, Copy)]
struct Subscribed {
    since: Instant,
    wanted: Instant,
}

/// The most channels one `SUBSCRIBE` or `UNSUBSCRIBE` carries.
const BATCH: usize = 1000;

/// How long a release channel stays subscribed after its last local waiter left.
const UNSUBSCRIBE_GRACE: Duration = Duration::from_millis(500);

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The task that owns the manager's one subscriber connection: it subscribes a key's release
/// channel while the key has local waiters, wakes the head of the key's queue on each message, and
/// after a lost connection reconnects, subscribes again and wakes every head (a release may have
/// been missed meanwhile).
struct SubscriberTask {
    clients: Arc<[Client]>,
    /// The one of `clients` to connect to next.
    next: usize,
    waiters: Weak<Waiters>,
    rx: mpsc::UnboundedReceiver<SubCmd>,
    timeout: Duration,
    counters: Arc<Counters>,
    /// Started again after the task before it was lost: release messages may have been missed.
    restarted: bool,
}

impl SubscriberTask {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut connected_once = self.restarted;
        loop {
            let client = &self.clients[self.next % self.clients.len()];
            let pubsub = match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
                Ok(Ok(p)) => p,
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".to_owned(),
                    };
                    tracing::warn!(%reason, "lock-guard subscriber connection failed; waiters fall back to lease timers");
                    // Another node next time, where there are several.
                    self.next = self.next.wrapping_add(1);
                    if !self.drain_while_down(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            let (mut sink, mut stream) = pubsub.split();
            let Some(waiters) = self.waiters.upgrade() else {
                return;
            };
            // Subscribe what waits for notifications now; whatever changes after is in the
            // command queue.
            // Each subscribed channel, with when its subscription was confirmed.
            let mut subscribed: HashMap<Arc<str>, Subscribed> = HashMap::new();
            // Channels whose last local waiter left, unsubscribed after a grace period unless
            // waiters came back meanwhile: a hot key whose queue empties and fills again every
            // few milliseconds would otherwise cost a SUBSCRIBE and an UNSUBSCRIBE each time.
            // Each entry: when to look, the channel, when its queue went away.
            let mut lingering: VecDeque<(Instant, Arc<str>, Instant)> = VecDeque::new();
            // Everything at once, a batch of channels per command: after a reconnection with
            // thousands of waiting keys, a round trip per channel would keep them deaf for long.
            let channels = waiters.subscribed_channels();
            let mut ok = true;
            for batch in channels.chunks(BATCH) {
                match self.sub(&mut sink, batch).await {
                    Ok(since) => subscribed.extend(batch.iter().map(|ch| {
                        (
                            ch.clone(),
                            Subscribed {
                                since,
                                wanted: since,
                            },
                        )
                    })),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if connected_once {
                waiters.wake_all_heads();
            }
            connected_once = true;
            drop(waiters);
            if !ok {
                continue;
            }
            loop {
                let next_unsubscribe = lingering.front().map(|(at, _, _)| *at);
                tokio::select! {
                    () = sleep_until_opt(next_unsubscribe), if next_unsubscribe.is_some() => {
                        let now = Instant::now();
                        let mut gone = Vec::new();
                        while let Some((_, ch, left)) = lingering.front().filter(|(at, _, _)| *at <= now).cloned() {
                            lingering.pop_front();
                            // A queue that asked for notifications since keeps the channel (and
                            // says so when it goes); anything else lets it go now.
                            let asked_again = subscribed.get(&ch).is_some_and(|s| s.wanted > left);
                            let wanted = asked_again
                                || self.waiters.upgrade().is_some_and(|w| w.wants_notifications(&ch));
                            if !wanted && subscribed.remove(&ch).is_some() {
                                gone.push(ch);
                            }
                        }
                        let mut failed = false;
                        for batch in gone.chunks(BATCH) {
                            self.counters.subscriber_commands.fetch_add(1, Ordering::Relaxed);
                            let names: Vec<&str> = batch.iter().map(|ch| &**ch).collect();
                            let r = tokio::time::timeout(self.timeout, sink.unsubscribe(names)).await;
                            if !matches!(r, Ok(Ok(()))) {
                                failed = true;
                                break;
                            }
                        }
                        if failed {
                            break;
                        }
                    }
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            if let Some(w) = self.waiters.upgrade() {
                                w.wake_head(msg.get_channel_name(), msg.get_payload_bytes());
                            }
                        }
                        None => {
                            tracing::warn!("lock-guard subscriber connection closed; reconnecting");
                            break;
                        }
                    },
                    cmd = self.rx.recv() => {
                        let Some(cmd) = cmd else { return };
                        // Take every request queued by now, and subscribe the new channels among
                        // them with one command.
                        let mut fresh: Vec<(Arc<str>, Confirm)> = Vec::new();
                        let mut next = Some(cmd);
                        while let Some(cmd) = next.take() {
                            match cmd {
                                SubCmd::Subscribe(ch, reply) => match subscribed.get_mut(&ch) {
                                    Some(sub) => {
                                        sub.wanted = Instant::now();
                                        let _ = reply.send(Ok(sub.since));
                                    }
                                    None => fresh.push((ch, reply)),
                                },
                                SubCmd::Unsubscribe(ch) => {
                                    // A channel of this batch counts as subscribed: it is, once
                                    // the batch went through.
                                    if subscribed.contains_key(&ch) || fresh.iter().any(|(c, _)| *c == ch) {
                                        let now = Instant::now();
                                        lingering.push_back((now + UNSUBSCRIBE_GRACE, ch, now));
                                    }
                                }
                            }
                            if fresh.len() < BATCH {
                                next = self.rx.try_recv().ok();
                            }
                        }
                        if fresh.is_empty() {
                            continue;
                        }
                        // The same channel asked for twice in one batch is subscribed once.
                        let mut names: Vec<Arc<str>> = fresh.iter().map(|(ch, _)| ch.clone()).collect();
                        names.sort_unstable();
                        names.dedup();
                        let r = self.sub(&mut sink, &names).await;
                        if let Ok(since) = r {
                            subscribed.extend(names.into_iter().map(|ch| (ch, Subscribed { since, wanted: since })));
                        }
                        for (_, reply) in fresh {
                            // The error is not `Clone`: each waiter hears what went wrong.
                            let _ = reply.send(match &r {
                                Ok(since) => Ok(*since),
                                Err(e) => Err(LockError::backend(
                                    None,
                                    BackendError::Pool(format!("subscribing failed: {e}")),
                                )),
                            });
                        }
                        if r.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Subscribes `channels` with one command; returns when the subscriptions were all confirmed
    /// (they are in place since then at the latest).
    async fn sub(
        &self,
        sink: &mut redis::aio::PubSubSink,
        channels: &[Arc<str>],
    ) -> Result<Instant, LockError> {
        self.counters
            .subscriber_commands
            .fetch_add(1, Ordering::Relaxed);
        let names: Vec<&str> = channels.iter().map(|ch| &**ch).collect();
        match tokio::time::timeout(self.timeout, sink.subscribe(names)).await {
            Ok(Ok(())) => Ok(Instant::now()),
            Ok(Err(e)) => Err(LockError::backend(None, BackendError::Redis(e))),
            Err(_) => Err(LockError::backend(
                None,
                BackendError::Timeout {
                    what: "SUBSCRIBE",
                    timeout: self.timeout,
                },
            )),
        }
    }

    /// While disconnected: answer subscribe requests with an error for `pause`, so waiters go on
    /// with their lease timers. Returns `false` when the manager is gone.
    async fn drain_while_down(&mut self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.rx.recv() => match cmd {
                    None => return false,
                    Some(SubCmd::Subscribe(_, reply)) => {
                        let _ = reply.send(Err(LockError::backend(
                            None,
                            BackendError::Pool("subscriber connection is down".into()),
                        )));
                    }
                    Some(SubCmd::Unsubscribe(_)) => {}
                }
            }
        }
    }
}
