//! Projection metrics: position, lag in events and in milliseconds, events applied, batches.
//! Counters are atomics updated by the projector threads; [`ViewMetrics`] is a snapshot the
//! HTTP service renders as Prometheus text.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ledger_store::GlobalPosition;

use crate::projection::ViewName;

/// `None` in the atomics that hold optional timestamps.
const NO_TIME: i64 = i64::MIN;

/// The newest position the store is known to have. Positions of both stores start above 0
/// (SQLite rowids at 1; EventStoreDB's 0 is "no position"), so 0 stands for "unknown".
#[derive(Debug, Default)]
pub(crate) struct HeadPosition(AtomicU64);

impl HeadPosition {
    /// Records that the store has at least `position`.
    pub(crate) fn observe(&self, position: GlobalPosition) {
        self.0.fetch_max(position, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Option<GlobalPosition> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            position => Some(position),
        }
    }
}

/// Counters of one view, shared between its projector thread and its handles.
#[derive(Debug)]
pub(crate) struct ViewStats {
    /// `recorded_at` (µs) of the last committed event that had one.
    last_recorded_at_us: AtomicI64,
    /// `recorded_at` (µs) of the oldest event applied but not yet committed.
    pending_since_us: AtomicI64,
    events_applied: AtomicU64,
    batches: AtomicU64,
    stale_skipped: AtomicU64,
    rebuilding: AtomicBool,
    rebuild_position: AtomicU64,
    rebuild_events: AtomicU64,
}

impl Default for ViewStats {
    fn default() -> Self {
        ViewStats {
            last_recorded_at_us: AtomicI64::new(NO_TIME),
            pending_since_us: AtomicI64::new(NO_TIME),
            events_applied: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            stale_skipped: AtomicU64::new(0),
            rebuilding: AtomicBool::new(false),
            rebuild_position: AtomicU64::new(0),
            rebuild_events: AtomicU64::new(0),
        }
    }
}

fn optional_time(value: i64) -> Option<i64> {
    (value != NO_TIME).then_some(value)
}

impl ViewStats {
    pub(crate) fn batch_started(&self, recorded_at_us: Option<i64>) {
        self.pending_since_us
            .store(recorded_at_us.unwrap_or(NO_TIME), Ordering::Relaxed);
    }

