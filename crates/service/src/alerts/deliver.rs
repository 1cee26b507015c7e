//! The deliverer: drains the outbox, at least once and in each account's order. It runs on its
//! own task, away from the command path: a receiver that hangs holds one delivery slot for at
//! most the request timeout, and other accounts go on in the other slots.
//!
//! Each account has at most one attempt in flight and only its oldest pending notification is
//! offered, so a receiver sees an account's notifications in event order. A failed attempt is
//! retried with exponential backoff and full-half jitter until the retry window (24 hours by
//! default) has passed since the notification was written; then it is parked as failed and
//! the account's next notification goes out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::guard::{Guard, GuardedResolver};
use super::signature;
use super::{Attempt, Outbox, OutboxError, Pending};

/// How often the deliverer looks for due notifications when nothing else wakes it.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The deliverer's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `LEDGER_WEBHOOK_SECRET`.
    pub secret: Vec<u8>,
    /// One attempt, connection included, may take this long.
    pub timeout: Duration,
    /// The first retry waits about this long; each later one twice as long as the one before.
    pub retry_base: Duration,
    /// No wait between attempts is longer than this.
    pub retry_cap: Duration,
    /// Attempts go on for this long after the notification was written, then it is parked.
    pub retry_for: Duration,
    /// Attempts in flight at once, over all accounts: the bounded queue.
    pub in_flight_max: usize,
}

impl Settings {
    /// Production defaults, with overrides from the environment: `LEDGER_WEBHOOK_SECRET`
    /// (required to deliver), `LEDGER_ALERTS_TIMEOUT_MS` (5,000), `LEDGER_ALERTS_RETRY_BASE_MS`
    /// (1,000), `LEDGER_ALERTS_RETRY_CAP_MS` (3,600,000), `LEDGER_ALERTS_RETRY_FOR_S` (86,400)
    /// and `LEDGER_ALERTS_IN_FLIGHT_MAX` (32). `None` when no secret is set.
    pub fn from_env() -> Result<Option<Settings>, String> {
        let Some(secret) = std::env::var("LEDGER_WEBHOOK_SECRET")
            .ok()
            .filter(|secret| !secret.is_empty())
        else {
            return Ok(None);
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|value| *value > 0)
                    .ok_or_else(|| format!("{name} must be a positive whole number, not {text:?}")),
                Err(_) => Ok(default),
            }
        };
        Ok(Some(Settings {
            secret: secret.into_bytes(),
            timeout: Duration::from_millis(number("LEDGER_ALERTS_TIMEOUT_MS", 5_000)?),
            retry_base: Duration::from_millis(number("LEDGER_ALERTS_RETRY_BASE_MS", 1_000)?),
            retry_cap: Duration::from_millis(number("LEDGER_ALERTS_RETRY_CAP_MS", 3_600_000)?),
            retry_for: Duration::from_secs(number("LEDGER_ALERTS_RETRY_FOR_S", 86_400)?),
            in_flight_max: usize::try_from(number("LEDGER_ALERTS_IN_FLIGHT_MAX", 32)?)
                .unwrap_or(32),
        }))
    }

    /// The wait before attempt `failures + 1`: `base · 2^(failures-1)` capped, of which the
    /// second half is drawn at random so that receivers recovering from an outage are not hit
    /// by every ledger at the same instant.
    pub fn backoff(&self, failures: u32, random: u64) -> Duration {
        let doubling = 1u32 << failures.saturating_sub(1).min(30);
        let full = self.retry_base.saturating_mul(doubling).min(self.retry_cap);
        let full_ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
        let half = full_ms / 2;
        Duration::from_millis(half + random % (full_ms - half + 1))
    }
}

