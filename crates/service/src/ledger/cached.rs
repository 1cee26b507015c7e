//! One account's cached state: what the command handler keeps between commands to continue
//! the account's hash chain and to answer retries without reading the store, and the bounds
//! that keep it from growing with the account's history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ledger_domain::envelope::{stream_name, Envelope, GENESIS_HASH};
use ledger_domain::state::{Core, Savepoint};
use ledger_domain::{Account, Instant};

/// Charges, resolved holds, grants and unpaid top-ups an account keeps whole: between this
/// many and twice as many, the most recent. Older ones are spilled to a fingerprint (24
/// bytes instead of a kilobyte), and a retry that names one reads its events back from the
/// stream. Keeping them all whole made a serving node grow with its hot accounts' history
/// for ever (issue 15's soak: a third of its size in ten minutes).
pub(super) const RECORDS_WHOLE_MAX: usize = 1_024;
/// First answers of summary-answering commands kept per cached account; older ones are
/// rebuilt from the stream when replayed.
pub(super) const FIRST_ANSWERS_MAX: usize = 16;
/// ... and what they may weigh together, in buckets and open holds: each answer is a copy of
/// the account's core, which holds every bucket not yet expired, spent or not. An account
/// with a few dozen buckets keeps 16 answers; one that bought a thousand lots keeps one.
/// Sixteen copies of such a core each were 13 MB of the 44 MB a long-running node held
/// beyond a fresh one on the same history (issue 15's soak). At 4,096 the soak's eight busy
/// accounts still kept 3.3 MB of copies (a jemalloc heap profile of the steady node against
/// a fresh one, 2026-11-28): a full cache is memory a fresh node does not have, and a retry
/// of an answer that old is rare enough to read its stream again.
pub(super) const FIRST_ANSWERS_WEIGHT_MAX: usize = 1_024;
/// Positions of the latest events kept per cached account.
pub(super) const POSITIONS_MAX: usize = 2_048;

/// One account's cached state, with what is needed to continue its hash chain and to answer
/// replays without reading the store.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) account: Account,
    /// The account's stream, named once: every batch appends to it.
    pub(super) stream: Arc<str>,
    pub(super) last_hash: String,
    /// The global positions of the latest events.
    pub(super) positions: Positions,
    /// The account right after recent summary-answering commands, by the version of their
    /// event, with the instant they were answered at: what a replay shows again. Bounded;
    /// a miss rebuilds the state from the stream.
    pub(super) first_answers: BTreeMap<u64, (Arc<Core>, Instant)>,
    /// A batch folded in whose append has not come back: set while an append is in flight.
    /// Still set when a holder finds it, the batch was dropped half-way (its caller went
    /// away) or its append failed without saying whether it landed: the holder takes the
    /// batch back out and reads the stream from there, where it finds the batch's events if
    /// they landed.
    pub(super) in_flight: Option<InFlight>,
}

impl Cached {
    pub(super) fn new(account_id: &str) -> Cached {
        Cached {
            account: Account::new(account_id),
            stream: stream_name(account_id).into(),
            last_hash: GENESIS_HASH.to_string(),
            positions: Positions::default(),
            first_answers: BTreeMap::new(),
            in_flight: None,
        }
    }

    /// Takes back the batch whose append's fate is unknown, if any, leaving the account as it
    /// was before it; true when there was one. Until then the cache may hold events the
    /// stream does not, so the caller must catch up before deciding.
    ///
    /// Forgetting the whole account instead, as this did before, made the next command on it
    /// read its entire stream again: a caller that hung up mid-append (a client timeout, or
    /// a load generator closing its connections) cost the account's next command hundreds
    /// of milliseconds once its history was long (issue 18: a p99 of 0.4-4 s at 256
    /// connections over HTTP).
    pub(super) fn take_back(&mut self) -> bool {
        let Some(in_flight) = self.in_flight.take() else {
            return false;
        };
        self.account.rollback(
            in_flight.savepoint,
            in_flight.applied.iter().map(|envelope| &envelope.event),
        );
        self.last_hash = in_flight.base_hash;
        true
    }

    pub(super) fn last_position(&self) -> Option<u64> {
        self.positions.recent.back().copied()
    }

    /// Keeps the answer given at `version`, forgetting the oldest ones beyond the bounds; the
    /// newest is always kept.
    pub(super) fn remember_answer(&mut self, version: u64, core: Arc<Core>, at: Instant) {
        self.first_answers.insert(version, (core, at));
        while self.first_answers.len() > 1
            && (self.first_answers.len() > FIRST_ANSWERS_MAX
                || self.first_answers_weight() > FIRST_ANSWERS_WEIGHT_MAX)
        {
            self.first_answers.pop_first();
        }
    }

    /// What the remembered answers weigh together (see [`answer_weight`]).
    pub(super) fn first_answers_weight(&self) -> usize {
        self.first_answers
            .values()
            .map(|(core, _)| answer_weight(core))
            .sum()
    }
}

/// A batch whose append is in flight, and what takes it back out of the cache.
#[derive(Debug)]
pub(super) struct InFlight {
    /// The account before the batch.
    pub(super) savepoint: Savepoint,
    /// The batch's events, in the order they were folded in: moved here from the batch's
    /// plans while the append is in flight and back once it is durable (copying them cost
    /// every charge an event clone and drop).
    pub(super) applied: Vec<Envelope>,
    /// The chain's last hash before the batch.
    pub(super) base_hash: String,
}

/// The global positions of an account's latest events, by version. Only the last event of a
/// command is ever looked up, as the command's answer, and mostly a recent one: a replay of
/// an older command reads its position from the stream. Every position kept was 8 bytes per
/// event for as long as a node ran.
#[derive(Debug, Default)]
pub(super) struct Positions {
    /// Events whose positions were pushed: the version of the newest.
    pub(super) version: u64,
    pub(super) recent: VecDeque<u64>,
}

impl Positions {
    pub(super) fn push(&mut self, position: u64) {
        self.version += 1;
        self.recent.push_back(position);
        if self.recent.len() > POSITIONS_MAX {
            self.recent.pop_front();
        }
    }

    /// The position of the `version`-th event when it is kept; `Err` when the event is older
    /// than the kept ones.
    pub(super) fn get(&self, version: u64) -> Result<Option<u64>, ()> {
        if version == 0 || version > self.version {
            return Ok(None);
        }
        let back = usize::try_from(self.version - version).map_err(|_| ())?;
        match self.recent.len().checked_sub(back + 1) {
            Some(index) => Ok(self.recent.get(index).copied()),
            None => Err(()),
        }
    }
}

/// What keeping a copy of `core` costs, in the units of [`FIRST_ANSWERS_WEIGHT_MAX`].
pub(super) fn answer_weight(core: &Core) -> usize {
    1 + core.balance.buckets.len() + core.balance.open_holds.len()
}
