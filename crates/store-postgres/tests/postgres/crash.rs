//! Durability under `kill -9`: a child process appends from many concurrent writers (so
//! appends share group commits) and prints each acknowledged event; the test kills it with
//! SIGKILL at random moments and checks, after each kill, that every acknowledged event is
//! stored unchanged at its acknowledged position, that positions and stream versions have no
//! gaps or duplicates, and that nothing committed earlier ever disappears.
//!
//! The child is this test binary itself, re-executed to run only [`child_appender`], which
//! is `#[ignore]`d and does nothing unless [`CHILD_ENV`] names the database and schema.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ledger_store::conformance::crash::{self, Ack, Positions, XorShift};
use ledger_store::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError};
use ledger_store_postgres::PostgresStore;
use uuid::Uuid;

use crate::support::{database, read_everything, TestSchema};

/// `URL<TAB>SCHEMA` for the child.
const CHILD_ENV: &str = "LEDGER_PG_CRASH_CHILD";
const KILLS: usize = 16;
const WRITERS: usize = 32;
const STREAMS: usize = 12;

/// Kills the child if the test fails half-way, so no appender outlives it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(url) = runtime.block_on(database()) else {
        return;
    };
    let schema = TestSchema::new(&url);
    let seed = (Uuid::new_v4().as_u128() as u64) | 1;
    eprintln!("crash test seed {seed:#x}, schema {}", schema.name);
    let mut random = XorShift(seed);
    let mut acked: HashMap<Uuid, Ack> = HashMap::new();
    let mut survived: Vec<RecordedEvent> = Vec::new();
    let me = std::env::current_exe().expect("the test binary's path");

    for kill in 0..KILLS {
        let mut child = Command::new(&me)
            .args([
                "--exact",
                "crash::child_appender",
                "--nocapture",
                "--ignored",
            ])
            .env(CHILD_ENV, format!("{url}\t{}", schema.name))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the appending child");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut child = KillOnDrop(child);
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let reading = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            // Only whole lines count: the last one may be cut by the kill.
            while stdout.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line.ends_with('\n') {
                    if line == "ready\n" {
                        let _ = ready_sender.send(());
                    }
                    lines.push(std::mem::take(&mut line));
                }
            }
            lines
        });
        let reading_errors = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            err
        });

        // Killed a random while after its store is open and the writers have started.
        let started = ready.recv_timeout(Duration::from_secs(60)).is_ok();
        let delay = Duration::from_millis(20 + random.next_u64() % 281);
        if started {
            std::thread::sleep(delay);
        }
        child.0.kill().expect("SIGKILL the child");
        let status = child.0.wait().unwrap();
        let lines = reading.join().unwrap();
        let err = reading_errors.join().unwrap();
        assert!(
            started,
            "kill {kill}: the child never got ready; stderr: {err}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "kill {kill}: the child ended on its own ({status}); stderr: {err}"
            );
        }

        for line in &lines {
            assert!(
                !line.starts_with("bug"),
                "kill {kill}: {line}\nstderr: {err}"
            );
            if line.starts_with("ack\t") {
                let ack = Ack::parse(line.trim_end_matches('\n'));
                if let Some(earlier) = acked.insert(ack.event_id, ack.clone()) {
                    assert_eq!(earlier, ack, "one event id acknowledged twice differently");
                }
            }
        }
        runtime.block_on(check_after_kill(
            &schema,
            kill,
            delay,
            &acked,
            &mut survived,
        ));
    }
    eprintln!(
        "{} acknowledged events checked across {KILLS} kills",
        acked.len()
    );
    assert!(
        acked.len() >= 200,
        "only {} events were acknowledged: the test exercised too little",
        acked.len()
    );
}

