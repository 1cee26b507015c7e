//! One view's projector: folds events into its rows in batches and commits each batch — the
//! changed rows and the checkpoint — in one SQLite transaction, then publishes it to memory.
//!
//! Exactly once, across kills: an event is applied only if its position is after the
//! checkpoint, and the checkpoint moves only in the transaction that writes the rows the
//! event changed. Killed before the commit, the batch is lost entirely and re-read from the
//! checkpoint; killed after it, the batch is entirely in. As a second guard every row keeps
//! its stream version: an event at or below it is skipped (counted in the metrics), one that
//! skips a version stops the projector rather than build a wrong view. A sparse view (tier,
//! trial-usage: see `Projection::SPARSE`) leaves a row alone for the events that cannot
//! change it, so its rows keep the version of the last event that did, and for it the guard
//! is that versions grow.
//!
//! Each view runs on its own thread, since SQLite calls block; events reach it through a
//! channel whose capacity the reader task acquires from a semaphore (backpressure without
//! blocking the async reader).

use std::any::Any;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use ledger_store::{EventStore, GlobalPosition};
use tokio::sync::{oneshot, Semaphore};

use crate::decode::{decode, Decoded};
use crate::error::ProjectorError;
use crate::handle::{new_row_map, RowMap, Versioned, ViewHandle};
use crate::metrics::{now_us, HeadPosition};
use crate::projection::Projection;
use crate::storage::{Checkpoint, SwitchOutcome, ViewFile};

mod threads;

pub(crate) use threads::{run_live, run_shadow, SwitchContext};

/// How a view thread cuts the event feed into batches.
///
/// Two modes, chosen by the age of a batch's first event. Live (fresh events): small batches
/// that close as soon as the feed pauses or `delay_max` passes, so the views stay fresh.
/// Catching up (events recorded more than `catch_up_age` ago: history, stale already): large
/// batches, because a row changed many times in one batch is written once and a batch's cost
/// is mostly the pages of the rows it rewrites. A catch-up batch closes as soon as it reaches
/// fresh events. A pause of the feed closes a batch only if the store is not known to hold
/// more (the reader may simply be slower for a moment).
#[derive(Debug, Clone)]
pub(crate) struct Batching {
    /// Most events in a live batch.
    pub events_max: usize,
    /// A batch closes once the feed has had nothing for this long (and nothing more is
    /// known to be in the store).
    pub idle: Duration,
    /// A live batch closes at the latest this long after its first event: under a steady
    /// stream the feed is never idle, and this bounds how stale the views get.
    pub delay_max: Duration,
    /// Most events in a batch while catching up.
    pub catch_up_events_max: usize,
    /// Longest batch while catching up.
    pub catch_up_delay_max: Duration,
    /// Events recorded longer ago than this are caught up on in large batches.
    pub catch_up_age: Duration,
    /// The newest position the store is known to have.
    pub head: Arc<HeadPosition>,
}

impl Batching {
    fn limits(&self, catching_up: bool) -> (usize, Duration) {
        if catching_up {
            (self.catch_up_events_max, self.catch_up_delay_max)
        } else {
            (self.events_max, self.delay_max)
        }
    }

    /// Whether the store is known to hold events after `position`.
    fn behind(&self, position: Option<GlobalPosition>) -> bool {
        self.head.get() > position
    }

    /// Whether an event recorded at `recorded_at_us` is history at `now_us`. Events without
    /// a time (other streams) say nothing, and count as fresh.
    fn is_old(&self, recorded_at_us: Option<i64>, now_us: i64) -> bool {
        let age_us = i64::try_from(self.catch_up_age.as_micros()).unwrap_or(i64::MAX);
        recorded_at_us.is_some_and(|at| now_us.saturating_sub(at) > age_us)
    }
}

/// What reaches a view thread.
pub(crate) enum Input {
    /// Events in global order, shared by every view the reader feeds.
    Events(Arc<Vec<Decoded>>),
    /// A rebuilt view, caught up, to switch over to (a `Shadow<P>` of this view's `P`).
    Adopt(Box<dyn Any + Send>, RebuildReply),
    /// Commit what is pending and end.
    Stop,
}

/// A rebuilt view sent for switch-over, and where to answer.
type Adoption = (Box<dyn Any + Send>, RebuildReply);

pub(crate) type RebuildReply = oneshot::Sender<Result<RebuildReport, ProjectorError>>;

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub view: crate::projection::ViewName,
    /// Events the rebuild applied from position zero.
    pub events_applied: u64,
    /// The position the view was switched over at.
    pub position: Option<GlobalPosition>,
    pub rows: usize,
    pub elapsed: Duration,
}

