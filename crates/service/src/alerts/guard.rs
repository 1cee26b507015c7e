//! The receiver guard against server-side request forgery. A receiver URL makes the ledger
//! send requests from inside its network, so by default only public addresses and loopback
//! are reachable: private, link-local (cloud metadata at 169.254.169.254), carrier-grade NAT,
//! unique-local, multicast and unspecified addresses are refused, and so are hosts that do
//! not resolve. Loopback is allowed because SPEC section 14 allows `http://` to loopback for
//! tests and local use. `http://` is accepted only for a host whose every address is
//! loopback; anything else must be `https://`.
//!
//! `LEDGER_ALERTS_ALLOW_PRIVATE` opts in, for tests and private deployments: a comma-separated
//! list of hosts (as written in the URL, or IP addresses) that may resolve to such addresses,
//! or `*` for any. The check runs when alerts are configured and again inside the deliverer's
//! DNS resolver at every connection, so a name that later resolves elsewhere (DNS rebinding)
//! is still refused. Redirects are never followed (the deliverer's client).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

/// How long resolving a receiver's host may take when alerts are configured.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable that opts hosts in to private addresses.
pub const ALLOW_PRIVATE_ENV: &str = "LEDGER_ALERTS_ALLOW_PRIVATE";

/// Why a receiver URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("url is not a valid absolute URL: {0}")]
    Malformed(String),
    #[error("url must use https:// (http:// only to a loopback address)")]
    Scheme,
    #[error("url host {host} does not resolve")]
    Unresolvable { host: String },
    #[error("url host {host} resolves to {address}, a private or link-local address (set {ALLOW_PRIVATE_ENV} to allow it)")]
    Private { host: String, address: IpAddr },
}

/// Which hosts may reach non-public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    any_private: bool,
    allowed_hosts: Vec<String>,
}

impl Guard {
    /// Reads `LEDGER_ALERTS_ALLOW_PRIVATE`.
    pub fn from_env() -> Guard {
        Guard::allowing(&std::env::var(ALLOW_PRIVATE_ENV).unwrap_or_default())
    }

    /// A guard that lets the hosts in `list` (comma-separated, `*` for any) reach private
    /// addresses.
    pub fn allowing(list: &str) -> Guard {
        let allowed_hosts: Vec<String> = list
            .split(',')
            .map(|host| host.trim().trim_matches(['[', ']']).to_ascii_lowercase())
            .filter(|host| !host.is_empty())
            .collect();
        Guard {
            any_private: allowed_hosts.iter().any(|host| host == "*"),
            allowed_hosts,
        }
    }