/// Drains `outbox` until `shutdown` resolves.
pub async fn run(
    outbox: Arc<dyn Outbox>,
    settings: Settings,
    guard: Guard,
    shutdown: impl Future<Output = ()> + Send,
) {
    let guard = Arc::new(guard);
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .dns_resolver(Arc::new(GuardedResolver::new(guard.clone())))
        .user_agent("knouds-ledger-alerts/1")
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, "alerts deliverer cannot start: no HTTP client");
            return;
        }
    };
    let sender = Sender {
        client,
        guard,
        settings: Arc::new(settings),
    };
    tokio::pin!(shutdown);
    let mut in_flight: JoinSet<(String, i64, Attempt)> = JoinSet::new();
    let mut busy: Vec<String> = Vec::new();
    loop {
        let room = sender.settings.in_flight_max.saturating_sub(busy.len());
        if room > 0 {
            match due(&outbox, room, busy.clone()).await {
                Ok(batch) => {
                    for pending in batch {
                        busy.push(pending.account_id.clone());
                        let sender = sender.clone();
                        in_flight.spawn(async move {
                            let attempt = sender.attempt(&pending).await;
                            (pending.account_id, pending.seq, attempt)
                        });
                    }
                }
                Err(error) => warn!(%error, "alerts outbox unreadable; retrying"),
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok((account_id, seq, attempt)) = done {
                    busy.retain(|busy_account| *busy_account != account_id);
                    record(&outbox, seq, attempt).await;
                }
            }
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
    // An attempt cut off here was not recorded as delivered: it goes out again after the
    // restart, with the same id (at least once).
    in_flight.abort_all();
}

async fn due(
    outbox: &Arc<dyn Outbox>,
    limit: usize,
    busy: Vec<String>,
) -> Result<Vec<Pending>, OutboxError> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || outbox.due(now_ms(), limit, &busy))
        .await
        .map_err(|error| OutboxError(error.to_string()))?
}

async fn record(outbox: &Arc<dyn Outbox>, seq: i64, attempt: Attempt) {
    let outbox = outbox.clone();
    let recorded = tokio::task::spawn_blocking(move || outbox.record(seq, &attempt)).await;
    if !matches!(recorded, Ok(Ok(()))) {
        // Not recorded: the notification stays pending and is sent again, which at least
        // once allows; losing it would not.
        warn!(seq, "alerts outbox: an attempt's outcome was not recorded");
    }
}

#[derive(Debug, Clone)]
struct Sender {
    client: reqwest::Client,
    guard: Arc<Guard>,
    settings: Arc<Settings>,
}

impl Sender {
    async fn attempt(&self, pending: &Pending) -> Attempt {
        let failure = match self.post(pending).await {
            Ok(()) => {
                info!(id = %pending.id, account_id = %pending.account_id, "alert delivered");
                return Attempt::Delivered { at_ms: now_ms() };
            }
            Err(error) => error,
        };
        let failures = pending.attempts.saturating_add(1);
        let now = now_ms();
        let retry_for_ms = i64::try_from(self.settings.retry_for.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(pending.created_at_ms) >= retry_for_ms {
            warn!(id = %pending.id, account_id = %pending.account_id, failures, error = %failure, "alert parked as failed");
            return Attempt::Park {
                error: failure,
                at_ms: now,
            };
        }
        let wait = self.settings.backoff(failures, random());
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        Attempt::Retry {
            error: failure,
            next_at_ms: now.saturating_add(wait_ms),
        }
    }

    async fn post(&self, pending: &Pending) -> Result<(), String> {
        self.guard
            .check_literal(&pending.url)
            .map_err(|error| error.to_string())?;
        let header = signature::sign(
            &self.settings.secret,
            now_ms() / 1000,
            pending.body.as_bytes(),
        );
        let response = self
            .client
            .post(&pending.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::HEADER, header)
            .body(pending.body.clone())
            .send()
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Random bits for jitter. A v4 UUID is 122 random bits from the operating system's source,
/// and the workspace already has it: no generator crate for one number.
fn random() -> u64 {
    let bits = uuid::Uuid::new_v4().as_u128();
    u64::try_from(bits & u128::from(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            secret: b"s".to_vec(),
            timeout: Duration::from_secs(5),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(3600),
            retry_for: Duration::from_secs(86_400),
            in_flight_max: 4,
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_keeps_jitter_in_the_upper_half_and_is_capped() {
        let settings = settings();
        for (failures, full_ms) in [
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (13, 3_600_000),
            (40, 3_600_000),
        ] {
            let low = settings.backoff(failures, 0).as_millis();
            let high = settings.backoff(failures, u64::MAX).as_millis();
            assert_eq!(low, full_ms / 2, "failures {failures}");
            assert!(
                high <= full_ms && high >= low,
                "failures {failures}: {high}"
            );
        }
    }

    #[test]
    fn retries_span_the_whole_window_before_parking() {
        // With the longest waits every time, the attempts a day holds: enough that a
        // receiver down for 23 hours still gets the notification.
        let settings = settings();
        let mut elapsed = Duration::ZERO;
        let mut failures = 0;
        while elapsed < settings.retry_for {
            failures += 1;
            elapsed += settings.backoff(failures, u64::MAX);
        }
        assert!(failures > 24, "{failures} attempts in a day");
    }
}
