//! Instants, duration strings ("45s", "30m", "12h", "7d") and month arithmetic clamped at
//! month end. The domain never reads a clock: every instant here is passed in.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, UTC. Intervals are `[start, end)`.
pub type Instant = DateTime<Utc>;

/// An instant as the ledger writes it everywhere (envelopes, ids, summaries): RFC 3339 in
/// UTC with a `Z`, and only as many fractional digits as the instant has.
pub fn rfc3339(at: &Instant) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A span of whole seconds, written as a number followed by `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationS(u64);

/// The longest duration the ledger accepts anywhere: ten years. Keeps instant arithmetic far
/// from chrono's limits.
const DURATION_MAX_S: u64 = 10 * 366 * 86_400;

impl DurationS {
    pub const fn from_secs(secs: u64) -> Self {
        DurationS(secs)
    }

    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// `at + self`, or `None` past chrono's range (unreachable with validated durations).
    pub fn after(self, at: Instant) -> Option<Instant> {
        let secs = i64::try_from(self.0).ok()?;
        at.checked_add_signed(TimeDelta::try_seconds(secs)?)
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

impl FromStr for DurationS {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let split = text
            .char_indices()
            .last()
            .map(|(index, _)| index)
            .ok_or_else(|| {
                DurationError(
                    "empty duration: expected e.g. \"45s\", \"30m\", \"12h\" or \"7d\"".into(),
                )
            })?;
        let (number, unit) = text.split_at(split);
        let unit_s: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => {
                return Err(DurationError(format!(
                    "invalid duration {text:?}: the unit must be one of s, m, h, d"
                )))
            }
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DurationError(format!(
                "invalid duration {text:?}: expected a positive whole number before the unit"
            )));
        }
        let count: u64 = number
            .parse()
            .map_err(|_| DurationError(format!("invalid duration {text:?}: number too large")))?;
        let secs = count
            .checked_mul(unit_s)
            .filter(|secs| *secs <= DURATION_MAX_S)
            .ok_or_else(|| {
                DurationError(format!("invalid duration {text:?}: longer than ten years"))
            })?;
        if secs == 0 {
            return Err(DurationError(format!(
                "invalid duration {text:?}: must be longer than zero"
            )));
        }
        Ok(DurationS(secs))
    }
}

impl fmt::Display for DurationS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0;
        if secs.is_multiple_of(86_400) {
            write!(f, "{}d", secs / 86_400)
        } else if secs.is_multiple_of(3_600) {
            write!(f, "{}h", secs / 3_600)
        } else if secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

impl Serialize for DurationS {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationS {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `months`-th monthly anniversary of `anchor`, with the day clamped at month end:
/// anchored on Jan 31 it gives Feb 28 (or 29), then Mar 31. Always computed from the anchor,
/// never chained, so one short month does not pull every later date back.
pub fn add_months(anchor: Instant, months: u32) -> Instant {
    // chrono clamps the day to the last day of the target month; it only fails beyond
    // year 262143, which validated inputs cannot reach.
    anchor
        .checked_add_months(Months::new(months))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The monthly anniversary period of `anchor` that contains `at` (`at >= anchor`).
pub fn anniversary_period(anchor: Instant, at: Instant) -> (Instant, Instant) {
    use chrono::Datelike;
    let months_apart = (at.year() - anchor.year()) * 12 + at.month() as i32 - anchor.month() as i32;
    // Start one month early: the clamped anniversary in `at`'s month may still lie after it.
    let mut k = u32::try_from(months_apart.max(1) - 1).unwrap_or(0);
    // At most three steps: the estimate is never more than two months short.
    loop {
        let next = add_months(anchor, k + 1);
        if next > at {
            return (add_months(anchor, k), next);
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Instant {
        text.parse().unwrap()
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("45s".parse::<DurationS>().unwrap().as_secs(), 45);
        assert_eq!("30m".parse::<DurationS>().unwrap().as_secs(), 1_800);
        assert_eq!("12h".parse::<DurationS>().unwrap().as_secs(), 43_200);
        assert_eq!("7d".parse::<DurationS>().unwrap().as_secs(), 604_800);
        assert_eq!("7d".parse::<DurationS>().unwrap().to_string(), "7d");
        assert_eq!("90s".parse::<DurationS>().unwrap().to_string(), "90s");
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "7x",
            "",
            "d",
            "-1d",
            "1.5h",
            "0s",
            "99999999999d",
            " 7d",
            "7 d",
        ] {
            assert!(
                bad.parse::<DurationS>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn anniversary_dates_clamp_at_month_end() {
        let anchor = at("2026-01-31T10:00:00Z");
        assert_eq!(add_months(anchor, 1), at("2026-02-28T10:00:00Z"));
        assert_eq!(add_months(anchor, 2), at("2026-03-31T10:00:00Z"));
        let leap = at("2028-01-31T00:00:00Z");
        assert_eq!(add_months(leap, 1), at("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn anniversary_period_contains_the_instant() {
        let anchor = at("2026-01-31T10:00:00Z");
        assert_eq!(
            anniversary_period(anchor, at("2026-03-01T00:00:00Z")),
            (at("2026-02-28T10:00:00Z"), at("2026-03-31T10:00:00Z"))
        );
        assert_eq!(
            anniversary_period(anchor, at("2026-02-28T10:00:00Z")),
            (at("2026-02-28T10:00:00Z"), at("2026-03-31T10:00:00Z"))
        );
        assert_eq!(
            anniversary_period(anchor, at("2026-02-28T09:59:59Z")),
            (at("2026-01-31T10:00:00Z"), at("2026-02-28T10:00:00Z"))
        );
        assert_eq!(
            anniversary_period(anchor, at("2027-07-15T00:00:00Z")),
            (at("2027-06-30T10:00:00Z"), at("2027-07-31T10:00:00Z"))
        );
    }
}
