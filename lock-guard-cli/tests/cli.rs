//! The `lock-guard` binary against real servers: held, queued and reserved locks, `unlock` with
//! and without confirmation, `watch`, a cluster, and the failures a script must tell apart by exit
//! code (no such lock, bad URL, wrong password) — never printing a password.

use std::process::Stdio;
use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{ACL_USER, RedisCluster, RedisServer, ServerOptions, eventually};
use tokio::io::AsyncWriteExt as _;

const BIN: &str = env!("CARGO_BIN_EXE_lock-guard");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the lock-guard binary");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("lock-guard finished within 20 s")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A held lock is listed and inspected (text and JSON); a free one is exit code 1; a waiting
/// process and a reserved hand-over show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_inspect_held_queued_and_reserved_locks() {
    let server = RedisServer::start();
    let url = server.url();
    let (holder, waiter) = (server.manager().await, server.manager().await);
    let key = LockKey::new("keyword").part(42);
    let guard = holder
        .lock(&key, LockOptions::new().lease(Duration::from_secs(20)))
        .await
        .unwrap();
    let waiting = {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move {
            waiter
                .run(
                    &key,
                    LockOptions::new().wait(Duration::from_secs(10)),
                    async { Ok::<_, LockError>(()) },
                )
                .await
        })
    };
    eventually(Duration::from_secs(3), "a waiting process", || async {
        holder.inspect(&key).await.unwrap().waiting_processes == 1
    })
    .await;

    let list = run(&["--url", &url, "list"], None).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("lock:{keyword:42}"), "{}", list.stdout);
    assert!(list.stdout.starts_with("KEY"), "{}", list.stdout);

    let listed = run(&["--url", &url, "--json", "list", "key"], None).await;
    let listed = json(&listed.stdout);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["key"], "lock:{keyword:42}");
    assert_eq!(listed[0]["waiting_processes"], 1);
    let ms = listed[0]["remaining_ms"].as_u64().unwrap();
    assert!(ms > 0 && ms <= 20_000, "{ms}");
    assert_eq!(listed[0]["fencing_token"], guard.fencing_token());

    let inspect = run(&["--url", &url, "inspect", "lock:{keyword:42}"], None).await;
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    assert!(
        inspect.stdout.contains("held:               yes"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("waiting processes:  1"),
        "{}",
        inspect.stdout
    );

    guard.release().await.unwrap();
    waiting.await.unwrap().unwrap();
    let free = run(
        &["--url", &url, "--json", "inspect", "lock:{keyword:42}"],
        None,
    )
    .await;
    assert_eq!(free.code, 1, "a free lock is exit code 1: {}", free.stdout);
    assert_eq!(json(&free.stdout)["held"], false);

    let mut conn = server.connection().await;
    let _: () = redis::cmd("SET")
        .arg("lock:{keyword:7}")
        .arg("claim:0123456789abcdef")
        .arg("PX")
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let reserved = run(
        &["--url", &url, "--json", "inspect", "lock:{keyword:7}"],
        None,
    )
    .await;
    assert_eq!(
        json(&reserved.stdout)["handover_reserved"],
        true,
        "{}",
        reserved.stdout
    );
}

/// `unlock` asks first: "n" (or nothing) leaves the lock (exit 4), "y" deletes it (exit 0), and
/// then there is nothing to unlock (exit 1) — with `--yes` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_asks_first() {
    let server = RedisServer::start();
    let url = server.url();
    let locks = server.manager().await;
    let key = LockKey::new("stuck").part(1);
    let _guard = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    let no = run(&["--url", &url, "unlock", "lock:{stuck:1}"], Some("n\n")).await;
    assert_eq!(no.code, 4, "{} {}", no.stdout, no.stderr);
    assert!(
        no.stderr.contains("Delete lock lock:{stuck:1}"),
        "{}",
        no.stderr
    );
    assert!(locks.inspect(&key).await.unwrap().held);
    let silent = run(&["--url", &url, "unlock", "lock:{stuck:1}"], None).await;
    assert_eq!(silent.code, 4, "no answer is no: {}", silent.stderr);
    assert!(locks.inspect(&key).await.unwrap().held);

    let yes = run(&["--url", &url, "unlock", "lock:{stuck:1}"], Some("y\n")).await;
    assert_eq!(yes.code, 0, "{} {}", yes.stdout, yes.stderr);
    assert!(!locks.inspect(&key).await.unwrap().held);
    let again = run(
        &["--url", &url, "--json", "unlock", "--yes", "lock:{stuck:1}"],
        None,
    )
    .await;
    assert_eq!(again.code, 1, "{}", again.stdout);
    assert_eq!(json(&again.stdout)["unlocked"], false);
}

