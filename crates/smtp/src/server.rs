//! The SMTP server: the listener with its session limits, and the per-session state machine
//! (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS,
//! CHUNKING and DSN).
//!
//! A session owns no policy beyond the protocol: which recipients are acceptable and what
//! happens to an accepted message is asked of its [`Handler`], which must answer only once
//! the message is durable, since the 250 follows straight after.
//!
//! Every read has a deadline, as in Postfix: a command line must arrive whole within
//! `command_timeout`, and message content must keep up `min_data_rate` after a first
//! allowance of `data_timeout`, so a client dripping a byte at a time cannot hold a session
//! slot. While more than 80 % of `max_sessions` are open both shrink to `stress_timeout`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, Level, debug, info, info_span, warn};

use crate::address::{self, Recipient};
use crate::command::{self, Command, ForwardPath, MailFrom, RcptTo, Ret};
use crate::conn::{Conn, Line, Stream};
use crate::data::{Decoder, MemoryBudget, Problem, Start};
use crate::metrics::{Metrics, Refusal};
use crate::proxy::{self, Proxied};
use crate::{Reply, date, tls};

/// The longest command line, CRLF included.
pub const MAX_COMMAND_LINE: usize = 1000;

/// Spare capacity given with each accepted message for header fields its handler adds.
pub const HANDLER_HEADROOM: usize = 4096;

/// Received: headers beyond which a message is taken for a mail loop (Postfix's
/// `hopcount_limit`).
pub const MAX_HOPS: usize = 50;

/// How many Received: header fields the header section of `message` holds.
fn received_headers(message: &[u8]) -> usize {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 2);
    message[..end]
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// DSN NOTIFY flags as the envelope carries them (RFC 3461).
pub mod notify {
    pub const SUCCESS: u8 = 1;
    pub const FAILURE: u8 = 2;
    pub const DELAY: u8 = 4;
    pub const NEVER: u8 = 8;
}

/// One accepted recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    /// The address exactly as received (quoting included).
    pub address: String,
    /// [`notify`] flags; zero when NOTIFY was not given.
    pub notify: u8,
    /// ORCPT exactly as received (`addr-type;xtext`), relayed byte for byte.
    pub orcpt: Option<String>,
}

/// The envelope of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Exactly as received; empty for the null reverse-path.
    pub sender: String,
    pub recipients: Vec<Rcpt>,
    /// ENVID exactly as received (xtext).
    pub envid: Option<String>,
    /// RET, when the client gave it (none is invented).
    pub ret: Option<Ret>,
    pub smtputf8: bool,
    pub eight_bit: bool,
}

/// What the server knows of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub helo: String,
    /// TLS version and cipher, when the session used STARTTLS.
    pub tls: Option<String>,
}

/// A message the server has received in full.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    /// The name of the server that took it (its banner name: `c1-s2`, or `smtp.hostname`).
    pub server: String,
    pub client: ClientInfo,
    pub envelope: Envelope,
    /// The message with the server's Received: header first; CRLF line ends. The only copy
    /// the server made: shared, never copied, on its way to the store and to delivery.
    pub body: Bytes,
}

/// The policy and storage behind a server.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether mail for this recipient is accepted (refusal is the reply to send).
    fn check_recipient(&self, recipient: &Recipient) -> Result<(), Reply>;
    /// A client connected (its real address: behind a balancer, the PROXY header's). A
    /// refusal is sent instead of the greeting, and the session ends.
    async fn connect(&self, _client: IpAddr) -> Result<(), Reply> {
        Ok(())
    }
    /// A client asks to send a message from `sender` (empty: the null sender): policy may
    /// refuse it here, before its recipients and content (rate limits, a listed client).
    async fn mail(&self, _client: &ClientInfo, _sender: &str) -> Result<(), Reply> {
        Ok(())
    }
    /// A recipient `check_recipient` accepted, in a transaction from `sender`: policy may
    /// refuse it for this client and sender (greylisting).
    async fn rcpt(
        &self,
        _client: &ClientInfo,
        _sender: &str,
        _recipient: &str,
    ) -> Result<(), Reply> {
        Ok(())
    }
    /// Takes responsibility for a message. Returns only once the message is on stable
    /// storage (the server answers 250 straight after), with what it became for the log
    /// line ("queued").
    async fn accept(&self, message: Accepted) -> Result<&'static str, Reply>;
    /// A new queue id for a message being received.
    fn queue_id(&self) -> String {
        LOCAL_IDS.next()
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Makes queue ids: microseconds since the epoch, the node's number in the fleet (which the
/// store gives out, so no two nodes share one) and a counter, in hex: 21 characters that
/// sort by time and never repeat across the nodes of a fleet (within a node, the counter
/// tells apart up to 65,536 ids of the same microsecond).
#[derive(Debug)]
pub struct QueueIds {
    node: u16,
    counter: AtomicU64,
}

impl QueueIds {
    pub const fn new(node: u16) -> QueueIds {
        QueueIds {
            node,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xffff;
        format!("{micros:013X}{:04X}{n:04X}", self.node)
    }
}

/// The ids of a process that is not part of a fleet's store (node number 0).
pub static LOCAL_IDS: QueueIds = QueueIds::new(0);

/// A running server's fixed settings.
pub struct Server<H> {
    pub settings: config::Smtp,
    pub tls: Option<TlsAcceptor>,
    pub handler: Arc<H>,
    pub proxy: Option<ProxyPolicy>,
    /// The memory all sessions' messages share (across servers, when they share one).
    pub memory: Arc<MemoryBudget>,
    /// Sessions running now, for stress mode.
    active: AtomicUsize,
    /// The counters of `/metrics` (shared by the process's servers).
    metrics: Arc<Metrics>,
    /// Clients that waited for the greeting (`greet_pause`), and when.
    patient: std::sync::Mutex<std::collections::HashMap<IpAddr, Instant>>,
}

/// How long a client that waited for the greeting is not made to wait again.
const PATIENT_FOR: Duration = Duration::from_secs(86_400);
/// The most clients remembered as patient (past it, those older than a day are forgotten,
/// then all if need be).
const MAX_PATIENT: usize = 100_000;

/// Counts a session as running while it lives.
struct Running<'a, H>(&'a Server<H>);

impl<H> Drop for Running<'_, H> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.session(&self.0.settings.hostname, false);
    }
}

