//! The durable outbox in SQLite (`DATA/alerts.sqlite`): the alerts projector's per-account
//! watches and checkpoint, and the notifications it derived, written in one transaction per
//! batch of events. Killed at any instant, the file holds either the batch's notifications
//! with the checkpoint after it, or neither; replaying from the checkpoint derives the same
//! notifications with the same ids, and `id` is unique, so nothing is lost or invented.
//!
//! The deliverer reads and updates the same file through [`ledger_service::alerts::Outbox`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ledger_domain::alerts::AlertWatch;
use ledger_service::alerts::{
    AccountAlerts, Attempt, Outbox, OutboxCounts, OutboxError, Parked, Pending,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::watch;

use crate::AlertsError;

/// The file's layout. A file of another format is refused rather than misread.
const FORMAT: i64 = 1;
/// Parked notifications `GET .../alerts` lists, newest first.
const PARKED_LISTED_MAX: i64 = 100;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS watches (
    account_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    watch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    type TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_error TEXT,
    finished_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_by_account ON outbox (account_id, status, seq);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, next_attempt_ms);
";

/// A notification ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub account_id: String,
    pub position: u64,
    pub kind: &'static str,
    pub url: String,
    pub body: String,
}

/// What one batch of events changed: the watches to store, the notifications to add and the
/// checkpoint after them.
#[derive(Debug, Default)]
pub struct Batch {
    pub watches: Watches,
    pub rows: Vec<Row>,
    pub position: Option<u64>,
    /// Events folded into it.
    pub events: usize,
}

/// The outbox file.
#[derive(Debug)]
pub struct SqliteOutbox {
    connection: Mutex<Connection>,
    position: watch::Sender<Option<u64>>,
}

pub type Watches = HashMap<String, (u64, AlertWatch)>;

