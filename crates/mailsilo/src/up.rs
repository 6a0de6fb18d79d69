//! `mailsilo up`: starts the roles the configuration gives this host (all of them, or those
//! named with `--only`), prints the map of what listens where, and stops them in order on
//! SIGINT or SIGTERM.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use balancer::{Admin, Balancer};
use config::Config;
use portal::Refused;
use queue::{Queue, SystemClock};
use smtp::server::{ProxyPolicy, Server};
use store::{Embedded, Store};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long open sessions may take to finish after a shutdown signal.
pub const GRACE: Duration = Duration::from_secs(30);
/// How long a balancer may take to send its PROXY header.
const PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which roles run: every one, or those listed (`mx`, `sink`, `dns`, `control`, `balancer`,
/// `balancer:CLUSTER`, `server`, `server:NAME`).
pub struct Roles(Vec<String>);

impl Roles {
    pub fn parse(list: &[String], config: &Config) -> Result<Roles> {
        for r in list {
            let (kind, name) = r
                .split_once(':')
                .map_or((r.as_str(), None), |(k, n)| (k, Some(n)));
            let known = match (kind, name) {
                ("mx" | "sink" | "dns" | "control" | "balancer" | "server", None) => true,
                ("balancer", Some(c)) => config.cluster(c).is_some(),
                ("server", Some(s)) => config
                    .silos
                    .iter()
                    .flat_map(|x| &x.clusters)
                    .flat_map(|c| &c.servers)
                    .any(|v| v.name == s),
                _ => false,
            };
            if !known {
                let clusters: Vec<&str> = config
                    .silos
                    .iter()
                    .flat_map(|s| &s.clusters)
                    .map(|c| c.name.as_str())
                    .collect();
                let servers: Vec<&str> = config
                    .silos
                    .iter()
                    .flat_map(|s| &s.clusters)
                    .flat_map(|c| &c.servers)
                    .map(|s| s.name.as_str())
                    .collect();
                match (kind, name) {
                    ("balancer", Some(c)) => bail!(
                        "--only {r}: no cluster {c:?} in the configuration (clusters: {})",
                        clusters.join(", ")
                    ),
                    ("server", Some(n)) => bail!(
                        "--only {r}: no mail server {n:?} in the configuration (servers: {})",
                        servers.join(", ")
                    ),
                    _ => bail!(
                        "--only {r}: unknown role (mx, sink, dns, control, balancer[:CLUSTER], server[:NAME])"
                    ),
                }
            }
        }
        Ok(Roles(list.to_vec()))
    }

    fn has(&self, kind: &str, name: &str) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|r| r == kind || *r == format!("{kind}:{name}"))
    }
}

/// File descriptors this process keeps for what the bounds do not count: the store, the
/// spool, deliveries, the resolver, the listeners themselves.
const SPARE_DESCRIPTORS: u64 = 1024;

/// The most file descriptors the roles this process runs may hold at once under their
/// configured bounds: one per SMTP session, two per balancer connection (client and
/// server), one per DNS/TCP and control connection, and [`SPARE_DESCRIPTORS`].
fn descriptors_needed(config: &Config, roles: &Roles) -> u64 {
    let servers = config
        .silos
        .iter()
        .flat_map(|s| &s.clusters)
        .flat_map(|c| &c.servers)
        .filter(|s| roles.has("server", &s.name))
        .count()
        + if roles.has("mx", "") {
            config.smtp.listen.len()
        } else {
            0
        }
        + usize::from(config.sink.is_some() && roles.has("sink", ""));
    let balancers: usize = config
        .silos
        .iter()
        .flat_map(|s| &s.clusters)
        .filter(|c| roles.has("balancer", &c.name))
        .map(|c| 2 * c.max_connections)
        .sum();
    let dns = config
        .dns
        .as_ref()
        .filter(|_| roles.has("dns", ""))
        .map_or(0, |d| d.listen.len() * dns::MAX_TCP);
    let control = if config.control.is_some() && roles.has("control", "") {
        portal::MAX_CONNECTIONS
    } else {
        0
    };
    (servers * config.smtp.max_sessions + balancers + dns + control) as u64 + SPARE_DESCRIPTORS
}

