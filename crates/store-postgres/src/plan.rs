//! A group commit worked out in memory before anything is written: which appends are
//! accepted (and at which versions and positions), and what each refused one is told,
//! following the conformance rules for retries and conflicts.

use std::collections::HashMap;

use deadpool_postgres::Object;
use ledger_store::{AppendOutcome, StoreError, StreamVersion};
use uuid::Uuid;

use crate::reader::sql_int;
use crate::schema::Sql;
use crate::writer::{stopped, Answer, Request};

/// An event in a slot, stored or about to be.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    position: u64,
    event_id: Uuid,
    event_type: &'a str,
    payload: &'a [u8],
}

/// The accepted events as the parallel arrays the `append` statement takes (positions are
/// handed out by the statement, in array order).
#[derive(Debug, Default)]
pub(crate) struct Rows<'b> {
    pub(crate) streams: Vec<&'b str>,
    pub(crate) versions: Vec<i64>,
    pub(crate) ids: Vec<Uuid>,
    pub(crate) types: Vec<&'b str>,
    pub(crate) payloads: Vec<&'b [u8]>,
}

/// A group commit worked out in memory before anything is written.
pub(crate) struct Plan<'b> {
    /// The last position handed out so far.
    pub(crate) last_position: u64,
    /// Every touched stream's last version, moved by the appends accepted so far.
    pub(crate) heads: HashMap<String, StreamVersion>,
    pub(crate) rows: Rows<'b>,
    /// Slots filled by this group, so a retry within the group is recognised.
    filled: HashMap<(&'b str, StreamVersion), Slot<'b>>,
    answers: Vec<Option<Answer>>,
    /// Appends whose expected version did not match: (index in the batch, the stream's
    /// last version at their turn).
    pub(crate) mismatches: Vec<(usize, StreamVersion)>,
}

impl<'b> Plan<'b> {
    pub(crate) fn new(
        last_position: u64,
        heads: HashMap<String, StreamVersion>,
        size: usize,
    ) -> Self {
        Self {
            last_position,
            heads,
            rows: Rows::default(),
            filled: HashMap::new(),
            answers: (0..size).map(|_| None).collect(),
            mismatches: Vec::new(),
        }
    }

    pub(crate) fn apply(&mut self, index: usize, request: &'b Request) {
        let head = self.heads.get(&request.stream).copied().unwrap_or(0);
        let base = request.expected.last_version();
        if base != head {
            self.mismatches.push((index, head));
            return;
        }
        let stream = request.stream.as_str();
        let first_position = self.last_position + 1;
        for (offset, event) in request.events.iter().enumerate() {
            let version = base + 1 + offset as u64;
            self.last_position += 1;
            self.rows.streams.push(stream);
            self.rows.versions.push(sql_int(version));
            self.rows.ids.push(event.event_id);
            self.rows.types.push(&event.event_type);
            self.rows.payloads.push(&event.payload);
            self.filled.insert(
                (stream, version),
                Slot {
                    position: self.last_position,
                    event_id: event.event_id,
                    event_type: &event.event_type,
                    payload: &event.payload,
                },
            );
        }
        let last_version = base + request.events.len() as u64;
        self.heads.insert(request.stream.clone(), last_version);
        self.answers[index] = Some(Ok(AppendOutcome {
            first_version: base + 1,
            last_version,
            position: self.last_position,
            first_position: Some(first_position),
        }));
    }

    /// Moves the positions of the accepted appends by `offset`, for a plan counted from 0.
    /// Only for a plan without mismatches, whose answers are all accepted appends.
    pub(crate) fn shift_positions(&mut self, offset: u64) {
        for outcome in self.answers.iter_mut().flatten().flatten() {
            outcome.position += offset;
            outcome.first_position = outcome.first_position.map(|first| first + offset);
        }
        self.last_position += offset;
    }

