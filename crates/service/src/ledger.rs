//! Command handling: load the account (from a cache checked against the stream), decide,
//! seal the events into the hash chain and append them with the exact expected version.
//! A version conflict means another writer got there first: catch up and decide again, a
//! bounded number of times. That is what keeps concurrent executors from overdrawing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ledger_domain::decide::{decide, Decision, Reply};
use ledger_domain::envelope::{seal, stream_name, Cause, Envelope, GENESIS_HASH};
use ledger_domain::state::Core;
use ledger_domain::{Account, Catalog, Command, Instant, Rejection};
use ledger_store::{EventStore, ExpectedVersion, NewEvent, StoreError};
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::pages::read_stream_pages;

/// How many times a command is decided again after losing a race for the stream.
const CONFLICT_ATTEMPTS_MAX: usize = 64;
/// Longest pause before deciding again; grows with the attempt, jittered so two replicas
/// racing for one hot stream stop colliding in lockstep.
const CONFLICT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(20);
/// Accounts kept in memory before idle ones are dropped (they reload from the stream).
const CACHED_ACCOUNTS_MAX: usize = 100_000;
/// First answers of summary-answering commands kept per cached account; older ones are
/// rebuilt from the stream when replayed.
const FIRST_ANSWERS_MAX: usize = 16;

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
    /// An idempotent retry: nothing was written, and the answer is the first one.
    pub replayed: bool,
    /// Global position of the command's last event (for a replay, the first answer's).
    pub position: Option<u64>,
    /// The account as the answer shows it, for answers that show the summary: right after
    /// the command, or for a replay right after the first one (receipts carry their own
    /// figures, so a charge does not pay for the copy).
    pub core: Option<Arc<Core>>,
    /// The instant the answer is as of: the command's time, or the first answer's.
    pub at: Instant,
    /// The events written.
    pub written: Vec<Envelope>,
}

/// One account's cached state, with what is needed to continue its hash chain and to answer
/// replays without reading the store.
#[derive(Debug)]
struct Cached {
    account: Account,
    last_hash: String,
    /// The global position of each event, by version - 1. Only the last event of a command
    /// is ever looked up: its position is the command's answer.
    positions: Vec<u64>,
    /// The account right after recent summary-answering commands, by the version of their
    /// event, with the instant they were answered at: what a replay shows again. Bounded;
    /// a miss rebuilds the state from the stream.
    first_answers: BTreeMap<u64, (Arc<Core>, Instant)>,
}

impl Cached {
    fn new(account_id: &str) -> Cached {
        Cached {
            account: Account::new(account_id),
            last_hash: GENESIS_HASH.to_string(),
            positions: Vec::new(),
            first_answers: BTreeMap::new(),
        }
    }

    fn last_position(&self) -> Option<u64> {
        self.positions.last().copied()
    }

