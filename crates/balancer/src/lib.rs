//! A cluster's load balancer. It owns the cluster's public address: for each connection it
//! picks one of the cluster's mail servers by their loading (smooth weighted round-robin, or
//! weighted least-connections), connects to it from the balancer's own source address
//! (address and port translation), optionally sends a PROXY v2 header carrying the client's
//! address, and relays bytes both ways until each side has closed. It checks its servers'
//! health (220, EHLO, 250, QUIT, 221; a failed connect also takes a server out at once, as
//! HAProxy's `observe layer4` does), ramps returning servers up slowly, keeps per-server
//! statistics, and takes run-time changes (loading, drain, maintenance, ready, servers
//! added and removed) without touching established sessions. It bounds the connections one
//! client holds over all the cluster's servers, and all it relays (`listen::Admission`), so
//! one sender cannot take every server's sessions by being spread over them.

pub mod sched;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use config::Scheduler;
use health::{Hysteresis, Swrr};
use metrics::Labelled;
use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, debug_span, info, warn};

/// How long connecting to a mail server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the kernel to choose the source port at connect time rather than at bind time
/// (IP_BIND_ADDRESS_NO_PORT, as HAProxy does for `source`): binding the source address then
/// costs no port search. Best effort: without it the bind still works.
fn no_port_at_bind(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, an option the kernel reads as a c_int, and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Relays both ways. When one side has closed, the other gets `fin_timeout` to finish (as
/// HAProxy's `timeout client-fin`/`server-fin`), so a client that vanished without closing
/// cannot hold a server's session slot forever once the server has hung up.
async fn pump(client: TcpStream, upstream: TcpStream, fin_timeout: Duration) {
    async fn half(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.shutdown().await;
    }
    let (client_in, client_out) = client.into_split();
    let (server_in, server_out) = upstream.into_split();
    let mut up = Box::pin(half(client_in, server_out));
    let mut down = Box::pin(half(server_in, client_out));
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(fin_timeout, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(fin_timeout, up).await; }
    }
}

/// The balancers' counters for `/metrics`, shared by every cluster of a process:
/// connections refused or cut by the admission bounds, by cluster and reason.
pub struct Metrics {
    refused: Labelled<2>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            refused: Labelled::counter(
                "mailsilo_lb_connections_refused_total",
                "Connections the balancer refused (421) or cut for a newcomer, by reason",
                ["cluster", "reason"],
            ),
        }
    }
}

impl Metrics {
    /// The counters in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.refused.render(&mut out);
        out
    }
}

/// Whether `s` is one of `exclude` (the servers a connection already failed on).
fn excluded(s: &Arc<ServerState>, exclude: &[Arc<ServerState>]) -> bool {
    exclude.iter().any(|x| Arc::ptr_eq(x, s))
}

/// Takes a server out on an observed failure; true if it was in.
fn mark_down(s: &ServerState) -> bool {
    let was = s.health.lock().expect("health").mark_down();
    s.up.store(false, Ordering::Relaxed);
    was
}

/// The operator's say over a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// In rotation (when healthy).
    Ready = 0,
    /// No new sessions; open ones finish.
    Drain = 1,
    /// Out of service: no new sessions.
    Maint = 2,
}

impl Admin {
    fn from_u8(v: u8) -> Admin {
        match v {
            0 => Admin::Ready,
            1 => Admin::Drain,
            _ => Admin::Maint,
        }
    }
}

impl fmt::Display for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Admin::Ready => "ready",
            Admin::Drain => "drain",
            Admin::Maint => "maint",
        })
    }
}

impl std::str::FromStr for Admin {
    type Err = String;
    fn from_str(s: &str) -> Result<Admin, String> {
        match s {
            "ready" => Ok(Admin::Ready),
            "drain" => Ok(Admin::Drain),
            "maint" | "maintenance" => Ok(Admin::Maint),
            _ => Err(format!("unknown state {s:?} (ready, drain, maint)")),
        }
    }
}

