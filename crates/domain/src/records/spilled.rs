//! Spilled records: a 64-bit fingerprint of each one's kind and id, and the versions of its
//! events, in sorted runs that stay cheap to add to and to search however long an account's
//! history grows.

use std::hash::BuildHasher;
use std::num::NonZeroU64;

use super::{RecordKind, Spill, SpillRef};

/// Interpolation steps [`search`] takes before it searches what is left by halves.
const INTERPOLATION_STEPS: usize = 4;

/// The newest spilled records are merged into the main run once they are more than
/// `sqrt(FRESH_SCALE * main)`, or this many at least. A spill (about 1,024 records) copies
/// `fresh`, and `main` takes it in once per `fresh` records: with `fresh` at that square
/// root, each charge moves about `2 * sqrt(main / 1,024)` entries, 22 at 120,000 spilled
/// records and 63 at a million, against 117 and 977 with one run.
const FRESH_SCALE: usize = 1_024;
const FRESH_MIN: usize = 4_096;

/// Spilled records by fingerprint, 24 bytes each instead of a kilobyte for a whole charge. A
/// hash map took twice that once its slack was counted, and doubled at once as it grew. The
/// fingerprint is seeded at random per account, so callers cannot aim collisions at it, and
/// a record whose fingerprint is taken stays whole: a fingerprint names at most one spilled
/// record, and a command whose id shares it restores that record and then finds its own id
/// absent, as it is.
///
/// Two sorted runs: `main`, and `fresh` for the records spilled since `main` last took
/// them in. One sorted vector, merged with every spill, copied a hot account's whole
/// history every 1,024 charges: with 120,000 spilled records, 117 entries moved per charge
/// and 4% of the CPU on one account (issue 18), growing with the account's age. Now a spill
/// merges into `fresh`, and `main` takes `fresh` in once it has grown (see [`FRESH_SCALE`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Spilled {
    seed: foldhash::quality::RandomState,
    main: Vec<SpillEntry>,
    fresh: Vec<SpillEntry>,
}

/// One spilled record: its fingerprint, and the versions of its events (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SpillEntry {
    pub(super) fingerprint: u64,
    pub(super) first_version: u64,
    pub(super) last_version: u64,
}

impl Spilled {
    pub(super) fn fingerprint(&self, kind: RecordKind, id: &str) -> u64 {
        self.seed.hash_one((kind, id))
    }

    pub(super) fn len(&self) -> usize {
        self.main.len() + self.fresh.len()
    }

    pub(super) fn get(&self, fingerprint: u64) -> Option<&SpillEntry> {
        [&self.fresh, &self.main]
            .into_iter()
            .find_map(|run| search(run, fingerprint).ok().map(|index| &run[index]))
    }

    pub(super) fn get_mut(&mut self, fingerprint: u64) -> Option<&mut SpillEntry> {
        [&mut self.fresh, &mut self.main]
            .into_iter()
            .find_map(|run| match search(run, fingerprint) {
                Ok(index) => Some(&mut run[index]),
                Err(_) => None,
            })
    }

    /// Forgets a record made whole again.
    pub(super) fn remove(&mut self, fingerprint: u64) {
        for run in [&mut self.fresh, &mut self.main] {
            if let Ok(index) = search(run, fingerprint) {
                run.remove(index);
                return;
            }
        }
    }

    /// The spilled record `id` may be, if any.
    pub(super) fn find(&self, kind: RecordKind, id: &str) -> Option<SpillRef> {
        if self.len() == 0 {
            return None;
        }
        let fingerprint = self.fingerprint(kind, id);
        let entry = self.get(fingerprint)?;
        Some(SpillRef {
            fingerprint,
            spill: Spill {
                kind,
                first_version: entry.first_version,
                last_version: NonZeroU64::new(entry.last_version),
            },
        })
    }

    /// Takes in a spill's records, whose fingerprints none of the kept ones has.
    pub(super) fn merge(&mut self, mut batch: Vec<SpillEntry>) {
        if batch.is_empty() {
            return;
        }
        batch.sort_unstable();
        self.fresh = merged(std::mem::take(&mut self.fresh), batch);
        if self.fresh.len() > FRESH_MIN.max(self.main.len().saturating_mul(FRESH_SCALE).isqrt()) {
            let fresh = std::mem::take(&mut self.fresh);
            self.main = merged(std::mem::take(&mut self.main), fresh);
        }
    }

    /// The versions of the spilled records, in an order that does not depend on the seed.
    fn sorted(&self) -> Vec<(u64, u64)> {
        let mut versions: Vec<(u64, u64)> = self
            .main
            .iter()
            .chain(&self.fresh)
            .map(|entry| (entry.first_version, entry.last_version))
            .collect();
        versions.sort_unstable();
        versions
    }
}

/// Two accounts folded from the same events remember the same records whatever their seeds.
impl PartialEq for Spilled {
    fn eq(&self, other: &Spilled) -> bool {
        self.len() == other.len() && self.sorted() == other.sorted()
    }
}

impl Eq for Spilled {}

