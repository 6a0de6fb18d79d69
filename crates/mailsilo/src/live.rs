//! Keeps a node's run-time configuration in step with the store. At start the TOML seeds the
//! store with the client domains and servers it has never had, and every place where the
//! TOML and the store disagree is logged: the store wins, since it holds what operators
//! changed through the control API. Then each change the store announces (LISTEN/NOTIFY on
//! PostgreSQL) is applied here, client domains and servers' loading and state, within
//! milliseconds on every node of a fleet; the store's version counter is also re-read every
//! 30 s, in case an announcement was lost. The DNS learns from the same entries which
//! clusters still have a ready server. It also samples the local balancers' view of their
//! servers' health into the store's statistics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use balancer::{Admin, Balancer};
use config::{Config, Domain, DomainSettings, DomainTable};
use dns::catalog::Catalog;
use store::{DomainEntry, ServerEntry, Store};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the store's version counter is re-read without an announcement.
const REREAD: Duration = Duration::from_secs(30);

/// The client domains of the store's entries by the configuration's rules, accepted and
/// removed (an entry that no longer passes the rules, after a change of the TOML's silos,
/// is logged and left out).
fn domains_of(config: &Config, entries: &[DomainEntry]) -> (Vec<Domain>, Vec<Domain>) {
    let (mut accepted, mut removed) = (Vec::new(), Vec::new());
    for e in entries {
        let domain = serde_json::from_str::<DomainSettings>(&e.settings)
            .map_err(|err| err.to_string())
            .and_then(|s| {
                Domain::from_settings(
                    &e.name,
                    &s,
                    config.retry,
                    &config.filter.policy,
                    &config.silos,
                )
                .map_err(|(field, m)| format!("{field}: {m}"))
            });
        match domain {
            Ok(d) if e.removed => removed.push(d),
            Ok(d) => accepted.push(d),
            Err(err) => {
                warn!(domain = %e.name, error = %err, "the store's settings for this domain are refused; domain left out")
            }
        }
    }
    (accepted, removed)
}

/// The servers of the TOML, at the address and loading it gives them, ready. The address
/// goes into the store too, so a server that a host of a fleet lists joins every node's
/// balancer, whatever the other hosts' files say.
fn configured_servers(config: &Config) -> Vec<ServerEntry> {
    config
        .silos
        .iter()
        .flat_map(|s| &s.clusters)
        .flat_map(|c| {
            c.servers.iter().map(|s| ServerEntry {
                cluster: c.name.clone(),
                server: s.name.clone(),
                loading: s.loading,
                state: Admin::Ready.to_string(),
                address: Some(s.address.to_string()),
                removed: false,
            })
        })
        .collect()
}

