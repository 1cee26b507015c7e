//! What an account remembers of its commands so that retries, however late, get their first
//! answer. Charges, resolved holds, grants and top-ups bought without a payment provider, the
//! records that grow with use, are kept whole while recent; older ones are spilled to a
//! fingerprint and the stream versions of their events, which the command side reads back
//! from the stream when a retry names one. A top-up paid through a provider stays whole: a
//! refund of the payment finds its lot by the provider's id.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;

use crate::command::Command;
use crate::events::*;
use crate::state::{Hold, HoldResolution};

mod spilled;

use spilled::{SpillEntry, Spilled};

/// A map keyed by caller-chosen ids. foldhash is several times faster than SipHash on short
/// keys and still seeds each map at random, so callers cannot aim collisions at it.
pub type IdMap<V> = HashMap<String, V, foldhash::quality::RandomState>;

/// What the ledger remembers forever so that retries, however late, get their first answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Records {
    /// Boxed: a hot account holds thousands, and growing the map moves every entry.
    pub charges: IdMap<Box<ChargeRecord>>,
    pub closed_holds: IdMap<Box<ClosedHold>>,
    pub purchases: IdMap<Recorded<TopUpPurchased>>,
    pub grants: IdMap<Recorded<GrantAdded>>,
    pub invoices: IdMap<Recorded<AllowanceRenewed>>,
    pub references: IdMap<Recorded<TierChanged>>,
    /// Stream versions of the latest verification events, so that a repeated submission or
    /// decision answers as it first did.
    pub verification_submitted_version: u64,
    pub verification_decided_version: u64,
    /// Records no longer kept whole (see [`Records::spill`]).
    spilled: Spilled,
}

/// An event kept for idempotency, with the stream version it was written at: a replay
/// answers as of that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<T> {
    pub event: T,
    pub version: u64,
}

/// A resolved hold: how it was placed, how it ended, and the version of the ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedHold {
    pub hold: Hold,
    pub resolution: HoldResolution,
    pub version: u64,
}

/// A charge and, once refunded, its refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    pub charge: CreditsCharged,
    /// The stream version of `credits_charged`.
    pub version: u64,
    pub refund: Option<Box<Recorded<ChargeRefunded>>>,
}

impl ChargeRecord {
    /// The version of the record's latest event: what "recent" is measured by.
    fn last_version(&self) -> u64 {
        self.refund
            .as_ref()
            .map_or(self.version, |refund| refund.version)
    }
}

/// Which map a spilled record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Charge,
    Hold,
    Purchase,
    Grant,
}

/// Where a spilled record's events are: the version of the first (`credits_charged`,
/// `hold_placed`, `top_up_purchased`, `grant_added`) and of the one that ended it (the
/// refund; the capture, release or expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spill {
    pub kind: RecordKind,
    pub first_version: u64,
    pub last_version: Option<NonZeroU64>,
}

impl Spill {
    /// The versions to read back, in order.
    pub fn versions(&self) -> impl Iterator<Item = u64> {
        std::iter::once(self.first_version).chain(self.last_version.map(NonZeroU64::get))
    }
}

/// A spilled record a command names (or one whose fingerprint it shares): the key to give
/// back to [`Records::restore`] with its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillRef {
    fingerprint: u64,
    pub spill: Spill,
}

/// Why spilled events could not be restored: the stream does not hold what the fingerprint
/// said it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spilled {kind:?} record at versions {versions:?}: {message}")]
pub struct RestoreError {
    pub kind: RecordKind,
    pub versions: Vec<u64>,
    pub message: String,
}

/// The records one call of [`Records::spill`] spills, taken in together at the end
/// ([`Spilled::merge`]).
struct SpillBatch<'a> {
    spilled: &'a Spilled,
    entries: Vec<SpillEntry>,
    taken: HashSet<u64, foldhash::fast::RandomState>,
}

