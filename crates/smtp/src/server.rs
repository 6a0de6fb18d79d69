//! The SMTP server: the listener with its session limits, and the per-session state machine
//! (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS,
//! CHUNKING and DSN).
//!
//! A session owns no policy beyond the protocol: which recipients are acceptable and what
//! happens to an accepted message is asked of its [`Handler`], which must answer only once
//! the message is durable, since the 250 follows straight after.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smtp_proto::{
    RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, Request,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::address::{self, Recipient};
use crate::conn::{Conn, Line, Stream};
use crate::data::{Decoder, Problem};
use crate::proxy::{self, Proxied};
use crate::{Reply, date, tls};

/// The longest command line, CRLF included.
pub const MAX_COMMAND_LINE: usize = 1000;

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
    pub address: String,
    /// [`notify`] flags; zero when NOTIFY was not given.
    pub notify: u8,
    pub orcpt: Option<String>,
}

/// The envelope of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Empty for the null reverse-path.
    pub sender: String,
    pub recipients: Vec<Rcpt>,
    pub envid: Option<String>,
    pub ret_headers_only: bool,
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
    pub client: ClientInfo,
    pub envelope: Envelope,
    /// The message with the server's Received: header first; CRLF line ends.
    pub body: Vec<u8>,
}

/// The policy and storage behind a server.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether mail for this recipient is accepted (refusal is the reply to send).
    fn check_recipient(&self, recipient: &Recipient) -> Result<(), Reply>;
    /// Takes responsibility for a message. Returns only once the message is on stable
    /// storage: the server answers 250 straight after.
    async fn accept(&self, message: Accepted) -> Result<(), Reply>;
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A new queue id: microseconds since the epoch and a per-process counter, in hex.
pub fn new_queue_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("{micros:013X}{n:04X}")
}

/// A running server's fixed settings.
pub struct Server<H> {
    pub settings: config::Smtp,
    pub tls: Option<TlsAcceptor>,
    pub handler: Arc<H>,
    pub proxy: Option<ProxyPolicy>,
}

/// Releases a client's per-address session slot when its session ends.
struct PerClient {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PerClient {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("per-client map");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
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
    pub fn new(
        settings: config::Smtp,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Arc<H>,
    ) -> Arc<Self> {
        Arc::new(Server {
            settings,
            tls: tls.map(TlsAcceptor::from),
            handler,
            proxy: None,
        })
    }

    /// The same server requiring a PROXY v2 header from the given balancer addresses.
    pub fn with_proxy(
        settings: config::Smtp,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Arc<H>,
        proxy: ProxyPolicy,
    ) -> Arc<Self> {
        Arc::new(Server {
            settings,
            tls: tls.map(TlsAcceptor::from),
            handler,
            proxy: Some(proxy),
        })
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
        let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            if let Some(p) = &self.proxy
                && !p.from.contains(&peer.ip())
            {
                info!(%peer, "refused: not a balancer, on a PROXY listener");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let Ok(permit) = sessions.clone().try_acquire_owned() else {
                info!(%peer, "refused: too many sessions");
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
                // Behind a balancer the client is who the PROXY header says.
                let client = match &server.proxy {
                    None => peer,
                    Some(p) => match proxy::read(&mut stream, p.timeout).await {
                        Ok(Proxied::Client(c)) => c,
                        Ok(Proxied::Local) => peer,
                        Err(e) => {
                            info!(%peer, error = %e, "closed: bad PROXY header");
                            return;
                        }
                    },
                };
                let slot = {
                    let mut map = per_client.lock().expect("per-client map");
                    let n = map.entry(client.ip()).or_insert(0);
                    if *n >= server.settings.max_sessions_per_client {
                        None
                    } else {
                        *n += 1;
                        Some(PerClient {
                            map: per_client.clone(),
                            ip: client.ip(),
                        })
                    }
                };
                let Some(_slot) = slot else {
                    info!(%client, "refused: too many sessions from this client");
                    refuse(
                        stream,
                        "421 4.7.0 Too many connections from your address\r\n",
                    )
                    .await;
                    return;
                };
                server.session(Box::new(stream), client, shutdown).await;
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
        let span = info_span!("session", %peer);
        async move {
            match Session::new(self, Conn::new(stream), peer, shutdown)
                .run()
                .await
            {
                Ok(()) => debug!("closed"),
                Err(e) => info!(error = %e, "session ended"),
            }
        }
        .instrument(span)
        .await
    }
}

async fn refuse(mut stream: TcpStream, reply: &'static str) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
}

/// The transaction under way.
struct Transaction {
    sender: String,
    recipients: Vec<Rcpt>,
    envid: Option<String>,
    ret_headers_only: bool,
    smtputf8: bool,
    eight_bit: bool,
    /// BDAT content received so far, if BDAT started.
    chunks: Option<Decoder>,
}

enum Next {
    Continue,
    Close,
}

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
        }
    }

