//! The position-gap problem: a reader of the global order must never skip an event whose
//! transaction commits after a later position became visible.
//!
//! One node's group commit is held open after its inserts (the `test-hooks` pause before
//! COMMIT) while another node appends; a follower polling `read_all` and a subscription
//! watch the whole time. Neither may see the later events before the held one, and both must
//! deliver the held one once it commits. `the_follower_catches_a_gap_prone_design` runs the
//! same follower against the classic sequence-numbered table, where the later insert does
//! commit first, and shows that the follower then reports the skipped event: the check above
//! would fail for a store built that way.

use std::collections::HashSet;
use std::time::Duration;

use ledger_store::{EventStore, ExpectedVersion, GlobalPosition, RecordedEvent};
use uuid::Uuid;

use crate::support::{database, new_event, raw, stream_name, TestSchema};

/// How long a test watches for something that must not happen. Only bounds the test: under
/// a correct store nothing can show up, however long it waits.
const WATCH: Duration = Duration::from_millis(400);

const WAIT: Duration = Duration::from_secs(20);

/// A reader that checkpoints after every event it has seen, as a projector does.
#[derive(Debug, Default)]
struct Follower {
    after: Option<GlobalPosition>,
    seen: Vec<(GlobalPosition, Uuid)>,
}

impl Follower {
    /// Takes a page read after `self.after`.
    fn take(&mut self, page: impl IntoIterator<Item = (GlobalPosition, Uuid)>) {
        for (position, id) in page {
            assert!(
                self.after.is_none_or(|after| position > after),
                "a read after {:?} returned position {position}",
                self.after
            );
            self.after = Some(position);
            self.seen.push((position, id));
        }
    }

    /// The ids of `wanted` this follower never saw.
    fn missed(&self, wanted: &[Uuid]) -> Vec<Uuid> {
        let seen: HashSet<Uuid> = self.seen.iter().map(|(_, id)| *id).collect();
        wanted
            .iter()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect()
    }
}

