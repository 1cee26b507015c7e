//! Buckets: where an account's credits sit (the allowance, top-up lots, grants, and credits
//! held for open holds) and every rule that touches them, in one place: drawing in burn
//! order, earmarking for holds, classifying what comes back, splitting a capture, what
//! expires when, sums and the "live at T" filter. `decide`, `evolve`, explain, the views and
//! the service's summary all call these methods rather than walk the buckets themselves.
//!
//! [`Balance`] keeps every bucket in one ordered collection, whatever its kind, so the rules
//! above never ask which kind they hold. Adding a kind means a variant of [`BucketKind`]
//! (events.rs, it is recorded in parts), the `apply` arms of the events that fill and expire
//! it (`fold.rs`), and its line in [`Bucket::expired`] and [`BucketName::of`].

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::events::*;
use crate::time::{rfc3339, Instant};

mod fold;

/// The id of the part that records an unlimited (enterprise) charge's cost. It names no
/// bucket: nothing is drawn, and sums leave it out.
pub const UNLIMITED_ID: &str = "unlimited";

/// One bucket: credits that sit together until spent, expired or replaced. The allowance of
/// the current period, a top-up lot and a grant are all buckets; only their kind, expiry and
/// origin tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub kind: BucketKind,
    /// The id parts name it by: the allowance's period start (RFC 3339), a top-up's
    /// `purchase_id`, a grant's `grant_id`.
    pub id: String,
    /// What it held when it was filled.
    pub credits: Credits,
    pub remaining: Credits,
    /// `None`: never expires. The allowance expires at its period's end.
    #[serde(serialize_with = "crate::time::instant_text::serialize_option")]
    pub expires_at: Option<Instant>,
    pub origin: Origin,
}

/// Where a bucket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The stream version of the event that filled the bucket. A period may start at the
    /// same instant as the one it replaces, so the id alone cannot tell a reset allowance
    /// from the one before it.
    pub version: u64,
    /// When the bucket began to count: the allowance's period start. Lots count from the
    /// event that created them and carry `None`.
    #[serde(serialize_with = "crate::time::instant_text::serialize_option")]
    pub starts_at: Option<Instant>,
}

impl Bucket {
    /// Whether the bucket can pay at `at`: before its expiry, recorded or not.
    pub fn is_live(&self, at: Instant) -> bool {
        self.expires_at.is_none_or(|expires_at| at < expires_at)
    }

    /// The event that records this bucket's expiry at `at`, forfeiting what is left. The
    /// allowance has none: a refresh or renewal replaces it.
    pub fn expired(&self, at: Instant) -> Option<Event> {
        match self.kind {
            BucketKind::TopUp => Some(
                TopUpExpired {
                    purchase_id: self.id.clone(),
                    expired_at: at,
                    forfeited: self.remaining,
                }
                .into(),
            ),
            BucketKind::Grant => Some(
                GrantExpired {
                    grant_id: self.id.clone(),
                    expired_at: at,
                    forfeited: self.remaining,
                }
                .into(),
            ),
            BucketKind::Allowance | BucketKind::Unlimited => None,
        }
    }

    /// The period a bucket covers, start and end, if it has one: the allowance does.
    pub fn period(&self) -> Option<(Instant, Instant)> {
        Some((self.origin.starts_at?, self.expires_at?))
    }
}

/// A hold: credits earmarked for a run that has not finished yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub placed: HoldPlaced,
    /// The stream version of `hold_placed`.
    pub version: u64,
}

impl Hold {
    /// Credits this hold keeps out of the buckets.
    pub fn amount(&self) -> Credits {
        sum(&self.placed.earmarked)
    }
}

/// Running totals: `granted - charged + refunded - forfeited` always equals the credits in
/// the buckets plus the credits held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    pub granted: Credits,
    pub charged: Credits,
    pub refunded: Credits,
    pub forfeited: Credits,
    /// Cost recorded by unlimited charges; never drawn from a bucket.
    pub charged_unlimited: Credits,
}

impl Totals {
    /// `granted - charged + refunded - forfeited`, or `None` if that would go below zero.
    pub fn net(&self) -> Option<Credits> {
        self.granted
            .checked_add(self.refunded)?
            .checked_sub(self.charged)?
            .checked_sub(self.forfeited)
    }
}

