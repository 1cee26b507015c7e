//! Test probe: a second OS process on a store file, for the cross-process and crash tests.
//! The test binary runs itself again as the probe ([`probe_command`]), so no harness binary
//! lives in the library crate.
//!
//! ```text
//! probe follow PATH AFTER COUNT
//!     Follows the file read-only from AFTER (a position, or `start`), printing `ready`, then
//!     one line per event: event<TAB>position<TAB>stream<TAB>version<TAB>id<TAB>type<TAB>payload
//!     and exits after COUNT events.
//! probe hammer PATH WRITERS STREAMS INDEX_BATCH
//!     Appends as fast as it can from WRITERS concurrent tasks to STREAMS streams until
//!     killed, moving the log's tail into the stream index every INDEX_BATCH events, printing after each acknowledged append one line per event:
//!     ack<TAB>stream<TAB>version<TAB>position<TAB>id<TAB>type<TAB>payload
//!     A line starting with `bug` reports a broken store rule.
//! ```
//!
//! Payloads are printable ASCII without tabs, so lines can be compared byte for byte.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use ledger_store::{EventStore, ExpectedVersion, GlobalPosition, NewEvent, StoreError};
use ledger_store_sqlite::SqliteStore;
use uuid::Uuid;

use crate::follow::line_of;

const USAGE: &str =
    "usage: probe follow PATH AFTER COUNT\n       probe hammer PATH WRITERS STREAMS INDEX_BATCH";

/// The environment variable that carries the probe's arguments, one a line; unset, the
/// probe test does nothing, so a plain `cargo test -- --ignored` passes it.
pub const PROBE_ARGS: &str = "LEDGER_SQLITE_PROBE_ARGS";

/// A command that runs this test binary as the probe with `args`. Its stdout also carries
/// the test harness's own lines (`running 1 test`, ...); readers keep only the probe's.
pub fn probe_command(args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command
        .args(["--exact", "probe::probe", "--ignored", "--nocapture"])
        .env(PROBE_ARGS, args.join("\n"));
    command
}

#[test]
#[ignore = "runs only as a child process of the follow and crash tests"]
fn probe() {
    let Ok(joined) = std::env::var(PROBE_ARGS) else {
        return;
    };
    let args: Vec<&str> = joined.lines().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the probe's runtime");
    let result = runtime.block_on(async {
        match args[..] {
            ["follow", path, after, count] => follow(path, after, count).await,
            ["hammer", path, writers, streams, index_batch] => {
                hammer(path, writers, streams, index_batch).await
            }
            _ => Err(USAGE.to_owned()),
        }
    });
    if let Err(message) = result {
        panic!("probe: {message}");
    }
}

fn number<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, not {text:?}"))
}

/// Prints lines from any task, flushing whenever the queue runs dry so that every printed
/// acknowledgement is in the pipe before the process can be killed after it.
fn printer() -> (mpsc::Sender<String>, std::thread::JoinHandle<()>) {
    let (sender, lines) = mpsc::channel::<String>();
    let thread = std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Ok(line) = lines.recv() {
            let mut ok = out.write_all(line.as_bytes()).is_ok();
            while let Ok(more) = lines.try_recv() {
                ok &= out.write_all(more.as_bytes()).is_ok();
            }
            if !ok || out.flush().is_err() {
                // The reader is gone; nothing left to report to.
                return;
            }
        }
    });
    (sender, thread)
}

async fn follow(path: &str, after: &str, count: &str) -> Result<(), String> {
    let after: Option<GlobalPosition> = match after {
        "start" => None,
        position => Some(number("AFTER", position)?),
    };
    let count: usize = number("COUNT", count)?;
    let store = SqliteStore::open_read_only(&PathBuf::from(path)).map_err(|e| e.to_string())?;
    let mut subscription = store
        .subscribe_all(after)
        .await
        .map_err(|e| e.to_string())?;
    let (out, printing) = printer();
    let _ = out.send("ready\n".to_owned());
    for _ in 0..count {
        let event = subscription.next().await.map_err(|e| e.to_string())?;
        let _ = out.send(format!("{}\n", line_of(&event)));
    }
    drop(out);
    printing
        .join()
        .map_err(|_| "the printer thread panicked".to_owned())
}

