//! `ledger explain` and `ledger audit`: support's timeline and finance's export, chain
//! verification and reconciliation, straight from the event store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use ledger_domain::explain::render_text;
use ledger_domain::{Catalog, Instant};
use ledger_service::audit;

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
    format: ExportFormat,
) -> anyhow::Result<ExitCode> {
    let since = parse_instant("--since", since)?;
    let until = parse_instant("--until", until)?;
    let store = open_store(&store_args, false).await?;
    match action {
        AuditAction::Export => {
            let mut lines = Box::pin(audit::export_lines(store, since, until));
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            match format {
                ExportFormat::Jsonl => {
                    let mut out = out;
                    while let Some(chunk) = lines.next().await {
                        out.write_all(&chunk?)?;
                    }
                    out.flush()?;
                }
                ExportFormat::Csv => {
                    let mut writer = csv::Writer::from_writer(out);
                    writer.write_record([
                        "position",
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
                    ])?;
                    while let Some(chunk) = lines.next().await {
                        let chunk = chunk?;
                        for line in chunk.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
                            let raw: ledger_domain::envelope::RawEnvelope =
                                serde_json::from_slice(line)?;
                            writer.write_record([
                                raw.position.map(|p| p.to_string()).unwrap_or_default(),
                                raw.stream,
                                raw.version.to_string(),
                                raw.type_name,
                                raw.schema_version.to_string(),
                                raw.occurred_at,
                                raw.recorded_at,
                                raw.command_id,
                                raw.actor,
                                raw.prev_hash,
                                raw.hash,
                                raw.data.get().to_string(),
                            ])?;
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
