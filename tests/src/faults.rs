//! Faults injected into a [`RedisServer`] from a connection of the test's own (never through the
//! managers under test): `CLIENT PAUSE … ALL|WRITE`, `CLIENT KILL`, `SAVE`.

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
