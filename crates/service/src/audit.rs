//! Audit and replay: the events of one account as stored, the explain timeline, the full
//! export in global order, hash-chain verification and reconciliation of views with a replay.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use futures::stream::{self, Stream};
use ledger_domain::envelope::{
    account_of_stream, stream_name, Envelope, RawEnvelope, GENESIS_HASH,
};
use ledger_domain::explain::{explain, Explanation};
use ledger_domain::time::rfc3339;
use ledger_domain::{Account, Catalog, Instant, Rejection};
use ledger_store::{EventStore, GlobalPosition, RecordedEvent};
use serde::Serialize;

use crate::explain_text::render;
use crate::ledger::CommandError;
use crate::pages::{read_all_pages, read_stream_pages, ALL_PAGE};
use crate::views::ReadModel;

fn corrupt(event: &RecordedEvent, message: impl Into<String>) -> CommandError {
    CommandError::Corrupt {
        stream: event.stream.clone(),
        message: format!("version {}: {}", event.version, message.into()),
    }
}

/// A stored event as the API shows it: the stored envelope, byte-faithful, with its position.
pub fn raw_with_position(event: &RecordedEvent) -> Result<RawEnvelope, CommandError> {
    let mut raw =
        RawEnvelope::parse(&event.payload).map_err(|err| corrupt(event, err.to_string()))?;
    raw.position = Some(event.position);
    Ok(raw)
}

/// One page of an account's events after version `after`.
pub async fn stream_page(
    store: &dyn EventStore,
    account_id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<RawEnvelope>, CommandError> {
    let page = store
        .read_stream(&stream_name(account_id), after + 1, limit)
        .await?;
    page.iter().map(raw_with_position).collect()
}

/// Every event of an account, decoded (old versions upcast).
pub async fn read_account(
    store: &dyn EventStore,
    account_id: &str,
) -> Result<Vec<Envelope>, CommandError> {
    let mut envelopes = Vec::new();
    read_stream_pages(store, &stream_name(account_id), 1, |_, _, envelope| {
        envelopes.push(envelope);
        Ok(true)
    })
    .await?;
    Ok(envelopes)
}

/// An `at` later than now. Explain answers only for instants that have passed: the balance
/// as of a later instant depends on commands not yet given, so an answer for it would change
/// (SPEC section 10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at} is later than now ({now}); explain answers only for instants that have passed")]
pub struct FutureInstant {
    pub at: String,
    pub now: String,
}

impl From<FutureInstant> for Rejection {
    fn from(err: FutureInstant) -> Rejection {
        Rejection::invalid(format!("at {err}"))
    }
}

/// The instant explain answers for: `at`, or `now` when none is given. An `at` later than
/// `now` is refused.
pub fn explain_instant(at: Option<Instant>, now: Instant) -> Result<Instant, FutureInstant> {
    match at {
        None => Ok(now),
        Some(at) if at <= now => Ok(at),
        Some(at) => Err(FutureInstant {
            at: rfc3339(&at),
            now: rfc3339(&now),
        }),
    }
}

/// The explain timeline of an account as of `at` (default `now`), its summaries in words. An `at` later than `now`
/// is refused before anything is read.
pub async fn explain_account(
    store: &dyn EventStore,
    catalog: &Catalog,
    account_id: &str,
    at: Option<Instant>,
    now: Instant,
) -> Result<Explanation<String>, CommandError> {
    let at = explain_instant(at, now).map_err(Rejection::from)?;
    let envelopes = read_account(store, account_id).await?;
    Ok(render(explain(account_id, &envelopes, catalog, at)))
}

fn in_window(raw: &RawEnvelope, since: Option<Instant>, until: Option<Instant>) -> bool {
    let Ok(recorded_at) = raw.recorded_at.parse::<Instant>() else {
        return true;
    };
    since.is_none_or(|since| recorded_at >= since) && until.is_none_or(|until| recorded_at < until)
}

/// Every event of every account in global order, as NDJSON lines, recorded in
/// `[since, until)`. Streams page by page, so an export of any size runs in bounded memory.
pub fn export_lines(
    store: Arc<dyn EventStore>,
    since: Option<Instant>,
    until: Option<Instant>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    stream::try_unfold(Some(None::<GlobalPosition>), move |cursor| {
        let store = store.clone();
        async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let page = store
                .read_all(after, ALL_PAGE)
                .await
                .map_err(|err| std::io::Error::other(err.to_string()))?;
            let next = if page.len() < ALL_PAGE {
                None
            } else {
                Some(page.last().map(|e| e.position))
            };
            let mut chunk = Vec::with_capacity(page.len() * 512);
            for event in &page {
                let raw = raw_with_position(event)
                    .map_err(|err| std::io::Error::other(err.to_string()))?;
                if in_window(&raw, since, until) {
                    serde_json::to_writer(&mut chunk, &raw).map_err(std::io::Error::other)?;
                    chunk.push(b'\n');
                }
            }
            Ok(Some((Bytes::from(chunk), next)))
        }
    })
}

