//! Generics with `where` clauses, lifetimes and borrowed data returned from the body, `impl Trait`
//! arguments, and `impl Trait` in the return type.

use std::fmt::Display;

use lock_guard::{LockError, LockManager, concurrency_guard};

#[concurrency_guard(name = "generic")]
async fn generic<K, V>(key: K, value: V) -> Result<Vec<V>, LockError>
where
    K: Display + Send,
    V: Clone + Send,
{
    let _ = key;
    Ok(vec![value.clone(), value])
}

#[concurrency_guard(name = "first_word")]
async fn first_word<'a>(text: &'a str) -> Result<&'a str, LockError> {
    Ok(text.split(' ').next().unwrap_or(text))
}

#[concurrency_guard(name = "elided")]
async fn elided(text: &str, other: u8) -> Result<&str, LockError> {
    let _ = other;
    Ok(text)
}

#[concurrency_guard(name = "impl_arg")]
async fn impl_arg(
    id: impl Display + Send,
    items: impl IntoIterator<Item = u32>,
) -> Result<u32, LockError> {
    let _ = id;
    Ok(items.into_iter().sum())
}

#[concurrency_guard(name = "impl_ret")]
async fn impl_ret(id: u32) -> Result<impl Display, LockError> {
    Ok(id * 2)
}

struct Holder<'h> {
    name: &'h str,
}

impl<'h> Holder<'h> {
    #[concurrency_guard(name = "holder", key = self.name)]
    async fn name(&self) -> Result<&'h str, LockError> {
        Ok(self.name)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    lock_guard::set_default(LockManager::memory());
    assert_eq!(generic("k", 3u8).await.unwrap(), [3, 3]);
    let text = String::from("hello world");
    assert_eq!(first_word(&text).await.unwrap(), "hello");
    assert_eq!(elided(&text, 1).await.unwrap(), "hello world");
    assert_eq!(impl_arg(5, [1, 2, 3]).await.unwrap(), 6);
    assert_eq!(impl_ret(4).await.unwrap().to_string(), "8");
    assert_eq!(Holder { name: "h" }.name().await.unwrap(), "h");
}