/// Raises this process's soft limit on open files to its hard limit, as HAProxy and nginx
/// do: a shell's soft limit (often 1024) would hold a balancer to some 500 relayed
/// connections. Warns when even the hard limit is below what the configured bounds may
/// need; connections past the limit wait in the kernel's accept queue until descriptors
/// are given back. Returns the limit now.
fn raise_open_files(need: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let now = limit.rlim_cur;
    if now < need {
        tracing::warn!(
            limit = now,
            need,
            "open files: this process may hold {now}, and its bounds may need {need} (one per \
             SMTP session, two per balancer connection): past the limit, connections wait to \
             be accepted. Raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn) or \
             lower smtp.max_sessions and silo.cluster.max_connections"
        );
    } else {
        tracing::debug!(limit = now, need, "open files");
    }
    now
}

/// Why a listener could not be had, in words: which role, which address, and the likely
/// cause.
pub fn cannot_listen(what: &str, addr: SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let cause = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (something else listens there already: another `mailsilo up` running?)".to_string()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!(" ({} is not an address of this host)", addr.ip())
        }
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
        }
        _ => String::new(),
    };
    anyhow::anyhow!("{what} cannot listen on {addr}: {e}{cause}")
}

/// Connections the kernel holds for a listener before they are accepted (a burst, or while
/// the process is out of file descriptors); tokio's default is 128, after which a client's
/// SYN is dropped and it waits seconds to retry. The balancers use the same.
const BACKLOG: u32 = 1024;

pub fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e| cannot_listen(what, addr, &e))
}

pub async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The demo mailbox server.
pub fn sink_server(
    mut settings: config::Smtp,
    listen: SocketAddr,
    tls: Arc<smtp::tls::ServerConfig>,
    root: PathBuf,
) -> Arc<Server<crate::sink::Maildir>> {
    settings.hostname = format!("sink.{}", settings.hostname);
    settings.listen = vec![listen];
    Arc::new(Server::new(
        settings,
        Some(tls),
        Arc::new(crate::sink::Maildir { root }),
    ))
}

/// The balancers as the portal sees them: this node's own, and the store, through which a
/// change reaches every node (and outlives a restart).
struct Lbs {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    local: Vec<Arc<Balancer>>,
    node: String,
}

impl Lbs {
    /// The store's entry for a server in service (of the TOML or added at run time).
    async fn entry(&self, cluster: &str, server: &str) -> Result<store::ServerEntry, Refused> {
        let entries = self.store.servers().await.map_err(Refused::store)?;
        entries
            .into_iter()
            .find(|e| e.cluster == cluster && e.server == server && !e.removed)
            .ok_or_else(|| {
                Refused::not_found(format!("cluster {cluster:?} has no server {server:?}"))
            })
    }

    async fn save(&self, entry: store::ServerEntry) -> Result<(), Refused> {
        self.store
            .set_server(entry.clone())
            .await
            .map_err(Refused::store)?;
        // Here at once; the other nodes within their watch interval.
        crate::live::apply_servers(&self.config, &self.local, &[entry]);
        Ok(())
    }
}

#[async_trait::async_trait]
impl portal::Balancers for Lbs {
    fn servers(&self) -> Vec<portal::ServerStatus> {
        self.local
            .iter()
            .flat_map(|b| b.stats())
            .map(|s| portal::ServerStatus {
                cluster: s.cluster,
                server: s.server,
                node: self.node.clone(),
                address: s.address.to_string(),
                up: s.up,
                state: s.admin.to_string(),
                loading: s.loading,
                active: s.active,
                total: s.total,
                last_check: s.last_check.as_ref().map(|(r, _)| r.clone()),
                last_check_ago_ms: s.last_check.as_ref().map(|(_, t)| t.as_millis() as u64),
            })
            .collect()
    }

    async fn set_loading(&self, cluster: &str, server: &str, loading: u32) -> Result<(), Refused> {
        if !config::LOADING.contains(&loading) {
            return Err(Refused::invalid(
                balancer::ControlError::LoadingRange.to_string(),
            ));
        }
        let mut entry = self.entry(cluster, server).await?;
        entry.loading = loading;
        self.save(entry).await
    }

    async fn set_state(&self, cluster: &str, server: &str, state: &str) -> Result<(), Refused> {
        let admin: Admin = state.parse().map_err(Refused::invalid)?;
        let mut entry = self.entry(cluster, server).await?;
        entry.state = admin.to_string();
        self.save(entry).await
    }

