//! A buffered SMTP connection over TCP or TLS: bounded line reads with timeouts, and an
//! output buffer flushed when the peer's pipelined input has been used up.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// Any byte stream a session can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The result of reading one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line including its LF.
    Full(Vec<u8>),
    /// The line was longer than allowed; it has been skipped up to and including its LF. Its
    /// first octets are kept (to tell what it was).
    TooLong(Vec<u8>),
}

pub struct Conn {
    pub stream: Box<dyn Stream>,
    buf: Vec<u8>,
    pos: usize,
    pub out: Vec<u8>,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
}

impl Conn {
    pub fn new(stream: Box<dyn Stream>) -> Conn {
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            out: Vec::with_capacity(1024),
        }
    }

    /// Unread input.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Drops unread input (after STARTTLS: nothing sent in plaintext may count).
    pub fn discard_pending(&mut self) -> usize {
        let n = self.buf.len() - self.pos;
        self.buf.clear();
        self.pos = 0;
        n
    }

    /// Whether a whole line is already buffered (pipelined input waiting).
    pub fn has_line(&self) -> bool {
        self.pending().contains(&b'\n')
    }

    /// Reads more input within `limit`; returns how many octets came; errors on end of
    /// stream and on timeout.
    pub async fn fill(&mut self, limit: Duration) -> io::Result<usize> {
        if self.pos > 0 && self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = timeout(limit, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| timed_out())??;
        if n == 0 { Err(eof()) } else { Ok(n) }
    }

    /// Reads one line of at most `max` octets including its line end. `limit` bounds the
    /// whole line, not each read (Postfix's `smtpd_per_record_deadline`), so a client
    /// dripping one byte at a time cannot hold the session open.
    pub async fn read_line(&mut self, max: usize, limit: Duration) -> io::Result<Line> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut skipped: Option<Vec<u8>> = None;
        loop {
            if let Some(i) = self.pending().iter().position(|&b| b == b'\n') {
                let line = self.pending()[..=i].to_vec();
                self.consume(i + 1);
                return Ok(match skipped {
                    Some(start) => Line::TooLong(start),
                    None if line.len() > max => Line::TooLong(line[..line.len().min(16)].to_vec()),
                    None => Line::Full(line),
                });
            }
            if self.pending().len() > max {
                if skipped.is_none() {
                    skipped = Some(self.pending()[..self.pending().len().min(16)].to_vec());
                }
                let n = self.pending().len();
                self.consume(n);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            self.fill(left).await?;
        }
    }

    /// Writes out what is buffered.
    pub async fn flush(&mut self, limit: Duration) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = timeout(limit, async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| timed_out())?;
        self.out.clear();
        r
    }

    /// Takes the stream out for a TLS handshake; input must have been drained.
    pub fn into_stream(self) -> Box<dyn Stream> {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_limits() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut c = Conn::new(Box::new(a));
        b.write_all(b"EHLO x\r\n").await.unwrap();
        b.write_all(&[b'A'; 3000]).await.unwrap();
        b.write_all(b"\r\nNOOP\r\n").await.unwrap();
        let t = Duration::from_secs(1);
        assert_eq!(
            c.read_line(1000, t).await.unwrap(),
            Line::Full(b"EHLO x\r\n".to_vec())
        );
        assert_eq!(
            c.read_line(1000, t).await.unwrap(),
            Line::TooLong(vec![b'A'; 16])
        );
        assert_eq!(
            c.read_line(1000, t).await.unwrap(),
            Line::Full(b"NOOP\r\n".to_vec())
        );
        let e = c
            .read_line(1000, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(b);
        assert_eq!(
            c.read_line(1000, t).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    /// A line dripped one byte at a time times out at the deadline of the whole line, not
    /// at the silence between bytes.
    #[tokio::test]
    async fn the_deadline_covers_the_whole_line() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut c = Conn::new(Box::new(a));
        let drip = tokio::spawn(async move {
            for _ in 0..40 {
                if b.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let started = std::time::Instant::now();
        let e = c
            .read_line(1000, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        drip.abort();
    }
}
