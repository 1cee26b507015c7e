//! The stream index, kept behind the log: where each stream's versions are, for events up to
//! a mark in `stream_index`, and for the events after it (the tail) in memory.
//!
//! An index on `(stream_id, version)` maintained by every append cost each event a leaf page
//! of its own in the WAL: streams append at different places of the index, so a group commit
//! of 200 events on 200 accounts wrote 200 index leaves, about 4 KB per event. Measured in
//! one session, 256 tasks charging 10,000 accounts through the command handler: 67,000-74,000
//! charges/s with that index, 91,000-102,000 with none at all, alternating runs.
//!
//! So an append writes its events to the log only. The writer keeps the tail's entries in
//! memory. Once [`INDEX_BATCH`] have gathered it moves them into `stream_index` in key order,
//! [`INDEX_SLICE`] per group commit, so that a leaf takes all the entries of the batch that
//! fall in it at once, and no commit writes more than a slice's worth of leaves. The commit
//! of the last slice moves the mark (`stream_index_mark`) past the batch.
//!
//! Exactness: the file alone always says where everything is. Every event at a position up
//! to the mark is in `stream_index`; the events after it are the end of the log, found by a
//! range scan of positions. While a batch is being moved, `stream_index` also holds some
//! entries past the mark, always the first versions of their stream's tail; readers take the
//! index's entries first and the tail's only past the index's last version. Entries are
//! facts that never change, so moving one twice (after another writer moved it) changes
//! nothing. The memory only spares the scan of the log: the writer loads the tail from the
//! file when it starts and whenever another connection wrote, and adds what it commits after
//! each commit. A reader of this process takes the tail's entries after the mark of its own
//! snapshot and scans the log for positions past what the memory holds; when the memory does
//! not reach back to the reader's mark (a snapshot older than the last two moves), it scans
//! the log after the mark instead.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension};

/// Entries gathered before the writer moves them into `stream_index`. Larger batches put
/// more entries into each leaf they write, but a reader without the memory (another
/// process) scans about this many events of the log.
pub const INDEX_BATCH: usize = 16_384;

/// Entries moved into `stream_index` per group commit while a batch is moved: bounds what
/// that adds to a commit to about as many leaves as a full group of appends wrote with an
/// index maintained by every append.
pub const INDEX_SLICE: usize = 1_024;

/// One event's place in its stream and in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) stream_id: i64,
    pub(crate) version: i64,
    pub(crate) position: i64,
}

/// Per stream, `(version, position)` in version order.
type ByStream = HashMap<i64, Vec<(i64, i64)>, foldhash::quality::RandomState>;

/// The committed entries after the mark that this process knows of.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// Every committed entry at a position in `(from, through]` is in `current`.
    from: i64,
    through: i64,
    current: ByStream,
    /// How many entries `current` holds.
    len: usize,
    /// The entries moved into the index last, at positions in `(previous_from, from]`:
    /// kept for readers whose snapshot was taken before they were.
    previous: ByStream,
    previous_from: i64,
}

impl Tail {
    /// The tail after `mark`, up to `through`, from the entries the log holds there.
    fn loaded(mark: i64, through: i64, entries: &[Entry]) -> Self {
        let mut tail = Tail {
            from: mark,
            through: mark,
            previous_from: mark,
            ..Tail::default()
        };
        tail.add(entries, through);
        tail
    }

    /// Adds committed entries (in position order) and notes that nothing else was committed
    /// up to `through`.
    fn add(&mut self, entries: &[Entry], through: i64) {
        for entry in entries {
            self.current
                .entry(entry.stream_id)
                .or_default()
                .push((entry.version, entry.position));
        }
        self.len += entries.len();
        self.through = self.through.max(through);
    }

    /// Notes that every entry up to `mark` is now in `stream_index`: they become the
    /// previous generation, and the entries past it (committed while the batch was moved)
    /// stay.
    fn moved_to_index(&mut self, mark: i64) {
        let mut moved = std::mem::take(&mut self.current);
        let mut len = 0;
        for (&stream_id, entries) in &mut moved {
            let keep = entries.partition_point(|&(_, position)| position <= mark);
            if keep < entries.len() {
                let after: Vec<_> = entries.drain(keep..).collect();
                len += after.len();
                self.current.insert(stream_id, after);
            }
        }
        self.previous = moved;
        self.previous_from = self.from;
        self.from = mark;
        self.through = self.through.max(mark);
        self.len = len;
    }

