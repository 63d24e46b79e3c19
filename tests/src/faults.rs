//! Faults injected into a [`RedisServer`] from a connection of the test's own (never through the
//! managers under test): `CLIENT PAUSE … ALL|WRITE`, `CLIENT KILL`, `SAVE`; and the [`Figures`]
//! each fault test prints for RELIABILITY.md.

use std::time::Duration;

use crate::RedisServer;

/// What `CLIENT PAUSE` holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Every command of every client.
    All,
    /// Write commands only (scripts included); reads such as `PTTL` go through.
    Write,
}

/// `CLIENT PAUSE <ms> ALL|WRITE`, sent on a fresh connection; returns once Redis confirmed it.
pub async fn pause(server: &RedisServer, duration: Duration, mode: PauseMode) {
    let mode = match mode {
        PauseMode::All => "ALL",
        PauseMode::Write => "WRITE",
    };
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(duration.as_millis() as u64)
        .arg(mode)
        .query_async(&mut server.connection().await)
        .await
        .expect("CLIENT PAUSE");
}

/// `CLIENT KILL TYPE normal SKIPME yes`: closes every command connection (not pub/sub ones);
/// returns how many.
pub async fn kill_command_clients(server: &RedisServer) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut server.connection().await)
        .await
        .expect("CLIENT KILL TYPE normal")
}

/// `SAVE`: writes the dataset to the server's `dump.rdb`, which the next
/// [`restart`](RedisServer::restart) loads (the server is otherwise without persistence): a
/// restart from this older snapshot.
pub async fn save_snapshot(server: &RedisServer) {
    let () = redis::cmd("SAVE")
        .query_async(&mut server.connection().await)
        .await
        .expect("SAVE");
}

/// One scenario's figures for RELIABILITY.md, printed on stdout as one line
/// `LOCKGUARD_RELIABILITY {json}` (see them with `--nocapture`); `scripts/reliability` reruns the
/// fault tests and rewrites the page's tables from these lines, so no figure there is typed by
/// hand. Print it once per scenario, after the test's assertions passed.
#[derive(Debug, Clone)]
pub struct Figures {
    fields: Vec<(String, String)>,
}

impl Figures {
    /// A scenario: its id (the test's path, e.g. `faults_redis::pause_all_during_release`), the
    /// fault injected, and the promise (with its SPEC clause) the test checks.
    pub fn new(test: &str, fault: &str, promise: &str) -> Figures {
        Figures { fields: Vec::new() }
            .text("test", test)
            .text("fault", fault)
            .text("promise", promise)
    }

    /// A text field (JSON-escaped).
    pub fn text(mut self, name: &str, value: &str) -> Figures {
        let mut v = String::with_capacity(value.len() + 2);
        v.push('"');
        for c in value.chars() {
            match c {
                '"' => v.push_str("\\\""),
                '\\' => v.push_str("\\\\"),
                '\n' => v.push_str("\\n"),
                c if (c as u32) < 0x20 => v.push_str(&format!("\\u{:04x}", c as u32)),
                c => v.push(c),
            }
        }
        v.push('"');
        self.fields.push((name.to_owned(), v));
        self
    }

    /// A count.
    pub fn count(mut self, name: &str, value: u64) -> Figures {
        self.fields.push((name.to_owned(), value.to_string()));
        self
    }

    /// A duration, in milliseconds with µs precision (the field's name should end in `_ms`).
    pub fn ms(mut self, name: &str, value: Duration) -> Figures {
        self.fields.push((
            name.to_owned(),
            format!("{:.3}", value.as_secs_f64() * 1000.0),
        ));
        self
    }

    /// What the page shows in the scenario's "measured" column: a sentence built from the
    /// figures (write them with `{}` from the measured values, never literally).
    pub fn measured(self, summary: &str) -> Figures {
        self.text("measured", summary)
    }

    /// The JSON object.
    pub fn json(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// Prints the line on stdout.
    pub fn print(&self) {
        println!("LOCKGUARD_RELIABILITY {}", self.json());
    }
}

/// Milliseconds with one decimal, for [`Figures::measured`] sentences.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
