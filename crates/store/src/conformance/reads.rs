//! Reads: global order against commit order, paging, missing and empty reads, the head
//! position, and invalid requests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{EventStore, ExpectedVersion, StoreError, StreamVersion};

use super::support::*;
use super::Harness;

/// `read_all` returns events in acknowledgement order for sequential appends, with the
/// positions the appends reported; concurrent appends also read back at their positions.
pub async fn global_order_matches_commit_order<H: Harness>(harness: &H) {
    let store = Arc::new(harness.open().await);
    let c = Check::new("global_order_matches_commit_order", &*store);
    let head = c.head().await;
    let streams = [stream_name(), stream_name(), stream_name()];
    let mut versions = [0u64; 3];
    let mut acknowledged = Vec::new();
    let mut previous_position = None;
    for n in 0..12 {
        let s = n % 3;
        let count = if n == 7 { 2 } else { 1 };
        let outcome = c
            .append(
                &streams[s],
                ExpectedVersion::from_last_version(versions[s]),
                new_events("sequential", count),
            )
            .await;
        versions[s] = outcome.last_version;
        for version in outcome.first_version..=outcome.last_version {
            acknowledged.push((streams[s].clone(), version));
        }
        if let Some(head) = head {
            c.ensure(outcome.position > head, || {
                format!(
                    "append acknowledged at {} is not after the head {head} seen before",
                    outcome.position
                )
            });
        }
        if let Some(previous) = previous_position {
            c.ensure(outcome.position > previous, || {
                format!(
                    "sequential append acknowledged at {} after one at {previous}",
                    outcome.position
                )
            });
        }
        previous_position = Some(outcome.position);
    }
    let own = stream_set(&[&streams[0], &streams[1], &streams[2]]);
    let read = c.collect_all(head, 1000, &own, acknowledged.len()).await;
    let read_order: Vec<(String, StreamVersion)> =
        read.iter().map(|e| (e.stream.clone(), e.version)).collect();
    c.ensure_eq(
        "order of read_all against acknowledgement order",
        read_order,
        acknowledged,
    );

    // Concurrent appends to separate streams: each event reads back at its outcome position.
    let mut tasks = JoinSet::new();
    let concurrent: Vec<String> = (0..8).map(|_| stream_name()).collect();
    for stream in &concurrent {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for version in 0..4 {
                let result = store
                    .append(
                        &stream,
                        ExpectedVersion::from_last_version(version),
                        new_events("concurrent", 1),
                    )
                    .await;
                outcomes.push((stream.clone(), version + 1, result));
            }
            outcomes
        });
    }
    let mut positions = HashMap::new();
    for _ in 0..concurrent.len() {
        let outcomes = match c.timed("a concurrent writer", tasks.join_next()).await {
            Some(Ok(outcomes)) => outcomes,
            Some(Err(error)) => c.fail(format_args!("a writer task failed: {error}")),
            None => c.fail("a writer task went missing"),
        };
        let mut previous = None;
        for (stream, version, result) in outcomes {
            match result {
                Ok(outcome) => {
                    if let Some(previous) = previous {
                        c.ensure(outcome.position > previous, || {
                            format!(
                                "{stream}@{version} acknowledged at {} after {previous}",
                                outcome.position
                            )
                        });
                    }
                    previous = Some(outcome.position);
                    positions.insert((stream, version), outcome.position);
                }
                Err(error) => c.fail(format_args!(
                    "concurrent append to {stream} failed: {error}"
                )),
            }
        }
    }
    let own: HashSet<String> = concurrent.iter().cloned().collect();
    let read = c.collect_all(head, 1000, &own, positions.len()).await;
    c.ensure_eq("concurrent events in read_all", read.len(), positions.len());
    for event in read {
        let acknowledged = positions.get(&(event.stream.clone(), event.version));
        c.ensure_eq(
            &format!("position of {}@{}", event.stream, event.version),
            Some(&event.position),
            acknowledged,
        );
    }
}