    /// The last version of a stream among the entries after the mark.
    fn last_version(&self, stream_id: i64) -> Option<i64> {
        // Entries of `previous` are in the index already.
        self.current
            .get(&stream_id)
            .and_then(|entries| entries.last())
            .map(|&(version, _)| version)
    }

    /// The `(version, position)` of a stream's entries after `mark`, from version
    /// `from_version` on, and the position up to which they are complete; `None` when this
    /// memory does not reach back to `mark`.
    #[allow(clippy::type_complexity)]
    fn after(
        &self,
        stream_id: i64,
        mark: i64,
        from_version: i64,
    ) -> Option<(Vec<(i64, i64)>, i64)> {
        if mark < self.previous_from {
            return None;
        }
        let mut found = Vec::new();
        for map in [&self.previous, &self.current] {
            if let Some(entries) = map.get(&stream_id) {
                found.extend(
                    entries
                        .iter()
                        .filter(|&&(version, position)| position > mark && version >= from_version),
                );
            }
        }
        Some((found, self.through))
    }
}

/// The tail of one store, shared by its writer (which changes it) and its readers. Empty
/// after a mark of 0 until the writer loads it, which it does before the store serves
/// anyone.
#[derive(Debug, Default)]
pub(crate) struct SharedTail(Mutex<Tail>);