/// `watch --count 2` prints two refreshed tables (one JSON document per refresh with `--json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refreshes() {
    let server = RedisServer::start();
    let url = server.url();
    let locks = server.manager().await;
    let _a = locks
        .lock(
            &LockKey::new("report").part("daily"),
            LockOptions::new().watchdog(),
        )
        .await
        .unwrap();
    let watch = run(
        &[
            "--url",
            &url,
            "watch",
            "--interval-ms",
            "200",
            "--count",
            "2",
        ],
        None,
    )
    .await;
    assert_eq!(watch.code, 0, "{}", watch.stderr);
    assert_eq!(
        watch.stdout.matches("1 held lock(s)").count(),
        2,
        "{}",
        watch.stdout
    );
    assert_eq!(watch.stdout.matches("lock:{report:daily}").count(), 2);
    let watch = run(
        &[
            "--url",
            &url,
            "--json",
            "watch",
            "--interval-ms",
            "100",
            "--count",
            "3",
        ],
        None,
    )
    .await;
    let lines: Vec<_> = watch.stdout.lines().map(json).collect();
    assert_eq!(lines.len(), 3, "{}", watch.stdout);
    assert!(
        lines
            .iter()
            .all(|l| l["locks"][0]["key"] == "lock:{report:daily}")
    );
}

/// On a cluster (`--cluster`, seeds given with commas) every master's locks are listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_listing() {
    let cluster = RedisCluster::start().await;
    let locks = cluster.manager().await;
    let mut guards = Vec::new();
    for part in 0..8 {
        guards.push(
            locks
                .lock(
                    &LockKey::new("shard").part(part),
                    LockOptions::new().lease(Duration::from_secs(20)),
                )
                .await
                .unwrap(),
        );
    }
    let seeds = cluster.urls().join(",");
    let out = run(
        &["--url", &seeds, "--cluster", "--json", "list", "shard"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        json(&out.stdout).as_array().unwrap().len(),
        8,
        "{}",
        out.stdout
    );
    let two = run(&["--url", &seeds, "list"], None).await;
    assert_eq!(
        two.code, 2,
        "several URLs without --cluster/--redlock: {}",
        two.stderr
    );
}

/// Failures, by exit code: a malformed URL and a key that is not a lock key are 2, an unreachable
/// server and a wrong password are 3, a lock nobody holds is 1. No password is ever printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_exit_codes_and_hide_passwords() {
    let server = RedisServer::start_with(ServerOptions::new().acl());
    let wrong = format!(
        "redis://{ACL_USER}:not-the-password-7731@127.0.0.1:{}",
        server.port()
    );
    let out = run(&["--url", &wrong, "list"], None).await;
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert!(
        !out.stderr.contains("not-the-password-7731"),
        "{}",
        out.stderr
    );
    let out = run(&["--url", &wrong, "--json", "list"], None).await;
    assert_eq!(out.code, 3);
    assert!(
        !out.stdout.contains("not-the-password-7731"),
        "{}",
        out.stdout
    );
    assert_eq!(json(&out.stdout)["exit_code"], 3);

    let bad = run(&["--url", "htp://nowhere:secret-pw-99@x", "list"], None).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(!bad.stderr.contains("secret-pw-99"), "{}", bad.stderr);
    let dead = run(
        &[
            "--url",
            "redis://127.0.0.1:1",
            "--timeout-ms",
            "300",
            "list",
        ],
        None,
    )
    .await;
    assert_eq!(dead.code, 3, "{}", dead.stderr);

    let url = server.url();
    let missing = run(&["--url", &url, "inspect", "lock:{nothing:here}"], None).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    let not_a_key = run(&["--url", &url, "inspect", "orders:42"], None).await;
    assert_eq!(not_a_key.code, 2, "{}", not_a_key.stderr);
    assert!(
        not_a_key.stderr.contains("`orders:42`"),
        "{}",
        not_a_key.stderr
    );
    let manager_ok = LockManager::redis(&url).await;
    assert!(manager_ok.is_ok());
}
