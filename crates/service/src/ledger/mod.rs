//! Command handling: load the account (from a cache checked against the stream), decide,
//! seal the events into the hash chain and append them with the exact expected version.
//! A version conflict means another writer got there first: catch up and decide again, a
//! bounded number of times. That is what keeps concurrent executors from overdrawing.

mod batch;
mod cached;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ledger_domain::decide::{Decision, Reply};
use ledger_domain::envelope::{stream_name, Envelope};
use ledger_domain::state::Core;
use ledger_domain::{Account, Catalog, Command, Instant, Rejection};
use ledger_store::{EventStore, StoreError};
use tokio::sync::oneshot;

use crate::clock::Clock;

use crate::pages::{read_stream_at, read_stream_pages, read_stream_versions};
use cached::{Cached, RECORDS_WHOLE_MAX};

/// How many times a command is decided again after losing a race for the stream.
const CONFLICT_ATTEMPTS_MAX: usize = 64;
/// Longest pause before deciding again; grows with the attempt, jittered so two replicas
/// racing for one hot stream stop colliding in lockstep.
const CONFLICT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(20);
/// Accounts kept in memory before idle ones are dropped (they reload from the stream).
const CACHED_ACCOUNTS_MAX: usize = 100_000;

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

/// One account: the commands queued for it and its cached state. Whoever holds `state`
/// decides what is queued.
#[derive(Debug)]
struct AccountSlot {
    queue: Mutex<VecDeque<batch::Pending>>,
    state: Arc<tokio::sync::Mutex<Cached>>,
}

type Slot = Arc<AccountSlot>;

/// Holds the account while a lone command is decided on its caller's task. Dropped while
/// still holding it (the caller went away, or panicked), it hands the account to a driver
/// so that commands queued meanwhile are decided.
struct LoneHold {
    ledger: Ledger,
    slot: Slot,
    guard: Option<tokio::sync::OwnedMutexGuard<Cached>>,
}

impl Drop for LoneHold {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        // Outside a runtime (shutting down) there is nobody left to answer anyway.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.ledger
                .spawn_driver(self.slot.clone(), guard, Vec::new());
        }
    }
}

/// Numbers the callers of `execute_all`.
static TICKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Takes the next batch queued for the account, in arrival order.
fn next_batch(slot: &Slot) -> Vec<batch::Pending> {
    let mut queue = lock(&slot.queue);
    let count = queue.len().min(batch::BATCH_MAX);
    queue.drain(..count).collect()
}

/// From this many commands in its last batch on, a driver waits a moment for their callers
/// to queue again before it takes the next batch (see [`gather`]). Below it the account is
/// not hot: its callers have other accounts to go to, and waiting for them would be waste.
const GATHER_FROM: usize = 8;
/// The longest such wait.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_micros(200);

/// The next batch, once at least half of the `answered` callers of the last one queued
/// again (or [`GATHER_WINDOW`] passed). A driver that took its batch at once found there
/// only the callers that queued while the last one was written: a hot account's callers
/// then split into two cohorts, each batch half of them, and every durable commit (and its
/// sync) served half as many commands. Half, as in the store's group commit: the last
/// callers come back over a long tail. Measured, 64 tasks on one account: batches of 34 on
/// average without this wait, 57 with it (63 waiting for all, no faster).
async fn gather(slot: &Slot, answered: usize) -> Vec<batch::Pending> {
    if answered >= GATHER_FROM {
        let queued = lock(&slot.queue).len();
        let deadline = std::time::Instant::now() + GATHER_WINDOW;
        // Yielding lets the answered callers run on this worker, and anything else too.
        while lock(&slot.queue).len() < queued + answered.div_ceil(2)
            && std::time::Instant::now() < deadline
        {
            tokio::task::yield_now().await;
        }
    }
    next_batch(slot)
}