/// Seeds the store from the TOML, reports the disagreements, and returns the client domains
/// in force.
pub async fn start(config: &Config, store: &Arc<dyn Store>) -> Result<Arc<DomainTable>> {
    let seed_domains: Vec<DomainEntry> = config
        .domains
        .iter()
        .map(|d| {
            Ok(DomainEntry {
                name: d.name.clone(),
                settings: serde_json::to_string(&d.settings())?,
                removed: false,
            })
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let added = store.seed(seed_domains, configured_servers(config)).await?;
    if added > 0 {
        info!(
            entries = added,
            "run-time configuration seeded from the configuration file"
        );
    }
    let entries = store.domains().await?;
    for d in &config.domains {
        match entries.iter().find(|e| e.name == d.name) {
            Some(e) if e.removed => {
                warn!(domain = %d.name, "the configuration file lists this domain, but it was removed at run time: the store wins (add it again with `mailsilo domain add`)")
            }
            Some(e) => {
                let theirs: Option<DomainSettings> = serde_json::from_str(&e.settings).ok();
                match theirs {
                    None => {
                        warn!(domain = %d.name, "the store's settings for this domain do not read: the store wins")
                    }
                    Some(theirs) => {
                        for (field, store, file) in differences(&theirs, &d.settings()) {
                            warn!(domain = %d.name, field, store, file, "the store's settings differ from the configuration file's: the store wins");
                        }
                    }
                }
            }
            None => {}
        }
    }
    for e in store.servers().await? {
        let file = config
            .cluster(&e.cluster)
            .and_then(|(_, c)| c.servers.iter().find(|s| s.name == e.server));
        match file {
            Some(_) if e.removed => {
                warn!(cluster = %e.cluster, server = %e.server, "the configuration file lists this server, but it was removed at run time: the store wins (add it again with `mailsilo lb add`)")
            }
            Some(s)
                if s.loading != e.loading
                    || e.state != Admin::Ready.to_string()
                    || e.address
                        .as_deref()
                        .is_some_and(|a| a != s.address.to_string()) =>
            {
                warn!(cluster = %e.cluster, server = %e.server, loading = e.loading, state = %e.state, address = ?e.address, file_loading = s.loading, "the store's loading, state or address differ from the configuration file's: the store wins");
            }
            _ => {}
        }
    }
    let table = DomainTable::default();
    let (accepted, removed) = domains_of(config, &entries);
    table.replace(accepted, removed);
    Ok(Arc::new(table))
}

/// The server an entry describes: the address it was added with, or the TOML's for a server
/// of the configuration file (whose `maxconn` it keeps); `None` for an entry with neither.
pub fn server_of(config: &Config, e: &ServerEntry) -> Option<config::Server> {
    let file = config
        .cluster(&e.cluster)
        .and_then(|(_, c)| c.servers.iter().find(|s| s.name == e.server));
    let address = match &e.address {
        Some(a) => a.parse().ok()?,
        None => file?.address,
    };
    Some(config::Server {
        name: e.server.clone(),
        address,
        loading: e.loading,
        maxconn: file.map_or(config::DEFAULT_MAXCONN, |s| s.maxconn),
    })
}

/// Applies the store's server entries to this node's balancers: servers added and removed,
/// loadings and states.
pub fn apply_servers(config: &Config, balancers: &[Arc<Balancer>], entries: &[ServerEntry]) {
    for e in entries {
        let Some(lb) = balancers.iter().find(|b| b.name() == e.cluster) else {
            continue;
        };
        let now = lb.stats().into_iter().find(|s| s.server == e.server);
        if e.removed {
            if now.is_some() {
                let _ = lb.remove_server(&e.server);
            }
            continue;
        }
        let Some(server) = server_of(config, e) else {
            warn!(cluster = %e.cluster, server = %e.server, address = ?e.address, "the store's entry has no usable address; server left out");
            continue;
        };
        let now = match now {
            Some(now) if now.address == server.address => now,
            stale => {
                if stale.is_some() {
                    let _ = lb.remove_server(&e.server);
                }
                if let Err(err) = lb.add_server(server) {
                    warn!(cluster = %e.cluster, server = %e.server, error = %err, "the store's server is refused");
                    continue;
                }
                let Some(now) = lb.stats().into_iter().find(|s| s.server == e.server) else {
                    continue;
                };
                now
            }
        };
        if now.loading != e.loading
            && let Err(err) = lb.set_loading(&e.server, e.loading)
        {
            warn!(cluster = %e.cluster, server = %e.server, error = %err, "the store's loading is refused");
        }
        match e.state.parse::<Admin>() {
            Ok(state) if state != now.admin => {
                let _ = lb.set_admin(&e.server, state);
            }
            Ok(_) => {}
            Err(err) => {
                warn!(cluster = %e.cluster, server = %e.server, error = %err, "the store's state is refused")
            }
        }
    }
}

/// Tells this node's DNS which clusters its operators left a ready server (a cluster whose
/// servers are all drained, in maintenance or removed leaves the answers at once).
pub fn apply_dns(config: &Config, catalog: &Catalog, entries: &[ServerEntry]) {
    let serving: HashMap<String, bool> = config
        .silos
        .iter()
        .flat_map(|s| &s.clusters)
        .map(|c| {
            let ready = entries
                .iter()
                .any(|e| e.cluster == c.name && !e.removed && e.state == Admin::Ready.to_string());
            (c.name.clone(), ready)
        })
        .collect();
    catalog.set_serving(&serving);
}

/// The silos as `catalog` answers them now, for the portal; none without a DNS.
pub fn dns_view(catalog: Option<&Catalog>) -> Vec<portal::DnsSilo> {
    let Some(catalog) = catalog else {
        return Vec::new();
    };
    let mut silos: Vec<portal::DnsSilo> = catalog
        .silos()
        .map(|s| {
            let pool = s.pool();
            portal::DnsSilo {
                name: s.name.clone(),
                ttl: s.ttl,
                clusters: s
                    .clusters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| portal::DnsCluster {
                        name: c.name.clone(),
                        address: c.ip.to_string(),
                        healthy: c.healthy.load(Ordering::Relaxed),
                        serving: c.serving.load(Ordering::Relaxed),
                        answered: pool.contains(&i),
                    })
                    .collect(),
            }
        })
        .collect();
    silos.sort_by(|a, b| a.name.cmp(&b.name));
    silos
}

/// Follows the store's run-time configuration until `shutdown`.
pub async fn watch(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    domains: Arc<DomainTable>,
    balancers: Vec<Arc<Balancer>>,
    catalog: Option<Arc<Catalog>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied: Option<i64> = None;
    let mut changes = store.runtime_changes();
    loop {
        match store.runtime_version().await {
            Ok(v) if applied != Some(v) => match (store.domains().await, store.servers().await) {
                (Ok(d), Ok(s)) => {
                    let (accepted, removed) = domains_of(&config, &d);
                    domains.replace(accepted, removed);
                    apply_servers(&config, &balancers, &s);
                    if let Some(catalog) = &catalog {
                        apply_dns(&config, catalog, &s);
                    }
                    if applied.is_some() {
                        info!(version = v, "run-time configuration changed: applied");
                    }
                    applied = Some(v);
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "reading the run-time configuration failed")
                }
            },
            Ok(_) => {}
            Err(e) => warn!(error = %e, "reading the run-time configuration failed"),
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(REREAD) => {}
            _ = smtp::server::stopped(&mut shutdown) => break,
        }
    }
}

