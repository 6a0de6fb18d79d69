//! Message content decoding: the end of DATA, dot-unstuffing, bare CR/LF, line and size
//! limits, and the inverse (dot-stuffing) for the relay client.
//!
//! The SMTP-smuggling defence lives here: a message ends only at `CRLF . CRLF` where both
//! line ends are real CRLF pairs. `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`
//! and the like never end or split a message; they are refused or normalised, as configured,
//! and so is a NUL octet.
//!
//! So is the memory bound: the decoded message is the only copy a session holds, it starts
//! with the server's Received: header (so nothing is copied to prepend it), and its size is
//! charged to a [`MemoryBudget`] shared by every session of the process, of which one client
//! may hold only a share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use config::BareNewlines;

/// The longest text line RFC 5321 allows, without its CRLF.
pub const MAX_LINE: usize = 998;

/// What was wrong with received content (first problem wins in [`Decoder::problem`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    BareNewline,
    Nul,
    LineTooLong,
    TooBig,
    /// The memory for messages in flight ran out (a temporary condition).
    NoMemory,
}

/// How many octets of message content all sessions together may hold in memory, and one
/// client (an IPv4 address, an IPv6 /64) of them: a client that sends many messages slowly
/// at once cannot hold off everyone else's mail.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    client_limit: usize,
    used: AtomicUsize,
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// The octets one message holds against a [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    client: IpAddr,
    bytes: usize,
}

/// Octets charged at a time, so the shared counters are touched once per 64 KiB.
const CHARGE_STEP: usize = 64 * 1024;

/// The share of a budget one client may hold (one part in this many).
const CLIENT_SHARE: usize = 8;

impl MemoryBudget {
    /// A budget of `limit` octets, of which one client may hold an eighth, or room for one
    /// message of `max_message` octets if that is more (every client can always send one).
    pub fn new(limit: usize, max_message: usize) -> Arc<MemoryBudget> {
        let one_message = max_message.saturating_add(4 * CHARGE_STEP);
        Arc::new(MemoryBudget {
            limit,
            client_limit: (limit / CLIENT_SHARE).max(one_message).min(limit),
            used: AtomicUsize::new(0),
            clients: Mutex::default(),
        })
    }

    /// Octets held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the budget is used up, or `client`'s share of it (new transfers are then
    /// refused with 452).
    pub fn exhausted(&self, client: IpAddr) -> bool {
        self.used() >= self.limit || self.held_by(listen::client(client)) >= self.client_limit
    }

    fn held_by(&self, client: IpAddr) -> usize {
        let clients = self.clients.lock().expect("memory budget lock");
        clients.get(&client).copied().unwrap_or(0)
    }

    /// A charge of nothing yet for a message from `client`, to grow as content arrives.
    pub fn charge(self: &Arc<Self>, client: IpAddr) -> Charge {
        Charge {
            budget: self.clone(),
            client: listen::client(client),
            bytes: 0,
        }
    }
}