/// The state a rebuild hands to the live thread.
pub(crate) struct Shadow<P: Projection> {
    pub worker: ViewWorker<P>,
    pub started: Clock,
}

/// Events applied but not yet committed.
#[derive(Debug, Default)]
struct Pending {
    events: u64,
    position: Option<GlobalPosition>,
    last_recorded_at_us: Option<i64>,
    /// Accounts whose rows changed, each once.
    changed: Vec<Arc<str>>,
}

/// A view's working state: its file, every row, and the batch being built.
pub(crate) struct ViewWorker<P: Projection> {
    file: ViewFile,
    rows: RowMap<P::Row>,
    committed: Checkpoint,
    pending: Pending,
    /// Reused across rows to encode them without allocating.
    buffer: Vec<u8>,
    /// Where committed batches are published; `None` for a rebuild not yet switched over.
    publish: Option<ViewHandle<P::Row>>,
}

impl<P: Projection> ViewWorker<P> {
    /// Loads every row of `file`.
    pub(crate) fn load(
        file: ViewFile,
        committed: Checkpoint,
        publish: Option<ViewHandle<P::Row>>,
    ) -> Result<Self, ProjectorError> {
        let mut rows = new_row_map();
        file.for_each_row(|stored| {
            let row = P::decode(stored.row.as_bytes()).map_err(|error| ProjectorError::Row {
                view: P::VIEW,
                account_id: stored.account_id.clone(),
                path: file.path().to_owned(),
                message: error.to_string(),
            })?;
            rows.insert(
                Arc::from(stored.account_id),
                Arc::new(Versioned {
                    version: stored.version,
                    changed_at_position: stored.changed_at_position,
                    row,
                }),
            );
            Ok(())
        })?;
        let worker = ViewWorker {
            file,
            rows,
            committed,
            pending: Pending::default(),
            buffer: Vec::with_capacity(1024),
            publish,
        };
        if let Some(handle) = &worker.publish {
            handle.replace_all(worker.rows.clone(), worker.committed.position);
            handle
                .stats()
                .set_last_recorded_at(worker.committed.last_recorded_at_us);
        }
        Ok(worker)
    }

    /// The position applied so far, committed or not.
    pub(crate) fn position(&self) -> Option<GlobalPosition> {
        self.pending.position.or(self.committed.position)
    }

