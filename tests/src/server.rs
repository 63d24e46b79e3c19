//! One `redis-server` process per [`RedisServer`], on a free loopback port, killed on drop.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use crate::tls::{self, TlsFiles};

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports [`RedisServer::start_with`] tries before giving up.
const PORT_ATTEMPTS: usize = 10;
/// The user that [`ServerOptions::acl`] creates (the default user is switched off).
pub const ACL_USER: &str = "alice";
/// That user's password.
pub const ACL_PASSWORD: &str = "secret";

/// What kind of server [`RedisServer::start_with`] starts.
///
/// ```no_run
/// use lock_guard_tests::{RedisServer, ServerOptions};
/// let server = RedisServer::start_with(ServerOptions::new().tls().acl());
/// assert!(server.url().starts_with("rediss://alice:secret@127.0.0.1:"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    tls: bool,
    acl: bool,
}

impl ServerOptions {
    /// A plain server: no TLS, no password.
    pub const fn new() -> Self {
        ServerOptions {
            tls: false,
            acl: false,
        }
    }

    /// Serve TLS only (`--tls-port N --port 0`), with a throwaway CA from [`RedisServer::ca_pem`];
    /// clients are not asked for certificates.
    pub const fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Require a login: user `alice` with password `secret` has every permission, the default user
    /// is off.
    pub const fn acl(mut self) -> Self {
        self.acl = true;
        self
    }

    /// Whether [`acl`](Self::acl) was asked for.
    pub const fn is_acl(&self) -> bool {
        self.acl
    }
}

/// A real `redis-server` process on `127.0.0.1`, without persistence, in its own temporary
/// directory; killed (SIGKILL) and cleaned up on drop.
///
/// ```no_run
/// # async fn demo() {
/// use lock_guard_tests::RedisServer;
/// let server = RedisServer::start();
/// let manager = server.manager().await;
/// # drop(manager);
/// # }
/// ```
pub struct RedisServer {
    options: ServerOptions,
    port: u16,
    dir: TempDir,
    tls: Option<TlsFiles>,
    process: Option<Child>,
    /// Number of processes started so far; each gets its own log file.
    generation: u32,
    /// More `redis-server` arguments (replication, cluster mode), kept across restarts.
    extra_args: Vec<String>,
}

/// A start that failed because another process took the port first.
struct PortTaken;

impl RedisServer {
    /// Starts a plain server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed, or does not come up within 10 s.
    pub fn start() -> RedisServer {
        RedisServer::start_with(ServerOptions::new())
    }

    /// Starts a server of the given kind (TLS, ACL) on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` (or, for TLS, `openssl` and `redis-cli`) is not installed, or the server
    /// does not come up within 10 s.
    pub fn start_with(options: ServerOptions) -> RedisServer {
        RedisServer::start_with_args(options, &[])
    }

    /// Starts a server of the given kind with more `redis-server` arguments (e.g.
    /// `["--cluster-enabled", "yes"]`), kept across [`restart`](Self::restart)s.
    ///
    /// # Panics
    ///
    /// As [`start_with`](Self::start_with).
    pub fn start_with_args(options: ServerOptions, args: &[&str]) -> RedisServer {
        let dir = TempDir::new();
        let tls = options.tls.then(|| tls::generate(dir.path()));
        let mut server = RedisServer {
            options,
            port: 0,
            dir,
            tls,
            process: None,
            generation: 0,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        for _ in 0..PORT_ATTEMPTS {
            // The port is free now but may be taken before redis-server binds it: retry then.
            if server.spawn(free_port()).is_ok() {
                return server;
            }
        }
        panic!("redis-server: no free port after {PORT_ATTEMPTS} attempts");
    }

    /// Starts a plain server in cluster mode (`--cluster-enabled yes`, with `args` added) on a
    /// free port whose cluster bus port (the port + 10000) is free too; its node is alone in its
    /// cluster until met (see `RedisCluster`).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_cluster_node(args: &[&str]) -> RedisServer {
        Self::start_cluster_node_with(ServerOptions::new(), args)
    }

