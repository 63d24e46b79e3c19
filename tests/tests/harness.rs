//! The test harness itself: servers start on free ports, answer, restart empty, die on drop.

use std::time::Duration;

use lock_guard_tests::{RedisServer, ServerOptions};

#[tokio::test]
async fn plain_server_answers_and_restarts_empty() {
    let mut server = RedisServer::start();
    assert_ne!(server.port(), 6379);
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));

    let mut con = server.connection().await;
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut con)
        .await
        .unwrap();
    let before = server.total_commands().await;
    let () = redis::cmd("SET")
        .arg("k2")
        .arg("v")
        .query_async(&mut con)
        .await
        .unwrap();
    // the SET, the INFO that read `before` is already counted, plus this INFO
    assert_eq!(server.total_commands().await, before + 2);
    assert_eq!(server.command_calls().await.get("set"), Some(&2));

    let port = server.port();
    server.restart();
    assert_eq!(server.port(), port);
    let mut con = server.connection().await;
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(v, None, "a restart keeps nothing");
}

#[tokio::test]
async fn killed_server_refuses_connections() {
    let mut server = RedisServer::start();
    assert!(server.is_running());
    server.kill();
    assert!(!server.is_running());
    let refused = server
        .client()
        .get_connection_with_timeout(Duration::from_millis(500));
    assert!(refused.is_err());
}

#[tokio::test]
async fn two_servers_get_two_ports() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
}

#[test]
fn dropped_server_is_gone() {
    let server = RedisServer::start();
    let client = server.client();
    drop(server);
    assert!(
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .is_err()
    );
}

#[tokio::test]
async fn acl_server_requires_the_password() {
    let server = RedisServer::start_with(ServerOptions::new().acl());
    assert_eq!(
        server.url(),
        format!("redis://alice:secret@127.0.0.1:{}", server.port())
    );
    let mut con = server.connection().await;
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(who, "alice");

    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
    let mut con = anonymous
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap();
    let denied = redis::cmd("PING").query::<String>(&mut con);
    assert!(denied.is_err(), "the default user is off: {denied:?}");
}

#[test]
fn tls_server_answers_over_tls_only() {
    // Starting waits for `redis-cli --tls --cacert <ca>` to get PONG: the chain verifies.
    let server = RedisServer::start_with(ServerOptions::new().tls());
    assert_eq!(
        server.url(),
        format!("rediss://127.0.0.1:{}", server.port())
    );
    assert!(server.ca_pem().starts_with(b"-----BEGIN CERTIFICATE-----"));

    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
    let plain = plain
        .get_connection_with_timeout(Duration::from_secs(1))
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
    assert!(plain.is_err(), "plain text on the TLS port must fail");
}
