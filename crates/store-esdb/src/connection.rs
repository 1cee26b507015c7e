//! Connection strings: validation and normalisation before the `kurrentdb` client parses them.
//!
//! The client (`kurrentdb::ClientSettings::from_str`, 1.2) accepts the schemes `esdb`,
//! `kurrentdb`, `kurrent` and `kdb`, each optionally `+discover`, a comma-separated list of
//! gossip seeds, and query options. It is lenient in ways that hurt an operator: unknown
//! options are only logged (`tsl=false` silently keeps TLS on), an empty seed becomes a host
//! named "" and extra hosts after a `+discover` name are ignored. We reject those up front
//! with a message naming the problem, and hand the client a canonical string: lower-case
//! scheme, explicit ports, no trailing slash, commas inside option values percent-encoded
//! (the client splits seeds by rewriting every `,` of the string).

use std::path::Path;
use std::str::FromStr;

use kurrentdb::ClientSettings;
use ledger_store::StoreError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The port EventStoreDB / KurrentDB serve gRPC on unless told otherwise.
pub const DEFAULT_PORT: u16 = 2113;

/// Schemes the `kurrentdb` 1.x client parses (its `SUPPORTED_PROTOCOLS`).
const SCHEMES: &[&str] = &[
    "esdb",
    "esdb+discover",
    "kurrentdb",
    "kurrentdb+discover",
    "kurrent",
    "kurrent+discover",
    "kdb",
    "kdb+discover",
];

/// Query options the client understands (it matches them case-insensitively).
const OPTIONS: &[&str] = &[
    "tls",
    "tlsVerifyCert",
    "tlsCAFile",
    "userCertFile",
    "userKeyFile",
    "nodePreference",
    "maxDiscoverAttempts",
    "discoveryInterval",
    "gossipTimeout",
    "keepAliveInterval",
    "keepAliveTimeout",
    "defaultDeadline",
    "connectionName",
];

/// One parsed host of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    name: String,
    port: u16,
}

/// Checks `conn` and rewrites it into the canonical form the `kurrentdb` client parses.
///
/// Accepted: `esdb://host[:port]`, `esdb://a:2113,b:2113,c:2113` (gossip seeds of a cluster),
/// `esdb+discover://name[:port]` (DNS discovery), the same with `kurrentdb`, `kurrent` or
/// `kdb` as scheme, optional `user:password@` credentials and the client's query options
/// (`?tls=false&nodePreference=leader`...), which pass through unchanged.
pub fn normalise_connection_string(conn: &str) -> Result<String, StoreError> {
    let conn = conn.trim();
    if conn.is_empty() {
        return Err(invalid(
            "",
            "empty connection string (expected e.g. esdb://localhost:2113?tls=false)",
        ));
    }

    let Some((scheme, rest)) = conn.split_once("://") else {
        return Err(invalid(
            conn,
            "no scheme: expected esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover://",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) {
        return Err(invalid(
            conn,
            &format!(
                "unsupported scheme '{scheme}': expected one of {}",
                SCHEMES.join(", ")
            ),
        ));
    }
    let discover = scheme.ends_with("+discover");

    if rest.contains('#') {
        return Err(invalid(conn, "a fragment ('#...') is not allowed"));
    }
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    // One trailing slash is harmless (`esdb://host:2113/`); anything after it is a path.
    let authority = authority.strip_suffix('/').unwrap_or(authority);

    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        let user = userinfo.split(':').next().unwrap_or_default();
        if user.is_empty() {
            return Err(invalid(
                conn,
                "credentials before '@' have an empty user name",
            ));
        }
    }
    if hosts.contains('/') {
        return Err(invalid(
            conn,
            "unexpected path after the host list (a connection string names hosts and options only)",
        ));
    }

    let hosts = hosts
        .split(',')
        .map(|host| parse_host(conn, host.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if discover && hosts.len() > 1 {
        return Err(invalid(
            conn,
            "a +discover connection string takes one DNS name to discover the cluster from; \
             list gossip seeds with esdb://a:2113,b:2113,c:2113 instead",
        ));
    }
    if hosts.len() > 1 && hosts.iter().any(|host| host.name.starts_with('[')) {
        // The client splits each seed on ':' and cannot parse an IPv6 literal in a list.
        return Err(invalid(
            conn,
            "IPv6 addresses are only supported for a single node; use host names for a cluster",
        ));
    }

    let query = match query {
        Some(query) => normalise_query(conn, query)?,
        None => String::new(),
    };

    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        out.push_str(userinfo);
        out.push('@');
    }
    let hosts = hosts
        .iter()
        .map(|host| format!("{}:{}", host.name, host.port))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str(&hosts);
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query);
    }
    Ok(out)
}