    pub(crate) fn batch_committed(&self, events: u64, last_recorded_at_us: Option<i64>) {
        if let Some(at) = last_recorded_at_us {
            self.last_recorded_at_us.store(at, Ordering::Relaxed);
        }
        self.pending_since_us.store(NO_TIME, Ordering::Relaxed);
        self.events_applied.fetch_add(events, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// For followers: the file moved on to `last_recorded_at_us`.
    pub(crate) fn set_last_recorded_at(&self, last_recorded_at_us: Option<i64>) {
        if let Some(at) = last_recorded_at_us {
            self.last_recorded_at_us.store(at, Ordering::Relaxed);
        }
    }

    pub(crate) fn stale_skipped(&self) {
        self.stale_skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a rebuild as started; `false` if one already runs.
    pub(crate) fn start_rebuild(&self) -> bool {
        let started = self
            .rebuilding
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if started {
            self.rebuild_position.store(0, Ordering::Relaxed);
            self.rebuild_events.store(0, Ordering::Relaxed);
        }
        started
    }

    pub(crate) fn rebuild_progress(&self, position: Option<GlobalPosition>, events: u64) {
        self.rebuild_position
            .store(position.unwrap_or(0), Ordering::Relaxed);
        self.rebuild_events.store(events, Ordering::Relaxed);
    }

    pub(crate) fn end_rebuild(&self) {
        self.rebuilding.store(false, Ordering::Release);
    }

    pub(crate) fn snapshot(
        &self,
        view: ViewName,
        position: Option<GlobalPosition>,
        head_position: Option<GlobalPosition>,
        rows: usize,
        now_us: i64,
    ) -> ViewMetrics {
        let lag_events = match (head_position, position) {
            (Some(head), Some(position)) => head.saturating_sub(position),
            (Some(head), None) => head,
            (None, _) => 0,
        };
        let behind = lag_events > 0;
        // While behind, the lag is the age of the oldest event still waiting: the first one
        // of the batch being applied if there is one, else the last applied one (the next is
        // younger than that, so this is an upper bound until it arrives).
        let oldest = optional_time(self.pending_since_us.load(Ordering::Relaxed))
            .or_else(|| optional_time(self.last_recorded_at_us.load(Ordering::Relaxed)));
        let lag_ms = match oldest {
            Some(at) if behind => u64::try_from(now_us.saturating_sub(at) / 1_000).unwrap_or(0),
            _ => 0,
        };
        let rebuild = self
            .rebuilding
            .load(Ordering::Acquire)
            .then(|| RebuildProgress {
                position: match self.rebuild_position.load(Ordering::Relaxed) {
                    0 => None,
                    position => Some(position),
                },
                events_applied: self.rebuild_events.load(Ordering::Relaxed),
            });
        ViewMetrics {
            view,
            position,
            head_position,
            lag_events,
            lag_ms,
            events_applied: self.events_applied.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            stale_events_skipped: self.stale_skipped.load(Ordering::Relaxed),
            rows,
            rebuild,
        }
    }
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// A snapshot of one view's projection metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMetrics {
    pub view: ViewName,
    /// Position of the last event the view has applied (and committed); `None` before any.
    pub position: Option<GlobalPosition>,
    /// The newest position the store is known to have (refreshed a few times a second and
    /// by every event read); `None` when unknown or empty.
    pub head_position: Option<GlobalPosition>,
    /// `head_position - position`. On SQLite positions are contiguous, so this counts the
    /// events not yet applied. On EventStoreDB positions are commit positions in the
    /// transaction log (bytes), so it is a distance, not a count; 0 still means caught up.
    pub lag_events: u64,
    /// 0 when caught up; while behind, now minus the `recorded_at` of the oldest event the
    /// view is waiting for: the first of the batch being applied, or, between batches, the
    /// last one applied (an upper bound until the next event arrives).
    pub lag_ms: u64,
    /// Events applied since this process started (including events of other streams and
    /// duplicates skipped, which also move the position).
    pub events_applied: u64,
    /// Batches committed since this process started.
    pub batches: u64,
    /// Events skipped because the row already had their version (should stay 0).
    pub stale_events_skipped: u64,
    /// Accounts in the view.
    pub rows: usize,
    /// A side-by-side rebuild in progress.
    pub rebuild: Option<RebuildProgress>,
}

/// How far a side-by-side rebuild got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    pub position: Option<GlobalPosition>,
    pub events_applied: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_US: i64 = 1_000_000_000;

    fn snapshot(stats: &ViewStats, position: Option<u64>, head: Option<u64>) -> ViewMetrics {
        stats.snapshot(ViewName::Balance, position, head, 7, NOW_US)
    }

    #[test]
    fn caught_up_means_no_lag_however_old_the_last_event() {
        let stats = ViewStats::default();
        stats.batch_committed(10, Some(NOW_US - 3_600_000_000));
        let metrics = snapshot(&stats, Some(10), Some(10));
        assert_eq!((metrics.lag_events, metrics.lag_ms), (0, 0));
        assert_eq!(
            (metrics.events_applied, metrics.batches, metrics.rows),
            (10, 1, 7)
        );
    }

    #[test]
    fn behind_the_lag_is_the_age_of_the_oldest_event_waiting() {
        let stats = ViewStats::default();
        stats.batch_committed(10, Some(NOW_US - 90_000));
        // Between batches: the last applied event bounds the age of the next.
        let metrics = snapshot(&stats, Some(10), Some(25));
        assert_eq!((metrics.lag_events, metrics.lag_ms), (15, 90));
        // A batch is being applied: its first event is the oldest waiting.
        stats.batch_started(Some(NOW_US - 40_000));
        assert_eq!(snapshot(&stats, Some(10), Some(25)).lag_ms, 40);
        stats.batch_committed(15, Some(NOW_US - 1_000));
        assert_eq!(snapshot(&stats, Some(25), Some(25)).lag_ms, 0);
    }

    #[test]
    fn nothing_applied_yet_counts_every_event_as_lag() {
        let stats = ViewStats::default();
        let metrics = snapshot(&stats, None, Some(42));
        assert_eq!((metrics.lag_events, metrics.lag_ms), (42, 0));
        let metrics = snapshot(&stats, None, None);
        assert_eq!((metrics.lag_events, metrics.lag_ms), (0, 0));
    }

    #[test]
    fn a_clock_behind_the_store_never_gives_a_negative_lag() {
        let stats = ViewStats::default();
        stats.batch_committed(1, Some(NOW_US + 5_000_000));
        assert_eq!(snapshot(&stats, Some(1), Some(2)).lag_ms, 0);
    }

    #[test]
    fn a_rebuild_reports_its_progress_until_it_ends() {
        let stats = ViewStats::default();
        assert!(stats.start_rebuild());
        assert!(!stats.start_rebuild(), "one rebuild at a time");
        stats.rebuild_progress(Some(500), 500);
        assert_eq!(
            snapshot(&stats, Some(900), Some(900)).rebuild,
            Some(RebuildProgress {
                position: Some(500),
                events_applied: 500
            })
        );
        stats.end_rebuild();
        assert_eq!(snapshot(&stats, Some(900), Some(900)).rebuild, None);
    }
}
