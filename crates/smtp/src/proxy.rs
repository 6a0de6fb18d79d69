//! PROXY protocol v2 on the receiving side: a mail server behind a balancer learns the
//! original client's address from the header the balancer sends before any SMTP byte.
//!
//! The header is read exactly (16 octets, then the length they announce), so nothing after
//! it is consumed; ppp parses it. A missing, partial, malformed or oversize header is an
//! error and the connection is closed without a banner.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature that starts every header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The largest header accepted: addresses plus a few TLVs.
pub const MAX_HEADER: usize = 16 + 512;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// LOCAL: the balancer speaking for itself (health checks).
    Local,
    /// PROXY: the original client's address.
    Client(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY v2 header")]
    Missing,
    #[error("PROXY header of {0} octets is over the limit")]
    TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("PROXY header with an unsupported address family")]
    Unsupported,
    #[error("PROXY header not received in time")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// How many more octets a header needs, or what it says once complete: `Ok(Err(n))` asks
/// for `n` more octets, `Ok(Ok(..))` is the parsed header with its length.
pub fn parse(buf: &[u8]) -> Result<Result<(Proxied, usize), usize>, ProxyError> {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 16 {
        return Ok(Err(16 - buf.len()));
    }
    let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER {
        return Err(ProxyError::TooLong(total));
    }
    if buf.len() < total {
        return Ok(Err(total - buf.len()));
    }
    let header = ppp::v2::Header::try_from(&buf[..total])
        .map_err(|e| ProxyError::Malformed(e.to_string()))?;
    // Its TLVs too: one whose length runs past the header's end is as malformed as the rest.
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyError::Malformed(format!("its TLVs: {e}")));
    }
    let proxied = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => Proxied::Local,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
            Proxied::Client(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
            Proxied::Client(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        _ => return Err(ProxyError::Unsupported),
    };
    Ok(Ok((proxied, total)))
}

/// Reads one header from the start of `stream` within `limit`, consuming nothing after it.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<Proxied, ProxyError> {
    let work = async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse(&buf)? {
                Ok((proxied, _)) => return Ok(proxied),
                Err(more) => {
                    let start = buf.len();
                    buf.resize(start + more, 0);
                    stream.read_exact(&mut buf[start..]).await?;
                }
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};
    use proptest::prelude::*;

    fn header(src: &str, dst: &str) -> Vec<u8> {
        let addrs = (
            src.parse::<SocketAddr>().unwrap(),
            dst.parse::<SocketAddr>().unwrap(),
        );
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addrs)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let mut bytes = header("192.0.2.7:4444", "127.0.1.1:2525");
        bytes.extend_from_slice(b"EHLO early\r\n");
        let mut r = &bytes[..];
        assert_eq!(
            read(&mut r, Duration::from_secs(1)).await.unwrap(),
            Proxied::Client("192.0.2.7:4444".parse().unwrap())
        );
        assert_eq!(
            r, b"EHLO early\r\n",
            "nothing after the header was consumed"
        );
        let v6 = header("[2001:db8::1]:5", "[::1]:25");
        assert_eq!(
            read(&mut &v6[..], Duration::from_secs(1)).await.unwrap(),
            Proxied::Client("[2001:db8::1]:5".parse().unwrap())
        );
        let local = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            read(&mut &local[..], Duration::from_secs(1)).await.unwrap(),
            Proxied::Local
        );
    }

    #[tokio::test]
    async fn refuses_bad_headers() {
        let t = Duration::from_millis(200);
        assert!(matches!(
            read(&mut &b"EHLO client.example.net\r\n"[..], t).await,
            Err(ProxyError::Missing)
        ));
        assert!(
            matches!(
                read(&mut &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], t).await,
                Err(ProxyError::Missing)
            ),
            "v1 is not accepted"
        );
        let full = header("192.0.2.7:4444", "127.0.1.1:2525");
        assert!(
            matches!(read(&mut &full[..20], t).await, Err(ProxyError::Io(_))),
            "partial then EOF"
        );
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, &full[..20])
            .await
            .unwrap();
        assert!(
            matches!(read(&mut server, t).await, Err(ProxyError::Timeout)),
            "partial then silence"
        );
        let mut long = full.clone();
        long[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert!(matches!(
            read(&mut &long[..], t).await,
            Err(ProxyError::TooLong(4016))
        ));
        let mut bad = full.clone();
        bad[12] = 0x11; // version 1 in a v2 header
        assert!(matches!(
            read(&mut &bad[..], t).await,
            Err(ProxyError::Malformed(_))
        ));
        // A TLV (type, 2-octet length, value) must end within the header.
        let with_tlv = |tlv: &[u8]| {
            let mut h = full.clone();
            let len = u16::from_be_bytes([h[14], h[15]]) + tlv.len() as u16;
            h[14..16].copy_from_slice(&len.to_be_bytes());
            h.extend_from_slice(tlv);
            h
        };
        assert_eq!(
            read(&mut &with_tlv(&[0x04, 0, 1, 0])[..], t).await.unwrap(),
            Proxied::Client("192.0.2.7:4444".parse().unwrap())
        );
        for tlv in [&[0x04, 0xff, 0xff][..], &[0x04, 0, 9, 0], &[0x04, 0]] {
            assert!(
                matches!(
                    read(&mut &with_tlv(tlv)[..], t).await,
                    Err(ProxyError::Malformed(_))
                ),
                "{tlv:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_never_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut input = SIGNATURE.to_vec();
            input.extend_from_slice(&bytes);
            if let Ok(Ok((_, used))) = parse(&input) {
                prop_assert!(used <= input.len() && used <= MAX_HEADER);
            }
            let _ = parse(&bytes);
        }

        #[test]
        fn any_ipv4_client_round_trips(a in any::<[u8; 4]>(), port in 1u16..) {
            let src = SocketAddr::from((a, port));
            let bytes = header(&src.to_string(), "127.0.1.1:2525");
            prop_assert_eq!(parse(&bytes).unwrap().unwrap(), (Proxied::Client(src), bytes.len()));
        }
    }
}
