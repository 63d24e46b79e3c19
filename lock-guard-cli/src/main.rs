//! `lock-guard`: see who holds which lock, how long for, who waits — and clear an abandoned one.
//!
//! ```text
//! lock-guard [--url URL]… [--cluster | --redlock] [--prefix lock] [--json] <COMMAND>
//!   list [NAME_PREFIX] [--limit N]      held locks, with remaining lease and waiters
//!   inspect KEY                         one lock (its Redis key, as `list` shows it)
//!   unlock KEY [--yes]                  delete a lock whoever holds it (asks first)
//!   watch [NAME_PREFIX] [--interval-ms] a refreshing table of held locks
//! ```
//!
//! Exit codes: 0 done (for `inspect`: the lock is held); 1 `inspect`/`unlock` found no such lock;
//! 2 bad usage or configuration (a malformed URL, a key that is not a lock key); 3 the servers
//! failed (unreachable, wrong password, timeout); 4 `unlock` not confirmed. Passwords in URLs are
//! never printed.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lock_guard::{LockError, LockManager, LockState, redact_url};
use serde_json::json;

/// See who holds which distributed lock, for how long, and who waits; clear an abandoned one.
#[derive(Debug, Parser)]
#[command(name = "lock-guard", version)]
struct Cli {
    /// Redis URL (`redis://[user:password@]host:port[/db]`, `rediss://…`); repeat it, or separate
    /// with commas, for cluster seeds or Redlock nodes.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379"
    )]
    url: Vec<String>,
    /// The URLs are seeds of a Redis Cluster (every master is scanned).
    #[arg(long, global = true, conflicts_with = "redlock")]
    cluster: bool,
    /// The URLs are independent Redlock masters (a lock is held when a majority holds it).
    #[arg(long, global = true)]
    redlock: bool,
    /// The key prefix the services use (`LockManagerBuilder::key_prefix`).
    #[arg(long, global = true, default_value = "lock")]
    prefix: String,
    /// Bound on each Redis command, in milliseconds.
    #[arg(long, global = true, default_value_t = 2000)]
    timeout_ms: u64,
    /// Machine-readable output: JSON (one document; `watch`: one per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Held locks whose name starts with NAME_PREFIX (all by default).
    List {
        #[arg(default_value = "")]
        name_prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One lock, by its Redis key, e.g. `lock:{keyword:42}`.
    Inspect { key: String },
    /// Deletes a lock whoever holds it. Its holder is not stopped: use it only on a lock you know
    /// to be abandoned.
    Unlock {
        key: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// A table of held locks, refreshed every interval, until interrupted.
    Watch {
        #[arg(default_value = "")]
        name_prefix: String,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// At most this many locks per refresh.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Stop after this many refreshes (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

const NOT_FOUND: u8 = 1;
const USAGE: u8 = 2;
const BACKEND: u8 = 3;
const NOT_CONFIRMED: u8 = 4;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = match &e {
                LockError::Config { .. } => USAGE,
                _ => BACKEND,
            };
            if cli.json {
                println!("{}", json!({ "error": e.to_string(), "exit_code": code }));
            } else {
                eprintln!("lock-guard: {e}");
            }
            ExitCode::from(code)
        }
    }
}

