//! Response rate limiting (RRL) per client prefix: at most N responses a second to one
//! prefix; beyond that answers are dropped, except every second one, which goes out
//! truncated ("slip") so a real client behind a spoofed flood can still retry over TCP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

pub enum Verdict {
    Send,
    Drop,
    Slip,
}

pub struct Limiter {
    config: config::RateLimit,
    start: Instant,
    /// prefix -> (second, responses in it)
    seen: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl Limiter {
    pub fn new(config: config::RateLimit) -> Limiter {
        Limiter {
            config,
            start: Instant::now(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, ip: IpAddr) -> Verdict {
        let now = self.start.elapsed().as_secs();
        let key = crate::prefix(ip, self.config.ipv4_prefix, self.config.ipv6_prefix);
        let mut seen = self.seen.lock().expect("rate limiter");
        if seen.len() > 100_000 {
            seen.retain(|_, (second, _)| *second == now);
        }
        let entry = seen.entry(key).or_insert((now, 0));
        if entry.0 != now {
            *entry = (now, 0);
        }
        entry.1 += 1;
        let over = entry.1.saturating_sub(self.config.responses_per_second);
        match over {
            0 => Verdict::Send,
            n if n % 2 == 0 => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }
}

/// Turns an encoded answer into its truncated form: header only with TC set, the question
/// kept (everything after it dropped and counted out).
pub fn truncate(answer: &mut Vec<u8>) {
    use hickory_proto::op::Message;
    if let Ok(mut m) = Message::from_vec(answer) {
        m.take_answers();
        m.take_name_servers();
        m.take_additionals();
        m.set_truncated(true);
        if let Ok(bytes) = m.to_vec() {
            *answer = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_prefix() {
        let l = Limiter::new(config::RateLimit {
            responses_per_second: 3,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<&str> = [a, b, a, b, a, b]
            .iter()
            .map(|ip| match l.check(*ip) {
                Verdict::Send => "send",
                Verdict::Drop => "drop",
                Verdict::Slip => "slip",
            })
            .collect();
        assert_eq!(
            verdicts,
            ["send", "send", "send", "drop", "slip", "drop"],
            "one /24 shares the budget"
        );
        assert!(matches!(l.check(other), Verdict::Send));
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            crate::prefix("192.0.2.77".parse().unwrap(), 24, 56),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            crate::prefix("2001:db8:1:2:3::1".parse().unwrap(), 24, 48),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            crate::prefix("10.1.2.3".parse().unwrap(), 32, 56),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }
}
