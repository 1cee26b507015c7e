//! Turning a `postgres://` URL (and an optional schema) into connection settings: the pool's,
//! the subscriptions', and the schema every statement is qualified with.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ledger_store::StoreError;
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};

/// Connections a store keeps at most: one for the group-committing writer, the rest for
/// reads. Subscriptions open their own. Small on purpose: several nodes share the server,
/// and the writer batches appends instead of spreading them over connections.
pub const POOL_SIZE: usize = 4;

/// How long opening a connection may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a caller waits for a pooled connection before its call fails as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// `application_name` of the store's connections when the URL does not set one; shown in
/// `pg_stat_activity`, with `-subscription` appended for subscription connections.
const DEFAULT_APPLICATION_NAME: &str = "ledger-store";

/// PostgreSQL truncates identifiers to 63 bytes; a longer schema name would silently name
/// another schema.
const MAX_IDENTIFIER: usize = 63;

/// Parses `url` (a `postgres://` URL or a `key=value` connection string).
pub(crate) fn parse(url: &str) -> Result<Config, StoreError> {
    let mut config: Config = url.parse().map_err(|error: tokio_postgres::Error| {
        StoreError::Invalid(format!(
            "not a usable postgres url: {}",
            crate::error::describe(&error)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(DEFAULT_APPLICATION_NAME);
    }
    Ok(config)
}

/// The settings of a subscription's own connection: the store's, with `-subscription`
/// appended to the application name so operators (and tests) can tell them apart.
pub(crate) fn subscription_config(config: &Config) -> Config {
    let mut config = config.clone();
    let name = config
        .get_application_name()
        .unwrap_or(DEFAULT_APPLICATION_NAME)
        .to_owned();
    config.application_name(format!("{name}-subscription"));
    config
}

/// Where `config` points, for messages: hosts, ports and database, never the password.
pub(crate) fn target(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(n, host)| {
            let port = config
                .get_ports()
                .get(n)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    match config.get_dbname() {
        Some(database) => format!("{hosts}/{database}"),
        None => hosts,
    }
}

/// The schema named by the URL's `options=-c search_path=...` (its first entry that is not
/// `$user`), if any.
pub(crate) fn schema_from_options(config: &Config) -> Option<String> {
    let options = config.get_options()?;
    let mut tokens = options.split_whitespace();
    while let Some(token) = tokens.next() {
        let setting = match token.strip_prefix("-c") {
            Some("") => tokens.next()?,
            Some(setting) => setting,
            None => match token.strip_prefix("--") {
                Some(setting) => setting,
                None => continue,
            },
        };
        let Some(path) = setting
            .strip_prefix("search_path=")
            .or_else(|| setting.strip_prefix("search-path="))
        else {
            continue;
        };
        return path
            .split(',')
            .map(|entry| entry.trim().trim_matches('"'))
            .find(|entry| !entry.is_empty() && !entry.starts_with('$'))
            .map(str::to_owned);
    }
    None
}

/// Checks a schema name a caller gave.
pub(crate) fn check_schema(schema: &str) -> Result<(), StoreError> {
    if schema.is_empty() {
        return Err(StoreError::Invalid("the schema name is empty".into()));
    }
    if schema.len() > MAX_IDENTIFIER {
        return Err(StoreError::Invalid(format!(
            "schema name {schema:?} is longer than postgresql's {MAX_IDENTIFIER} bytes"
        )));
    }
    if schema.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "schema name {schema:?} contains a nul character"
        )));
    }
    Ok(())
}

/// `name` as a quoted SQL identifier, safe to splice into statements.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The connection pool of one store.
pub(crate) fn pool(config: Config) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // A connection that broke is noticed by its closed flag; a round trip per
            // checkout would double the cost of a short read.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| StoreError::Invalid(format!("cannot build the connection pool: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(url: &str) -> Option<String> {
        schema_from_options(&parse(url).unwrap())
    }

    #[test]
    fn search_path_in_the_url_names_the_schema() {
        assert_eq!(
            schema_of("postgres://u@h/db?options=-csearch_path%3Dledger_a").as_deref(),
            Some("ledger_a")
        );
        assert_eq!(
            schema_of("postgres://u@h/db?options=-c%20search_path%3D%24user%2Cb%2Cpublic")
                .as_deref(),
            Some("b")
        );
        assert_eq!(schema_of("postgres://u@h/db"), None);
        assert_eq!(
            schema_of("postgres://u@h/db?options=-c%20statement_timeout%3D5s"),
            None
        );
    }

    #[test]
    fn targets_never_show_the_password() {
        let config = parse("postgres://u:secret@db.example:6543/ledger").unwrap();
        assert_eq!(target(&config), "db.example:6543/ledger");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
    }
}
