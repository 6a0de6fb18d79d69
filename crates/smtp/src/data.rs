//! Message content decoding: the end of DATA, dot-unstuffing, bare CR/LF, line and size
//! limits, and the inverse (dot-stuffing) for the relay client.
//!
//! The SMTP-smuggling defence lives here: a message ends only at `CRLF . CRLF` where both
//! line ends are real CRLF pairs. `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`
//! and the like never end or split a message; they are refused or normalised, as configured.

use config::BareNewlines;

/// The longest text line RFC 5321 allows, without its CRLF.
pub const MAX_LINE: usize = 998;

/// What was wrong with received content (first problem wins in [`Decoder::problem`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    BareNewline,
    LineTooLong,
    TooBig,
}

/// Decodes message content, either DATA (dot-terminated, dot-stuffed) or BDAT chunks
/// (length-framed), into canonical CRLF text.
#[derive(Debug)]
pub struct Decoder {
    mode: BareNewlines,
    dots: bool,
    max_size: usize,
    out: Vec<u8>,
    line_len: usize,
    /// The current line began with a '.', which was held back.
    first_dot: bool,
    /// The last byte was CR, not yet known to be part of CRLF.
    pending_cr: bool,
    /// The previous line ended with a real CRLF (the DATA command line counts).
    prev_proper: bool,
    bare: bool,
    long: bool,
    too_big: bool,
}

impl Decoder {
    /// For DATA: ends at `CRLF.CRLF`, removes dot-stuffing.
    pub fn data(mode: BareNewlines, max_size: usize) -> Decoder {
        Decoder::new(mode, max_size, true)
    }

    /// For BDAT: no terminator, no dot handling.
    pub fn bdat(mode: BareNewlines, max_size: usize) -> Decoder {
        Decoder::new(mode, max_size, false)
    }

    fn new(mode: BareNewlines, max_size: usize, dots: bool) -> Decoder {
        Decoder {
            mode,
            dots,
            max_size,
            out: Vec::with_capacity(8192),
            line_len: 0,
            first_dot: false,
            pending_cr: false,
            prev_proper: true,
            bare: false,
            long: false,
            too_big: false,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.out.len() + bytes.len() > self.max_size {
            self.too_big = true;
        } else {
            self.out.extend_from_slice(bytes);
        }
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
            if !self.pending_cr && self.line_len > 0 && b != b'\r' && b != b'\n' {
                // Inside a line: copy the whole run up to the next CR or LF at once.
                let start = i - 1;
                let run = input[start..]
                    .iter()
                    .position(|&c| c == b'\r' || c == b'\n')
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

    /// Ends BDAT content (a trailing bare CR counts as bare) and returns the message.
    pub fn finish(mut self) -> Result<Vec<u8>, Problem> {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare_cr();
        }
        if self.line_len > 0 || self.first_dot {
            // Content must end with a line end; add the missing CRLF.
            self.end_line(true);
        }
        match self.problem() {
            Some(p) => Err(p),
            None => Ok(self.out),
        }
    }

    /// The first problem seen so far, in order of precedence.
    pub fn problem(&self) -> Option<Problem> {
        if self.too_big {
            Some(Problem::TooBig)
        } else if self.bare && self.mode == BareNewlines::Reject {
            Some(Problem::BareNewline)
        } else if self.long {
            Some(Problem::LineTooLong)
        } else {
            None
        }
    }

    /// The decoded message (for DATA, once [`Decoder::feed`] found the end).
    pub fn into_message(self) -> Result<Vec<u8>, Problem> {
        match self.problem() {
            Some(p) => Err(p),
            None => Ok(self.out),
        }
    }
}

/// Dot-stuffs canonical CRLF text for DATA and appends the terminator.
pub fn stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + 64);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(mode: BareNewlines, input: &[u8]) -> (Option<usize>, Result<Vec<u8>, Problem>) {
        let mut d = Decoder::data(mode, 1 << 20);
        let end = d.feed(input);
        (end, d.into_message())
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
        let variants: [&[u8]; 6] = [
            b"a\n.\nMAIL FROM:<x@evil>\r\n",
            b"a\r.\rMAIL FROM:<x@evil>\r\n",
            b"a\n.\r\nMAIL FROM:<x@evil>\r\n",
            b"a\r\n.\nMAIL FROM:<x@evil>\r\n",
            b"a\r.\r\nMAIL FROM:<x@evil>\r\n",
            b"a\r\n.\rMAIL FROM:<x@evil>\r\n",
        ];
        for v in variants {
            for mode in [BareNewlines::Reject, BareNewlines::Normalize] {
                let mut d = Decoder::data(mode, 1 << 20);
                assert_eq!(
                    d.feed(v),
                    None,
                    "{:?} ended the message in {mode:?}",
                    String::from_utf8_lossy(v)
                );
                // Only a real CRLF.CRLF ends it, and everything before stays in the message.
                assert_eq!(d.feed(b".\r\n"), Some(3));
                match (mode, d.into_message()) {
                    (BareNewlines::Reject, r) => assert_eq!(r, Err(Problem::BareNewline)),
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
        let mut d = Decoder::data(BareNewlines::Reject, 10);
        assert!(d.feed(b"0123456789abcdef\r\n.\r\n").is_some());
        assert_eq!(d.into_message(), Err(Problem::TooBig));
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
        let mut d = Decoder::bdat(BareNewlines::Reject, 1 << 20);
        assert_eq!(d.feed(b"a\r\n.\r\nb\r\n"), None);
        assert_eq!(d.finish().unwrap(), b"a\r\n.\r\nb\r\n");
        let mut d = Decoder::bdat(BareNewlines::Reject, 1 << 20);
        d.feed(b"a\nb");
        assert_eq!(d.finish(), Err(Problem::BareNewline));
        let mut d = Decoder::bdat(BareNewlines::Normalize, 1 << 20);
        d.feed(b"a\nb\r");
        assert_eq!(d.finish().unwrap(), b"a\r\nb\r\n");
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
        fn stuff_then_decode_round_trips(lines in proptest::collection::vec("[ -~]{0,60}", 0..20), split in 0usize..2000) {
            let msg: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let mut wire = Vec::new();
            stuff(&msg, &mut wire);
            let split = split.min(wire.len());
            let mut d = Decoder::data(BareNewlines::Reject, 1 << 20);
            let end = match d.feed(&wire[..split]) {
                Some(n) => Some(n),
                None => d.feed(&wire[split..]).map(|n| n + split),
            };
            prop_assert_eq!(end, Some(wire.len()));
            prop_assert_eq!(d.into_message().unwrap(), msg);
        }

        /// Arbitrary input never panics, and a normalised message is always canonical CRLF.
        #[test]
        fn normalised_output_is_canonical(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..300)) {
            let mut d = Decoder::data(BareNewlines::Normalize, 1 << 20);
            let end = d.feed(&input);
            if let Some(n) = end {
                prop_assert!(input[..n].ends_with(b".\r\n"));
            }
            if let Ok(m) = d.into_message() {
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
