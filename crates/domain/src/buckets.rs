//! Buckets: where an account's credits sit (the allowance, top-up lots, grants, and credits
//! held for open holds) and every rule that touches them, in one place: drawing in burn
//! order, earmarking for holds, classifying what comes back, splitting a capture, what
//! expires when, sums and the "live at T" filter. `decide`, `evolve`, explain, the views and
//! the service's summary all call these methods rather than walk the buckets themselves.
//!
//! Adding a bucket kind means a variant of [`BucketKind`] (events.rs, it is recorded in
//! parts), its storage in [`Balance`], and the two matches here that map a kind to its
//! storage ([`Balance::buckets`], [`Balance::bucket_mut`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::events::*;
use crate::time::{rfc3339, Instant};

/// The id of the part that records an unlimited (enterprise) charge's cost. It names no
/// bucket: nothing is drawn, and sums leave it out.
pub const UNLIMITED_ID: &str = "unlimited";

/// The allowance bucket of the current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceBucket {
    /// The bucket's id in parts: the period start, RFC 3339.
    pub id: String,
    pub period_start: Instant,
    pub period_end: Instant,
    pub amount: Credits,
    pub remaining: Credits,
    /// The stream version of the event that set this bucket. A period may start at the same
    /// instant as the one it replaces, so the id alone cannot tell a reset bucket apart.
    pub since_version: u64,
}

/// A top-up lot or a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub id: String,
    pub credits: Credits,
    pub remaining: Credits,
    /// `None`: never expires (grants only).
    pub expires_at: Option<Instant>,
}

impl Lot {
    pub fn is_live(&self, at: Instant) -> bool {
        self.expires_at.is_none_or(|expires_at| at < expires_at)
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

/// Where an account's credits sit: the allowance, top-up lots, grants and open holds, with
/// running totals. The balance view holds exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub allowance: Option<AllowanceBucket>,
    /// Lots not yet recorded as expired, oldest first.
    pub top_ups: Vec<Lot>,
    pub grants: Vec<Lot>,
    pub open_holds: BTreeMap<String, Hold>,
    pub totals: Totals,
}

/// One bucket as the rules see it, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRef<'a> {
    pub kind: BucketKind,
    pub id: &'a str,
    pub remaining: Credits,
    /// `None`: never expires. The allowance expires at its period's end.
    pub expires_at: Option<Instant>,
    /// Tells a reset allowance from the one it replaced: the version of the event that set
    /// it. Lots are never reset, so theirs is 0.
    pub generation: u64,
}

impl BucketRef<'_> {
    /// Whether the bucket can pay at `at`: before its expiry, recorded or not.
    pub fn is_live(&self, at: Instant) -> bool {
        self.expires_at.is_none_or(|expires_at| at < expires_at)
    }
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

/// Adds to a ledger total. Every amount entering the ledger is capped at
/// [`Credits::MAX_COMMAND`], so an overflow means a broken invariant, not a big account.
fn grow(total: &mut Credits, amount: Credits) {
    debug_assert!(
        total.checked_add(amount).is_some(),
        "credits overflow: {total} + {amount}"
    );
    *total = total.saturating_add(amount);
}

fn lot_refs(kind: BucketKind, lots: &[Lot]) -> impl Iterator<Item = BucketRef<'_>> {
    lots.iter().map(move |lot| BucketRef {
        kind,
        id: &lot.id,
        remaining: lot.remaining,
        expires_at: lot.expires_at,
        generation: 0,
    })
}

impl Balance {
    /// The buckets of a newly opened account: its first allowance.
    pub fn opened(data: &AccountOpened) -> Balance {
        Balance {
            allowance: Some(AllowanceBucket {
                id: allowance_id(data.period_start),
                period_start: data.period_start,
                period_end: data.period_end,
                amount: data.allowance,
                remaining: data.allowance,
                since_version: 1,
            }),
            top_ups: Vec::new(),
            grants: Vec::new(),
            open_holds: BTreeMap::new(),
            totals: Totals {
                granted: data.allowance,
                ..Totals::default()
            },
        }
    }