    pub(crate) fn committed(&self) -> &Checkpoint {
        &self.committed
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Folds one event in, unless the view already has it.
    pub(crate) fn apply(&mut self, decoded: &Decoded) -> Result<(), ProjectorError> {
        if self
            .position()
            .is_some_and(|position| decoded.position <= position)
        {
            return Ok(());
        }
        if self.pending.events == 0 {
            if let Some(handle) = &self.publish {
                handle.stats().batch_started(decoded.recorded_at_us);
            }
        }
        self.pending.events += 1;
        self.pending.position = Some(decoded.position);
        if decoded.recorded_at_us.is_some() {
            self.pending.last_recorded_at_us = decoded.recorded_at_us;
        }
        let Some(account) = &decoded.account else {
            return Ok(());
        };
        let committed = self.committed.position;
        match self.rows.get_mut(&*account.account_id) {
            Some(slot) => {
                if account.version <= slot.version {
                    // Already in the row: only a store that delivers an event twice gets here.
                    tracing::warn!(
                        view = %P::VIEW,
                        account_id = %account.account_id,
                        version = account.version,
                        position = decoded.position,
                        "skipping an event the view already has"
                    );
                    if let Some(handle) = &self.publish {
                        handle.stats().stale_skipped();
                    }
                    return Ok(());
                }
                // A sparse view's row skips the versions of the events that did not change
                // it: there the guard is that versions grow.
                if !P::SPARSE && account.version != slot.version + 1 {
                    return Err(ProjectorError::VersionGap {
                        view: P::VIEW,
                        account_id: account.account_id.to_string(),
                        have: slot.version,
                        got: account.version,
                        position: decoded.position,
                    });
                }
                if !P::changes(&account.event) {
                    return Ok(());
                }
                // Rows changed earlier in this batch are already listed.
                let listed = committed.is_none_or(|at| slot.changed_at_position > at);
                // Copies the row only if readers still share it (once per row and batch).
                let versioned = Arc::make_mut(slot);
                versioned.version = account.version;
                versioned.changed_at_position = decoded.position;
                P::update(&mut versioned.row, account);
                if !listed {
                    self.pending.changed.push(Arc::clone(&account.account_id));
                }
            }
            None => {
                if account.version != 1 {
                    return Err(ProjectorError::VersionGap {
                        view: P::VIEW,
                        account_id: account.account_id.to_string(),
                        have: 0,
                        got: account.version,
                        position: decoded.position,
                    });
                }
                let Some(row) = P::create(&account.event) else {
                    return Err(ProjectorError::NotOpened {
                        view: P::VIEW,
                        account_id: account.account_id.to_string(),
                        event_type: account.event.type_name(),
                        position: decoded.position,
                    });
                };
                self.rows.insert(
                    Arc::clone(&account.account_id),
                    Arc::new(Versioned {
                        version: 1,
                        changed_at_position: decoded.position,
                        row,
                    }),
                );
                self.pending.changed.push(Arc::clone(&account.account_id));
            }
        }
        Ok(())
    }

    /// Commits the pending batch (rows and checkpoint in one transaction), then publishes it.
    pub(crate) fn commit(&mut self) -> Result<(), ProjectorError> {
        if self.pending.events == 0 {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            position: self.pending.position,
            last_recorded_at_us: self
                .pending
                .last_recorded_at_us
                .or(self.committed.last_recorded_at_us),
            events_applied: self.committed.events_applied + self.pending.events,
            file_id: self.committed.file_id.clone(),
        };
        let rows = &self.rows;
        let changed = &self.pending.changed;
        let buffer = &mut self.buffer;
        self.file.commit(&checkpoint, |writer| {
            for account_id in changed {
                let Some(versioned) = rows.get(account_id) else {
                    continue;
                };
                buffer.clear();
                P::encode(&versioned.row, buffer).map_err(|error| ProjectorError::Encode {
                    view: P::VIEW,
                    account_id: account_id.to_string(),
                    message: error.to_string(),
                })?;
                // serde_json writes UTF-8; a failure here would be a serde_json bug.
                let json = std::str::from_utf8(buffer).map_err(|error| ProjectorError::Encode {
                    view: P::VIEW,
                    account_id: account_id.to_string(),
                    message: error.to_string(),
                })?;
                writer.put(
                    account_id,
                    versioned.version,
                    json,
                    versioned.changed_at_position,
                )?;
            }
            Ok(())
        })?;
        let pending = std::mem::take(&mut self.pending);
        self.committed = checkpoint;
        if let Some(handle) = &self.publish {
            // Counted before the position moves, so that whoever waited for the position
            // sees the counters of the batch that reached it.
            handle
                .stats()
                .batch_committed(pending.events, self.committed.last_recorded_at_us);
            let rows = &self.rows;
            handle.publish(
                pending.changed.into_iter().filter_map(|account_id| {
                    let row = Arc::clone(rows.get(&account_id)?);
                    Some((account_id, row))
                }),
                self.committed.position,
            );
        }
        Ok(())
    }
}

/// Why a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchEnd {
    /// It reached its size limit: more is probably waiting.
    Full,
    /// It reached its time limit.
    Delay,
    /// Caught up: the feed paused and the store is not known to hold more, or a catch-up
    /// batch reached fresh events.
    Idle,
    /// Asked to stop, or the feed is gone.
    Stop,
}

/// A filled batch: how it ended, and an adoption that arrived meanwhile.
struct Filled {
    end: BatchEnd,
    adoption: Option<Adoption>,
}

/// Gives the channel capacity back to the reader, and closes it when the thread ends so
/// that a reader waiting for capacity stops instead of waiting forever.
pub(crate) struct Capacity(pub Arc<Semaphore>);

impl Drop for Capacity {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How long to wait for input.
#[derive(Debug, Clone, Copy)]
enum Wait {
    For(Duration),
    Forever,
}

/// What [`Inbox::apply_next`] did.
enum Step {
    /// Applied an event recorded at this time (µs), if it had one.
    Applied(Option<i64>),
    /// Nothing arrived in time.
    Empty,
    Adopt(Adoption),
    /// Asked to stop, or the reader is gone.
    Stop,
}

/// A view thread's input: the channel, and the chunk being worked through (a batch may end
/// in the middle of a chunk; the rest opens the next batch).
pub(crate) struct Inbox {
    inputs: Receiver<Input>,
    capacity: Capacity,
    chunk: Option<(Arc<Vec<Decoded>>, usize)>,
}

impl Inbox {
    pub(crate) fn new(inputs: Receiver<Input>, capacity: Capacity) -> Self {
        Inbox {
            inputs,
            capacity,
            chunk: None,
        }
    }

