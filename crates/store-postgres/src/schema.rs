//! The tables, the statements that use them, and creating or migrating them on start.
//!
//! Every statement names its tables with the store's schema, so the session's `search_path`
//! never decides where events go. Layout (format 1):
//!
//! - `ledger_events`: one row per event, keyed by its global `position`, with
//!   `UNIQUE (stream, version)` (which is also the index stream reads and head lookups use).
//!   Payloads are `bytea`, returned byte for byte (`jsonb` would reorder keys and break the
//!   hash chain).
//! - `ledger_position`: one row holding the last position handed out. Appends lock it (by
//!   updating it) for the rest of their transaction; see the crate docs for why that closes
//!   the position gap.
//! - `ledger_meta`: one row holding the format version.

use deadpool_postgres::Object;
use ledger_store::StoreError;

use crate::config::quote_identifier;
use crate::error::unavailable;

/// The layout this build reads and writes. A schema holding a newer one is refused.
pub const FORMAT_VERSION: i32 = 1;

/// The channel appends notify on, with the schema's name as payload; subscriptions listen.
pub const NOTIFY_CHANNEL: &str = "ledger_events";

/// `MIGRATIONS[n]` turns a schema of format `n` into format `n + 1` (format 0 being an empty
/// schema). `{schema}` stands for the quoted schema name.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first layout.
    "CREATE TABLE {schema}.ledger_position (
         singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
         last bigint NOT NULL CHECK (last >= 0)
     );
     INSERT INTO {schema}.ledger_position (last) VALUES (0);
     CREATE TABLE {schema}.ledger_events (
         position bigint PRIMARY KEY CHECK (position > 0),
         stream text NOT NULL,
         version bigint NOT NULL CHECK (version > 0),
         event_id uuid NOT NULL,
         event_type text NOT NULL,
         payload bytea NOT NULL,
         UNIQUE (stream, version)
     );",
];

// One step per format: the list and the version cannot drift apart.
const _: () = assert!(MIGRATIONS.len() == FORMAT_VERSION as usize);

/// The statements of one store, with its schema spliced in once.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The schema's name, unquoted (also the notification payload).
    pub(crate) schema: String,
    /// Locks the position counter until the transaction ends and reads it.
    pub(crate) lock_position: String,
    /// The last version of each of the named streams (NULL for a missing one).
    pub(crate) stream_heads: String,
    /// The stored events in the given (stream, version) slots.
    pub(crate) slots: String,
    /// Takes `$1` positions from the counter (locking it until the transaction ends),
    /// inserts the events given as parallel arrays `$2..$6` at those positions in array
    /// order, notifies `$7`, and returns the counter's new value.
    pub(crate) append: String,
    pub(crate) read_stream: String,
    pub(crate) read_all: String,
    pub(crate) head_position: String,
}

/// The columns [`crate::reader::recorded`] expects, in its order.
const COLUMNS: &str = "position, stream, version, event_id, event_type, payload";

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let s = quote_identifier(schema);
        Self {
            schema: schema.to_owned(),
            lock_position: format!("SELECT last FROM {s}.ledger_position FOR UPDATE"),
            // `max` over the (stream, version) index is one descent per stream.
            stream_heads: format!(
                "SELECT name, (SELECT max(version) FROM {s}.ledger_events e WHERE e.stream = name)
                 FROM unnest($1::text[]) AS name"
            ),
            slots: format!(
                "SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.payload
                 FROM unnest($1::text[], $2::bigint[]) AS slot(stream, version)
                 JOIN {s}.ledger_events e ON e.stream = slot.stream AND e.version = slot.version"
            ),
            // The counter's UPDATE runs before any row is inserted (the insert reads its
            // result), so no event is ever written without the position lock held.
            append: format!(
                "WITH counter AS (
                     UPDATE {s}.ledger_position SET last = last + $1 RETURNING last
                 ), inserted AS (
                     INSERT INTO {s}.ledger_events ({COLUMNS})
                     SELECT counter.last - $1 + e.n, e.stream, e.version, e.event_id,
                            e.event_type, e.payload
                     FROM counter,
                          unnest($2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::bytea[])
                              WITH ORDINALITY AS e(stream, version, event_id, event_type, payload, n)
                 )
                 SELECT last, pg_notify('{NOTIFY_CHANNEL}', $7) FROM counter"
            ),
            read_stream: format!(
                "SELECT {COLUMNS} FROM {s}.ledger_events
                 WHERE stream = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            read_all: format!(
                "SELECT {COLUMNS} FROM {s}.ledger_events
                 WHERE position > $1 ORDER BY position LIMIT $2"
            ),
            head_position: format!("SELECT last FROM {s}.ledger_position"),
        }
    }
}

