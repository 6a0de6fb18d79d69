//! How mailsilo's roles judge the servers they send to and pick among them, in one place
//! for every role that does (the DNS judging clusters, a balancer judging mail servers):
//! the rise/fall [`Hysteresis`] of active checks, with an observed failure taking a target
//! out at once (HAProxy's `observe layer4`) and restarting its count of successes; the SMTP
//! [`probe`] those checks run; and smooth weighted round-robin ([`Swrr`], nginx's algorithm).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// A target's health as active checks and observed failures see it: down after `fall`
/// failed checks in a row, up again after `rise` successes in a row.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    ups: u32,
    downs: u32,
    up: bool,
}

impl Hysteresis {
    /// A target presumed up until checks say otherwise.
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            ups: 0,
            downs: 0,
            up: true,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check; returns the new state when it changed.
    pub fn check(&mut self, ok: bool) -> Option<bool> {
        if ok {
            (self.ups, self.downs) = (self.ups.saturating_add(1), 0);
            if !self.up && self.ups >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            (self.ups, self.downs) = (0, self.downs.saturating_add(1));
            if self.up && self.downs >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// An observed failure (a connection refused): down at once, and the successes counted
    /// so far no longer count, so it takes `rise` good checks to come back. True if it was up.
    pub fn mark_down(&mut self) -> bool {
        let was = self.up;
        self.up = false;
        self.ups = 0;
        was
    }
}

/// One SMTP health check over a connected stream: 220, EHLO, 250, QUIT, 221. The whole
/// probe must finish within `limit`.
pub async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    helo: &str,
    limit: Duration,
) -> Result<(), String> {
    let work = async {
        let mut stream = BufReader::new(stream);
        expect(&mut stream, "220").await?;
        send(&mut stream, &format!("EHLO {helo}\r\n")).await?;
        expect(&mut stream, "250").await?;
        send(&mut stream, "QUIT\r\n").await?;
        expect(&mut stream, "221").await
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
) -> Result<(), String> {
    s.get_mut()
        .write_all(line.as_bytes())
        .await
        .map_err(|e: io::Error| e.to_string())
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect<S: AsyncRead + Unpin>(s: &mut BufReader<S>, code: &str) -> Result<(), String> {
    loop {
        let mut line = String::new();
        // A reply line is short; a server sending more is not a healthy SMTP server.
        let n = (&mut *s)
            .take(1024)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed before {code}"));
        }
        if !line.starts_with(code) {
            return Err(format!("expected {code}, got {:?}", line.trim_end()));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Smooth weighted round-robin state: one running "current weight" per target.
#[derive(Debug, Clone, Default)]
pub struct Swrr {
    current: Vec<i64>,
}

impl Swrr {
    /// Picks among targets with a positive weight (0 means "not eligible now"); each pick
    /// adds every eligible target's weight to its current value, takes the largest, and
    /// subtracts the total from it. Over any run of sum(weights) picks each target is
    /// chosen weight times, spread evenly: {5,1,1} gives a a b a c a a.
    pub fn pick(&mut self, weights: &[i64]) -> Option<usize> {
        self.current.resize(weights.len(), 0);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w <= 0 {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Hysteresis::new(2, 3);
        assert!(h.is_up());
        assert_eq!(h.check(false), None);
        assert_eq!(h.check(false), None);
        assert_eq!(h.check(false), Some(false));
        assert_eq!(h.check(true), None);
        assert_eq!(h.check(true), Some(true));
        assert_eq!(h.check(true), None);
    }

    /// A passive mark-down forgets the successes before it: one good check after it is not
    /// enough to come back when `rise` is 2.
    #[test]
    fn a_mark_down_restarts_the_count_of_successes() {
        let mut h = Hysteresis::new(2, 3);
        h.check(false);
        h.check(false);
        h.check(false);
        assert_eq!(h.check(true), None, "one success of two");
        assert!(!h.mark_down(), "was already down");
        assert_eq!(
            h.check(true),
            None,
            "the success before the mark-down does not count"
        );
        assert_eq!(h.check(true), Some(true));
        // From up: a mark-down takes it out at once; rise checks bring it back.
        let mut h = Hysteresis::new(2, 3);
        assert!(h.check(true).is_none());
        assert!(h.mark_down());
        assert!(!h.is_up());
        assert_eq!(h.check(true), None);
        assert_eq!(h.check(true), Some(true));
    }

    #[tokio::test]
    async fn probe_speaks_smtp() {
        let (client, server) = tokio::io::duplex(4096);
        let serve = tokio::spawn(async move {
            let mut s = BufReader::new(server);
            s.get_mut().write_all(b"220 mx ESMTP\r\n").await.unwrap();
            let mut l = String::new();
            s.read_line(&mut l).await.unwrap();
            assert_eq!(l, "EHLO checker\r\n");
            s.get_mut()
                .write_all(b"250-mx\r\n250 PIPELINING\r\n")
                .await
                .unwrap();
            l.clear();
            s.read_line(&mut l).await.unwrap();
            assert_eq!(l, "QUIT\r\n");
            s.get_mut().write_all(b"221 bye\r\n").await.unwrap();
        });
        assert_eq!(
            probe(client, "checker", Duration::from_secs(1)).await,
            Ok(())
        );
        serve.await.unwrap();
        let (client, server) = tokio::io::duplex(4096);
        let mut server = server;
        server.write_all(b"421 busy\r\n").await.unwrap();
        let e = probe(client, "checker", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("expected 220"), "{e}");
        let (client, _silent) = tokio::io::duplex(4096);
        assert_eq!(
            probe(client, "checker", Duration::from_millis(50)).await,
            Err("timed out".into())
        );
    }

    #[test]
    fn nginx_sequence() {
        let mut s = Swrr::default();
        let picks: String = (0..7)
            .map(|_| (b'a' + s.pick(&[5, 1, 1]).unwrap() as u8) as char)
            .collect();
        assert_eq!(picks, "aabacaa");
        assert_eq!(Swrr::default().pick(&[0, 0]), None);
        let mut s = Swrr::default();
        let picks: Vec<usize> = (0..4).map(|_| s.pick(&[1, 0, 1]).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2], "weight 0 is skipped");
    }

    proptest! {
        /// Over sum(weights) picks, each target is picked exactly its weight times.
        #[test]
        fn swrr_long_run_ratios(weights in proptest::collection::vec(0i64..20, 1..8), rounds in 1usize..20) {
            let total: i64 = weights.iter().sum();
            prop_assume!(total > 0);
            let mut s = Swrr::default();
            let mut counts = vec![0i64; weights.len()];
            for _ in 0..(total as usize * rounds) {
                counts[s.pick(&weights).unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, w * rounds as i64);
            }
        }

        /// With weights changed midway, the picks after the change follow the new weights.
        #[test]
        fn swrr_follows_a_weight_change(before in proptest::collection::vec(1i64..10, 2..6), after in proptest::collection::vec(1i64..10, 2..6)) {
            prop_assume!(before.len() == after.len());
            let mut s = Swrr::default();
            for _ in 0..before.iter().sum::<i64>() * 3 {
                s.pick(&before);
            }
            let total: i64 = after.iter().sum();
            let mut counts = vec![0i64; after.len()];
            for _ in 0..total * 50 {
                counts[s.pick(&after).unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&after) {
                prop_assert!((c - w * 50).abs() <= total, "{counts:?} vs {after:?}");
            }
        }
    }
}