    fn settings(&self) -> &config::Smtp {
        &self.server.settings
    }

    fn reply(&mut self, code: u16, text: impl Into<String>) {
        self.send(Reply::new(code, text));
    }

    fn send(&mut self, reply: Reply) {
        if reply.code >= 400 {
            self.errors += 1;
            debug!(%reply, "error reply");
        }
        reply.write_to(&mut self.conn.out);
    }

    async fn flush(&mut self) -> io::Result<()> {
        let t = self.settings().command_timeout;
        self.conn.flush(t).await
    }

    async fn run(mut self) -> io::Result<()> {
        info!("connected");
        let banner = format!("{} ESMTP mailsilo", self.settings().hostname);
        self.reply(220, banner);
        loop {
            if !self.conn.has_line() {
                self.flush().await?;
            }
            let limit = self.settings().command_timeout;
            let line = tokio::select! {
                r = self.conn.read_line(MAX_COMMAND_LINE, limit) => Some(r),
                _ = stopped(&mut self.shutdown) => None,
            };
            let Some(line) = line else {
                self.reply(421, "4.3.2 Service shutting down");
                return self.flush().await;
            };
            let line = match line {
                Ok(Line::Full(l)) => l,
                Ok(Line::TooLong) => {
                    self.reply(500, "5.5.2 Line too long");
                    Vec::new()
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    self.reply(421, "4.4.2 Timeout exceeded, closing connection");
                    self.flush().await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if !line.is_empty()
                && let Next::Close = self.command(&line).await?
            {
                return self.flush().await;
            }
            if self.errors >= self.settings().max_errors {
                self.reply(421, "4.7.0 Too many errors, closing connection");
                info!(errors = self.errors, "closed: too many errors");
                return self.flush().await;
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<Next> {
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(e) => {
                use smtp_proto::Error as E;
                let r = match e {
                    E::UnknownCommand => Reply::new(500, "5.5.1 Unrecognized command"),
                    E::InvalidSenderAddress => Reply::new(501, "5.1.7 Bad sender address syntax"),
                    E::InvalidRecipientAddress => {
                        Reply::new(501, "5.1.3 Bad recipient address syntax")
                    }
                    E::SyntaxError { syntax } => Reply::new(501, format!("5.5.4 Syntax: {syntax}")),
                    E::InvalidParameter { param } => {
                        Reply::new(501, format!("5.5.4 Invalid parameter {param}"))
                    }
                    E::UnsupportedParameter { param } => {
                        Reply::new(555, format!("5.5.4 Unsupported parameter {param}"))
                    }
                    _ => Reply::new(500, "5.5.2 Syntax error"),
                };
                self.send(r);
                return Ok(Next::Continue);
            }
        };
        match req {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.tx = None;
                self.reply(250, "2.0.0 Ok");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0 Ok"),
            Request::Vrfy { .. } => self.reply(
                252,
                "2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Request::Help { .. } => self.reply(
                214,
                "2.0.0 See RFC 5321; mailsilo accepts mail for its client domains",
            ),
            Request::Quit => {
                self.reply(221, "2.0.0 Bye");
                return Ok(Next::Close);
            }
            Request::StartTls => return self.starttls().await,
            _ => self.reply(502, "5.5.1 Command not implemented"),
        }
        Ok(Next::Continue)
    }

    fn hello(&mut self, host: String, esmtp: bool) {
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

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.helo.is_none() {
            return self.reply(503, "5.5.1 Send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.reply(503, "5.5.1 Nested MAIL command");
        }
        if from.size > self.settings().max_message_size {
            return self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return self.reply(555, "5.5.4 BODY=BINARYMIME is not supported");
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self.reply(553, "5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        self.tx = Some(Transaction {
            sender: from.address,
            recipients: Vec::new(),
            envid: from.env_id,
            ret_headers_only: from.flags & smtp_proto::MAIL_RET_HDRS != 0,
            smtputf8,
            eight_bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            chunks: None,
        });
        self.reply(250, "2.1.0 Ok");
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) {
        let max = self.settings().max_recipients;
        let Some(tx) = &self.tx else {
            return self.reply(503, "5.5.1 Need MAIL command");
        };
        if tx.recipients.len() >= max {
            return self.reply(452, "4.5.3 Too many recipients");
        }
        let checked = address::recipient(&to.address, tx.smtputf8)
            .and_then(|r| self.server.handler.check_recipient(&r).map(|()| r));
        let r = match checked {
            Ok(r) => r,
            Err(reply) => {
                info!(rcpt = %to.address, %reply, "recipient refused");
                return self.send(reply);
            }
        };
        let address = format!("{}@{}", r.local, r.domain);
        let tx = self.tx.as_mut().expect("checked above");
        if !tx
            .recipients
            .iter()
            .any(|x| x.address.eq_ignore_ascii_case(&address))
        {
            let mut notify = 0;
            for (flag, bit) in [
                (RCPT_NOTIFY_SUCCESS, notify::SUCCESS),
                (RCPT_NOTIFY_FAILURE, notify::FAILURE),
                (RCPT_NOTIFY_DELAY, notify::DELAY),
                (RCPT_NOTIFY_NEVER, notify::NEVER),
            ] {
                if to.flags & flag != 0 {
                    notify |= bit;
                }
            }
            tx.recipients.push(Rcpt {
                address,
                notify,
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
            Some(_) => Ok(()),
        }
    }

    async fn data(&mut self) -> io::Result<Next> {
        if let Err(r) = self.ready_for_content() {
            self.send(r);
            return Ok(Next::Continue);
        }
        if self.tx.as_ref().is_some_and(|t| t.chunks.is_some()) {
            self.reply(503, "5.5.1 DATA after BDAT");
            return Ok(Next::Continue);
        }
        self.reply(354, "End data with <CR><LF>.<CR><LF>");
        self.flush().await?;
        let mut decoder = Decoder::data(
            self.settings().bare_newlines,
            self.settings().max_message_size,
        );
        let limit = self.settings().data_timeout;
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
                    self.conn.fill(limit).await?;
                }
            }
        }
        self.finish(decoder.into_message()).await;
        Ok(Next::Continue)
    }

    async fn bdat(&mut self, size: usize, last: bool) -> io::Result<Next> {
        let ready = self.ready_for_content();
        let (mode, max) = (
            self.settings().bare_newlines,
            self.settings().max_message_size,
        );
        let mut decoder = match (&ready, self.tx.as_mut()) {
            (Ok(()), Some(tx)) => {
                Some(tx.chunks.take().unwrap_or_else(|| Decoder::bdat(mode, max)))
            }
            _ => None,
        };
        // The chunk's bytes are consumed whatever happens: they are never commands.
        let limit = self.settings().data_timeout;
        let mut left = size;
        while left > 0 {
            if self.conn.pending().is_empty() {
                self.conn.fill(limit).await?;
            }
            let n = left.min(self.conn.pending().len());
            if let Some(d) = decoder.as_mut() {
                d.feed(&self.conn.pending()[..n]);
            }
            self.conn.consume(n);
            left -= n;
        }
        let Some(d) = decoder else {
            let reply = ready
                .err()
                .unwrap_or_else(|| Reply::new(503, "5.5.1 Need MAIL command"));
            self.tx = None;
            self.send(reply);
            return Ok(Next::Continue);
        };
        if last {
            self.finish(d.finish()).await;
        } else {
            if let Some(tx) = self.tx.as_mut() {
                tx.chunks = Some(d);
            }
            self.reply(250, format!("2.0.0 {size} octets received"));
        }
        Ok(Next::Continue)
    }

    /// Ends a transaction: refuses bad content, or hands the message over and answers 250.
    async fn finish(&mut self, content: Result<Vec<u8>, Problem>) {
        let Some(tx) = self.tx.take() else { return };
        let body = match content {
            Ok(b) => b,
            Err(p) => {
                let reply = match p {
                    Problem::TooBig => {
                        Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
                    }
                    Problem::BareNewline => Reply::new(
                        554,
                        "5.6.0 Bare CR or LF in message content refused (RFC 5321 section 2.3.8)",
                    ),
                    Problem::LineTooLong => {
                        Reply::new(554, "5.6.0 Message has a line longer than 998 characters")
                    }
                };
                info!(%reply, "message refused");
                return self.send(reply);
            }
        };
        let end_of_data = std::time::Instant::now();
        let id = new_queue_id();
        let client = ClientInfo {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls.clone(),
        };
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            envid: tx.envid,
            ret_headers_only: tx.ret_headers_only,
            smtputf8: tx.smtputf8,
            eight_bit: tx.eight_bit,
        };
        let received = self.received_header(&id, &client, &envelope);
        let mut message = Vec::with_capacity(received.len() + body.len());
        message.extend_from_slice(received.as_bytes());
        message.extend_from_slice(&body);
        let size = message.len();
        let from = envelope.sender.clone();
        let rcpts = envelope.recipients.len();
        let accepted = Accepted {
            id: id.clone(),
            client,
            envelope,
            body: message,
        };
        match self.server.handler.accept(accepted).await {
            Ok(()) => {
                // From the end of the content to the durable commit; the 250 follows.
                let commit_us = end_of_data.elapsed().as_micros() as u64;
                info!(queue_id = %id, from = %from, rcpts, size, commit_us, "queued");
                self.reply(250, format!("2.0.0 Ok: queued as {id}"));
            }
            Err(reply) => {
                warn!(queue_id = %id, %reply, "not queued");
                self.send(reply);
            }
        }
    }

    fn received_header(&self, id: &str, client: &ClientInfo, env: &Envelope) -> String {
        let ip = client.peer.ip();
        let proto = match (self.esmtp, client.tls.is_some()) {
            (false, _) => "SMTP",
            (true, false) => {
                if env.smtputf8 {
                    "UTF8SMTP"
                } else {
                    "ESMTP"
                }
            }
            (true, true) => {
                if env.smtputf8 {
                    "UTF8SMTPS"
                } else {
                    "ESMTPS"
                }
            }
        };
        let helo: String = client
            .helo
            .chars()
            .filter(|c| !c.is_control())
            .take(255)
            .collect();
        let mut h = format!(
            "Received: from {helo} ([{ip}])\r\n\tby {} (mailsilo)",
            self.settings().hostname
        );
        if let Some(t) = &client.tls {
            h.push_str(&format!("\r\n\t(using {t})"));
        }
        h.push_str(&format!("\r\n\twith {proto} id {id}"));
        if let [only] = env.recipients.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", only.address));
        }
        h.push_str(&format!("; {}\r\n", date::rfc5322(date::now())));
        h
    }

    async fn starttls(&mut self) -> io::Result<Next> {
        let Some(acceptor) = self.server.tls.clone() else {
            self.reply(454, "4.7.0 TLS not available");
            return Ok(Next::Continue);
        };
        if self.tls.is_some() {
            self.reply(503, "5.5.1 Already in TLS");
            return Ok(Next::Continue);
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
        let stream = tokio::time::timeout(self.settings().command_timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let described = tls::describe(stream.get_ref().1);
        info!(tls = %described, "TLS established");
        self.tls = Some(described);
        self.conn = Conn::new(Box::new(stream));
        // RFC 3207: the session starts over; the client must EHLO again.
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        Ok(Next::Continue)
    }
}
