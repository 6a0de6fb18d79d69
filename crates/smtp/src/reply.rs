//! SMTP replies: the value both sides pass around, its wire form, and a parser for the
//! client side.

use std::fmt;

/// One SMTP reply: a code and its text lines (the enhanced status code, when there is one,
/// starts the first line's text, as on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

/// The most characters of text in one reply line (512 octets with code and CRLF).
const MAX_TEXT: usize = 506;

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx, or anything that is not a valid final reply.
    pub fn is_transient(&self) -> bool {
        !(self.is_positive() || self.is_permanent() || self.code == 354)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form (CRLF line ends, `-` continuation) to `out`. Texts may quote
    /// what a sender chose (a file name, a link's host): anything but printable ASCII
    /// becomes `?`, so no line break, control or direction character reaches the client,
    /// and a line stops at RFC 5321's 512 octets.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let text = self.lines.get(i).map_or("", String::as_str);
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            out.extend(text.chars().take(MAX_TEXT).map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c as u8
                } else {
                    b'?'
                }
            }));
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply code changed within a multi-line reply")]
    CodeChanged,
}

/// Collects the lines of one (possibly multi-line) reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// Feeds one line without its line end; returns the reply when it was the last line.
    pub fn line(&mut self, line: &[u8]) -> Result<Option<Reply>, ParseError> {
        let text = String::from_utf8_lossy(line);
        let malformed = || ParseError::Malformed(text.chars().take(80).collect());
        if line.len() < 3
            || !line[..3].iter().all(u8::is_ascii_digit)
            || line[0] < b'2'
            || line[0] > b'5'
        {
            return Err(malformed());
        }
        let code: u16 = text[..3].parse().map_err(|_| malformed())?;
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(malformed()),
        };
        if *self.code.get_or_insert(code) != code {
            return Err(ParseError::CodeChanged);
        }
        self.lines.push(text.get(4..).unwrap_or("").to_string());
        if last {
            self.code = None;
            Ok(Some(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoted_text_cannot_break_the_line_or_run_long() {
        let r = Reply::new(550, "5.7.1 attachment a\r\n250 ok\u{202e}fdp.exe");
        let mut wire = Vec::new();
        r.write_to(&mut wire);
        assert_eq!(wire, b"550 5.7.1 attachment a??250 ok?fdp.exe\r\n");
        let mut wire = Vec::new();
        Reply::new(550, "x".repeat(2000)).write_to(&mut wire);
        assert_eq!(wire.len(), 512);
    }

    #[test]
    fn multi_line_round_trip() {
        let r = Reply {
            code: 250,
            lines: vec!["mx.example".into(), "PIPELINING".into(), "SIZE 100".into()],
        };
        let mut wire = Vec::new();
        r.write_to(&mut wire);
        assert_eq!(
            wire,
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
        let mut p = ReplyParser::default();
        let mut got = None;
        for l in wire.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            got = p.line(l.strip_suffix(b"\r").unwrap()).unwrap();
        }
        assert_eq!(got, Some(r));
    }

    #[test]
    fn rejects_garbage() {
        let mut p = ReplyParser::default();
        assert!(p.line(b"hello").is_err());
        assert!(p.line(b"2500 x").is_err());
        assert!(p.line(b"999 x").is_err());
        assert!(p.line(b"250-a").unwrap().is_none());
        assert_eq!(p.line(b"251 b"), Err(ParseError::CodeChanged));
        assert_eq!(
            ReplyParser::default().line(b"220").unwrap().unwrap().code,
            220
        );
    }

    proptest! {
        #[test]
        fn any_reply_round_trips(code in 200u16..600, lines in proptest::collection::vec("[ -~]{0,40}", 1..5)) {
            let r = Reply { code, lines };
            let mut wire = Vec::new();
            r.write_to(&mut wire);
            let mut p = ReplyParser::default();
            let mut got = None;
            for l in wire.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                prop_assert!(got.is_none());
                got = p.line(l.strip_suffix(b"\r").unwrap()).unwrap();
            }
            prop_assert_eq!(got, Some(r));
        }

        #[test]
        fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ReplyParser::default().line(&line);
        }
    }
}
