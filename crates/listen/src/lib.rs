//! What every listener of mailsilo shares, whatever its protocol (SMTP, DNS over TCP, the
//! control API): which connections it admits. A client (one IPv4 address, or one IPv6
//! /64, which one host usually holds) may hold only so many connections at once, and a
//! listener only so many in all; when all are taken, a newcomer takes the place of the
//! oldest connection of the client holding the most, so that a few clients cannot keep
//! everyone else out by holding every place. And how it accepts them ([`Acceptor`]): riding
//! out failures (a process out of file descriptors) with a backoff and one line of log.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{info, warn};

/// The longest pause between accepts that fail.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A listener's accepting: a failed accept (out of file descriptors, mostly) leaves the
/// connection in the kernel's queue, so it is retried after a pause that doubles from
/// 100 ms to [`MAX_PAUSE`], and logged once when it starts failing and once when it
/// recovers, not at every try.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    what: String,
    failed: u32,
}

impl Acceptor {
    /// Accepts on `listener`; `what` names it in the log.
    pub fn new(listener: TcpListener, what: impl Into<String>) -> Acceptor {
        Acceptor {
            listener,
            what: what.into(),
            failed: 0,
        }
    }

    /// The next connection. Cancel-safe: it may be raced against a shutdown.
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if self.failed > 0 {
                        info!(listener = %self.what, failed = self.failed, "accepting again");
                        self.failed = 0;
                    }
                    return accepted;
                }
                Err(e) => {
                    if self.failed == 0 {
                        warn!(listener = %self.what, error = %e, "accept failed: connections wait in the kernel's queue; retrying (logged again when it recovers)");
                    }
                    self.failed = self.failed.saturating_add(1);
                    let pause = Duration::from_millis(50 << self.failed.min(5)).min(MAX_PAUSE);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// The connections a listener admits: at most `per_client` from one client and `total`
/// in all (see the crate's documentation for who gives way when all are taken).
#[derive(Debug, Clone)]
pub struct Admission {
    per_client: usize,
    total: usize,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Each client's connections, oldest first: their numbers and how each is told to go.
    held: HashMap<IpAddr, VecDeque<(u64, Arc<Notify>)>>,
    count: usize,
    next: u64,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its client holds `per_client` already.
    Client,
    /// Every place is taken, and no client holds more than one more than this one would.
    Full,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    state: Arc<Mutex<State>>,
    client: IpAddr,
    number: u64,
    evicted: Arc<Notify>,
}

/// The client an address belongs to: an IPv4 address (also IPv4-mapped), or an IPv6
/// address's /64.
pub fn client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

impl Admission {
    /// At most `per_client` connections from one client and `total` in all.
    pub fn new(per_client: usize, total: usize) -> Admission {
        Admission {
            per_client,
            total,
            state: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let client = client(ip);
        let mut st = self.state.lock().expect("admission state");
        let mine = st.held.get(&client).map_or(0, VecDeque::len);
        if mine >= self.per_client {
            return Err(Refused::Client);
        }
        if st.count >= self.total {
            let (biggest, holds) = st
                .held
                .iter()
                .map(|(c, q)| (*c, q.len()))
                .max_by_key(|(_, n)| *n)
                .ok_or(Refused::Full)?;
            if holds <= mine + 1 {
                return Err(Refused::Full);
            }
            let queue = st.held.get_mut(&biggest).ok_or(Refused::Full)?;
            let (_, notify) = queue.pop_front().ok_or(Refused::Full)?;
            if queue.is_empty() {
                st.held.remove(&biggest);
            }
            st.count -= 1;
            notify.notify_one();
        }
        let number = st.next;
        st.next += 1;
        st.count += 1;
        let evicted = Arc::new(Notify::new());
        st.held
            .entry(client)
            .or_default()
            .push_back((number, evicted.clone()));
        Ok(Slot {
            state: self.state.clone(),
            client,
            number,
            evicted,
        })
    }
}

impl Slot {
    /// Resolves when a newcomer took this connection's place: the connection should end.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.state.lock().expect("admission state");
        let Some(queue) = st.held.get_mut(&self.client) else {
            return;
        };
        // An evicted place was taken out already.
        if let Some(at) = queue.iter().position(|(n, _)| *n == self.number) {
            queue.remove(at);
            if queue.is_empty() {
                st.held.remove(&self.client);
            }
            st.count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn places_are_bounded_per_client_and_given_back() {
        let limit = Admission::new(2, 100);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let first = limit.admit(a).unwrap();
        let second = limit.admit(a).unwrap();
        assert_eq!(
            limit.admit(a).err(),
            Some(Refused::Client),
            "a third from the same address"
        );
        assert!(limit.admit(b).is_ok(), "another address has its own");
        drop(first);
        let third = limit.admit(a);
        assert!(third.is_ok(), "given back on drop");
        drop((third, second));
        assert!(
            limit.state.lock().unwrap().held.is_empty(),
            "nothing left behind"
        );
        // An IPv6 client is its /64; an IPv4-mapped address is the IPv4 one.
        let _v6 = limit.admit(ip("2001:db8::1")).unwrap();
        let _v6b = limit.admit(ip("2001:db8::ffff:2")).unwrap();
        assert!(limit.admit(ip("2001:db8::3:3")).is_err());
        assert!(limit.admit(ip("2001:db8:0:1::1")).is_ok());
        let _mapped = limit.admit(ip("::ffff:192.0.2.9")).unwrap();
        let _plain = limit.admit(ip("192.0.2.9")).unwrap();
        assert!(limit.admit(ip("192.0.2.9")).is_err());
    }

    #[test]
    fn when_full_a_newcomer_takes_the_place_of_the_biggest_holders_oldest() {
        let limit = Admission::new(4, 8);
        // Two clients take every place, four each.
        let a: Vec<Slot> = (0..4)
            .map(|_| limit.admit(ip("10.0.0.1")).unwrap())
            .collect();
        let b: Vec<Slot> = (0..4)
            .map(|_| limit.admit(ip("10.0.0.2")).unwrap())
            .collect();
        // A newcomer gets in; one of them is told to go, its oldest.
        let newcomer = limit.admit(ip("10.0.0.3")).expect("a fair share");
        let told: Vec<bool> = a.iter().chain(&b).map(was_told).collect();
        assert_eq!(told.iter().filter(|t| **t).count(), 1, "{told:?}");
        assert!(told[0] || told[4], "the oldest of one: {told:?}");
        assert_eq!(limit.state.lock().unwrap().count, 8);
        // The evicted place, dropped by its connection, is not counted twice.
        drop(a);
        drop(b);
        assert_eq!(limit.state.lock().unwrap().count, 1);
        drop(newcomer);
        assert_eq!(limit.state.lock().unwrap().count, 0);
        // Clients holding one place each are not evicted for a newcomer.
        let each: Vec<Slot> = (1..=8)
            .map(|i| limit.admit(ip(&format!("10.0.1.{i}"))).unwrap())
            .collect();
        assert_eq!(limit.admit(ip("10.0.2.1")).err(), Some(Refused::Full));
        drop(each);
    }

    /// Whether `slot` was told to go (without waiting).
    fn was_told(slot: &Slot) -> bool {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(slot.evicted()).poll(&mut cx).is_ready()
    }
}