/// Where an account's credits sit: its buckets and open holds, with running totals. The
/// balance view holds exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Every bucket not yet recorded as expired, in the tie order of burning: by kind
    /// (allowance, grants, top-ups), then oldest first. At most one allowance.
    ///
    /// A persistent vector: the command handler keeps the state after each answer (to
    /// answer a replay again) and the views share rows with readers, so a balance is copied
    /// far more often than it changes. A copy shares every chunk of 64 buckets the change
    /// after it does not touch; with a `Vec`, an account with thousands of top-ups and
    /// grants copied all of them, ids included, on every charge. Each bucket sits behind an
    /// `Arc` so that a chunk is 64 pointers, not 64 buckets (a change copied 6 kB for an
    /// account with two buckets), and a few buckets fit inline in the vector itself.
    pub buckets: Vector<Arc<Bucket>>,
    pub open_holds: BTreeMap<String, Hold>,
    pub totals: Totals,
}

/// The buckets a change can touch, as explain names them. Held credits are a bucket of their
/// own there: a hold moves credits out of the allowance, top-ups or grants into `held`, and
/// back. The variant order is the order explain lists changes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketName {
    Allowance,
    TopUp,
    Grant,
    Held,
}

impl BucketName {
    /// The name of a real bucket kind; `None` for the unlimited marker.
    pub fn of(kind: BucketKind) -> Option<BucketName> {
        match kind {
            BucketKind::Allowance => Some(BucketName::Allowance),
            BucketKind::TopUp => Some(BucketName::TopUp),
            BucketKind::Grant => Some(BucketName::Grant),
            BucketKind::Unlimited => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BucketName::Allowance => "allowance",
            BucketName::TopUp => "top_up",
            BucketName::Grant => "grant",
            BucketName::Held => "held",
        }
    }
}

/// The id a part uses for an allowance bucket.
pub fn allowance_id(period_start: Instant) -> String {
    rfc3339(&period_start)
}

/// The part that records the cost of an unlimited run.
pub fn unlimited_part(cost: Credits) -> Part {
    Part {
        bucket: BucketKind::Unlimited,
        id: UNLIMITED_ID.into(),
        amount: cost,
    }
}

/// Credits that parts moved: the unlimited marker records a cost, not a bucket.
pub fn sum(parts: &[Part]) -> Credits {
    parts
        .iter()
        .filter(|part| part.bucket != BucketKind::Unlimited)
        .map(|part| part.amount)
        .sum()
}

/// Splits earmarked parts into the first `cost` credits (in earmark order) and the rest.
pub fn split(earmarked: &[Part], cost: Credits) -> (Vec<Part>, Vec<Part>) {
    let mut due = cost;
    let mut drawn = Vec::new();
    let mut rest = Vec::new();
    for part in earmarked {
        let take = due.min(part.amount);
        if !take.is_zero() {
            drawn.push(Part {
                amount: take,
                ..part.clone()
            });
            due = due.checked_sub(take).unwrap_or(Credits::ZERO);
        }
        let left = part.amount.checked_sub(take).unwrap_or(Credits::ZERO);
        if !left.is_zero() {
            rest.push(Part {
                amount: left,
                ..part.clone()
            });
        }
    }
    (drawn, rest)
}

impl Balance {
    /// Every bucket, in the tie order of burning.
    pub fn iter(&self) -> impl Iterator<Item = &Bucket> {
        self.buckets.iter().map(Arc::as_ref)
    }

    /// The allowance of the current period, live or not.
    pub fn allowance(&self) -> Option<&Bucket> {
        self.iter()
            .find(|bucket| bucket.kind == BucketKind::Allowance)
    }

    /// The buckets of one kind that can still pay at `at`, oldest first.
    pub fn live(&self, kind: BucketKind, at: Instant) -> impl Iterator<Item = &Bucket> {
        self.iter()
            .filter(move |bucket| bucket.kind == kind && bucket.is_live(at))
    }

    /// The buckets of one kind, live or not yet recorded as expired, oldest first.
    pub fn of_kind(&self, kind: BucketKind) -> impl Iterator<Item = &Bucket> {
        self.iter().filter(move |bucket| bucket.kind == kind)
    }

    /// What the buckets of one kind hold and could pay at `at`.
    pub fn live_remaining(&self, kind: BucketKind, at: Instant) -> Credits {
        self.live(kind, at).map(|bucket| bucket.remaining).sum()
    }

    /// Credits that can pay for something at `at`: every live bucket's remainder.
    pub fn available(&self, at: Instant) -> Credits {
        self.iter()
            .filter(|bucket| bucket.is_live(at))
            .map(|bucket| bucket.remaining)
            .sum()
    }

