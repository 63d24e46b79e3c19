//! A Redis Cluster of 3 masters and 3 replicas on free loopback ports, built by hand as
//! `redis-cli --cluster create` would: slots assigned with `CLUSTER ADDSLOTSRANGE`, nodes joined
//! with `CLUSTER MEET`, replicas attached with `CLUSTER REPLICATE`; ready once every node reports
//! `cluster_state:ok`. Killed with its nodes on drop.

use std::time::Duration;

use lock_guard::LockManager;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::server::info_field;
use crate::{RedisServer, ServerOptions};

/// How long the cluster may take to form or to settle after a failover.
const SETTLE: Duration = Duration::from_secs(20);
const SLOTS: u16 = 16384;

/// 3 masters, each with one replica. Node `i` and node `i + 3` start as master and replica of the
/// same slots.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Ports of the nodes killed with [`kill`](Self::kill): left out of [`settle`](Self::settle).
    dead: Vec<u16>,
}

async fn query<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> T {
    cmd.query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.args_iter().next()))
}

impl RedisCluster {
    /// Starts and joins the six nodes; returns once the cluster is `ok` on every node and every
    /// replica is in sync.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing or the cluster does not form within 20 s.
    pub async fn start() -> RedisCluster {
        Self::start_with(ServerOptions::new()).await
    }

