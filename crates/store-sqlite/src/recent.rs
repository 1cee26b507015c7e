//! The events this process's writer committed last, kept in memory so that subscriptions in
//! the same process take new events from here instead of reading them back from the file.
//!
//! Each live subscriber (the projector, the alerts projector) read every committed event
//! back through a pooled connection on a blocking thread: about a sixth of a charge's CPU in
//! the callgrind profile. The writer already holds those events when it commits them.
//!
//! Exactness: an event is added only after its transaction committed, and a subscriber takes
//! events from here only while their positions follow its own last one without a gap. A
//! position missing here (another process appended to the file, or the event fell out of
//! the window) sends the subscriber back to the file, which always has it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use ledger_store::{GlobalPosition, RecordedEvent};

/// Events kept. A subscriber further behind than this reads the file, as it would anyway
/// while catching up. Live subscribers trail the writer by a batch or two (the feeder reads
/// ahead of the view threads), far less than this even at 60,000 events a second. Each
/// event is about 700 bytes here: 4,096 of them were 3 MB of a soak node's heap that a
/// freshly started node does not hold (jemalloc heap profile, 2026-11-28).
pub(crate) const RECENT_EVENTS_MAX: usize = 2_048;

/// The window of committed events, in position order.
#[derive(Debug)]
pub(crate) struct Recent {
    events: Mutex<VecDeque<RecordedEvent>>,
    capacity: usize,
    /// Whether anything in this process subscribed: until then the events' attachments
    /// reach nobody, and appenders need not build them.
    subscribed: AtomicBool,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Recent {
            events: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            subscribed: AtomicBool::new(false),
        }
    }

    /// Notes that a subscription of this process reads from the window.
    pub(crate) fn note_subscriber(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn has_subscribers(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Adds the events of one committed transaction, in position order.
    pub(crate) fn committed(&self, events: impl IntoIterator<Item = RecordedEvent>) {
        let mut window = self.lock();
        for event in events {
            if window.len() == self.capacity {
                window.pop_front();
            }
            window.push_back(event);
        }
    }

    /// Up to `limit` events right after `after` (`None`: from the first position, 1), in
    /// order and without a gap; `None` if the window does not hold the very next one.
    pub(crate) fn after(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Option<Vec<RecordedEvent>> {
        let first = after.map_or(Some(1), |position| position.checked_add(1))?;
        let window = self.lock();
        // Positions ascend, with gaps where another process appended.
        let start = window.partition_point(|event| event.position < first);
        let out: Vec<RecordedEvent> = (first..)
            .zip(window.iter().skip(start).take(limit))
            .take_while(|(expected, event)| event.position == *expected)
            .map(|(_, event)| event.clone())
            .collect();
        (!out.is_empty()).then_some(out)
    }

    /// The newest position held (`None` while nothing was committed here).
    pub(crate) fn newest(&self) -> Option<GlobalPosition> {
        self.lock().back().map(|event| event.position)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RecordedEvent>> {
        // A poisoned lock only means a subscriber panicked while copying; the window is intact.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(position: GlobalPosition) -> RecordedEvent {
        RecordedEvent {
            stream: "account-a".into(),
            version: position,
            position,
            event_id: Uuid::from_u128(u128::from(position)),
            event_type: "charged".into(),
            payload: vec![b'{', b'}'],
            attachment: None,
        }
    }

    fn positions(events: Option<Vec<RecordedEvent>>) -> Option<Vec<GlobalPosition>> {
        events.map(|events| events.iter().map(|event| event.position).collect())
    }

    #[test]
    fn gives_the_events_right_after_a_position_up_to_the_limit() {
        let recent = Recent::new(8);
        recent.committed((1..=5).map(event));
        assert_eq!(positions(recent.after(None, 10)), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(positions(recent.after(Some(2), 2)), Some(vec![3, 4]));
        assert_eq!(positions(recent.after(Some(5), 10)), None, "nothing newer");
        assert_eq!(recent.newest(), Some(5));
    }

    #[test]
    fn a_position_it_does_not_hold_sends_the_reader_to_the_file() {
        let recent = Recent::new(4);
        recent.committed((1..=6).map(event));
        // 1 and 2 fell out of the window: a reader after 1 needs 2, which only the file has.
        assert_eq!(positions(recent.after(Some(1), 10)), None);
        assert_eq!(positions(recent.after(None, 10)), None);
        assert_eq!(positions(recent.after(Some(2), 10)), Some(vec![3, 4, 5, 6]));
    }

    #[test]
    fn a_gap_of_another_writer_ends_what_is_given() {
        let recent = Recent::new(8);
        recent.committed([event(1), event(2)]);
        // Positions 3 and 4 were appended to the file by another process.
        recent.committed([event(5), event(6)]);
        assert_eq!(positions(recent.after(Some(1), 10)), Some(vec![2]));
        assert_eq!(positions(recent.after(Some(2), 10)), None);
        assert_eq!(positions(recent.after(Some(4), 10)), Some(vec![5, 6]));
    }

    /// 4,096 events of about 700 bytes were 3 MB that only a node which served the writes
    /// held (issue 15's soak). The window must stay at its bound however much is written,
    /// and the bound must stay near what live subscribers need.
    #[test]
    fn regression_the_window_of_recent_events_was_a_soak_nodes_extra_heap() {
        const { assert!(RECENT_EVENTS_MAX <= 2_048) };
        let recent = Recent::new(RECENT_EVENTS_MAX);
        for batch in 0..100u64 {
            recent.committed((1..=64).map(|i| event(batch * 64 + i)));
            assert!(recent.lock().len() <= RECENT_EVENTS_MAX);
        }
        assert_eq!(recent.lock().len(), RECENT_EVENTS_MAX);
        assert_eq!(recent.newest(), Some(6_400));
    }
}
