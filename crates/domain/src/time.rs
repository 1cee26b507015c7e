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
    let mut text = [0u8; RFC3339_LEN_MAX];
    match write_rfc3339(at, &mut text) {
        Some(text) => text.to_owned(),
        None => at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    }
}

/// The longest instant [`write_rfc3339`] writes: nanoseconds and the `Z`.
const RFC3339_LEN_MAX: usize = 30;

/// Writes `at` into `text` exactly as chrono's `to_rfc3339_opts(AutoSi, true)` does, which
/// is also what chrono's `Serialize` writes, without chrono's formatter: that one goes
/// through `fmt` a character at a time, and the balance view encoding each bucket's
/// instants that way was a fifth of its CPU (callgrind, issue 18). `None` for what no
/// ledger instant is (a year outside 0 to 9999, a leap second): chrono writes those.
fn write_rfc3339<'a>(at: &Instant, text: &'a mut [u8; RFC3339_LEN_MAX]) -> Option<&'a str> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(at.year())
        .ok()
        .filter(|year| *year <= 9_999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let (fraction, fraction_digits) = match nanos {
        0 => (0, 0),
        _ if nanos.is_multiple_of(1_000_000) => (nanos / 1_000_000, 3),
        _ if nanos.is_multiple_of(1_000) => (nanos / 1_000, 6),
        _ => (nanos, 9),
    };
    let mut out = Cursor { text, length: 0 };
    out.digits(year, 4);
    for (separator, value) in [
        (b'-', at.month()),
        (b'-', at.day()),
        (b'T', at.hour()),
        (b':', at.minute()),
        (b':', at.second()),
    ] {
        out.byte(separator);
        out.digits(value, 2);
    }
    if fraction_digits > 0 {
        out.byte(b'.');
        out.digits(fraction, fraction_digits);
    }
    out.byte(b'Z');
    let Cursor { text, length } = out;
    std::str::from_utf8(&text[..length]).ok()
}

/// Where [`write_rfc3339`] has got to in its buffer.
struct Cursor<'a> {
    text: &'a mut [u8; RFC3339_LEN_MAX],
    length: usize,
}

impl Cursor<'_> {
    fn byte(&mut self, byte: u8) {
        self.text[self.length] = byte;
        self.length += 1;
    }

    /// The last `count` decimal digits of `value`, zero-padded.
    fn digits(&mut self, value: u32, count: u32) {
        for place in (0..count).rev() {
            self.byte(b'0' + (value / 10u32.pow(place) % 10) as u8);
        }
    }
}

/// `serialize_with` for instants of hot rows: the bytes chrono's `Serialize` writes, without
/// its formatter (see [`write_rfc3339`]). Reading them back is chrono's own parser.
pub mod instant_text {
    use serde::Serializer;

    use super::{write_rfc3339, Instant, RFC3339_LEN_MAX};

    pub fn serialize_option<S: Serializer>(
        at: &Option<Instant>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => {
                let mut text = [0u8; RFC3339_LEN_MAX];
                match write_rfc3339(at, &mut text) {
                    Some(text) => serializer.serialize_some(text),
                    None => serializer.serialize_some(at),
                }
            }
            None => serializer.serialize_none(),
        }
    }
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
    use proptest::prelude::*;

    proptest! {
        /// The ledger's own writer gives chrono's bytes, for every instant it writes itself
        /// and for the sub-second precisions chrono shortens to.
        #[test]
        fn instants_are_written_as_chrono_writes_them(
            secs in -62_167_219_200i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            precision in 0usize..4,
        ) {
            let nanos = [0, nanos / 1_000_000 * 1_000_000, nanos / 1_000 * 1_000, nanos][precision];
            let at = DateTime::from_timestamp(secs, nanos).unwrap();
            let chrono_text = at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            prop_assert_eq!(rfc3339(&at), chrono_text.clone());
            prop_assert_eq!(
                serde_json::to_string(&Wrapped(Some(at))).unwrap(),
                serde_json::to_string(&at).unwrap()
            );
            prop_assert_eq!(serde_json::to_string(&at).unwrap(), format!("\"{chrono_text}\""));
        }
    }

    #[derive(serde::Serialize)]
    struct Wrapped(#[serde(serialize_with = "instant_text::serialize_option")] Option<Instant>);

    #[test]
    fn instants_chrono_writes_itself_still_come_out_as_chrono_writes_them() {
        let far = DateTime::from_timestamp(253_402_300_800 * 2, 0).unwrap();
        assert_eq!(
            rfc3339(&far),
            far.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        let mut text = [0u8; RFC3339_LEN_MAX];
        assert_eq!(write_rfc3339(&far, &mut text), None);
        #[derive(serde::Serialize)]
        struct Maybe(#[serde(serialize_with = "instant_text::serialize_option")] Option<Instant>);
        assert_eq!(serde_json::to_string(&Maybe(None)).unwrap(), "null");
        assert_eq!(
            serde_json::to_string(&Maybe(Some(far))).unwrap(),
            serde_json::to_string(&far).unwrap()
        );
        let leap = at("2026-06-30T23:59:60.5Z");
        assert_eq!(
            rfc3339(&leap),
            leap.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
    }

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
