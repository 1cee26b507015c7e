//! The audit export as files finance keeps: JSON lines (one stored envelope per line, as
//! `GET /v1/audit/events` answers) or CSV (one column per envelope field), and the offline
//! check of such a file: its hash chains and versions, with no store at all. Both formats
//! carry every field the chain hash covers, so either one can be verified on its own.

use std::collections::HashMap;
use std::io::BufRead;

use ledger_domain::envelope::RawEnvelope;
use serde_json::value::RawValue;

use crate::audit::ChainCheck;

/// The CSV export's columns, in order. `event_id` and every other field the chain hash
/// covers are here; `data` is the stored JSON text byte for byte.
pub const CSV_COLUMNS: [&str; 13] = [
    "position",
    "event_id",
    "stream",
    "version",
    "type",
    "schema_version",
    "occurred_at",
    "recorded_at",
    "command_id",
    "actor",
    "prev_hash",
    "hash",
    "data",
];

/// One envelope as a CSV record, in `CSV_COLUMNS` order.
pub fn csv_record(raw: &RawEnvelope) -> [String; 13] {
    [
        raw.position.map(|p| p.to_string()).unwrap_or_default(),
        raw.event_id.to_string(),
        raw.stream.clone(),
        raw.version.to_string(),
        raw.type_name.clone(),
        raw.schema_version.to_string(),
        raw.occurred_at.clone(),
        raw.recorded_at.clone(),
        raw.command_id.clone(),
        raw.actor.clone(),
        raw.prev_hash.clone(),
        raw.hash.clone(),
        raw.data.get().to_string(),
    ]
}

/// The two export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }

    /// The format of a file from its first bytes: a JSON line starts with `{`, a CSV export
    /// with its header. An empty file reads as JSON lines (an export of no events).
    pub fn detect(head: &[u8]) -> ExportFormat {
        match head.iter().find(|byte| !byte.is_ascii_whitespace()) {
            Some(b'{') | None => ExportFormat::Jsonl,
            Some(_) => ExportFormat::Csv,
        }
    }
}

/// A verified export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub format: ExportFormat,
    pub events: u64,
    pub streams: usize,
}

/// Why an export file does not verify: the first problem, with the line it is on.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message} ({verified} event(s) before it verified)")]
    Problem {
        line: u64,
        message: String,
        verified: u64,
    },
}

/// Verifies an export file read from `reader`, in `format` or the one its content shows:
/// every line parses, every stream's chain holds from its first version, versions have no
/// gaps and positions rise. Stops at the first problem, since everything after a broken link
/// is suspect anyway. A stream whose last events were cut off cannot be told from a shorter
/// one: compare the event count with the source.
pub fn verify_file(
    mut reader: impl BufRead,
    format: Option<ExportFormat>,
) -> Result<FileReport, FileError> {
    let format = match format {
        Some(format) => format,
        None => ExportFormat::detect(reader.fill_buf()?),
    };
    let mut chain = ChainCheck::default();
    match format {
        ExportFormat::Jsonl => verify_jsonl(reader, &mut chain)?,
        ExportFormat::Csv => verify_csv(reader, &mut chain)?,
    }
    Ok(FileReport {
        format,
        events: chain.events(),
        streams: chain.streams(),
    })
}

fn problem(chain: &ChainCheck, line: u64, message: String) -> FileError {
    FileError::Problem {
        line,
        message,
        // The event on this line was counted if the chain saw it.
        verified: chain.events().saturating_sub(1),
    }
}

/// Checks one parsed event; the first thing wrong with it is the file's problem.
fn check(chain: &mut ChainCheck, line: u64, raw: &RawEnvelope) -> Result<(), FileError> {
    match chain.check(raw).into_iter().next() {
        Some(message) => Err(problem(chain, line, message)),
        None => Ok(()),
    }
}

fn verify_jsonl(reader: impl BufRead, chain: &mut ChainCheck) -> Result<(), FileError> {
    for (index, text) in reader.lines().enumerate() {
        let line = index as u64 + 1;
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let raw: RawEnvelope = serde_json::from_str(&text).map_err(|err| FileError::Problem {
            line,
            message: format!("not an event envelope: {err}"),
            verified: chain.events(),
        })?;
        check(chain, line, &raw)?;
    }
    Ok(())
}

fn verify_csv(reader: impl BufRead, chain: &mut ChainCheck) -> Result<(), FileError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let unparseable = |line: u64, message: String, verified: u64| FileError::Problem {
        line,
        message,
        verified,
    };
    let headers = csv
        .headers()
        .map_err(|err| unparseable(1, format!("unreadable CSV header: {err}"), 0))?
        .clone();
    let columns: HashMap<&str, usize> = headers
        .iter()
        .enumerate()
        .map(|(index, name)| (name, index))
        .collect();
    // Every column but `position` is needed to recompute the hash; without one the export
    // cannot be verified at all (CSV exports made before `event_id` was added lack it).
    if let Some(missing) = CSV_COLUMNS[1..]
        .iter()
        .find(|name| !columns.contains_key(*name))
    {
        return Err(unparseable(
            1,
            format!("the CSV header has no {missing} column, so the chain cannot be checked"),
            0,
        ));
    }
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv.position().line();
        let more = csv.read_record(&mut record).map_err(|err| {
            unparseable(line, format!("unreadable CSV row: {err}"), chain.events())
        })?;
        if !more {
            return Ok(());
        }
        let line = record.position().map_or(line, |position| position.line());
        let raw = raw_from_csv(&record, &columns)
            .map_err(|message| unparseable(line, message, chain.events()))?;
        check(chain, line, &raw)?;
    }
}

/// An envelope from a CSV row, each field as exported.
fn raw_from_csv(
    record: &csv::StringRecord,
    columns: &HashMap<&str, usize>,
) -> Result<RawEnvelope, String> {
    // The header check made sure every column but `position` exists.
    let field = |name: &str| -> &str {
        columns
            .get(name)
            .and_then(|index| record.get(*index))
            .unwrap_or_default()
    };
    let number = |name: &str| -> Result<u64, String> {
        field(name)
            .parse::<u64>()
            .map_err(|_| format!("{name} {:?} is not a whole number", field(name)))
    };
    let position = match field("position") {
        "" => None,
        _ => Some(number("position")?),
    };
    let schema_version = u32::try_from(number("schema_version")?)
        .map_err(|_| format!("schema_version {} is out of range", field("schema_version")))?;
    let event_id = field("event_id")
        .parse()
        .map_err(|_| format!("event_id {:?} is not a UUID", field("event_id")))?;
    let data_text = field("data");
    let data = RawValue::from_string(data_text.to_string())
        .map_err(|err| format!("data is not JSON: {err}"))?;
    // The hash covers the text as stored; padding around it would slip past a parser.
    if data.get() != data_text {
        return Err("data has text around its JSON value".to_string());
    }
    Ok(RawEnvelope {
        event_id,
        stream: field("stream").to_string(),
        version: number("version")?,
        position,
        type_name: field("type").to_string(),
        schema_version,
        occurred_at: field("occurred_at").to_string(),
        recorded_at: field("recorded_at").to_string(),
        command_id: field("command_id").to_string(),
        actor: field("actor").to_string(),
        prev_hash: field("prev_hash").to_string(),
        hash: field("hash").to_string(),
        data,
    })
}

#[cfg(test)]
mod tests;
