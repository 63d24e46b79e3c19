//! The code shared by the lock-guard examples and their tests.
//!
//! - [`keyword`]: the keyword-notification service — `add_keyword` under
//!   `#[concurrency_guard(name = "keyword", …)]` keyed by the user — and its axum router;
//! - [`like`]: the like-match service — `like` under
//!   `#[concurrency_guard(name = "like", key = lock_guard::unordered(from, to), …)]`;
//! - [`db`]: the schema, on an embedded SQLite or PostgreSQL through `sqlx::Any`;
//! - [`instance`], [`setup`]: app instances on loopback ports, in this process or as child
//!   processes, on the lock service named by `REDIS_URL`, `REDIS_CLUSTER` or `REDLOCK` and the
//!   database named by `DATABASE_URL`;
//! - [`driver`]: bursts of concurrent duplicate requests, and the table of what got stored.
//! - [`invoice`]: the invoice service — "create invoice" events from a queue (embedded or
//!   RabbitMQ) handled under `#[concurrency_guard(name = "invoice", wait = 0s, …)]`.
//!
//! Run `cargo run --example keyword_dedupe`, `cargo run --example like_match` and
//! `cargo run --example invoice_events`.

pub mod db;
pub mod driver;
pub mod error;
pub mod instance;
pub mod invoice;
pub mod keyword;
pub mod like;
pub mod setup;

pub use db::{Db, DbKind, Tables};
pub use error::{AppError, ErrorBody};
pub use instance::Instance;
pub use keyword::{Keyword, KeywordService, UserId};
pub use like::{LikeOutcome, LikeService};
pub use setup::Setup;

/// The HTTP client and the JSON crate the driver uses, for tests that talk to an instance.
pub use {reqwest, serde_json};
