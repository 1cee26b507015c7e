//! Command handling: load the account (from a cache checked against the stream), decide,
//! seal the events into the hash chain and append them with the exact expected version.
//! A version conflict means another writer got there first: catch up and decide again, a
//! bounded number of times. That is what keeps concurrent executors from overdrawing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ledger_domain::decide::{decide, Reply};
use ledger_domain::envelope::{seal, stream_name, Cause, Envelope, RawEnvelope, GENESIS_HASH};
use ledger_domain::state::Core;
use ledger_domain::{Account, Catalog, Command, Rejection};
use ledger_store::{EventStore, ExpectedVersion, NewEvent, StoreError};
use tracing::{debug, warn};

use crate::clock::Clock;

/// How many times a command is decided again after losing a race for the stream.
const CONFLICT_ATTEMPTS_MAX: usize = 64;
/// Longest pause before deciding again; grows with the attempt, jittered so two replicas
/// racing for one hot stream stop colliding in lockstep.
const CONFLICT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(20);
/// Accounts kept in memory before idle ones are dropped (they reload from the stream).
const CACHED_ACCOUNTS_MAX: usize = 100_000;
/// Events read per page when loading a stream.
const READ_PAGE: usize = 4_096;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The rules refused it; nothing was written.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store failed; nothing was written (or the write's fate is unknown and a retry with
    /// the same id is safe).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Stored data could not be read back.
    #[error("corrupt stream {stream}: {message}")]
    Corrupt { stream: String, message: String },
}

