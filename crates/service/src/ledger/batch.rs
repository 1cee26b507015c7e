//! Group decide: the commands queued for one account are decided one after another against
//! the cached state, each seeing what the ones before it did, and their events go into one
//! append with one expected version and one durable commit. A hot account then takes a
//! batch per commit instead of one command per commit.
//!
//! Every caller still gets its own answer: a refusal is decided against the state the
//! commands before it left, a repeat of a command earlier in the same batch is answered as
//! a replay, and nobody is answered before the batch's events are durable. When the store
//! refuses the append (another node wrote first), the batch is taken back out of the cache
//! and decided again after catching up.

use std::sync::Arc;

use ledger_domain::decide::{decide, Decision, Reply};
use ledger_domain::envelope::{seal, Cause, Envelope};
use ledger_domain::state::Core;
use ledger_domain::{Command, Instant, Rejection};
use ledger_store::{AppendOutcome, Attachment, ExpectedVersion, NewEvent, StoreError};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::cached::InFlight;
use super::{
    backoff, wants_core, Cached, CommandError, Ledger, Outcome, CONFLICT_ATTEMPTS_MAX,
    RECORDS_WHOLE_MAX,
};

/// Commands decided together at most. Bounded so that one hot account's batch stays short
/// and its callers' latency with it; other accounts run on their own tasks meanwhile.
pub(super) const BATCH_MAX: usize = 256;

/// A command waiting for its account, and where its answer goes.
#[derive(Debug)]
pub(super) struct Pending {
    /// Which caller queued it, so a caller knows when a batch is its own alone.
    pub(super) ticket: u64,
    pub(super) command: Command,
    pub(super) actor: String,
    pub(super) reply: oneshot::Sender<Result<Outcome, CommandError>>,
}

/// What one command of a batch decided.
enum Plan {
    Refused(Rejection),
    /// Nothing to write: a replay or a no-op, with the version it was decided at and the
    /// account then, when its answer shows the summary.
    Unwritten {
        decision: Decision,
        version: u64,
        core: Option<Arc<Core>>,
    },
    /// Events folded into the cache, to be appended with the batch. While the append is in
    /// flight its `events` envelopes are in the cache's `InFlight`, not here.
    Written {
        reply: Reply,
        core: Option<Arc<Core>>,
        envelopes: Vec<Envelope>,
        events: usize,
    },
}

