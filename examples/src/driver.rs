//! The load driver of the keyword demo: bursts of concurrent duplicate requests against app
//! instances, then what got stored, as a table.
//!
//! One burst sends, for every user and keyword of the plan, the same `POST` `copies` times to
//! *every* instance, all released at the same instant. Between bursts the driver waits for every
//! answer. After the bursts it lists each user's keywords through the API (`GET`) and counts the
//! rows and the duplicates.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::watch;

use crate::error::ErrorBody;
use crate::keyword::{AddKeywordRequest, StoredKeyword};

/// Which route a phase targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /unguarded/users/{id}/keywords`: the check-then-insert without the lock.
    Unguarded,
    /// `POST /users/{id}/keywords`: the `#[concurrency_guard]` service function.
    Guarded,
    /// `POST /fenced/users/{id}/keywords`: the same, in a fenced transaction.
    Fenced,
}

impl Route {
    /// `unguarded` or `guarded`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Unguarded => "unguarded",
            Route::Guarded => "guarded",
            Route::Fenced => "fenced",
        }
    }

    fn path(self, user: i64) -> String {
        match self {
            Route::Unguarded => format!("/unguarded/users/{user}/keywords"),
            Route::Guarded => format!("/users/{user}/keywords"),
            Route::Fenced => format!("/fenced/users/{user}/keywords"),
        }
    }
}

/// The shape of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstPlan {
    /// Bursts, one after the other.
    pub bursts: usize,
    /// Users per burst (the same users in every burst).
    pub users: usize,
    /// New keywords per user per burst.
    pub keywords: usize,
    /// Copies of each request sent to each instance (at least 1; with two instances every request
    /// is then sent at least twice at once).
    pub copies: usize,
}

impl BurstPlan {
    /// The demo's plan: 10 bursts × 8 users × 3 keywords × 2 copies per instance.
    pub const DEMO: BurstPlan = BurstPlan {
        bursts: 10,
        users: 8,
        keywords: 3,
        copies: 2,
    };

    /// Requests per burst against `instances` instances.
    pub fn burst_size(&self, instances: usize) -> usize {
        self.users * self.keywords * self.copies * instances
    }

    /// Requests in the whole phase.
    pub fn requests(&self, instances: usize) -> usize {
        self.bursts * self.burst_size(instances)
    }

    /// Distinct `(user, keyword)` the phase asks for: the rows a correct service stores.
    pub fn distinct(&self) -> usize {
        self.bursts * self.users * self.keywords
    }
}

/// How the answers of a phase came out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// `201`: inserted.
    pub created: usize,
    /// `200`: found existing.
    pub existing: usize,
    /// `409 not_acquired`: the lock stayed busy for the whole `wait` (deliberate, not an error).
    pub not_acquired: usize,
    /// Database aborts (`db_conflict`).
    pub conflicts: usize,
    /// Deadlocks (`db_deadlock`).
    pub deadlocks: usize,
    /// Timeouts: database, lock deadline, or no HTTP answer in time.
    pub timeouts: usize,
    /// Anything else: lock backend down, other database errors, unexpected statuses, transport.
    pub other: usize,
}

impl Outcomes {
    /// Every failed request except the deliberate `409`s.
    pub fn errors(&self) -> usize {
        self.conflicts + self.deadlocks + self.timeouts + self.other
    }

    fn count(&mut self, answer: &Answer) {
        match answer {
            Answer::Status(StatusCode::CREATED, _) => self.created += 1,
            Answer::Status(StatusCode::OK, _) => self.existing += 1,
            Answer::Status(_, code) => match code.as_deref() {
                Some("not_acquired") => self.not_acquired += 1,
                Some("db_conflict") => self.conflicts += 1,
                Some("db_deadlock") => self.deadlocks += 1,
                Some("db_timeout" | "lock_deadline") => self.timeouts += 1,
                _ => self.other += 1,
            },
            Answer::Transport { timeout: true, .. } => self.timeouts += 1,
            Answer::Transport { .. } => self.other += 1,
        }
    }
}

/// The result of one phase.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// The route.
    pub route: Route,
    /// Requests sent.
    pub requests: usize,
    /// How they were answered.
    pub outcomes: Outcomes,
    /// Rows stored for the phase's users.
    pub rows: usize,
    /// Distinct `(user, keyword)` among them.
    pub distinct: usize,
    /// Distinct `(user, keyword)` asked for.
    pub expected: usize,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// The first error answer, for the reader (`503 lock_backend: …`).
    pub first_error: Option<String>,
}

impl PhaseReport {
    /// Rows stored more than once.
    pub fn duplicates(&self) -> usize {
        self.rows - self.distinct
    }

    /// Failed requests other than the deliberate `409`s.
    pub fn errors(&self) -> usize {
        self.outcomes.errors()
    }

    /// The `q` quantile of the latencies (`0.5`, `0.99`).
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Where the driver is in a phase, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The route.
    pub route: Route,
    /// Bursts done.
    pub burst: usize,
    /// Bursts in the phase.
    pub bursts: usize,
    /// Requests answered so far.
    pub answered: usize,
    /// Errors so far (not counting `409`).
    pub errors: usize,
}

/// A failure of the driver itself (not of a request).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct DriverError {
    what: String,
    #[source]
    source: reqwest::Error,
}

/// How one request was answered.
enum Answer {
    /// An HTTP status and, for errors, the JSON body's `error`.
    Status(StatusCode, Option<String>),
    /// No HTTP answer.
    Transport { timeout: bool },
}

/// Sends bursts to a set of instances.
#[derive(Debug, Clone)]
pub struct Driver {
    client: reqwest::Client,
    targets: Vec<String>,
}

