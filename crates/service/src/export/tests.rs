//! The offline check of export files: a clean export verifies from either format, and each
//! kind of damage (a changed amount, a changed event id, a deleted row, rows out of order, a
//! line that does not parse) is caught at its line.

use std::sync::Arc;

use futures::StreamExt;
use ledger_domain::command::{Charge, PurchaseTopUp, Quantity};
use ledger_domain::envelope::RawEnvelope;
use ledger_domain::events::Via;
use ledger_domain::{Catalog, Command};
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;
use serde_json::value::RawValue;

use super::*;
use crate::clock::SystemClock;
use crate::ledger::Ledger;

/// Two accounts' events in global order, as the export writes them: k1 opened, topped up
/// and charged twice, k2 opened and charged, interleaved.
async fn history() -> Vec<RawEnvelope> {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let ledger = Ledger::new(
        store.clone(),
        Arc::new(Catalog::shipped()),
        Arc::new(SystemClock),
    );
    let charge = |id: &str, model: &str, images: Option<u32>| {
        Command::Charge(Charge {
            charge_id: id.into(),
            run_id: "run".into(),
            node_id: "node".into(),
            model: model.into(),
            quantity: Quantity {
                images,
                seconds: None,
            },
            via: Via::App,
        })
    };
    let commands = [
        ("k1", Command::OpenAccount, "billing"),
        ("k2", Command::OpenAccount, "billing"),
        (
            "k1",
            Command::PurchaseTopUp(PurchaseTopUp {
                purchase_id: "lot".into(),
                credits: 1_234,
                expires_at: None,
            }),
            "billing",
        ),
        ("k1", charge("c1", "flux-schnell", Some(10)), "executor"),
        ("k2", charge("c2", "assistant-chat", None), "executor"),
        ("k1", charge("c3", "flux-schnell", Some(1)), "executor"),
    ];
    for (account, command, actor) in &commands {
        ledger.execute(account, command, actor).await.unwrap();
    }
    let mut text = Vec::new();
    let mut lines = Box::pin(crate::audit::export_lines(store, None, None));
    while let Some(chunk) = lines.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn jsonl(events: &[RawEnvelope]) -> String {
    events
        .iter()
        .map(|raw| serde_json::to_string(raw).unwrap() + "\n")
        .collect()
}

fn csv_text(events: &[RawEnvelope]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS).unwrap();
    for raw in events {
        writer.write_record(csv_record(raw)).unwrap();
    }
    String::from_utf8(writer.into_inner().unwrap()).unwrap()
}

fn verify(text: &str) -> Result<FileReport, FileError> {
    verify_file(text.as_bytes(), None)
}

/// Asserts the first problem is on `line` and says `says`.
#[track_caller]
fn assert_problem(result: Result<FileReport, FileError>, line: u64, says: &str, what: &str) {
    match result {
        Err(FileError::Problem {
            line: got, message, ..
        }) => {
            assert_eq!(got, line, "{what}: {message}");
            assert!(
                message.contains(says),
                "{what}: {message:?} should say {says:?}"
            );
        }
        other => panic!("{what}: expected a problem on line {line}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_clean_export_verifies_from_both_formats() {
    let events = history().await;
    assert_eq!(events.len(), 6);
    let expected = |format| FileReport {
        format,
        events: 6,
        streams: 2,
    };
    assert_eq!(
        verify(&jsonl(&events)).unwrap(),
        expected(ExportFormat::Jsonl)
    );
    assert_eq!(
        verify(&csv_text(&events)).unwrap(),
        expected(ExportFormat::Csv)
    );
    let forced = verify_file(csv_text(&events).as_bytes(), Some(ExportFormat::Csv)).unwrap();
    assert_eq!(forced, expected(ExportFormat::Csv));
}

#[tokio::test]
async fn csv_rows_carry_every_field_the_hash_covers() {
    let events = history().await;
    let text = csv_text(&events);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap(), CSV_COLUMNS.as_slice());
    for (row, raw) in reader.records().zip(&events) {
        let row = row.unwrap();
        assert_eq!(&row[1], raw.event_id.to_string());
        assert_eq!(&row[12], raw.data.get(), "data byte for byte");
        let rebuilt = raw_from_csv(
            &row,
            &CSV_COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, i))
                .collect(),
        )
        .unwrap();
        assert_eq!(rebuilt.computed_hash(), raw.hash);
    }
}

