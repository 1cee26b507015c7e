//! The one place where tokio-postgres and pool errors become [`StoreError`]s, and the rule
//! for which failures are worth retrying on a new connection.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use ledger_store::StoreError;

/// A PostgreSQL failure as one lowercase line: the server's own message and SQLSTATE for a
/// refused statement, else the client's description followed by its causes (tokio-postgres
/// prints only the kind of error, the useful part is in the source chain).
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("postgresql said: {} ({})", db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&lowercase_first(cause.to_string()));
        source = cause.source();
    }
    lowercase_first(text)
}

/// `Unavailable` for a failure while doing `what` (e.g. "reading stream x").
pub(crate) fn unavailable(what: &str, error: &tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("{what}: {}", describe(error)))
}

/// `Unavailable` for a connection the pool could not hand out.
pub(crate) fn pool_unavailable(what: &str, error: PoolError) -> StoreError {
    let cause = match &error {
        PoolError::Backend(error) => describe(error),
        PoolError::Timeout(_) => {
            "no connection to postgresql became free or could be opened in time".into()
        }
        PoolError::Closed => "the store is closed".into(),
        other => lowercase_first(other.to_string()),
    };
    StoreError::Unavailable(format!("{what}: {cause}"))
}

/// Whether `error` is about the connection rather than the request, so the same request on a
/// new connection may well succeed: the connection closed or broke, the server is shutting
/// down or refusing connections for now, or it ran out of connection slots.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        let code = code.code();
        // 08: connection exception; 57P01-57P03: admin / crash shutdown, cannot connect now;
        // 53300: too many connections.
        return code.starts_with("08") || code.starts_with("57P") || code == "53300";
    }
    // No SQLSTATE: an I/O failure (transient) or a protocol or type mismatch (a bug that a
    // new connection would repeat). Only the former carries an `io::Error`.
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn lowercase_first(text: String) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if first.is_uppercase() => first.to_lowercase().chain(chars).collect(),
        _ => text,
    }
}