impl Driver {
    /// A driver for instances at `targets` (`http://127.0.0.1:port`).
    ///
    /// # Panics
    ///
    /// If `targets` is empty, or the HTTP client cannot be built.
    pub fn new(targets: Vec<String>) -> Driver {
        assert!(
            !targets.is_empty(),
            "the driver needs at least one instance"
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(512)
            .build()
            .expect("build the HTTP client");
        Driver { client, targets }
    }

    /// The instances.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Runs one phase: `plan.bursts` bursts on `route` for users `first_user ..
    /// first_user + plan.users`, then counts what was stored. Calls `progress` after each burst.
    pub async fn run_phase(
        &self,
        route: Route,
        plan: &BurstPlan,
        first_user: i64,
        mut progress: impl FnMut(&Progress),
    ) -> Result<PhaseReport, DriverError> {
        let started = Instant::now();
        let mut outcomes = Outcomes::default();
        let mut latencies = Vec::with_capacity(plan.requests(self.targets.len()));
        let mut first_error = None;
        for burst in 0..plan.bursts {
            for (answer, latency, message) in self.burst(route, plan, first_user, burst).await {
                outcomes.count(&answer);
                latencies.push(latency);
                let failed = !matches!(
                    answer,
                    Answer::Status(StatusCode::OK | StatusCode::CREATED, _)
                );
                if failed && first_error.is_none() {
                    first_error = message;
                }
            }
            progress(&Progress {
                route,
                burst: burst + 1,
                bursts: plan.bursts,
                answered: latencies.len(),
                errors: outcomes.errors(),
            });
        }
        latencies.sort_unstable();
        let (rows, distinct) = self.stored(plan, first_user).await?;
        Ok(PhaseReport {
            route,
            requests: latencies.len(),
            outcomes,
            rows,
            distinct,
            expected: plan.distinct(),
            latencies,
            elapsed: started.elapsed(),
            first_error,
        })
    }

    /// One burst: every request spawned, then all released at once.
    async fn burst(
        &self,
        route: Route,
        plan: &BurstPlan,
        first_user: i64,
        burst: usize,
    ) -> Vec<(Answer, Duration, Option<String>)> {
        let (go, ready) = watch::channel(false);
        let mut tasks = Vec::with_capacity(plan.burst_size(self.targets.len()));
        for user in first_user..first_user + plan.users as i64 {
            for k in 0..plan.keywords {
                let body = AddKeywordRequest {
                    keyword: format!("kw{burst}-{k}"),
                };
                // The copies of one request are spawned next to each other, so that they start
                // together even when a connection pool queues part of the burst.
                for _ in 0..plan.copies {
                    for target in &self.targets {
                        let request = self
                            .client
                            .post(format!("{target}{}", route.path(user)))
                            .json(&body);
                        let mut ready = ready.clone();
                        tasks.push(tokio::spawn(async move {
                            let _ = ready.wait_for(|go| *go).await;
                            let sent = Instant::now();
                            let (answer, message) = send(request).await;
                            (answer, sent.elapsed(), message)
                        }));
                    }
                }
            }
        }
        let _ = go.send(true);
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(answer) => answers.push(answer),
                Err(e) => answers.push((
                    Answer::Transport { timeout: false },
                    Duration::ZERO,
                    Some(format!("request task failed: {e}")),
                )),
            }
        }
        answers
    }

    /// `(rows, distinct)` stored for the phase's users, read back through the API.
    async fn stored(
        &self,
        plan: &BurstPlan,
        first_user: i64,
    ) -> Result<(usize, usize), DriverError> {
        let mut rows = 0;
        let mut distinct = 0;
        for user in first_user..first_user + plan.users as i64 {
            let url = format!("{}/users/{user}/keywords", self.targets[0]);
            let list: Vec<StoredKeyword> = self
                .client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|source| DriverError {
                    what: format!("GET {url}"),
                    source,
                })?
                .json()
                .await
                .map_err(|source| DriverError {
                    what: format!("GET {url}: body"),
                    source,
                })?;
            rows += list.len();
            distinct += list
                .iter()
                .map(|k| &k.keyword)
                .collect::<HashSet<_>>()
                .len();
        }
        Ok((rows, distinct))
    }
}

async fn send(request: reqwest::RequestBuilder) -> (Answer, Option<String>) {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                // Read the body so that latency includes it.
                let _ = response.bytes().await;
                return (Answer::Status(status, None), None);
            }
            let text = response.text().await.unwrap_or_default();
            let code = serde_json::from_str::<ErrorBody>(&text)
                .ok()
                .map(|body| body.error);
            let message = format!("{} {}", status.as_u16(), text.trim());
            (Answer::Status(status, code), Some(message))
        }
        Err(e) => (
            Answer::Transport {
                timeout: e.is_timeout(),
            },
            Some(format!("no answer: {e}")),
        ),
    }
}

/// The demo's table: one row per phase.
pub fn table(reports: &[PhaseReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>5} {:>5} {:>5} {:>6} {:>10} {:>6}   {:>8} {:>8} {:>7} {:>5}   {:>8} {:>8}",
        "route",
        "requests",
        "201",
        "200",
        "409",
        "rows",
        "duplicates",
        "errors",
        "conflict",
        "deadlock",
        "timeout",
        "other",
        "p50",
        "p99",
    );
    for r in reports {
        let o = &r.outcomes;
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>5} {:>5} {:>5} {:>6} {:>10} {:>6}   {:>8} {:>8} {:>7} {:>5}   {:>8} {:>8}",
            r.route.name(),
            r.requests,
            o.created,
            o.existing,
            o.not_acquired,
            r.rows,
            r.duplicates(),
            r.errors(),
            o.conflicts,
            o.deadlocks,
            o.timeouts,
            o.other,
            millis(r.latency(0.5)),
            millis(r.latency(0.99)),
        );
    }
    out
}

fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}