impl SpillBatch<'_> {
    /// Spills a record unless its fingerprint is taken; true when it did.
    fn insert(&mut self, kind: RecordKind, id: &str, versions: (u64, Option<u64>)) -> bool {
        let fingerprint = self.spilled.fingerprint(kind, id);
        if self.spilled.get(fingerprint).is_some() || !self.taken.insert(fingerprint) {
            return false;
        }
        self.entries.push(SpillEntry {
            fingerprint,
            first_version: versions.0,
            last_version: versions.1.unwrap_or(0),
        });
        true
    }
}

impl Records {
    /// Records of the kinds that spill kept whole.
    pub fn whole_len(&self) -> usize {
        self.charges.len()
            + self.closed_holds.len()
            + self.grants.len()
            + self
                .purchases
                .values()
                .filter(|recorded| spills_purchase(recorded))
                .count()
    }

    /// Records spilled.
    pub fn spilled_len(&self) -> usize {
        self.spilled.len()
    }

    /// Spills the oldest records once more than twice `keep` are whole, leaving the `keep`
    /// most recent (by their latest event) whole. Spilling in halves
    /// keeps the cost per record constant. Only the command side calls this, between
    /// batches: what `decide` reads is then always whole or named by a fingerprint.
    pub fn spill(&mut self, keep: usize) {
        let limit = keep.saturating_mul(2);
        // Every map's length first, an upper bound that reads no record: counting the
        // purchases that spill touches each one, cold memory on a node with many accounts
        // (3.6% of a charge's CPU over 10,000 accounts, issue 18).
        let kept =
            self.charges.len() + self.closed_holds.len() + self.grants.len() + self.purchases.len();
        if kept <= limit {
            return;
        }
        let whole = self.whole_len();
        if whole <= limit {
            return;
        }
        let mut recency: Vec<u64> = self
            .charges
            .values()
            .map(|record| record.last_version())
            .chain(self.closed_holds.values().map(|closed| closed.version))
            .chain(self.grants.values().map(|recorded| recorded.version))
            .chain(
                self.purchases
                    .values()
                    .filter(|recorded| spills_purchase(recorded))
                    .map(|recorded| recorded.version),
            )
            .collect();
        let (_, cutoff, _) = recency.select_nth_unstable(whole - keep);
        let cutoff = *cutoff;
        let mut spilled = SpillBatch {
            spilled: &self.spilled,
            entries: Vec::new(),
            taken: HashSet::default(),
        };
        self.charges.retain(|id, record| {
            record.last_version() >= cutoff
                || !spilled.insert(
                    RecordKind::Charge,
                    id,
                    (
                        record.version,
                        record.refund.as_ref().map(|refund| refund.version),
                    ),
                )
        });
        self.closed_holds.retain(|id, closed| {
            closed.version >= cutoff
                || !spilled.insert(
                    RecordKind::Hold,
                    id,
                    (closed.hold.version, Some(closed.version)),
                )
        });
        self.grants.retain(|id, recorded| {
            recorded.version >= cutoff
                || !spilled.insert(RecordKind::Grant, id, (recorded.version, None))
        });
        self.purchases.retain(|id, recorded| {
            recorded.version >= cutoff
                || !spills_purchase(recorded)
                || !spilled.insert(RecordKind::Purchase, id, (recorded.version, None))
        });
        let batch = spilled.entries;
        self.spilled.merge(batch);
    }

    /// The spilled record `command` names, if any: its events must be restored before the
    /// command is decided.
    pub fn spilled_for(&self, command: &Command) -> Option<SpillRef> {
        let (kind, id) = match command {
            Command::Charge(c) => (RecordKind::Charge, c.charge_id.as_str()),
            Command::RefundCharge { charge_id, .. } => (RecordKind::Charge, charge_id.as_str()),
            Command::PlaceHold(c) => (RecordKind::Hold, c.hold_id.as_str()),
            Command::CaptureHold(c) => (RecordKind::Hold, c.hold_id.as_str()),
            Command::ReleaseHold { hold_id } => (RecordKind::Hold, hold_id.as_str()),
            Command::PurchaseTopUp(c) => (RecordKind::Purchase, c.purchase_id.as_str()),
            Command::PurchasePaidTopUp(c) => (RecordKind::Purchase, c.top_up.purchase_id.as_str()),
            Command::AddGrant(c) => (RecordKind::Grant, c.grant_id.as_str()),
            _ => return None,
        };
        self.spilled.find(kind, id)
    }

