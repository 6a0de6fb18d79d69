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
            Ok(out)
        }
        (Destination::Mx, None) => Err(RouteError {
            permanent: true,
            reason: "no domain to look up".into(),
        }),
    }
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