impl Ledger {
    /// Decides `pending` on the account in `cached` and answers every one of them.
    pub(super) async fn run_batch(&self, cached: &mut Cached, pending: Vec<Pending>) {
        if cached.take_back() || cached.account.version == 0 {
            if let Err(err) = self.catch_up(cached).await {
                return fail_all(pending, &err);
            }
        }
        let stream = cached.stream.clone();
        for attempt in 0..CONFLICT_ATTEMPTS_MAX {
            // Each attempt: catching up may have spilled what an earlier one restored.
            if let Err(err) = self.restore_spilled(cached, &pending).await {
                return fail_all(pending, &err);
            }
            let now = self.clock.now();
            let savepoint = cached.account.savepoint();
            let base_version = cached.account.version;
            let base_hash = cached.last_hash.clone();
            let (plans, events) = self.decide_all(cached, &pending, &stream, now);
            if events.is_empty() {
                // Nothing to append, so no expected version will check the cache: answers
                // that depend on the state look at the stream first, and the batch is
                // decided again if another node moved it. Replays of commands with a caller
                // id answer with a record that never changes.
                let unsettled = plans
                    .iter()
                    .zip(&pending)
                    .any(|(plan, pending)| match plan {
                        Plan::Refused(_) => true,
                        Plan::Unwritten { decision, .. } => {
                            !(decision.replayed && pending.command.has_caller_id())
                        }
                        Plan::Written { .. } => false,
                    });
                if unsettled {
                    match self.catch_up(cached).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(err) => return fail_all(pending, &err),
                    }
                }
                return self.answer(cached, pending, plans, now).await;
            }
            let mut plans = plans;
            let applied: Vec<Envelope> = plans
                .iter_mut()
                .filter_map(|plan| match plan {
                    Plan::Written { envelopes, .. } => Some(std::mem::take(envelopes)),
                    _ => None,
                })
                .flatten()
                .collect();
            let written_commands = plans
                .iter()
                .filter(|plan| matches!(plan, Plan::Written { .. }))
                .count();
            let expected = ExpectedVersion::from_last_version(base_version);
            cached.in_flight = Some(InFlight {
                savepoint,
                applied,
                base_hash,
            });
            let appended = self.store.append(&stream, expected, events).await;
            match appended {
                Ok(appended) => {
                    let positions = match self.positions(&stream, appended, written_commands).await
                    {
                        Ok(positions) => positions,
                        Err(err) => {
                            // Durable, but where is unknown: the batch stays in flight, and
                            // the next holder reads its events back with their positions.
                            return fail_all(pending, &err);
                        }
                    };
                    if let Some(in_flight) = cached.in_flight.take() {
                        give_back(&mut plans, in_flight.applied);
                    }
                    self.settle(cached, &mut plans, &positions, now);
                    return self.answer(cached, pending, plans, now).await;
                }
                Err(
                    StoreError::WrongExpectedVersion { .. } | StoreError::EventIdConflict { .. },
                ) => {
                    // Another writer got there first, or already wrote one of these commands
                    // from a staler view: take the batch back out, catch up, decide again.
                    debug!(
                        stream = &*stream,
                        attempt, "lost the race for the stream; deciding the batch again"
                    );
                    cached.take_back();
                    backoff(attempt).await;
                    if let Err(err) = self.catch_up(cached).await {
                        return fail_all(pending, &err);
                    }
                }
                Err(err) => {
                    // The append may or may not have landed: the batch stays in flight, for
                    // the next holder to take back out and read the truth from the stream.
                    // Retries with the same ids are safe either way.
                    return fail_all(pending, &CommandError::from(err));
                }
            }
        }
        warn!(
            stream = &*stream,
            "gave up after {CONFLICT_ATTEMPTS_MAX} conflicting appends"
        );
        let err = CommandError::Store(StoreError::Unavailable(format!(
            "stream {stream} is too contended; retry with the same id"
        )));
        fail_all(pending, &err);
    }

    /// Decides each command in order against the cache, folding in the events of those that
    /// write, and returns the plans and the events to append.
    fn decide_all(
        &self,
        cached: &mut Cached,
        pending: &[Pending],
        stream: &str,
        now: Instant,
    ) -> (Vec<Plan>, Vec<NewEvent>) {
        let mut plans = Vec::with_capacity(pending.len());
        let mut events = Vec::new();
        let attach = self.store.wants_attachments();
        for pending in pending {
            let plan = match decide(&cached.account, &self.catalog, &pending.command, now) {
                Err(rejection) => Plan::Refused(rejection),
                Ok(decision) if decision.events.is_empty() => {
                    let core = (decision.replay_of.is_none() && wants_core(&decision.reply))
                        .then(|| cached.account.core.clone().map(Arc::new))
                        .flatten();
                    Plan::Unwritten {
                        decision,
                        version: cached.account.version,
                        core,
                    }
                }
                Ok(decision) => {
                    let cause = Cause {
                        command_id: batch_command_id(&pending.command, now, cached.account.version),
                        actor: pending.actor.clone(),
                    };
                    let sealed = seal(
                        stream,
                        cached.account.version,
                        &cached.last_hash,
                        &cause,
                        now,
                        now,
                        decision.events,
                    );
                    let mut envelopes = Vec::with_capacity(sealed.len());
                    for (envelope, payload) in sealed {
                        events.push(NewEvent {
                            event_id: envelope.event_id,
                            event_type: envelope.event.type_name().to_string(),
                            payload,
                            // The projector's feed in this process folds this instead of
                            // parsing the payload back.
                            attachment: attach.then(|| Attachment(Arc::new(envelope.clone()))),
                        });
                        cached.last_hash = envelope.hash.clone();
                        cached.account.evolve(&envelope.event);
                        envelopes.push(envelope);
                    }
                    let core = wants_core(&decision.reply)
                        .then(|| cached.account.core.clone().map(Arc::new))
                        .flatten();
                    Plan::Written {
                        reply: decision.reply,
                        core,
                        events: envelopes.len(),
                        envelopes,
                    }
                }
            };
            plans.push(plan);
        }
        (plans, events)
    }

    /// The global position of every event of a durable batch, in version order. One
    /// command's events answer with the append's position; several commands each answer
    /// with their own last event's, which the store reports when it numbered the batch's
    /// events consecutively and which are read back from it otherwise.
    async fn positions(
        &self,
        stream: &str,
        appended: AppendOutcome,
        written_commands: usize,
    ) -> Result<Vec<u64>, CommandError> {
        let count = usize::try_from(appended.last_version - appended.first_version + 1)
            .unwrap_or(usize::MAX);
        if written_commands <= 1 {
            return Ok(vec![appended.position; count]);
        }
        if let Some(positions) = appended.consecutive_positions() {
            // Reading them back cost a hot account a fifth of its CPU (issue 18's profile).
            return Ok(positions.collect());
        }
        let stored = self
            .store
            .read_stream(stream, appended.first_version, count)
            .await?;
        if stored.len() != count
            || stored.last().map(|event| event.position) != Some(appended.position)
        {
            return Err(CommandError::Corrupt {
                stream: stream.to_string(),
                message: format!(
                    "versions {}..={} read back as {} events",
                    appended.first_version,
                    appended.last_version,
                    stored.len()
                ),
            });
        }
        Ok(stored.iter().map(|event| event.position).collect())
    }

    /// Records the positions of a durable batch in the cache and its envelopes, and keeps
    /// the summary answers for replays.
    fn settle(&self, cached: &mut Cached, plans: &mut [Plan], positions: &[u64], now: Instant) {
        let mut positions = positions.iter().copied();
        let mut version = cached.positions.version;
        for plan in plans.iter_mut() {
            let Plan::Written {
                core, envelopes, ..
            } = plan
            else {
                continue;
            };
            for envelope in envelopes.iter_mut() {
                let position = positions.next();
                envelope.position = position;
                cached.positions.push(position.unwrap_or_default());
                version += 1;
            }
            if let Some(core) = core {
                cached.remember_answer(version, core.clone(), now);
            }
        }
        debug_assert_eq!(
            version, cached.account.version,
            "every event has a position"
        );
        cached.account.records.spill(RECORDS_WHOLE_MAX);
    }

    /// Answers every command of a batch whose events (if any) are durable.
    async fn answer(
        &self,
        cached: &mut Cached,
        pending: Vec<Pending>,
        plans: Vec<Plan>,
        now: Instant,
    ) {
        for (pending, plan) in pending.into_iter().zip(plans) {
            let result = match plan {
                Plan::Refused(rejection) => Err(rejection.into()),
                Plan::Unwritten {
                    decision,
                    version,
                    core,
                } => {
                    self.answer_unwritten(cached, decision, now, (version, core))
                        .await
                }
                Plan::Written {
                    reply,
                    core,
                    envelopes,
                    ..
                } => Ok(Outcome {
                    reply,
                    replayed: false,
                    position: envelopes.last().and_then(|envelope| envelope.position),
                    core,
                    at: now,
                    written: envelopes,
                }),
            };
            // A caller that gave up no longer listens; its command is done all the same.
            let _ = pending.reply.send(result);
        }
    }
}

