//! The balance over time (SPEC section 13): one point per step, each the balance explain
//! gives as of that instant. Computed in one pass: the stream is folded forward once, and at
//! each point the housekeeping due by then is settled on a copy of the small core, exactly
//! as explain settles it at `at` (the same `housekeeping`, the same `balance_at`).

use serde::Serialize;

use crate::credits::Credits;
use crate::decide::housekeeping;
use crate::envelope::Envelope;
use crate::events::Event;
use crate::state::{evolve_core, Balance, Core, PlanState, Trials};
use crate::time::{rfc3339, DurationS, Instant};

use super::fold::balance_at;
use super::BalanceAt;

/// At most this many points per history: bounds the work one request can ask for.
pub const HISTORY_POINTS_MAX: u64 = 1_000;

/// Why a history cannot be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("from ({from}) must not be after to ({to})")]
    Reversed { from: String, to: String },
    #[error("step must be at least 1s")]
    ZeroStep,
    #[error("from {from} to {to} every {step} is {points} points; at most {HISTORY_POINTS_MAX}")]
    TooManyPoints {
        from: String,
        to: String,
        step: DurationS,
        points: u64,
    },
    #[error("to ({to}) is later than now ({now}); the balance then could still change")]
    Future { to: String, now: String },
}

/// The instants of a history: `from`, then every `step` after it up to and including `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRange {
    from: Instant,
    step: DurationS,
    points: u64,
}

impl HistoryRange {
    /// Checks a range asked for at `now`: `from <= to <= now`, a step of a second or more,
    /// and at most [`HISTORY_POINTS_MAX`] points.
    pub fn new(
        from: Instant,
        to: Instant,
        step: DurationS,
        now: Instant,
    ) -> Result<HistoryRange, HistoryError> {
        if from > to {
            return Err(HistoryError::Reversed {
                from: rfc3339(&from),
                to: rfc3339(&to),
            });
        }
        if to > now {
            return Err(HistoryError::Future {
                to: rfc3339(&to),
                now: rfc3339(&now),
            });
        }
        if step.as_secs() == 0 {
            return Err(HistoryError::ZeroStep);
        }
        let span_ms = u64::try_from((to - from).num_milliseconds()).unwrap_or(u64::MAX);
        let step_ms = step.as_secs().saturating_mul(1_000);
        let points = (span_ms / step_ms).saturating_add(1);
        if points > HISTORY_POINTS_MAX {
            return Err(HistoryError::TooManyPoints {
                from: rfc3339(&from),
                to: rfc3339(&to),
                step,
                points,
            });
        }
        Ok(HistoryRange { from, step, points })
    }

    /// The `index`-th instant: `from + index × step`. `new` bounded the span by `now`, far
    /// inside chrono's range.
    fn instant(&self, index: u64) -> Instant {
        let offset_s = self.step.as_secs().saturating_mul(index);
        i64::try_from(offset_s)
            .ok()
            .and_then(chrono::TimeDelta::try_seconds)
            .and_then(|offset| self.from.checked_add_signed(offset))
            .unwrap_or(self.from)
    }

    /// The instants, in order.
    pub fn instants(&self) -> impl Iterator<Item = Instant> + '_ {
        (0..self.points).map(|index| self.instant(index))
    }

    pub fn len(&self) -> u64 {
        self.points
    }

    pub fn is_empty(&self) -> bool {
        self.points == 0
    }
}

/// The balance as of one instant, as a chart plots it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Point {
    pub at: Instant,
    /// Credits available at `at` (explain's `balance.total`).
    pub total: Credits,
    /// The live allowance's remainder; 0 once its period has ended unrenewed.
    pub allowance: Credits,
    /// Live top-up lots' remainders.
    pub top_ups: Credits,
    /// Live grants' remainders.
    pub grants: Credits,
    /// Credits earmarked by open holds.
    pub held: Credits,
}