impl SqliteOutbox {
    /// Opens (or creates) the outbox at `path`.
    pub fn open(path: &Path) -> Result<SqliteOutbox, AlertsError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // Acknowledged is durable: a notification written is never lost to a power cut.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        let format: Option<i64> = connection
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |row| {
                row.get(0)
            })
            .optional()?;
        match format {
            None => {
                connection.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', ?1)",
                    [FORMAT],
                )?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(AlertsError::Format(format!(
                    "{} has outbox format {other}; this ledger reads format {FORMAT}",
                    path.display()
                )))
            }
        }
        let checkpoint: Option<i64> = connection
            .query_row(
                "SELECT value FROM meta WHERE key = 'checkpoint'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let position = checkpoint.and_then(|value| u64::try_from(value).ok());
        Ok(SqliteOutbox {
            connection: Mutex::new(connection),
            position: watch::channel(position).0,
        })
    }

    /// Moves the position waiters see to `position` without writing: every event up to it
    /// was folded and derived nothing to store (no notification, no watch changed). The
    /// stored checkpoint stays behind until the next commit, and a restart from it folds
    /// those events again, to the same nothing.
    pub fn covered(&self, position: u64) {
        self.position.send_if_modified(|at| {
            let moved = at.is_none_or(|at| at < position);
            if moved {
                *at = Some(position);
            }
            moved
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The checkpoint: the position of the last event folded.
    pub fn checkpoint(&self) -> Option<u64> {
        *self.position.borrow()
    }

    /// Every account's watch with its stream version, as of the checkpoint.
    pub fn load_watches(&self) -> Result<Watches, AlertsError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT account_id, version, watch FROM watches")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut watches = HashMap::new();
        for row in rows {
            let (account_id, version, text) = row?;
            let watch: AlertWatch = serde_json::from_str(&text)?;
            watches.insert(account_id, (u64::try_from(version).unwrap_or(0), watch));
        }
        Ok(watches)
    }

    /// Commits a batch: watches, notifications and checkpoint together or not at all.
    pub fn commit(&self, batch: &Batch, now_ms: i64) -> Result<(), AlertsError> {
        let Some(position) = batch.position else {
            return Ok(());
        };
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut store_watch = transaction.prepare_cached(
                "INSERT INTO watches (account_id, version, watch) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account_id) DO UPDATE SET version = ?2, watch = ?3",
            )?;
            for (account_id, (version, watch)) in &batch.watches {
                let text = serde_json::to_string(watch)?;
                store_watch.execute(params![account_id, to_i64(*version), text])?;
            }
            let mut add = transaction.prepare_cached(
                "INSERT INTO outbox (id, account_id, position, type, url, body, status,
                                     next_attempt_ms, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)
                 ON CONFLICT (id) DO NOTHING",
            )?;
            for row in &batch.rows {
                add.execute(params![
                    row.id,
                    row.account_id,
                    to_i64(row.position),
                    row.kind,
                    row.url,
                    row.body,
                    now_ms
                ])?;
            }
            transaction.execute(
                "INSERT INTO meta (key, value) VALUES ('checkpoint', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = ?1",
                [to_i64(position)],
            )?;
        }
        transaction.commit()?;
        drop(connection);
        self.position.send_replace(Some(position));
        Ok(())
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn failed(error: impl std::fmt::Display) -> OutboxError {
    OutboxError(error.to_string())
}

#[async_trait]
impl Outbox for SqliteOutbox {
    fn due(&self, now_ms: i64, limit: usize, busy: &[String]) -> Result<Vec<Pending>, OutboxError> {
        let connection = self.lock();
        // The head of each account's queue: its oldest pending notification.
        let mut statement = connection
            .prepare_cached(
                "SELECT o.seq, o.id, o.account_id, o.url, o.body, o.attempts, o.created_at_ms
                 FROM outbox o
                 JOIN (SELECT account_id, MIN(seq) AS seq FROM outbox
                       WHERE status = 'pending' GROUP BY account_id) head ON head.seq = o.seq
                 WHERE o.next_attempt_ms <= ?1
                 ORDER BY o.next_attempt_ms, o.seq",
            )
            .map_err(failed)?;
        let rows = statement
            .query_map([now_ms], |row| {
                Ok(Pending {
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    account_id: row.get(2)?,
                    url: row.get(3)?,
                    body: row.get(4)?,
                    attempts: row.get(5)?,
                    created_at_ms: row.get(6)?,
                })
            })
            .map_err(failed)?;
        let mut due = Vec::new();
        for row in rows {
            let pending = row.map_err(failed)?;
            if !busy.contains(&pending.account_id) {
                due.push(pending);
            }
            if due.len() >= limit {
                break;
            }
        }
        Ok(due)
    }

    fn record(&self, seq: i64, attempt: &Attempt) -> Result<(), OutboxError> {
        let connection = self.lock();
        let changed = match attempt {
            Attempt::Delivered { at_ms } => connection.execute(
                "UPDATE outbox SET status = 'delivered', finished_at_ms = ?2, last_error = NULL
                 WHERE seq = ?1 AND status = 'pending'",
                params![seq, at_ms],
            ),
            Attempt::Retry { error, next_at_ms } => connection.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3
                 WHERE seq = ?1 AND status = 'pending'",
                params![seq, next_at_ms, error],
            ),
            Attempt::Park { error, at_ms } => connection.execute(
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1,
                                   finished_at_ms = ?2, last_error = ?3
                 WHERE seq = ?1 AND status = 'pending'",
                params![seq, at_ms, error],
            ),
        };
        changed.map(|_| ()).map_err(failed)
    }

    fn account(&self, account_id: &str) -> Result<AccountAlerts, OutboxError> {
        let connection = self.lock();
        let watch: Option<String> = connection
            .query_row(
                "SELECT watch FROM watches WHERE account_id = ?1",
                [account_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(failed)?;
        let config = match watch {
            Some(text) => {
                serde_json::from_str::<AlertWatch>(&text)
                    .map_err(failed)?
                    .config
            }
            None => None,
        };
        let count = |status: &str| -> Result<u64, OutboxError> {
            connection
                .query_row(
                    "SELECT COUNT(*) FROM outbox WHERE account_id = ?1 AND status = ?2",
                    params![account_id, status],
                    |row| row.get::<_, i64>(0),
                )
                .map(|count| u64::try_from(count).unwrap_or(0))
                .map_err(failed)
        };
        let (pending, delivered) = (count("pending")?, count("delivered")?);
        let mut statement = connection
            .prepare_cached(
                "SELECT id, type, position, attempts, COALESCE(last_error, ''), finished_at_ms
                 FROM outbox WHERE account_id = ?1 AND status = 'failed'
                 ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(failed)?;
        let failed_rows = statement
            .query_map(params![account_id, PARKED_LISTED_MAX], |row| {
                let finished_ms: Option<i64> = row.get(5)?;
                Ok(Parked {
                    id: row.get(0)?,
                    kind: row.get(1)?,
                    position: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    attempts: row.get(3)?,
                    last_error: row.get(4)?,
                    failed_at: instant_text(finished_ms.unwrap_or(0)),
                })
            })
            .map_err(failed)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        Ok(AccountAlerts {
            config,
            pending,
            delivered,
            failed: failed_rows,
        })
    }

    fn counts(&self) -> Result<OutboxCounts, OutboxError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT status, COUNT(*) FROM outbox GROUP BY status")
            .map_err(failed)?;
        let mut counts = OutboxCounts::default();
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(failed)?;
        for row in rows {
            let (status, count) = row.map_err(failed)?;
            let count = u64::try_from(count).unwrap_or(0);
            match status.as_str() {
                "pending" => counts.pending = count,
                "delivered" => counts.delivered = count,
                _ => counts.failed = count,
            }
        }
        Ok(counts)
    }

    async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut receiver = self.position.subscribe();
        let reached = receiver.wait_for(|at| at.is_some_and(|at| at >= position));
        let outcome = tokio::time::timeout(timeout, reached).await;
        outcome.is_ok_and(|waited| waited.is_ok())
    }
}

fn instant_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