async fn hammer(path: &str, writers: &str, streams: &str, index_batch: &str) -> Result<(), String> {
    let writers: usize = number("WRITERS", writers)?;
    let streams: usize = number("STREAMS", streams)?;
    let index_batch: usize = number("INDEX_BATCH", index_batch)?;
    if writers == 0 || streams == 0 {
        return Err("WRITERS and STREAMS must be at least 1".to_owned());
    }
    let store = SqliteStore::open_with_index_batch(&PathBuf::from(path), index_batch)
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    let (out, _printing) = printer();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = Arc::clone(&store);
        let out = out.clone();
        let stream = format!("crash-{}", writer % streams);
        tasks.spawn(async move { append_forever(&store, writer, &stream, &out).await });
    }
    drop(out);
    // Runs until killed; a task only ends on a broken rule.
    match tasks.join_next().await {
        Some(Ok(message)) => Err(message),
        Some(Err(error)) => Err(format!("a writer task failed: {error}")),
        None => Ok(()),
    }
}

fn payload(writer: usize, n: usize, event_id: Uuid) -> Vec<u8> {
    let pad = "x".repeat(180 + (n * 37) % 160);
    format!(r#"{{"writer":{writer},"n":{n},"event_id":"{event_id}","pad":"{pad}"}}"#).into_bytes()
}

/// Appends to `stream` until something breaks a rule; returns what did.
async fn append_forever(
    store: &SqliteStore,
    writer: usize,
    stream: &str,
    out: &mpsc::Sender<String>,
) -> String {
    let mut known = 0;
    for n in 0.. {
        // Every seventh append is a batch, to exercise atomic multi-event appends.
        let count = if n % 7 == 0 { 1 + n % 3 } else { 1 };
        let events: Vec<NewEvent> = (0..count)
            .map(|_| {
                let event_id = Uuid::new_v4();
                NewEvent {
                    event_id,
                    event_type: "crash_probed".to_owned(),
                    payload: payload(writer, n, event_id),
                    attachment: None,
                }
            })
            .collect();
        let outcome = loop {
            let expected = ExpectedVersion::from_last_version(known);
            match store.append(stream, expected, events.clone()).await {
                Ok(outcome) => break outcome,
                Err(StoreError::WrongExpectedVersion { actual, .. }) => known = actual,
                Err(StoreError::Unavailable(message)) => {
                    eprintln!("unavailable, retrying: {message}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => {
                    let message = format!("bug\tappend to {stream} at {expected}: {error}\n");
                    let _ = out.send(message.clone());
                    return message;
                }
            }
        };
        known = outcome.last_version;
        if n % 50 == 0 {
            // An immediate retry must return the stored outcome and write nothing.
            let expected = ExpectedVersion::from_last_version(outcome.first_version - 1);
            match store.append(stream, expected, events.clone()).await {
                Ok(again) if again == outcome => {}
                other => {
                    let message =
                        format!("bug\tretry of {outcome:?} on {stream} answered {other:?}\n");
                    let _ = out.send(message.clone());
                    return message;
                }
            }
        }
        let mut lines = String::new();
        for (offset, event) in events.iter().enumerate() {
            let position = if offset + 1 == events.len() {
                outcome.position.to_string()
            } else {
                // Only the last event's position is acknowledged.
                "-".to_owned()
            };
            lines.push_str(&format!(
                "ack\t{stream}\t{}\t{position}\t{}\t{}\t{}\n",
                outcome.first_version + offset as u64,
                event.event_id,
                event.event_type,
                String::from_utf8_lossy(&event.payload)
            ));
        }
        if out.send(lines).is_err() {
            return "the printer stopped".to_owned();
        }
    }
    "unreachable: the append loop ended".to_owned()
}