fn ids(events: &[RecordedEvent]) -> Vec<(GlobalPosition, Uuid)> {
    events.iter().map(|e| (e.position, e.event_id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_skip_an_event_that_commits_late() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let slow = schema.open().await; // the node whose commit is held
    let fast = schema.open().await; // a node appending meanwhile
    let reader = schema.open().await;
    // Something committed first, so the readers start from a real position.
    reader
        .append(
            &stream_name(),
            ExpectedVersion::NoStream,
            vec![new_event("first")],
        )
        .await
        .unwrap();
    let start = reader.head_position().await.unwrap();
    let mut follower = Follower {
        after: start,
        ..Follower::default()
    };
    let mut subscription = reader.subscribe_all(start).await.unwrap();

    let mut hold = slow.hold_next_commit();
    let held_event = new_event("held");
    let held_id = held_event.event_id;
    let slow = std::sync::Arc::new(slow);
    let held = {
        let slow = std::sync::Arc::clone(&slow);
        tokio::spawn(async move {
            slow.append(&stream_name(), ExpectedVersion::NoStream, vec![held_event])
                .await
        })
    };
    let held_position = tokio::time::timeout(WAIT, hold.reached())
        .await
        .expect("the held commit never reached its pause")
        .expect("the store stopped");

    let fast = std::sync::Arc::new(fast);
    let mut later_ids = Vec::new();
    let mut later = Vec::new();
    for n in 0..3 {
        let event = new_event(&format!("later-{n}"));
        later_ids.push(event.event_id);
        let fast = std::sync::Arc::clone(&fast);
        later.push(tokio::spawn(async move {
            fast.append(&stream_name(), ExpectedVersion::NoStream, vec![event])
                .await
        }));
    }

    // While the held transaction is open, nothing after `start` may be visible: the later
    // appends either wait for the position lock (this design) or, in a gap-prone design,
    // commit and show up here, ahead of the held event.
    let watch_until = tokio::time::Instant::now() + WATCH;
    while tokio::time::Instant::now() < watch_until {
        let page = reader.read_all(follower.after, 100).await.unwrap();
        assert!(
            page.is_empty(),
            "read_all returned {:?} while the append at position {held_position} was still \
             uncommitted: a reader checkpointing there would skip it",
            ids(&page)
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    if let Ok(event) = tokio::time::timeout(WATCH, subscription.next()).await {
        panic!(
            "the subscription yielded {:?} while the append at position {held_position} was \
             uncommitted",
            event.map(|e| (e.position, e.event_id))
        );
    }
    assert!(
        later.iter().all(|task| !task.is_finished()),
        "an append of another node finished while an earlier position was uncommitted"
    );

    hold.release();
    let outcome = held.await.unwrap().expect("the held append");
    assert_eq!(outcome.position, held_position);
    for task in later {
        task.await.unwrap().expect("a later append");
    }

    let mut wanted = vec![held_id];
    wanted.extend(&later_ids);
    while follower.seen.len() < wanted.len() {
        let page = tokio::time::timeout(WAIT, reader.read_all(follower.after, 100))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !page.is_empty(),
            "read_all found nothing more: missed {:?}",
            follower.missed(&wanted)
        );
        follower.take(ids(&page));
    }
    assert_eq!(
        follower.missed(&wanted),
        Vec::<Uuid>::new(),
        "the follower skipped events"
    );
    assert_eq!(
        follower.seen[0],
        (held_position, held_id),
        "the held event must come first: it holds the earliest position"
    );
    let positions: Vec<GlobalPosition> = follower.seen.iter().map(|(p, _)| *p).collect();
    let contiguous: Vec<GlobalPosition> = (held_position..held_position + 4).collect();
    assert_eq!(positions, contiguous, "positions have a hole");

    let mut delivered = Vec::new();
    for _ in 0..wanted.len() {
        let event = tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("the subscription stalled")
            .expect("the subscription failed");
        delivered.push((event.position, event.event_id));
    }
    assert_eq!(
        delivered, follower.seen,
        "the subscription disagrees with read_all"
    );
}

/// The same follower against a table numbered by a sequence (the design this crate avoids):
/// a later insert commits while an earlier one is open, the follower checkpoints past the
/// earlier position, and never sees it. The follower reports exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_catches_a_gap_prone_design() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let s = schema.quoted();
    let setup = raw(&url).await;
    setup
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.events (position bigserial PRIMARY KEY, event_id uuid NOT NULL);"
        ))
        .await
        .unwrap();
    let read = |after: Option<GlobalPosition>| {
        let setup = &setup;
        let s = s.clone();
        async move {
            let after = after.map_or(0, |p| p as i64);
            setup
                .query(
                    &format!("SELECT position, event_id FROM {s}.events WHERE position > $1 ORDER BY position"),
                    &[&after],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get::<_, i64>(0) as GlobalPosition, row.get::<_, Uuid>(1)))
                .collect::<Vec<_>>()
        }
    };
    let insert = format!("INSERT INTO {s}.events (event_id) VALUES ($1)");

    let slow = raw(&url).await;
    let early = Uuid::new_v4();
    slow.batch_execute("BEGIN").await.unwrap();
    slow.execute(&insert, &[&early]).await.unwrap(); // takes position 1, uncommitted
    let late = Uuid::new_v4();
    raw(&url).await.execute(&insert, &[&late]).await.unwrap(); // position 2, committed

    let mut follower = Follower::default();
    follower.take(read(follower.after).await);
    slow.batch_execute("COMMIT").await.unwrap();
    follower.take(read(follower.after).await);

    assert_eq!(
        follower.missed(&[early, late]),
        vec![early],
        "with sequence positions the follower should have skipped the late-committing event; \
         if it did not, this demonstration no longer shows what the gap test guards against"
    );
}