    /// Checks a receiver URL, resolving its host: what `PUT .../alerts` runs.
    pub async fn check(&self, url: &str) -> Result<(), GuardError> {
        let target = Target::parse(url)?;
        let addresses = match target.host.parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => resolve(&target.host, target.port).await?,
        };
        self.check_addresses(&target, &addresses)
    }

    /// Checks a URL whose host is an IP address without resolving anything; a name is left to
    /// the resolver. What the deliverer runs before each attempt, since a client does not ask
    /// its resolver about IP literals.
    pub fn check_literal(&self, url: &str) -> Result<(), GuardError> {
        let target = Target::parse(url)?;
        match target.host.parse::<IpAddr>() {
            Ok(address) => self.check_addresses(&target, &[address]),
            Err(_) if target.https => Ok(()),
            // http to a name: allowed only if it resolves to loopback, which the resolver
            // cannot tell the client; refuse unless the name is opted in.
            Err(_) if self.host_allowed(&target.host) => Ok(()),
            Err(_) => Err(GuardError::Scheme),
        }
    }

    fn check_addresses(&self, target: &Target, addresses: &[IpAddr]) -> Result<(), GuardError> {
        if !target.https && !addresses.iter().all(|address| address.is_loopback()) {
            return Err(GuardError::Scheme);
        }
        for &address in addresses {
            self.check_address(&target.host, address)?;
        }
        Ok(())
    }

    fn check_address(&self, host: &str, address: IpAddr) -> Result<(), GuardError> {
        if is_public(address)
            || address.is_loopback()
            || self.host_allowed(host)
            || self.host_allowed(&address.to_string())
        {
            return Ok(());
        }
        Err(GuardError::Private {
            host: host.to_string(),
            address,
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.any_private
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }

    /// The addresses of `host` the deliverer may connect to.
    fn filter(&self, host: &str, addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
        addresses
            .into_iter()
            .filter(|address| self.check_address(host, address.ip()).is_ok())
            .collect()
    }
}

struct Target {
    https: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Target, GuardError> {
        let parsed = Url::parse(url).map_err(|error| GuardError::Malformed(error.to_string()))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(GuardError::Scheme),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(GuardError::Malformed("credentials in the URL".into()));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| GuardError::Malformed("no host".into()))?
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(443);
        Ok(Target { https, host, port })
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, GuardError> {
    let unresolvable = || GuardError::Unresolvable {
        host: host.to_string(),
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| unresolvable())?
        .map_err(|_| unresolvable())?;
    let addresses: Vec<IpAddr> = found.map(|address| address.ip()).collect();
    if addresses.is_empty() {
        return Err(unresolvable());
    }
    Ok(addresses)
}

/// Whether an address is on the public internet: not loopback, private, link-local, shared
/// (CGNAT), unique-local, documentation, benchmarking, multicast, broadcast or unspecified.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

/// The deliverer's DNS resolver: resolves like the system and keeps only the addresses the
/// guard allows, so no connection reaches a refused address whatever the name resolves to now.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl GuardedResolver {
    pub fn new(guard: Arc<Guard>) -> GuardedResolver {
        GuardedResolver { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_ascii_lowercase();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = guard.filter(&host, found);
            if allowed.is_empty() {
                return Err(
                    format!("{host} resolves to no address the alerts guard allows").into(),
                );
            }
            let addresses: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metadata_private_and_link_local_receivers_are_refused_by_default() {
        let guard = Guard::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "https://169.254.169.254/",
            "http://10.0.0.1/",
            "https://10.0.0.1/",
            "https://192.168.1.20/hook",
            "https://172.16.0.1/",
            "https://100.64.0.1/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://0.0.0.0/",
        ] {
            let refused = guard.check(url).await;
            assert!(
                matches!(
                    refused,
                    Err(GuardError::Private { .. }) | Err(GuardError::Scheme)
                ),
                "{url}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn bad_schemes_credentials_and_unresolvable_hosts_are_refused() {
        let guard = Guard::allowing("*");
        assert_eq!(
            guard.check("ftp://127.0.0.1/").await,
            Err(GuardError::Scheme)
        );
        assert_eq!(
            guard.check("http://10.0.0.1/").await,
            Err(GuardError::Scheme)
        );
        assert!(matches!(
            guard.check("https://u:p@127.0.0.1/").await,
            Err(GuardError::Malformed(_))
        ));
        assert!(matches!(
            guard.check("https://no-such-host.invalid/").await,
            Err(GuardError::Unresolvable { .. })
        ));
    }

    #[tokio::test]
    async fn opted_in_hosts_may_reach_private_addresses_and_http_only_on_loopback() {
        let guard = Guard::allowing("127.0.0.1, localhost");
        assert_eq!(guard.check("http://127.0.0.1:9/hook").await, Ok(()));
        assert_eq!(guard.check("http://localhost:9/hook").await, Ok(()));
        assert!(guard.check("https://10.0.0.1/").await.is_err());
        assert_eq!(guard.check_literal("http://127.0.0.1:9/"), Ok(()));
        assert!(guard.check_literal("http://10.0.0.1/").is_err());
    }

    #[tokio::test]
    async fn loopback_is_allowed_by_default_over_http_or_https() {
        let guard = Guard::default();
        for url in [
            "http://127.0.0.1:9/hook",
            "https://127.0.0.1/",
            "http://[::1]:9/",
            "http://localhost:9/hook",
        ] {
            assert_eq!(guard.check(url).await, Ok(()), "{url}");
        }
        assert_eq!(guard.check_literal("http://127.0.0.1:9/"), Ok(()));
        assert_eq!(
            guard.check("http://10.0.0.1/").await,
            Err(GuardError::Scheme)
        );
    }

    #[test]
    fn public_addresses_are_public() {
        for address in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(is_public(address.parse().expect("an address")), "{address}");
        }
    }
}
