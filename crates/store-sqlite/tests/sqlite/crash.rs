//! Durability under `kill -9`: a child process appends as fast as it can from many
//! concurrent writers (so appends share group commits) and prints each acknowledged event;
//! the test kills it with SIGKILL at random moments, restarts on the same file, and checks
//! that every acknowledged event is there unchanged, streams have no gaps or duplicates, and
//! nothing committed earlier ever disappears.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ledger_store::conformance::crash::{check_after_kill, Ack, Positions, XorShift};
use ledger_store::{EventStore, RecordedEvent};
use uuid::Uuid;

use crate::follow::KillOnDrop;
use crate::probe::probe_command;
use crate::support::{open, read_everything, temp_dir};

const KILLS: usize = 24;
const WRITERS: &str = "32";
const STREAMS: &str = "12";
/// The child moves the log's tail into the stream index every this many events, so that
/// kills also land while a batch is moved.
const INDEX_BATCH: &str = "40";

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = temp_dir();
    let path = dir.path().join("crash.db");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seed = (Uuid::new_v4().as_u128() as u64) | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut random = XorShift(seed);
    let mut acked: HashMap<Uuid, Ack> = HashMap::new();
    let mut survived: Vec<RecordedEvent> = Vec::new();
    let started = Instant::now();

    for kill in 0..KILLS {
        let mut child = probe_command(&[
            "hammer",
            path.to_str().expect("a UTF-8 path"),
            WRITERS,
            STREAMS,
            INDEX_BATCH,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the appending child");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut child = KillOnDrop(child);
        let reading = std::thread::spawn(move || {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).map(|_| out)
        });
        let reading_errors = std::thread::spawn(move || {
            let mut err = String::new();
            stderr.read_to_string(&mut err).map(|_| err)
        });

        let delay = Duration::from_millis(20 + random.next_u64() % 281);
        std::thread::sleep(delay);
        child.0.kill().expect("SIGKILL the child");
        let status = child.0.wait().unwrap();
        let out = reading.join().unwrap().unwrap();
        let err = reading_errors.join().unwrap().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "kill {kill}: the child ended on its own ({status}); stderr: {err}"
            );
        }

        let out = String::from_utf8(out).expect("the child prints ASCII");
        // The last line may have been cut by the kill; only whole lines were acknowledged.
        let whole = match out.rfind('\n') {
            Some(end) => &out[..end],
            None => "",
        };
        for line in whole.lines() {
            assert!(
                !line.starts_with("bug"),
                "kill {kill}: {line}\nstderr: {err}"
            );
            if line.starts_with("ack\t") {
                let ack = Ack::parse(line);
                if let Some(earlier) = acked.insert(ack.event_id, ack.clone()) {
                    assert_eq!(earlier, ack, "one event id acknowledged twice differently");
                }
            }
        }

        runtime.block_on(check_after_restart(
            &path,
            kill,
            delay,
            &acked,
            &mut survived,
        ));
    }
    eprintln!(
        "{} acknowledged events checked across {KILLS} kills in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(
        acked.len() >= 200,
        "only {} events were acknowledged: the test exercised too little",
        acked.len()
    );
}

/// Opens the store as the restarted service would and checks everything it holds.
async fn check_after_restart(
    path: &Path,
    kill: usize,
    delay: Duration,
    acked: &HashMap<Uuid, Ack>,
    survived: &mut Vec<RecordedEvent>,
) {
    let context = format!("after kill {kill} (at {delay:?})");
    let store = open(path);
    let all = read_everything(&store).await;
    // Each stream read by itself (index, then the tail read back from the log) is exactly
    // its part of the log.
    let mut by_stream: HashMap<&str, Vec<RecordedEvent>> = HashMap::new();
    for event in &all {
        by_stream
            .entry(event.stream.as_str())
            .or_default()
            .push(event.clone());
    }
    for (stream, events) in by_stream {
        let read = store.read_stream(stream, 1, usize::MAX).await.unwrap();
        assert_eq!(read, events, "{context}: {stream} read by itself");
    }
    check_after_kill(&context, all, Positions::Increasing, acked, survived);
    store.close().await.expect("close after checking");
}
