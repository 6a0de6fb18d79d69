//! Where a recipient's mail goes: the client domain's configured next hop, or MX records
//! (for DSNs to senders outside the client domains, and domains configured as `mx`).

use std::net::{IpAddr, SocketAddr};

use config::{Destination, DomainTable};
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

/// A delivery target shared by recipients that can go in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub destination: Destination,
    /// The domain whose MX records to use, for [`Destination::Mx`].
    pub mx_domain: Option<String>,
    pub require_tls: bool,
}

impl Route {
    /// The route for a recipient domain, as the client domains in force say.
    pub fn for_domain(domains: &DomainTable, domain: &str) -> Route {
        match domains.route(domain) {
            Some(d) => Route {
                mx_domain: (d.destination == Destination::Mx).then(|| d.name.clone()),
                destination: d.destination.clone(),
                require_tls: d.require_tls,
            },
            None => Route {
                destination: Destination::Mx,
                mx_domain: Some(domain.to_string()),
                require_tls: false,
            },
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mx_domain {
            Some(d) => write!(f, "mx:{d}"),
            None => write!(f, "{}", self.destination),
        }
    }
}

/// A failure to find where to deliver.
#[derive(Debug)]
pub struct RouteError {
    pub permanent: bool,
    pub reason: String,
}

/// Resolves a route to addresses to try in order, each with the host name to present in TLS.
pub async fn resolve(
    route: &Route,
    resolver: &TokioResolver,
) -> Result<Vec<(SocketAddr, String)>, RouteError> {
    let temp = |reason: String| RouteError {
        permanent: false,
        reason,
    };
    match (&route.destination, &route.mx_domain) {
        (Destination::Host { host, port }, _) => {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![(SocketAddr::new(ip, *port), host.clone())]);
            }
            host_addrs(host, *port, resolver).await.map_err(temp)
        }
        (Destination::Mx, Some(domain)) => {
            let mut hosts: Vec<(u16, String)> = match resolver.mx_lookup(format!("{domain}.")).await
            {
                Ok(mx) => mx
                    .as_lookup()
                    .record_iter()
                    .filter_map(|r| match r.data() {
                        RData::MX(m) => Some((m.preference(), m.exchange().to_utf8())),
                        _ => None,
                    })
                    .collect(),
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(e) => return Err(temp(format!("MX lookup for {domain}: {e}"))),
            };
            if hosts.iter().any(|(_, h)| h == ".") {
                return Err(RouteError {
                    permanent: true,
                    reason: format!("556 5.1.10 {domain} does not accept mail (null MX)"),
                });
            }
            if hosts.is_empty() {
                // RFC 5321 section 5.1: no MX means the domain itself is the host.
                hosts.push((0, domain.clone()));
            }
            hosts.sort();
            let mut out = Vec::new();
            let mut last_error = String::new();
            for (_, host) in hosts {
                let host = host.trim_end_matches('.').to_string();
                match host_addrs(&host, 25, resolver).await {
                    Ok(a) => out.extend(a),
                    Err(e) => last_error = e,
                }
            }
            if out.is_empty() {
                return Err(temp(format!("no address for {domain}: {last_error}")));
            }
            outside(domain, out)
        }
        (Destination::Mx, None) => Err(RouteError {
            permanent: true,
            reason: "no domain to look up".into(),
        }),
    }
}

/// The addresses of a domain's MX hosts that are outside the provider's network: MX
/// records are the domain owner's to write (a forged sender's, for a DSN; an admin's, for
/// a client domain routed by `mx`), and pointing them at loopback or private addresses
/// would have the gateway deliver into the provider's own services. A next hop inside the
/// network is configured as `HOST:PORT`. When none is outside, the mail waits (a
/// temporary failure) until the records change or the operator routes the domain.
fn outside(
    domain: &str,
    addrs: Vec<(SocketAddr, String)>,
) -> Result<Vec<(SocketAddr, String)>, RouteError> {
    let total = addrs.len();
    let out: Vec<_> = addrs
        .into_iter()
        .filter(|(a, _)| !config::internal_ip(a.ip()))
        .collect();
    if out.is_empty() {
        return Err(RouteError {
            permanent: false,
            reason: format!(
                "all {total} addresses of {domain}'s mail hosts are inside the provider's network (loopback, private, link-local): not delivered there"
            ),
        });
    }
    Ok(out)
}

async fn host_addrs(
    host: &str,
    port: u16,
    resolver: &TokioResolver,
) -> Result<Vec<(SocketAddr, String)>, String> {
    let ips = resolver
        .lookup_ip(format!("{host}."))
        .await
        .map_err(|e| format!("address lookup for {host}: {e}"))?;
    Ok(ips
        .iter()
        .map(|ip| (SocketAddr::new(ip, port), host.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_hosts_inside_the_network_are_not_delivered_to() {
        let at = |a: &str| (a.parse::<SocketAddr>().unwrap(), "mx.example".to_string());
        let mixed = vec![at("127.0.0.1:25"), at("192.0.2.7:25"), at("[fd00::1]:25")];
        assert_eq!(
            outside("example.net", mixed).unwrap(),
            vec![at("192.0.2.7:25")]
        );
        for inside in [
            "10.1.2.3:25",
            "[::ffff:169.254.169.254]:25",
            "100.64.0.1:25",
        ] {
            let e = outside("example.net", vec![at(inside)]).unwrap_err();
            assert!(!e.permanent, "{inside}");
            assert!(
                e.reason.contains("inside the provider's network"),
                "{}",
                e.reason
            );
        }
    }
}