    /// Makes a spilled record whole again from its events, read back from the stream at
    /// `spilled.spill.versions()`, each with its version.
    pub fn restore(
        &mut self,
        spilled: SpillRef,
        events: Vec<(u64, Event)>,
    ) -> Result<(), RestoreError> {
        let spill = spilled.spill;
        let fail = |message: &str| RestoreError {
            kind: spill.kind,
            versions: spill.versions().collect(),
            message: message.to_string(),
        };
        let read: Vec<u64> = events.iter().map(|(version, _)| *version).collect();
        if read != spill.versions().collect::<Vec<_>>() {
            return Err(fail(&format!("read versions {read:?}")));
        }
        let id = match events.first() {
            Some((_, Event::CreditsCharged(data))) => &data.charge_id,
            Some((_, Event::HoldPlaced(data))) => &data.hold_id,
            Some((_, Event::TopUpPurchased(data))) => &data.purchase_id,
            Some((_, Event::GrantAdded(data))) => &data.grant_id,
            _ => return Err(fail("the events are not of the record's kind")),
        };
        if self.spilled.fingerprint(spill.kind, id) != spilled.fingerprint {
            return Err(fail("the record read back is another one"));
        }
        let mut events = events.into_iter().map(|(version, event)| (event, version));
        match (spill.kind, events.next(), events.next()) {
            (RecordKind::Charge, Some((Event::CreditsCharged(charge), version)), ending) => {
                let refund = match ending {
                    None => None,
                    Some((Event::ChargeRefunded(refund), refund_version))
                        if refund.charge_id == charge.charge_id =>
                    {
                        Some(Box::new(Recorded {
                            event: refund,
                            version: refund_version,
                        }))
                    }
                    Some(_) => return Err(fail("the charge's refund is not a refund of it")),
                };
                self.charges.insert(
                    charge.charge_id.clone(),
                    Box::new(ChargeRecord {
                        charge,
                        version,
                        refund,
                    }),
                );
            }
            (RecordKind::Hold, Some((Event::HoldPlaced(placed), version)), Some((ending, at))) => {
                let resolution = match ending {
                    Event::HoldCaptured(data) if data.hold_id == placed.hold_id => {
                        HoldResolution::Captured(data)
                    }
                    Event::HoldReleased(data) if data.hold_id == placed.hold_id => {
                        HoldResolution::Released(data)
                    }
                    Event::HoldExpired(data) if data.hold_id == placed.hold_id => {
                        HoldResolution::Expired(data)
                    }
                    _ => return Err(fail("the hold's ending does not resolve it")),
                };
                self.closed_holds.insert(
                    placed.hold_id.clone(),
                    Box::new(ClosedHold {
                        hold: Hold { placed, version },
                        resolution,
                        version: at,
                    }),
                );
            }
            (RecordKind::Purchase, Some((Event::TopUpPurchased(event), version)), None) => {
                keep(
                    &mut self.purchases,
                    event.purchase_id.clone(),
                    event,
                    version,
                );
            }
            (RecordKind::Grant, Some((Event::GrantAdded(event), version)), None) => {
                keep(&mut self.grants, event.grant_id.clone(), event, version);
            }
            _ => return Err(fail("the events are not of the record's kind")),
        }
        self.spilled.remove(spilled.fingerprint);
        Ok(())
    }

