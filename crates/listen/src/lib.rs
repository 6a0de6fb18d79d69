//! What every listener of mailsilo shares, whatever its protocol (SMTP, DNS over TCP, the
//! control API): a bound on the connections one client address may hold at once, so that a
//! single client cannot take every slot of a listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections held per client address, each at most `max`.
#[derive(Debug, Clone)]
pub struct PerAddress {
    max: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize) -> PerAddress {
        PerAddress {
            max,
            held: Arc::default(),
        }
    }

    /// A slot for `ip`, or `None` when it holds `max` already.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().expect("per-address slots");
        let n = held.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: self.held.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("per-address slots");
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_given_back() {
        let limit = PerAddress::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = limit.take(a).unwrap();
        let _second = limit.take(a).unwrap();
        assert!(limit.take(a).is_none(), "a third from the same address");
        assert!(limit.take(b).is_some(), "another address has its own");
        drop(first);
        let third = limit.take(a);
        assert!(third.is_some(), "given back on drop");
        drop((third, _second));
        assert!(limit.held.lock().unwrap().is_empty(), "nothing left behind");
    }
}