/// Who may put a PROXY header in front of a session, and how long it may take.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    /// The balancer addresses allowed to connect; anyone else is closed on at once.
    pub from: Vec<IpAddr>,
    pub timeout: Duration,
}

impl<H: Handler> Server<H> {
    /// A server with its own memory budget (`max_message_memory`).
    pub fn new(
        settings: config::Smtp,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Arc<H>,
    ) -> Server<H> {
        Server {
            memory: MemoryBudget::new(settings.max_message_memory, settings.max_message_size),
            settings,
            tls: tls.map(TlsAcceptor::from),
            handler,
            proxy: None,
            active: AtomicUsize::new(0),
            metrics: Arc::default(),
            patient: Default::default(),
        }
    }

    /// The same server counting into `metrics` (one set for the process's servers).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Server<H> {
        self.metrics = metrics;
        self
    }

    /// The same server requiring a PROXY v2 header from the given balancer addresses.
    pub fn with_proxy(mut self, proxy: ProxyPolicy) -> Server<H> {
        self.proxy = Some(proxy);
        self
    }

    /// The same server sharing `memory` with others of the process.
    pub fn with_memory(mut self, memory: Arc<MemoryBudget>) -> Server<H> {
        self.memory = memory;
        self
    }

    /// Accepts sessions on `listener` until `shutdown` turns true, then waits (at most
    /// `grace`) for open sessions, which are told 421 at their next command.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let max = self.settings.max_sessions;
        let sessions = Arc::new(Semaphore::new(max));
        // The sessions' own bound is `max_sessions`, above; this one is per client only.
        let per_client = listen::Admission::new(self.settings.max_sessions_per_client, usize::MAX);
        let mut listener = listen::Acceptor::new(listener, self.settings.hostname.clone());
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.next() => accepted,
                _ = stopped(&mut shutdown) => break,
            };
            if let Some(p) = &self.proxy
                && !p.from.contains(&peer.ip())
            {
                info!(server = %self.settings.hostname, %peer, "refused: not a balancer, on a PROXY listener");
                self.metrics
                    .refused(&self.settings.hostname, Refusal::NotABalancer);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let Ok(permit) = sessions.clone().try_acquire_owned() else {
                info!(server = %self.settings.hostname, %peer, "refused: too many sessions");
                self.metrics
                    .refused(&self.settings.hostname, Refusal::TooManySessions);
                tokio::spawn(refuse(
                    stream,
                    "421 4.7.0 Too many connections, try again later\r\n",
                ));
                continue;
            };
            let (server, shutdown, per_client) =
                (self.clone(), shutdown.clone(), per_client.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let mut stream = stream;
                // Behind a balancer the client is who the PROXY header says; a LOCAL header
                // is the balancer's own health check.
                let (client, probe) = match &server.proxy {
                    None => (peer, false),
                    Some(p) => match proxy::read(&mut stream, p.timeout).await {
                        Ok(Proxied::Client(c)) => (c, false),
                        Ok(Proxied::Local) => (peer, true),
                        Err(e) => {
                            info!(server = %server.settings.hostname, %peer, error = %e, "closed: bad PROXY header");
                            server
                                .metrics
                                .refused(&server.settings.hostname, Refusal::BadProxyHeader);
                            return;
                        }
                    },
                };
                let slot = per_client.admit(client.ip());
                let Ok(_slot) = slot else {
                    info!(server = %server.settings.hostname, %client, "refused: too many sessions from this client");
                    server
                        .metrics
                        .refused(&server.settings.hostname, Refusal::TooManyFromClient);
                    refuse(
                        stream,
                        "421 4.7.0 Too many connections from your address\r\n",
                    )
                    .await;
                    return;
                };
                server
                    .run_session(Box::new(stream), client, probe, shutdown)
                    .await;
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(grace, sessions.acquire_many(max as u32)).await;
    }

    /// Runs one SMTP session over any byte stream (TCP, or a test's or fuzzer's pipe), in its
    /// own tracing span. Session limits are the caller's business.
    pub async fn session(
        self: Arc<Self>,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        self.run_session(stream, peer, false, shutdown).await
    }

    async fn run_session(
        self: Arc<Self>,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        probe: bool,
        shutdown: watch::Receiver<bool>,
    ) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.session(&self.settings.hostname, true);
        let span = info_span!("session", server = %self.settings.hostname, %peer);
        async move {
            let _running = Running(&*self);
            let mut session = Session::new(self.clone(), Conn::new(stream), peer, shutdown);
            session.probe = probe;
            let result = session.run().await;
            // Sessions that never started a transaction (health checks, probes) are
            // debug-level chatter; the others end with one line.
            let quiet = probe || !session.transacted;
            match result {
                Ok(()) if quiet => debug!("closed"),
                Ok(()) => info!(messages = session.messages, "closed"),
                Err(e) if quiet => debug!(error = %e, "session ended"),
                Err(e) => info!(messages = session.messages, error = %e, "session ended"),
            }
        }
        .instrument(span)
        .await
    }

    /// Whether the server is under pressure (more than 80 % of its session slots taken).
    fn stressed(&self) -> bool {
        self.active.load(Ordering::Relaxed) * 10 > self.settings.max_sessions * 8
    }
}

async fn refuse(mut stream: TcpStream, reply: &'static str) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
}

/// The transaction under way.
struct Transaction {
    sender: String,
    size: Option<u64>,
    recipients: Vec<Rcpt>,
    envid: Option<String>,
    ret: Option<Ret>,
    smtputf8: bool,
    eight_bit: bool,
    /// BDAT content received so far, if BDAT started.
    chunks: Option<Chunks>,
}

