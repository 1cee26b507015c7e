//! Reads: a stream, the global order, the head. Shared by the store (on pooled connections)
//! and subscriptions (on their own connection).
//!
//! No read needs more than one statement: because appends commit in position order (see the
//! crate docs), every snapshot holds a gap-free prefix of the global order, so a plain
//! `position > after` query never skips an event that commits later.

use ledger_store::{GlobalPosition, RecordedEvent, StreamVersion};
use tokio_postgres::{Client, Row, Statement};

/// Positions and versions as `bigint`. Validation keeps every stored or compared value below
/// `i64::MAX`; saturating keeps a bug from wrapping into a negative number.
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A row of the columns `schema::COLUMNS` names (each read is given its prepared statement), as an event.
pub(crate) fn recorded(row: &Row) -> Result<RecordedEvent, tokio_postgres::Error> {
    Ok(RecordedEvent {
        position: unsigned(row.try_get(0)?),
        stream: row.try_get(1)?,
        version: unsigned(row.try_get(2)?),
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        payload: row.try_get(5)?,
        attachment: None,
    })
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) async fn read_stream(
    client: &Client,
    statement: &Statement,
    stream: &str,
    from_version: StreamVersion,
    count: usize,
) -> Result<Vec<RecordedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(statement, &[&stream, &sql_int(from_version), &limit(count)])
        .await?;
    rows.iter().map(recorded).collect()
}

pub(crate) async fn read_all(
    client: &Client,
    statement: &Statement,
    after: Option<GlobalPosition>,
    count: usize,
) -> Result<Vec<RecordedEvent>, tokio_postgres::Error> {
    // Positions start at 1.
    let after = after.map_or(0, sql_int);
    let rows = client.query(statement, &[&after, &limit(count)]).await?;
    rows.iter().map(recorded).collect()
}

pub(crate) async fn head_position(
    client: &Client,
    statement: &Statement,
) -> Result<Option<GlobalPosition>, tokio_postgres::Error> {
    let last: i64 = client.query_one(statement, &[]).await?.try_get(0)?;
    Ok((last > 0).then(|| unsigned(last)))
}
