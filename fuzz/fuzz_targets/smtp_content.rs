//! The DATA decoder and the reply parser on arbitrary bytes: no panics; a message that ends
//! ends at a real CRLF.CRLF; normalised output is canonical CRLF text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsilo_config::BareNewlines;
use mailsilo_smtp::data::{Decoder, MemoryBudget, Start};
use mailsilo_smtp::reply::ReplyParser;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut d = Decoder::data(Start {
        mode: BareNewlines::Normalize,
        max_size: 1 << 16,
        prefix: Vec::new(),
        expected: None,
        charge: MemoryBudget::new(1 << 20, 1 << 16).charge(std::net::Ipv4Addr::LOCALHOST.into()),
    });
    let end = d
        .feed(&data[..split])
        .or_else(|| d.feed(&data[split..]).map(|n| n + split));
    if let Some(n) = end {
        assert!(data[..n].ends_with(b"\r\n.\r\n") || n == 3 || data[..n].ends_with(b".\r\n"));
    }
    if let Ok((m, _)) = d.into_message() {
        assert!(!m.contains(&0));
        for (i, &b) in m.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && m[i - 1] == b'\r');
            }
            if b == b'\r' {
                assert_eq!(m.get(i + 1), Some(&b'\n'));
            }
        }
    }
    let mut p = ReplyParser::default();
    for line in data.split(|&b| b == b'\n') {
        let _ = p.line(line);
    }
});