/// Two sorted runs as one, no larger than it must be.
fn merged(old: Vec<SpillEntry>, batch: Vec<SpillEntry>) -> Vec<SpillEntry> {
    if old.is_empty() {
        return batch;
    }
    let mut merged = Vec::with_capacity(old.len() + batch.len());
    let (mut old, mut batch) = (old.into_iter().peekable(), batch.into_iter().peekable());
    loop {
        let next = match (old.peek(), batch.peek()) {
            (Some(a), Some(b)) if a.fingerprint <= b.fingerprint => old.next(),
            (Some(_), Some(_)) | (None, Some(_)) => batch.next(),
            (Some(_), None) => old.next(),
            (None, None) => break,
        };
        merged.extend(next);
    }
    merged
}

/// Where `fingerprint` is in `run`, sorted by fingerprint, as `binary_search` says it.
/// Fingerprints are seeded hashes, spread evenly over the 64 bits, so interpolation lands
/// near one in a probe or two where halving took 17 over 120,000 records, most of them
/// cache misses. A few steps at most, then halving what is left, so no input makes it
/// slower than a binary search.
fn search(run: &[SpillEntry], fingerprint: u64) -> Result<usize, usize> {
    let (mut low, mut high) = (0, run.len());
    for _ in 0..INTERPOLATION_STEPS {
        // Every entry before `low` is smaller than `fingerprint`, every one from `high` on
        // larger.
        let (Some(first), Some(last)) = (run.get(low), high.checked_sub(1).map(|i| &run[i])) else {
            break;
        };
        if fingerprint < first.fingerprint {
            return Err(low);
        }
        if fingerprint > last.fingerprint {
            return Err(high);
        }
        let span = u128::from(last.fingerprint - first.fingerprint).max(1);
        let offset = u128::from(fingerprint - first.fingerprint);
        let width = (high - low - 1) as u128;
        // At most `width`, since `offset` is at most `span`.
        let guess = low + usize::try_from(offset * width / span).unwrap_or(0);
        match run[guess].fingerprint.cmp(&fingerprint) {
            std::cmp::Ordering::Equal => return Ok(guess),
            std::cmp::Ordering::Less => low = guess + 1,
            std::cmp::Ordering::Greater => high = guess,
        }
    }
    run[low..high]
        .binary_search_by_key(&fingerprint, |entry| entry.fingerprint)
        .map(|index| low + index)
        .map_err(|index| low + index)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{search, SpillEntry, Spilled};

    fn run(mut fingerprints: Vec<u64>) -> Vec<SpillEntry> {
        fingerprints.sort_unstable();
        fingerprints.dedup();
        fingerprints
            .into_iter()
            .map(|fingerprint| SpillEntry {
                fingerprint,
                first_version: fingerprint / 2,
                last_version: 0,
            })
            .collect()
    }

    /// `search` answers as a binary search does, for every entry and for `probes`.
    fn agrees(run: &[SpillEntry], probes: &[u64]) {
        let present = run.iter().map(|entry| entry.fingerprint);
        for probe in present.chain(probes.iter().copied()) {
            let expected = run.binary_search_by_key(&probe, |entry| entry.fingerprint);
            assert_eq!(search(run, probe), expected, "probe {probe}");
        }
    }

    proptest! {
        #[test]
        fn search_finds_what_halving_finds(
            fingerprints in prop::collection::vec(any::<u64>(), 0..2_000),
            probes in prop::collection::vec(any::<u64>(), 0..64),
        ) {
            agrees(&run(fingerprints), &probes);
        }

        #[test]
        fn search_finds_what_halving_finds_in_lopsided_runs(
            small in prop::collection::vec(0u64..1_000, 0..500),
            large in prop::collection::vec(u64::MAX - 1_000.., 0..4),
            probes in prop::collection::vec(0u64..2_000, 0..64),
        ) {
            let mut fingerprints = small;
            fingerprints.extend(large);
            let extremes: Vec<u64> = probes.iter().map(|probe| u64::MAX - probe).collect();
            let run = run(fingerprints);
            agrees(&run, &probes);
            agrees(&run, &extremes);
        }

        #[test]
        fn every_spilled_record_is_found_until_it_is_removed(
            batches in prop::collection::vec(prop::collection::vec(any::<u64>(), 1..3_000), 1..8),
        ) {
            let mut spilled = Spilled::default();
            let mut all = Vec::new();
            for batch in batches {
                // A spill's records have fingerprints no kept record has.
                let batch: Vec<SpillEntry> = run(batch)
                    .into_iter()
                    .filter(|entry| spilled.get(entry.fingerprint).is_none())
                    .collect();
                all.extend(batch.iter().copied());
                spilled.merge(batch);
            }
            prop_assert_eq!(spilled.len(), all.len());
            for entry in &all {
                prop_assert_eq!(spilled.get(entry.fingerprint), Some(entry));
            }
            for entry in all.iter().step_by(3) {
                spilled.remove(entry.fingerprint);
                prop_assert_eq!(spilled.get(entry.fingerprint), None);
            }
            prop_assert_eq!(spilled.len(), all.len() - all.iter().step_by(3).count());
        }
    }
}
