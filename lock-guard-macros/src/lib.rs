//! The `#[concurrency_guard]` attribute of `lock-guard`: use it through
//! `lock_guard::concurrency_guard`, whose documentation this is.
//!
//! The attribute only translates syntax (`translate/`): it parses its arguments (`attr.rs`) and the
//! function's signature (`item.rs`, the body stays tokens), checks them (`validate.rs`) and
//! generates the guarded body (`expand.rs`), which calls one `#[doc(hidden)]` function of the
//! runtime, `lock_guard::__private::run`. Every default belongs to the runtime. On an error it
//! emits the original function unchanged next to the `compile_error!`, so the rest of the crate
//! still type-checks.

#[cfg(test)]
mod tests;
mod translate;

use proc_macro::TokenStream;

/// Runs an `async fn` under a distributed lock: at most one execution at a time per key, across
/// every process that shares the lock backend.
///
/// ```ignore
/// use lock_guard::{concurrency_guard, LockError};
///
/// #[concurrency_guard(name = "keyword", wait = 5s, lease = 3s)]
/// async fn add_keyword(user: UserId, word: String, db: &Db) -> Result<Keyword, AppError> {
///     let mut tx = db.begin().await?;
///     // check-then-insert, safely: no other instance runs this for the same `user` right now
///     let keyword = insert_unless_present(&mut tx, &user, &word).await?;
///     tx.commit().await?;
///     Ok(keyword)
/// }
///
/// // `AppError` needs `From<LockError>`: a lock failure comes back as an `AppError`.
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error(transparent)]
///     Lock(#[from] LockError),
///     #[error(transparent)]
///     Db(#[from] sqlx::Error),
/// }
/// ```
///
/// A call first takes the lock `lock:{keyword:<user>}` (waiting up to `wait` while another holder
/// has it), then runs the body under a deadline shorter than the lease, then releases the lock —
/// after the body has finished or been dropped, never before. The function keeps its exact
/// signature: callers see no difference.
///
/// # Arguments
///
/// | argument | meaning | default |
/// |---|---|---|
/// | `name = "…"` | the lock's namespace, the first part of the key | required |
/// | `wait = 5s` | the longest time to wait for the lock; `wait = 0s` tries once. Then the call returns `LockError::NotAcquired` | `5s` |
/// | `lease = 3s` | how long the lock is held at most: a crashed holder's lock frees itself after it | `3s` |
/// | `lease = watchdog` | hold the lock for as long as the body runs, renewing it every third of the manager's watchdog lease (30 s by default); a failed renewal drops the body with `LockError::Lost` | |
/// | `timeout = 2s` | the body's deadline, counted from the acquisition; at the deadline the body is dropped (an open transaction rolls back) and the call returns `LockError::Deadline`. Must be shorter than a fixed lease | two thirds of a fixed lease; none with `watchdog` |
/// | `max_hold = 10m` | with `lease = watchdog`: the longest the lock may be held, counted from the acquisition. Renewals stop there and the body is dropped with `LockError::MaxHold`, so a stuck body cannot hold the lock forever | none |
/// | `key = <expr>` | the key's parts instead of the first argument (see below) | the first argument that is not `self` |
/// | `locks = <expr>` | the `LockManager` to use: `self.locks`, `&state.locks`, any `M: AsRef<LockManager>` | the process default, `lock_guard::set_default` |
/// | `crate = "path"` | where the `lock_guard` crate is, for a renamed dependency (`crate = "locks"`) or a re-export (`crate = "crate::locks"`); also without quotes | `::lock_guard` |
///
/// Durations are literals with a unit: `250ms`, `5s`, `1.5s`, `2m` or `2min` (millisecond
/// precision), or any expression of type `std::time::Duration`, such as a `const`. With a fixed
/// lease, the body's deadline is the earlier of `timeout` and the lease's validity.
///
/// Arguments may come in any order, each at most once:
///
/// ```ignore
/// #[concurrency_guard(name = "export", lease = watchdog, timeout = 10min, wait = 0s, locks = self.locks)]
/// async fn export(&self, job: JobId) -> Result<Report, ExportError> { /* … */ }
///
/// const LEASE: Duration = Duration::from_secs(10);
/// #[concurrency_guard(name = "sync", lease = LEASE, locks = &state.locks)]
/// async fn sync(account: AccountId, state: &AppState) -> Result<(), SyncError> { /* … */ }
/// ```
///
/// # Keys
///
/// Without `key`, the key is the first argument that is not `self`, rendered with `Display`
/// (through references too: `user: &UserId` works when `UserId: Display`). With
/// `#[concurrency_guard(name = "keyword")]` on `add_keyword(user: UserId, …)`, `add_keyword(42, …)`
/// takes the lock `lock:{keyword:42}`.
///
/// `key = <expr>` names the key from the arguments instead. The expression is evaluated before the
/// body runs and is borrowed, so it may use arguments that the body then moves:
///
/// * `key = order.id` — one part;
/// * `key = (tenant, order.id)` — several parts, in order: `lock:{invoice:acme:17}`; a value of
///   tuple type (`key = pair`, or a first argument `pair: (u32, &str)`) does the same, one part per
///   element (up to six);
/// * `key = lock_guard::unordered(&a, &b)` — two parts in sorted order, so that `like(7, 9)` and
///   `like(9, 7)` take the same lock (for symmetric relations: two users liking each other, a
///   transfer between two accounts).
///
/// Every `:`, `{`, `}` and `%` inside the name or a part is percent-escaped: two different
/// `(name, parts)` never share a Redis key, whatever the input holds.
///
/// # The error type
///
/// The function returns `Result<T, E>` (or an alias such as `io::Result<T>`), and `E` implements
/// `From<lock_guard::LockError>`: when the lock cannot be taken or held, the call returns
/// `Err(E::from(lock_error))` and the body does not run (or is dropped). `?` and `return` inside the
/// body keep their usual meaning: they leave the body, and the lock is released after.
///
/// # Where it goes
///
/// On any `async fn` with a body: free functions, inherent and trait-impl methods taking `&self`,
/// `&mut self` or `self` (with `locks = self.locks`, the manager is taken before `self` moves into
/// the body), generic functions with `where` clauses, lifetimes and borrowed arguments (also
/// returned from the body), `impl Trait` arguments and return types. Doc comments and other
/// attributes are kept. The returned future is `Send` whenever the body is.
///
/// Inside the body, `lock_guard::fencing_token()` returns this acquisition's fencing token, which
/// strictly increases from one holder of the key to the next. A guarded call made inside a guarded
/// body, in the same task, for the same manager and key, runs at once without taking the lock again
/// (reentrancy); a task spawned from the body is another owner.
///
/// # Compile errors
///
/// Each points at the offending token and says what to write instead: a function that is not
/// `async`, a `const fn`, a declaration without a body, a return type that is not a `Result`, a
/// missing `name`, an unknown or repeated argument, a duration without a unit or with an unknown
/// one, `timeout` not shorter than `lease` (when both are literals), a zero `timeout`, `lease` or
/// `max_hold`, `max_hold` without `lease = watchdog`, a first argument that is a
/// pattern or `_` (or no argument at all) without `key = …`, a key that is not `Display` (on the
/// argument), and an error type without `From<LockError>` (on the return type).
///
/// # Expansion
///
/// The example above expands (`cargo expand`) to the same function, whose body builds the key and
/// the options and hands the original body, wrapped in `async move`, to one hidden runtime
/// function:
///
/// ```text
/// pub async fn add_keyword(user: UserId, word: String, db: &Db) -> Result<Keyword, AppError> {
///     let mut __lock_guard_key = ::lock_guard::__private::key("keyword");
///     ::lock_guard::__private::part(&user).push_to(&mut __lock_guard_key);
///     ::lock_guard::__private::run(
///             ::lock_guard::__private::default_locks(),
///             __lock_guard_key,
///             ::lock_guard::LockOptions::new()
///                 .wait(::core::time::Duration::from_millis(5000))
///                 .lease(::core::time::Duration::from_millis(3000)),
///             async move {
///                 if false {
///                     let __lock_guard_return: Result<Keyword, AppError> = ::lock_guard::__private::fake_return();
///                     return __lock_guard_return;
///                 }
///                 {
///                     let mut tx = db.begin().await?;
///                     // …
///                     Ok(keyword)
///                 }
///             },
///         )
///         .await
/// }
/// ```
///
/// The options are `LockOptions::new()` and the arguments written, nothing else: the defaults are
/// the runtime's. `part(&value)` appends a key value's parts (one per element of a tuple).
/// `default_locks()` is "the process default manager, at call time" (`locks = self.locks` gives
/// `let __lock_guard_locks = ::lock_guard::__private::locks(&self.locks);` before the body). The
/// `if false` block never runs: it gives `return` and `?` in the body the function's return type.
/// Injected names cannot clash with the function's own.
#[proc_macro_attribute]
pub fn concurrency_guard(args: TokenStream, item: TokenStream) -> TokenStream {
    translate::concurrency_guard(args.into(), item.into()).into()
}
