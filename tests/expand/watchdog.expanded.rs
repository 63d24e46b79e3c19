//! `lease = watchdog` with a timeout on a `&self` method; `impl Trait` erased in the fake return;
//! `?` in the body.
use lock_guard::{LockError, LockManager, concurrency_guard};
pub struct Exporter {
    locks: LockManager,
}
impl Exporter {
    pub async fn export(
        &self,
        job: u64,
    ) -> Result<impl Iterator<Item = u64>, LockError> {
        let __lock_guard_locks = ::lock_guard::__private::locks(&self.locks);
        let mut __lock_guard_key = ::lock_guard::__private::key("export");
        ::lock_guard::__private::part(&job).push_to(&mut __lock_guard_key);
        ::lock_guard::__private::run(
                __lock_guard_locks,
                __lock_guard_key,
                ::lock_guard::LockOptions::new()
                    .wait(::core::time::Duration::from_millis(0))
                    .watchdog()
                    .timeout(::core::time::Duration::from_millis(120000)),
                async move {
                    if false {
                        let __lock_guard_return: Result<_, LockError> = ::lock_guard::__private::fake_return();
                        return __lock_guard_return;
                    }
                    {
                        let rows = self.fetch(job).await?;
                        Ok(rows.into_iter())
                    }
                },
            )
            .await
    }
    async fn fetch(&self, job: u64) -> Result<Vec<u64>, LockError> {
        Ok(Vec::from([job]))
    }
}
fn main() {}
