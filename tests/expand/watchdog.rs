//! `lease = watchdog` with a timeout on a `&self` method; `impl Trait` erased in the fake return;
//! `?` in the body.
use lock_guard::{LockError, LockManager, concurrency_guard};

pub struct Exporter {
    locks: LockManager,
}

impl Exporter {
    #[concurrency_guard(name = "export", lease = watchdog, timeout = 2min, wait = 0s, locks = self.locks)]
    pub async fn export(&self, job: u64) -> Result<impl Iterator<Item = u64>, LockError> {
        let rows = self.fetch(job).await?;
        Ok(rows.into_iter())
    }

    async fn fetch(&self, job: u64) -> Result<Vec<u64>, LockError> {
        Ok(Vec::from([job]))
    }
}

fn main() {}
