//! Usage (SPEC section 13): runs and credits per UTC day and model, charges net of refunds,
//! trial runs counted as runs at 0 credits. The usage view holds exactly a [`Usage`] per
//! account, folded by [`Usage::apply`]; reports are read from it, never from the stream.
//!
//! A refund takes its run back from the day and model of the charge it refunds (the run
//! failed, so it was never usage). A refund names its charge's model, stream version and cost
//! (`charge_refunded` v2), and the row keeps the day of each run of charge versions, so it
//! stays as small as the days it counts: a hot account's row used to remember every charge
//! it ever took, and a projector wrote all of it again for every batch (issue 18). Only
//! charges stored before `credits_charged` v3 are remembered by id, for the version 1 refunds
//! that name nothing else. A captured hold is a run on the day of its capture, at the
//! captured cost.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::admission::NodeType;
use crate::catalog::{Catalog, ModelKind};
use crate::credits::Credits;
use crate::envelope::Envelope;
use crate::events::Event;
use crate::time::{rfc3339, Instant};

/// From this schema version of `credits_charged` on, the ledger that wrote a charge names it
/// in its refund (`charge_refunded` v2), so the row need not remember the charge.
const CHARGES_NAMED_BY_REFUNDS_FROM: u32 = 3;

/// What the usage fold reads of an event's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The event's stream version.
    pub version: u64,
    /// The schema version the event was stored at, before upcasting.
    pub schema_version: u32,
    /// When it took effect: a run counts on this UTC day.
    pub occurred_at: Instant,
}

impl Stored {
    pub fn of(envelope: &Envelope) -> Stored {
        Stored {
            version: envelope.version,
            schema_version: envelope.schema_version,
            occurred_at: envelope.occurred_at,
        }
    }
}

/// Runs and credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tally {
    pub runs: u64,
    pub credits: Credits,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.runs = self.runs.saturating_add(other.runs);
        self.credits = self.credits.saturating_add(other.credits);
    }

    fn take_back(&mut self, other: Tally) {
        // Only what was added is ever taken back, so neither can go below zero.
        debug_assert!(self.runs >= other.runs && self.credits >= other.credits);
        self.runs = self.runs.saturating_sub(other.runs);
        self.credits = self
            .credits
            .checked_sub(other.credits)
            .unwrap_or(Credits::ZERO);
    }
}

/// A charge stored before v3 and not refunded (yet): where a version 1 refund would take its
/// run back from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charged(
    #[serde(serialize_with = "day::serialize")] pub NaiveDate,
    pub String,
    pub Credits,
);

/// From stream version `.0` on, the account's charges fell on day `.1`, until the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeDay(
    pub u64,
    #[serde(serialize_with = "day::serialize")] pub NaiveDate,
);

/// Days as the usage row stores them: the bytes chrono writes (`2026-11-27`), without its
/// formatter. chrono formats a date through `Debug` one character at a time, and the row
/// held a date per charge not refunded when that was 60% of encoding a usage row (callgrind,
/// issue 18). Reading a row back is chrono's own parser.
pub mod day {
    use chrono::{Datelike, NaiveDate};
    use serde::ser::{Serialize, Serializer};

    /// A day as a `serde` value, for map keys.
    #[derive(Debug)]
    struct Day<'a>(&'a NaiveDate);

    impl Serialize for Day<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, serializer)
        }
    }

    pub fn serialize<S: Serializer>(date: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
        let (year, month, day) = (date.year(), date.month(), date.day());
        let Ok(year) = u32::try_from(year) else {
            return date.serialize(serializer);
        };
        if year > 9999 {
            // chrono signs years past four digits; no ledger date gets there.
            return date.serialize(serializer);
        }
        let digit = |value: u32| b'0' + (value % 10) as u8;
        let text = [
            digit(year / 1000),
            digit(year / 100),
            digit(year / 10),
            digit(year),
            b'-',
            digit(month / 10),
            digit(month),
            b'-',
            digit(day / 10),
            digit(day),
        ];
        // Ten ASCII digits and dashes.
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }

    pub fn serialize_keys<S: Serializer, V: Serialize>(
        days: &std::collections::BTreeMap<NaiveDate, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(days.iter().map(|(date, value)| (Day(date), value)))
    }
}

/// One account's usage: the usage view's row.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Net runs and credits by UTC day, then by model.
    #[serde(serialize_with = "day::serialize_keys")]
    pub days: BTreeMap<NaiveDate, BTreeMap<String, Tally>>,
    /// The day of every charge by its stream version, run-length encoded in version order:
    /// one entry per day the account charged on (a few more if writers' clocks disagree
    /// around midnight). A version 2 refund finds its charge's day here.
    pub charge_days: Vec<ChargeDay>,
    /// Charges stored before `credits_charged` v3 and not refunded, by `charge_id`, for the
    /// version 1 refunds that name nothing else. Newer charges are never added.
    pub legacy_charges: BTreeMap<String, Charged>,
    /// Open holds, by `hold_id`: the model their capture is a run of.
    pub holds: BTreeMap<String, String>,
}