/// What `audit verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub streams: usize,
    pub events: u64,
    pub problems: Vec<String>,
}

/// Follows the hash chains of any number of streams through their events in global order,
/// as the store holds them or an export file lists them: each stream starts at version 1
/// after the genesis hash, each event continues its stream's previous one (next version,
/// `prev_hash` = the previous `hash`), its `hash` matches its fields, global positions rise,
/// and its data decodes. One home for these rules, so the store and a file are checked alike.
#[derive(Debug, Default)]
pub struct ChainCheck {
    heads: HashMap<String, (u64, String)>,
    last_position: Option<u64>,
    events: u64,
}

impl ChainCheck {
    /// Checks the next event; returns what is wrong with it (nothing when it holds). The
    /// event becomes its stream's head either way, so one bad event is reported once rather
    /// than again for everything after it.
    pub fn check(&mut self, raw: &RawEnvelope) -> Vec<String> {
        self.events += 1;
        let at = format!("{} v{}", raw.stream, raw.version);
        let mut problems = Vec::new();
        if let Some(position) = raw.position {
            if let Some(last) = self.last_position.filter(|last| position <= *last) {
                problems.push(format!(
                    "{at}: position {position} after {last}, out of global order"
                ));
            }
            self.last_position = Some(position);
        }
        let (last_version, last_hash) = self
            .heads
            .entry(raw.stream.clone())
            .or_insert_with(|| (0, GENESIS_HASH.to_string()));
        if raw.version != *last_version + 1 {
            problems.push(if *last_version == 0 {
                format!("{at}: the stream starts at v{} instead of v1", raw.version)
            } else {
                format!("{at}: version gap after v{last_version}")
            });
        }
        if raw.prev_hash != *last_hash {
            problems.push(format!(
                "{at}: prev_hash does not match the previous event's hash"
            ));
        }
        if raw.computed_hash() != raw.hash {
            problems.push(format!("{at}: hash does not match the event's content"));
        }
        if let Err(err) = raw.decode() {
            problems.push(format!("{at}: {err}"));
        }
        *last_version = raw.version;
        *last_hash = raw.hash.clone();
        problems
    }

    /// Events checked so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Streams seen so far.
    pub fn streams(&self) -> usize {
        self.heads.len()
    }
}

/// Checks every stream in the store: its hash chain, its versions (1, 2, 3, ... with no
/// gaps) as the payloads and the store both record them, that global positions increase,
/// and that every event decodes.
pub async fn verify(store: &dyn EventStore) -> Result<VerifyReport, CommandError> {
    let mut report = VerifyReport::default();
    let mut chain = ChainCheck::default();
    read_all_pages(store, None, |event| {
        let mut raw = match RawEnvelope::parse(&event.payload) {
            Ok(raw) => raw,
            Err(err) => {
                report.events += 1;
                report.problems.push(format!(
                    "{} v{}: unreadable: {err}",
                    event.stream, event.version
                ));
                return Ok(true);
            }
        };
        if raw.version != event.version || raw.stream != event.stream {
            report.problems.push(format!(
                "{} v{}: the payload says {} v{}",
                event.stream, event.version, raw.stream, raw.version
            ));
        }
        // The store assigns positions; payloads do not carry them.
        raw.position = Some(event.position);
        report.problems.extend(chain.check(&raw));
        Ok(true)
    })
    .await?;
    report.events += chain.events();
    report.streams = chain.streams();
    Ok(report)
}