/// A BDAT transaction between its chunks: the content so far (held in memory), the queue id
/// it was given, and its deadline, which keeps running between chunks, so a client cannot
/// hold the content (and the memory it is charged) by idling or sending NOOPs.
struct Chunks {
    id: String,
    decoder: Decoder,
    deadline: ContentDeadline,
}

enum Next {
    Continue,
    Close,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timeout exceeded")
}

/// The deadline of message content: a first allowance, extended by each read at the
/// minimum data rate but never beyond the allowance (Postfix's `smtpd_min_data_rate`).
struct ContentDeadline {
    left: Duration,
    cap: Duration,
    rate: f64,
    /// When `left` was last brought up to date.
    since: Instant,
}

impl ContentDeadline {
    fn new(cap: Duration, rate: usize) -> ContentDeadline {
        ContentDeadline {
            left: cap,
            cap,
            rate: rate as f64,
            since: Instant::now(),
        }
    }

    /// What is left now.
    fn remaining(&self) -> Duration {
        self.left.saturating_sub(self.since.elapsed())
    }

    /// Accounts one read of `n` octets that took `took`.
    fn read(&mut self, took: Duration, n: usize) {
        let earned = Duration::from_secs_f64(n as f64 / self.rate);
        self.left = (self.left.saturating_sub(took) + earned).min(self.cap);
        self.since = Instant::now();
    }

    /// Brings `left` up to date with the time passed since (between BDAT chunks).
    fn catch_up(&mut self) {
        self.left = self.remaining();
        self.since = Instant::now();
    }
}

/// Commands that move no mail (NOOP, RSET, VRFY, HELP, and HELO or EHLO again) a session
/// may send before each counts as an error (Postfix's `smtpd_junk_command_limit`).
pub const JUNK_LIMIT: usize = 100;

struct Session<H> {
    server: Arc<Server<H>>,
    conn: Conn,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<String>,
    tx: Option<Transaction>,
    errors: usize,
    /// Commands that move no mail (see [`JUNK_LIMIT`]) so far.
    junk: usize,
    /// MAIL was given at least once.
    transacted: bool,
    messages: usize,
    /// A balancer's health check (PROXY LOCAL): not made to wait for the greeting.
    probe: bool,
}

impl<H: Handler> Session<H> {
    fn new(
        server: Arc<Server<H>>,
        conn: Conn,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Session {
            server,
            conn,
            peer,
            shutdown,
            helo: None,
            esmtp: false,
            tls: None,
            tx: None,
            errors: 0,
            junk: 0,
            transacted: false,
            messages: 0,
            probe: false,
        }
    }

    fn settings(&self) -> &config::Smtp {
        &self.server.settings
    }

    /// The timeout for a command line and the content allowance, shrunk under stress.
    fn timeouts(&self) -> (Duration, Duration) {
        let s = self.settings();
        if self.server.stressed() {
            (
                s.command_timeout.min(s.stress_timeout),
                s.data_timeout.min(s.stress_timeout),
            )
        } else {
            (s.command_timeout, s.data_timeout)
        }
    }

    fn reply(&mut self, code: u16, text: impl Into<String>) {
        self.send(Reply::new(code, text));
    }

    /// Sends a reply; refusals count toward `max_errors`.
    fn send(&mut self, reply: Reply) {
        self.server
            .metrics
            .reply(&self.server.settings.hostname, reply.code);
        if reply.code >= 400 {
            self.errors += 1;
            debug!(%reply, "error reply");
        }
        reply.write_to(&mut self.conn.out);
    }

    async fn flush(&mut self) -> io::Result<()> {
        let t = self.timeouts().0;
        self.conn.flush(t).await
    }

