//! Appends: contiguous versions, expected-version conflicts, concurrent writers, idempotent
//! retries and event-id conflicts.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamVersion};

use super::support::*;
use super::Harness;

/// Appends get versions 1..n with no gaps, in the order given, and read back byte for byte.
pub async fn contiguous_versions<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("contiguous_versions", &store);
    let stream = stream_name();

    let first = new_events("first", 1);
    let batch = new_events("batch", 3);
    let last = new_events("last", 1);
    let o1 = c
        .append(&stream, ExpectedVersion::NoStream, first.clone())
        .await;
    let o2 = c
        .append(&stream, ExpectedVersion::Exact(1), batch.clone())
        .await;
    let o3 = c
        .append(&stream, ExpectedVersion::Exact(4), last.clone())
        .await;
    c.ensure(
        o1.position < o2.position && o2.position < o3.position,
        || format!("outcome positions do not increase: {o1:?} {o2:?} {o3:?}"),
    );

    let all: Vec<NewEvent> = first.iter().chain(&batch).chain(&last).cloned().collect();
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("read_stream from 1", &stored, &stream, 1, &all);
    c.ensure_eq("position of version 1", stored[0].position, o1.position);
    c.ensure_eq("position of version 4", stored[3].position, o2.position);
    c.ensure_eq("position of version 5", stored[4].position, o3.position);

    let middle = c.read_stream(&stream, 3, 2).await;
    c.ensure_stored(
        "read_stream from 3 limit 2",
        &middle,
        &stream,
        3,
        &all[2..4],
    );
    let from_zero = c.read_stream(&stream, 0, 100).await;
    c.ensure_stored("read_stream from 0", &from_zero, &stream, 1, &all);
    let tail = c.read_stream(&stream, 5, 100).await;
    c.ensure_stored("read_stream from 5", &tail, &stream, 5, &all[4..]);
}

/// `NoStream` on an existing stream fails with the actual version and writes nothing.
pub async fn no_stream_on_existing_stream<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("no_stream_on_existing_stream", &store);
    let stream = stream_name();
    let existing = new_events("existing", 2);
    c.append(&stream, ExpectedVersion::NoStream, existing.clone())
        .await;
    c.append_wrong_version(
        &stream,
        ExpectedVersion::NoStream,
        new_events("second", 1),
        2,
    )
    .await;
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored(
        "stream after the refused append",
        &stored,
        &stream,
        1,
        &existing,
    );
}

/// An exact expected version that is behind, ahead, or names a missing stream fails with the
/// actual version and writes nothing.
pub async fn exact_version_conflicts<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("exact_version_conflicts", &store);
    let stream = stream_name();
    let existing = new_events("existing", 3);
    c.append(&stream, ExpectedVersion::NoStream, existing.clone())
        .await;

    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(2),
        new_events("behind", 1),
        3,
    )
    .await;
    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(5),
        new_events("ahead", 1),
        3,
    )
    .await;
    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(4),
        new_events("ahead", 2),
        3,
    )
    .await;
    let missing = stream_name();
    c.append_wrong_version(
        &missing,
        ExpectedVersion::Exact(1),
        new_events("missing", 1),
        0,
    )
    .await;

    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored(
        "stream after refused appends",
        &stored,
        &stream,
        1,
        &existing,
    );
    let stored = c.read_stream(&missing, 1, 100).await;
    c.ensure_eq("events in the missing stream", stored.len(), 0);
    // The stream still accepts the right version afterwards.
    c.append(&stream, ExpectedVersion::Exact(3), new_events("right", 1))
        .await;
}

/// 16 tasks race for each version of one stream: exactly one wins each round, every loser
/// gets `WrongExpectedVersion` with the winner's version, and the stream holds the winners.
pub async fn concurrent_appends_one_winner_per_version<H: Harness>(harness: &H) {
    const RACERS: usize = 16;
    const ROUNDS: u64 = 6;
    let store = Arc::new(harness.open().await);
    let c = Check::new("concurrent_appends_one_winner_per_version", &*store);
    let stream = stream_name();
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = ExpectedVersion::from_last_version(round);
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = JoinSet::new();
        for racer in 0..RACERS {
            let store = Arc::clone(&store);
            let stream = stream.clone();
            let barrier = Arc::clone(&barrier);
            let event = new_event(&format!("round-{round}"), racer);
            tasks.spawn(async move {
                barrier.wait().await;
                let result = store.append(&stream, expected, vec![event.clone()]).await;
                (event, result)
            });
        }
        let mut round_winners = Vec::new();
        for _ in 0..RACERS {
            let (event, result) = match c.timed("a racing append", tasks.join_next()).await {
                Some(Ok(done)) => done,
                Some(Err(error)) => c.fail(format_args!("a racing task failed: {error}")),
                None => c.fail("a racing task went missing"),
            };
            match result {
                Ok(outcome) => {
                    c.ensure_eq(
                        "winning outcome versions",
                        (outcome.first_version, outcome.last_version),
                        (round + 1, round + 1),
                    );
                    round_winners.push(event);
                }
                Err(StoreError::WrongExpectedVersion {
                    stream: reported,
                    expected: reported_expected,
                    actual,
                }) => {
                    c.ensure_eq("stream of a lost race", reported.as_str(), stream.as_str());
                    c.ensure_eq("expected version of a lost race", reported_expected, expected);
                    c.ensure_eq("actual version reported to a loser", actual, round + 1);
                }
                Err(error) => c.fail(format_args!(
                    "a racing append at {expected} failed with {error:?} instead of WrongExpectedVersion"
                )),
            }
        }
        c.ensure_eq(
            &format!("number of winners for version {}", round + 1),
            round_winners.len(),
            1,
        );
        winners.append(&mut round_winners);
    }
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("stream after the races", &stored, &stream, 1, &winners);
}