    /// The stored slots the mismatched appends aim at (those this group fills excluded),
    /// as (stream, version) arrays.
    fn stored_slots_wanted(&self, batch: &'b [Request]) -> (Vec<&'b str>, Vec<i64>) {
        let mut streams = Vec::new();
        let mut versions = Vec::new();
        for &(index, actual) in &self.mismatches {
            let request = &batch[index];
            let base = request.expected.last_version();
            let last_slot = (base + request.events.len() as u64).min(actual);
            for version in base + 1..=last_slot {
                if !self
                    .filled
                    .contains_key(&(request.stream.as_str(), version))
                {
                    streams.push(request.stream.as_str());
                    versions.push(sql_int(version));
                }
            }
        }
        (streams, versions)
    }

    pub(crate) fn settle_mismatches(&mut self, batch: &'b [Request], stored: &StoredSlots) {
        for &(index, actual) in &self.mismatches {
            let answer = settle(&batch[index], actual, |version| {
                let key = (batch[index].stream.as_str(), version);
                self.filled.get(&key).copied().or_else(|| {
                    stored
                        .get(&(batch[index].stream.clone(), version))
                        .map(StoredSlot::as_slot)
                })
            });
            self.answers[index] = Some(answer);
        }
    }

    pub(crate) fn into_answers(self) -> Vec<Answer> {
        self.answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(stopped())))
            .collect()
    }
}

/// A stored event read back to settle a mismatch.
#[derive(Debug)]
pub(crate) struct StoredSlot {
    position: u64,
    event_id: Uuid,
    event_type: String,
    payload: Vec<u8>,
}

impl StoredSlot {
    fn as_slot(&self) -> Slot<'_> {
        Slot {
            position: self.position,
            event_id: self.event_id,
            event_type: &self.event_type,
            payload: &self.payload,
        }
    }
}

pub(crate) type StoredSlots = HashMap<(String, StreamVersion), StoredSlot>;

pub(crate) async fn read_slots(
    client: &Object,
    sql: &Sql,
    batch: &[Request],
    plan: &Plan<'_>,
) -> Result<StoredSlots, tokio_postgres::Error> {
    let (streams, versions) = plan.stored_slots_wanted(batch);
    let mut stored = HashMap::with_capacity(streams.len());
    if streams.is_empty() {
        return Ok(stored);
    }
    let statement = client.prepare_cached(&sql.slots).await?;
    for row in client.query(&statement, &[&streams, &versions]).await? {
        let event = crate::reader::recorded(&row)?;
        stored.insert(
            (event.stream, event.version),
            StoredSlot {
                position: event.position,
                event_id: event.event_id,
                event_type: event.event_type,
                payload: event.payload,
            },
        );
    }
    Ok(stored)
}

/// Answers an append whose expected version is not the stream's last (`actual`), given the
/// events in its slots: the stored outcome if it is a retry, else the conflict (see the
/// conformance rules).
fn settle<'s>(
    request: &Request,
    actual: StreamVersion,
    slot: impl Fn(StreamVersion) -> Option<Slot<'s>>,
) -> Answer {
    let wrong_version = || {
        Err(StoreError::WrongExpectedVersion {
            stream: request.stream.clone(),
            expected: request.expected,
            actual,
        })
    };
    let base = request.expected.last_version();
    if base >= actual {
        return wrong_version();
    }
    let mut all_match = true;
    let mut position = 0;
    let mut first = None;
    for (offset, new) in request.events.iter().enumerate() {
        let version = base + 1 + offset as u64;
        let Some(stored) = (version <= actual).then(|| slot(version)).flatten() else {
            all_match = false;
            break;
        };
        if stored.event_id != new.event_id {
            all_match = false;
            continue;
        }
        if stored.event_type != new.event_type || stored.payload != new.payload.as_slice() {
            return Err(StoreError::EventIdConflict {
                event_id: new.event_id,
            });
        }
        position = stored.position;
        first = first.or(Some(position));
    }
    if !all_match {
        return wrong_version();
    }
    Ok(AppendOutcome::retried(
        base + 1,
        base + request.events.len() as u64,
        first,
        position,
    ))
}
