//! A second OS process (the probe binary, opening the file read-only) follows the store live:
//! it catches up on earlier events, then sees each new append shortly after it commits.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ledger_store::{EventStore, ExpectedVersion, RecordedEvent};
use tokio::sync::mpsc;

use crate::probe::probe_command;
use crate::support::{append_one, open, stream_name, temp_dir};

/// Kills the child if the test fails half-way, so no probe outlives it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The line the probe prints for an event it followed.
pub fn line_of(event: &RecordedEvent) -> String {
    format!(
        "event\t{}\t{}\t{}\t{}\t{}\t{}",
        event.position,
        event.stream,
        event.version,
        event.event_id,
        event.event_type,
        String::from_utf8_lossy(&event.payload)
    )
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>, waiting_for: &str) -> String {
    match tokio::time::timeout(Duration::from_secs(10), lines.recv()).await {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the follower exited while {waiting_for}"),
        Err(_) => panic!("the follower printed nothing for 10 s while {waiting_for}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_follows_the_file_live() {
    const EARLIER: u64 = 3;
    const LIVE: u64 = 6;
    let dir = temp_dir();
    let path = dir.path().join("followed.db");
    let store = open(&path);
    let stream = stream_name();
    for version in 0..EARLIER {
        append_one(&store, &stream, ExpectedVersion::from_last_version(version)).await;
    }

    let count = (EARLIER + LIVE).to_string();
    let mut child = probe_command(&[
        "follow",
        path.to_str().expect("a UTF-8 path"),
        "start",
        &count,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("start the follower");
    let stdout = child.stdout.take().expect("the follower's stdout");
    let mut follower = KillOnDrop(child);
    let (sender, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // The test harness shares the probe's stdout; keep only the probe's lines.
            if !(line == "ready" || line.starts_with("event\t")) {
                continue;
            }
            if sender.send(line).is_err() {
                return;
            }
        }
    });

    assert_eq!(next_line(&mut lines, "starting").await, "ready");
    let earlier = store.read_stream(&stream, 1, 100).await.unwrap();
    for event in &earlier {
        assert_eq!(next_line(&mut lines, "catching up").await, line_of(event));
    }

    let mut slowest = Duration::ZERO;
    for version in EARLIER..EARLIER + LIVE {
        append_one(&store, &stream, ExpectedVersion::Exact(version)).await;
        let appended = Instant::now();
        let line = next_line(&mut lines, "following live").await;
        slowest = slowest.max(appended.elapsed());
        let stored = store.read_stream(&stream, version + 1, 1).await.unwrap();
        assert_eq!(line, line_of(&stored[0]));
    }
    // The follower polls every 25 ms; allow for a loaded machine, not for missing wake-ups.
    assert!(
        slowest < Duration::from_secs(2),
        "a live event took {slowest:?} to arrive"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = follower.0.try_wait().unwrap() {
            assert!(status.success(), "the follower failed: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not exit after its events"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.close().await.unwrap();
}