/// Normalises `conn` and parses it with the client, so every string [`crate::EsdbStore`]
/// accepts is one the client accepts too.
pub(crate) fn parse_settings(conn: &str) -> Result<(String, ClientSettings), StoreError> {
    let normalised = normalise_connection_string(conn)?;
    let settings = ClientSettings::from_str(&normalised).map_err(|e| {
        let detail = match e.error() {
            Some(url_error) => url_error.to_string(),
            None => scrub_password(&normalised, e.message()),
        };
        invalid(
            &normalised,
            &format!("rejected by the KurrentDB client: {detail}"),
        )
    })?;
    if let Some(ca_file) = settings.tls_ca_file() {
        check_ca_file(&normalised, ca_file)?;
    }
    Ok((normalised, settings))
}

/// `conn` with its password, if any, replaced by `***`: connection strings end up in logs
/// and error messages.
pub fn redact(conn: &str) -> String {
    let Some((scheme, rest)) = conn.split_once("://") else {
        return conn.to_owned();
    };
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return conn.to_owned();
    };
    let Some((user, _password)) = userinfo.split_once(':') else {
        return conn.to_owned();
    };
    let mut out = format!("{scheme}://{user}:***@{hosts}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn parse_host(conn: &str, host: &str) -> Result<Host, StoreError> {
    if host.is_empty() {
        return Err(invalid(conn, "empty host name in the host list"));
    }
    let (name, port) = if let Some(after_bracket) = host.strip_prefix('[') {
        let Some((address, after)) = after_bracket.split_once(']') else {
            return Err(invalid(conn, &format!("unclosed '[' in host '{host}'")));
        };
        if address.is_empty()
            || !address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(invalid(conn, &format!("'{host}' is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => {
                    return Err(invalid(
                        conn,
                        &format!("unexpected '{after}' after '[{address}]'"),
                    ))
                }
            },
        };
        (format!("[{address}]"), port)
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        if name.is_empty() {
            return Err(invalid(conn, &format!("host '{host}' has no name")));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(invalid(conn, &format!("'{name}' is not a valid host name")));
        }
        (name.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(invalid(
                    conn,
                    &format!("'{port}' is not a valid port (1-65535) for host {name}"),
                ))
            }
            Ok(port) => port,
        },
    };
    Ok(Host { name, port })
}

fn normalise_query(conn: &str, query: &str) -> Result<String, StoreError> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(invalid(conn, &format!("option '{pair}' has no value")));
        };
        if !OPTIONS.iter().any(|known| known.eq_ignore_ascii_case(key)) {
            return Err(invalid(
                conn,
                &format!(
                    "unknown option '{key}' (known options: {})",
                    OPTIONS.join(", ")
                ),
            ));
        }
        // The client rewrites every ',' of the string to parse gossip seeds, so a literal
        // comma in a value (a connection name, a file path) must travel percent-encoded.
        pairs.push(format!("{key}={}", value.replace(',', "%2C")));
    }
    Ok(pairs.join("&"))
}

/// kurrentdb 1.2 unwraps the parsed PEM of `tlsCAFile` when it builds its TLS config, so a
/// malformed file would panic inside `Client::new`; check it the same way first.
fn check_ca_file(conn: &str, path: &str) -> Result<(), StoreError> {
    let certificates = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| invalid(conn, &format!("cannot open tlsCAFile '{path}': {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(conn, &format!("tlsCAFile '{path}' is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            conn,
            &format!("tlsCAFile '{path}' holds no certificate"),
        ));
    }
    Ok(())
}