/// How often each balancer's view of its servers is sampled into the statistics.
const HEALTH_SAMPLE: Duration = Duration::from_secs(10);

/// The statistics' label of one server's sample: `CLUSTER/SERVER STATE`, the state `up`,
/// `down` (failing its health checks) or `maint` (taken out by an operator; not checked).
pub fn health_label(s: &balancer::ServerStats) -> String {
    let state = match (s.admin, s.up) {
        (Admin::Maint, _) => "maint",
        (_, true) => "up",
        (_, false) => "down",
    };
    format!("{}/{} {state}", s.cluster, s.server)
}

/// Counts each local balancer's servers' health every [`HEALTH_SAMPLE`] into the store's
/// hourly statistics (metric `health`, no client domain: operators' figures), and each
/// cluster's as the local DNS's checks of its balancer see it (metric `cluster_health`,
/// `CLUSTER up` or `down`), so the portal charts each server's and each cluster's
/// availability over time; the first sample comes one interval after start, once the
/// first health checks have run.
pub async fn sample_health(
    store: Arc<dyn Store>,
    balancers: Vec<Arc<Balancer>>,
    catalog: Option<Arc<Catalog>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tally = store::Tally::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_SAMPLE) => {}
            _ = smtp::server::stopped(&mut shutdown) => break,
        }
        let now = smtp::date::now();
        for s in balancers.iter().flat_map(|b| b.stats()) {
            tally.add(now, "", "health", &health_label(&s));
        }
        for c in catalog
            .iter()
            .flat_map(|c| c.silos())
            .flat_map(|s| &s.clusters)
        {
            let state = if c.healthy.load(Ordering::Relaxed) {
                "up"
            } else {
                "down"
            };
            tally.add(now, "", "cluster_health", &format!("{} {state}", c.name));
        }
        if let Err(e) = tally.flush(store.as_ref()).await {
            warn!(error = %e, "server health samples not written; kept for the next");
        }
    }
}

/// The settings' fields that differ between the store's copy and the file's: each field's
/// path (`filter.spam_action`) and both values as JSON (`null` where one side has none).
fn differences(store: &DomainSettings, file: &DomainSettings) -> Vec<(String, String, String)> {
    let json = |s: &DomainSettings| serde_json::to_value(s).unwrap_or_default();
    let mut found = Vec::new();
    differ("", &json(store), &json(file), &mut found);
    found
}

fn differ(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    found: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value;
    match (a, b) {
        _ if a == b => {}
        (Value::Object(x), Value::Object(y)) => {
            let mut fields: Vec<&String> = x.keys().chain(y.keys()).collect();
            fields.sort();
            fields.dedup();
            for f in fields {
                let at = if path.is_empty() {
                    f.clone()
                } else {
                    format!("{path}.{f}")
                };
                differ(
                    &at,
                    x.get(f).unwrap_or(&Value::Null),
                    y.get(f).unwrap_or(&Value::Null),
                    found,
                );
            }
        }
        _ => found.push((path.to_string(), a.to_string(), b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_field_and_both_values() {
        let store: DomainSettings =
            serde_json::from_str(r#"{"destination": "10.0.0.1:25", "silo": "a"}"#).unwrap();
        let file: DomainSettings = serde_json::from_str(
            r#"{"destination": "10.0.0.1:25", "silo": "b", "filter": {"spam_action": "reject"}}"#,
        )
        .unwrap();
        assert_eq!(
            differences(&store, &file),
            [
                (
                    "filter".into(),
                    "null".into(),
                    r#"{"spam_action":"reject"}"#.into()
                ),
                ("silo".into(), r#""a""#.into(), r#""b""#.into()),
            ]
        );
        assert!(differences(&file, &file).is_empty());
    }
}
