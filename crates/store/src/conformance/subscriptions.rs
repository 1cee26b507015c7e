//! Subscriptions: catching up then following live, and resuming after a restart.

use std::sync::Arc;
use std::time::Duration;

use crate::{EventStore, ExpectedVersion, NewEvent};

use super::support::*;
use super::Harness;

/// A subscription catches up on earlier events, then delivers live ones (including events
/// appended while it reads) exactly once, in order.
pub async fn subscription_catch_up_and_live<H: Harness>(harness: &H) {
    let store = Arc::new(harness.open().await);
    let c = Check::new("subscription_catch_up_and_live", &*store);
    let head = c.head().await;
    let stream = stream_name();
    let earlier = new_events("earlier", 5);
    c.append(&stream, ExpectedVersion::NoStream, earlier[..2].to_vec())
        .await;
    c.append(&stream, ExpectedVersion::Exact(2), earlier[2..].to_vec())
        .await;
    let own = stream_set(&[&stream]);

    let mut subscription = c.subscribe(head).await;
    let mut last = head;
    let caught_up = c.receive_own(&mut subscription, &mut last, &own, 5).await;
    c.ensure_stored("caught-up events", &caught_up, &stream, 1, &earlier);

    // Live, one at a time: each must arrive while the subscription is waiting.
    let mut version = 5;
    for n in 0..3 {
        let event = new_event("live", n);
        c.append(
            &stream,
            ExpectedVersion::Exact(version),
            vec![event.clone()],
        )
        .await;
        version += 1;
        let got = c.receive_own(&mut subscription, &mut last, &own, 1).await;
        c.ensure_stored("live event", &got, &stream, version, &[event]);
    }

    // A writer appends while the subscription reads.
    let writer_stream = stream_name();
    let writer_events = new_events("racing", 40);
    let writer = {
        let store = Arc::clone(&store);
        let stream = writer_stream.clone();
        let events = writer_events.clone();
        tokio::spawn(async move {
            for (n, event) in events.into_iter().enumerate() {
                let expected = ExpectedVersion::from_last_version(n as u64);
                if let Err(error) = store.append(&stream, expected, vec![event]).await {
                    return Err(error.to_string());
                }
                if n % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok(())
        })
    };
    let writer_own = stream_set(&[&writer_stream]);
    let got = c
        .receive_own(
            &mut subscription,
            &mut last,
            &writer_own,
            writer_events.len(),
        )
        .await;
    c.ensure_stored(
        "events appended while subscribed",
        &got,
        &writer_stream,
        1,
        &writer_events,
    );
    match c.timed("the racing writer", writer).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => c.fail(format_args!("the racing writer failed: {error}")),
        Err(error) => c.fail(format_args!("the racing writer panicked: {error}")),
    }

    // Nothing is delivered twice: after a sentinel, no earlier own event may show up.
    let sentinel = new_event("sentinel", 0);
    c.append(
        &stream,
        ExpectedVersion::Exact(version),
        vec![sentinel.clone()],
    )
    .await;
    let both = stream_set(&[&stream, &writer_stream]);
    let got = c.receive_own(&mut subscription, &mut last, &both, 1).await;
    c.ensure_stored(
        "sentinel (an event arrived twice?)",
        &got,
        &stream,
        version + 1,
        &[sentinel],
    );
    c.ensure_quiet(&mut subscription, &mut last, &both).await;
}

/// After a restart, subscribing after the last position seen continues with the next event:
/// no gap, no duplicate, and acknowledged events survived the restart.
pub async fn subscription_resumes_after_restart<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let stream = stream_name();
    let own = stream_set(&[&stream]);
    let before = new_events("before-restart", 6);
    let (head, checkpoint) = {
        let c = Check::new("subscription_resumes_after_restart", &store);
        let head = c.head().await;
        c.append(&stream, ExpectedVersion::NoStream, before[..4].to_vec())
            .await;
        c.append(&stream, ExpectedVersion::Exact(4), before[4..].to_vec())
            .await;
        let mut subscription = c.subscribe(head).await;
        let mut last = head;
        let got = c.receive_own(&mut subscription, &mut last, &own, 3).await;
        c.ensure_stored("events before the restart", &got, &stream, 1, &before[..3]);
        (head, last)
    };

    let store = harness.reopen(store).await;
    let c = Check::new("subscription_resumes_after_restart", &store);
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("stream after the restart", &stored, &stream, 1, &before);
    let head_after = c.head().await;
    c.ensure(
        head_after >= head && head_after >= Some(stored[5].position),
        || format!("head {head_after:?} after the restart is before the stored events"),
    );
    let after = new_events("after-restart", 4);
    c.append(&stream, ExpectedVersion::Exact(6), after.clone())
        .await;

    let mut subscription = c.subscribe(checkpoint).await;
    let mut last = checkpoint;
    let got = c.receive_own(&mut subscription, &mut last, &own, 7).await;
    let expected: Vec<NewEvent> = before[3..].iter().chain(&after).cloned().collect();
    c.ensure_stored(
        "events resumed after the restart",
        &got,
        &stream,
        4,
        &expected,
    );
    c.ensure_quiet(&mut subscription, &mut last, &own).await;
}
