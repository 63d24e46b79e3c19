//! What the demos run on: the lock service, chosen by `REDIS_CLUSTER`, `REDLOCK` or `REDIS_URL`,
//! and the database, chosen by `DATABASE_URL`; starting app instances in this process or as child
//! processes.

use std::error::Error;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lock_guard::{LockError, LockManager};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::db::{Db, Tables, unique_prefix};
use crate::instance::Instance;
use crate::keyword::KeywordService;

/// Errors of the demo programs.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The lock service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockSetup {
    /// `LockManager::memory()`: one manager shared by the instances of this process.
    Memory,
    /// Redis at this URL: one manager per instance, as separate servers have.
    Redis(String),
    /// A Redis Cluster reached through these nodes' URLs (`LockManager::cluster`), one manager
    /// per instance.
    Cluster(Vec<String>),
    /// Redlock over these independent masters' URLs (`LockManager::redlock`), one manager per
    /// instance.
    Redlock(Vec<String>),
}

impl LockSetup {
    /// Whether the instances share the lock service only through a server (not one manager).
    pub fn is_server(&self) -> bool {
        !matches!(self, LockSetup::Memory)
    }

    /// What the instances share, for the demos' "instances:" line.
    pub fn sharing(&self) -> &'static str {
        match self {
            LockSetup::Memory => "sharing ONE LockManager::memory() (their shared lock service)",
            LockSetup::Redis(_) => "each with its own LockManager on the same Redis",
            LockSetup::Cluster(_) => "each with its own LockManager on the same Redis Cluster",
            LockSetup::Redlock(_) => "each with its own LockManager on the same Redlock masters",
        }
    }
}

/// The database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbSetup {
    /// A fresh embedded SQLite (see [`crate::db`]).
    Embedded,
    /// The database at this URL (PostgreSQL), in tables named for the run.
    Url(String),
}

/// The lock service and the database of a demo run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// The lock service.
    pub locks: LockSetup,
    /// The database.
    pub db: DbSetup,
}

impl Setup {
    /// The lock service from `REDIS_CLUSTER=host:port,host:port,…` (a cluster, through any of its
    /// nodes), else `REDLOCK=url,url,url` (independent masters), else `REDIS_URL` (one server),
    /// else memory; the database from `DATABASE_URL` (else embedded SQLite). Empty values count
    /// as unset; a node given as `host:port` gets `redis://`.
    pub fn from_env() -> Setup {
        Setup::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables read by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Setup {
        let var = |name| var(name).filter(|v| !v.trim().is_empty());
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| {
                    if u.contains("://") {
                        u.to_owned()
                    } else {
                        format!("redis://{u}")
                    }
                })
                .collect()
        };
        let locks = if let Some(nodes) = var("REDIS_CLUSTER") {
            LockSetup::Cluster(list(nodes))
        } else if let Some(urls) = var("REDLOCK") {
            LockSetup::Redlock(list(urls))
        } else {
            var("REDIS_URL").map_or(LockSetup::Memory, LockSetup::Redis)
        };
        Setup {
            locks,
            db: var("DATABASE_URL").map_or(DbSetup::Embedded, DbSetup::Url),
        }
    }

    /// Whether instances can run as separate processes: they need a lock service and a database
    /// that outlive one process.
    pub fn shared_across_processes(&self) -> bool {
        self.locks.is_server() && matches!(self.db, DbSetup::Url(_))
    }

    /// One line on the lock service, one on the database, passwords hidden.
    pub fn describe(&self) -> [String; 2] {
        let locks = match &self.locks {
            LockSetup::Memory => "locks:    LockManager::memory() (in-process; no Redis needed; \
                                  set REDIS_URL, REDIS_CLUSTER or REDLOCK to use Redis)"
                .to_owned(),
            LockSetup::Redis(url) => format!("locks:    Redis at {}", redact(url)),
            LockSetup::Cluster(nodes) => format!(
                "locks:    Redis Cluster, LockManager::cluster(), through {}",
                redact_all(nodes)
            ),
            LockSetup::Redlock(urls) => format!(
                "locks:    Redlock over {} independent masters, LockManager::redlock(): {}",
                urls.len(),
                redact_all(urls)
            ),
        };
        let db = match &self.db {
            DbSetup::Embedded => "database: embedded SQLite through sqlx, in memory (no server \
                                  needed; set DATABASE_URL=postgres://… to use PostgreSQL)"
                .to_owned(),
            DbSetup::Url(url) => format!("database: {}", redact(url)),
        };
        [locks, db]
    }

    /// Lock managers for `instances` app instances: one shared manager in memory (the instances
    /// share one lock service, as they would share one Redis), one per instance on Redis.
    pub async fn lock_managers(&self, instances: usize) -> Result<Vec<LockManager>, LockError> {
        match &self.locks {
            LockSetup::Memory => Ok(vec![LockManager::memory(); instances]),
            LockSetup::Redis(url) => {
                let mut managers = Vec::with_capacity(instances);
                for _ in 0..instances {
                    managers.push(LockManager::redis(url).await?);
                }
                Ok(managers)
            }
            LockSetup::Cluster(nodes) => {
                let mut managers = Vec::with_capacity(instances);
                for _ in 0..instances {
                    managers.push(LockManager::cluster(nodes).await?);
                }
                Ok(managers)
            }
            LockSetup::Redlock(urls) => {
                let mut managers = Vec::with_capacity(instances);
                for _ in 0..instances {
                    managers.push(LockManager::redlock(urls).await?);
                }
                Ok(managers)
            }
        }
    }

    /// The database of this run, its tables created: a fresh embedded one, or new tables (named
    /// for the run, dropped with [`Db::drop_tables`]) in the database at the URL.
    pub async fn database(&self) -> Result<Db, sqlx::Error> {
        match &self.db {
            DbSetup::Embedded => Db::embedded().await,
            DbSetup::Url(url) => {
                let db = Db::open(url, Tables::new(&unique_prefix())).await?;
                db.create_tables().await?;
                Ok(db)
            }
        }
    }
}

