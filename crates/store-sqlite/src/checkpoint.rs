//! Background checkpoints: copying the WAL back into the database file on a thread and a
//! connection of their own, so that group commits (and the appends waiting on them) do not
//! pay for it. With SQLite's automatic checkpoints, the commit that crossed the threshold
//! copied up to 40 MiB before its appends were answered (about 13 ms, measured).
//!
//! A passive checkpoint never blocks the writer, but under continuous appends it never
//! catches up completely either, and SQLite only starts the WAL over from its beginning when
//! a write transaction begins with everything copied. So once the WAL has grown long, or
//! has grown for a while, the writer finishes the copy itself between two group commits
//! ([`Checkpointer::restart_due`]); by then only what was written since the last background
//! checkpoint is left to copy.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::schema::BUSY_TIMEOUT;

/// Least time between two checkpoints: long enough for each to copy many commits' worth of
/// pages at once (an index leaf dirtied by several commits is copied once).
const INTERVAL: Duration = Duration::from_millis(25);

/// WAL length (in 4 KiB frames, so 64 MiB) past which the writer completes a checkpoint
/// itself, so that the WAL starts over instead of growing.
const RESTART_FRAMES: u64 = 16_384;

/// A WAL of at least this many frames (4 MiB) also starts over once [`RESTART_INTERVAL`]
/// has passed since it last did. Until the WAL first starts over, every commit writes past
/// the end of its file, and syncing a file that grew also writes its new length: one more
/// write per commit (measured: 180-300 µs for a one-event commit instead of 110 µs, which
/// alone made a lone writer slower than a transaction per append). Once started over,
/// commits overwrite the file from its beginning. A busy store reaches [`RESTART_FRAMES`]
/// first anyway (256 writers do in about 130 ms); this spares a quiet store, or one just
/// opened, the slow commits, for a short pause of the writer four times a second at most.
const RESTART_MIN_FRAMES: u64 = 1_024;
const RESTART_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct Wanted {
    commits: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    wanted: Mutex<Wanted>,
    wake: Condvar,
    /// Frames in the WAL as of the last checkpoint.
    wal_frames: AtomicU64,
    /// Whether a background checkpoint is running now.
    busy: AtomicBool,
}

impl Shared {
    fn wanted(&self) -> std::sync::MutexGuard<'_, Wanted> {
        // The flags stay meaningful even if a holder panicked.
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The background checkpoint thread of one writer.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// When the writer last completed a checkpoint itself.
    last_restart: Instant,
}

/// Runs a passive checkpoint on `connection`; returns the WAL's length in frames.
pub(crate) fn checkpoint(connection: &Connection) -> rusqlite::Result<u64> {
    let frames: i64 =
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))?;
    // -1 when the file is not in WAL mode (it always is here).
    Ok(u64::try_from(frames).unwrap_or(0))
}

impl Checkpointer {
    /// Opens a connection for checkpoints on `path` and starts the thread.
    pub(crate) fn start(path: &Path) -> Result<Self, String> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|connection| {
            connection.busy_timeout(BUSY_TIMEOUT)?;
            // A checkpoint syncs the WAL before copying and the file after.
            connection
                .execute_batch("PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;")?;
            Ok(connection)
        })
        .map_err(|error| format!("opening the checkpoint connection: {error}"))?;
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("ledger-sqlite-checkpoint".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&connection, &shared)
            })
            .map_err(|error| format!("starting the checkpoint thread: {error}"))?;
        Ok(Self {
            shared,
            thread: Some(thread),
            last_restart: Instant::now(),
        })
    }

    /// Tells the thread that a commit added to the WAL.
    pub(crate) fn committed(&self) {
        let mut wanted = self.shared.wanted();
        if !wanted.commits {
            wanted.commits = true;
            self.shared.wake.notify_one();
        }
    }

    /// Whether the writer should complete a checkpoint itself now, so that the WAL starts
    /// over: it is long (or not short, and last started over a while ago), no background
    /// checkpoint is running, and the writer did not just try (readers of old snapshots can
    /// keep the WAL from starting over for a while).
    pub(crate) fn restart_due(&mut self) -> bool {
        let frames = self.shared.wal_frames.load(Ordering::Relaxed);
        let since = self.last_restart.elapsed();
        if frames < RESTART_MIN_FRAMES
            || (frames < RESTART_FRAMES && since < RESTART_INTERVAL)
            || self.shared.busy.load(Ordering::Relaxed)
            || since < INTERVAL
        {
            return false;
        }
        self.last_restart = Instant::now();
        // Until the next background checkpoint measures the WAL again.
        self.shared.wal_frames.store(0, Ordering::Relaxed);
        true
    }

    fn stop(&mut self) {
        self.shared.wanted().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(connection: &Connection, shared: &Shared) {
    loop {
        {
            let mut wanted = shared.wanted();
            while !wanted.commits && !wanted.stop {
                wanted = shared
                    .wake
                    .wait(wanted)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wanted.stop {
                return;
            }
            wanted.commits = false;
        }
        shared.busy.store(true, Ordering::Relaxed);
        match checkpoint(connection) {
            Ok(frames) => shared.wal_frames.store(frames, Ordering::Relaxed),
            // Nothing is lost: the frames stay in the WAL for the next checkpoint.
            Err(error) => tracing::warn!(%error, "background checkpoint failed"),
        }
        shared.busy.store(false, Ordering::Relaxed);
        // Pause before the next one, but not past a stop request.
        let wanted = shared.wanted();
        let _pause = shared
            .wake
            .wait_timeout_while(wanted, INTERVAL, |wanted| !wanted.stop)
            .unwrap_or_else(PoisonError::into_inner);
    }
}