impl Charge {
    /// Grows the charge to cover `total` octets; false (and no change) past the limit or
    /// the client's share.
    fn cover(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = (total - self.bytes).div_ceil(CHARGE_STEP) * CHARGE_STEP;
        let budget = &self.budget;
        let mut clients = budget.clients.lock().expect("memory budget lock");
        let held = clients.get(&self.client).copied().unwrap_or(0);
        let ok = held + more <= budget.client_limit
            && budget
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    (u + more <= budget.limit).then_some(u + more)
                })
                .is_ok();
        if ok {
            clients.insert(self.client, held + more);
            self.bytes += more;
        }
        ok
    }

    /// Gives back everything charged so far.
    fn release(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut clients = self.budget.clients.lock().expect("memory budget lock");
        if let Some(held) = clients.get_mut(&self.client) {
            *held -= self.bytes;
            if *held == 0 {
                clients.remove(&self.client);
            }
        }
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// Decodes message content, either DATA (dot-terminated, dot-stuffed) or BDAT chunks
/// (length-framed), into canonical CRLF text.
#[derive(Debug)]
pub struct Decoder {
    mode: BareNewlines,
    dots: bool,
    max_size: usize,
    out: Vec<u8>,
    /// Octets of `out` that came before the content (the Received: header).
    base: usize,
    charge: Charge,
    line_len: usize,
    /// The current line began with a '.', which was held back.
    first_dot: bool,
    /// The last byte was CR, not yet known to be part of CRLF.
    pending_cr: bool,
    /// The previous line ended with a real CRLF (the DATA command line counts).
    prev_proper: bool,
    bare: bool,
    nul: bool,
    long: bool,
    too_big: bool,
    no_memory: bool,
}

/// What a decoder starts from.
#[derive(Debug)]
pub struct Start {
    pub mode: BareNewlines,
    /// The most content octets accepted (the prefix does not count).
    pub max_size: usize,
    /// Octets the message starts with (the Received: header).
    pub prefix: Vec<u8>,
    /// The size the client announced (SIZE=), to allocate once.
    pub expected: Option<u64>,
    pub charge: Charge,
}

impl Decoder {
    /// For DATA: ends at `CRLF.CRLF`, removes dot-stuffing.
    pub fn data(start: Start) -> Decoder {
        Decoder::new(start, true)
    }

    /// For BDAT: no terminator, no dot handling.
    pub fn bdat(start: Start) -> Decoder {
        Decoder::new(start, false)
    }

    fn new(start: Start, dots: bool) -> Decoder {
        let mut out = start.prefix;
        let base = out.len();
        // One allocation when the client announced the size; large buffers grow in place
        // (mremap) otherwise, so capacity not yet written costs no memory.
        let expected = start
            .expected
            .map_or(8192, |n| n.min(start.max_size as u64) as usize + 1024);
        out.reserve(expected);
        let mut charge = start.charge;
        let no_memory = !charge.cover(out.len());
        if no_memory {
            out = Vec::new();
        }
        Decoder {
            mode: start.mode,
            dots,
            max_size: start.max_size,
            out,
            base,
            charge,
            line_len: 0,
            first_dot: false,
            pending_cr: false,
            prev_proper: true,
            bare: false,
            nul: false,
            long: false,
            too_big: false,
            no_memory,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        let total = self.out.len() + bytes.len();
        if self.too_big || self.no_memory {
            return;
        }
        if total - self.base > self.max_size {
            self.too_big = true;
        } else if !self.charge.cover(total) {
            self.no_memory = true;
        } else {
            return self.out.extend_from_slice(bytes);
        }
        // The content is refused whatever follows: its memory goes back at once, so that
        // other transfers (the same client's too) can finish with it.
        self.out = Vec::new();
        self.charge.release();
    }

    fn end_line(&mut self, proper: bool) {
        if self.first_dot && self.line_len == 1 {
            // A lone "." that is not the terminator: keep it rather than lose it.
            self.emit(b".");
        }
        self.emit(b"\r\n");
        self.prev_proper = proper;
        self.line_len = 0;
        self.first_dot = false;
    }

    fn byte(&mut self, b: u8) {
        if b == 0 {
            // Handled like a bare CR or LF: refused, or dropped when normalising. It still
            // counts as a character of its line, so `.NUL` is never a lone dot: the message
            // ends only at a real CRLF.CRLF (SMTP smuggling).
            self.nul = true;
            self.line_len += 1;
            return;
        }
        if self.line_len == 0 && b == b'.' && self.dots {
            self.first_dot = true;
        } else {
            self.emit(&[b]);
        }
        self.line_len += 1;
        if self.line_len > MAX_LINE {
            self.long = true;
        }
    }

    fn bare_cr(&mut self) {
        self.bare = true;
        match self.mode {
            BareNewlines::Normalize => self.end_line(false),
            BareNewlines::Reject => {
                self.emit(b"\r");
                self.line_len += 1;
            }
        }
    }

    /// Feeds bytes; returns `Some(n)` when the terminator ends within `input`, `n` being how
    /// many bytes of `input` the message used (the rest belongs to the next command).
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            if !self.pending_cr && self.line_len > 0 && b != b'\r' && b != b'\n' && b != 0 {
                // Inside a line: copy the whole run up to the next CR, LF or NUL at once.
                let start = i - 1;
                let run = input[start..]
                    .iter()
                    .position(|&c| c == b'\r' || c == b'\n' || c == 0)
                    .unwrap_or(input.len() - start);
                self.emit(&input[start..start + run]);
                self.line_len += run;
                if self.line_len > MAX_LINE {
                    self.long = true;
                }
                i = start + run;
                continue;
            }
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    if self.dots && self.first_dot && self.line_len == 1 && self.prev_proper {
                        return Some(i);
                    }
                    self.end_line(true);
                    continue;
                }
                self.bare_cr();
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    self.bare = true;
                    self.end_line(false);
                }
                _ => self.byte(b),
            }
        }
        None
    }

    /// Ends BDAT content (a trailing bare CR counts as bare) and returns the message with
    /// the memory it holds.
    pub fn finish(mut self) -> Result<(Vec<u8>, Charge), Problem> {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare_cr();
        }
        if self.line_len > 0 || self.first_dot {
            // Content must end with a line end; add the missing CRLF.
            self.end_line(true);
        }
        self.into_message()
    }

    /// The first problem seen so far, in order of precedence.
    pub fn problem(&self) -> Option<Problem> {
        let reject = self.mode == BareNewlines::Reject;
        if self.too_big {
            Some(Problem::TooBig)
        } else if self.no_memory {
            Some(Problem::NoMemory)
        } else if self.nul && reject {
            Some(Problem::Nul)
        } else if self.bare && reject {
            Some(Problem::BareNewline)
        } else if self.long {
            Some(Problem::LineTooLong)
        } else {
            None
        }
    }

    /// The decoded message (for DATA, once [`Decoder::feed`] found the end), prefix
    /// included, with the memory it holds.
    pub fn into_message(self) -> Result<(Vec<u8>, Charge), Problem> {
        match self.problem() {
            Some(p) => Err(p),
            None => Ok((self.out, self.charge)),
        }
    }
}

