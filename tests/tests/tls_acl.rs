//! TLS and ACL: `rediss://` with a private CA and `redis://user:password@` both take,
//! wait for and release locks; passwords never show in `Debug`, `Display` or `tracing` output.

use std::time::Duration;

use lock_guard::{LockError, LockKey, LockManager, LockOptions};
use lock_guard_tests::{ACL_PASSWORD, LogCapture, RedisServer, ServerOptions, eventually};
use tokio::time::{Instant, timeout};

/// Takes and releases a lock, runs a body, and hands a released lock to a waiter on another
/// instance promptly — which needs the subscriber connection to work (TLS, login) too.
async fn locks_work(server: &RedisServer) {
    let (locks, other) = (server.manager().await, server.manager().await);
    let key = LockKey::new("secure").part(server.port());

    let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
    let first = guard.fencing_token();
    assert!(guard.release().await.unwrap());
    let ran = locks
        .run(&key, LockOptions::new(), async {
            Ok::<_, LockError>(lock_guard::fencing_token())
        })
        .await;
    let second = ran.unwrap().expect("a token inside the body");
    assert!(
        second > first,
        "token {second} after {first}: fencing over TLS/ACL must rise"
    );
    // The counter is really on this (TLS/ACL) server: it holds the last token issued.
    let stored: u64 = redis::cmd("GET")
        .arg(format!("{}:fence", locks.redis_key(&key)))
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    assert_eq!(stored, second);

    let held = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let (other, key) = (other.clone(), key.clone());
        async move {
            let guard = other
                .lock(&key, LockOptions::new().wait(Duration::from_secs(10)))
                .await;
            (guard.map(drop), Instant::now())
        }
    });
    eventually(Duration::from_secs(5), "the waiter queued", || async {
        other.metrics().waiters == 1
    })
    .await;
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let (acquired, acquired_at) = waiter.await.unwrap();
    acquired.expect("the waiter gets the lock");
    let latency = acquired_at - released_at;
    assert!(
        latency < Duration::from_secs(1),
        "the waiter was woken only after {latency:?}: no release message?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_takes_waits_for_and_releases_locks() {
    let server = RedisServer::start_with(ServerOptions::new().tls());
    assert!(server.url().starts_with("rediss://"));
    locks_work(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_takes_waits_for_and_releases_locks() {
    let server = RedisServer::start_with(ServerOptions::new().acl());
    assert!(server.url().starts_with("redis://alice:secret@"));
    locks_work(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_acl_takes_waits_for_and_releases_locks() {
    let server = RedisServer::start_with(ServerOptions::new().tls().acl());
    locks_work(&server).await;
}

/// Without the private CA, the server's certificate is not trusted: `Backend`, in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_is_refused() {
    let server = RedisServer::start_with(ServerOptions::new().tls());
    let result = timeout(Duration::from_secs(4), LockManager::redis(&server.url()))
        .await
        .expect("connecting hung");
    let err = result.expect_err("a certificate from an unknown CA must be refused");
    eprintln!("untrusted certificate: {err}");
    assert!(err.is_backend(), "{err:?}");
}

/// A wrong password or none: `Backend` at `build`, and the password is nowhere in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_without_echoing_them() {
    let server = RedisServer::start_with(ServerOptions::new().acl());
    let wrong = "wr0ng-Pa55word-42";
    let url = format!("redis://alice:{wrong}@127.0.0.1:{}", server.port());
    let err = LockManager::redis(&url)
        .await
        .expect_err("a wrong password must be refused");
    eprintln!("wrong password: {err}");
    assert!(err.is_backend(), "{err:?}");
    assert_no_secret(&format!("{err} {err:?}"), wrong);

    let anonymous = format!("redis://127.0.0.1:{}", server.port());
    let err = LockManager::redis(&anonymous)
        .await
        .expect_err("the default user is off");
    assert!(err.is_backend(), "{err:?}");
}

/// The password of a working manager appears neither in its `Debug` (nor its builder's), nor in the
/// errors it returns once its Redis is gone, nor in anything it logs.
#[tokio::test]
async fn password_never_appears_in_debug_display_or_logs() {
    let mut server = RedisServer::start_with(ServerOptions::new().acl());
    let logs = LogCapture::new();
    let _capture = logs.install();

    let builder = server.builder();
    assert_no_secret(&format!("{builder:?}"), ACL_PASSWORD);
    let locks = builder.build().await.unwrap();
    let shown = format!("{locks:?}");
    assert_no_secret(&shown, ACL_PASSWORD);
    assert!(
        shown.contains("alice"),
        "the user name may show, for diagnosis: {shown}"
    );

    let key = LockKey::new("secure").part("redaction");
    let guard = locks.lock(&key, LockOptions::new()).await.unwrap();
    assert_no_secret(&format!("{guard:?}"), ACL_PASSWORD);
    server.kill();
    for err in [
        guard.release().await.expect_err("Redis is gone"),
        locks
            .lock(&key, LockOptions::new())
            .await
            .expect_err("Redis is gone"),
        server.builder().build().await.expect_err("Redis is gone"),
    ] {
        assert_no_secret(&format!("{err} {err:?}"), ACL_PASSWORD);
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            assert_no_secret(&format!("{s} {s:?}"), ACL_PASSWORD);
            source = s.source();
        }
    }
    assert!(
        !logs.lines().is_empty(),
        "the capture saw the library's events"
    );
    assert_no_secret(&logs.text(), ACL_PASSWORD);
}

fn assert_no_secret(text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "the password {secret:?} shows in: {text}"
    );
}