/// Starts one in-process instance per manager, each with its own pool to `db`, on free loopback
/// ports.
pub async fn start_instances(
    db: &Db,
    managers: &[LockManager],
    work: Duration,
) -> Result<Vec<Instance>, BoxError> {
    start_instances_stalling(db, managers, work, None).await
}

/// [`start_instances`], with the first instance's inserts' `COMMIT`s reaching the database
/// `stall_commit` late (one instance with a slow link; see [`KeywordService::with_stall_commit`]).
pub async fn start_instances_stalling(
    db: &Db,
    managers: &[LockManager],
    work: Duration,
    stall_commit: Option<Duration>,
) -> Result<Vec<Instance>, BoxError> {
    let mut instances = Vec::with_capacity(managers.len());
    for (i, locks) in managers.iter().enumerate() {
        let service = KeywordService::new(db.connect_again().await?, locks.clone())
            .with_work(work)
            .with_stall_commit(stall_commit.filter(|_| i == 0));
        instances.push(Instance::start(service, 0).await?);
    }
    Ok(instances)
}

/// An app instance in a child process (`<exe> --serve …`), killed on [`stop`](Self::stop) or
/// drop; it also exits by itself when this process dies (its stdin closes).
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    url: String,
}

/// The line a serving instance prints first on stdout, followed by its URL.
pub const LISTENING: &str = "listening on ";

impl ServerProcess {
    /// Runs `exe args…` and waits (up to 30 s) for its `listening on <url>` line.
    pub async fn spawn(exe: &Path, args: &[String]) -> io::Result<ServerProcess> {
        let mut command = Command::new(exe);
        command.args(args);
        let (child, rest) = spawn_until(command, LISTENING, "its address").await?;
        let url = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(ServerProcess { child, url })
    }

    /// Its URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `url` with any password replaced by `***`, exactly as the lock manager shows it.
pub fn redact(url: &str) -> String {
    lock_guard::redact_url(url)
}

/// Each URL redacted, comma-separated.
fn redact_all(urls: &[String]) -> String {
    urls.iter()
        .map(|u| redact(u))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `command` (stdin and stdout piped, killed on drop) and waits up to 30 s for a line of its
/// stdout that contains `marker`; returns the child and what follows the marker on that line. The
/// rest of its stdout is read in the background, so it never blocks on a full pipe. `what` names
/// the line in the errors.
pub async fn spawn_until(
    mut command: Command,
    marker: &str,
    what: &str,
) -> io::Result<(Child, String)> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, rest)) = line.split_once(marker) {
                return Ok(rest.to_owned());
            }
        }
        Err(io::Error::other(format!(
            "the process exited before printing {what}"
        )))
    })
    .await
    .map_err(|_| io::Error::other(format!("the process did not print {what} within 30 s")))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, rest))
}