    async fn add_server(&self, cluster: &str, new: &portal::NewServer) -> Result<(), Refused> {
        let Some((_, c)) = self.config.cluster(cluster) else {
            return Err(Refused::not_found(format!(
                "there is no cluster {cluster:?}"
            )));
        };
        if !balancer::valid_server_name(&new.server) {
            return Err(Refused::invalid(
                balancer::ControlError::BadName(new.server.clone()).to_string(),
            ));
        }
        if !config::LOADING.contains(&new.loading) {
            return Err(Refused::invalid(
                balancer::ControlError::LoadingRange.to_string(),
            ));
        }
        let address: SocketAddr =
            new.address.trim().parse().map_err(|_| {
                Refused::invalid(format!("address {:?} is not IP:PORT", new.address))
            })?;
        if address.port() == 0 || address.ip().is_unspecified() {
            return Err(Refused::invalid(format!(
                "address {address} is not one a balancer can connect to"
            )));
        }
        if address == c.address {
            return Err(Refused::invalid(format!(
                "{address} is the cluster's own public address"
            )));
        }
        let entries = self.store.servers().await.map_err(Refused::store)?;
        for e in entries.iter().filter(|e| !e.removed) {
            if e.server == new.server {
                return Err(Refused::conflict(format!(
                    "cluster {:?} already has a server {:?}",
                    e.cluster, e.server
                )));
            }
            if e.cluster == cluster
                && crate::live::server_of(&self.config, e).is_some_and(|s| s.address == address)
            {
                return Err(Refused::conflict(format!(
                    "server {:?} of cluster {cluster:?} already has the address {address}",
                    e.server
                )));
            }
        }
        tracing::info!(%cluster, server = %new.server, %address, loading = new.loading, "server added by an operator");
        self.save(store::ServerEntry {
            cluster: cluster.to_string(),
            server: new.server.clone(),
            loading: new.loading,
            state: Admin::Ready.to_string(),
            address: Some(address.to_string()),
            removed: false,
        })
        .await
    }

    async fn remove_server(&self, cluster: &str, server: &str) -> Result<(), Refused> {
        let mut entry = self.entry(cluster, server).await?;
        entry.removed = true;
        tracing::info!(%cluster, %server, "server removed by an operator");
        self.save(entry).await
    }
}

/// Where the embedded store lives in a data directory.
pub fn embedded_store(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("queue")
}

/// Opens the store the configuration names: PostgreSQL for a fleet, else the embedded one in
/// the data directory.
pub async fn open_store(config: &Config, data_dir: &Path) -> Result<Arc<dyn Store>> {
    match &config.store.url {
        Some(url) => Ok(Arc::new(
            store::Postgres::connect(url)
                .await
                .context("opening the store (store.url)")?,
        )),
        None => Ok(Arc::new(
            Embedded::open(&embedded_store(data_dir)).context("opening the embedded store")?,
        )),
    }
}

