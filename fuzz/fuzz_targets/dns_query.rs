//! The DNS answer path on arbitrary packets, over UDP and TCP: no panic; UDP answers fit
//! 1232 octets; every answer echoes the query id.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailsilo_dns::catalog::{Catalog, MAX_UDP, Transport};

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| {
        let c = mailsilo_config::Config::demo();
        Catalog::new(c.dns.as_ref().unwrap(), &c.silos)
    })
}

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(answer) = catalog().answer(data, transport) {
            assert!(answer.len() >= 12 && answer[..2] == data[..2]);
            if transport == Transport::Udp {
                assert!(answer.len() <= MAX_UDP);
            }
        }
    }
});