    async fn run(&mut self) -> io::Result<()> {
        debug!("connected");
        if let Err(reply) = self.server.handler.connect(self.peer.ip()).await {
            info!(%reply, "refused at connect");
            self.send(reply);
            return self.flush().await;
        }
        if !self.probe && !self.greet_pause().await? {
            return self.flush().await;
        }
        let banner = format!("{} ESMTP mailsilo", self.settings().hostname);
        self.reply(220, banner);
        loop {
            if !self.conn.has_line() {
                self.flush().await?;
            }
            // Between BDAT chunks the content's deadline runs on: the next command must come
            // before it ends.
            let limit = match self.tx.as_ref().and_then(|t| t.chunks.as_ref()) {
                Some(c) => self.timeouts().0.min(c.deadline.remaining()),
                None => self.timeouts().0,
            };
            let line = tokio::select! {
                r = self.conn.read_line(MAX_COMMAND_LINE, limit) => Some(r),
                _ = stopped(&mut self.shutdown) => None,
            };
            let Some(line) = line else {
                self.reply(421, "4.3.2 Service shutting down");
                return self.flush().await;
            };
            let step = match line {
                Ok(Line::Full(l)) => self.command(&l).await,
                Ok(Line::TooLong(start)) if command::is_bdat(&start) => {
                    // A BDAT line too long to read: its chunk size is unknown, so the octets
                    // after it cannot be told from commands. Close, as for any bad BDAT.
                    self.reply(500, "5.5.2 Line too long");
                    info!("closed: unusable BDAT command");
                    Ok(Next::Close)
                }
                Ok(Line::TooLong(_)) => {
                    self.reply(500, "5.5.2 Line too long");
                    Ok(Next::Continue)
                }
                Err(e) => Err(e),
            };
            match step {
                Ok(Next::Continue) => {}
                Ok(Next::Close) => return self.flush().await,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    info!("closed: timeout exceeded");
                    self.reply(421, "4.4.2 Timeout exceeded, closing connection");
                    let _ = self.flush().await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            if self.errors >= self.settings().max_errors {
                self.reply(421, "4.7.0 Too many errors, closing connection");
                info!(errors = self.errors, "closed: too many errors");
                return self.flush().await;
            }
        }
    }

    /// Postscreen's greet wait: a client new to this server (or not seen for a day) must
    /// stay silent for `greet_pause` before the greeting; one that talks first is a
    /// spambot that does not wait for replies, and is refused. False: refused.
    async fn greet_pause(&mut self) -> io::Result<bool> {
        let pause = self.settings().greet_pause;
        let ip = self.peer.ip();
        if pause.is_zero() {
            return Ok(true);
        }
        let seen = self
            .server
            .patient
            .lock()
            .expect("patient")
            .get(&ip)
            .copied();
        if seen.is_some_and(|t| t.elapsed() < PATIENT_FOR) {
            return Ok(true);
        }
        match self.conn.fill(pause).await {
            Ok(_) => {
                info!("refused: talked before the greeting");
                self.conn.discard_pending();
                self.send(Reply::new(
                    554,
                    "5.5.1 Protocol error: talked before the greeting",
                ));
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                let mut patient = self.server.patient.lock().expect("patient");
                if patient.len() >= MAX_PATIENT {
                    patient.retain(|_, t| t.elapsed() < PATIENT_FOR);
                    if patient.len() >= MAX_PATIENT {
                        patient.clear();
                    }
                }
                patient.insert(ip, Instant::now());
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// What the handler is told of the client.
    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls.clone(),
        }
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<Next> {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(r) => {
                self.send(r.reply);
                if r.close {
                    info!("closed: unusable BDAT command");
                    return Ok(Next::Close);
                }
                return Ok(Next::Continue);
            }
        };
        match cmd {
            Command::Ehlo(host) => self.hello(host, true),
            Command::Helo(host) => self.hello(host, false),
            Command::Mail(from) => self.mail(from).await,
            Command::Rcpt(to) => self.rcpt(to).await,
            Command::Data => self.data().await?,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.junk();
                self.tx = None;
                self.reply(250, "2.0.0 Ok");
            }
            Command::Noop => {
                self.junk();
                self.reply(250, "2.0.0 Ok");
            }
            Command::Vrfy => {
                self.junk();
                self.reply(
                    252,
                    "2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
                );
            }
            Command::Help => {
                self.junk();
                self.reply(
                    214,
                    "2.0.0 See RFC 5321; mailsilo accepts mail for its client domains",
                );
            }
            Command::Quit => {
                self.reply(221, "2.0.0 Bye");
                return Ok(Next::Close);
            }
            Command::StartTls => self.starttls().await?,
            Command::NotImplemented => self.reply(502, "5.5.1 Command not implemented"),
        }
        Ok(Next::Continue)
    }

    /// Counts a command that moves no mail: past [`JUNK_LIMIT`] of them, each counts as an
    /// error too (Postfix's `smtpd_junk_command_limit`), so a client cannot hold a session
    /// open for ever with them.
    fn junk(&mut self) {
        self.junk += 1;
        if self.junk > JUNK_LIMIT {
            self.errors += 1;
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) {
        // Greeting again (not after STARTTLS, which forgets the first) moves no mail.
        if self.helo.is_some() {
            self.junk();
        }
        self.tx = None;
        self.esmtp = esmtp;
        self.helo = Some(host);
        let hostname = self.settings().hostname.clone();
        if !esmtp {
            self.reply(250, hostname);
            return;
        }
        let mut lines = vec![
            hostname,
            "PIPELINING".into(),
            format!("SIZE {}", self.settings().max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.tls.is_none() && self.server.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        lines.push("CHUNKING".into());
        lines.push("DSN".into());
        self.send(Reply { code: 250, lines });
    }

    async fn mail(&mut self, from: MailFrom) {
        if self.helo.is_none() {
            return self.reply(503, "5.5.1 Send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.reply(503, "5.5.1 Nested MAIL command");
        }
        self.transacted = true;
        if from
            .size
            .is_some_and(|s| s > self.settings().max_message_size as u64)
        {
            return self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
        }
        let sender = from.sender.map(|m| m.raw).unwrap_or_default();
        if !from.smtputf8 && !sender.is_ascii() {
            return self.reply(553, "5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        let client = self.client_info();
        if let Err(reply) = self.server.handler.mail(&client, &sender).await {
            info!(from = %sender, %reply, "sender refused");
            return self.send(reply);
        }
        self.tx = Some(Transaction {
            sender,
            size: from.size,
            recipients: Vec::new(),
            envid: from.envid,
            ret: from.ret,
            smtputf8: from.smtputf8,
            eight_bit: from.body == command::Body::EightBitMime,
            chunks: None,
        });
        self.reply(250, "2.1.0 Ok");
    }

    /// Whether a mailbox is postmaster at the server's own name, which RFC 5321 section
    /// 4.5.1 requires to be accepted like the bare `<postmaster>`.
    fn own_postmaster(&self, m: &command::Mailbox) -> bool {
        m.local.eq_ignore_ascii_case("postmaster")
            && m.domain.eq_ignore_ascii_case(&self.settings().hostname)
    }

    /// Where postmaster mail goes: the configured address (the operator's).
    fn postmaster(&self) -> Result<String, Reply> {
        self.settings().postmaster.clone().ok_or_else(|| {
            // The configuration key is for the operator's log, not for the remote sender.
            warn!("RCPT TO:<postmaster> refused: smtp.postmaster is not set");
            Reply::new(550, "5.1.1 <postmaster>: no postmaster mailbox here")
        })
    }

    async fn rcpt(&mut self, to: RcptTo) {
        let max = self.settings().max_recipients;
        let Some(tx) = &self.tx else {
            return self.reply(503, "5.5.1 Need MAIL command");
        };
        if tx.recipients.len() >= max {
            // Flow control, not an error (RFC 5321 section 4.5.3.1.8): the client sends
            // the rest in another transaction, so it does not count toward max_errors.
            Reply::new(452, "4.5.3 Too many recipients").write_to(&mut self.conn.out);
            return;
        }
        let smtputf8 = tx.smtputf8;
        if !smtputf8 && to.orcpt.as_deref().is_some_and(|o| !o.is_ascii()) {
            // RFC 6533's unitext form goes only where SMTPUTF8 is in effect.
            return self.reply(553, "5.6.7 A UTF-8 ORCPT requires SMTPUTF8");
        }
        let checked = match &to.path {
            ForwardPath::Postmaster => self.postmaster(),
            ForwardPath::Mailbox(m) if self.own_postmaster(m) => self.postmaster(),
            ForwardPath::Mailbox(m) => {
                match address::recipient(m, smtputf8)
                    .and_then(|r| self.server.handler.check_recipient(&r).map(|()| r.raw))
                {
                    Ok(address) => {
                        let client = self.client_info();
                        let sender = tx.sender.clone();
                        self.server
                            .handler
                            .rcpt(&client, &sender, &address)
                            .await
                            .map(|()| address)
                    }
                    Err(reply) => Err(reply),
                }
            }
        };
        let address = match checked {
            Ok(a) => a,
            Err(reply) => {
                let written = match &to.path {
                    ForwardPath::Mailbox(m) => m.raw.as_str(),
                    ForwardPath::Postmaster => "postmaster",
                };
                info!(rcpt = %written, %reply, "recipient refused");
                return self.send(reply);
            }
        };
        let tx = self.tx.as_mut().expect("checked above");
        if !tx
            .recipients
            .iter()
            .any(|x| x.address.eq_ignore_ascii_case(&address))
        {
            tx.recipients.push(Rcpt {
                address,
                notify: to.notify,
                orcpt: to.orcpt,
            });
        }
        self.reply(250, "2.1.5 Ok");
    }

    /// Checks that a transaction may send content; the error is the reply.
    fn ready_for_content(&self) -> Result<(), Reply> {
        match &self.tx {
            None => Err(Reply::new(503, "5.5.1 Need MAIL command")),
            Some(tx) if tx.recipients.is_empty() => {
                Err(Reply::new(554, "5.5.1 No valid recipients"))
            }
            Some(_) if self.server.memory.exhausted(self.peer.ip()) => Err(Reply::new(
                452,
                "4.3.1 Insufficient system resources, try again later",
            )),
            Some(_) => Ok(()),
        }
    }

    /// A decoder for the transaction's content, starting with the Received: header, and
    /// the queue id it names.
    fn start_content(&self, dots: bool) -> (String, Decoder) {
        let tx = self.tx.as_ref().expect("ready_for_content checked");
        let id = self.server.handler.queue_id();
        let received = self.received_header(&id, tx);
        let start = Start {
            mode: self.settings().bare_newlines,
            max_size: self.settings().max_message_size,
            prefix: received.into_bytes(),
            expected: tx.size,
            charge: self.server.memory.charge(self.peer.ip()),
        };
        let decoder = if dots {
            Decoder::data(start)
        } else {
            Decoder::bdat(start)
        };
        (id, decoder)
    }

    async fn data(&mut self) -> io::Result<()> {
        if let Err(r) = self.ready_for_content() {
            self.send(r);
            return Ok(());
        }
        if self.tx.as_ref().is_some_and(|t| t.chunks.is_some()) {
            self.reply(503, "5.5.1 DATA after BDAT");
            return Ok(());
        }
        self.reply(354, "End data with <CR><LF>.<CR><LF>");
        self.flush().await?;
        let (id, mut decoder) = self.start_content(true);
        let mut deadline = ContentDeadline::new(self.timeouts().1, self.settings().min_data_rate);
        loop {
            let used = decoder.feed(self.conn.pending());
            match used {
                Some(n) => {
                    self.conn.consume(n);
                    break;
                }
                None => {
                    let n = self.conn.pending().len();
                    self.conn.consume(n);
                    self.read_content(&mut deadline).await?;
                }
            }
        }
        self.finish(id, decoder.into_message()).await;
        Ok(())
    }

    /// One read of message content under its deadline.
    async fn read_content(&mut self, deadline: &mut ContentDeadline) -> io::Result<usize> {
        if deadline.left.is_zero() {
            return Err(timed_out());
        }
        let started = Instant::now();
        let n = self.conn.fill(deadline.left).await?;
        deadline.read(started.elapsed(), n);
        Ok(n)
    }

    async fn bdat(&mut self, size: u64, last: bool) -> io::Result<Next> {
        if size > self.settings().max_message_size as u64 {
            // The declared octets are beyond anything we would read: they can be neither
            // trusted nor skipped safely, so the session ends here.
            self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
            info!(size, "closed: BDAT chunk over the size limit");
            return Ok(Next::Close);
        }
        let size = size as usize;
        let ready = self.ready_for_content();
        let mut content = match (&ready, self.tx.as_mut()) {
            (Ok(()), Some(tx)) => match tx.chunks.take() {
                Some(mut c) => {
                    c.deadline.catch_up();
                    Some(c)
                }
                None => {
                    let (id, decoder) = self.start_content(false);
                    let deadline =
                        ContentDeadline::new(self.timeouts().1, self.settings().min_data_rate);
                    Some(Chunks {
                        id,
                        decoder,
                        deadline,
                    })
                }
            },
            _ => None,
        };
        // The chunk's bytes are consumed whatever happens: they are never commands.
        let mut discard = ContentDeadline::new(self.timeouts().1, self.settings().min_data_rate);
        let mut left = size;
        while left > 0 {
            if self.conn.pending().is_empty() {
                let deadline = content.as_mut().map_or(&mut discard, |c| &mut c.deadline);
                self.read_content(deadline).await?;
            }
            let n = left.min(self.conn.pending().len());
            if let Some(c) = content.as_mut() {
                c.decoder.feed(&self.conn.pending()[..n]);
            }
            self.conn.consume(n);
            left -= n;
        }
        let Some(chunks) = content else {
            let reply = ready
                .err()
                .unwrap_or_else(|| Reply::new(503, "5.5.1 Need MAIL command"));
            // RFC 3030: after a refused chunk the transaction is over.
            self.tx = None;
            self.send(reply);
            return Ok(Next::Continue);
        };
        if last {
            self.finish(chunks.id, chunks.decoder.finish()).await;
        } else {
            if let Some(tx) = self.tx.as_mut() {
                tx.chunks = Some(chunks);
            }
            self.reply(250, format!("2.0.0 {size} octets received"));
        }
        Ok(Next::Continue)
    }

    /// Ends a transaction: refuses bad content, or hands the message over and answers 250.
    async fn finish(
        &mut self,
        id: String,
        content: Result<(Vec<u8>, crate::data::Charge), Problem>,
    ) {
        let Some(tx) = self.tx.take() else { return };
        let (mut message, charge) = match content {
            Ok(m) => m,
            Err(p) => {
                let reply = match p {
                    Problem::TooBig => {
                        Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
                    }
                    Problem::NoMemory => {
                        Reply::new(452, "4.3.1 Insufficient system resources, try again later")
                    }
                    Problem::BareNewline => Reply::new(
                        554,
                        "5.6.0 Bare CR or LF in message content refused (RFC 5321 section 2.3.8)",
                    ),
                    Problem::Nul => Reply::new(554, "5.6.0 NUL octet in message content refused"),
                    Problem::LineTooLong => {
                        Reply::new(554, "5.6.0 Message has a line longer than 998 characters")
                    }
                };
                info!(%reply, "message refused");
                return self.send(reply);
            }
        };
        let hops = received_headers(&message);
        if hops > MAX_HOPS {
            let reply = Reply::new(
                554,
                format!("5.4.6 Too many hops ({hops} Received: headers): a mail loop?"),
            );
            info!(%reply, "message refused");
            return self.send(reply);
        }
        let end_of_data = Instant::now();
        let client = ClientInfo {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls.clone(),
        };
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            envid: tx.envid,
            ret: tx.ret,
            smtputf8: tx.smtputf8,
            eight_bit: tx.eight_bit,
        };
        let size = message.len();
        // Room for the header fields the handler adds (a filter's results), so that it can
        // add them in place rather than copy the whole message. A large buffer grows in
        // place (mremap); a small one's copy costs nothing.
        message.reserve(HANDLER_HEADROOM);
        let from = envelope.sender.clone();
        let rcpts = envelope.recipients.len();
        let accepted = Accepted {
            id: id.clone(),
            server: self.settings().hostname.clone(),
            client,
            envelope,
            body: Bytes::from(message),
        };
        let result = self.server.handler.accept(accepted).await;
        // The message has left this session (stored, or refused): its memory is free.
        drop(charge);
        let taken = result.as_ref().ok().map(|_| size);
        self.server.metrics.message(
            &self.server.settings.hostname,
            taken,
            end_of_data.elapsed().as_secs_f64(),
        );
        match result {
            Ok(verb) => {
                self.messages += 1;
                // From the end of the content to the durable commit; the 250 follows.
                let commit_us = end_of_data.elapsed().as_micros() as u64;
                tracing::event!(Level::INFO, queue_id = %id, from = %from, rcpts, size, commit_us, "{verb}");
                self.reply(250, format!("2.0.0 Ok: queued as {id}"));
            }
            Err(reply) => {
                warn!(queue_id = %id, %reply, "not queued");
                self.send(reply);
            }
        }
    }

    fn received_header(&self, id: &str, tx: &Transaction) -> String {
        let ip = self.peer.ip();
        let proto = match (self.esmtp, self.tls.is_some(), tx.smtputf8) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, false, true) => "UTF8SMTP",
            (true, true, false) => "ESMTPS",
            (true, true, true) => "UTF8SMTPS",
        };
        let helo = self.helo.as_deref().unwrap_or_default();
        // The client's name only when it is one (a host name or an address literal);
        // anything else goes into a comment, escaped, so the header stays well formed
        // whatever the client sent.
        let from = if is_helo_name(helo) {
            format!("{helo} ([{ip}])")
        } else {
            format!("unknown ([{ip}] helo={})", comment_text(helo, tx.smtputf8))
        };
        let mut h = format!(
            "Received: from {from}\r\n\tby {} (mailsilo)",
            self.settings().hostname
        );
        if let Some(t) = &self.tls {
            h.push_str(&format!("\r\n\t(using {t})"));
        }
        h.push_str(&format!("\r\n\twith {proto} id {id}"));
        if let [only] = tx.recipients.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", only.address));
        }
        h.push_str(&format!("; {}\r\n", date::rfc5322(date::now())));
        h
    }

    async fn starttls(&mut self) -> io::Result<()> {
        let Some(acceptor) = self.server.tls.clone() else {
            self.reply(454, "4.7.0 TLS not available");
            return Ok(());
        };
        if self.tls.is_some() {
            self.reply(503, "5.5.1 Already in TLS");
            return Ok(());
        }
        // STARTTLS is an extension EHLO offers (RFC 3207, 4), and it starts the session
        // over: a client that has not said EHLO, or is inside a transaction, is refused
        // rather than losing its envelope silently.
        if !self.esmtp {
            self.reply(503, "5.5.1 Send EHLO first");
            return Ok(());
        }
        if self.tx.is_some() {
            self.reply(503, "5.5.1 STARTTLS not allowed inside a mail transaction");
            return Ok(());
        }
        // Anything the client pipelined after STARTTLS came in plaintext: it must not count
        // as sent inside TLS (CVE-2011-0411), so it is thrown away.
        let injected = self.conn.discard_pending();
        if injected > 0 {
            warn!(
                bytes = injected,
                "discarded plaintext pipelined after STARTTLS"
            );
        }
        self.reply(220, "2.0.0 Ready to start TLS");
        self.flush().await?;
        let conn = std::mem::replace(&mut self.conn, Conn::new(Box::new(tokio::io::duplex(1).0)));
        let handshake = acceptor.accept(conn.into_stream());
        let stream = tokio::time::timeout(self.timeouts().0, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let described = tls::describe(stream.get_ref().1);
        debug!(tls = %described, "TLS established");
        self.tls = Some(described);
        self.server.metrics.tls(&self.server.settings.hostname);
        self.conn = Conn::new(Box::new(stream));
        // RFC 3207: the session starts over; the client must EHLO again.
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        Ok(())
    }
}

/// Whether an EHLO/HELO argument is a host name or an address literal.
fn is_helo_name(h: &str) -> bool {
    if let Some(lit) = h.strip_prefix('[') {
        return lit.strip_suffix(']').is_some_and(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-".contains(&b))
        });
    }
    !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Text for a header comment: parentheses and backslashes escaped, non-ASCII kept only in
/// an SMTPUTF8 message.
fn comment_text(s: &str, utf8: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars().take(255) {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c if !c.is_ascii() && !utf8 => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accepts recipients at example.com and keeps what it is handed.
    /// Two nodes making ids in the same microsecond still differ (by their node number);
    /// one node's ids never repeat and sort by time.
    #[test]
    fn queue_ids_differ_across_nodes_and_sort() {
        let (a, b) = (QueueIds::new(1), QueueIds::new(2));
        let ids: Vec<String> = (0..1000).flat_map(|_| [a.next(), b.next()]).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.iter().all(|id| id.len() == 21));
        let of_a: Vec<&String> = ids.iter().step_by(2).collect();
        assert!(
            of_a.windows(2).all(|w| w[0] < w[1]),
            "ids of one node sort by time"
        );
    }

    #[derive(Default)]
    struct Keep(Mutex<Vec<Accepted>>);

    #[async_trait]
    impl Handler for Keep {
        fn check_recipient(&self, r: &Recipient) -> Result<(), Reply> {
            if r.domain == "example.com" {
                Ok(())
            } else {
                Err(Reply::new(550, "5.7.1 Relay access denied"))
            }
        }
        async fn accept(&self, m: Accepted) -> Result<&'static str, Reply> {
            self.0.lock().unwrap().push(m);
            Ok("queued")
        }
    }

    fn settings(extra: &str) -> config::Smtp {
        let text = config::DEMO.replacen("[smtp]\n", &format!("[smtp]\n{extra}\n"), 1);
        let mut s = config::Config::parse("t.toml", &text).unwrap().smtp;
        s.max_message_size = 4096;
        s
    }

    /// Runs one session fed `input` (then EOF); returns the replies and what was accepted.
    async fn session(settings: config::Smtp, input: Vec<u8>) -> (String, Vec<Accepted>) {
        let keep = Arc::new(Keep::default());
        let server = Arc::new(Server::new(settings, None, keep.clone()));
        let (client, server_side) = tokio::io::duplex(1 << 16);
        let (_stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server.session(
            Box::new(server_side),
            "192.0.2.9:1234".parse().unwrap(),
            stopped,
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        });
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        let _ = task.await;
        let _ = writer.await;
        let accepted = std::mem::take(&mut *keep.0.lock().unwrap());
        (String::from_utf8_lossy(&out).into_owned(), accepted)
    }

    fn codes(replies: &str) -> Vec<u16> {
        replies
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }

    fn run(settings: config::Smtp, input: &[u8]) -> (String, Vec<Accepted>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(session(settings, input.to_vec()))
    }

    const START: &[u8] =
        b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.com>\r\n";

    #[test]
    fn bdat_oversize_or_garbled_closes_without_running_the_rest() {
        for size in [
            "1000000000000000000007",
            "99999999999999999999",
            "4097",
            "7x",
            "-1",
        ] {
            let mut input = START.to_vec();
            input.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
            input.extend_from_slice(b"1234567MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nx\r\n.\r\n");
            let (out, accepted) = run(settings(""), &input);
            let c = codes(&out);
            assert!(c.last().is_some_and(|&c| c >= 500), "{size}: {out}");
            assert_eq!(
                c.len(),
                5,
                "{size}: nothing after the BDAT was answered: {out}"
            );
            assert!(accepted.is_empty(), "{size}: {out}");
        }
    }

    proptest! {
        /// Whatever the size argument, the session either takes exactly that many octets
        /// as content (and reads the next command after them), or refuses and closes.
        #[test]
        fn bdat_takes_exactly_the_declared_octets_or_closes(size in prop_oneof!["[0-9]{1,4}", "[0-9 +x-]{0,24}", "[0-9]{19,22}"]) {
            let digits = size.trim_start_matches(' ');
            let valid = !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u64>().is_ok_and(|n| n <= 4096);
            let n = if valid { digits.parse::<usize>().unwrap() } else { 7 };
            // n octets of short CRLF lines (a cut CR becomes a P, so no bare CR is left).
            let mut payload: Vec<u8> = b"PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP\r\n".iter().copied().cycle().take(n).collect();
            if payload.last() == Some(&b'\r') {
                *payload.last_mut().unwrap() = b'P';
            }
            let mut input = START.to_vec();
            input.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
            input.extend_from_slice(&payload);
            input.extend_from_slice(b"NOOP\r\n");
            let (out, accepted) = run(settings(""), &input);
            let c = codes(&out);
            if valid {
                // BDAT and then NOOP answered 250: the NOOP was read right after the chunk.
                prop_assert_eq!(&c[4..], &[250, 250][..], "{}", out);
                prop_assert_eq!(accepted.len(), 1);
                let body = &accepted[0].body;
                let content = &body[find_end_of_received(body)..];
                let mut expect = payload.clone();
                if n > 0 && !expect.ends_with(b"\r\n") {
                    expect.extend_from_slice(b"\r\n");
                }
                prop_assert_eq!(content, &expect[..]);
            } else {
                prop_assert_eq!(c.len(), 5, "{}", out);
                prop_assert!(c[4] >= 500);
                prop_assert!(accepted.is_empty());
            }
        }
    }

    /// Where the Received: header (the first field, folded) ends.
    fn find_end_of_received(body: &[u8]) -> usize {
        let text = String::from_utf8_lossy(body);
        let mut at = 0;
        for line in text.split_inclusive("\r\n") {
            if at > 0 && !line.starts_with('\t') {
                break;
            }
            at += line.len();
        }
        at
    }

    #[test]
    fn too_many_recipients_is_flow_control_not_an_error() {
        let mut input = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
        for i in 0..130 {
            input.extend_from_slice(format!("RCPT TO:<u{i}@example.com>\r\n").as_bytes());
        }
        input.extend_from_slice(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
        let mut s = settings("");
        (s.max_recipients, s.max_errors) = (100, 5);
        let (out, accepted) = run(s, &input);
        let c = codes(&out);
        assert_eq!(c.iter().filter(|&&c| c == 452).count(), 30, "{out}");
        assert!(
            !out.contains("421"),
            "30 times 452 did not end the session: {out}"
        );
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].envelope.recipients.len(), 100);
    }

    #[test]
    fn junk_commands_past_the_limit_count_as_errors() {
        let mut input = b"EHLO c.example\r\n".to_vec();
        for _ in 0..200 {
            input.extend_from_slice(b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n");
            // A transaction begun and dropped by greeting again counts too.
            input.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.com>\r\n");
            input.extend_from_slice(b"EHLO c.example\r\n");
        }
        let mut s = settings("");
        s.max_errors = 5;
        let (out, _) = run(s, &input);
        let c = codes(&out);
        // Each round: 4 junk commands, MAIL and RCPT, and EHLO (junk): 7 replies, 5 junk.
        // 100 junk commands are free (20 rounds); the 21st round's 5 count as errors, so
        // the 421 comes after the greeting, EHLO and 21 rounds.
        assert_eq!(c.len(), 2 + 21 * 7 + 1, "{out}");
        assert_eq!(c.last(), Some(&421), "{out}");
        assert!(out.contains("Too many errors"), "{out}");
    }

    #[test]
    fn postmaster_goes_to_the_configured_address() {
        let input = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<postmaster@mx.mailsilo.test>\r\nDATA\r\nhi\r\n.\r\n";
        let (out, accepted) = run(settings(""), input);
        assert_eq!(codes(&out), [220, 250, 250, 250, 250, 354, 250], "{out}");
        let rcpts: Vec<&str> = accepted[0]
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(
            rcpts,
            ["postmaster@example.com"],
            "both name the demo's postmaster, once"
        );
        let mut s = settings("");
        s.postmaster = None;
        let (out, _) = run(s, b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n");
        assert!(
            out.contains("550 5.1.1 <postmaster>: no postmaster mailbox here"),
            "{out}"
        );
    }

    #[test]
    fn received_stays_well_formed_whatever_the_helo() {
        let input = b"EHLO evil (x); y\\\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.com>\r\nDATA\r\nhi\r\n.\r\n";
        let (out, accepted) = run(settings(""), input);
        assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250], "{out}");
        let text = String::from_utf8_lossy(&accepted[0].body).into_owned();
        assert!(
            text.starts_with(
                "Received: from unknown ([192.0.2.9] helo=evil \\(x\\); y\\\\)\r\n\tby "
            ),
            "{text}"
        );
        let (out, _) = run(settings(""), b"EHLO a\x00b\r\nEHLO a\x01b\r\nEHLO \xff\r\n");
        assert_eq!(codes(&out), [220, 501, 501, 501], "{out}");
    }

    #[test]
    fn addresses_and_dsn_parameters_are_kept_as_received() {
        let input = b"EHLO c.example\r\nMAIL FROM:<\"s q\"@b.example> ENVID=E+2B1\r\nRCPT TO:<\"a b\"@Example.COM> NOTIFY=SUCCESS ORCPT=rfc822;a+20b@example.com\r\nRCPT TO:<\"a\\\"b\"@example.com>\r\nRCPT TO:<\"alice\"@example.com> ORCPT=utf-8;alice@example.com\r\nDATA\r\nhi\r\n.\r\n";
        let (out, accepted) = run(settings(""), input);
        assert_eq!(
            codes(&out),
            [220, 250, 250, 250, 250, 250, 354, 250],
            "{out}"
        );
        let env = &accepted[0].envelope;
        assert_eq!(env.sender, "\"s q\"@b.example");
        assert_eq!((env.envid.as_deref(), env.ret), (Some("E+2B1"), None));
        let r: Vec<(&str, Option<&str>)> = env
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.orcpt.as_deref()))
            .collect();
        assert_eq!(
            r,
            [
                ("\"a b\"@Example.COM", Some("rfc822;a+20b@example.com")),
                ("\"a\\\"b\"@example.com", None),
                ("\"alice\"@example.com", Some("utf-8;alice@example.com")),
            ]
        );
    }

