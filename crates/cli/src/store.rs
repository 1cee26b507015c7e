//! Opening the event store a command line names: the embedded SQLite file under the data
//! directory by default, a PostgreSQL database shared by several nodes, or an EventStoreDB /
//! KurrentDB cluster, by URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger_store::{EventStore, StoreError};
use ledger_store_esdb::EsdbStore;
use ledger_store_postgres::PostgresStore;
use ledger_store_sqlite::SqliteStore;

/// The embedded store's file inside a data directory.
pub fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("events.sqlite")
}

/// Which store a `--store` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres(String),
    Esdb(String),
}

/// Reads a `--store` value: none means the embedded default in `data_dir`.
pub fn parse_target(store: Option<&str>, data_dir: &Path) -> Result<StoreTarget, StoreError> {
    let Some(url) = store.map(str::trim).filter(|url| !url.is_empty()) else {
        return Ok(StoreTarget::Sqlite(sqlite_path(data_dir)));
    };
    let scheme = url
        .split("://")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match scheme.as_str() {
        "esdb" | "esdb+discover" | "kurrentdb" | "kurrentdb+discover" | "kurrent"
        | "kurrent+discover" | "kdb" | "kdb+discover" => Ok(StoreTarget::Esdb(url.to_string())),
        "postgres" | "postgresql" => Ok(StoreTarget::Postgres(url.to_string())),
        "sqlite" => {
            let path = url.trim_start_matches("sqlite://");
            if path.is_empty() {
                return Err(StoreError::Invalid("sqlite:// needs a file path".into()));
            }
            Ok(StoreTarget::Sqlite(PathBuf::from(path)))
        }
        _ => Err(StoreError::Invalid(format!(
            "unknown store {url:?}: use postgres://host/db, esdb://host:2113, kurrentdb://host:2113 or sqlite://PATH"
        ))),
    }
}

/// Opens the store. EventStoreDB connections are checked, so a wrong address fails here
/// with one clear line instead of on the first request.
pub async fn open(target: &StoreTarget) -> Result<Arc<dyn EventStore>, StoreError> {
    match target {
        StoreTarget::Sqlite(path) => {
            if let Some(parent) = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|err| {
                    StoreError::Unavailable(format!("cannot create {}: {err}", parent.display()))
                })?;
            }
            Ok(Arc::new(SqliteStore::open(path)?))
        }
        // Connecting checks the server and creates or migrates the schema.
        StoreTarget::Postgres(url) => Ok(Arc::new(PostgresStore::connect(url).await?)),
        StoreTarget::Esdb(url) => {
            let store = EsdbStore::connect(url)?;
            store.check_connection().await?;
            Ok(Arc::new(store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_select_the_adapter() {
        let data = Path::new("/data");
        assert_eq!(
            parse_target(None, data).unwrap(),
            StoreTarget::Sqlite(PathBuf::from("/data/events.sqlite"))
        );
        assert_eq!(
            parse_target(Some("esdb://a:2113,b:2113?tls=false"), data).unwrap(),
            StoreTarget::Esdb("esdb://a:2113,b:2113?tls=false".into())
        );
        assert!(matches!(
            parse_target(Some("kurrentdb://node:2113"), data).unwrap(),
            StoreTarget::Esdb(_)
        ));
        assert_eq!(
            parse_target(Some("sqlite:///tmp/x.sqlite"), data).unwrap(),
            StoreTarget::Sqlite(PathBuf::from("/tmp/x.sqlite"))
        );
        assert_eq!(
            parse_target(Some("postgres://node/ledger"), data).unwrap(),
            StoreTarget::Postgres("postgres://node/ledger".into())
        );
        assert!(parse_target(Some("mysql://x"), data).is_err());
        assert!(parse_target(Some("sqlite://"), data).is_err());
    }
}
