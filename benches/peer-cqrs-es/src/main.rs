//! The charge benchmark's peer: the same durable 1-credit charges through `cqrs-es` with
//! `sqlite-es`, the Rust event-sourcing framework a team would otherwise pick, so that
//! `cargo bench -p ledger-service --bench charges` can set the ledger beside it in one run.
//!
//! One `Account` aggregate per account with a balance; a charge is refused below zero. The
//! store is sqlite-es on WAL with `synchronous=FULL` (its own default is NORMAL, which is
//! not durable on power loss; the ledger's store is FULL), and the aggregate store, which
//! loads the serialised aggregate instead of replaying every event: the framework's
//! fastest configuration. A charge that loses the optimistic-concurrency race
//! (`AggregateConflict`) is retried, as an executor would; the conflicts are counted.
//!
//! Usage: `peer-cqrs-es TASKS ACCOUNTS MILLIS DIR`. Prints one line:
//! `charges_per_s=<rate> conflicts=<count>`.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
use serde::{Deserialize, Serialize};
use sqlite_es::{sqlite_aggregate_cqrs, SqliteCqrs};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Credits each account starts with: enough that no charge of the run is refused.
const OPENING_CREDITS: u64 = 1_000_000_000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Debug)]
enum AccountCommand {
    Grant { credits: u64 },
    Charge { credits: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Granted { credits: u64 },
    Charged { credits: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::Granted { .. } => "Granted".into(),
            AccountEvent::Charged { .. } => "Charged".into(),
        }
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug)]
struct InsufficientCredits;

impl std::fmt::Display for InsufficientCredits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("insufficient credits")
    }
}

impl std::error::Error for InsufficientCredits {}

#[async_trait]
impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = InsufficientCredits;
    type Services = ();

    fn aggregate_type() -> String {
        "Account".into()
    }

    async fn handle(
        &self,
        command: AccountCommand,
        _: &(),
    ) -> Result<Vec<AccountEvent>, InsufficientCredits> {
        match command {
            AccountCommand::Grant { credits } => Ok(vec![AccountEvent::Granted { credits }]),
            AccountCommand::Charge { credits } if credits <= self.balance => {
                Ok(vec![AccountEvent::Charged { credits }])
            }
            AccountCommand::Charge { .. } => Err(InsufficientCredits),
        }
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Granted { credits } => self.balance += credits,
            AccountEvent::Charged { credits } => self.balance -= credits,
        }
    }
}

/// sqlite-es's schema (its `migrations/`): the events table and the aggregate snapshots.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE events (
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        sequence integer CHECK (sequence >= 0) NOT NULL,
        event_type text NOT NULL,
        event_version text NOT NULL,
        payload text NOT NULL,
        metadata text NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence)
    ) STRICT",
    "CREATE TABLE snapshots (
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        last_sequence integer CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
        payload text NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
    ) STRICT",
];

fn arg<T: FromStr>(args: &[String], index: usize, name: &str) -> Result<T, Error> {
    let text = args
        .get(index)
        .ok_or_else(|| format!("usage: peer-cqrs-es TASKS ACCOUNTS MILLIS DIR (missing {name})"))?;
    text.parse()
        .map_err(|_| format!("{name} must be a number, not {text:?}").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tasks: usize = arg(&args, 0, "TASKS")?;
    let accounts: usize = arg(&args, 1, "ACCOUNTS")?;
    let millis: u64 = arg(&args, 2, "MILLIS")?;
    let dir = args
        .get(3)
        .ok_or("usage: peer-cqrs-es TASKS ACCOUNTS MILLIS DIR (missing DIR)")?;
    if tasks == 0 || accounts == 0 {
        return Err("TASKS and ACCOUNTS must be at least 1".into());
    }
    let path = std::path::Path::new(dir).join("peer.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    let cqrs: Arc<SqliteCqrs<Account>> = Arc::new(sqlite_aggregate_cqrs(pool, Vec::new(), ()));
    // Accounts are opened concurrently, as the ledger's side of the benchmark does.
    let mut opening = Vec::new();
    for first in 0..accounts.min(64) {
        let cqrs = cqrs.clone();
        opening.push(tokio::spawn(async move {
            for account in (first..accounts).step_by(64) {
                let grant = AccountCommand::Grant {
                    credits: OPENING_CREDITS,
                };
                cqrs.execute(&format!("acct-{account}"), grant)
                    .await
                    .map_err(|err| err.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in opening {
        task.await??;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let charges = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let (cqrs, stop, charges, conflicts) = (
            cqrs.clone(),
            stop.clone(),
            charges.clone(),
            conflicts.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut next = task;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("acct-{}", next % accounts);
                next = next.wrapping_add(tasks);
                loop {
                    match cqrs
                        .execute(&id, AccountCommand::Charge { credits: 1 })
                        .await
                    {
                        Ok(()) => {
                            charges.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(AggregateError::AggregateConflict) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => return Err(err.to_string()),
                    }
                }
            }
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(millis)).await;
    stop.store(true, Ordering::Relaxed);
    let counted = charges.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for worker in workers {
        worker.await??;
    }
    // Rates are reported as floats; nothing here is a credit amount.
    let rate = counted as f64 / elapsed.as_secs_f64();
    println!(
        "charges_per_s={rate:.0} conflicts={}",
        conflicts.load(Ordering::Relaxed)
    );
    Ok(())
}