    /// Folds in the records of the stream's `version`-th event; `closing` is the hold it
    /// resolves, taken out of the open holds.
    pub(crate) fn evolve(&mut self, closing: Option<Hold>, event: Event, version: u64) {
        match event {
            Event::TierChanged(data) => {
                keep(&mut self.references, data.reference.clone(), data, version)
            }
            Event::AllowanceRenewed(data) => {
                if let Some(invoice_id) = data.invoice_id.clone() {
                    keep(&mut self.invoices, invoice_id, data, version);
                }
            }
            Event::TopUpPurchased(data) => {
                keep(&mut self.purchases, data.purchase_id.clone(), data, version)
            }
            Event::GrantAdded(data) => keep(&mut self.grants, data.grant_id.clone(), data, version),
            Event::BusinessVerificationSubmitted(_) => {
                self.verification_submitted_version = version
            }
            Event::BusinessVerificationApproved(_) | Event::BusinessVerificationRejected(_) => {
                self.verification_decided_version = version
            }
            Event::CreditsCharged(data) => {
                self.charges.insert(
                    data.charge_id.clone(),
                    Box::new(ChargeRecord {
                        charge: data,
                        version,
                        refund: None,
                    }),
                );
            }
            Event::ChargeRefunded(data) => self.refunded(data, version),
            Event::HoldCaptured(data) => {
                self.close_hold(closing, HoldResolution::Captured(data), version)
            }
            Event::HoldReleased(data) => {
                self.close_hold(closing, HoldResolution::Released(data), version)
            }
            Event::HoldExpired(data) => {
                self.close_hold(closing, HoldResolution::Expired(data), version)
            }
            _ => {}
        }
    }

    /// Keeps a refund with its charge. Another node may refund a charge this one spilled;
    /// its spill then names the refund's version too.
    fn refunded(&mut self, data: ChargeRefunded, version: u64) {
        if let Some(record) = self.charges.get_mut(&data.charge_id) {
            record.refund = Some(Box::new(Recorded {
                event: data,
                version,
            }));
        } else {
            let fingerprint = self
                .spilled
                .fingerprint(RecordKind::Charge, &data.charge_id);
            if let Some(entry) = self.spilled.get_mut(fingerprint) {
                entry.last_version = version;
            }
        }
    }

    /// Keeps a resolved hold, so that a late retry of its capture still gets its first answer.
    fn close_hold(&mut self, closing: Option<Hold>, resolution: HoldResolution, version: u64) {
        if let Some(hold) = closing {
            self.closed_holds.insert(
                hold.placed.hold_id.clone(),
                Box::new(ClosedHold {
                    hold,
                    resolution,
                    version,
                }),
            );
        }
    }

    /// Takes back the records `event` added (see `Account::rollback`).
    pub(crate) fn take_back(&mut self, event: &Event) {
        match event {
            Event::TierChanged(data) => {
                self.references.remove(&data.reference);
            }
            Event::AllowanceRenewed(data) => {
                if let Some(invoice_id) = &data.invoice_id {
                    self.invoices.remove(invoice_id);
                }
            }
            Event::TopUpPurchased(data) => {
                self.purchases.remove(&data.purchase_id);
            }
            Event::GrantAdded(data) => {
                self.grants.remove(&data.grant_id);
            }
            Event::CreditsCharged(data) => {
                self.charges.remove(&data.charge_id);
            }
            Event::ChargeRefunded(data) => {
                if let Some(record) = self.charges.get_mut(&data.charge_id) {
                    record.refund = None;
                }
            }
            Event::HoldCaptured(HoldCaptured { hold_id, .. })
            | Event::HoldReleased(HoldReleased { hold_id, .. })
            | Event::HoldExpired(HoldExpired { hold_id, .. }) => {
                self.closed_holds.remove(hold_id);
            }
            _ => {}
        }
    }
}

/// Whether a top-up's record may spill: not when a payment provider paid it, since a refund
/// of the payment looks its lot up by scanning the purchases for the provider's id.
fn spills_purchase(recorded: &Recorded<TopUpPurchased>) -> bool {
    recorded.event.payment_ref.is_none()
}

/// Keeps an event under the caller's id, with the version it was written at.
fn keep<T>(map: &mut IdMap<Recorded<T>>, id: String, event: T, version: u64) {
    map.insert(id, Recorded { event, version });
}