/// Writers that retry on conflict (re-reading the actual version from the error) all get
/// their events in exactly once, and the stream stays contiguous.
pub async fn concurrent_appends_with_retries<H: Harness>(harness: &H) {
    const WRITERS: usize = 8;
    const EACH: usize = 8;
    let store = Arc::new(harness.open().await);
    let c = Check::new("concurrent_appends_with_retries", &*store);
    let stream = stream_name();
    let mut tasks = JoinSet::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut known: StreamVersion = 0;
            let mut mine = Vec::new();
            for n in 0..EACH {
                let event = new_event(&format!("writer-{writer}"), n);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    if attempts > 10_000 {
                        return Err(format!("writer {writer} never got event {n} in"));
                    }
                    let expected = ExpectedVersion::from_last_version(known);
                    match store.append(&stream, expected, vec![event.clone()]).await {
                        Ok(outcome) => {
                            known = outcome.last_version;
                            mine.push((outcome.last_version, event));
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => known = actual,
                        Err(error) => return Err(format!("writer {writer}: {error}")),
                    }
                }
            }
            Ok(mine)
        });
    }
    let mut by_version = HashMap::new();
    for _ in 0..WRITERS {
        match c.timed("a retrying writer", tasks.join_next()).await {
            Some(Ok(Ok(mine))) => {
                let mut previous = 0;
                for (version, event) in mine {
                    c.ensure(version > previous, || {
                        format!("a writer's own appends got versions out of order: {version} after {previous}")
                    });
                    previous = version;
                    if by_version.insert(version, event).is_some() {
                        c.fail(format_args!("version {version} was acknowledged twice"));
                    }
                }
            }
            Some(Ok(Err(message))) => c.fail(message),
            Some(Err(error)) => c.fail(format_args!("a writer task failed: {error}")),
            None => c.fail("a writer task went missing"),
        }
    }
    let total = WRITERS * EACH;
    let expected: Vec<NewEvent> = (1..=total as u64)
        .map(|version| match by_version.remove(&version) {
            Some(event) => event,
            None => c.fail(format_args!(
                "no append was acknowledged at version {version}"
            )),
        })
        .collect();
    let stored = c.read_stream(&stream, 1, total + 10).await;
    c.ensure_stored(
        "stream after retrying writers",
        &stored,
        &stream,
        1,
        &expected,
    );
}

/// A retry of an already stored batch (same ids and content at the same expected version)
/// returns the stored outcome and writes nothing, even after the stream has moved on.
pub async fn idempotent_retry<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("idempotent_retry", &store);
    let head = c.head().await;
    let stream = stream_name();
    let pair = new_events("pair", 2);
    let single = new_events("single", 1);

    let o1 = c
        .append(&stream, ExpectedVersion::NoStream, pair.clone())
        .await;
    let retried = c
        .append(&stream, ExpectedVersion::NoStream, pair.clone())
        .await;
    c.ensure_eq("outcome of an immediate retry", retried, o1);

    let o2 = c
        .append(&stream, ExpectedVersion::Exact(2), single.clone())
        .await;
    let retried = c
        .append(&stream, ExpectedVersion::NoStream, pair.clone())
        .await;
    c.ensure_eq("outcome of a retry after the stream moved on", retried, o1);
    let retried = c
        .append(&stream, ExpectedVersion::Exact(2), single.clone())
        .await;
    c.ensure_eq("outcome of retrying the last append", retried, o2);

    let all: Vec<NewEvent> = pair.iter().chain(&single).cloned().collect();
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("stream after retries", &stored, &stream, 1, &all);
    let seen = c.collect_all(head, 500, &stream_set(&[&stream]), 4).await;
    c.ensure_eq(
        "events of the stream in read_all after retries",
        seen.len(),
        3,
    );
}

/// Reusing an event id with different content fails with `EventIdConflict` at the same slot,
/// and with `WrongExpectedVersion` at a version that does not match the stream.
pub async fn event_id_conflicts<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("event_id_conflicts", &store);
    let stream = stream_name();
    let stored_events = new_events("original", 2);
    c.append(&stream, ExpectedVersion::NoStream, stored_events.clone())
        .await;
    let id = stored_events[0].event_id;

    let mut other_payload = stored_events.clone();
    other_payload[0].payload = br#"{"tag":"changed"}"#.to_vec();
    match c
        .try_append(&stream, ExpectedVersion::NoStream, other_payload)
        .await
    {
        Err(StoreError::EventIdConflict { event_id }) => {
            c.ensure_eq("conflicting id", event_id, id)
        }
        other => c.fail(format_args!(
            "same id and slot with a different payload: expected EventIdConflict, got {other:?}"
        )),
    }

    let mut other_type = stored_events.clone();
    other_type[1].event_type = "conformance_changed".to_owned();
    match c
        .try_append(&stream, ExpectedVersion::NoStream, other_type)
        .await
    {
        Err(StoreError::EventIdConflict { event_id }) => {
            c.ensure_eq("conflicting id", event_id, stored_events[1].event_id)
        }
        other => c.fail(format_args!(
            "same id and slot with a different type: expected EventIdConflict, got {other:?}"
        )),
    }

    // The first event again, but at version 2 where the second one is stored.
    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(1),
        vec![stored_events[0].clone()],
        2,
    )
    .await;
    // The first event stored, the second one new: not a retry of what is stored.
    let mixed = vec![stored_events[0].clone(), new_event("mixed", 1)];
    c.append_wrong_version(&stream, ExpectedVersion::NoStream, mixed, 2)
        .await;

    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored(
        "stream after conflicts",
        &stored,
        &stream,
        1,
        &stored_events,
    );
}
