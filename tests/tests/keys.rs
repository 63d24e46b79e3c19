//! Keys: distinct (name, parts) never share a key, whatever the input holds; the Redis key
//! is one hash tag shared by the lock's counter and channel.

use std::time::Duration;

use lock_guard::{
    KeyParts, LockError, LockKey, LockManager, LockOptions, concurrency_guard, unordered,
};
use lock_guard_tests::{RedisServer, backend_tests};
use proptest::prelude::*;

fn key_of(name: &str, parts: &[String]) -> LockKey {
    parts
        .iter()
        .fold(LockKey::new(name), |key, part| key.part(part))
}

/// Reverses the escaping: if every key decodes back to its (name, parts), no two can be equal.
fn decode(encoded: &str) -> (String, Vec<String>) {
    let mut fields = encoded.split(':').map(|field| {
        let mut out = String::new();
        let mut rest = field;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let c = match rest.get(i..i + 3) {
                Some("%3A") => ':',
                Some("%7B") => '{',
                Some("%7D") => '}',
                Some("%25") => '%',
                other => panic!("stray escape {other:?} in {encoded:?}"),
            };
            out.push(c);
            rest = &rest[i + 3..];
        }
        assert!(!rest.contains(['{', '}']), "unescaped brace in {encoded:?}");
        out.push_str(rest);
        out
    });
    let name = fields.next().expect("split yields at least one field");
    (name, fields.collect())
}

/// Text rich in the characters that structure a key, and in text that looks like their escapes.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a:{}%3ABD57]{0,6}",
        1 => any::<String>(),
    ]
}

fn name_and_parts() -> impl Strategy<Value = (String, Vec<String>)> {
    (nasty(), prop::collection::vec(nasty(), 0..4))
}

proptest! {
    #[test]
    fn every_key_decodes_to_its_name_and_parts((name, parts) in name_and_parts()) {
        let key = key_of(&name, &parts);
        prop_assert_eq!(decode(key.as_str()), (name, parts));
    }

    #[test]
    fn distinct_inputs_give_distinct_keys(a in name_and_parts(), b in name_and_parts()) {
        let locks = LockManager::memory();
        let (ka, kb) = (key_of(&a.0, &a.1), key_of(&b.0, &b.1));
        prop_assert_eq!(a == b, ka == kb, "{:?} / {:?} -> {} / {}", a, b, ka, kb);
        prop_assert_eq!(a == b, locks.redis_key(&ka) == locks.redis_key(&kb));
    }

    #[test]
    fn redis_key_is_one_hash_tag((name, parts) in name_and_parts()) {
        let locks = LockManager::memory();
        let key = key_of(&name, &parts);
        let redis_key = locks.redis_key(&key);
        prop_assert_eq!(&redis_key, &format!("lock:{{{}}}", key.as_str()));
        // Redis Cluster hashes what lies between the first `{` and the next `}`: the whole key.
        let open = redis_key.find('{').unwrap();
        let close = open + redis_key[open..].find('}').unwrap();
        prop_assert_eq!(&redis_key[open + 1..close], key.as_str());
        prop_assert_eq!(close, redis_key.len() - 1);
    }

    #[test]
    fn unordered_pairs_ignore_the_order(a in nasty(), b in nasty()) {
        let (mut ab, mut ba) = (LockKey::new("like"), LockKey::new("like"));
        unordered(a.as_str(), b.as_str()).push_parts(&mut ab);
        unordered(b.as_str(), a.as_str()).push_parts(&mut ba);
        prop_assert_eq!(&ab, &ba);
        let (_, parts) = decode(ab.as_str());
        let mut expected = vec![a, b];
        expected.sort();
        prop_assert_eq!(parts, expected);
    }
}