impl CommandError {
    /// The API rejection this error answers with.
    pub fn to_rejection(&self) -> Rejection {
        match self {
            CommandError::Rejected(rejection) => rejection.clone(),
            CommandError::Store(StoreError::Invalid(message)) => {
                Rejection::invalid(message.clone())
            }
            CommandError::Store(err) => Rejection::Unavailable {
                message: err.to_string(),
            },
            CommandError::Corrupt { .. } => Rejection::Unavailable {
                message: self.to_string(),
            },
        }
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reply: Reply,
    /// An idempotent retry: nothing was written.
    pub replayed: bool,
    /// Global position of the stream's last event after the command.
    pub position: Option<u64>,
    /// The account's core after the command, for answers that show the summary (receipts
    /// carry their own figures, so a charge does not pay for the copy).
    pub core: Option<Core>,
    /// The events written.
    pub written: Vec<Envelope>,
}

/// One account's cached state, with what is needed to continue its hash chain.
#[derive(Debug)]
struct Cached {
    account: Account,
    last_hash: String,
    last_position: Option<u64>,
}

impl Cached {
    fn new(account_id: &str) -> Cached {
        Cached {
            account: Account::new(account_id),
            last_hash: GENESIS_HASH.to_string(),
            last_position: None,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Cached>>;

/// The command side of the ledger.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn EventStore>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    accounts: Arc<Mutex<HashMap<String, Slot, foldhash::quality::RandomState>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn new(store: Arc<dyn EventStore>, catalog: Arc<Catalog>, clock: Arc<dyn Clock>) -> Ledger {
        Ledger {
            store,
            catalog,
            clock,
            accounts: Arc::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn now(&self) -> ledger_domain::Instant {
        self.clock.now()
    }

    /// The global position of the event at `version` of `stream`.
    async fn position_of(&self, stream: &str, version: u64) -> Result<Option<u64>, CommandError> {
        let page = self.store.read_stream(stream, version, 1).await?;
        Ok(page
            .first()
            .filter(|event| event.version == version)
            .map(|event| event.position))
    }

    fn slot(&self, account_id: &str) -> Slot {
        // A poisoned map only means another thread panicked mid-insert; the map itself is
        // still consistent, so keep serving.
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if accounts.len() >= CACHED_ACCOUNTS_MAX && !accounts.contains_key(account_id) {
            // Forget accounts nobody is using right now; they reload from their stream.
            accounts.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        accounts
            .entry(account_id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Cached::new(account_id))))
            .clone()
    }

    /// Reads whatever the stream has beyond the cached version.
    async fn catch_up(&self, cached: &mut Cached) -> Result<(), CommandError> {
        let stream = stream_name(&cached.account.account_id);
        loop {
            let from = cached.account.version + 1;
            let page = self.store.read_stream(&stream, from, READ_PAGE).await?;
            let done = page.len() < READ_PAGE;
            for recorded in page {
                let corrupt = |message: String| CommandError::Corrupt {
                    stream: stream.clone(),
                    message,
                };
                if recorded.version != cached.account.version + 1 {
                    return Err(corrupt(format!(
                        "expected version {}, read {}",
                        cached.account.version + 1,
                        recorded.version
                    )));
                }
                let raw = RawEnvelope::parse(&recorded.payload)
                    .map_err(|err| corrupt(err.to_string()))?;
                let envelope = raw.decode().map_err(|err| corrupt(err.to_string()))?;
                cached.account.apply(envelope.event);
                cached.last_hash = raw.hash;
                cached.last_position = Some(recorded.position);
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Runs `command` on `account_id` for `actor`.
    pub async fn execute(
        &self,
        account_id: &str,
        command: &Command,
        actor: &str,
    ) -> Result<Outcome, CommandError> {
        let slot = self.slot(account_id);
        let mut cached = slot.lock().await;
        if cached.account.version == 0 {
            self.catch_up(&mut cached).await?;
        }
        let stream = stream_name(account_id);
        for attempt in 0..CONFLICT_ATTEMPTS_MAX {
            let now = self.clock.now();
            let decision = decide(&cached.account, &self.catalog, command, now)?;
            let wants_core = wants_core(&decision.reply);
            if decision.events.is_empty() {
                let core = wants_core.then(|| cached.account.core.clone()).flatten();
                let position = match original_version(&cached.account, command)
                    .filter(|_| decision.replayed)
                {
                    Some(version) => self
                        .position_of(&stream, version)
                        .await?
                        .or(cached.last_position),
                    None => cached.last_position,
                };
                return Ok(Outcome {
                    reply: decision.reply,
                    replayed: decision.replayed,
                    position,
                    core,
                    written: Vec::new(),
                });
            }
            let cause = Cause {
                command_id: command.command_id(now),
                actor: actor.to_string(),
            };
            let version = cached.account.version;
            let sealed = seal(
                &stream,
                version,
                &cached.last_hash,
                &cause,
                now,
                now,
                decision.events,
            );
            let batch = sealed
                .iter()
                .map(|(envelope, payload)| NewEvent {
                    event_id: envelope.event_id,
                    event_type: envelope.event.type_name().to_string(),
                    payload: payload.clone(),
                })
                .collect();
            match self
                .store
                .append(&stream, ExpectedVersion::from_last_version(version), batch)
                .await
            {
                Ok(appended) => {
                    let mut written = Vec::with_capacity(sealed.len());
                    for (mut envelope, _) in sealed {
                        cached.last_hash = envelope.hash.clone();
                        cached.account.evolve(&envelope.event);
                        envelope.position = Some(appended.position);
                        written.push(envelope);
                    }
                    cached.last_position = Some(appended.position);
                    let core = wants_core.then(|| cached.account.core.clone()).flatten();
                    return Ok(Outcome {
                        reply: decision.reply,
                        replayed: false,
                        position: Some(appended.position),
                        core,
                        written,
                    });
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    debug!(
                        account_id,
                        attempt, actual, "lost the race for the stream; catching up"
                    );
                    backoff(attempt).await;
                    self.catch_up(&mut cached).await?;
                }
                // Event ids derive from the command: a clash means another replica already
                // wrote this command from a staler view of the stream. Catch up; deciding again
                // then finds the command done and answers the retry.
                Err(StoreError::EventIdConflict { .. }) => {
                    debug!(
                        account_id,
                        attempt, "command already written by another writer; catching up"
                    );
                    backoff(attempt).await;
                    self.catch_up(&mut cached).await?;
                }
                Err(err) => {
                    // The append may or may not have landed: forget the cache so the next
                    // command reads the truth from the stream.
                    *cached = Cached::new(account_id);
                    return Err(err.into());
                }
            }
        }
        warn!(
            account_id,
            "gave up after {CONFLICT_ATTEMPTS_MAX} conflicting appends"
        );
        Err(CommandError::Store(StoreError::Unavailable(format!(
            "stream {stream} is too contended; retry with the same id"
        ))))
    }

    /// The account as the command side knows it, after catching up with the stream.
    pub async fn load(&self, account_id: &str) -> Result<(Account, Option<u64>), CommandError> {
        let slot = self.slot(account_id);
        let mut cached = slot.lock().await;
        self.catch_up(&mut cached).await?;
        Ok((cached.account.clone(), cached.last_position))
    }
}

/// The stream version of the event whose answer an idempotent retry repeats, so the retry
/// carries the first answer's position too.
fn original_version(account: &Account, command: &Command) -> Option<u64> {
    match command {
        Command::Charge(charge) => account
            .records
            .charges
            .get(&charge.charge_id)
            .map(|record| record.version),
        Command::PlaceHold(hold) => {
            let open = account
                .core
                .as_ref()
                .and_then(|core| core.balance.open_holds.get(&hold.hold_id))
                .map(|open| open.version);
            open.or_else(|| {
                account
                    .records
                    .closed_holds
                    .get(&hold.hold_id)
                    .map(|closed| closed.0.version)
            })
        }
        _ => None,
    }
}

/// Waits a jittered, growing moment before a retry after a conflict. The first retry goes at
/// once: most conflicts are a single concurrent append.
async fn backoff(attempt: usize) {
    if attempt == 0 {
        return;
    }
    let ceiling_us = (attempt as u64 * 250).min(CONFLICT_BACKOFF_MAX.as_micros() as u64);
    // Jitter from the clock's nanoseconds: no need for a random generator's quality here.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::from(elapsed.subsec_nanos()));
    let pause_us = nanos % ceiling_us.max(1);
    tokio::time::sleep(std::time::Duration::from_micros(pause_us)).await;
}

/// Whether an answer renders the account summary and so needs the core after the command.
fn wants_core(reply: &Reply) -> bool {
    matches!(reply, Reply::Summary { .. } | Reply::Verification { .. })
}