    /// [`start_cluster_node`](Self::start_cluster_node) with `options` (e.g. ACL).
    pub fn start_cluster_node_with(options: ServerOptions, args: &[&str]) -> RedisServer {
        let mut extra = vec!["--cluster-enabled", "yes"];
        extra.extend_from_slice(args);
        let mut server = RedisServer {
            options,
            port: 0,
            dir: TempDir::new(),
            tls: None,
            process: None,
            generation: 0,
            extra_args: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        for _ in 0..PORT_ATTEMPTS * 10 {
            let port = free_port();
            let bus_free = port <= u16::MAX - 10_000
                && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
            if bus_free && server.spawn(port).is_ok() {
                return server;
            }
        }
        panic!("redis-server: no free port pair for a cluster node");
    }

    /// The port the server listens on (its TLS port for a TLS server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to connect with: `redis://127.0.0.1:N`, `rediss://…` for TLS, with
    /// `alice:secret@` for ACL.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        let login = if self.options.acl {
            format!("{ACL_USER}:{ACL_PASSWORD}@")
        } else {
            String::new()
        };
        format!("{scheme}://{login}127.0.0.1:{}", self.port)
    }

    /// Whether the server speaks TLS only.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    ///
    /// # Panics
    ///
    /// If the server was not started with [`ServerOptions::tls`].
    pub fn ca_pem(&self) -> Vec<u8> {
        let files = self
            .tls
            .as_ref()
            .expect("ca_pem() needs a server started with ServerOptions::new().tls()");
        fs::read(&files.ca_cert).expect("read the test CA certificate")
    }

    /// Whether the process is running (it is, unless [`kill`](Self::kill)ed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// A plain server replicating `primary` (`--replicaof`), returned once its link to the primary
    /// is up, the initial sync is done and the primary counts it as online. Sets the primary's `repl-diskless-sync-delay` to 0, so
    /// the sync starts at once.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start), or if the replica does not sync within 10 s.
    pub async fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-sync-delay")
            .arg("0")
            .query_async(&mut primary.connection().await)
            .await
            .expect("CONFIG SET repl-diskless-sync-delay 0");
        let port = primary.port().to_string();
        let replica = RedisServer::start_with_args(
            ServerOptions::new(),
            &["--replicaof", "127.0.0.1", &port],
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let info = replica.info("replication").await;
            // The primary counts a replica for WAIT only once it calls it online (after the
            // replica's first acknowledgement following the sync).
            let online = format!("port={},state=online", replica.port());
            if info_field(&info, "master_link_status") == Some("up")
                && info_field(&info, "master_sync_in_progress") == Some("0")
                && primary.info("replication").await.contains(&online)
            {
                // And it acknowledges writes: a first `WAIT` right after the sync can otherwise
                // take longer than a test's timeout on a busy machine.
                let mut conn = primary.connection().await;
                let acked: u64 = redis::pipe()
                    .cmd("SET")
                    .arg("replica-warm-up")
                    .arg(1)
                    .ignore()
                    .cmd("WAIT")
                    .arg(1)
                    .arg(START_TIMEOUT.as_millis() as u64)
                    .query_async::<(u64,)>(&mut conn)
                    .await
                    .expect("SET + WAIT on the primary")
                    .0;
                let () = redis::cmd("DEL")
                    .arg("replica-warm-up")
                    .query_async(&mut conn)
                    .await
                    .expect("DEL");
                if acked >= 1 {
                    return replica;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica of port {port} did not sync within {START_TIMEOUT:?}:\n{}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Freezes the process (`SIGSTOP`): it keeps its connections but answers nothing, and expires
    /// nothing, until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            crate::signal_pid(pid, "STOP");
        }
    }

    /// Lets a [`freeze`](Self::freeze)d process run again (`SIGCONT`).
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            crate::signal_pid(pid, "CONT");
        }
    }

    /// Kills the process (SIGKILL, as a crash would) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a fresh one on the same port, with nothing carried over (no
    /// persistence: every key, the fencing counters included, is gone); waits until it answers
    /// `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        while self.spawn(self.port).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server: port {} still taken after the restart's kill",
                self.port
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client for inspecting the server from the test (not through lock-guard).
    pub fn client(&self) -> Client {
        match &self.tls {
            None => Client::open(self.url()),
            Some(_) => Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(self.ca_pem()),
                },
            ),
        }
        .expect("a client for the test server")
    }

    /// An async connection for inspection, with a generous response timeout (10 s), so that
    /// it can outlast a `CLIENT PAUSE` of a few seconds.
    pub async fn connection(&self) -> MultiplexedConnection {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("an inspection connection to the test server")
    }

    /// `INFO stats` `total_commands_processed`: every command from every client so far,
    /// including the `INFO` that reads it.
    pub async fn total_commands(&self) -> u64 {
        let info = self.info("stats").await;
        info_field(&info, "total_commands_processed")
            .and_then(|v| v.parse().ok())
            .expect("INFO stats has total_commands_processed")
    }

    /// `INFO commandstats`: calls per command, e.g. `"evalsha" -> 12`, `"client|kill" -> 1`.
    pub async fn command_calls(&self) -> BTreeMap<String, u64> {
        let info = self.info("commandstats").await;
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }

    /// `PUBSUB CHANNELS`: the channels with at least one subscriber.
    pub async fn pubsub_channels(&self) -> Vec<String> {
        redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut self.connection().await)
            .await
            .expect("PUBSUB CHANNELS")
    }

    /// `CLIENT KILL TYPE pubsub`: drops every subscriber connection; returns how many.
    pub async fn kill_pubsub_clients(&self) -> u64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut self.connection().await)
            .await
            .expect("CLIENT KILL TYPE pubsub")
    }

    /// `CLIENT PAUSE <ms> ALL`: every client's commands (the inspection ones too) wait that long.
    pub async fn pause(&self, duration: Duration) {
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(duration.as_millis() as u64)
            .arg("ALL")
            .query_async(&mut self.connection().await)
            .await
            .expect("CLIENT PAUSE");
    }

    /// `SCRIPT FLUSH`: empties the server's Lua script cache.
    pub async fn script_flush(&self) {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut self.connection().await)
            .await
            .expect("SCRIPT FLUSH");
    }

    /// The current process's log file.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `INFO <section>`.
    pub async fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.connection().await)
            .await
            .expect("INFO")
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("redis-{}.log", self.generation))
    }

    /// Starts a process on `port` and waits for its `PONG`.
    fn spawn(&mut self, port: u16) -> Result<(), PortTaken> {
        self.generation += 1;
        self.port = port;
        let stderr_path = self
            .dir
            .path()
            .join(format!("redis-{}.stderr", self.generation));
        let stderr = File::create(&stderr_path).expect("create the redis-server stderr file");

        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(self.log_path())
        .args(["--enable-debug-command", "local"])
        .args(&self.extra_args);
        match &self.tls {
            None => {
                cmd.arg("--port").arg(port.to_string());
            }
            Some(files) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&files.server_cert)
                    .arg("--tls-key-file")
                    .arg(&files.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&files.ca_cert)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        if self.options.acl {
            let password = format!(">{ACL_PASSWORD}");
            cmd.args(["--user", ACL_USER, "on", &password, "~*", "&*", "+@all"])
                .args(["--user", "default", "off"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);

        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!(
                    "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server)"
                )
            }
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        self.process = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .process
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.process = None;
                let output = format!(
                    "{}{}",
                    fs::read_to_string(&stderr_path).unwrap_or_default(),
                    self.log()
                );
                if output.contains("Address already in use") {
                    return Err(PortTaken);
                }
                panic!("redis-server exited ({status}) before answering PING:\n{output}");
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// One `PING`, answered `PONG`? TLS goes through `redis-cli --tls`, which checks the
    /// certificate chain independently of the Rust client under test.
    fn ping(&self) -> bool {
        match &self.tls {
            None => Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
                .is_ok_and(|pong| pong == "PONG"),
            Some(files) => {
                let mut cmd = Command::new("redis-cli");
                cmd.args(["--tls", "--cacert"]).arg(&files.ca_cert).args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                ]);
                if self.options.acl {
                    cmd.args([
                        "--user",
                        ACL_USER,
                        "--pass",
                        ACL_PASSWORD,
                        "--no-auth-warning",
                    ]);
                }
                match cmd
                    .arg("PING")
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                {
                    Ok(out) => out.status.success() && out.stdout.starts_with(b"PONG"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        panic!(
                            "redis-cli not found: install it (Debian/Ubuntu: apt-get install redis-tools)"
                        )
                    }
                    Err(e) => panic!("could not run redis-cli: {e}"),
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("options", &self.options)
            .field("dir", &self.dir.path())
            .field("pid", &self.process.as_ref().map(Child::id))
            .finish()
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The value of `field:value` in an `INFO` reply.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "lock-guard-redis-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create a temporary directory for redis-server");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
