//! The silo's authoritative DNS. This crate owns the answers a sender's resolver gets for a
//! silo host name: the silo's cluster addresses in rotation (`rotate` or `cycle`), minus
//! clusters whose balancer fails its health check, plus the static records of the
//! configured zones; over UDP (answers within the client's size and 1232 bytes, truncated
//! beyond) and TCP (length-framed), with response rate limiting per client prefix.
//!
//! [`catalog`] is the pure part (bytes in, bytes out); [`serve`] puts it on sockets and keeps
//! the health state current.

pub mod catalog;
mod rate;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use catalog::{Catalog, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// Concurrent TCP connections; more wait for the OS backlog.
const MAX_TCP: usize = 256;
/// Concurrent TCP connections from one address (NSD's tcp-count is per server; a per-address
/// bound keeps one client from holding them all).
const MAX_TCP_PER_ADDRESS: usize = 16;
/// A TCP client idle this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often a UDP worker looks up from its socket to see whether to stop.
const UDP_POLL: Duration = Duration::from_millis(200);

/// Binds UDP (one socket per core, SO_REUSEPORT) and TCP on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut udp = Vec::new();
    for _ in 0..cores {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        // Room for bursts: the kernel caps this at net.core.rmem_max / wmem_max.
        s.set_recv_buffer_size(4 << 20)?;
        s.set_send_buffer_size(4 << 20)?;
        s.bind(&addr.into())?;
        // Blocking with a short timeout, so a worker notices shutdown.
        s.set_read_timeout(Some(UDP_POLL))?;
        udp.push(s.into());
    }
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    Ok((udp, TcpListener::from_std(tcp.into())?))
}

/// One UDP worker: a blocking loop on its own thread (like NSD's server processes), which
/// measured about twice as fast here as the same loop on tokio's reactor.
fn udp_worker(
    socket: std::net::UdpSocket,
    catalog: Arc<Catalog>,
    limiter: Arc<Option<rate::Limiter>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                debug!(error = %e, "udp receive");
                continue;
            }
        };
        let Some(mut answer) = catalog.answer(&buf[..n], Transport::Udp) else {
            continue;
        };
        if let Some(l) = limiter.as_ref().as_ref() {
            match l.check(peer.ip()) {
                rate::Verdict::Send => {}
                rate::Verdict::Drop => continue,
                rate::Verdict::Slip => rate::truncate(&mut answer),
            }
        }
        let _ = socket.send_to(&answer, peer);
    }
}

/// Serves `catalog` on bound sockets until `shutdown` turns true.
pub async fn serve(
    catalog: Arc<Catalog>,
    sockets: (Vec<std::net::UdpSocket>, TcpListener),
    rate_limit: Option<config::RateLimit>,
    shutdown: watch::Receiver<bool>,
) {
    let limiter = Arc::new(rate_limit.map(rate::Limiter::new));
    let (udp, tcp) = sockets;
    let halt = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for socket in udp {
        let (catalog, limiter, halt) = (catalog.clone(), limiter.clone(), halt.clone());
        workers.push(
            std::thread::Builder::new()
                .name("dns-udp".into())
                .spawn(move || udp_worker(socket, catalog, limiter, halt)),
        );
    }
    let mut stop = shutdown.clone();
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    let per_address = listen::PerAddress::new(MAX_TCP_PER_ADDRESS);
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "dns tcp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Over its share, a client is closed on at once (it may retry, or use UDP).
        let Some(slot) = per_address.take(peer.ip()) else {
            debug!(%peer, "dns tcp: too many connections from this address");
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let catalog = catalog.clone();
        tokio::spawn(async move {
            let (_permit, _slot) = (permit, slot);
            let _ = tcp_session(stream, &catalog).await;
        });
    }
    halt.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers.into_iter().flatten() {
            let _ = w.join();
        }
    })
    .await;
}

/// Answers length-framed queries on one TCP connection until it closes or idles.
async fn tcp_session(mut stream: TcpStream, catalog: &Catalog) -> io::Result<()> {
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(r) => r? as usize,
            Err(_) => return Ok(()),
        };
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        match catalog.answer(&buf[..len], Transport::Tcp) {
            Some(answer) => {
                let mut out = Vec::with_capacity(answer.len() + 2);
                out.extend_from_slice(&(answer.len() as u16).to_be_bytes());
                out.extend_from_slice(&answer);
                stream.write_all(&out).await?;
            }
            None => return Ok(()),
        }
    }
}

/// Checks every silo cluster's balancer with the SMTP probe and keeps the catalog's health
/// flags current, with rise/fall hysteresis.
pub async fn check_health(
    catalog: Arc<Catalog>,
    silos: Vec<config::Silo>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    for silo in silos {
        for (i, cluster) in silo.clusters.iter().enumerate() {
            let (catalog, cluster, health, mut stop) = (
                catalog.clone(),
                cluster.clone(),
                silo.health,
                shutdown.clone(),
            );
            let silo_name = silo.name.clone();
            tasks.push(tokio::spawn(async move {
                let mut state = health::Hysteresis::new(health.rise, health.fall);
                loop {
                    let ok = check(cluster.address, health.timeout).await;
                    let entry = catalog.silos().find(|s| s.name == silo_name).map(|s| &s.clusters[i]);
                    if let (Some(entry), Some(up)) = (entry, state.check(ok)) {
                        entry.healthy.store(up, Ordering::Relaxed);
                        if up {
                            info!(silo = %silo_name, cluster = %cluster.name, "cluster up: back in DNS answers");
                        } else {
                            warn!(silo = %silo_name, cluster = %cluster.name, "cluster down: out of DNS answers");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(health.interval) => {}
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Connects to a cluster's balancer and runs the SMTP probe through it, within `limit`.
async fn check(addr: SocketAddr, limit: Duration) -> bool {
    let started = std::time::Instant::now();
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => health::probe(
            stream,
            "dns-check.mailsilo",
            limit.saturating_sub(started.elapsed()),
        )
        .await
        .is_ok(),
        _ => false,
    }
}

/// The client prefix used for rate limiting.
pub fn prefix(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(
            (u32::from(a) & (u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0))).into(),
        ),
        IpAddr::V6(a) => IpAddr::V6(
            (u128::from(a) & (u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0))).into(),
        ),
    }
}