/// Each kind of damage, applied to the events before they are written in either format:
/// (what, damage, line of the first problem in JSON lines, what the problem says). A CSV
/// file has its header on line 1, so the same row is one line further down.
type Damage = fn(&mut Vec<RawEnvelope>);

fn damages() -> Vec<(&'static str, Damage, u64, &'static str)> {
    vec![
        (
            "a changed amount",
            |events| {
                let data = events[2].data.get().replace("1234", "9234");
                events[2].data = RawValue::from_string(data).unwrap();
            },
            3,
            "account-k1 v2: hash does not match",
        ),
        (
            "a changed event_id",
            |events| {
                events[3].event_id = uuid::Uuid::from_u128(events[3].event_id.as_u128() ^ 1);
            },
            4,
            "account-k1 v3: hash does not match",
        ),
        (
            "a deleted row",
            |events| {
                events.remove(2);
            },
            3,
            "account-k1 v3: version gap after v1",
        ),
        (
            "a stream's first row deleted",
            |events| {
                events.remove(1);
            },
            4,
            "account-k2 v2: the stream starts at v2 instead of v1",
        ),
        (
            "two rows of one stream swapped",
            |events| {
                events.swap(3, 5);
            },
            4,
            "account-k1 v4: version gap after v2",
        ),
        (
            "rows of two streams swapped",
            |events| {
                events.swap(3, 4);
            },
            5,
            "account-k1 v3: position",
        ),
    ]
}

#[tokio::test]
async fn tampered_deleted_and_reordered_rows_are_caught_in_both_formats() {
    let clean = history().await;
    for (what, damage, line, says) in damages() {
        let mut events = clean.clone();
        damage(&mut events);
        assert_problem(
            verify(&jsonl(&events)),
            line,
            says,
            &format!("{what} (jsonl)"),
        );
        assert_problem(
            verify(&csv_text(&events)),
            line + 1,
            says,
            &format!("{what} (csv)"),
        );
    }
}

#[tokio::test]
async fn rows_out_of_order_without_positions_are_caught_by_their_versions() {
    let mut events = history().await;
    for raw in &mut events {
        raw.position = None;
    }
    assert!(verify(&jsonl(&events)).is_ok());
    events.swap(3, 5);
    assert_problem(
        verify(&jsonl(&events)),
        4,
        "account-k1 v4: version gap after v2",
        "swapped",
    );
}

#[tokio::test]
async fn unparseable_lines_are_the_first_problem() {
    let events = history().await;
    let mut lines: Vec<String> = jsonl(&events).lines().map(str::to_string).collect();
    lines[1] = r#"{"event_id": "#.to_string();
    assert_problem(
        verify(&lines.join("\n")),
        2,
        "not an event envelope",
        "cut line",
    );

    let mut lines: Vec<String> = csv_text(&events).lines().map(str::to_string).collect();
    lines[2] = lines[2].replacen(",account-k2,1,", ",account-k2,one,", 1);
    assert_problem(
        verify(&lines.join("\n")),
        3,
        "version \"one\" is not a whole number",
        "bad version",
    );

    // CSV read as JSON lines.
    assert_problem(
        verify_file(csv_text(&events).as_bytes(), Some(ExportFormat::Jsonl)),
        1,
        "not an event envelope",
        "wrong format",
    );
}

#[tokio::test]
async fn a_csv_without_event_id_cannot_be_verified() {
    let events = history().await;
    let mut writer = csv::Writer::from_writer(Vec::new());
    let keep: Vec<usize> = (0..CSV_COLUMNS.len()).filter(|i| *i != 1).collect();
    writer
        .write_record(keep.iter().map(|i| CSV_COLUMNS[*i]))
        .unwrap();
    for raw in &events {
        let record = csv_record(raw);
        writer
            .write_record(keep.iter().map(|i| record[*i].as_str()))
            .unwrap();
    }
    let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
    assert_problem(verify(&text), 1, "no event_id column", "old CSV");
}

#[test]
fn the_format_is_detected_from_the_first_byte() {
    assert_eq!(ExportFormat::detect(b"{\"event_id\""), ExportFormat::Jsonl);
    assert_eq!(ExportFormat::detect(b"\n  {"), ExportFormat::Jsonl);
    assert_eq!(ExportFormat::detect(b""), ExportFormat::Jsonl);
    assert_eq!(
        ExportFormat::detect(b"position,event_id"),
        ExportFormat::Csv
    );
}
