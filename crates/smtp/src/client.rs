//! The SMTP client that relays mail to a client organisation's own server: EHLO (HELO as a
//! fallback), opportunistic or required STARTTLS, PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN
//! parameters, and a status per recipient. A [`Client`] may carry many transactions in turn.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::command::Ret;
use crate::conn::{Conn, Line};
use crate::reply::ReplyParser;
use crate::server::{Envelope, notify};
use crate::{Reply, data, tls};

/// How a client behaves, shared by all its connections.
#[derive(Clone)]
pub struct Settings {
    /// The name sent in EHLO.
    pub helo: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Settings {
    pub fn new(helo: String, connect_timeout: Duration, command_timeout: Duration) -> Settings {
        Settings {
            helo,
            connect_timeout,
            command_timeout,
            tls: tls::client_config(),
        }
    }
}

/// Why a connection or a transaction failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{stage} answered {reply}")]
    Reply { stage: &'static str, reply: Reply },
    #[error("TLS is required but the server does not offer STARTTLS")]
    TlsUnavailable,
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("bad reply: {0}")]
    Protocol(#[from] crate::reply::ParseError),
}

impl Error {
    /// A failure that retrying will not cure (a 5xx answer).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Reply { reply, .. } if reply.is_permanent())
    }
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Default, Clone)]
pub struct Capabilities {
    pub pipelining: bool,
    pub size: Option<usize>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
}

impl Capabilities {
    fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                "8BITMIME" => c.eight_bit = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                _ => {}
            }
        }
        c
    }
}

/// An open connection to a destination, ready for MAIL.
pub struct Client {
    conn: Conn,
    settings: Arc<Settings>,
    pub capabilities: Capabilities,
    /// TLS version and cipher, when STARTTLS was used.
    pub tls: Option<String>,
    pub peer: SocketAddr,
}