/// Brings `schema` to [`FORMAT_VERSION`], creating it if needed, in one transaction under
/// an advisory lock: nodes starting together wait for the first one instead of racing to
/// create the same tables. A schema of a newer format is refused and left unchanged.
pub(crate) async fn migrate(client: &Object, schema: &str) -> Result<(), StoreError> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|error| unavailable("starting the schema check", &error))?;
    let result = migrate_in_transaction(client, schema).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client
        .batch_execute(end)
        .await
        .map_err(|error| unavailable("finishing the schema check", &error));
    result.and(ended)
}

async fn migrate_in_transaction(client: &Object, schema: &str) -> Result<(), StoreError> {
    let fail =
        |error: tokio_postgres::Error| unavailable(&format!("preparing schema {schema}"), &error);
    // Released by COMMIT or ROLLBACK; keyed by schema, so unrelated schemas never wait.
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('ledger-store schema ' || $1, 0))",
            &[&schema],
        )
        .await
        .map_err(fail)?;
    let tables = client
        .query_one(
            "SELECT
                 bool_or(c.relname = 'ledger_meta'),
                 bool_or(c.relname = 'ledger_events')
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname IN ('ledger_meta', 'ledger_events')",
            &[&schema],
        )
        .await
        .map_err(fail)?;
    let has_meta: Option<bool> = tables.get(0);
    let has_events: Option<bool> = tables.get(1);
    let s = quote_identifier(schema);
    let stored = if has_meta == Some(true) {
        let row = client
            .query_opt(&format!("SELECT format_version FROM {s}.ledger_meta"), &[])
            .await
            .map_err(fail)?;
        match row {
            Some(row) => row.get::<_, i32>(0),
            None => {
                return Err(StoreError::Incompatible(format!(
                    "schema {schema} has a ledger_meta table without a format version"
                )))
            }
        }
    } else if has_events == Some(true) {
        return Err(StoreError::Incompatible(format!(
            "schema {schema} has a ledger_events table but no format version: not written by the ledger"
        )));
    } else {
        0
    };
    if stored > FORMAT_VERSION {
        return Err(StoreError::Incompatible(format!(
            "schema {schema} holds event store format {stored}, newer than format \
             {FORMAT_VERSION} which this build understands; run a newer ledger"
        )));
    }
    if stored == FORMAT_VERSION {
        return Ok(());
    }
    if stored == 0 {
        // Only when missing: creating a schema needs CREATE on the database, which a role
        // given an existing schema may lack.
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await
            .map_err(fail)?
            .get(0);
        if !exists {
            client
                .batch_execute(&format!("CREATE SCHEMA {s}"))
                .await
                .map_err(fail)?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE {s}.ledger_meta (
                     singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                     format_version integer NOT NULL
                 );
                 INSERT INTO {s}.ledger_meta (format_version) VALUES (0);"
            ))
            .await
            .map_err(fail)?;
    }
    let from = usize::try_from(stored).unwrap_or(0);
    for step in &MIGRATIONS[from..] {
        client
            .batch_execute(&step.replace("{schema}", &s))
            .await
            .map_err(fail)?;
    }
    client
        .execute(
            &format!("UPDATE {s}.ledger_meta SET format_version = $1"),
            &[&FORMAT_VERSION],
        )
        .await
        .map_err(fail)?;
    tracing::info!(
        schema,
        from = stored,
        to = FORMAT_VERSION,
        "event store schema migrated"
    );
    Ok(())
}
