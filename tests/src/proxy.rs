//! A TCP proxy between lock managers and a `redis-server`, for injecting network faults: latency
//! per direction, one direction stalled (bytes held, not lost) on every connection or on the one
//! connection that sends a given request next, every connection cut now, new connections refused.
//!
//! The proxy runs on a runtime of its own (a thread), so the faults it injects do not depend on
//! the test's runtime, and a test that blocks its own runtime does not stall the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

/// A direction of traffic through the [`Proxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to Redis: requests.
    Up,
    /// Redis to client: replies.
    Down,
}

/// A loopback TCP proxy to `127.0.0.1:<target>`; stopped on drop.
///
/// ```no_run
/// use lock_guard_tests::{Direction, Proxy, RedisServer};
/// let server = RedisServer::start();
/// let proxy = Proxy::start(server.port());
/// proxy.stall(Direction::Down, true); // replies are held from now on
/// proxy.cut_all(); // every open connection is closed (held bytes are lost)
/// ```
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    controls: Arc<Controls>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Controls {
    /// Added latency in microseconds, per direction.
    delay: [AtomicU64; 2],
    /// Whether a direction holds its bytes, per direction.
    stalled: [watch::Sender<bool>; 2],
    /// Bumped by [`Proxy::cut_all`]: every connection opened before closes.
    cuts: watch::Sender<u64>,
    refuse: AtomicBool,
    accepted: AtomicU64,
    /// The armed trap, if any: the next request containing the pattern holds the direction of its
    /// connection; the number is the trap's generation.
    trap: Mutex<Option<(Vec<u8>, Direction, u64)>>,
    /// The generation whose trapped connections are held now (0: none).
    held: watch::Sender<u64>,
    generations: AtomicU64,
    /// Traps that caught a connection.
    sprung: AtomicU64,
}

/// Per connection: the trap generation that holds each direction (0: none).
#[derive(Debug, Default)]
struct Trapped([AtomicU64; 2]);

const fn index(direction: Direction) -> usize {
    match direction {
        Direction::Up => 0,
        Direction::Down => 1,
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("proxy address").port();
        let controls = Arc::new(Controls {
            delay: [AtomicU64::new(0), AtomicU64::new(0)],
            stalled: [watch::channel(false).0, watch::channel(false).0],
            cuts: watch::channel(0).0,
            refuse: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            trap: Mutex::new(None),
            held: watch::channel(0).0,
            generations: AtomicU64::new(0),
            sprung: AtomicU64::new(0),
        });
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let thread = thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn({
                let controls = controls.clone();
                move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("the proxy's runtime");
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(std_listener).expect("listener");
                        tokio::select! {
                            _ = stop => {}
                            () = accept_loop(listener, target, controls) => {}
                        }
                    });
                }
            })
            .expect("spawn the proxy thread");
        Proxy {
            port,
            controls,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Adds `latency` to every chunk of bytes going in `direction` (order is kept).
    pub fn set_latency(&self, direction: Direction, latency: Duration) {
        self.controls.delay[index(direction)].store(latency.as_micros() as u64, SeqCst);
    }

    /// Holds (`true`) or lets through (`false`) the bytes going in `direction`, on every
    /// connection, open or new. Held bytes are forwarded, in order, once the stall ends.
    pub fn stall(&self, direction: Direction, stalled: bool) {
        self.controls.stalled[index(direction)].send_replace(stalled);
    }

    /// Arms a one-shot trap: the next request (client to Redis) whose bytes contain `pattern`
    /// holds `direction` of *its* connection only — that request included for
    /// [`Direction::Up`], its reply and every later one for [`Direction::Down`] — until
    /// [`free_trapped`](Self::free_trapped). Other connections, open or new, are not affected.
    /// E.g. `trap(Direction::Up, b"EVALSHA")` holds the next script call and whatever follows it
    /// on the same connection; `trap(Direction::Down, b"SUBSCRIBE")` holds the subscriber's
    /// confirmations. Arming a trap frees the connections an earlier one caught.
    pub fn trap(&self, direction: Direction, pattern: &[u8]) {
        let generation = self.controls.generations.fetch_add(1, SeqCst) + 1;
        *self.controls.trap.lock().unwrap() = Some((pattern.to_vec(), direction, generation));
        self.controls.held.send_replace(generation);
    }

    /// How many traps caught a connection so far.
    pub fn trapped(&self) -> u64 {
        self.controls.sprung.load(SeqCst)
    }

    /// Disarms the trap and lets the bytes of every trapped connection through, in order.
    pub fn free_trapped(&self) {
        self.controls.trap.lock().unwrap().take();
        self.controls.held.send_replace(0);
    }

    /// Closes every open connection now, both sides; bytes held by a stall are lost.
    pub fn cut_all(&self) {
        self.controls.cuts.send_modify(|n| *n += 1);
    }

    /// Whether new connections are closed as soon as accepted.
    pub fn refuse_new(&self, refuse: bool) {
        self.controls.refuse.store(refuse, SeqCst);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.controls.accepted.load(SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut_all();
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: u16, controls: Arc<Controls>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        controls.accepted.fetch_add(1, SeqCst);
        if controls.refuse.load(SeqCst) {
            drop(client);
            continue;
        }
        let controls = controls.clone();
        tokio::spawn(async move {
            let mut cut = controls.cuts.subscribe();
            cut.mark_unchanged();
            let Ok(server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target))).await
            else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let trapped = Arc::new(Trapped::default());
            tokio::select! {
                _ = cut.changed() => {}
                () = pump(cr, sw, controls.clone(), trapped.clone(), Direction::Up) => {}
                () = pump(sr, cw, controls.clone(), trapped, Direction::Down) => {}
            }
            // Dropping both halves of both sockets closes the connection on each side.
        });
    }
}

/// Springs the armed trap on this connection if `request` contains its pattern.
fn spring(controls: &Controls, trapped: &Trapped, request: &[u8]) {
    let mut trap = controls.trap.lock().unwrap();
    let hit = trap.as_ref().is_some_and(|(pattern, _, _)| {
        request
            .windows(pattern.len().max(1))
            .any(|w| w == pattern.as_slice())
    });
    if hit && let Some((_, direction, generation)) = trap.take() {
        trapped.0[index(direction)].store(generation, SeqCst);
        controls.sprung.fetch_add(1, SeqCst);
    }
}

/// Copies `from` to `to`, each chunk delayed by the direction's latency and held while stalled
/// (every connection) or trapped (this one).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    controls: Arc<Controls>,
    trapped: Arc<Trapped>,
    direction: Direction,
) where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let delay = controls.clone();
    let trap = trapped.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if direction == Direction::Up {
                        // Before the chunk is handed on, so a trapped request is held itself.
                        spring(&delay, &trap, &buf[..n]);
                    }
                    let latency = Duration::from_micros(delay.delay[index(direction)].load(SeqCst));
                    if tx
                        .send((Instant::now() + latency, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut stalled = controls.stalled[index(direction)].subscribe();
        let mut held = controls.held.subscribe();
        while let Some((due, bytes)) = rx.recv().await {
            sleep_until(due).await;
            loop {
                if stalled.wait_for(|s| !*s).await.is_err() {
                    return;
                }
                let generation = trapped.0[index(direction)].load(SeqCst);
                if generation == 0 || *held.borrow_and_update() != generation {
                    break;
                }
                if held.changed().await.is_err() {
                    return;
                }
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // A closed reading side ends the pump only once everything read has been written.
    let (_, ()) = tokio::join!(reader, writer);
}