impl Client {
    /// Connects, reads the banner, says EHLO and starts TLS when offered (or fails when
    /// `require_tls` and not offered). `server_name` is the destination's host name.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        settings: Arc<Settings>,
        require_tls: bool,
    ) -> Result<Client, Error> {
        let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                Error::Connect(addr, io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            })?
            .map_err(|e| Error::Connect(addr, e))?;
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            conn: Conn::new(Box::new(stream)),
            settings,
            capabilities: Capabilities::default(),
            tls: None,
            peer: addr,
        };
        let banner = c.read_reply().await?;
        if banner.code != 220 {
            return Err(Error::Reply {
                stage: "banner",
                reply: banner,
            });
        }
        c.hello().await?;
        if c.capabilities.starttls {
            c.command("STARTTLS\r\n".into()).await?;
            let reply = c.read_reply().await?;
            if reply.code == 220 {
                c.start_tls(server_name).await?;
                c.hello().await?;
            } else if require_tls {
                return Err(Error::Reply {
                    stage: "STARTTLS",
                    reply,
                });
            }
        } else if require_tls {
            return Err(Error::TlsUnavailable);
        }
        Ok(c)
    }

    async fn hello(&mut self) -> Result<(), Error> {
        self.command(format!("EHLO {}\r\n", self.settings.helo))
            .await?;
        let reply = self.read_reply().await?;
        if reply.is_positive() {
            self.capabilities = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        self.command(format!("HELO {}\r\n", self.settings.helo))
            .await?;
        let reply = self.read_reply().await?;
        if !reply.is_positive() {
            return Err(Error::Reply {
                stage: "HELO",
                reply,
            });
        }
        self.capabilities = Capabilities::default();
        Ok(())
    }

    async fn start_tls(&mut self, server_name: &str) -> Result<(), Error> {
        let name = ServerName::try_from(server_name.to_string())
            .unwrap_or_else(|_| ServerName::from(self.peer.ip()));
        let conn = std::mem::replace(&mut self.conn, Conn::new(Box::new(tokio::io::duplex(1).0)));
        let connector = TlsConnector::from(self.settings.tls.clone());
        let stream = tokio::time::timeout(
            self.settings.command_timeout,
            connector.connect(name, conn.into_stream()),
        )
        .await
        .map_err(|_| Error::Tls(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
        .map_err(Error::Tls)?;
        self.tls = Some(tls::describe(stream.get_ref().1));
        self.conn = Conn::new(Box::new(stream));
        Ok(())
    }

    async fn command(&mut self, line: String) -> Result<(), Error> {
        self.conn.out.extend_from_slice(line.as_bytes());
        self.conn.flush(self.settings.command_timeout).await?;
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<Reply, Error> {
        let mut parser = ReplyParser::default();
        loop {
            let line = match self
                .conn
                .read_line(4096, self.settings.command_timeout)
                .await?
            {
                Line::Full(l) => l,
                Line::TooLong(_) => {
                    return Err(
                        io::Error::new(io::ErrorKind::InvalidData, "reply line too long").into(),
                    );
                }
            };
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(reply) = parser.line(line)? {
                return Ok(reply);
            }
        }
    }

    /// Sends one message. `Ok` holds the outcome for each recipient of `envelope`, in order
    /// (`Ok(final reply)` accepted, the reply to the end of data naming the next hop's own
    /// queue id; `Err(reply)` refused at RCPT); `Err` means the whole transaction failed and
    /// the connection should be dropped.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Vec<Result<Reply, Reply>>, Error> {
        let caps = self.capabilities.clone();
        if let Some(max) = caps.size
            && message.len() > max
        {
            let reply = Reply::new(
                552,
                format!(
                    "5.3.4 Message size {} exceeds the server's limit {max}",
                    message.len()
                ),
            );
            return Err(Error::Reply {
                stage: "SIZE",
                reply,
            });
        }
        if envelope.smtputf8 && !caps.smtputf8 {
            let reply = Reply::new(553, "5.6.7 The destination does not support SMTPUTF8");
            return Err(Error::Reply {
                stage: "SMTPUTF8",
                reply,
            });
        }
        let mut mail = format!("MAIL FROM:<{}>", envelope.sender);
        if caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if caps.eight_bit && (envelope.eight_bit || !message.is_ascii()) {
            mail.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        // DSN parameters go on exactly as received (ENVID and ORCPT are xtext already),
        // and only those the client gave: no RET is invented.
        if caps.dsn {
            match envelope.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Headers) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(id) = &envelope.envid {
                mail.push_str(&format!(" ENVID={id}"));
            }
        }
        mail.push_str("\r\n");
        let mut rcpts = Vec::with_capacity(envelope.recipients.len());
        for r in &envelope.recipients {
            let mut line = format!("RCPT TO:<{}>", r.address);
            if caps.dsn && r.notify != 0 {
                let words: Vec<&str> = [
                    (notify::NEVER, "NEVER"),
                    (notify::SUCCESS, "SUCCESS"),
                    (notify::FAILURE, "FAILURE"),
                    (notify::DELAY, "DELAY"),
                ]
                .iter()
                .filter(|(bit, _)| r.notify & bit != 0)
                .map(|(_, w)| *w)
                .collect();
                line.push_str(&format!(" NOTIFY={}", words.join(",")));
            }
            if caps.dsn
                && let Some(o) = &r.orcpt
            {
                line.push_str(&format!(" ORCPT={o}"));
            }
            line.push_str("\r\n");
            rcpts.push(line);
        }

        // MAIL, every RCPT and DATA go in one write when the server pipelines.
        let pipelined = caps.pipelining;
        self.conn.out.extend_from_slice(mail.as_bytes());
        if !pipelined {
            self.conn.flush(self.settings.command_timeout).await?;
            let reply = self.read_reply().await?;
            if !reply.is_positive() {
                return Err(Error::Reply {
                    stage: "MAIL",
                    reply,
                });
            }
        }
        let mut mail_reply = None;
        let mut results = Vec::with_capacity(rcpts.len());
        if pipelined {
            for r in &rcpts {
                self.conn.out.extend_from_slice(r.as_bytes());
            }
            self.conn.out.extend_from_slice(b"DATA\r\n");
            self.conn.flush(self.settings.command_timeout).await?;
            mail_reply = Some(self.read_reply().await?);
            for _ in &rcpts {
                results.push(self.read_reply().await?);
            }
        } else {
            for r in &rcpts {
                self.command(r.clone()).await?;
                results.push(self.read_reply().await?);
            }
        }
        // Refused recipients keep their reply; accepted ones get the final reply below.
        let refusal = |reply: Reply| {
            if reply.is_positive() {
                None
            } else {
                Some(reply)
            }
        };
        let results: Vec<Option<Reply>> = results.into_iter().map(refusal).collect();
        let accepted = results.iter().filter(|r| r.is_none()).count();
        let finish = |results: Vec<Option<Reply>>, ok: &Reply| -> Vec<Result<Reply, Reply>> {
            results
                .into_iter()
                .map(|r| r.map_or_else(|| Ok(ok.clone()), Err))
                .collect()
        };
        let data_reply = if pipelined {
            self.read_reply().await?
        } else if accepted > 0 {
            self.command("DATA\r\n".into()).await?;
            self.read_reply().await?
        } else {
            self.reset().await?;
            return Ok(finish(results, &Reply::new(250, "")));
        };
        if let Some(reply) = mail_reply.filter(|r| !r.is_positive()) {
            if data_reply.code == 354 {
                self.abort_data().await?;
            }
            return Err(Error::Reply {
                stage: "MAIL",
                reply,
            });
        }
        if accepted == 0 {
            if data_reply.code == 354 {
                self.abort_data().await?;
            }
            // The server may still hold the transaction open: clear it before the
            // connection carries another message.
            self.reset().await?;
            return Ok(finish(results, &Reply::new(250, "")));
        }
        if data_reply.code != 354 {
            return Err(Error::Reply {
                stage: "DATA",
                reply: data_reply,
            });
        }
        // Stuffed and sent a piece at a time: no second copy of a large message in memory.
        let mut stuffer = data::Stuffer::default();
        for piece in message.chunks(64 * 1024) {
            stuffer.feed(piece, &mut self.conn.out);
            self.conn.flush(self.settings.command_timeout).await?;
        }
        stuffer.finish(&mut self.conn.out);
        self.conn.flush(self.settings.command_timeout).await?;
        let final_reply = self.read_reply().await?;
        if !final_reply.is_positive() {
            return Err(Error::Reply {
                stage: "end of DATA",
                reply: final_reply,
            });
        }
        Ok(finish(results, &final_reply))
    }

    /// Ends a DATA phase that should not have started, with an empty message.
    async fn abort_data(&mut self) -> Result<(), Error> {
        self.command(".\r\n".into()).await?;
        self.read_reply().await?;
        Ok(())
    }

    /// RSET; the connection is unusable if the server does not agree.
    async fn reset(&mut self) -> Result<(), Error> {
        self.command("RSET\r\n".into()).await?;
        let reply = self.read_reply().await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(Error::Reply {
                stage: "RSET",
                reply,
            })
        }
    }

    /// Says QUIT and waits briefly for the answer.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.command("QUIT\r\n".into()).await.is_ok() {
                let _ = self.read_reply().await;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let r = Reply {
            code: 250,
            lines: vec![
                "mx".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "dsn".into(),
                "STARTTLS".into(),
            ],
        };
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.dsn && c.starttls && !c.smtputf8);
        assert_eq!(c.size, Some(1000));
    }
}