/// Locks a std mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error of a command whose answer never came (the runtime is shutting down).
fn dropped() -> CommandError {
    CommandError::Store(StoreError::Unavailable(
        "the command handler stopped before answering; retry with the same id".into(),
    ))
}

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
        if let Some(slot) = accounts.get(account_id) {
            // Most commands find their account: no key to allocate.
            return slot.clone();
        }
        accounts
            .entry(account_id.to_string())
            .or_insert_with(|| {
                Arc::new(AccountSlot {
                    queue: Mutex::new(VecDeque::new()),
                    state: Arc::new(tokio::sync::Mutex::new(Cached::new(account_id))),
                })
            })
            .clone()
    }

    /// Reads whatever the stream has beyond the cached version. True when there was some:
    /// the cache was behind the stream.
    async fn catch_up(&self, cached: &mut Cached) -> Result<bool, CommandError> {
        let stream = cached.stream.clone();
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
                // A long stream loads in bounded memory.
                account.records.spill(RECORDS_WHOLE_MAX);
                *last_hash = raw.hash;
                positions.push(recorded.position);
                Ok(true)
            },
        )
        .await?;
        Ok(cached.account.version != before)
    }

    /// Makes whole again the spilled records that `pending` commands name, from their events
    /// in the stream, so that `decide` answers a late retry as it first did.
    async fn restore_spilled(
        &self,
        cached: &mut Cached,
        pending: &[batch::Pending],
    ) -> Result<(), CommandError> {
        let stream = cached.stream.clone();
        for pending in pending {
            let Some(spilled) = cached.account.records.spilled_for(&pending.command) else {
                continue;
            };
            let events =
                read_stream_versions(self.store.as_ref(), &stream, spilled.spill.versions())
                    .await?;
            cached
                .account
                .records
                .restore(spilled, events)
                .map_err(|err| CommandError::Corrupt {
                    stream: stream.to_string(),
                    message: err.to_string(),
                })?;
        }
        Ok(())
    }

    /// Runs `command` on `account_id` for `actor`. Commands that queue for one account while
    /// its previous batch is being written are decided together, in arrival order, and
    /// written with one append (see `batch.rs`); each caller gets its own answer.
    pub async fn execute(
        &self,
        account_id: &str,
        command: &Command,
        actor: &str,
    ) -> Result<Outcome, CommandError> {
        self.execute_owned(account_id, command.clone(), actor).await
    }

    /// [`Ledger::execute`] for a caller that has no further use of its command: the HTTP
    /// handlers, which build one per request, save copying its strings.
    pub async fn execute_owned(
        &self,
        account_id: &str,
        command: Command,
        actor: &str,
    ) -> Result<Outcome, CommandError> {
        let mut answers = self
            .execute_all(account_id, vec![(command, actor.to_string())])
            .await;
        answers.pop().unwrap_or_else(|| Err(dropped()))
    }

    /// Runs `commands` on `account_id`, queued together in this order (so that, with nobody
    /// else queued, they are decided as one batch), and returns each one's answer.
    pub async fn execute_all(
        &self,
        account_id: &str,
        commands: Vec<(Command, String)>,
    ) -> Vec<Result<Outcome, CommandError>> {
        let slot = self.slot(account_id);
        let ticket = TICKETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut answers = Vec::with_capacity(commands.len());
        {
            let mut queue = lock(&slot.queue);
            for (command, actor) in commands {
                let (reply, answer) = oneshot::channel();
                queue.push_back(batch::Pending {
                    ticket,
                    command,
                    actor,
                    reply,
                });
                answers.push(answer);
            }
        }
        self.drive(&slot, ticket).await;
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(answer.await.unwrap_or_else(|_| Err(dropped())));
        }
        results
    }

    /// Makes sure somebody decides what is queued for the account. If nobody holds the
    /// account and only the caller's command is queued, the caller decides it on its own
    /// task (the common, uncontended case costs no task switch). Otherwise a spawned task
    /// takes the account and decides everything queued, a bounded batch at a time, so that
    /// a caller giving up (a dropped request) never stops other callers' batch half-way.
    async fn drive(&self, slot: &Slot, ticket: u64) {
        let Ok(guard) = slot.state.clone().try_lock_owned() else {
            // The holder looks at the queue again after letting go: ours will be seen.
            return;
        };
        let pending = next_batch(slot);
        if pending.len() == 1 && pending[0].ticket == ticket {
            // Cancel-safe on its own: a batch dropped half-way leaves the cache marked, and
            // the next holder reloads the account from the stream; the hold hands the
            // account to a driver if this caller goes away, so nothing queued is stranded.
            let mut hold = LoneHold {
                ledger: self.clone(),
                slot: slot.clone(),
                guard: Some(guard),
            };
            if let Some(guard) = hold.guard.as_mut() {
                self.run_batch(guard, pending).await;
            }
            let Some(guard) = hold.guard.take() else {
                return;
            };
            drop(guard);
            // Someone may have queued while this command was decided.
            self.kick(slot);
        } else {
            self.spawn_driver(slot.clone(), guard, pending);
        }
    }

    /// Starts a driver if commands are queued and nobody holds the account.
    fn kick(&self, slot: &Slot) {
        if lock(&slot.queue).is_empty() {
            return;
        }
        if let Ok(guard) = slot.state.clone().try_lock_owned() {
            self.spawn_driver(slot.clone(), guard, Vec::new());
        }
    }

    /// Decides `first`, then everything queued for the account, on a task of its own.
    fn spawn_driver(
        &self,
        slot: Slot,
        mut guard: tokio::sync::OwnedMutexGuard<Cached>,
        first: Vec<batch::Pending>,
    ) {
        let ledger = self.clone();
        tokio::spawn(async move {
            let mut pending = first;
            loop {
                let mut answered = 0;
                loop {
                    if pending.is_empty() {
                        pending = gather(&slot, answered).await;
                    }
                    if pending.is_empty() {
                        break;
                    }
                    answered = pending.len();
                    ledger
                        .run_batch(&mut guard, std::mem::take(&mut pending))
                        .await;
                }
                drop(guard);
                // A command queued after the last look but before letting go of the account
                // found it held and left its deciding to us.
                if lock(&slot.queue).is_empty() {
                    return;
                }
                match slot.state.clone().try_lock_owned() {
                    Ok(again) => guard = again,
                    Err(_) => return,
                }
            }
        });
    }

    /// The answer to a decision that writes nothing: a replay repeats the first answer, with
    /// its position and the account as it was then; anything else answers with the account
    /// as it was decided on (`then`: its version, and its core when the answer shows it).
    async fn answer_unwritten(
        &self,
        cached: &mut Cached,
        decision: Decision,
        now: Instant,
        then: (u64, Option<Arc<Core>>),
    ) -> Result<Outcome, CommandError> {
        let (position, core, at) = match decision.replay_of {
            Some(version) => {
                let position = self.position_of(cached, version).await?;
                let (core, at) = if wants_core(&decision.reply) {
                    let (core, at) = self.answer_state(cached, version).await?;
                    (Some(core), at)
                } else {
                    (None, now)
                };
                (position, core, at)
            }
            None => {
                let (version, core) = then;
                (self.position_of(cached, version).await?, core, now)
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

    /// The global position of the account's `version`-th event: from memory when it is
    /// recent, else from the stream.
    async fn position_of(
        &self,
        cached: &Cached,
        version: u64,
    ) -> Result<Option<u64>, CommandError> {
        if let Ok(position) = cached.positions.get(version) {
            return Ok(position);
        }
        let stored = read_stream_at(self.store.as_ref(), &cached.stream, version).await?;
        Ok(Some(stored.position))
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
        let loaded = {
            let mut cached = slot.state.lock().await;
            cached.take_back();
            self.catch_up(&mut cached)
                .await
                .map(|_| (cached.account.clone(), cached.last_position()))
        };
        // Commands queued while the account was held here found it taken.
        self.kick(&slot);
        loaded
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

#[cfg(test)]
mod tests;