/// Opens the store as a restarted node would and checks everything it holds.
async fn check_after_kill(
    schema: &TestSchema,
    kill: usize,
    delay: Duration,
    acked: &HashMap<Uuid, Ack>,
    survived: &mut Vec<RecordedEvent>,
) {
    let context = format!("after kill {kill} (at {delay:?})");
    let store = schema.open().await;
    let all = read_everything(&store).await;
    // At or past the last event read: the dead child's last COMMIT may still be landing
    // (the server finishes a pipelined COMMIT it has already received).
    let head = store.head_position().await.unwrap();
    assert!(
        head >= all.last().map(|e| e.position),
        "{context}: the head {head:?} is before the last event read"
    );

    crash::check_after_kill(&context, all, Positions::Contiguous, acked, survived);
    store.close().await.expect("close after checking");
}

/// The child: appends until killed. Does nothing unless run by the test above.
#[test]
#[ignore = "the child process of acknowledged_appends_survive_sigkill"]
fn child_appender() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, schema) = target.split_once('\t').expect("URL<TAB>SCHEMA");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (out, lines) = std::sync::mpsc::channel::<String>();
    // Prints from one thread, flushing whenever the queue runs dry, so every printed
    // acknowledgement is in the pipe before the process can be killed after it. A newline
    // first: the test harness may have left its own line open.
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut stdout = stdout.lock();
        let _ = stdout.write_all(b"\n");
        while let Ok(line) = lines.recv() {
            let mut ok = stdout.write_all(line.as_bytes()).is_ok();
            while let Ok(more) = lines.try_recv() {
                ok &= stdout.write_all(more.as_bytes()).is_ok();
            }
            if !ok || stdout.flush().is_err() {
                return;
            }
        }
    });
    runtime.block_on(async {
        let store = match PostgresStore::connect_in_schema(url, schema).await {
            Ok(store) => Arc::new(store),
            Err(error) => {
                let _ = out.send(format!(
                    "bug: the child could not open the store: {error}\n"
                ));
                std::future::pending::<Arc<PostgresStore>>().await
            }
        };
        let _ = out.send("ready\n".to_owned());
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let store = Arc::clone(&store);
            let out = out.clone();
            tasks.spawn(async move {
                append_forever(&store, writer, &format!("crash-{}", writer % STREAMS), &out).await
            });
        }
        // Runs until killed; a writer only ends on a broken rule.
        if let Some(ended) = tasks.join_next().await {
            let message = ended.unwrap_or_else(|error| format!("a writer panicked: {error}"));
            let _ = out.send(format!("bug: {message}\n"));
        }
        std::future::pending::<()>().await;
    });
}

/// Appends one to three events at a time to `stream`, learning its version from conflicts;
/// retries an unavailable append with the same events. Returns only on a broken rule.
async fn append_forever(
    store: &PostgresStore,
    writer: usize,
    stream: &str,
    out: &std::sync::mpsc::Sender<String>,
) -> String {
    let mut known = 0;
    let mut n = 0u64;
    loop {
        n += 1;
        let events: Vec<NewEvent> = (0..1 + (n as usize + writer) % 3)
            .map(|k| {
                let event_id = Uuid::new_v4();
                NewEvent {
                    event_id,
                    event_type: "crash_tested".to_owned(),
                    payload: format!(r#"{{"writer":{writer},"n":{n},"k":{k},"id":"{event_id}"}}"#)
                        .into_bytes(),
                    attachment: None,
                }
            })
            .collect();
        loop {
            let expected = ExpectedVersion::from_last_version(known);
            match store.append(stream, expected, events.clone()).await {
                Ok(outcome) => {
                    if outcome.first_version != known + 1 {
                        return format!(
                            "append at {known} got versions from {}",
                            outcome.first_version
                        );
                    }
                    let mut text = String::new();
                    for (offset, event) in events.iter().enumerate() {
                        let version = outcome.first_version + offset as u64;
                        let position = if version == outcome.last_version {
                            outcome.position.to_string()
                        } else {
                            "-".to_owned()
                        };
                        text.push_str(&format!(
                            "ack\t{stream}\t{version}\t{position}\t{}\t{}\t{}\n",
                            event.event_id,
                            event.event_type,
                            String::from_utf8_lossy(&event.payload)
                        ));
                    }
                    let _ = out.send(text);
                    known = outcome.last_version;
                    break;
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    // Someone else took the slot: these events go in after theirs.
                    known = actual;
                }
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return format!("append failed: {error}"),
            }
        }
    }
}