/// `read_all` pages with `after` / `limit` without skipping or repeating events, and reading
/// from the start is stable.
pub async fn read_all_paging<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("read_all_paging", &store);
    let head = c.head().await;
    let streams = [stream_name(), stream_name()];
    let mut expected = Vec::new();
    let mut versions = [0u64; 2];
    for (n, count) in [1usize, 3, 1, 2, 1, 1, 1].into_iter().enumerate() {
        let s = n % 2;
        let events = new_events("paging", count);
        let outcome = c
            .append(
                &streams[s],
                ExpectedVersion::from_last_version(versions[s]),
                events.clone(),
            )
            .await;
        versions[s] = outcome.last_version;
        for (offset, event) in events.into_iter().enumerate() {
            expected.push((
                streams[s].clone(),
                outcome.first_version + offset as u64,
                event,
            ));
        }
    }
    let own = stream_set(&[&streams[0], &streams[1]]);

    let all_at_once = c.collect_all(head, 10_000, &own, expected.len()).await;
    for page in [1usize, 3, 4] {
        let paged = c.collect_all(head, page, &own, expected.len()).await;
        c.ensure_eq(
            &format!("events read in pages of {page} against one read"),
            &paged,
            &all_at_once,
        );
    }
    c.ensure_eq("number of events read", all_at_once.len(), expected.len());
    for (event, (stream, version, new)) in all_at_once.iter().zip(&expected) {
        c.ensure_stored(
            "paged event",
            std::slice::from_ref(event),
            stream,
            *version,
            std::slice::from_ref(new),
        );
    }

    c.ensure_eq("read_all with limit 0", c.read_all(head, 0).await.len(), 0);
    // Reading after the last own event returns none of them.
    let last = all_at_once.last().map(|e| e.position);
    let after_last = c.read_all(last, 1000).await;
    c.ensure(after_last.iter().all(|e| !own.contains(&e.stream)), || {
        "read_all after the last event returned it or an earlier one again".to_owned()
    });
    // From the start: stable, and the same as a subscription from the start.
    let first_three = c.read_all(None, 3).await;
    c.ensure(!first_three.is_empty(), || {
        "read_all(None) returned nothing from a store holding events".to_owned()
    });
    let first_one = c.read_all(None, 1).await;
    c.ensure_eq(
        "first event of read_all(None)",
        &first_one[..],
        &first_three[..1],
    );
    let mut subscription = c.subscribe(None).await;
    let mut last_seen = None;
    for expected in &first_three {
        let event = c.next_event(&mut subscription, &mut last_seen).await;
        c.ensure_eq(
            "event of subscribe_all(None) against read_all(None)",
            &event,
            expected,
        );
    }
}

/// Missing streams, reads past the end and `limit == 0` all read as empty.
pub async fn missing_and_empty_reads<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("missing_and_empty_reads", &store);
    let missing = stream_name();
    c.ensure_eq(
        "events of a missing stream",
        c.read_stream(&missing, 1, 10).await.len(),
        0,
    );
    c.ensure_eq(
        "events of a missing stream from 0",
        c.read_stream(&missing, 0, 10).await.len(),
        0,
    );
    let stream = stream_name();
    c.append(&stream, ExpectedVersion::NoStream, new_events("short", 2))
        .await;
    c.ensure_eq(
        "events past the end",
        c.read_stream(&stream, 3, 10).await.len(),
        0,
    );
    c.ensure_eq(
        "events far past the end",
        c.read_stream(&stream, 1_000_000, 10).await.len(),
        0,
    );
    c.ensure_eq(
        "events with limit 0",
        c.read_stream(&stream, 1, 0).await.len(),
        0,
    );
    c.ensure_eq(
        "events with limit 1",
        c.read_stream(&stream, 1, 1).await.len(),
        1,
    );
}

/// `head_position` is at or after every acknowledged append and moves forward with appends.
pub async fn head_position_tracks_appends<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("head_position_tracks_appends", &store);
    let before = c.head().await;
    let stream = stream_name();
    let o1 = c
        .append(&stream, ExpectedVersion::NoStream, new_events("head", 1))
        .await;
    if let Some(before) = before {
        c.ensure(o1.position > before, || {
            format!(
                "append at {} is not after the earlier head {before}",
                o1.position
            )
        });
    }
    let h1 = c.head().await;
    c.ensure(h1.is_some_and(|h| h >= o1.position), || {
        format!(
            "head {h1:?} is before the acknowledged append at {}",
            o1.position
        )
    });
    let o2 = c
        .append(&stream, ExpectedVersion::Exact(1), new_events("head", 2))
        .await;
    let h2 = c.head().await;
    c.ensure(h2.is_some_and(|h| h >= o2.position) && h2 >= h1, || {
        format!(
            "head {h2:?} (earlier {h1:?}) is before the acknowledged append at {}",
            o2.position
        )
    });
}

/// Malformed requests fail with `Invalid` and write nothing.
pub async fn invalid_requests<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("invalid_requests", &store);
    let stream = stream_name();
    c.append_invalid("an empty batch", &stream, Vec::new())
        .await;
    c.append_invalid("an empty stream name", "", new_events("invalid", 1))
        .await;
    c.append_invalid(
        "a `$` stream name",
        "$account-conf",
        new_events("invalid", 1),
    )
    .await;
    c.append_invalid(
        "a stream name with a control character",
        &format!("{stream}\n"),
        new_events("invalid", 1),
    )
    .await;
    let mut untyped = new_events("invalid", 1);
    untyped[0].event_type = String::new();
    c.append_invalid("an empty event type", &stream, untyped)
        .await;
    let event = new_event("invalid", 1);
    c.append_invalid(
        "the same id twice in a batch",
        &stream,
        vec![event.clone(), event],
    )
    .await;
    c.ensure_eq(
        "events written by invalid appends",
        c.read_stream(&stream, 1, 10).await.len(),
        0,
    );
    match c
        .timed("read_stream(\"\")", store.read_stream("", 1, 10))
        .await
    {
        Err(StoreError::Invalid(_)) => {}
        other => c.fail(format_args!(
            "reading an empty stream name: expected Invalid, got {other:?}"
        )),
    }
    // The stream is still usable from scratch.
    c.append(&stream, ExpectedVersion::NoStream, new_events("valid", 1))
        .await;
}