impl Usage {
    /// Folds one event, stored as `stored` says.
    pub fn apply(&mut self, event: &Event, stored: Stored) {
        let day = stored.occurred_at.date_naive();
        match event {
            Event::CreditsCharged(data) => {
                self.count(day, &data.model, data.cost);
                if self.charge_days.last().is_none_or(|last| last.1 != day) {
                    self.charge_days.push(ChargeDay(stored.version, day));
                }
                if stored.schema_version < CHARGES_NAMED_BY_REFUNDS_FROM {
                    self.legacy_charges.insert(
                        data.charge_id.clone(),
                        Charged(day, data.model.clone(), data.cost),
                    );
                }
            }
            Event::ChargeRefunded(data) => {
                // A version 1 refund of a charge this row does not hold has none to take back.
                let refunded = self.legacy_charges.remove(&data.charge_id).or_else(|| {
                    let day = self.day_of_charge(data.charge_version?)?;
                    Some(Charged(day, data.model.clone()?, data.cost?))
                });
                // A model whose every run was refunded keeps its row at zero: support sees
                // that it was used and given back.
                if let Some(Charged(day, model, credits)) = refunded {
                    if let Some(counted) = self
                        .days
                        .get_mut(&day)
                        .and_then(|models| models.get_mut(&model))
                    {
                        counted.take_back(Tally { runs: 1, credits });
                    }
                }
            }
            Event::HoldPlaced(data) => {
                self.holds.insert(data.hold_id.clone(), data.model.clone());
            }
            Event::HoldCaptured(data) => {
                if let Some(model) = self.holds.remove(&data.hold_id) {
                    self.count(day, &model, data.cost);
                }
            }
            Event::HoldReleased(data) => {
                self.holds.remove(&data.hold_id);
            }
            Event::HoldExpired(data) => {
                self.holds.remove(&data.hold_id);
            }
            Event::AccountOpened(_) => *self = Usage::default(),
            _ => {}
        }
    }

    /// The day of the charge at stream `version`.
    fn day_of_charge(&self, version: u64) -> Option<NaiveDate> {
        let after = self.charge_days.partition_point(|entry| entry.0 <= version);
        after
            .checked_sub(1)
            .and_then(|index| self.charge_days.get(index))
            .map(|entry| entry.1)
    }

    fn count(&mut self, day: NaiveDate, model: &str, credits: Credits) {
        self.days
            .entry(day)
            .or_default()
            .entry(model.to_string())
            .or_default()
            .add(Tally { runs: 1, credits });
    }

    /// The report for `range`, grouped `by`; the catalog names each model's node type.
    pub fn report(&self, range: &UsageRange, by: UsageBy, catalog: &Catalog) -> UsageReport {
        let mut groups: BTreeMap<String, Tally> = BTreeMap::new();
        let mut total = Tally::default();
        for (day, models) in self.days.range(range.from..range.to) {
            for (model, tally) in models {
                let key = match by {
                    UsageBy::Model => model.clone(),
                    UsageBy::Day => day.to_string(),
                    UsageBy::NodeType => node_type_of(catalog, model).to_string(),
                };
                groups.entry(key).or_default().add(*tally);
                total.add(*tally);
            }
        }
        let mut rows: Vec<UsageRow> = groups
            .into_iter()
            .map(|(key, tally)| UsageRow {
                key,
                runs: tally.runs,
                credits: tally.credits,
            })
            .collect();
        // Days read best in calendar order; models and node types by what they cost.
        if by != UsageBy::Day {
            rows.sort_by(|a, b| b.credits.cmp(&a.credits).then_with(|| a.key.cmp(&b.key)));
        }
        UsageReport { rows, total }
    }
}

/// The node type that runs a model of the catalog: what `by=node_type` groups on, since a
/// charge records its model, not its node. A model the catalog no longer lists is `unknown`.
pub fn node_type_of(catalog: &Catalog, model: &str) -> &'static str {
    let Some(model) = catalog.model(model) else {
        return "unknown";
    };
    match model.kind {
        ModelKind::Image => NodeType::ImageGenerator.as_str(),
        ModelKind::Video => NodeType::VideoGenerator.as_str(),
        ModelKind::Music => NodeType::MusicGenerator.as_str(),
        ModelKind::Assistant => NodeType::Assistant.as_str(),
        ModelKind::Custom => NodeType::CustomModel.as_str(),
    }
}

/// How a usage report groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageBy {
    #[default]
    Model,
    Day,
    NodeType,
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub key: String,
    pub runs: u64,
    pub credits: Credits,
}

/// A usage report: `{"rows": [{key, runs, credits}], "total": {runs, credits}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub total: Tally,
}

/// Why a usage range cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageRangeError {
    #[error("usage is kept per UTC day: {name} ({at}) must be midnight UTC")]
    NotMidnight { name: &'static str, at: String },
    #[error("from ({from}) must be before to ({to})")]
    Reversed { from: String, to: String },
}

/// The whole UTC days `[from, to)` a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRange {
    from: NaiveDate,
    to: NaiveDate,
}

impl UsageRange {
    /// Every day there is.
    pub const ALL: UsageRange = UsageRange {
        from: NaiveDate::MIN,
        to: NaiveDate::MAX,
    };

    /// `[from, to)`, both at midnight UTC and `from` before `to`.
    pub fn new(from: Instant, to: Instant) -> Result<UsageRange, UsageRangeError> {
        let day = |name, at: Instant| {
            let date = at.date_naive();
            if date.and_hms_opt(0, 0, 0).map(|midnight| midnight.and_utc()) == Some(at) {
                Ok(date)
            } else {
                Err(UsageRangeError::NotMidnight {
                    name,
                    at: rfc3339(&at),
                })
            }
        };
        let range = UsageRange {
            from: day("from", from)?,
            to: day("to", to)?,
        };
        if range.from >= range.to {
            return Err(UsageRangeError::Reversed {
                from: rfc3339(&from),
                to: rfc3339(&to),
            });
        }
        Ok(range)
    }
}
