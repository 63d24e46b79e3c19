//! `crate = …`: lock-guard reached through a facade module (or a renamed dependency); every path
//! the attribute writes goes through it. A tuple value as the key; an inner attribute stays first.
mod facade {
    pub use lock_guard::*;
}

use facade::LockError;

#[facade::concurrency_guard(crate = crate::facade, name = "pair", timeout = 1s)]
pub async fn by_pair(pair: (u64, &str)) -> Result<u64, LockError> {
    #![allow(clippy::needless_return)]
    return Ok(pair.0);
}

fn main() {}