impl SharedTail {
    fn lock(&self) -> MutexGuard<'_, Tail> {
        // Changes are single assignments and pushes: a panicking holder leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The mark: every event at a position up to it is in `stream_index`.
pub(crate) fn mark(connection: &Connection) -> rusqlite::Result<i64> {
    connection
        .prepare_cached("SELECT indexed_through FROM stream_index_mark")?
        .query_row([], |row| row.get(0))
}

/// The entries of the log after `after`, in position order.
fn entries_after(connection: &Connection, after: i64) -> rusqlite::Result<Vec<Entry>> {
    let mut statement = connection.prepare_cached(
        "SELECT stream_id, version, position FROM events WHERE position > ?1 ORDER BY position",
    )?;
    let rows = statement.query_map([after], |row| {
        Ok(Entry {
            stream_id: row.get(0)?,
            version: row.get(1)?,
            position: row.get(2)?,
        })
    })?;
    rows.collect()
}

/// The `(version, position)` of a stream's events from `from_version` on, in version
/// order, at most `limit`, as of the snapshot of `connection`'s open transaction. `tail` is
/// this process's memory of the tail, when it has one.
pub(crate) fn stream_positions(
    connection: &Connection,
    tail: Option<&SharedTail>,
    stream_id: i64,
    from_version: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut found: Vec<(i64, i64)> = connection
        .prepare_cached(
            "SELECT version, position FROM stream_index WHERE stream_id = ?1 AND version >= ?2
             ORDER BY version LIMIT ?3",
        )?
        .query_map(params![stream_id, from_version, limit_sql], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if found.len() >= limit {
        return Ok(found);
    }
    // The index holds a prefix of every stream's versions; the rest is in the tail.
    let from_version = found
        .last()
        .map_or(from_version, |&(version, _)| version + 1);
    let mark = mark(connection)?;
    let remembered = tail.and_then(|tail| tail.lock().after(stream_id, mark, from_version));
    let scan_after = match remembered {
        Some((known, through)) => {
            found.extend(known);
            through.max(mark)
        }
        None => mark,
    };
    // What the memory does not hold: usually nothing, or the last commit.
    let mut statement = connection.prepare_cached(
        "SELECT version, position FROM events
         WHERE position > ?1 AND stream_id = ?2 AND version >= ?3 ORDER BY position",
    )?;
    let rows = statement.query_map(params![scan_after, stream_id, from_version], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    for row in rows {
        found.push(row?);
    }
    found.truncate(limit);
    Ok(found)
}

/// A batch being moved into `stream_index`, a slice per group commit.
#[derive(Debug, Default)]
struct Move {
    /// The batch's entries in key order.
    entries: Vec<Entry>,
    /// How many of them are in `stream_index` (committed).
    done: usize,
    /// The mark once all are: every committed entry up to it is in the batch.
    mark: i64,
}

/// The writer's side of the index: the tail it shares, the entries of its open transaction,
/// and the batch it is moving into `stream_index`.
#[derive(Debug)]
pub(crate) struct WriterIndex {
    shared: std::sync::Arc<SharedTail>,
    /// Entries inserted by the open transaction, in position order.
    pending: Vec<Entry>,
    /// Entries to gather before moving them into the index.
    batch: usize,
    moving: Option<Move>,
    /// How many of the batch's entries the open transaction moved.
    moving_now: usize,
}

impl WriterIndex {
    pub(crate) fn new(shared: std::sync::Arc<SharedTail>, batch: usize) -> Self {
        Self {
            shared,
            pending: Vec::new(),
            batch: batch.max(1),
            moving: None,
            moving_now: 0,
        }
    }

    /// Reads the tail from the file: when the writer starts, and whenever another
    /// connection may have written (appended, moved entries or the mark).
    pub(crate) fn load(&mut self, connection: &Connection) -> rusqlite::Result<()> {
        let mark = mark(connection)?;
        let mut tail = self.shared.lock();
        if tail.from == mark {
            // The mark did not move: what is known stays true, and only the events appended
            // since are new. A batch under way goes on, so that writers taking turns on one
            // file do not keep starting it over.
            let entries = entries_after(connection, tail.through)?;
            let through = entries.last().map_or(tail.through, |entry| entry.position);
            tail.add(&entries, through);
        } else {
            let entries = entries_after(connection, mark)?;
            let through = entries.last().map_or(mark, |entry| entry.position);
            *tail = Tail::loaded(mark, through, &entries);
            self.moving = None;
        }
        Ok(())
    }

    /// Records an event the open transaction inserted.
    pub(crate) fn inserted(&mut self, entry: Entry) {
        self.pending.push(entry);
    }

    /// How many entries the open transaction has recorded, to [`Self::undo_to`] later.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Forgets what the open transaction recorded after `len` entries (rolled back).
    pub(crate) fn undo_to(&mut self, len: usize) {
        self.pending.truncate(len);
    }

    /// The last version of a stream in the file, counting the open transaction; `None` for
    /// a stream without events.
    pub(crate) fn stream_version(
        &self,
        connection: &Connection,
        stream_id: i64,
    ) -> rusqlite::Result<Option<i64>> {
        let in_tail = self
            .pending
            .iter()
            .rev()
            .find(|entry| entry.stream_id == stream_id)
            .map(|entry| entry.version)
            .or_else(|| self.shared.lock().last_version(stream_id));
        if in_tail.is_some() {
            return Ok(in_tail);
        }
        connection
            .prepare_cached("SELECT max(version) FROM stream_index WHERE stream_id = ?1")?
            .query_row([stream_id], |row| row.get(0))
    }

    /// The positions of a stream's versions after `base`, at most `limit`, counting the open
    /// transaction.
    pub(crate) fn slots(
        &self,
        connection: &Connection,
        stream_id: i64,
        base: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<i64>> {
        let mut found =
            stream_positions(connection, Some(&self.shared), stream_id, base + 1, limit)?;
        let after = found.last().map_or(base, |&(version, _)| version);
        found.extend(
            self.pending
                .iter()
                .filter(|entry| entry.stream_id == stream_id && entry.version > after)
                .map(|entry| (entry.version, entry.position)),
        );
        found.truncate(limit);
        Ok(found.into_iter().map(|(_, position)| position).collect())
    }

    /// Before the open transaction commits: moves the next slice of the batch under way into
    /// `stream_index`, starting a batch of the committed tail once it is large enough, and
    /// moves the mark with the batch's last slice.
    pub(crate) fn before_commit(&mut self, connection: &Connection) -> rusqlite::Result<()> {
        self.moving_now = 0;
        if self.moving.is_none() {
            self.moving = self.start_move();
        }
        let Some(moving) = &self.moving else {
            return Ok(());
        };
        let slice = &moving.entries[moving.done..];
        let slice = &slice[..slice.len().min(INDEX_SLICE)];
        // A batch loaded again after another writer's commit may hold entries that writer
        // moved already: the same facts.
        let mut insert = connection.prepare_cached(
            "INSERT OR IGNORE INTO stream_index (stream_id, version, position)
             VALUES (?1, ?2, ?3)",
        )?;
        for entry in slice {
            insert.execute(params![entry.stream_id, entry.version, entry.position])?;
        }
        if moving.done + slice.len() == moving.entries.len() {
            connection
                .prepare_cached("UPDATE stream_index_mark SET indexed_through = ?1")?
                .execute([moving.mark])?;
        }
        self.moving_now = slice.len();
        Ok(())
    }

    /// A batch of every committed entry of the tail, once there are enough of them.
    fn start_move(&self) -> Option<Move> {
        let tail = self.shared.lock();
        if tail.len < self.batch {
            return None;
        }
        let mut entries = Vec::with_capacity(tail.len);
        for (&stream_id, versions) in &tail.current {
            entries.extend(versions.iter().map(|&(version, position)| Entry {
                stream_id,
                version,
                position,
            }));
        }
        entries.sort_unstable_by_key(|entry| (entry.stream_id, entry.version));
        Some(Move {
            entries,
            done: 0,
            mark: tail.through,
        })
    }

    /// After the open transaction committed: its entries join the shared tail, and the
    /// batch under way advances; once it is all moved, its entries leave the tail.
    pub(crate) fn committed(&mut self) {
        let mut tail = self.shared.lock();
        if let Some(through) = self.pending.last().map(|entry| entry.position) {
            tail.add(&self.pending, through);
        }
        if let Some(moving) = &mut self.moving {
            moving.done += self.moving_now;
            if moving.done == moving.entries.len() {
                tail.moved_to_index(moving.mark);
                self.moving = None;
            }
        }
        drop(tail);
        self.pending.clear();
        self.moving_now = 0;
    }

    /// After the open transaction failed: nothing of it happened.
    pub(crate) fn rolled_back(&mut self) {
        self.pending.clear();
        self.moving_now = 0;
    }
}

/// The id of a stream, if it exists.
pub(crate) fn stream_id(connection: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    connection
        .prepare_cached("SELECT id FROM streams WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream_id: i64, version: i64, position: i64) -> Entry {
        Entry {
            stream_id,
            version,
            position,
        }
    }

    #[test]
    fn the_memory_serves_readers_from_its_mark_and_from_the_mark_before() {
        // Positions 11-13 after a mark of 10: stream 1 at versions 4 and 5, stream 2 at 1.
        let mut tail = Tail::loaded(10, 13, &[entry(1, 4, 11), entry(2, 1, 12), entry(1, 5, 13)]);
        assert_eq!(tail.after(1, 10, 1), Some((vec![(4, 11), (5, 13)], 13)));
        assert_eq!(
            tail.after(1, 10, 5),
            Some((vec![(5, 13)], 13)),
            "from a version"
        );
        assert_eq!(
            tail.after(1, 9, 1),
            None,
            "it does not reach back before its mark"
        );
        assert_eq!(tail.last_version(1), Some(5));
        assert_eq!(tail.last_version(3), None);

        // A commit at 14 while 11-13 were moved into the index.
        tail.add(&[entry(1, 6, 14)], 14);
        tail.moved_to_index(13);
        assert_eq!(tail.len, 1, "what came after the batch stays");
        assert_eq!(
            tail.after(1, 10, 1),
            Some((vec![(4, 11), (5, 13), (6, 14)], 14)),
            "a snapshot from before the move still finds what moved"
        );
        assert_eq!(tail.after(1, 13, 1), Some((vec![(6, 14)], 14)));
        assert_eq!(tail.after(2, 13, 1), Some((vec![], 14)));
        assert_eq!(tail.last_version(1), Some(6));
        assert_eq!(
            tail.last_version(2),
            None,
            "stream 2's entries are in the index now"
        );

        // A second move forgets the first generation.
        tail.moved_to_index(14);
        assert_eq!(tail.after(1, 10, 1), None);
        assert_eq!(tail.after(1, 13, 1), Some((vec![(6, 14)], 14)));
        assert_eq!(tail.len, 0);
    }
}
