//! `ledger explain` and `ledger audit`: support's timeline and finance's export, chain
//! verification and reconciliation, straight from the event store, and the check of an
//! export file that needs no store at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::explain_table::render_text;
use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use ledger_domain::envelope::RawEnvelope;
use ledger_domain::{Catalog, Instant};
use ledger_service::{audit, export};

use crate::serve::{load_catalog, open_store, read_views};
use crate::{AuditAction, ExportFormat, StoreArgs};

fn parse_instant(flag: &str, text: Option<String>) -> anyhow::Result<Option<Instant>> {
    text.map(|text| {
        text.parse::<Instant>().with_context(|| {
            format!("{flag} {text:?} is not an RFC 3339 instant (e.g. 2026-01-31T12:00:00Z)")
        })
    })
    .transpose()
}

pub async fn explain(
    account: String,
    at: Option<String>,
    store: StoreArgs,
    catalog: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Checked before anything is opened: a wrong flag is the whole answer.
    let now = chrono::Utc::now();
    let at = audit::explain_instant(parse_instant("--at", at)?, now)
        .map_err(|err| anyhow!("--at {err}"))?;
    let catalog: Catalog = load_catalog(catalog.as_deref())?;
    let store = open_store(&store, false).await?;
    let explanation =
        audit::explain_account(store.as_ref(), &catalog, &account, Some(at), now).await?;
    if !explanation.exists {
        bail!("account {account} does not exist");
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &explanation)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", render_text(&explanation))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(
    action: AuditAction,
    store_args: StoreArgs,
    since: Option<String>,
    until: Option<String>,
    format: Option<ExportFormat>,
) -> anyhow::Result<ExitCode> {
    let since = parse_instant("--since", since)?;
    let until = parse_instant("--until", until)?;
    if action != AuditAction::Export && format.is_some() {
        bail!("--format applies to audit export, or to audit verify --file");
    }
    let store = open_store(&store_args, false).await?;
    match action {
        AuditAction::Export => {
            let mut lines = Box::pin(audit::export_lines(store, since, until));
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            match format.unwrap_or(ExportFormat::Jsonl) {
                ExportFormat::Jsonl => {
                    let mut out = out;
                    while let Some(chunk) = lines.next().await {
                        out.write_all(&chunk?)?;
                    }
                    out.flush()?;
                }
                ExportFormat::Csv => {
                    let mut writer = csv::Writer::from_writer(out);
                    writer.write_record(export::CSV_COLUMNS)?;
                    while let Some(chunk) = lines.next().await {
                        let chunk = chunk?;
                        for line in chunk.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
                            let raw: RawEnvelope = serde_json::from_slice(line)?;
                            writer.write_record(export::csv_record(&raw))?;
                        }
                    }
                    writer.flush()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditAction::Verify => {
            let report = audit::verify(store.as_ref()).await?;
            println!(
                "verified {} events in {} streams",
                report.events, report.streams
            );
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditAction::Reconcile => {
            let views = read_views(&store_args, store.clone()).await?;
            let report = audit::reconcile(store.as_ref(), views.as_ref()).await?;
            println!(
                "reconciled {} accounts up to position {}",
                report.accounts,
                report
                    .position
                    .map_or_else(|| "none".to_string(), |p| p.to_string())
            );
            for difference in &report.differences {
                println!("difference: {difference}");
            }
            Ok(if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `ledger audit verify --file EXPORT`: checks an export file on its own, with no store and
/// no data directory. Succeeds with a summary on stdout; otherwise one line naming the file,
/// the line and the first problem.
pub fn verify_file(
    action: AuditAction,
    path: &Path,
    format: Option<ExportFormat>,
    since: Option<String>,
    until: Option<String>,
) -> anyhow::Result<ExitCode> {
    if action != AuditAction::Verify {
        bail!("--file applies to audit verify only");
    }
    if since.is_some() || until.is_some() {
        bail!("--since and --until select what audit export writes; verify --file checks the whole file");
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read export {}", path.display()))?;
    let format = format.map(|format| match format {
        ExportFormat::Jsonl => export::ExportFormat::Jsonl,
        ExportFormat::Csv => export::ExportFormat::Csv,
    });
    let report = export::verify_file(std::io::BufReader::new(file), format)
        .with_context(|| format!("export {} does not verify", path.display()))?;
    println!(
        "verified {} events in {} streams from {} ({}): every hash chain holds from its first \
         event, no version gaps, positions in order",
        report.events,
        report.streams,
        path.display(),
        report.format.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
