//! Rate limits per client address and per sender domain: a token bucket per key that holds
//! a minute's worth of messages and refills continuously, so a sender may burst up to its
//! limit and then send at its rate. The counters are this node's own (a fleet of N mail
//! servers lets a sender through up to N times the limit; the balancers spread a sender's
//! sessions over them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The most keys remembered; past it, the keys idle for a minute (whose buckets are full
/// again) are forgotten, and when none is, a new key goes untracked.
const MAX_KEYS: usize = 100_000;

/// One limit: messages a minute per key (0: none).
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    /// Takes one message from `key`'s bucket; false when it is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let cap = f64::from(self.per_minute);
        let mut buckets = self.buckets.lock().expect("rate limits");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs() < 60);
            if buckets.len() >= MAX_KEYS {
                // Every key was seen within a minute: a new one is not tracked (let
                // through) rather than the table grown past its bound.
                return true;
            }
        }
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * cap / 60.0).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_the_limit_then_refills_at_the_rate() {
        let l = RateLimiter::new(60);
        let t = Instant::now();
        assert!((0..60).all(|_| l.allow_at("a", t)));
        assert!(!l.allow_at("a", t), "the 61st in the same instant");
        assert!(l.allow_at("b", t), "another key has its own bucket");
        assert!(!l.allow_at("a", t + Duration::from_millis(500)));
        assert!(
            l.allow_at("a", t + Duration::from_millis(1500)),
            "one a second comes back"
        );
        assert!(
            (0..60).all(|_| RateLimiter::new(0).allow_at("a", t)),
            "0: no limit"
        );
    }
}