/// A snapshot of one server for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    pub cluster: String,
    pub server: String,
    pub address: SocketAddr,
    /// The health checks' verdict.
    pub up: bool,
    pub admin: Admin,
    pub loading: u32,
    /// Sessions open now.
    pub active: usize,
    /// Sessions since start.
    pub total: u64,
    /// The last check's outcome and how long ago it ran.
    pub last_check: Option<(String, Duration)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("cluster {0:?} has no server {1:?}")]
    UnknownServer(String, String),
    #[error("loading must be from 1 to 1000 (use drain to take a server out)")]
    LoadingRange,
    #[error("cluster {0:?} already has a server {1:?}")]
    NameTaken(String, String),
    #[error("server {1:?} of cluster {0:?} already has the address {2}")]
    AddressTaken(String, String, SocketAddr),
    #[error("{0:?} is not a server name: a word of letters, digits, '-', '_' or '.'")]
    BadName(String),
}

/// Whether `name` may name a server: what the `lb` commands and URLs can carry.
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

struct ServerState {
    config: config::Server,
    loading: AtomicU32,
    admin: AtomicU8,
    /// The checks' and observed failures' verdict, shared so a failure seen on the relay
    /// path restarts the checks' count of successes.
    health: Mutex<Hysteresis>,
    /// `health`'s state, read on every pick without the lock.
    up: AtomicBool,
    /// When it last came back up, for slow start; `None` means full weight.
    back_since: Mutex<Option<Instant>>,
    active: AtomicUsize,
    total: AtomicU64,
    last_check: Mutex<Option<(String, Instant)>>,
}

impl ServerState {
    fn new(config: config::Server, health: &config::Health) -> Arc<ServerState> {
        Arc::new(ServerState {
            loading: AtomicU32::new(config.loading),
            config,
            admin: AtomicU8::new(Admin::Ready as u8),
            health: Mutex::new(Hysteresis::new(health.rise, health.fall)),
            up: AtomicBool::new(true),
            back_since: Mutex::new(None),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            last_check: Mutex::new(None),
        })
    }
}

/// The servers of a cluster at one moment. Changing the membership swaps in a new list, so a
/// pick works on one list throughout, and a session keeps its server's state alive (and
/// counted) after the server was removed.
type Servers = Arc<Vec<Arc<ServerState>>>;

/// One cluster's balancer. Shared behind an `Arc` by its listener, its health checker and
/// the control endpoint.
pub struct Balancer {
    /// The cluster's settings; its `servers` are those it started with.
    cluster: config::Cluster,
    servers: RwLock<Servers>,
    /// The round-robin's state, by position in `servers`; its lock is taken before a change
    /// of membership, which starts it afresh.
    swrr: Mutex<Swrr>,
    last: AtomicUsize,
    /// Woken when a session ends or a server's state changes (for queued connections).
    changed: Notify,
    /// Woken when a server is added or removed (for the health checks).
    members: Notify,
    /// Places for connections: per client and in all.
    admission: listen::Admission,
    metrics: Arc<Metrics>,
}

/// Counts a session against its server while it lives.
struct Active<'a> {
    balancer: &'a Balancer,
    server: Arc<ServerState>,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
        self.balancer.changed.notify_waiters();
    }
}