    /// Every bucket, live or not yet recorded as expired: the allowance, then grants, then
    /// top-ups, each kind oldest first (the tie order of burning).
    pub fn buckets(&self) -> impl Iterator<Item = BucketRef<'_>> {
        let allowance = self.allowance.as_ref().map(|bucket| BucketRef {
            kind: BucketKind::Allowance,
            id: &bucket.id,
            remaining: bucket.remaining,
            expires_at: Some(bucket.period_end),
            generation: bucket.since_version,
        });
        allowance
            .into_iter()
            .chain(lot_refs(BucketKind::Grant, &self.grants))
            .chain(lot_refs(BucketKind::TopUp, &self.top_ups))
    }

    /// The allowance, if it can still pay at `at`.
    pub fn live_allowance(&self, at: Instant) -> Option<&AllowanceBucket> {
        self.allowance
            .as_ref()
            .filter(|bucket| at < bucket.period_end)
    }

    /// The lots of one kind (top-ups or grants) that can still pay at `at`, oldest first.
    pub fn live_lots(&self, kind: BucketKind, at: Instant) -> impl Iterator<Item = &Lot> {
        let lots: &[Lot] = match kind {
            BucketKind::TopUp => &self.top_ups,
            BucketKind::Grant => &self.grants,
            BucketKind::Allowance | BucketKind::Unlimited => &[],
        };
        lots.iter().filter(move |lot| lot.is_live(at))
    }

    /// What the buckets of one kind hold and could pay at `at`.
    pub fn live_remaining(&self, kind: BucketKind, at: Instant) -> Credits {
        self.buckets()
            .filter(|bucket| bucket.kind == kind && bucket.is_live(at))
            .map(|bucket| bucket.remaining)
            .sum()
    }

    /// Credits that can pay for something at `at`: every live bucket's remainder.
    pub fn available(&self, at: Instant) -> Credits {
        self.buckets()
            .filter(|bucket| bucket.is_live(at))
            .map(|bucket| bucket.remaining)
            .sum()
    }

    /// Credits earmarked by open holds.
    pub fn held(&self) -> Credits {
        self.open_holds.values().map(Hold::amount).sum()
    }

    /// Credits in every bucket, live or not yet recorded as expired, plus held credits.
    pub fn total_in_buckets(&self) -> Credits {
        let buckets: Credits = self.buckets().map(|bucket| bucket.remaining).sum();
        buckets.saturating_add(self.held())
    }

    /// The identity every fold keeps: buckets plus held credits equal
    /// `granted - charged + refunded - forfeited`. (No bucket can go below zero: `Credits`
    /// cannot, and [`Balance::take`] asserts it never has to clamp.)
    pub fn totals_balance(&self) -> bool {
        self.totals.net() == Some(self.total_in_buckets())
    }

    /// Picks the parts that pay `cost` at `now`, in burn order: soonest expiry first; ties go
    /// allowance, then grants, then top-ups, then older first. Holds earmark the same parts.
    /// `Err` carries what is available.
    pub fn draw(&self, cost: Credits, now: Instant) -> Result<Vec<Part>, Credits> {
        if cost.is_zero() {
            return Ok(Vec::new());
        }
        let mut candidates: Vec<(usize, BucketRef<'_>)> = self
            .buckets()
            .enumerate()
            .filter(|(_, bucket)| bucket.is_live(now) && !bucket.remaining.is_zero())
            .collect();
        candidates.sort_unstable_by_key(|(index, bucket)| {
            (
                bucket
                    .expires_at
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
                bucket.kind,
                *index,
            )
        });
        let mut due = cost;
        let mut parts = Vec::with_capacity(candidates.len().min(4));
        for (_, bucket) in candidates {
            let amount = due.min(bucket.remaining);
            parts.push(Part {
                bucket: bucket.kind,
                id: bucket.id.to_string(),
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
            let live = self.buckets().any(|bucket| {
                bucket.kind == part.bucket
                    && bucket.id == part.id
                    && bucket.is_live(at)
                    && bucket.generation < taken_at_version
            });
            if live {
                returned.push(part.clone());
            } else {
                forfeited.push(part.clone());
            }
        }
        (returned, forfeited)
    }

    /// Lots with an expiry, and when and of which kind: top-ups, then grants.
    pub fn lot_expiries(&self) -> impl Iterator<Item = (Instant, BucketKind, &Lot)> {
        let top_ups = self.top_ups.iter().map(|lot| (BucketKind::TopUp, lot));
        let grants = self.grants.iter().map(|lot| (BucketKind::Grant, lot));
        top_ups
            .chain(grants)
            .filter_map(|(kind, lot)| lot.expires_at.map(|at| (at, kind, lot)))
    }

    fn bucket_mut(&mut self, kind: BucketKind, id: &str) -> Option<&mut Credits> {
        match kind {
            BucketKind::Allowance => self
                .allowance
                .as_mut()
                .filter(|bucket| bucket.id == id)
                .map(|bucket| &mut bucket.remaining),
            BucketKind::TopUp => self
                .top_ups
                .iter_mut()
                .find(|lot| lot.id == id)
                .map(|lot| &mut lot.remaining),
            BucketKind::Grant => self
                .grants
                .iter_mut()
                .find(|lot| lot.id == id)
                .map(|lot| &mut lot.remaining),
            BucketKind::Unlimited => None,
        }
    }

    fn take(&mut self, parts: &[Part]) {
        for part in parts {
            if let Some(remaining) = self.bucket_mut(part.bucket, &part.id) {
                // decide only draws what is there.
                debug_assert!(
                    *remaining >= part.amount,
                    "drawing {} from {:?} {} that holds {remaining}",
                    part.amount,
                    part.bucket,
                    part.id
                );
                *remaining = remaining.checked_sub(part.amount).unwrap_or(Credits::ZERO);
            }
        }
    }

    fn give_back(&mut self, parts: &[Part]) {
        for part in parts {
            match self.bucket_mut(part.bucket, &part.id) {
                Some(remaining) => grow(remaining, part.amount),
                // decide classifies returns to vanished buckets as forfeited; should an event
                // still name one, count it as forfeited so the totals keep balancing.
                None if part.bucket != BucketKind::Unlimited => {
                    grow(&mut self.totals.forfeited, part.amount)
                }
                None => {}
            }
        }
    }

    fn forfeit(&mut self, parts: &[Part]) {
        grow(&mut self.totals.forfeited, sum(parts));
    }

    fn set_allowance(
        &mut self,
        start: Instant,
        end: Instant,
        allowance: Option<Credits>,
        forfeited: Credits,
        version: u64,
    ) {
        grow(&mut self.totals.forfeited, forfeited);
        self.allowance = allowance.map(|amount| {
            grow(&mut self.totals.granted, amount);
            AllowanceBucket {
                id: allowance_id(start),
                period_start: start,
                period_end: end,
                amount,
                remaining: amount,
                since_version: version,
            }
        });
    }

    /// The lots of a lot kind. Only `apply` calls it, with the kind its event creates.
    fn lots_mut(&mut self, kind: BucketKind) -> &mut Vec<Lot> {
        match kind {
            BucketKind::TopUp => &mut self.top_ups,
            BucketKind::Grant => &mut self.grants,
            BucketKind::Allowance | BucketKind::Unlimited => {
                unreachable!("{kind:?} is not a lot")
            }
        }
    }

    fn add_lot(&mut self, kind: BucketKind, lot: Lot) {
        grow(&mut self.totals.granted, lot.credits);
        self.lots_mut(kind).push(lot);
    }

    fn expire_lot(&mut self, kind: BucketKind, id: &str, forfeited: Credits) {
        self.lots_mut(kind).retain(|lot| lot.id != id);
        grow(&mut self.totals.forfeited, forfeited);
    }

    /// Folds one event, the stream's `version`-th, into the buckets.
    pub fn apply(&mut self, event: &Event, version: u64) {
        match event {
            Event::AccountOpened(data) => *self = Balance::opened(data),
            Event::TierChanged(data) => self.set_allowance(
                data.allowance_period_start,
                data.allowance_period_end,
                data.allowance,
                data.forfeited,
                version,
            ),
            Event::AllowanceRenewed(data) => self.set_allowance(
                data.allowance_period_start,
                data.allowance_period_end,
                data.allowance,
                data.forfeited,
                version,
            ),
            Event::TopUpPurchased(data) => self.add_lot(
                BucketKind::TopUp,
                Lot {
                    id: data.purchase_id.clone(),
                    credits: data.credits,
                    remaining: data.credits,
                    expires_at: Some(data.expires_at),
                },
            ),
            Event::TopUpExpired(data) => {
                self.expire_lot(BucketKind::TopUp, &data.purchase_id, data.forfeited)
            }
            // Revoking takes the lot out as an expiry does: its remainder leaves the ledger.
            Event::TopUpRevoked(data) => {
                self.expire_lot(BucketKind::TopUp, &data.purchase_id, data.revoked)
            }
            Event::GrantAdded(data) => self.add_lot(
                BucketKind::Grant,
                Lot {
                    id: data.grant_id.clone(),
                    credits: data.credits,
                    remaining: data.credits,
                    expires_at: data.expires_at,
                },
            ),
            Event::GrantExpired(data) => {
                self.expire_lot(BucketKind::Grant, &data.grant_id, data.forfeited)
            }
            Event::CreditsCharged(data) => {
                self.take(&data.drawn_from);
                grow(&mut self.totals.charged, sum(&data.drawn_from));
                if data.paid_by == PaidBy::Unlimited {
                    grow(&mut self.totals.charged_unlimited, data.cost);
                }
            }
            Event::ChargeRefunded(data) => {
                self.give_back(&data.returned);
                grow(&mut self.totals.refunded, sum(&data.returned));
                grow(&mut self.totals.refunded, sum(&data.forfeited));
                self.forfeit(&data.forfeited);
            }
            Event::HoldPlaced(data) => {
                self.take(&data.earmarked);
                self.open_holds.insert(
                    data.hold_id.clone(),
                    Hold {
                        placed: data.clone(),
                        version,
                    },
                );
            }
            Event::HoldCaptured(data) => {
                self.open_holds.remove(&data.hold_id);
                grow(&mut self.totals.charged, sum(&data.drawn_from));
                if data
                    .drawn_from
                    .iter()
                    .any(|part| part.bucket == BucketKind::Unlimited)
                {
                    grow(&mut self.totals.charged_unlimited, data.cost);
                }
                self.give_back(&data.returned);
                self.forfeit(&data.forfeited);
            }
            Event::HoldReleased(HoldReleased {
                hold_id,
                returned,
                forfeited,
                ..
            })
            | Event::HoldExpired(HoldExpired {
                hold_id,
                returned,
                forfeited,
                ..
            }) => {
                self.open_holds.remove(hold_id);
                self.give_back(returned);
                self.forfeit(forfeited);
            }
            _ => {}
        }
    }
}