    /// [`start`](Self::start) with `options` for every node: with ACL, the replicas log in to
    /// their masters as the ACL user.
    pub async fn start_with(options: ServerOptions) -> RedisCluster {
        let login = [
            "--masteruser",
            crate::ACL_USER,
            "--masterauth",
            crate::ACL_PASSWORD,
        ];
        let mut args = vec![
            "--cluster-node-timeout",
            "1000",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-allow-replica-migration",
            "no",
        ];
        if options.is_acl() {
            args.extend_from_slice(&login);
        }
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::start_cluster_node_with(options, &args))
            .collect();
        let cluster = RedisCluster {
            nodes,
            dead: Vec::new(),
        };
        let per = SLOTS / 3;
        for i in 0..3u16 {
            let (lo, hi) = (i * per, if i == 2 { SLOTS - 1 } else { (i + 1) * per - 1 });
            let () = query(
                &mut cluster.nodes[usize::from(i)].connection().await,
                redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(lo).arg(hi),
            )
            .await;
        }
        let mut first = cluster.nodes[0].connection().await;
        for n in &cluster.nodes[1..] {
            let () = query(
                &mut first,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(n.port()),
            )
            .await;
        }
        cluster
            .until("every node knows the six", async |c| {
                for n in &c.nodes {
                    let nodes = c.cluster_nodes(n).await;
                    if nodes.lines().count() != 6
                        || nodes.contains("handshake")
                        || nodes.contains("noaddr")
                    {
                        return false;
                    }
                }
                true
            })
            .await;
        for i in 0..3 {
            let id: String = query(
                &mut cluster.nodes[i].connection().await,
                redis::cmd("CLUSTER").arg("MYID"),
            )
            .await;
            let () = query(
                &mut cluster.nodes[i + 3].connection().await,
                redis::cmd("CLUSTER").arg("REPLICATE").arg(&id),
            )
            .await;
        }
        cluster.settle().await;
        cluster
    }

    /// Waits until every node reports `cluster_state:ok` with three masters, and every replica's
    /// link to its master is up.
    ///
    /// # Panics
    ///
    /// After 20 s.
    pub async fn settle(&self) {
        self.until("the cluster is ok and every replica in sync", async |c| {
            for n in c.nodes.iter().filter(|n| !c.dead.contains(&n.port())) {
                let info: String =
                    query(&mut n.connection().await, redis::cmd("CLUSTER").arg("INFO")).await;
                if info_field(&info, "cluster_state") != Some("ok")
                    || info_field(&info, "cluster_size") != Some("3")
                {
                    return false;
                }
                let repl = n.info("replication").await;
                // A master counts a replica for WAIT once it calls it online.
                let attached =
                    info_field(&repl, "connected_slaves").and_then(|c| c.parse::<usize>().ok());
                if attached.is_some_and(|a| repl.matches("state=online").count() != a) {
                    return false;
                }
                if info_field(&repl, "role") == Some("slave")
                    && (info_field(&repl, "master_link_status") != Some("up")
                        || info_field(&repl, "master_sync_in_progress") != Some("0"))
                {
                    return false;
                }
                // Every node agrees on who the masters are.
                let masters = c
                    .cluster_nodes(n)
                    .await
                    .lines()
                    .filter(|l| l.contains("master") && !l.contains("fail"))
                    .count();
                if masters != 3 {
                    return false;
                }
            }
            true
        })
        .await;
    }

    async fn until(&self, what: &str, check: impl AsyncFn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !check(self).await {
            assert!(
                Instant::now() < deadline,
                "cluster: {what}: not within {SETTLE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The nodes not killed.
    fn alive(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| !self.dead.contains(&n.port()))
    }

    async fn cluster_nodes(&self, node: &RedisServer) -> String {
        query(
            &mut node.connection().await,
            redis::cmd("CLUSTER").arg("NODES"),
        )
        .await
    }

    /// The URLs of the three nodes that started as masters (enough for the client to find all).
    pub fn urls(&self) -> Vec<String> {
        self.nodes[..3].iter().map(RedisServer::url).collect()
    }

    /// All six nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A manager on this cluster (command timeout 1 s).
    pub async fn manager(&self) -> LockManager {
        LockManager::builder()
            .cluster(self.urls())
            .command_timeout(Duration::from_secs(1))
            .build()
            .await
            .expect("a cluster manager")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot(&self, key: &str) -> u16 {
        query(
            &mut self.alive().next().expect("a live node").connection().await,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
    }

    /// The node serving `slot` as master now, by the first node's view.
    pub async fn master_of(&self, slot: u16) -> &RedisServer {
        let first = self.alive().next().expect("a live node");
        let nodes = self.cluster_nodes(first).await;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a port");
                return self
                    .nodes
                    .iter()
                    .find(|n| n.port() == port)
                    .expect("a node of ours");
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// A replica of `master`.
    pub async fn replica_of(&self, master: &RedisServer) -> &RedisServer {
        for n in self.alive() {
            let repl = n.info("replication").await;
            if info_field(&repl, "role") == Some("slave")
                && info_field(&repl, "master_port").and_then(|p| p.parse().ok())
                    == Some(master.port())
            {
                return n;
            }
        }
        panic!("no replica of port {}", master.port());
    }

    /// `CLUSTER FAILOVER` on `replica` (a coordinated hand-over: the master stops writes, the
    /// replica catches up and takes over); returns once it is master and the cluster is settled.
    pub async fn failover(&self, replica: &RedisServer) {
        let () = query(
            &mut replica.connection().await,
            redis::cmd("CLUSTER").arg("FAILOVER"),
        )
        .await;
        self.until("the replica took over", async |_| {
            info_field(&replica.info("replication").await, "role") == Some("master")
        })
        .await;
        self.settle().await;
    }

    /// Kills the node on `port` (SIGKILL, as a crash would); [`settle`](Self::settle) leaves it
    /// out from now on.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port() == port) {
            n.kill();
            self.dead.push(port);
        }
    }

    /// `CLUSTER FAILOVER TAKEOVER` on `replica`: it becomes master at once, without its master's
    /// agreement or the other masters' votes (for a master that is dead or cut off); returns once
    /// the cluster is settled.
    pub async fn takeover(&self, replica: &RedisServer) {
        let () = query(
            &mut replica.connection().await,
            redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"),
        )
        .await;
        self.until("the replica took over", async |_| {
            info_field(&replica.info("replication").await, "role") == Some("master")
        })
        .await;
        self.settle().await;
    }

    /// `calls` of a command on every node, summed (from `INFO commandstats`).
    pub async fn command_calls(&self, name: &str) -> u64 {
        let mut total = 0;
        for n in self.nodes.iter().filter(|n| !self.dead.contains(&n.port())) {
            total += n.command_calls().await.get(name).copied().unwrap_or(0);
        }
        total
    }
}