#[test]
fn keys_render_as_documented() {
    let locks = LockManager::memory();
    assert_eq!(
        locks.redis_key(&LockKey::new("keyword").part(42)),
        "lock:{keyword:42}"
    );
    assert_eq!(
        locks.redis_key(&LockKey::new("a:b").part("{x}").part("50%")),
        "lock:{a%3Ab:%7Bx%7D:50%25}"
    );
    assert_ne!(
        LockKey::new("a").part("b:c"),
        LockKey::new("a").part("b").part("c")
    );
    assert_ne!(LockKey::new("a"), LockKey::new("a").part(""));
}

/// On Redis: the lock key, the counter and the channel all carry the key's hash tag, escaped
/// input and all; a custom prefix replaces `lock`; a prefix with braces is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_redis_share_the_hash_tag() {
    let server = RedisServer::start();
    let locks = server.builder().key_prefix("app").build().await.unwrap();
    let key = LockKey::new("user:{x}").part("50%:}");
    let tag = "{user%3A%7Bx%7D:50%25%3A%7D}";
    assert_eq!(locks.redis_key(&key), format!("app:{tag}"));

    let guard = locks
        .lock(&key, LockOptions::new().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, [format!("app:{tag}"), format!("app:{tag}:fence")]);

    // A waiter on another instance subscribes to the channel: it carries the tag too.
    let other = server.builder().key_prefix("app").build().await.unwrap();
    let waiter = tokio::spawn({
        let key = key.clone();
        async move {
            other
                .lock(&key, LockOptions::new().wait(Duration::from_secs(5)))
                .await
                .map(drop)
        }
    });
    lock_guard_tests::eventually(Duration::from_secs(5), "the waiter subscribed", || async {
        server.pubsub_channels().await == [format!("app:{tag}:released")]
    })
    .await;
    guard.release().await.unwrap();
    waiter.await.unwrap().unwrap();

    let braces = server.builder().key_prefix("a{b}").build().await;
    let err = braces.expect_err("a prefix with braces would break the hash tag");
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
}

/// Whether another owner, a task of its own, could take `key` at once.
async fn free_for_another_owner(locks: &LockManager, key: &LockKey) -> bool {
    let (locks, key) = (locks.clone(), key.clone());
    tokio::spawn(async move {
        match locks
            .lock(&key, LockOptions::new().wait(Duration::ZERO))
            .await
        {
            Ok(guard) => guard.release().await.map(|_| true),
            Err(e) if e.is_not_acquired() => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await
    .unwrap()
    .unwrap()
}

/// A tuple value as the key (here the first argument): whether `other` is held while the body runs.
#[concurrency_guard(name = "tuple", wait = 0s, locks = locks)]
async fn tuple_holds(
    pair: (u32, &str),
    other: &LockKey,
    locks: &LockManager,
) -> Result<bool, LockError> {
    Ok(!free_for_another_owner(locks, other).await)
}

/// The same lock written as parts: `key = (a, b)`.
#[concurrency_guard(name = "tuple", wait = 0s, key = (a, b), locks = locks)]
async fn parts_hold(
    a: u32,
    b: &str,
    other: &LockKey,
    locks: &LockManager,
) -> Result<bool, LockError> {
    Ok(!free_for_another_owner(locks, other).await)
}

backend_tests! {
    /// A tuple value gives one part per element: `(7, "x")` takes the lock of
    /// `LockKey::new("tuple").part(7).part("x")`, as `key = (7, "x")` written out does.
    async fn a_tuple_value_is_one_part_per_element(backend) {
        let locks = backend.manager().await;
        let seven_x = LockKey::new("tuple").part(7).part("x");
        assert!(tuple_holds((7, "x"), &seven_x, &locks).await.unwrap());
        assert!(parts_hold(7, "x", &seven_x, &locks).await.unwrap());
        // and no other key: not another tuple's, not the elements joined into one part
        assert!(!tuple_holds((8, "x"), &seven_x, &locks).await.unwrap());
        let joined = LockKey::new("tuple").part("7:x");
        assert!(!tuple_holds((7, "x"), &joined, &locks).await.unwrap());
        // released after the call
        assert!(free_for_another_owner(&locks, &seven_x).await);
    }
}
