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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use catalog::{Catalog, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Concurrent TCP connections; when all are held, a newcomer takes the place of the oldest
/// connection of the client holding the most (see `listen::Admission`).
pub const MAX_TCP: usize = 256;
/// Concurrent TCP connections from one client (NSD's tcp-count is per server; a per-client
/// bound keeps one client from holding them all).
const MAX_TCP_PER_ADDRESS: usize = 16;
/// A TCP client idle this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often a UDP worker looks up from its socket to see whether to stop.
const UDP_POLL: Duration = Duration::from_millis(200);

/// Queries a UDP worker counts on its own before adding them to the shared counters (so
/// that two workers do not fight over one cache line on every query).
const COUNT_BATCH: u64 = 256;

/// The DNS server's counters for `/metrics`: answers by response code and transport,
/// queries left unanswered (responses, or too broken for a FORMERR), and answers the rate
/// limit dropped or truncated.
#[derive(Default)]
pub struct Metrics {
    /// Answers per RCODE (the header's four bits), UDP then TCP.
    answers: [[AtomicU64; 16]; 2],
    unanswered: AtomicU64,
    dropped: AtomicU64,
    slipped: AtomicU64,
}

/// One worker's counts not yet added to [`Metrics`].
#[derive(Default)]
struct Counts {
    answers: [[u64; 16]; 2],
    unanswered: u64,
    dropped: u64,
    slipped: u64,
    total: u64,
}

impl Counts {
    fn answer(&mut self, transport: Transport, answer: Option<&[u8]>) {
        match answer {
            Some(a) => self.answers[transport as usize][usize::from(a[3] & 0x0f)] += 1,
            None => self.unanswered += 1,
        }
        self.total += 1;
    }

    /// Adds the counts to `m` and starts again.
    fn flush(&mut self, m: &Metrics) {
        for (shared, mine) in m.answers.iter().zip(&self.answers) {
            for (s, n) in shared.iter().zip(mine) {
                if *n > 0 {
                    s.fetch_add(*n, Ordering::Relaxed);
                }
            }
        }
        m.unanswered.fetch_add(self.unanswered, Ordering::Relaxed);
        m.dropped.fetch_add(self.dropped, Ordering::Relaxed);
        m.slipped.fetch_add(self.slipped, Ordering::Relaxed);
        *self = Counts::default();
    }
}

impl Metrics {
    /// The counters in Prometheus text format.
    pub fn render(&self) -> String {
        const RCODES: [&str; 16] = [
            "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
            "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "11", "12", "13", "14", "15",
        ];
        let mut out = String::new();
        let name = "mailsilo_dns_answers_total";
        metrics::family(
            &mut out,
            name,
            "counter",
            "Answers sent, by transport and response code (the header's RCODE)",
        );
        for (transport, counts) in ["udp", "tcp"].iter().zip(&self.answers) {
            for (rcode, n) in RCODES.iter().zip(counts) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    metrics::sample(
                        &mut out,
                        name,
                        &[("transport", transport), ("rcode", rcode)],
                        n,
                    );
                }
            }
        }
        for (name, help, n) in [
            (
                "mailsilo_dns_unanswered_total",
                "Queries given no answer: responses, or too short or broken for a FORMERR",
                &self.unanswered,
            ),
            (
                "mailsilo_dns_rate_limited_total",
                "UDP answers the response rate limit dropped",
                &self.dropped,
            ),
            (
                "mailsilo_dns_rate_slipped_total",
                "UDP answers the response rate limit sent truncated instead",
                &self.slipped,
            ),
        ] {
            metrics::family(&mut out, name, "counter", help);
            metrics::sample(&mut out, name, &[], n.load(Ordering::Relaxed));
        }
        out
    }
}

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
    metrics: Arc<Metrics>,
) {
    let mut buf = vec![0u8; 4096];
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        if counts.total >= COUNT_BATCH {
            counts.flush(&metrics);
        }
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
                // Idle: what was counted shows now rather than after the next batch.
                counts.flush(&metrics);
                continue;
            }
            Err(e) => {
                debug!(error = %e, "udp receive");
                continue;
            }
        };
        let answer = catalog.answer(&buf[..n], Transport::Udp);
        counts.answer(Transport::Udp, answer.as_deref());
        let Some(mut answer) = answer else {
            continue;
        };
        if let Some(l) = limiter.as_ref().as_ref() {
            match l.check(peer.ip()) {
                rate::Verdict::Send => {}
                rate::Verdict::Drop => {
                    counts.dropped += 1;
                    continue;
                }
                rate::Verdict::Slip => {
                    counts.slipped += 1;
                    rate::truncate(&mut answer);
                }
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
    metrics: Arc<Metrics>,
) {
    let limiter = Arc::new(rate_limit.map(rate::Limiter::new));
    let (udp, tcp) = sockets;
    let halt = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for socket in udp {
        let (catalog, limiter, halt, metrics) = (
            catalog.clone(),
            limiter.clone(),
            halt.clone(),
            metrics.clone(),
        );
        workers.push(
            std::thread::Builder::new()
                .name("dns-udp".into())
                .spawn(move || udp_worker(socket, catalog, limiter, halt, metrics)),
        );
    }
    let mut stop = shutdown.clone();
    let admission = listen::Admission::new(MAX_TCP_PER_ADDRESS, MAX_TCP);
    let mut tcp = listen::Acceptor::new(tcp, "dns tcp");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.next() => accepted,
            _ = stop.changed() => break,
        };
        // Over its share, or with every place held by clients holding no more, a client is
        // closed on at once (it may retry, or use UDP).
        let Ok(slot) = admission.admit(peer.ip()) else {
            debug!(%peer, "dns tcp: too many connections");
            continue;
        };
        let (catalog, metrics) = (catalog.clone(), metrics.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tcp_session(stream, &catalog, &metrics) => {}
                _ = slot.evicted() => debug!(%peer, "dns tcp: closed to make room for another client"),
            }
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
async fn tcp_session(
    mut stream: TcpStream,
    catalog: &Catalog,
    metrics: &Metrics,
) -> io::Result<()> {
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(r) => r? as usize,
            Err(_) => return Ok(()),
        };
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let answer = catalog.answer(&buf[..len], Transport::Tcp);
        let mut counts = Counts::default();
        counts.answer(Transport::Tcp, answer.as_deref());
        counts.flush(metrics);
        match answer {
            Some(answer) => {
                let mut out = Vec::with_capacity(answer.len() + 2);
                out.extend_from_slice(&(answer.len() as u16).to_be_bytes());
                out.extend_from_slice(&answer);
                // A client that stops reading its answers gives its place back like one
                // that stops asking.
                tokio::time::timeout(TCP_IDLE, stream.write_all(&out))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    /// A client that sends queries and never reads the answers holds its connection only
    /// until the answers back up for [`TCP_IDLE`], as one that stops asking does.
    #[tokio::test]
    async fn a_tcp_client_that_stops_reading_is_dropped() {
        let c = config::Config::parse("t.toml", config::DEMO).unwrap();
        let catalog = Catalog::new(c.dns.as_ref().unwrap(), &c.silos);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let session =
            tokio::spawn(async move { tcp_session(server, &catalog, &Metrics::default()).await });
        let mut m = Message::new();
        m.add_query(Query::query(
            Name::from_str("silo1.mailsilo.test.").unwrap(),
            RecordType::A,
        ));
        let query = m.to_vec().unwrap();
        let mut batch = Vec::new();
        for _ in 0..1000 {
            batch.extend((query.len() as u16).to_be_bytes());
            batch.extend(&query);
        }
        // Queries for some 10 MB of answers (more than the sockets' buffers hold), each
        // write given up once the server stops reading them.
        let writer = tokio::spawn(async move {
            for _ in 0..1000 {
                let write = client.write_all(&batch);
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(2), write).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
            client
        });
        let ended = tokio::time::timeout(TCP_IDLE * 3, session)
            .await
            .expect("the session ends while the client holds its connection")
            .unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(writer.await.unwrap());
    }
}