/// Moves a durable batch's envelopes back from the cache's `InFlight` into the plans that
/// wrote them, in order.
fn give_back(plans: &mut [Plan], applied: Vec<Envelope>) {
    let mut applied = applied.into_iter();
    for plan in plans {
        if let Plan::Written {
            envelopes, events, ..
        } = plan
        {
            envelopes.extend(applied.by_ref().take(*events));
        }
    }
}

/// The command id sealed into a batch's events. Commands with a caller id keep theirs, so a
/// retried command maps to the same event ids. The others are named by their time, which
/// every command of a batch shares: the version they were decided at keeps two of them in
/// one batch (a submission, a rejection and a new submission) from sharing event ids.
fn batch_command_id(command: &Command, now: Instant, version: u64) -> String {
    let id = command.command_id(now);
    if command.has_caller_id() || matches!(command, Command::OpenAccount) {
        id
    } else {
        format!("{id}@{version}")
    }
}

/// Answers every command with `err` (store failures are retryable with the same ids).
fn fail_all(pending: Vec<Pending>, err: &CommandError) {
    for pending in pending {
        let _ = pending.reply.send(Err(copy_error(err)));
    }
}

/// The same error for another caller. Store errors carry no data worth sharing beyond their
/// kind and message.
fn copy_error(err: &CommandError) -> CommandError {
    match err {
        CommandError::Rejected(rejection) => CommandError::Rejected(rejection.clone()),
        CommandError::Store(StoreError::Invalid(message)) => {
            CommandError::Store(StoreError::Invalid(message.clone()))
        }
        CommandError::Store(StoreError::Incompatible(message)) => {
            CommandError::Store(StoreError::Incompatible(message.clone()))
        }
        CommandError::Store(StoreError::Unavailable(message)) => {
            CommandError::Store(StoreError::Unavailable(message.clone()))
        }
        CommandError::Store(other) => {
            CommandError::Store(StoreError::Unavailable(other.to_string()))
        }
        CommandError::Corrupt { stream, message } => CommandError::Corrupt {
            stream: stream.clone(),
            message: message.clone(),
        },
    }
}