    fn receive(&self, wait: Wait) -> Option<Input> {
        match self.inputs.try_recv() {
            Ok(input) => return Some(input),
            Err(TryRecvError::Disconnected) => return Some(Input::Stop),
            Err(TryRecvError::Empty) => {}
        }
        match wait {
            Wait::For(timeout) => match self.inputs.recv_timeout(timeout) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Input::Stop),
            },
            Wait::Forever => Some(self.inputs.recv().unwrap_or(Input::Stop)),
        }
    }

    /// Waits `wait` for a stop while a commit cannot be made: events that arrive stay for
    /// the next batch, and a rebuild is told the live view cannot switch over now.
    fn stop_requested(&mut self, wait: Duration) -> bool {
        if self.chunk.is_some() {
            std::thread::sleep(wait);
            return false;
        }
        match self.receive(Wait::For(wait)) {
            None => false,
            Some(Input::Events(chunk)) => {
                self.capacity.0.add_permits(1);
                self.chunk = Some((chunk, 0));
                false
            }
            Some(Input::Adopt(_, reply)) => {
                let _ = reply.send(Err(ProjectorError::Stopped(
                    "the live view cannot write its file now; rebuild again later".into(),
                )));
                false
            }
            Some(Input::Stop) => true,
        }
    }

    /// Applies the next event to `worker`, waiting for one at most `wait`.
    fn apply_next<P: Projection>(
        &mut self,
        worker: &mut ViewWorker<P>,
        wait: Wait,
    ) -> Result<Step, ProjectorError> {
        if self.chunk.is_none() {
            match self.receive(wait) {
                None => return Ok(Step::Empty),
                Some(Input::Events(chunk)) => {
                    // Out of the channel: its room goes back to the reader now, not when
                    // the batch commits (a batch may be far larger than the channel).
                    self.capacity.0.add_permits(1);
                    self.chunk = Some((chunk, 0));
                }
                Some(Input::Adopt(shadow, reply)) => return Ok(Step::Adopt((shadow, reply))),
                Some(Input::Stop) => return Ok(Step::Stop),
            }
        }
        let Some((chunk, next)) = self.chunk.as_mut() else {
            return Ok(Step::Empty);
        };
        let mut recorded_at_us = None;
        if let Some(decoded) = chunk.get(*next) {
            worker.apply(decoded)?;
            recorded_at_us = decoded.recorded_at_us;
        }
        *next += 1;
        if *next >= chunk.len() {
            self.chunk = None;
        }
        Ok(Step::Applied(recorded_at_us))
    }
}

/// How often a catch-up batch reads the clock to notice it reached fresh events.
const CLOCK_EVERY_EVENTS: usize = 1_024;

/// Fills one batch. Waits `first_wait` for its first event; an empty batch ends `Idle`.
fn fill_batch<P: Projection>(
    worker: &mut ViewWorker<P>,
    inbox: &mut Inbox,
    batching: &Batching,
    first_wait: Wait,
) -> Result<Filled, ProjectorError> {
    let filled = |end| Filled {
        end,
        adoption: None,
    };
    let adopt = |adoption| Filled {
        end: BatchEnd::Idle,
        adoption: Some(adoption),
    };
    let first_recorded_at = match inbox.apply_next(worker, first_wait)? {
        Step::Applied(recorded_at) => recorded_at,
        Step::Empty => return Ok(filled(BatchEnd::Idle)),
        Step::Adopt(adoption) => return Ok(adopt(adoption)),
        Step::Stop => return Ok(filled(BatchEnd::Stop)),
    };
    let mut now = now_us();
    let catching_up = batching.is_old(first_recorded_at, now);
    let (events_max, delay_max) = batching.limits(catching_up);
    let mut applied = 1;
    let started = Clock::now();
    loop {
        if applied >= events_max {
            return Ok(filled(BatchEnd::Full));
        }
        let Some(left) = delay_max.checked_sub(started.elapsed()) else {
            return Ok(filled(BatchEnd::Delay));
        };
        match inbox.apply_next(worker, Wait::For(batching.idle.min(left)))? {
            Step::Applied(recorded_at) => {
                applied += 1;
                if catching_up {
                    if applied % CLOCK_EVERY_EVENTS == 0 {
                        now = now_us();
                    }
                    if recorded_at.is_some() && !batching.is_old(recorded_at, now) {
                        // History is done: publish it, and follow live from here.
                        return Ok(filled(BatchEnd::Idle));
                    }
                }
            }
            // The reader may only be slower for a moment: wait on while the store has more.
            Step::Empty if batching.behind(worker.position()) => {}
            Step::Empty => return Ok(filled(BatchEnd::Idle)),
            Step::Adopt(adoption) => return Ok(adopt(adoption)),
            Step::Stop => return Ok(filled(BatchEnd::Stop)),
        }
    }
}