/// What `audit reconcile` found.
#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub accounts: usize,
    pub position: Option<u64>,
    pub differences: Vec<String>,
}

/// Replays every stream up to the views' position and compares each account's replayed
/// state with its rows in the three views.
pub async fn reconcile(
    store: &dyn EventStore,
    views: &dyn ReadModel,
) -> Result<ReconcileReport, CommandError> {
    let position = views.position();
    let mut accounts: HashMap<String, Account> = HashMap::new();
    read_all_pages(store, None, |event| {
        if position.is_none_or(|limit| event.position > limit) {
            return Ok(false);
        }
        let Some(account_id) = account_of_stream(&event.stream) else {
            return Ok(true);
        };
        let raw = raw_with_position(event)?;
        let envelope = raw
            .decode()
            .map_err(|err| corrupt(event, err.to_string()))?;
        accounts
            .entry(account_id.to_string())
            .or_insert_with(|| Account::new(account_id))
            .apply(envelope.event);
        Ok(true)
    })
    .await?;
    let mut report = ReconcileReport {
        accounts: accounts.len(),
        position,
        differences: Vec::new(),
    };
    let mut ids: Vec<&String> = accounts.keys().collect();
    ids.sort();
    for id in ids {
        let replayed = accounts[id].core.as_ref();
        match (replayed, views.account(id)) {
            (None, None) => {}
            (Some(_), None) => report
                .differences
                .push(format!("{id}: in the streams, missing from the views")),
            (None, Some(_)) => report
                .differences
                .push(format!("{id}: in the views, never opened in the streams")),
            (Some(core), Some(view)) => {
                if core.plan != view.plan {
                    report.differences.push(format!(
                        "{id}: tier view differs: replay {:?}, view {:?}",
                        core.plan, view.plan
                    ));
                }
                if core.balance != view.balance {
                    report.differences.push(format!(
                        "{id}: balance view differs: replay {:?}, view {:?}",
                        core.balance, view.balance
                    ));
                }
                if core.trials != view.trials {
                    report.differences.push(format!(
                        "{id}: trial-usage view differs: replay {:?}, view {:?}",
                        core.trials, view.trials
                    ));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeDelta;
    use ledger_store_sqlite::SqliteStore;

    use super::*;

    #[test]
    fn explain_refuses_an_at_later_than_now() {
        let now: Instant = "2026-03-01T12:00:00Z".parse().unwrap();
        assert_eq!(explain_instant(None, now), Ok(now));
        assert_eq!(
            explain_instant(Some(now), now),
            Ok(now),
            "now itself has passed"
        );
        let before = now - TimeDelta::milliseconds(1);
        assert_eq!(explain_instant(Some(before), now), Ok(before));
        let after = now + TimeDelta::milliseconds(1);
        let refused = explain_instant(Some(after), now).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "2026-03-01T12:00:00.001Z is later than now (2026-03-01T12:00:00Z); \
             explain answers only for instants that have passed"
        );
    }

    #[tokio::test]
    async fn explain_account_refuses_a_future_at_as_invalid_request() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
        let now = chrono::Utc::now();
        let later = now + TimeDelta::seconds(60);
        let err = explain_account(store.as_ref(), &Catalog::shipped(), "a1", Some(later), now)
            .await
            .unwrap_err();
        let rejection = err.to_rejection();
        assert_eq!(
            (rejection.code(), rejection.http_status()),
            ("INVALID_REQUEST", 400)
        );
        assert!(
            rejection.message().starts_with("at "),
            "{}",
            rejection.message()
        );
        let answered = explain_account(store.as_ref(), &Catalog::shipped(), "a1", None, now)
            .await
            .unwrap();
        assert!(!answered.exists);
    }
}