impl Point {
    /// The point of explain's balance as of `at`: the one reading both history and the
    /// property test that holds history to explain use.
    pub fn of(balance: &BalanceAt, at: Instant) -> Point {
        let live = |remaining: Credits, live: bool| if live { remaining } else { Credits::ZERO };
        Point {
            at,
            total: balance.total,
            allowance: balance
                .allowance
                .as_ref()
                .map_or(Credits::ZERO, |bucket| live(bucket.remaining, bucket.live)),
            top_ups: balance
                .top_ups
                .iter()
                .map(|lot| live(lot.remaining, lot.live))
                .sum(),
            grants: balance
                .grants
                .iter()
                .map(|lot| live(lot.remaining, lot.live))
                .sum(),
            held: balance.held,
        }
    }
}

/// The balance at every instant of `range`, from the account's stream `envelopes` in version
/// order: [`HistoryFold`] over a stream already in memory.
pub fn history(envelopes: &[Envelope], range: &HistoryRange) -> Vec<Point> {
    let mut fold = HistoryFold::new(range);
    for envelope in envelopes {
        if !fold.push(envelope.occurred_at, &envelope.event) {
            break;
        }
    }
    fold.finish()
}

/// History in one pass over a stream read in version order, page by page: feed each event to
/// [`HistoryFold::push`], then take the points from [`HistoryFold::finish`]. Each point is
/// what `explain(.., at).balance` gives: the events before the first one that occurred after
/// `at` count (explain's prefix), and whatever fell due by `at` applies.
#[derive(Debug)]
pub struct HistoryFold {
    range: HistoryRange,
    /// The index of the next point to draw.
    next: u64,
    core: Option<Core>,
    version: u64,
    points: Vec<Point>,
}

impl HistoryFold {
    pub fn new(range: &HistoryRange) -> HistoryFold {
        HistoryFold {
            range: *range,
            next: 0,
            core: None,
            version: 0,
            points: Vec::with_capacity(usize::try_from(range.len()).unwrap_or(0)),
        }
    }

    /// The instant of the next point to draw, if any is left.
    fn next_at(&self) -> Option<Instant> {
        (self.next < self.range.points).then(|| self.range.instant(self.next))
    }

    /// Folds the stream's next event, which occurred at `occurred_at`, after drawing every
    /// point before it. False once every point is drawn: the rest of the stream is not needed.
    pub fn push(&mut self, occurred_at: Instant, event: &Event) -> bool {
        while let Some(at) = self.next_at().filter(|at| *at < occurred_at) {
            self.draw(at);
        }
        if self.next_at().is_none() {
            return false;
        }
        self.version += 1;
        fold(&mut self.core, event, self.version);
        true
    }

    /// The points, the ones after the last event drawn now.
    pub fn finish(mut self) -> Vec<Point> {
        while let Some(at) = self.next_at() {
            self.draw(at);
        }
        self.points
    }

    fn draw(&mut self, at: Instant) {
        self.next += 1;
        // Settled on a copy of the core: what falls due by `at` applies at `at` only.
        let settled = self.core.as_ref().map(|core| {
            housekeeping(core, self.version, at)
                .1
                .unwrap_or_else(|| core.clone())
        });
        self.points
            .push(Point::of(&balance_at(settled.as_ref(), at), at));
    }
}

/// Folds one event into the core alone, as `Account::apply` folds it: `account_opened`
/// starts it, nothing counts before that. The records `Account` keeps for retries play no
/// part in a balance, and a hot account's are far too many to copy per point.
fn fold(core: &mut Option<Core>, event: &Event, version: u64) {
    match (core.as_mut(), event) {
        (_, Event::AccountOpened(data)) => {
            *core = Some(Core {
                plan: PlanState::opened(data),
                balance: Balance::opened(data),
                trials: Trials::default(),
            })
        }
        (Some(core), event) => evolve_core(core, event, version),
        (None, _) => {}
    }
}