    #[test]
    fn invalid_utf8_addresses_are_refused() {
        let input = b"EHLO c\r\nMAIL FROM:<\xff\xfe@outside.net> SMTPUTF8\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<\xff@example.com>\r\n";
        let (out, _) = run(settings(""), input);
        assert_eq!(codes(&out), [220, 250, 553, 250, 553], "{out}");
    }

    #[test]
    fn helo_names_and_comments() {
        assert!(is_helo_name("mail.example.net"));
        assert!(is_helo_name("[192.0.2.1]"));
        assert!(is_helo_name("[IPv6:2001:db8::1]"));
        assert!(!is_helo_name("hello world"));
        assert!(!is_helo_name("evil;(x)"));
        assert_eq!(comment_text("a (b) \\ c", false), "a \\(b\\) \\\\ c");
        assert_eq!(comment_text("grüß", false), "gr??");
        assert_eq!(comment_text("grüß", true), "grüß");
    }

    #[test]
    fn content_deadline_follows_the_data_rate() {
        let mut d = ContentDeadline::new(Duration::from_secs(10), 500);
        // 1 s spent for 100 octets: 0.2 s earned.
        d.read(Duration::from_secs(1), 100);
        assert_eq!(d.left, Duration::from_millis(9200));
        // Fast reads never push it past the allowance.
        d.read(Duration::ZERO, 1 << 20);
        assert_eq!(d.left, Duration::from_secs(10));
        // A drip of one octet every 5 s: the third wait outlasts what is left, and the read
        // times out.
        let mut drip = ContentDeadline::new(Duration::from_secs(10), 500);
        let mut reads = 0;
        while drip.left >= Duration::from_secs(5) {
            drip.read(Duration::from_secs(5), 1);
            reads += 1;
        }
        assert_eq!(reads, 2);
        assert!(drip.left < Duration::from_millis(10), "{:?}", drip.left);
    }
}
