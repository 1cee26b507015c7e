//! Finance's export files checked offline: both formats carry every field the chain hash
//! covers, `ledger audit verify --file` checks a file with no store (a clean export passes, a
//! changed amount or event id, a deleted row and rows out of order each stop it at their
//! line), and ARCHITECTURE.md's description of the hash input, its worked example and its
//! Python snippet reproduce the ledger's hashes.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cli::{assert_one_line_failure, ledger, Ran};
use crate::support::*;

/// The fields the hash input is made of, in order, as ARCHITECTURE.md lists them.
const HASHED: [&str; 11] = [
    "prev_hash",
    "event_id",
    "stream",
    "version",
    "type",
    "schema_version",
    "occurred_at",
    "recorded_at",
    "command_id",
    "actor",
    "data",
];

/// The hash as ARCHITECTURE.md describes it: SHA-256 over each field followed by a line
/// feed, the last one too, as lowercase hex. Written from the description, not the code.
fn documented_hash(fields: &[&str]) -> String {
    let mut input = Vec::new();
    for field in fields {
        input.extend_from_slice(field.as_bytes());
        input.push(b'\n');
    }
    hex::encode(Sha256::digest(&input))
}

/// A stopped server's data with two accounts' events, interleaved in global order:
/// k1 v1, k2 v1, k1 v2 (a top-up of 1000), k1 v3 (a charge), k2 v2, k1 v4.
async fn history() -> Stopped {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "k1").await;
    open(api, "k2").await;
    top_up(api, "k1", "lot", 1_000).await;
    let charges = [
        (
            "k1",
            charge_body("c1", "flux-schnell", Some(("images", 10))),
        ),
        ("k2", charge_body("c2", "assistant-chat", None)),
        ("k1", charge_body("c3", "assistant-chat", None)),
    ];
    for (account, body) in charges {
        charge(api, account, body).await.expect(201);
    }
    let stopped = server.stop().await;
    assert!(stopped.status.success(), "{:?}", stopped.status);
    stopped
}

