//! Durability under `kill -9`: a child process appends as fast as it can from many
//! concurrent writers (so appends share group commits) and prints each acknowledged event;
//! the test kills it with SIGKILL at random moments, restarts on the same file, and checks
//! that every acknowledged event is there unchanged, streams have no gaps or duplicates, and
//! nothing committed earlier ever disappears.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ledger_store::{GlobalPosition, RecordedEvent, StreamVersion};
use uuid::Uuid;

use crate::follow::KillOnDrop;
use crate::probe::probe_command;
use crate::support::{open, read_everything, temp_dir};

const KILLS: usize = 24;
const WRITERS: &str = "32";
const STREAMS: &str = "12";

/// One event the child reported as acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    version: StreamVersion,
    /// Only the last event of an append has its position acknowledged.
    position: Option<GlobalPosition>,
    event_id: Uuid,
    event_type: String,
    payload: String,
}

fn parse_ack(line: &str) -> Ack {
    let fields: Vec<&str> = line.splitn(7, '\t').collect();
    let [_, stream, version, position, event_id, event_type, payload] = fields[..] else {
        panic!("malformed line from the child: {line:?}");
    };
    Ack {
        stream: stream.to_owned(),
        version: version.parse().unwrap(),
        position: (position != "-").then(|| position.parse().unwrap()),
        event_id: event_id.parse().unwrap(),
        event_type: event_type.to_owned(),
        payload: payload.to_owned(),
    }
}

/// A small xorshift generator seeded from a random UUID: random kill moments without a
/// dependency, and the seed printed so that a failure can be looked at again.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

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
    let mut random = Random(seed);
    let mut acked: HashMap<Uuid, Ack> = HashMap::new();
    let mut survived: Vec<RecordedEvent> = Vec::new();
    let started = Instant::now();

    for kill in 0..KILLS {
        let mut child = probe_command(&[
            "hammer",
            path.to_str().expect("a UTF-8 path"),
            WRITERS,
            STREAMS,
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

        let delay = Duration::from_millis(20 + random.next() % 281);
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
                let ack = parse_ack(line);
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

    assert!(
        all.len() >= survived.len() && all[..survived.len()] == survived[..],
        "{context}: events committed before an earlier kill changed or vanished"
    );
    let mut last_position = 0;
    let mut versions: HashMap<&str, StreamVersion> = HashMap::new();
    let mut ids = HashSet::new();
    for event in &all {
        assert!(
            event.position > last_position,
            "{context}: position {} after {last_position}",
            event.position
        );
        last_position = event.position;
        let version = versions.entry(event.stream.as_str()).or_insert(0);
        *version += 1;
        assert_eq!(
            event.version, *version,
            "{context}: {} has version {} where {} was due",
            event.stream, event.version, *version
        );
        assert!(
            ids.insert(event.event_id),
            "{context}: event id {} stored twice",
            event.event_id
        );
    }

    let by_id: HashMap<Uuid, &RecordedEvent> = all.iter().map(|e| (e.event_id, e)).collect();
    for ack in acked.values() {
        let Some(stored) = by_id.get(&ack.event_id) else {
            panic!("{context}: acknowledged event {ack:?} is missing");
        };
        assert_eq!(
            (
                stored.stream.as_str(),
                stored.version,
                stored.event_type.as_str(),
                stored.payload.as_slice()
            ),
            (
                ack.stream.as_str(),
                ack.version,
                ack.event_type.as_str(),
                ack.payload.as_bytes()
            ),
            "{context}: acknowledged event {} changed",
            ack.event_id
        );
        if let Some(position) = ack.position {
            assert_eq!(
                stored.position, position,
                "{context}: {} moved",
                ack.event_id
            );
        }
    }
    store.close().await.expect("close after checking");
    *survived = all;
}