impl Balancer {
    pub fn new(cluster: config::Cluster, metrics: Arc<Metrics>) -> Arc<Balancer> {
        let admission =
            listen::Admission::new(cluster.max_connections_per_client, cluster.max_connections);
        let servers = cluster
            .servers
            .iter()
            .map(|s| ServerState::new(s.clone(), &cluster.health))
            .collect();
        Arc::new(Balancer {
            cluster,
            servers: RwLock::new(Arc::new(servers)),
            swrr: Mutex::default(),
            last: AtomicUsize::new(0),
            changed: Notify::new(),
            members: Notify::new(),
            admission,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.cluster.name
    }

    /// The servers now.
    fn servers(&self) -> Servers {
        self.servers.read().expect("servers").clone()
    }

    pub fn stats(&self) -> Vec<ServerStats> {
        self.servers()
            .iter()
            .map(|s| ServerStats {
                cluster: self.cluster.name.clone(),
                server: s.config.name.clone(),
                address: s.config.address,
                up: s.up.load(Ordering::Relaxed),
                admin: Admin::from_u8(s.admin.load(Ordering::Relaxed)),
                loading: s.loading.load(Ordering::Relaxed),
                active: s.active.load(Ordering::Relaxed),
                total: s.total.load(Ordering::Relaxed),
                last_check: s
                    .last_check
                    .lock()
                    .expect("last check")
                    .as_ref()
                    .map(|(r, t)| (r.clone(), t.elapsed())),
            })
            .collect()
    }

    fn server(&self, name: &str) -> Result<Arc<ServerState>, ControlError> {
        self.servers()
            .iter()
            .find(|s| s.config.name == name)
            .cloned()
            .ok_or_else(|| ControlError::UnknownServer(self.cluster.name.clone(), name.to_string()))
    }

    /// Changes the membership under the scheduler's lock, and starts the round-robin afresh
    /// (its state is by position).
    fn change_members(
        &self,
        change: impl FnOnce(&mut Vec<Arc<ServerState>>) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        let mut swrr = self.swrr.lock().expect("scheduler");
        let mut servers = self.servers.write().expect("servers");
        let mut next = servers.as_ref().clone();
        change(&mut next)?;
        *servers = Arc::new(next);
        *swrr = Swrr::default();
        drop((servers, swrr));
        self.members.notify_waiters();
        self.changed.notify_waiters();
        Ok(())
    }

    /// Adds a server, ready, at its loading; it takes sessions at once (a failed connect
    /// takes it out, as for any server) and its health checks start.
    pub fn add_server(&self, server: config::Server) -> Result<(), ControlError> {
        if !valid_server_name(&server.name) {
            return Err(ControlError::BadName(server.name));
        }
        if !config::LOADING.contains(&server.loading) {
            return Err(ControlError::LoadingRange);
        }
        let cluster = &self.cluster.name;
        let (name, address, loading) = (server.name.clone(), server.address, server.loading);
        self.change_members(|list| {
            if let Some(s) = list.iter().find(|s| s.config.name == name) {
                return Err(ControlError::NameTaken(
                    cluster.clone(),
                    s.config.name.clone(),
                ));
            }
            if let Some(s) = list.iter().find(|s| s.config.address == address) {
                return Err(ControlError::AddressTaken(
                    cluster.clone(),
                    s.config.name.clone(),
                    address,
                ));
            }
            list.push(ServerState::new(server, &self.cluster.health));
            Ok(())
        })?;
        info!(%cluster, server = %name, %address, loading, "server added");
        Ok(())
    }

    /// Removes a server: no new sessions; open ones run to their end.
    pub fn remove_server(&self, name: &str) -> Result<(), ControlError> {
        let cluster = &self.cluster.name;
        self.change_members(|list| {
            let before = list.len();
            list.retain(|s| s.config.name != name);
            if list.len() == before {
                return Err(ControlError::UnknownServer(
                    cluster.clone(),
                    name.to_string(),
                ));
            }
            Ok(())
        })?;
        info!(%cluster, server = %name, "server removed; its open sessions finish");
        Ok(())
    }

    /// Changes a server's loading; new sessions follow it at once, open ones are untouched.
    pub fn set_loading(&self, server: &str, loading: u32) -> Result<(), ControlError> {
        if !config::LOADING.contains(&loading) {
            return Err(ControlError::LoadingRange);
        }
        self.server(server)?
            .loading
            .store(loading, Ordering::Relaxed);
        info!(cluster = %self.cluster.name, %server, loading, "loading changed");
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn set_admin(&self, server: &str, admin: Admin) -> Result<(), ControlError> {
        self.server(server)?
            .admin
            .store(admin as u8, Ordering::Relaxed);
        info!(cluster = %self.cluster.name, %server, state = %admin, "state changed");
        self.changed.notify_waiters();
        Ok(())
    }

    /// The weight each of `servers` has for the next pick (scaled by 1000 for slow start);
    /// 0 for one that may not take a session now.
    fn weights(&self, servers: &[Arc<ServerState>], exclude: &[Arc<ServerState>]) -> Vec<i64> {
        let slowstart = self.cluster.slowstart;
        servers
            .iter()
            .map(|s| {
                let eligible = !excluded(s, exclude)
                    && s.up.load(Ordering::Relaxed)
                    && Admin::from_u8(s.admin.load(Ordering::Relaxed)) == Admin::Ready
                    && s.active.load(Ordering::Relaxed) < s.config.maxconn;
                if !eligible {
                    return 0;
                }
                let full = i64::from(s.loading.load(Ordering::Relaxed)) * 1000;
                match *s.back_since.lock().expect("slow start") {
                    Some(t) if !slowstart.is_zero() && t.elapsed() < slowstart => {
                        (full as f64 * t.elapsed().as_secs_f64() / slowstart.as_secs_f64()).max(1.0)
                            as i64
                    }
                    _ => full,
                }
            })
            .collect()
    }

    /// Whether a server not in `exclude` is up and ready, if perhaps at its maxconn (then a
    /// new connection may wait for a slot).
    fn in_service(&self, exclude: &[Arc<ServerState>]) -> bool {
        self.servers().iter().any(|s| {
            !excluded(s, exclude)
                && s.up.load(Ordering::Relaxed)
                && Admin::from_u8(s.admin.load(Ordering::Relaxed)) == Admin::Ready
        })
    }

    /// Picks a server and counts the session against it, in one step so maxconn holds.
    fn pick(&self, exclude: &[Arc<ServerState>]) -> Option<Active<'_>> {
        let mut swrr = self.swrr.lock().expect("scheduler");
        let servers = self.servers();
        let weights = self.weights(&servers, exclude);
        let index = match self.cluster.scheduler {
            Scheduler::RoundRobin => swrr.pick(&weights)?,
            Scheduler::LeastConnections => {
                let active: Vec<usize> = servers
                    .iter()
                    .map(|s| s.active.load(Ordering::Relaxed))
                    .collect();
                let i =
                    sched::least_connections(&weights, &active, self.last.load(Ordering::Relaxed))?;
                self.last.store(i, Ordering::Relaxed);
                i
            }
        };
        let server = servers[index].clone();
        server.active.fetch_add(1, Ordering::AcqRel);
        server.total.fetch_add(1, Ordering::Relaxed);
        Some(Active {
            balancer: self,
            server,
        })
    }

    /// Connects to a server from the balancer's source address.
    async fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
        let socket = if to.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // The source address matters to servers that take PROXY headers only from it; without
        // PROXY the kernel's choice will do, and saves two system calls a connection.
        if self.cluster.proxy {
            no_port_at_bind(&socket);
            socket.bind(SocketAddr::new(self.cluster.source, 0))?;
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Binds one SO_REUSEPORT listener per thread on the cluster's address and serves each
    /// on its own single-threaded runtime, so a relayed byte never changes threads on its way
    /// through (HAProxy's model, and what keeps the added latency low). After `shutdown`, each
    /// thread stops accepting and waits up to `grace` for its relays to close.
    pub fn spawn(
        self: &Arc<Self>,
        threads: usize,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let domain = if self.cluster.address.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let socket =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&self.cluster.address.into())?;
            socket.listen(1024)?;
            let listener: std::net::TcpListener = socket.into();
            let (this, stop) = (self.clone(), shutdown.clone());
            let name = format!("lb-{}-{i}", self.cluster.name);
            handles.push(std::thread::Builder::new().name(name).spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the balancer thread");
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let relays = this.serve(listener, stop).await;
                    let _ = tokio::time::timeout(grace, async {
                        for r in relays {
                            let _ = r.await;
                        }
                    })
                    .await;
                });
            })?);
        }
        Ok(handles)
    }

    /// Accepts connections until `shutdown`; returns the relays still running.
    async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut relays: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut listener =
            listen::Acceptor::new(listener, format!("balancer {}", self.cluster.name));
        loop {
            let (client, peer) = tokio::select! {
                accepted = listener.next() => accepted,
                _ = shutdown.changed() => break,
            };
            let _ = client.set_nodelay(true);
            let this = self.clone();
            let span = debug_span!("relay", cluster = %self.cluster.name, %peer);
            relays.retain(|r| !r.is_finished());
            relays.push(tokio::spawn(
                async move { this.admit(client, peer).await }.instrument(span),
            ));
        }
        relays
    }

    /// Relays `client` if it gets a place: 421 from the balancer when its client holds
    /// its share or every place is taken; cut when a newcomer takes its place.
    async fn admit(&self, mut client: TcpStream, peer: SocketAddr) {
        let cluster = self.cluster.name.as_str();
        let slot = match self.admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                let (reason, msg) = match why {
                    listen::Refused::Client => (
                        "too_many_from_client",
                        "421 4.7.0 Too many connections from your address\r\n",
                    ),
                    listen::Refused::Full => (
                        "too_many_connections",
                        "421 4.7.0 Too many connections, try again later\r\n",
                    ),
                };
                info!(cluster, %peer, reason, "refused by the balancer: 421");
                self.metrics.refused.inc([cluster, reason]);
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), client.write_all(msg.as_bytes()))
                        .await;
                return;
            }
        };
        tokio::select! {
            () = self.relay(client, peer) => {}
            () = slot.evicted() => {
                info!(cluster, %peer, "cut: a newcomer took its place (every place taken)");
                self.metrics.refused.inc([cluster, "evicted"]);
            }
        }
    }

    async fn relay(&self, mut client: TcpStream, peer: SocketAddr) {
        let deadline = tokio::time::Instant::now() + self.cluster.queue_timeout;
        let mut failed: Vec<Arc<ServerState>> = Vec::new();
        loop {
            // Wait in the queue for a server below its maxconn; with none in service at all
            // (down, drained, in maintenance) there is nothing to wait for.
            let active = loop {
                let wake = self.changed.notified();
                if let Some(a) = self.pick(&failed) {
                    break a;
                }
                if !self.in_service(&failed)
                    || tokio::time::timeout_at(deadline, wake).await.is_err()
                {
                    info!(cluster = %self.cluster.name, %peer, "no server available: 421 from the balancer");
                    let msg = format!(
                        "421 4.3.2 {} has no mail server available, try again later\r\n",
                        self.cluster.name
                    );
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        client.write_all(msg.as_bytes()),
                    )
                    .await;
                    return;
                }
            };
            let server = &active.server.config;
            let mut upstream = match self.connect(server.address).await {
                Ok(s) => s,
                Err(e) => {
                    // Observed failure: out of rotation now, not after `fall` checks; the
                    // active checks bring it back after `rise` successes.
                    if mark_down(&active.server) {
                        warn!(cluster = %self.cluster.name, server = %server.name, error = %e, "server down (connect failed): out of rotation");
                    }
                    failed.push(active.server.clone());
                    continue;
                }
            };
            if self.cluster.proxy {
                let local = client.local_addr().unwrap_or(self.cluster.address);
                let header = Builder::with_addresses(
                    Version::Two | Command::Proxy,
                    Protocol::Stream,
                    (peer, local),
                )
                .build();
                let sent = match header {
                    Ok(h) => upstream.write_all(&h).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    warn!(server = %server.name, error = %e, "PROXY header not sent");
                    failed.push(active.server.clone());
                    continue;
                }
            }
            debug!(server = %server.name, "relaying");
            pump(client, upstream, self.cluster.fin_timeout).await;
            debug!(server = %server.name, "closed");
            return;
        }
    }

    /// Records one check's result, moving the server in or out of rotation.
    fn record_check(&self, s: &ServerState, result: &Result<(), String>, took: Duration) {
        let text = match result {
            Ok(()) => format!("ok in {} ms", took.as_millis()),
            Err(e) => format!("failed: {e}"),
        };
        let change = s.health.lock().expect("health").check(result.is_ok());
        match change {
            Some(true) => {
                *s.back_since.lock().expect("slow start") = Some(Instant::now());
                s.up.store(true, Ordering::Relaxed);
                info!(cluster = %self.cluster.name, server = %s.config.name, "server up: back in rotation (slow start)");
                self.changed.notify_waiters();
            }
            Some(false) => {
                s.up.store(false, Ordering::Relaxed);
                warn!(cluster = %self.cluster.name, server = %s.config.name, check = %text, "server down: out of rotation");
            }
            None => {}
        }
        *s.last_check.lock().expect("last check") = Some((text, Instant::now()));
    }

    /// Runs the health checks of every server until `shutdown`: one task per server,
    /// started when the server joins and stopped when it is removed.
    pub async fn check_health(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks: Vec<(Arc<ServerState>, tokio::task::JoinHandle<()>)> = Vec::new();
        loop {
            let members = self.members.notified();
            let servers = self.servers();
            tasks.retain(|(s, task)| {
                let kept = servers.iter().any(|x| Arc::ptr_eq(x, s));
                if !kept {
                    task.abort();
                }
                kept
            });
            for s in servers.iter() {
                if tasks.iter().any(|(x, _)| Arc::ptr_eq(x, s)) {
                    continue;
                }
                let (this, server, mut stop) = (self.clone(), s.clone(), shutdown.clone());
                let task = tokio::spawn(async move {
                    let health = this.cluster.health;
                    loop {
                        let started = Instant::now();
                        let result = this.check(&server.config, health.timeout).await;
                        this.record_check(&server, &result, started.elapsed());
                        tokio::select! {
                            _ = tokio::time::sleep(health.interval) => {}
                            _ = stop.changed() => break,
                        }
                    }
                });
                tasks.push((s.clone(), task));
            }
            tokio::select! {
                _ = members => {}
                _ = shutdown.changed() => break,
            }
        }
        for (_, t) in tasks {
            let _ = t.await;
        }
    }

    /// One check: connect, (PROXY LOCAL), then the SMTP probe, all within `limit`.
    async fn check(&self, server: &config::Server, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let mut stream = tokio::time::timeout(limit, self.connect(server.address))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if self.cluster.proxy {
            let local = Builder::with_addresses(
                Version::Two | Command::Local,
                Protocol::Unspecified,
                ppp::v2::Addresses::Unspecified,
            )
            .build()
            .map_err(|e| e.to_string())?;
            stream.write_all(&local).await.map_err(|e| e.to_string())?;
        }
        health::probe(
            stream,
            "health.mailsilo",
            limit.saturating_sub(started.elapsed()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(slowstart: Duration) -> Arc<Balancer> {
        let text = config::DEMO.replacen(
            "proxy = true",
            &format!("proxy = true\nslowstart = \"{}s\"", slowstart.as_secs()),
            1,
        );
        let c = config::Config::parse("t.toml", &text).unwrap();
        Balancer::new(c.silos[0].clusters[0].clone(), Arc::default())
    }

    #[test]
    fn weights_follow_state_loading_and_slow_start() {
        let lb = cluster(Duration::from_secs(100));
        assert_eq!(lb.weights(&lb.servers(), &[]), vec![1000, 2000]);
        // A server back up for 25 s of a 100 s slow start has a quarter of its weight.
        *lb.servers()[1].back_since.lock().unwrap() =
            Some(Instant::now() - Duration::from_secs(25));
        let w = lb.weights(&lb.servers(), &[]);
        assert!((495..=510).contains(&w[1]), "{w:?}");
        lb.set_loading("c1-s1", 3).unwrap();
        lb.set_admin("c1-s2", Admin::Drain).unwrap();
        assert_eq!(lb.weights(&lb.servers(), &[]), vec![3000, 0]);
        lb.servers()[0].up.store(false, Ordering::Relaxed);
        assert_eq!(lb.weights(&lb.servers(), &[]), vec![0, 0]);
        assert!(lb.pick(&[]).is_none());
        assert!(!lb.in_service(&[]), "down and drained: nothing to wait for");
        assert_eq!(lb.set_loading("c1-s1", 0), Err(ControlError::LoadingRange));
        assert_eq!(
            lb.set_loading("c1-s1", u32::MAX),
            Err(ControlError::LoadingRange)
        );
        assert_eq!(lb.set_loading("c1-s1", 1000), Ok(()));
        assert!(matches!(
            lb.set_admin("nope", Admin::Ready),
            Err(ControlError::UnknownServer(..))
        ));
    }

    /// After a failed connect took a server out, one good check is not enough to bring it
    /// back when `rise` is 2 (the demo's): the successes before the failure do not count.
    #[test]
    fn a_passive_mark_down_needs_rise_checks_to_come_back() {
        let lb = cluster(Duration::ZERO);
        let ok = Ok(());
        let bad = Err("refused".to_string());
        lb.record_check(&lb.servers()[0], &ok, Duration::ZERO);
        for _ in 0..3 {
            lb.record_check(&lb.servers()[0], &bad, Duration::ZERO);
        }
        lb.record_check(&lb.servers()[0], &ok, Duration::ZERO);
        assert!(
            !lb.servers()[0].up.load(Ordering::Relaxed),
            "one success of two"
        );
        assert!(!mark_down(&lb.servers()[0]), "already down");
        lb.record_check(&lb.servers()[0], &ok, Duration::ZERO);
        assert!(
            !lb.servers()[0].up.load(Ordering::Relaxed),
            "the success before the mark-down no longer counts"
        );
        lb.record_check(&lb.servers()[0], &ok, Duration::ZERO);
        assert!(lb.servers()[0].up.load(Ordering::Relaxed));
        assert_eq!(lb.weights(&lb.servers(), &[])[0], 1000);
    }

    /// Servers added at run time take sessions by their loading at once; removed ones take
    /// no more, and a session open on a removed server stays counted until it ends.
    #[test]
    fn servers_join_and_leave_at_run_time() {
        let lb = cluster(Duration::ZERO);
        let server = |name: &str, port: u16, loading: u32| config::Server {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 2, 9], port)),
            loading,
            maxconn: 1000,
        };
        lb.add_server(server("c1-s3", 2525, 3)).unwrap();
        assert_eq!(lb.weights(&lb.servers(), &[]), vec![1000, 2000, 3000]);
        let mut picks = std::collections::HashMap::new();
        for _ in 0..60 {
            let a = lb.pick(&[]).unwrap();
            *picks.entry(a.server.config.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(picks["c1-s1"], 10);
        assert_eq!(picks["c1-s2"], 20);
        assert_eq!(picks["c1-s3"], 30);
        assert!(matches!(
            lb.add_server(server("c1-s3", 2526, 1)),
            Err(ControlError::NameTaken(..))
        ));
        assert!(matches!(
            lb.add_server(server("c1-s4", 2525, 1)),
            Err(ControlError::AddressTaken(..))
        ));
        assert!(matches!(
            lb.add_server(server("c1 s4", 2527, 1)),
            Err(ControlError::BadName(..))
        ));
        assert_eq!(
            lb.add_server(server("c1-s4", 2527, 0)),
            Err(ControlError::LoadingRange)
        );
        let open = lb.pick(&[]).unwrap();
        let name = open.server.config.name.clone();
        lb.remove_server(&name).unwrap();
        assert_eq!(lb.servers().len(), 2);
        for _ in 0..20 {
            assert_ne!(lb.pick(&[]).unwrap().server.config.name, name);
        }
        assert_eq!(open.server.active.load(Ordering::Relaxed), 1);
        drop(open);
        assert!(matches!(
            lb.remove_server(&name),
            Err(ControlError::UnknownServer(..))
        ));
    }

    #[test]
    fn maxconn_bounds_picks() {
        let text = config::DEMO
            .replacen("loading = 1\n", "loading = 1\nmaxconn = 2\n", 1)
            .replacen("loading = 2\n", "loading = 2\nmaxconn = 1\n", 1);
        let c = config::Config::parse("t.toml", &text).unwrap();
        let lb = Balancer::new(c.silos[0].clusters[0].clone(), Arc::default());
        let held: Vec<_> = (0..3)
            .map(|_| lb.pick(&[]).expect("room for three"))
            .collect();
        assert!(lb.pick(&[]).is_none(), "both servers at maxconn");
        assert!(
            lb.in_service(&[]),
            "at maxconn, still in service: worth waiting for"
        );
        drop(held);
        assert_eq!(
            lb.stats()
                .iter()
                .map(|s| (s.active, s.total))
                .collect::<Vec<_>>(),
            vec![(0, 2), (0, 1)]
        );
    }
}