/// Exports the stopped server's data in `format` to a file; returns its path.
fn export(stopped: &Stopped, format: &str) -> PathBuf {
    let data = stopped.data();
    let ran = ledger(
        &[
            "audit",
            "export",
            "--data",
            data.to_str().unwrap(),
            "--format",
            format,
        ],
        stopped.dir.path(),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let path = stopped.dir.path().join(format!("export.{format}"));
    std::fs::write(&path, &ran.stdout).unwrap();
    path
}

/// `ledger audit verify --file FILE`, pointed at a data directory that does not exist: the
/// check must neither need nor create one.
fn verify_file(file: &Path, scratch: &Path) -> Ran {
    let nowhere = scratch.join("no-data-here");
    let ran = ledger(
        &[
            "audit",
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--data",
            nowhere.to_str().unwrap(),
        ],
        scratch,
    );
    assert!(!nowhere.exists(), "verify --file created a data directory");
    ran
}

#[tokio::test]
async fn audit_verify_file_checks_a_clean_export_in_either_format_without_a_store() {
    let stopped = history().await;
    let scratch = stopped.dir.path();
    for format in ["jsonl", "csv"] {
        let file = export(&stopped, format);
        let ran = verify_file(&file, scratch);
        assert_eq!(ran.code, Some(0), "{format}: {}{}", ran.stdout, ran.stderr);
        assert!(
            ran.stdout.contains("verified 6 events in 2 streams")
                && ran.stdout.contains(&format!("({format})")),
            "{format}: {}",
            ran.stdout
        );
    }
    // The format can be named instead of detected, and a wrong one is a clear failure.
    let csv = export(&stopped, "csv");
    let file = csv.to_str().unwrap();
    let named = ledger(
        &["audit", "verify", "--file", file, "--format", "csv"],
        scratch,
    );
    assert_eq!(named.code, Some(0), "{}", named.stderr);
    let wrong = ledger(
        &["audit", "verify", "--file", file, "--format", "jsonl"],
        scratch,
    );
    assert_one_line_failure(&wrong, "line 1: not an event envelope", "csv read as jsonl");
    // Flags that only make sense elsewhere are refused, not ignored.
    let export_file = ledger(&["audit", "export", "--file", file], scratch);
    assert_one_line_failure(&export_file, "--file", "export --file");
    let windowed = ledger(
        &[
            "audit",
            "verify",
            "--file",
            file,
            "--since",
            "2026-01-01T00:00:00Z",
        ],
        scratch,
    );
    assert_one_line_failure(&windowed, "--since", "verify --file --since");
    let missing = ledger(
        &["audit", "verify", "--file", "no-such-export.csv"],
        scratch,
    );
    assert_one_line_failure(&missing, "no-such-export.csv", "a missing file");
}

/// A change to a file's lines.
type Edit = Box<dyn Fn(&mut Vec<String>)>;

/// Changes a file's lines (header included for CSV).
fn rewrite(path: &Path, name: &str, edit: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    edit(&mut lines);
    let out = path.with_file_name(name);
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();
    out
}

#[tokio::test]
async fn audit_verify_file_catches_a_changed_amount_a_changed_event_id_a_deleted_row_and_a_reordered_row(
) {
    let stopped = history().await;
    let scratch = stopped.dir.path();
    for format in ["jsonl", "csv"] {
        let file = export(&stopped, format);
        // Events are on lines 1-6 of JSON lines, 2-7 of CSV (after its header).
        let first = usize::from(format == "csv");
        let amount = move |lines: &mut Vec<String>| {
            let line = &mut lines[first + 2];
            let changed = line
                .replacen(r#""credits":1000"#, r#""credits":9000"#, 1)
                .replacen(r#"""credits"":1000"#, r#"""credits"":9000"#, 1);
            assert_ne!(*line, changed, "the top-up row holds the amount");
            *line = changed;
        };
        let event_id = move |lines: &mut Vec<String>| {
            let line = &mut lines[first + 3];
            // Every event id is a v5 UUID: its version digit sits in a fixed place.
            let changed = line.replacen("-5", "-6", 1);
            assert_ne!(*line, changed, "the row holds its event id");
            *line = changed;
        };
        let cases: Vec<(&str, Edit, usize, &str)> = vec![
            (
                "amount",
                Box::new(amount),
                3,
                "account-k1 v2: hash does not match",
            ),
            (
                "event-id",
                Box::new(event_id),
                4,
                "account-k1 v3: hash does not match",
            ),
            (
                "deleted",
                Box::new(move |lines: &mut Vec<String>| {
                    lines.remove(first + 2);
                }),
                3,
                "account-k1 v3: version gap after v1",
            ),
            (
                "reordered",
                Box::new(move |lines: &mut Vec<String>| lines.swap(first + 3, first + 4)),
                5,
                "account-k1 v3: position 4 after 5",
            ),
        ];
        for (what, edit, line, says) in cases {
            let damaged = rewrite(&file, &format!("{what}.{format}"), edit);
            let ran = verify_file(&damaged, scratch);
            let line = line + first;
            assert_one_line_failure(
                &ran,
                &format!("line {line}: {says}"),
                &format!("{what} ({format})"),
            );
        }
        let cut = rewrite(&file, &format!("cut.{format}"), |lines| {
            lines[first + 1].truncate(40);
        });
        let ran = verify_file(&cut, scratch);
        assert_one_line_failure(
            &ran,
            &format!("line {}:", first + 2),
            &format!("an unparseable line ({format})"),
        );
    }
}

#[tokio::test]
async fn csv_export_carries_every_field_the_hash_covers_and_its_rows_hash_as_documented() {
    let stopped = history().await;
    let csv_path = export(&stopped, "csv");
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    for field in HASHED {
        assert!(header.iter().any(|name| name == field), "no {field} column");
    }
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut rows = 0;
    for row in reader.records() {
        let row = row.unwrap();
        let fields: Vec<&str> = HASHED.iter().map(|name| &row[column(name)]).collect();
        assert_eq!(
            documented_hash(&fields),
            &row[column("hash")],
            "row {rows}: the documented hash input reproduces the hash"
        );
        rows += 1;
    }
    assert_eq!(rows, 6);
}

/// The worked example in ARCHITECTURE.md's "Hash chain" bullet: its eleven lines and the
/// hash it states.
fn documented_example() -> (Vec<String>, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&path).expect("ARCHITECTURE.md");
    let bullet = &doc[doc.find("**Hash chain**").expect("the Hash chain bullet")..];
    let block = &bullet[bullet.find("```text\n").expect("the worked example") + 8..];
    let end = block.find("```").expect("the example's closing fence");
    // The block ends with the closing fence's indentation.
    let lines: Vec<String> = block[..end]
        .trim_end()
        .lines()
        .map(|line| line.trim_start().to_string())
        .collect();
    let after = &block[end..];
    let hash = after
        .split('`')
        .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("the example's hash")
        .to_string();
    (lines, hash)
}

/// The Python snippet in the same bullet.
fn documented_snippet() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&path).expect("ARCHITECTURE.md");
    let bullet = &doc[doc.find("**Hash chain**").expect("the Hash chain bullet")..];
    let block = &bullet[bullet.find("```python\n").expect("the Python snippet") + 10..];
    let end = block.find("```").expect("the snippet's closing fence");
    block[..end]
        .lines()
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_documented_hash_example_is_what_the_ledger_computes() {
    let (lines, hash) = documented_example();
    assert_eq!(lines.len(), HASHED.len(), "one line per hashed field");
    let fields: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(
        documented_hash(&fields),
        hash,
        "the description gives the stated hash"
    );
    let from_code = ledger_domain::envelope::chain_hash(
        fields[0],
        &fields[1].parse().expect("a UUID"),
        fields[2],
        fields[3].parse().expect("a version"),
        fields[4],
        fields[5].parse().expect("a schema version"),
        fields[6],
        fields[7],
        fields[8],
        fields[9],
        fields[10],
    );
    assert_eq!(
        from_code, hash,
        "the ledger's chain_hash gives the stated hash"
    );
}

#[tokio::test]
async fn the_documented_python_snippet_verifies_a_csv_export_and_catches_a_change() {
    let stopped = history().await;
    let csv_path = export(&stopped, "csv");
    let script = stopped.dir.path().join("verify_export.py");
    std::fs::write(&script, documented_snippet()).unwrap();
    let python = |file: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(file)
            .output()
            .expect("python3 runs (the machine ships CPython)")
    };
    let clean = python(&csv_path);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&clean.stdout).trim(),
        "ok: 6 events in 2 streams"
    );
    let tampered = rewrite(&csv_path, "tampered.csv", |lines| {
        lines[3] = lines[3].replacen(r#"""credits"":1000"#, r#"""credits"":9000"#, 1);
    });
    let caught = python(&tampered);
    assert!(
        !caught.status.success(),
        "the snippet catches a changed amount"
    );
    assert!(
        String::from_utf8_lossy(&caught.stderr).contains("broken at position 3"),
        "{}",
        String::from_utf8_lossy(&caught.stderr)
    );
}
