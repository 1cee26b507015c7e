//! What a crash test checks after every kill, for every adapter: each append the killed
//! appender acknowledged is stored unchanged, streams have no version gaps, no event id is
//! stored twice, positions only grow, and nothing committed before an earlier kill changed
//! or vanished. The adapters' crash tests differ in how they run and kill an appender; the
//! rule they hold it to lives here once.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::{GlobalPosition, RecordedEvent, StreamVersion};

/// One event a killed appender reported as acknowledged, from a line
/// `ack\tSTREAM\tVERSION\tPOSITION|-\tEVENT_ID\tTYPE\tPAYLOAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub stream: String,
    pub version: StreamVersion,
    /// Only the last event of an append has its position acknowledged.
    pub position: Option<GlobalPosition>,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: String,
}

impl Ack {
    /// Parses an `ack` line; panics on a malformed one (the test's own child wrote it).
    pub fn parse(line: &str) -> Ack {
        let fields: Vec<&str> = line.splitn(7, '\t').collect();
        let [_, stream, version, position, event_id, event_type, payload] = fields[..] else {
            panic!("malformed line from the child: {line:?}");
        };
        let number = |text: &str| -> u64 {
            text.parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"))
        };
        Ack {
            stream: stream.to_owned(),
            version: number(version),
            position: (position != "-").then(|| number(position)),
            event_id: event_id
                .parse()
                .unwrap_or_else(|_| panic!("not an event id in {line:?}")),
            event_type: event_type.to_owned(),
            payload: payload.to_owned(),
        }
    }
}

/// A small xorshift generator for random kill moments without a dependency; seed it from a
/// random UUID and print the seed so that a failure can be looked at again.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How an adapter's positions follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Strictly increasing.
    Increasing,
    /// 1, 2, 3, ... with no gap (the PostgreSQL store's counter).
    Contiguous,
}

/// Checks `all`, everything the store holds after a kill, against what was acknowledged
/// and what survived the kills before; then keeps `all` as the new survivors.
pub fn check_after_kill(
    context: &str,
    all: Vec<RecordedEvent>,
    positions: Positions,
    acked: &HashMap<Uuid, Ack>,
    survived: &mut Vec<RecordedEvent>,
) {
    assert!(
        all.len() >= survived.len() && all[..survived.len()] == survived[..],
        "{context}: events committed before an earlier kill changed or vanished"
    );
    let mut last_position = 0;
    let mut versions: HashMap<&str, StreamVersion> = HashMap::new();
    let mut ids = HashSet::new();
    for event in &all {
        match positions {
            Positions::Increasing => assert!(
                event.position > last_position,
                "{context}: position {} after {last_position}",
                event.position
            ),
            Positions::Contiguous => assert_eq!(
                event.position,
                last_position + 1,
                "{context}: positions have a gap or repeat"
            ),
        }
        last_position = event.position;
        let version = versions.entry(event.stream.as_str()).or_insert(0);
        *version += 1;
        assert_eq!(
            event.version, *version,
            "{context}: {} has version {} where {} was due",
            event.stream, event.version, *version
        );
        assert!(
            ids.insert(event.event_id),
            "{context}: event id {} stored twice",
            event.event_id
        );
    }
    let by_id: HashMap<Uuid, &RecordedEvent> = all.iter().map(|e| (e.event_id, e)).collect();
    for ack in acked.values() {
        let Some(stored) = by_id.get(&ack.event_id) else {
            panic!("{context}: acknowledged event {ack:?} is missing");
        };
        assert_eq!(
            (
                stored.stream.as_str(),
                stored.version,
                stored.event_type.as_str(),
                stored.payload.as_slice()
            ),
            (
                ack.stream.as_str(),
                ack.version,
                ack.event_type.as_str(),
                ack.payload.as_bytes()
            ),
            "{context}: acknowledged event {} changed",
            ack.event_id
        );
        if let Some(position) = ack.position {
            assert_eq!(
                stored.position, position,
                "{context}: {} moved",
                ack.event_id
            );
        }
    }
    *survived = all;
}