pub async fn up(
    config: Config,
    data_dir: &Path,
    roles: Roles,
    node_id: Option<String>,
) -> Result<()> {
    let config = Arc::new(config);
    let open_files = raise_open_files(descriptors_needed(&config, &roles));
    crate::datadir::prepare(data_dir)?;
    let node = crate::datadir::node_id(data_dir, node_id)?;
    let tls = smtp::tls::server_config(
        config.smtp.tls_cert.as_deref(),
        config.smtp.tls_key.as_deref(),
        &config.smtp.hostname,
        data_dir,
    )?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    // The map of what listens where, printed in one piece once everything is bound.
    let mut map = format!(
        "mailsilo up: config {}, data dir {}, node {node}, store {}, open files {open_files}\n",
        config.source,
        data_dir.display(),
        if config.store.url.is_some() {
            "PostgreSQL (store.url)"
        } else {
            "embedded"
        }
    );

    // Everything that receives mail shares one queue.
    let receives = (roles.has("mx", "") && !config.smtp.listen.is_empty())
        || config
            .silos
            .iter()
            .flat_map(|s| &s.clusters)
            .flat_map(|c| &c.servers)
            .any(|s| roles.has("server", &s.name));
    let control = config.control.as_ref().filter(|_| roles.has("control", ""));
    let clusters: Vec<&config::Cluster> = config
        .silos
        .iter()
        .flat_map(|s| &s.clusters)
        .filter(|c| roles.has("balancer", &c.name))
        .collect();
    // The store holds the run-time configuration too: balancers need it for the loadings.
    let store = if receives || control.is_some() || !clusters.is_empty() {
        Some(open_store(&config, data_dir).await?)
    } else {
        None
    };
    let domains = match &store {
        Some(store) => crate::live::start(&config, store).await?,
        None => Arc::new(config::DomainTable::new(config.domains.clone())),
    };
    // The portal's accounts are in the store before anything listens.
    if let (Some(store), Some(_)) = (&store, &control) {
        crate::user_cli::seed(&config, store.as_ref())
            .await
            .context("seeding the portal's organisations and accounts")?;
    }
    let queue = match (&store, receives) {
        (Some(store), true) => Some(
            Queue::new(
                config.clone(),
                domains.clone(),
                store.clone(),
                Arc::new(SystemClock),
                &node,
            )
            .await?,
        ),
        _ => None,
    };

    if let Some(s) = config.sink.as_ref().filter(|_| roles.has("sink", "")) {
        let listener = bind(s.listen, "the demo sink (sink.listen)")?;
        let root = data_dir.join("mailbox");
        writeln!(
            map,
            "  sink (demo mailboxes)  smtp://{}  -> {}",
            listener.local_addr()?,
            root.display()
        )?;
        let server = sink_server(config.smtp.clone(), s.listen, tls.clone(), root);
        tasks.push(tokio::spawn(server.serve(listener, stopped.clone(), GRACE)));
    }
    let rules = filter::rules::Rules::new(config.filter.starter_rules, &config.filter.rules)
        .map_err(anyhow::Error::msg)?;
    let network = filter::network::Network::new(
        &config.smtp.hostname,
        &config.filter.nameservers,
        config.filter.dns_timeout,
        config.filter.dnsbl.clone(),
        config.filter.uribl.clone(),
    )
    .map_err(anyhow::Error::msg)
    .context("the filter's resolver (filter.nameservers)")?;
    let malware = filter::attachments::Malware::new(&config.filter).map_err(anyhow::Error::msg)?;
    let engine = Arc::new(
        filter::Engine::new(rules)
            .with_network(network)
            .with_malware(malware),
    );
    // The counters `/metrics` shows, one set per role for the whole process.
    let smtp_metrics = Arc::new(smtp::metrics::Metrics::default());
    let dns_metrics = Arc::new(dns::Metrics::default());
    if let Some(queue) = &queue {
        if config.filter.enabled {
            filter::training::refresh(&engine, queue.store().as_ref())
                .await
                .context("loading the classifier model")?;
            tasks.push(tokio::spawn(filter::training::follow(
                engine.clone(),
                queue.store().clone(),
                stopped.clone(),
            )));
            tasks.push(tokio::spawn(filter::attachments::watch_clamd(
                engine.clone(),
                queue.store().clone(),
                node.clone(),
                stopped.clone(),
            )));
        }
        let intake = Arc::new(filter::Intake::new(
            queue.clone(),
            domains.clone(),
            engine.clone(),
            config.filter.enabled,
            (
                config.filter.rate_per_client,
                config.filter.rate_per_sender_domain,
            ),
            config.filter.greylisting,
            config.filter.spf_reject,
        ));
        tasks.push(tokio::spawn(filter::intake::expire(
            queue.clone(),
            config.filter.greylisting,
            config.store.quarantine_retention,
            stopped.clone(),
        )));
        // Every server of this process shares one bound on message memory.
        let memory = smtp::data::MemoryBudget::new(
            config.smtp.max_message_memory,
            config.smtp.max_message_size,
        );
        if roles.has("mx", "") {
            for addr in &config.smtp.listen {
                let listener = bind(*addr, "the mx listener (smtp.listen)")?;
                writeln!(
                    map,
                    "  mx listener            smtp://{}  ({})",
                    listener.local_addr()?,
                    config.smtp.hostname
                )?;
                let server = Arc::new(
                    Server::new(config.smtp.clone(), Some(tls.clone()), intake.clone())
                        .with_memory(memory.clone())
                        .with_metrics(smtp_metrics.clone()),
                );
                tasks.push(tokio::spawn(server.serve(listener, stopped.clone(), GRACE)));
            }
        }
        for cluster in config.silos.iter().flat_map(|s| &s.clusters) {
            for s in cluster
                .servers
                .iter()
                .filter(|s| roles.has("server", &s.name))
            {
                let listener = bind(s.address, &format!("mail server {}", s.name))?;
                let mut settings = config.smtp.clone();
                settings.hostname = s.name.clone();
                settings.listen = vec![s.address];
                let mut server = Server::new(settings, Some(tls.clone()), intake.clone())
                    .with_memory(memory.clone())
                    .with_metrics(smtp_metrics.clone());
                if cluster.proxy {
                    server = server.with_proxy(ProxyPolicy {
                        from: vec![cluster.source],
                        timeout: PROXY_TIMEOUT,
                    });
                }
                let server = Arc::new(server);
                let proxy = if cluster.proxy {
                    format!(", PROXY v2 from {}", cluster.source)
                } else {
                    String::new()
                };
                writeln!(
                    map,
                    "  mail server {:<10} smtp://{}  (cluster {}{proxy})",
                    s.name,
                    listener.local_addr()?,
                    cluster.name
                )?;
                tasks.push(tokio::spawn(server.serve(listener, stopped.clone(), GRACE)));
            }
        }
        for d in domains.all() {
            let silo = d
                .silo
                .as_deref()
                .map(|s| format!("  (MX: {s})"))
                .unwrap_or_default();
            writeln!(
                map,
                "  client domain          {:<24} -> {}{silo}",
                d.name, d.destination
            )?;
        }
        tasks.push(tokio::spawn(queue.clone().run(stopped.clone())));
    }

    let mut balancers = Vec::new();
    let lb_metrics = Arc::new(balancer::Metrics::default());
    let stored_servers = match &store {
        Some(store) if !clusters.is_empty() => store.servers().await?,
        _ => Vec::new(),
    };
    for cluster in clusters {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lb = Balancer::new(cluster.clone(), lb_metrics.clone());
        // The loadings and states operators set at run time, before the first connection.
        crate::live::apply_servers(&config, std::slice::from_ref(&lb), &stored_servers);
        let handles = lb
            .spawn(cluster.threads.unwrap_or(cores), stopped.clone(), GRACE)
            .map_err(|e| {
                cannot_listen(
                    &format!("the balancer of cluster {}", cluster.name),
                    cluster.address,
                    &e,
                )
            })?;
        let servers: Vec<String> = lb
            .stats()
            .iter()
            .map(|s| {
                let state = match s.admin {
                    Admin::Ready => String::new(),
                    other => format!(", {other}"),
                };
                format!("{} {} (loading {}{state})", s.server, s.address, s.loading)
            })
            .collect();
        writeln!(
            map,
            "  balancer {:<13} smtp://{}  -> {}  [{}{}]",
            cluster.name,
            cluster.address,
            servers.join(", "),
            cluster.scheduler,
            if cluster.proxy { ", PROXY v2" } else { "" }
        )?;
        tasks.push(tokio::spawn(async move {
            let joined = tokio::task::spawn_blocking(move || {
                handles.into_iter().for_each(|h| drop(h.join()))
            });
            let _ = joined.await;
        }));
        tasks.push(tokio::spawn(lb.clone().check_health(stopped.clone())));
        balancers.push(lb);
    }

    let mut catalog = None;
    if let Some(dns_config) = config.dns.as_ref().filter(|_| roles.has("dns", "")) {
        let served = Arc::new(dns::catalog::Catalog::new(dns_config, &config.silos));
        catalog = Some(served.clone());
        let catalog = served;
        for addr in &dns_config.listen {
            let sockets =
                dns::bind(*addr).map_err(|e| cannot_listen("the DNS (dns.listen)", *addr, &e))?;
            writeln!(
                map,
                "  dns                    udp+tcp://{addr}  zones {}",
                dns_config
                    .zones
                    .iter()
                    .map(|z| z.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            tasks.push(tokio::spawn(dns::serve(
                catalog.clone(),
                sockets,
                dns_config.rate_limit,
                stopped.clone(),
                dns_metrics.clone(),
            )));
        }
        for silo in &config.silos {
            let addrs: Vec<String> = silo
                .clusters
                .iter()
                .map(|c| c.address.ip().to_string())
                .collect();
            writeln!(
                map,
                "  silo {:<17}  -> {} ({}, ttl {})",
                silo.name,
                addrs.join(", "),
                silo.rotation,
                silo.ttl
            )?;
        }
        tasks.push(tokio::spawn(dns::check_health(
            catalog,
            config.silos.clone(),
            stopped.clone(),
        )));
    }

    if let Some(store) = store
        .as_ref()
        .filter(|_| !balancers.is_empty() || catalog.is_some())
    {
        tasks.push(tokio::spawn(crate::live::sample_health(
            store.clone(),
            balancers.clone(),
            catalog.clone(),
            stopped.clone(),
        )));
    }
    if let Some(store) = &store {
        tasks.push(tokio::spawn(crate::live::watch(
            config.clone(),
            store.clone(),
            domains.clone(),
            balancers.clone(),
            catalog.clone(),
            stopped.clone(),
        )));
    }
    if let (Some(c), Some(store)) = (control, store) {
        let listener = bind(c.listen, "the control endpoint (control.listen)")?;
        let token = crate::datadir::control_token(data_dir)?;
        // HTTPS with the SMTP certificate if one is configured, else a self-signed one
        // for the host name and the listening address.
        let control_tls = if c.tls {
            Some(smtp::tls::control_config(
                config.smtp.tls_cert.as_deref(),
                config.smtp.tls_key.as_deref(),
                &[config.smtp.hostname.clone(), c.listen.ip().to_string()],
                data_dir,
            )?)
        } else {
            None
        };
        let scheme = if c.tls { "https" } else { "http" };
        map.push_str(&crate::user_cli::describe(
            &format!("{scheme}://{}/", listener.local_addr()?),
            &config,
        ));
        writeln!(
            map,
            "  control                {scheme}://{}/api/v1/  (bearer token in {})",
            listener.local_addr()?,
            crate::datadir::token_path(data_dir).display()
        )?;
        let next_id: Arc<dyn Fn() -> String + Send + Sync> = match &queue {
            Some(q) => {
                let q = q.clone();
                Arc::new(move || q.next_id())
            }
            None => {
                let ids = Arc::new(smtp::server::QueueIds::new(store.node_number(&node).await?));
                Arc::new(move || ids.next())
            }
        };
        let (filter_metrics, queue_metrics, serves_dns) =
            (engine.clone(), queue.clone(), catalog.is_some());
        let (smtp_metrics, dns_metrics) = (smtp_metrics.clone(), dns_metrics.clone());
        let lb_metrics = (!balancers.is_empty()).then(|| lb_metrics.clone());
        let (learn_store, learn_engine) = (store.clone(), engine.clone());
        let retrainer = filter::training::Retrainer::spawn(store.clone(), stopped.clone());
        let learn: portal::Learn = Arc::new(move |raw, spam| {
            let (store, engine, retrainer) =
                (learn_store.clone(), learn_engine.clone(), retrainer.clone());
            Box::pin(async move {
                filter::training::learn_reported(store.as_ref(), &raw, spam, engine.authserv_id())
                    .await
                    .map_err(|e| e.to_string())?;
                retrainer.request();
                Ok(())
            })
        });
        let (bounce_store, bounce_ids, bounce_node, hostname) = (
            store.clone(),
            next_id.clone(),
            node.clone(),
            config.smtp.hostname.clone(),
        );
        let bounce: portal::Bounce = Arc::new(move |id| {
            let (store, ids, node, hostname) = (
                bounce_store.clone(),
                bounce_ids.clone(),
                bounce_node.clone(),
                hostname.clone(),
            );
            Box::pin(async move {
                let reason = portal::queue::BOUNCE_REASON;
                queue::bounce(store.as_ref(), &hostname, &node, &*ids, &id, reason).await
            })
        });
        let ctx = portal::Ctx {
            dns: Arc::new(move || crate::live::dns_view(catalog.as_deref())),
            next_id,
            learn,
            bounce,
            secure: c.tls,
            metrics: Arc::new(move || {
                let mut out = smtp_metrics.render();
                out.push_str(&filter_metrics.render_metrics());
                if let Some(q) = &queue_metrics {
                    out.push_str(&q.render_metrics());
                }
                if serves_dns {
                    out.push_str(&dns_metrics.render());
                }
                if let Some(lb) = &lb_metrics {
                    out.push_str(&lb.render());
                }
                out
            }),
            config: config.clone(),
            balancers: Arc::new(Lbs {
                config: config.clone(),
                store: store.clone(),
                local: balancers,
                node: node.clone(),
            }),
            store,
            node: node.clone(),
        };
        tasks.push(tokio::spawn(async move {
            portal::serve(listener, ctx, &token, control_tls, stopped).await
        }));
    }
    print!("{map}");
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!("ready");

    shutdown_signal().await?;
    tracing::info!("shutting down: no new sessions; open sessions get 421 at their next command");
    stop.send(true).ok();
    for t in tasks {
        t.await.ok();
    }
    tracing::info!("stopped");
    Ok(())
}
