//! How each event changes an account's buckets: the fold that `evolve`, the views and
//! replay share. Kept apart from the rules that read the buckets (drawing, classifying,
//! sums) in the parent module, whose private helpers it uses.

use std::cmp::Ordering;

use std::sync::Arc;

use imbl::Vector;

use super::*;

/// Adds to a ledger total. Every amount entering the ledger is capped at
/// [`Credits::MAX_COMMAND`], so an overflow means a broken invariant, not a big account.
fn grow(total: &mut Credits, amount: Credits) {
    debug_assert!(
        total.checked_add(amount).is_some(),
        "credits overflow: {total} + {amount}"
    );
    *total = total.saturating_add(amount);
}

impl Balance {
    /// The buckets of a newly opened account: its first allowance.
    pub fn opened(data: &AccountOpened) -> Balance {
        let mut balance = Balance {
            buckets: Vector::new(),
            open_holds: BTreeMap::new(),
            totals: Totals::default(),
        };
        balance.set_allowance(
            data.period_start,
            data.period_end,
            Some(data.allowance),
            Credits::ZERO,
            1,
        );
        balance
    }

    /// Found first and then fetched mutably: a mutable walk would unshare every chunk it
    /// passes.
    fn bucket_mut(&mut self, kind: BucketKind, id: &str) -> Option<&mut Credits> {
        let index = self.index_of(kind, id)?;
        self.buckets
            .get_mut(index)
            .map(|bucket| &mut Arc::make_mut(bucket).remaining)
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

    /// Adds a bucket in its place in the tie order: after every bucket of its kind or an
    /// earlier one.
    fn fill(&mut self, bucket: Bucket) {
        grow(&mut self.totals.granted, bucket.credits);
        // Sorted by kind, so the search never finds Equal: `Err` is the partition point.
        let at = self
            .buckets
            .binary_search_by(|other| {
                if other.kind <= bucket.kind {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            })
            .unwrap_or_else(|at| at);
        self.buckets.insert(at, Arc::new(bucket));
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
        // At most one; removing it by index leaves the other chunks shared.
        if let Some(index) = self
            .buckets
            .iter()
            .position(|bucket| bucket.kind == BucketKind::Allowance)
        {
            self.buckets.remove(index);
        }
        if let Some(amount) = allowance {
            self.fill(Bucket {
                kind: BucketKind::Allowance,
                id: allowance_id(start),
                credits: amount,
                remaining: amount,
                expires_at: Some(end),
                origin: Origin {
                    version,
                    starts_at: Some(start),
                },
            });
        }
    }

    fn add_lot(
        &mut self,
        kind: BucketKind,
        id: &str,
        credits: Credits,
        expires_at: Option<Instant>,
        version: u64,
    ) {
        self.fill(Bucket {
            kind,
            id: id.to_string(),
            credits,
            remaining: credits,
            expires_at,
            origin: Origin {
                version,
                starts_at: None,
            },
        });
    }

    fn expire(&mut self, kind: BucketKind, id: &str, forfeited: Credits) {
        if let Some(index) = self.index_of(kind, id) {
            self.buckets.remove(index);
        }
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
                &data.purchase_id,
                data.credits,
                Some(data.expires_at),
                version,
            ),
            Event::TopUpExpired(data) => {
                self.expire(BucketKind::TopUp, &data.purchase_id, data.forfeited)
            }
            // Revoking takes the lot out as an expiry does: its remainder leaves the ledger.
            Event::TopUpRevoked(data) => {
                self.expire(BucketKind::TopUp, &data.purchase_id, data.revoked)
            }
            Event::GrantAdded(data) => self.add_lot(
                BucketKind::Grant,
                &data.grant_id,
                data.credits,
                data.expires_at,
                version,
            ),
            Event::GrantExpired(data) => {
                self.expire(BucketKind::Grant, &data.grant_id, data.forfeited)
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