fn scrub_password(conn: &str, message: &str) -> String {
    let password = conn
        .split_once("://")
        .and_then(|(_, rest)| rest.split('?').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => message.replace(password, "***"),
        None => message.to_owned(),
    }
}

fn invalid(conn: &str, problem: &str) -> StoreError {
    if conn.is_empty() {
        StoreError::Invalid(format!("EventStoreDB connection string: {problem}"))
    } else {
        StoreError::Invalid(format!(
            "EventStoreDB connection string '{}': {problem}",
            redact(conn)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kurrentdb::NodePreference;

    fn ok(conn: &str) -> String {
        match normalise_connection_string(conn) {
            Ok(normalised) => normalised,
            Err(e) => panic!("{conn} should be accepted: {e}"),
        }
    }

    fn rejected(conn: &str) -> String {
        match normalise_connection_string(conn) {
            Ok(normalised) => panic!("{conn} should be rejected, got {normalised}"),
            Err(StoreError::Invalid(message)) => message,
            Err(other) => panic!("{conn} should be Invalid, got {other:?}"),
        }
    }

    fn settings(conn: &str) -> ClientSettings {
        match parse_settings(conn) {
            Ok((_, settings)) => settings,
            Err(e) => panic!("{conn} should parse: {e}"),
        }
    }

    #[test]
    fn single_node_gets_an_explicit_port_and_keeps_its_options() {
        assert_eq!(ok("esdb://localhost:2113"), "esdb://localhost:2113");
        assert_eq!(ok("esdb://localhost"), "esdb://localhost:2113");
        assert_eq!(ok("  esdb://localhost:2113/  "), "esdb://localhost:2113");
        assert_eq!(
            ok("esdb://localhost:2113?tls=false"),
            "esdb://localhost:2113?tls=false"
        );
        assert_eq!(
            ok("ESDB://node1:1113?tls=false&nodePreference=leader"),
            "esdb://node1:1113?tls=false&nodePreference=leader"
        );
    }

    #[test]
    fn cluster_seeds_and_discovery_forms_are_accepted() {
        assert_eq!(
            ok("esdb://a:2113,b:2113,c:2113?tls=false"),
            "esdb://a:2113,b:2113,c:2113?tls=false"
        );
        assert_eq!(ok("esdb://a, b:2114 ,c"), "esdb://a:2113,b:2114,c:2113");
        assert_eq!(
            ok("esdb+discover://cluster.example.com:2113"),
            "esdb+discover://cluster.example.com:2113"
        );
        assert_eq!(ok("kurrentdb://db:2113"), "kurrentdb://db:2113");
        assert_eq!(
            ok("kurrentdb+discover://cluster.internal?tls=false"),
            "kurrentdb+discover://cluster.internal:2113?tls=false"
        );
        assert_eq!(ok("kurrent://db:2113"), "kurrent://db:2113");
        assert_eq!(ok("kdb+discover://db"), "kdb+discover://db:2113");
    }

    #[test]
    fn the_client_reads_what_we_hand_it() {
        let single = settings("esdb://localhost:2113?tls=false");
        assert_eq!(single.hosts().len(), 1);
        assert_eq!(single.hosts()[0].host, "localhost");
        assert_eq!(single.hosts()[0].port, 2113);
        assert!(!single.is_secure_mode_enabled());
        assert!(!single.is_dns_discovery_enabled());

        let cluster = settings("esdb://a:2113,b:2114,c:2115?tls=false&nodePreference=leader");
        let seeds: Vec<_> = cluster
            .hosts()
            .iter()
            .map(|endpoint| (endpoint.host.as_str(), endpoint.port))
            .collect();
        assert_eq!(seeds, [("a", 2113), ("b", 2114), ("c", 2115)]);
        assert_eq!(cluster.node_preference(), NodePreference::Leader);
        assert!(!cluster.is_secure_mode_enabled());

        let discover = settings("kurrentdb+discover://cluster.internal:2113");
        assert!(discover.is_dns_discovery_enabled());
        assert!(
            discover.is_secure_mode_enabled(),
            "TLS is the client's default"
        );

        let with_user = settings("esdb://admin:changeit@a:2113,b:2113?tls=false");
        assert_eq!(with_user.hosts().len(), 2);
        assert!(with_user.default_authenticated_user().is_some());
    }

    #[test]
    fn commas_in_option_values_survive_the_clients_seed_splitting() {
        let normalised = ok("esdb://a:2113,b:2113?connectionName=ledger,node-1");
        assert_eq!(
            normalised,
            "esdb://a:2113,b:2113?connectionName=ledger%2Cnode-1"
        );
        assert_eq!(settings(&normalised).hosts().len(), 2);
    }

    #[test]
    fn bad_strings_are_invalid_with_a_clear_message() {
        assert!(rejected("").contains("empty connection string"));
        assert!(rejected("localhost:2113").contains("no scheme"));
        assert!(rejected("http://localhost:2113").contains("unsupported scheme 'http'"));
        assert!(rejected("esdb://").contains("empty host name"));
        assert!(rejected("esdb://a:2113,,b:2113").contains("empty host name"));
        assert!(rejected("esdb://a:2113,").contains("empty host name"));
        assert!(rejected("esdb://host:99999").contains("not a valid port"));
        assert!(rejected("esdb://host:0").contains("not a valid port"));
        assert!(rejected("esdb://host:abc").contains("not a valid port"));
        assert!(rejected("esdb://host:2113/streams").contains("unexpected path"));
        assert!(rejected("esdb://ho st:2113").contains("not a valid host name"));
        assert!(rejected("esdb://:2113").contains("has no name"));
        assert!(rejected("esdb://host:2113?tsl=false").contains("unknown option 'tsl'"));
        assert!(rejected("esdb://host:2113?tls").contains("has no value"));
        assert!(rejected("esdb+discover://a:2113,b:2113").contains("one DNS name"));
        assert!(rejected("esdb://[::1]:2113,b:2113").contains("IPv6"));
        assert!(rejected("esdb://host#frag").contains("fragment"));
        assert!(rejected("esdb://@host").contains("empty user name"));
    }

    #[test]
    fn option_values_are_checked_by_the_client() {
        let message = match parse_settings("esdb://host:2113?tls=maybe") {
            Err(StoreError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert!(
            message.contains("rejected by the KurrentDB client"),
            "{message}"
        );
        assert!(parse_settings("esdb://host:2113?nodePreference=nearest").is_err());
        assert!(parse_settings("esdb://host?userCertFile=/tmp/cert.pem").is_err());
    }

    #[test]
    fn ipv6_single_node_is_accepted() {
        assert_eq!(
            ok("esdb://[::1]:2113?tls=false"),
            "esdb://[::1]:2113?tls=false"
        );
        assert_eq!(
            settings("esdb://[::1]:2113?tls=false").hosts()[0].port,
            2113
        );
    }

    #[test]
    fn passwords_never_appear_in_errors() {
        let message = rejected("esdb://admin:s3cret@host:2113?tsl=false");
        assert!(!message.contains("s3cret"), "{message}");
        assert!(message.contains("admin:***@host:2113"), "{message}");
        assert_eq!(
            redact("esdb://admin:s3cret@a:2113,b:2113?tls=false"),
            "esdb://admin:***@a:2113,b:2113?tls=false"
        );
        assert_eq!(redact("esdb://a:2113"), "esdb://a:2113");
    }

    #[test]
    fn a_missing_ca_file_is_invalid_not_a_panic() {
        let message = match parse_settings("esdb://host:2113?tlsCAFile=/nonexistent/ca.pem") {
            Err(StoreError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert!(message.contains("cannot open tlsCAFile"), "{message}");
    }
}