async fn manager(cli: &Cli) -> Result<LockManager, LockError> {
    let builder = LockManager::builder()
        .key_prefix(&cli.prefix)
        .command_timeout(Duration::from_millis(cli.timeout_ms.max(1)));
    let builder = if cli.cluster {
        builder.cluster(&cli.url)
    } else if cli.redlock {
        builder.redlock(&cli.url)
    } else {
        match cli.url.as_slice() {
            [one] => builder.url(one),
            _ => {
                return Err(LockError::Config {
                    reason: format!(
                        "{} URLs given ({}): add --cluster for cluster seeds or --redlock for Redlock nodes",
                        cli.url.len(),
                        cli.url
                            .iter()
                            .map(|u| redact_url(u))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    };
    builder.build().await
}

async fn run(cli: &Cli) -> Result<u8, LockError> {
    let locks = manager(cli).await?;
    match &cli.command {
        Command::List { name_prefix, limit } => {
            let held = locks.list(name_prefix, *limit).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::Value::Array(held.iter().map(state_json).collect())
                );
            } else {
                print!("{}", table(&held));
            }
            Ok(0)
        }
        Command::Inspect { key } => {
            let state = locks.inspect_redis_key(key).await?;
            if cli.json {
                println!("{}", state_json(&state));
            } else {
                print!("{}", describe(&state));
            }
            Ok(if state.held { 0 } else { NOT_FOUND })
        }
        Command::Unlock { key, yes } => {
            let state = locks.inspect_redis_key(key).await?;
            if !state.held {
                report(cli, key, false, "no such lock held");
                return Ok(NOT_FOUND);
            }
            if !yes && !confirm(&state) {
                report(cli, key, false, "not confirmed");
                return Ok(NOT_CONFIRMED);
            }
            let deleted = locks.force_unlock_redis_key(key).await?;
            report(
                cli,
                key,
                deleted,
                if deleted {
                    "unlocked"
                } else {
                    "no such lock held"
                },
            );
            Ok(if deleted { 0 } else { NOT_FOUND })
        }
        Command::Watch {
            name_prefix,
            interval_ms,
            limit,
            count,
        } => {
            let clear = !cli.json && std::io::stdout().is_terminal();
            let mut n = 0;
            loop {
                let held = locks.list(name_prefix, *limit).await?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                if cli.json {
                    println!(
                        "{}",
                        json!({
                            "unix_ms": now.as_millis() as u64,
                            "locks": held.iter().map(state_json).collect::<Vec<_>>(),
                        })
                    );
                } else {
                    if clear {
                        print!("\x1b[2J\x1b[H");
                    }
                    println!(
                        "{} held lock(s){} — refreshed every {interval_ms} ms",
                        held.len(),
                        if name_prefix.is_empty() {
                            String::new()
                        } else {
                            format!(" named {name_prefix}…")
                        }
                    );
                    print!("{}", table(&held));
                }
                let _ = std::io::stdout().flush();
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    return Ok(0);
                }
                tokio::time::sleep(Duration::from_millis(*interval_ms)).await;
            }
        }
    }
}

fn report(cli: &Cli, key: &str, unlocked: bool, what: &str) {
    if cli.json {
        println!(
            "{}",
            json!({ "key": key, "unlocked": unlocked, "result": what })
        );
    } else if unlocked {
        println!("{key}: {what}");
    } else {
        eprintln!("{key}: {what}");
    }
}

/// Asks on stderr, reads one line from stdin: `y` or `yes` confirms.
fn confirm(state: &LockState) -> bool {
    eprint!(
        "Delete lock {} ({} left, {} waiting process(es))? Its holder is not stopped. [y/N] ",
        state.key,
        remaining(state),
        state.waiting_processes
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn remaining(state: &LockState) -> String {
    match state.remaining {
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
        None => "-".to_owned(),
    }
}

fn state_json(state: &LockState) -> serde_json::Value {
    json!({
        "key": state.key,
        "held": state.held,
        "remaining_ms": state.remaining.map(|d| d.as_millis() as u64),
        "fencing_token": state.fencing_token,
        "waiting_processes": state.waiting_processes,
        "handover_reserved": state.handover_reserved,
        "awaited": state.awaited,
    })
}

fn describe(state: &LockState) -> String {
    format!(
        "key:                {}\nheld:               {}\nremaining lease:    {}\nfencing token:      {}\nwaiting processes:  {}\nhand-over reserved: {}\n",
        state.key,
        if state.held { "yes" } else { "no" },
        remaining(state),
        state
            .fencing_token
            .map_or_else(|| "-".to_owned(), |t| t.to_string()),
        state.waiting_processes,
        if state.handover_reserved { "yes" } else { "no" },
    )
}

fn table(held: &[LockState]) -> String {
    let width = held.iter().map(|s| s.key.len()).max().unwrap_or(3).max(3);
    let mut out = format!(
        "{:<width$}  {:>9}  {:>20}  {:>7}  {}\n",
        "KEY", "REMAINING", "FENCING TOKEN", "WAITING", "HAND-OVER"
    );
    for s in held {
        out.push_str(&format!(
            "{:<width$}  {:>9}  {:>20}  {:>7}  {}\n",
            s.key,
            remaining(s),
            s.fencing_token
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            s.waiting_processes,
            if s.handover_reserved { "reserved" } else { "-" },
        ));
    }
    out
}