    /// Credits that open holds earmarked from one bucket.
    pub fn held_from(&self, kind: BucketKind, id: &str) -> Credits {
        self.open_holds
            .values()
            .flat_map(|hold| &hold.placed.earmarked)
            .filter(|part| part.bucket == kind && part.id == id)
            .map(|part| part.amount)
            .sum()
    }

    /// Credits earmarked by open holds.
    pub fn held(&self) -> Credits {
        self.open_holds.values().map(Hold::amount).sum()
    }

    /// Credits in every bucket, live or not yet recorded as expired, plus held credits.
    pub fn total_in_buckets(&self) -> Credits {
        let buckets: Credits = self.iter().map(|bucket| bucket.remaining).sum();
        let total = buckets.checked_add(self.held());
        debug_assert!(total.is_some(), "credits overflow: {buckets} + held");
        total.unwrap_or(Credits::new(u64::MAX))
    }

    /// The identity every fold keeps: buckets plus held credits equal
    /// `granted - charged + refunded - forfeited`. (No bucket can go below zero: `Credits`
    /// cannot, and [`Balance::take`] asserts it never has to clamp.)
    pub fn totals_balance(&self) -> bool {
        self.totals.net() == Some(self.total_in_buckets())
    }

    /// Picks the parts that pay `cost` at `now`, in burn order: soonest expiry first; ties go
    /// in the collection's order (allowance, then grants, then top-ups, then older first).
    /// Holds earmark the same parts. `Err` carries what is available.
    pub fn draw(&self, cost: Credits, now: Instant) -> Result<Vec<Part>, Credits> {
        if cost.is_zero() {
            return Ok(Vec::new());
        }
        let payable = |bucket: &&Bucket| bucket.is_live(now) && !bucket.remaining.is_zero();
        let burn_key = |bucket: &&Bucket| bucket.expires_at.unwrap_or(Instant::MAX_UTC);
        // Most costs are paid whole by the first bucket in burn order: found in one pass
        // (`min_by_key` keeps the first of equals, the collection's tie order), without
        // collecting and sorting every live bucket of an account that holds thousands.
        if let Some(first) = self.iter().filter(payable).min_by_key(burn_key) {
            if first.remaining >= cost {
                return Ok(vec![Part {
                    bucket: first.kind,
                    id: first.id.clone(),
                    amount: cost,
                }]);
            }
        }
        let mut candidates: Vec<&Bucket> = self.iter().filter(payable).collect();
        // Stable: equal expiries keep the collection's tie order.
        candidates.sort_by_key(burn_key);
        let mut due = cost;
        let mut parts = Vec::with_capacity(candidates.len().min(4));
        for bucket in candidates {
            let amount = due.min(bucket.remaining);
            parts.push(Part {
                bucket: bucket.kind,
                id: bucket.id.clone(),
                amount,
            });
            due = due.checked_sub(amount).unwrap_or(Credits::ZERO);
            if due.is_zero() {
                return Ok(parts);
            }
        }
        Err(self.available(now))
    }

    /// Splits parts taken by the stream's `taken_at_version`-th event and coming back at `at`
    /// into those whose bucket is still there and live, and those forfeited because it
    /// expired or was reset since.
    pub fn classify_returns(
        &self,
        parts: &[Part],
        at: Instant,
        taken_at_version: u64,
    ) -> (Vec<Part>, Vec<Part>) {
        let mut returned = Vec::new();
        let mut forfeited = Vec::new();
        for part in parts.iter().filter(|part| !part.amount.is_zero()) {
            if part.bucket == BucketKind::Unlimited {
                continue;
            }
            let live = self.find(part.bucket, &part.id).is_some_and(|bucket| {
                bucket.is_live(at) && bucket.origin.version < taken_at_version
            });
            if live {
                returned.push(part.clone());
            } else {
                forfeited.push(part.clone());
            }
        }
        (returned, forfeited)
    }

    /// Buckets whose expiry is recorded by an event of their own, with when: lots. The
    /// allowance is replaced by a refresh or renewal instead.
    pub fn lot_expiries(&self) -> impl Iterator<Item = (Instant, &Bucket)> {
        self.iter()
            .filter(|bucket| bucket.kind != BucketKind::Allowance)
            .filter_map(|bucket| bucket.expires_at.map(|at| (at, bucket)))
    }

    fn find(&self, kind: BucketKind, id: &str) -> Option<&Bucket> {
        self.iter()
            .find(|bucket| bucket.kind == kind && bucket.id == id)
    }

    fn index_of(&self, kind: BucketKind, id: &str) -> Option<usize> {
        self.iter()
            .position(|bucket| bucket.kind == kind && bucket.id == id)
    }
}