    fn position_of(&self, version: u64) -> Option<u64> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.positions.get(index).copied()
    }

    fn remember_answer(&mut self, version: u64, core: Arc<Core>, at: Instant) {
        self.first_answers.insert(version, (core, at));
        while self.first_answers.len() > FIRST_ANSWERS_MAX {
            self.first_answers.pop_first();
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

    /// Reads whatever the stream has beyond the cached version. True when there was some:
    /// the cache was behind the stream.
    async fn catch_up(&self, cached: &mut Cached) -> Result<bool, CommandError> {
        let stream = stream_name(&cached.account.account_id);
        let before = cached.account.version;
        let account = &mut cached.account;
        let positions = &mut cached.positions;
        let last_hash = &mut cached.last_hash;
        read_stream_pages(
            self.store.as_ref(),
            &stream,
            before + 1,
            |recorded, raw, envelope| {
                if recorded.version != account.version + 1 {
                    return Err(format!(
                        "expected version {}, read {}",
                        account.version + 1,
                        recorded.version
                    ));
                }
                account.apply(envelope.event);
                *last_hash = raw.hash;
                positions.push(recorded.position);
                Ok(true)
            },
        )
        .await?;
        Ok(cached.account.version != before)
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
        let mut last_rejection = None;
        for attempt in 0..CONFLICT_ATTEMPTS_MAX {
            let now = self.clock.now();
            let decision = match decide(&cached.account, &self.catalog, command, now) {
                Ok(decision) => decision,
                Err(rejection) => {
                    // A refusal writes nothing, so no expected-version check would catch a
                    // cache that another node left behind: look at the stream before
                    // refusing, and decide again if it moved.
                    if self.catch_up(&mut cached).await? {
                        last_rejection = Some(rejection);
                        continue;
                    }
                    return Err(rejection.into());
                }
            };
            if decision.events.is_empty() {
                // A replay of a command with a caller id answers with a record that never
                // changes, so a stale cache answers it as well as a fresh one. Every other
                // answer that writes nothing is checked against the stream first.
                let settled = decision.replayed && command.has_caller_id();
                if !settled && self.catch_up(&mut cached).await? {
                    continue;
                }
                return self.answer_unwritten(&mut cached, decision, now).await;
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
                        cached.positions.push(appended.position);
                        envelope.position = Some(appended.position);
                        written.push(envelope);
                    }
                    let core = wants_core(&decision.reply)
                        .then(|| cached.account.core.clone().map(Arc::new))
                        .flatten();
                    if let Some(core) = &core {
                        let version = cached.account.version;
                        cached.remember_answer(version, core.clone(), now);
                    }
                    return Ok(Outcome {
                        reply: decision.reply,
                        replayed: false,
                        position: Some(appended.position),
                        core,
                        at: now,
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
        if let Some(rejection) = last_rejection {
            // The stream kept moving under a refusal: answer with the latest one decided.
            return Err(rejection.into());
        }
        warn!(
            account_id,
            "gave up after {CONFLICT_ATTEMPTS_MAX} conflicting appends"
        );
        Err(CommandError::Store(StoreError::Unavailable(format!(
            "stream {stream} is too contended; retry with the same id"
        ))))
    }

    /// The answer to a decision that writes nothing: a replay repeats the first answer, with
    /// its position and the account as it was then; anything else answers from now.
    async fn answer_unwritten(
        &self,
        cached: &mut Cached,
        decision: Decision,
        now: Instant,
    ) -> Result<Outcome, CommandError> {
        let wants_core = wants_core(&decision.reply);
        let (position, core, at) = match decision.replay_of {
            Some(version) => {
                let position = cached.position_of(version);
                let (core, at) = if wants_core {
                    let (core, at) = self.answer_state(cached, version).await?;
                    (Some(core), at)
                } else {
                    (None, now)
                };
                (position, core, at)
            }
            None => {
                let core = wants_core
                    .then(|| cached.account.core.clone().map(Arc::new))
                    .flatten();
                (cached.last_position(), core, now)
            }
        };
        Ok(Outcome {
            reply: decision.reply,
            replayed: decision.replayed,
            position,
            core,
            at,
            written: Vec::new(),
        })
    }

    /// The account right after its `version`-th event, and that event's time: what the first
    /// answer of the command that wrote it showed. From memory when it is recent, else
    /// rebuilt from the stream (the stream has it all).
    async fn answer_state(
        &self,
        cached: &mut Cached,
        version: u64,
    ) -> Result<(Arc<Core>, Instant), CommandError> {
        if let Some((core, at)) = cached.first_answers.get(&version) {
            return Ok((core.clone(), *at));
        }
        let account_id = cached.account.account_id.clone();
        let stream = stream_name(&account_id);
        let mut account = Account::new(&account_id);
        let mut at = None;
        read_stream_pages(self.store.as_ref(), &stream, 1, |recorded, _, envelope| {
            if recorded.version > version {
                return Ok(false);
            }
            at = Some(envelope.occurred_at);
            account.apply(envelope.event);
            Ok(recorded.version < version)
        })
        .await?;
        let (Some(core), Some(at)) = (account.core, at) else {
            return Err(CommandError::Corrupt {
                stream,
                message: format!("version {version} is not in the stream"),
            });
        };
        let core = Arc::new(core);
        cached.remember_answer(version, core.clone(), at);
        Ok((core, at))
    }

    /// The account as the command side knows it, after catching up with the stream.
    pub async fn load(&self, account_id: &str) -> Result<(Account, Option<u64>), CommandError> {
        let slot = self.slot(account_id);
        let mut cached = slot.lock().await;
        self.catch_up(&mut cached).await?;
        Ok((cached.account.clone(), cached.last_position()))
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