/// Dot-stuffs canonical CRLF text for DATA a piece at a time, so a large message is sent
/// without a stuffed copy of it in memory.
#[derive(Debug)]
pub struct Stuffer {
    at_line_start: bool,
    last: Option<u8>,
}

impl Default for Stuffer {
    fn default() -> Stuffer {
        Stuffer {
            at_line_start: true,
            last: None,
        }
    }
}

impl Stuffer {
    /// Appends `piece`, stuffed, to `out`.
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + 16);
        let mut start = 0;
        for (i, &b) in piece.iter().enumerate() {
            if self.at_line_start && b == b'.' {
                out.extend_from_slice(&piece[start..i]);
                out.push(b'.');
                start = i;
            }
            self.at_line_start = b == b'\n';
        }
        out.extend_from_slice(&piece[start..]);
        if let Some(&b) = piece.last() {
            self.last = Some(b);
        }
    }

    /// Ends the content with a line end if it lacks one, and the terminator.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.last.is_some() && !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Dot-stuffs a whole message and appends the terminator.
pub fn stuff(message: &[u8], out: &mut Vec<u8>) {
    let mut s = Stuffer::default();
    s.feed(message, out);
    s.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn start(mode: BareNewlines, max_size: usize) -> Start {
        Start {
            mode,
            max_size,
            prefix: Vec::new(),
            expected: None,
            charge: MemoryBudget::new(1 << 30, 1 << 20).charge(CLIENT),
        }
    }

    fn message(r: Result<(Vec<u8>, Charge), Problem>) -> Result<Vec<u8>, Problem> {
        r.map(|(m, _)| m)
    }

    fn data(mode: BareNewlines, input: &[u8]) -> (Option<usize>, Result<Vec<u8>, Problem>) {
        let mut d = Decoder::data(start(mode, 1 << 20));
        let end = d.feed(input);
        (end, message(d.into_message()))
    }

    #[test]
    fn plain_message_and_unstuffing() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        let (end, msg) = data(BareNewlines::Reject, input);
        assert_eq!(end, Some(input.len() - 6));
        assert_eq!(msg.unwrap(), b"Subject: x\r\n\r\n.leading dot\r\n");
        // An empty message.
        assert_eq!(data(BareNewlines::Reject, b".\r\n"), (Some(3), Ok(vec![])));
    }

    #[test]
    fn smuggling_variants_never_end_the_message() {
        let variants: [&[u8]; 8] = [
            b"a\r\n.\0\r\nMAIL FROM:<x@evil>\r\n",
            b"a\r\n\0.\r\nMAIL FROM:<x@evil>\r\n",
            b"a\n.\nMAIL FROM:<x@evil>\r\n",
            b"a\r.\rMAIL FROM:<x@evil>\r\n",
            b"a\n.\r\nMAIL FROM:<x@evil>\r\n",
            b"a\r\n.\nMAIL FROM:<x@evil>\r\n",
            b"a\r.\r\nMAIL FROM:<x@evil>\r\n",
            b"a\r\n.\rMAIL FROM:<x@evil>\r\n",
        ];
        for v in variants {
            for mode in [BareNewlines::Reject, BareNewlines::Normalize] {
                let mut d = Decoder::data(start(mode, 1 << 20));
                assert_eq!(
                    d.feed(v),
                    None,
                    "{:?} ended the message in {mode:?}",
                    String::from_utf8_lossy(v)
                );
                // Only a real CRLF.CRLF ends it, and everything before stays in the message.
                assert_eq!(d.feed(b".\r\n"), Some(3));
                match (mode, message(d.into_message())) {
                    (BareNewlines::Reject, r) => assert!(
                        matches!(r, Err(Problem::BareNewline | Problem::Nul)),
                        "{r:?}"
                    ),
                    (BareNewlines::Normalize, Ok(m)) => {
                        let text = String::from_utf8(m).unwrap();
                        assert!(text.contains("MAIL FROM:<x@evil>\r\n"), "{text:?}");
                        assert!(
                            !text.replace("\r\n", "").contains(['\r', '\n']),
                            "canonical: {text:?}"
                        );
                    }
                    (m, r) => panic!("{m:?}: {r:?}"),
                }
            }
        }
    }

    #[test]
    fn limits() {
        let mut d = Decoder::data(start(BareNewlines::Reject, 10));
        assert!(d.feed(b"0123456789abcdef\r\n.\r\n").is_some());
        assert_eq!(message(d.into_message()), Err(Problem::TooBig));
        let mut long = vec![b'x'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            data(BareNewlines::Reject, &long).1,
            Err(Problem::LineTooLong)
        );
        let mut ok = vec![b'x'; MAX_LINE];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(data(BareNewlines::Reject, &ok).1.is_ok());
    }

    #[test]
    fn bdat_checks_newlines_without_dots() {
        let mut d = Decoder::bdat(start(BareNewlines::Reject, 1 << 20));
        assert_eq!(d.feed(b"a\r\n.\r\nb\r\n"), None);
        assert_eq!(message(d.finish()).unwrap(), b"a\r\n.\r\nb\r\n");
        let mut d = Decoder::bdat(start(BareNewlines::Reject, 1 << 20));
        d.feed(b"a\nb");
        assert_eq!(message(d.finish()), Err(Problem::BareNewline));
        let mut d = Decoder::bdat(start(BareNewlines::Normalize, 1 << 20));
        d.feed(b"a\nb\r");
        assert_eq!(message(d.finish()).unwrap(), b"a\r\nb\r\n");
    }

    #[test]
    fn nul_is_refused_or_removed() {
        let (end, msg) = data(BareNewlines::Reject, b"a\0b\r\n.\r\n");
        assert_eq!((end, msg), (Some(8), Err(Problem::Nul)));
        let (_, msg) = data(BareNewlines::Normalize, b"a\0b\r\n\0\r\n.\r\n");
        assert_eq!(msg.unwrap(), b"ab\r\n\r\n");
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn memory_is_charged_and_given_back() {
        let budget = MemoryBudget::new(200 * 1024, 100 * 1024);
        let mut s = start(BareNewlines::Reject, 1 << 20);
        s.prefix = b"Received: x\r\n".to_vec();
        s.charge = budget.charge(CLIENT);
        let mut d = Decoder::data(s);
        let line = [b'x'; 998];
        for _ in 0..100 {
            d.feed(&line);
            d.feed(b"\r\n");
        }
        assert!(d.feed(b".\r\n").is_some());
        let (m, charge) = d.into_message().unwrap();
        assert!(
            m.starts_with(b"Received: x\r\nxxx"),
            "the prefix comes first"
        );
        assert!(budget.used() >= m.len(), "{} < {}", budget.used(), m.len());
        assert!(!budget.exhausted(CLIENT));
        // A second message does not fit beside the first: refused as a temporary failure.
        let mut s = start(BareNewlines::Reject, 1 << 20);
        s.charge = budget.charge("192.0.2.2".parse().unwrap());
        let mut d = Decoder::data(s);
        for _ in 0..150 {
            d.feed(&line);
            d.feed(b"\r\n");
        }
        d.feed(b".\r\n");
        assert_eq!(message(d.into_message()), Err(Problem::NoMemory));
        drop(charge);
        assert_eq!(budget.used(), 0, "every charge is given back");
    }

    #[test]
    fn one_client_holds_a_share_of_the_memory_and_others_the_rest() {
        // 8 MiB in all, messages up to 256 KiB: a client may hold 1 MiB.
        let budget = MemoryBudget::new(8 << 20, 256 << 10);
        let hog: IpAddr = "2001:db8::1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut c = budget.charge(hog);
            assert!(c.cover(256 << 10));
            held.push(c);
        }
        // Its fifth message does not fit, from any address of its /64; it is refused up
        // front, and mid-transfer.
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(budget.exhausted(neighbour));
        assert!(!budget.charge(neighbour).cover(1));
        // Anyone else still has room, and the hog again once it lets go.
        assert!(!budget.exhausted(CLIENT));
        assert!(budget.charge(CLIENT).cover(256 << 10));
        held.pop();
        assert!(!budget.exhausted(hog));
        drop(held);
        assert_eq!(budget.used(), 0);
        assert!(
            budget.clients.lock().unwrap().is_empty(),
            "nothing left behind"
        );
        // Transfers of one client racing for its share: the one that crosses it gives its
        // memory back at once, so the others finish (not all four refused).
        let mut racing: Vec<Decoder> = (0..4)
            .map(|_| {
                let mut s = start(BareNewlines::Reject, 1 << 20);
                s.charge = budget.charge(hog);
                Decoder::data(s)
            })
            .collect();
        let line = [b'x'; 998];
        for _ in 0..300 {
            for d in &mut racing {
                d.feed(&line);
                d.feed(b"\r\n");
            }
        }
        let ended: Vec<_> = racing
            .into_iter()
            .map(|mut d| {
                assert!(d.feed(b".\r\n").is_some());
                d.into_message().map(|(m, _)| m.len())
            })
            .collect();
        assert_eq!(
            ended
                .iter()
                .filter(|r| **r == Err(Problem::NoMemory))
                .count(),
            1,
            "{ended:?}"
        );
        assert_eq!(budget.used(), 0);
        // A client may always send one message of the largest size, however small the
        // budget's eighth.
        let small = MemoryBudget::new(1 << 20, 512 << 10);
        assert!(small.charge(CLIENT).cover(512 << 10));
    }

    #[test]
    fn stuffing() {
        let mut out = Vec::new();
        stuff(b".a\r\nb\r\n.\r\n", &mut out);
        assert_eq!(out, b"..a\r\nb\r\n..\r\n.\r\n");
        out.clear();
        stuff(b"no end", &mut out);
        assert_eq!(out, b"no end\r\n.\r\n");
    }

    proptest! {
        /// Whatever the message, stuffing it and decoding it gives it back, however the
        /// bytes are split into reads.
        #[test]
        fn stuff_then_decode_round_trips(lines in proptest::collection::vec("[ -~]{0,60}", 0..20), split in 0usize..2000, piece in 1usize..50) {
            let msg: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let mut wire = Vec::new();
            // Stuffed a piece at a time, as the relay client sends it.
            let mut stuffer = Stuffer::default();
            for p in msg.chunks(piece) {
                stuffer.feed(p, &mut wire);
            }
            stuffer.finish(&mut wire);
            let mut whole = Vec::new();
            stuff(&msg, &mut whole);
            prop_assert_eq!(&wire, &whole);
            let split = split.min(wire.len());
            let mut d = Decoder::data(start(BareNewlines::Reject, 1 << 20));
            let end = match d.feed(&wire[..split]) {
                Some(n) => Some(n),
                None => d.feed(&wire[split..]).map(|n| n + split),
            };
            prop_assert_eq!(end, Some(wire.len()));
            prop_assert_eq!(message(d.into_message()).unwrap(), msg);
        }

        /// Arbitrary input never panics, and a normalised message is always canonical CRLF.
        #[test]
        fn normalised_output_is_canonical(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..300)) {
            let mut d = Decoder::data(start(BareNewlines::Normalize, 1 << 20));
            let end = d.feed(&input);
            if let Some(n) = end {
                prop_assert!(input[..n].ends_with(b".\r\n"));
            }
            if let Ok(m) = message(d.into_message()) {
                prop_assert!(!m.contains(&0));
                let mut prev = 0u8;
                for (i, &b) in m.iter().enumerate() {
                    if b == b'\n' { prop_assert_eq!(prev, b'\r'); }
                    if prev == b'\r' { prop_assert_eq!(b, b'\n', "bare CR at {}", i); }
                    prev = b;
                }
            }
        }
    }
}
