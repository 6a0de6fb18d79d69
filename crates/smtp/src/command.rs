//! The SMTP command grammar the server accepts: one client line in, one typed command (or
//! the reply that refuses it) out. RFC 5321 section 4.1 with the ESMTP parameters of
//! SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461, RFC 6533) and
//! CHUNKING (RFC 3030).
//!
//! Hand-written rather than taken from smtp-proto, whose parser lost what a relay must keep:
//! it removed the quotes of quoted local parts, read `<postmaster>` as the null path,
//! replaced invalid UTF-8, skipped CRs inside addresses, saturated or wrapped BDAT sizes
//! (so the octets after a "chunk" ran as commands), and decoded ORCPT without its address
//! type. Here an address is kept exactly as the client wrote it, every parameter is
//! checked strictly, and a line that is not valid UTF-8, or holds a control character, is
//! refused rather than rewritten.

use crate::Reply;
use crate::server::notify;

/// The longest path between `<` and `>` (RFC 5321 section 4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// The longest ENVID (RFC 3461 section 4.4).
const MAX_ENVID: usize = 100;
/// The longest ORCPT value (RFC 3461 section 4.2: 500 characters).
const MAX_ORCPT: usize = 500;

/// An address as the client wrote it (after any source route), split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Exactly as received, quoting included: what is stored and relayed.
    pub raw: String,
    /// The local part with the quoting removed (for policy: relay tricks, recipient lists).
    pub local: String,
    /// The domain as written (a host name or an address literal).
    pub domain: String,
}

/// What RCPT names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Mailbox(Mailbox),
    /// `<postmaster>` without a domain (RFC 5321 section 4.5.1).
    Postmaster,
}

/// The BODY parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    Unspecified,
    SevenBit,
    EightBitMime,
}

/// The DSN RET parameter (RFC 3461 section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// MAIL FROM with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// `None` for the null reverse-path `<>`.
    pub sender: Option<Mailbox>,
    /// SIZE, saturated at `u64::MAX` when it does not fit (it is then too big anyway).
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID exactly as received (xtext).
    pub envid: Option<String>,
}

/// RCPT TO with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub path: ForwardPath,
    /// [`notify`] flags; zero when NOTIFY was not given.
    pub notify: u8,
    /// ORCPT exactly as received: `addr-type;xtext`.
    pub orcpt: Option<String>,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    /// A BDAT chunk of exactly `size` octets follows the command line.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// A real SMTP command this server does not offer (EXPN, AUTH, ETRN, ...).
    NotImplemented,
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: Reply,
    /// The session cannot go on safely: what follows the line cannot be told apart from
    /// commands (a BDAT whose size is unknown).
    pub close: bool,
}

fn refuse<T>(code: u16, text: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        reply: Reply::new(code, text),
        close: false,
    })
}

/// Whether a line is meant as BDAT: "BDAT" and then anything but a letter (a space, but
/// also a tab, a NUL, a digit), so a malformed BDAT is never taken for another command and
/// its chunk never read as commands.
pub fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && line.get(4).is_none_or(|b| !b.is_ascii_alphabetic())
}

/// Parses one command line (its line end included, CRLF or LF).
pub fn parse(line: &[u8]) -> Result<Command, Refusal> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let verb_end = body.iter().position(|&b| b == b' ').unwrap_or(body.len());
    let verb = body[..verb_end].to_ascii_uppercase();
    let is_bdat = is_bdat(body);
    let address_command = verb == b"MAIL" || verb == b"RCPT";
    let result = parse_checked(&verb, body, verb_end);
    match result {
        Err(mut r) if is_bdat => {
            // The octets after a BDAT line are content of an unknown length: reading them as
            // commands would be SMTP smuggling, skipping them is guesswork. Close.
            r.close = true;
            Err(r)
        }
        Err(r) if address_command && std::str::from_utf8(body).is_err() => Err(Refusal {
            reply: Reply::new(553, "5.6.7 Malformed UTF-8 in address"),
            ..r
        }),
        other => other,
    }
}

fn parse_checked(verb: &[u8], body: &[u8], verb_end: usize) -> Result<Command, Refusal> {
    let Ok(text) = std::str::from_utf8(body) else {
        return match verb {
            b"EHLO" | b"HELO" => refuse(501, "5.5.4 Invalid UTF-8 in the host name"),
            _ => refuse(500, "5.5.2 Invalid UTF-8 in command"),
        };
    };
    if text.chars().any(char::is_control) {
        return match verb {
            b"EHLO" | b"HELO" => refuse(501, "5.5.4 Control characters in the host name"),
            _ => refuse(500, "5.5.2 Control characters in command (bare CR or NUL?)"),
        };
    }
    let args = text[verb_end..].trim_start_matches(' ');
    let no_args = |cmd: Command, name: &str| {
        if args.trim_end().is_empty() {
            Ok(cmd)
        } else {
            refuse(501, format!("5.5.4 Syntax: {name} takes no argument"))
        }
    };
    match verb {
        b"EHLO" | b"HELO" => {
            let host = args.trim_end();
            if host.is_empty() || host.len() > 255 {
                let name = String::from_utf8_lossy(verb);
                return refuse(501, format!("5.5.4 Syntax: {name} hostname"));
            }
            Ok(if verb == b"EHLO" {
                Command::Ehlo(host.to_string())
            } else {
                Command::Helo(host.to_string())
            })
        }
        b"MAIL" => mail(args),
        b"RCPT" => rcpt(args),
        b"DATA" => no_args(Command::Data, "DATA"),
        b"BDAT" => bdat(args),
        b"RSET" => no_args(Command::Rset, "RSET"),
        b"QUIT" => no_args(Command::Quit, "QUIT"),
        b"STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
        b"NOOP" => Ok(Command::Noop),
        b"VRFY" => Ok(Command::Vrfy),
        b"HELP" => Ok(Command::Help),
        b"EXPN" | b"AUTH" | b"ETRN" | b"ATRN" | b"TURN" | b"SEND" | b"SOML" | b"SAML" | b"VERB"
        | b"XCLIENT" | b"XFORWARD" | b"BURL" => Ok(Command::NotImplemented),
        _ => refuse(500, "5.5.1 Unrecognized command"),
    }
}

/// `BDAT SP chunk-size [SP "LAST"]`, chunk-size being digits only.
fn bdat(args: &str) -> Result<Command, Refusal> {
    let syntax = || refuse(501, "5.5.4 Syntax: BDAT chunk-size [LAST]");
    let mut words = args.split(' ');
    let size = words.next().unwrap_or("");
    let last = match (words.next(), words.next()) {
        (None, _) => false,
        (Some(w), None) if w.eq_ignore_ascii_case("LAST") => true,
        _ => return syntax(),
    };
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return syntax();
    }
    match size.parse::<u64>() {
        Ok(size) => Ok(Command::Bdat { size, last }),
        // Twenty digits past u64::MAX: certainly beyond any message size limit.
        Err(_) => Ok(Command::Bdat {
            size: u64::MAX,
            last,
        }),
    }
}

/// Strips `prefix` (ASCII, any case) from the start of `s`.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<path> params` into the text between the brackets and the rest. Quoted strings
/// may hold `>`; a backslash quotes the next character inside them.
fn bracketed(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '>' && !quoted {
            return Some((&inner[..i], &inner[i + 1..]));
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// A local part: a dot-string, or a quoted string (whose content is returned unquoted).
fn local_part(s: &str) -> Option<String> {
    if let Some(q) = s.strip_prefix('"') {
        let q = q.strip_suffix('"')?;
        let mut out = String::with_capacity(q.len());
        let mut chars = q.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let n = chars.next()?;
                    if n.is_ascii() && !(' '..='~').contains(&n) {
                        return None;
                    }
                    out.push(n);
                }
                '"' => return None,
                c if c.is_ascii() && !(' '..='~').contains(&c) => return None,
                c => out.push(c),
            }
        }
        return Some(out);
    }
    let ok = !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext));
    ok.then(|| s.to_string())
}

/// A domain as far as the grammar goes: an address literal, or dot-separated labels of
/// letters, digits, hyphens and (under SMTPUTF8) non-ASCII characters. A trailing dot is
/// let through: policy refuses it, with a clearer reply than a syntax error.
fn domain(s: &str) -> bool {
    if let Some(lit) = s.strip_prefix('[') {
        return lit.strip_suffix(']').is_some_and(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| ('!'..='~').contains(&c) && c != '[' && c != ']' && c != '\\')
        });
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// A path's content: `[source-route ":"] mailbox`; the source route is dropped (RFC 5321
/// section 4.1.1.3: accepted and ignored).
fn mailbox(content: &str) -> Option<Mailbox> {
    let rest = if content.starts_with('@') {
        let (route, rest) = content.split_once(':')?;
        let hops_ok = route
            .split(',')
            .all(|hop| hop.strip_prefix('@').is_some_and(domain));
        if !hops_ok {
            return None;
        }
        rest
    } else {
        content
    };
    // The domain follows the last '@' outside the local part; a quoted local part may hold
    // '@' itself.
    let at = if rest.starts_with('"') {
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices().skip(1) {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                close = Some(i);
                break;
            }
        }
        let close = close?;
        (rest[close + 1..].starts_with('@')).then_some(close + 1)?
    } else {
        rest.find('@')?
    };
    let (raw_local, dom) = (&rest[..at], &rest[at + 1..]);
    let local = local_part(raw_local)?;
    if !domain(dom) {
        return None;
    }
    Some(Mailbox {
        raw: rest.to_string(),
        local,
        domain: dom.to_string(),
    })
}

/// Reads `FROM:` or `TO:` and the path: the text between the brackets and what follows.
fn path<'a>(
    args: &'a str,
    keyword: &str,
    syntax: &'static str,
) -> Result<(&'a str, &'a str), Refusal> {
    let Some(after) = strip_prefix_ci(args, keyword) else {
        return refuse(501, format!("5.5.4 Syntax: {syntax}"));
    };
    // Postfix and most servers allow spaces before the path; so do we.
    let after = after.trim_start_matches(' ');
    let Some((content, rest)) = bracketed(after) else {
        return refuse(501, format!("5.5.4 Syntax: {syntax}"));
    };
    if content.len() > MAX_PATH {
        return refuse(501, "5.5.4 Path too long");
    }
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return refuse(501, format!("5.5.4 Syntax: {syntax}"));
    }
    Ok((content, rest))
}

/// `keyword[=value]` pairs, keywords upper-cased; duplicates refused.
fn params(rest: &str) -> Result<Vec<(String, Option<&str>)>, Refusal> {
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for word in rest.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value: printable ASCII but '=' (and UTF-8 under RFC 6531).
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.chars().all(|c| c > ' ' && c != '=' && c != '\u{7f}')
        });
        if !key_ok || !value_ok {
            return refuse(501, format!("5.5.4 Bad parameter syntax {word:?}"));
        }
        let key = key.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return refuse(501, format!("5.5.4 Duplicate parameter {key}"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Whether `s` is RFC 3461 xtext: printable ASCII but '+' and '=', and `+HH` hex escapes.
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |x: Option<&u8>| {
                    x.is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                };
                if !(hex(b.get(i + 1)) && hex(b.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if b[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decodes xtext (`+HH` escapes); anything that is not valid xtext is returned as it is.
pub fn decode_xtext(s: &str) -> String {
    if !is_xtext(s) {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("3F");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mail(args: &str) -> Result<Command, Refusal> {
    const SYNTAX: &str = "MAIL FROM:<address> [parameters]";
    let (content, rest) = path(args, "FROM:", SYNTAX)?;
    let sender = if content.is_empty() {
        None
    } else {
        match mailbox(content) {
            Some(m) => Some(m),
            None => return refuse(501, "5.1.7 Bad sender address syntax"),
        }
    };
    let mut m = MailFrom {
        sender,
        size: None,
        body: Body::Unspecified,
        smtputf8: false,
        ret: None,
        envid: None,
    };
    for (key, value) in params(rest)? {
        let bad = || refuse(501, format!("5.5.4 Invalid parameter {key}"));
        match (key.as_str(), value) {
            ("SIZE", Some(v)) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
                m.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => m.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                m.body = Body::EightBitMime;
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                return refuse(555, "5.5.4 BODY=BINARYMIME is not supported");
            }
            ("SMTPUTF8", None) => m.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => m.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => m.ret = Some(Ret::Headers),
            ("ENVID", Some(v)) if v.len() <= MAX_ENVID && is_xtext(v) => {
                m.envid = Some(v.to_string());
            }
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID", _) => return bad(),
            _ => return refuse(555, format!("5.5.4 Unsupported parameter {key}")),
        }
    }
    Ok(Command::Mail(m))
}

/// An ORCPT value: `addr-type ";" xtext` (RFC 3461), or `utf-8;` with the UTF-8 forms of
/// RFC 6533; checked, and kept exactly as received.
fn orcpt(v: &str) -> bool {
    let Some((kind, address)) = v.split_once(';') else {
        return false;
    };
    let kind_ok = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !kind_ok || address.is_empty() || v.len() > MAX_ORCPT {
        return false;
    }
    if kind.eq_ignore_ascii_case("utf-8") {
        // utf-8-addr-xtext / utf-8-addr-unitext: printable, '\x{HEX}' escapes; the
        // parameter check already refused spaces, controls and '='.
        return true;
    }
    is_xtext(address)
}

fn rcpt(args: &str) -> Result<Command, Refusal> {
    const SYNTAX: &str = "RCPT TO:<address> [parameters]";
    let (content, rest) = path(args, "TO:", SYNTAX)?;
    let path = if content.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        match mailbox(content) {
            Some(m) => ForwardPath::Mailbox(m),
            None => return refuse(501, "5.1.3 Bad recipient address syntax"),
        }
    };
    let mut r = RcptTo {
        path,
        notify: 0,
        orcpt: None,
    };
    for (key, value) in params(rest)? {
        let bad = || refuse(501, format!("5.5.4 Invalid parameter {key}"));
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                for word in v.split(',') {
                    r.notify |= match word.to_ascii_uppercase().as_str() {
                        "NEVER" => notify::NEVER,
                        "SUCCESS" => notify::SUCCESS,
                        "FAILURE" => notify::FAILURE,
                        "DELAY" => notify::DELAY,
                        _ => return bad(),
                    };
                }
                if r.notify & notify::NEVER != 0 && r.notify != notify::NEVER {
                    return refuse(
                        501,
                        "5.5.4 NOTIFY=NEVER cannot be combined with other values",
                    );
                }
            }
            ("ORCPT", Some(v)) if orcpt(v) => r.orcpt = Some(v.to_string()),
            ("NOTIFY" | "ORCPT", _) => return bad(),
            _ => return refuse(555, format!("5.5.4 Unsupported parameter {key}")),
        }
    }
    Ok(Command::Rcpt(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(line: &str) -> Result<Command, Refusal> {
        parse(format!("{line}\r\n").as_bytes())
    }

    fn code(line: &str) -> u16 {
        p(line).unwrap_err().reply.code
    }

    fn rcpt_box(line: &str) -> Mailbox {
        match p(line).unwrap() {
            Command::Rcpt(RcptTo {
                path: ForwardPath::Mailbox(m),
                ..
            }) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verbs() {
        assert_eq!(
            p("ehlo client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(p("HELO x").unwrap(), Command::Helo("x".into()));
        assert_eq!(p("DATA").unwrap(), Command::Data);
        assert_eq!(p("quit").unwrap(), Command::Quit);
        assert_eq!(p("NOOP anything").unwrap(), Command::Noop);
        assert_eq!(p("EXPN list").unwrap(), Command::NotImplemented);
        assert_eq!(code("FOO"), 500);
        assert_eq!(code("DATA now"), 501);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(
            parse(b"NOOP\n").unwrap(),
            Command::Noop,
            "a bare LF line end is tolerated"
        );
    }

    #[test]
    fn quoted_local_parts_are_kept_as_written() {
        let m = rcpt_box("RCPT TO:<\"a b\"@example.com>");
        assert_eq!(
            (m.raw.as_str(), m.local.as_str()),
            ("\"a b\"@example.com", "a b")
        );
        let m = rcpt_box("RCPT TO:<\"a\\\"b\"@example.com>");
        assert_eq!(
            (m.raw.as_str(), m.local.as_str()),
            ("\"a\\\"b\"@example.com", "a\"b")
        );
        let m = rcpt_box("RCPT TO:<\"alice\"@Example.COM>");
        assert_eq!(
            (m.local.as_str(), m.domain.as_str()),
            ("alice", "Example.COM")
        );
        let m = rcpt_box("RCPT TO:<\"x>y@z\"@example.com>");
        assert_eq!(m.local, "x>y@z");
        // A source route is dropped, the mailbox kept.
        let m = rcpt_box("RCPT TO:<@a.net,@b.net:bob@example.com>");
        assert_eq!(m.raw, "bob@example.com");
        assert_eq!(code("RCPT TO:<a..b@example.com>"), 501);
        assert_eq!(code("RCPT TO:<\"open@example.com>"), 501);
        assert_eq!(code("RCPT TO:<nodomain>"), 501);
        assert_eq!(code("RCPT TO:<a b@example.com>"), 501);
    }

    #[test]
    fn postmaster_and_null_paths() {
        assert!(matches!(
            p("RCPT TO:<Postmaster>").unwrap(),
            Command::Rcpt(RcptTo {
                path: ForwardPath::Postmaster,
                ..
            })
        ));
        assert!(matches!(
            p("MAIL FROM:<>").unwrap(),
            Command::Mail(MailFrom { sender: None, .. })
        ));
        assert_eq!(code("RCPT TO:<>"), 501);
        assert!(
            matches!(p("MAIL FROM: <a@b.c>").unwrap(), Command::Mail(_)),
            "space before the path"
        );
    }

    #[test]
    fn invalid_utf8_and_controls_are_refused_not_rewritten() {
        assert_eq!(
            parse(b"MAIL FROM:<\xff\xfe@outside.net> SMTPUTF8\r\n")
                .unwrap_err()
                .reply
                .code,
            553
        );
        assert_eq!(
            parse(b"RCPT TO:<\xff@example.com>\r\n")
                .unwrap_err()
                .reply
                .code,
            553
        );
        assert_eq!(parse(b"EHLO a\0b\r\n").unwrap_err().reply.code, 501);
        assert_eq!(parse(b"EHLO \xc3\r\n").unwrap_err().reply.code, 501);
        assert_eq!(parse(b"EHLO a\x01b\r\n").unwrap_err().reply.code, 501);
        assert_eq!(
            parse(b"MAIL FROM:<a\rb@c.d>\r\n").unwrap_err().reply.code,
            500
        );
        assert_eq!(parse(b"NOOP \xff\r\n").unwrap_err().reply.code, 500);
        let m = match parse("MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".as_bytes()).unwrap() {
            Command::Mail(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(m.sender.unwrap().raw, "jörg@bücher.example");
        assert!(m.smtputf8);
    }

    #[test]
    fn dsn_parameters_are_kept_raw() {
        let r = match p(
            "RCPT TO:<alice@example.com> NOTIFY=success,Failure ORCPT=rfc822;alice+2Bx@example.com",
        )
        .unwrap()
        {
            Command::Rcpt(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.notify, notify::SUCCESS | notify::FAILURE);
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;alice+2Bx@example.com"));
        let r = match p("RCPT TO:<a@example.com> ORCPT=utf-8;j\\x{F6}rg@example.com").unwrap() {
            Command::Rcpt(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            r.orcpt.as_deref(),
            Some("utf-8;j\\x{F6}rg@example.com"),
            "RFC 6533 type accepted"
        );
        assert_eq!(
            code("RCPT TO:<a@example.com> ORCPT=alice@example.com"),
            501,
            "no address type"
        );
        assert_eq!(
            code("RCPT TO:<a@example.com> ORCPT=rfc822;a+zz"),
            501,
            "bad xtext"
        );
        assert_eq!(code("RCPT TO:<a@example.com> NOTIFY=NEVER,SUCCESS"), 501);
        assert_eq!(code("RCPT TO:<a@example.com> NOTIFY=SOMETIMES"), 501);
        assert_eq!(code("RCPT TO:<a@example.com> FOO=1"), 555);
        let m = match p("MAIL FROM:<b@x.net> RET=hdrs ENVID=QQ+2B1 SIZE=123 BODY=8BITMIME").unwrap()
        {
            Command::Mail(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (m.ret, m.envid.as_deref(), m.size, m.body),
            (
                Some(Ret::Headers),
                Some("QQ+2B1"),
                Some(123),
                Body::EightBitMime
            )
        );
        let m = match p("MAIL FROM:<b@x.net>").unwrap() {
            Command::Mail(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(m.ret, None, "no RET invented");
        assert_eq!(code("MAIL FROM:<b@x.net> SIZE=12k"), 501);
        assert_eq!(code("MAIL FROM:<b@x.net> SIZE=1 SIZE=2"), 501);
        assert_eq!(code("MAIL FROM:<b@x.net> BODY=BINARYMIME"), 555);
        assert_eq!(code("MAIL FROM:<b@x.net> SMTPUTF8=YES"), 501);
        assert_eq!(decode_xtext("rfc822;a+2Bb+3Dc@x.net"), "rfc822;a+b=c@x.net");
    }

    #[test]
    fn bdat_sizes_are_strict() {
        assert_eq!(
            p("BDAT 0").unwrap(),
            Command::Bdat {
                size: 0,
                last: false
            }
        );
        assert_eq!(
            p("BDAT 123456 last").unwrap(),
            Command::Bdat {
                size: 123456,
                last: true
            }
        );
        assert_eq!(
            p("BDAT 1000000000000000000007").unwrap_err().reply.code,
            501,
            "over 20 digits"
        );
        assert_eq!(
            p("BDAT 99999999999999999999").unwrap(),
            Command::Bdat {
                size: u64::MAX,
                last: false
            }
        );
        for bad in [
            "BDAT",
            "BDAT 12x",
            "BDAT -1",
            "BDAT +5",
            "BDAT 5 LAST x",
            "BDAT 5  LAST",
            "BDAT LAST",
            "BDAT 0x10",
        ] {
            let r = p(bad).unwrap_err();
            assert!(
                r.close,
                "{bad}: a BDAT whose size is unknown closes the session"
            );
        }
        assert!(!p("NOOP \x01").unwrap_err().close);
        for bad in [
            &b"BDAT\t7 LAST\r\n"[..],
            b"BDAT\x007\r\n",
            b"bdat7\r\n",
            b"BDAT\r\n",
        ] {
            let r = parse(bad).unwrap_err();
            assert!(
                r.close,
                "{:?} is a broken BDAT: close",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(b"BDATX\r\n").unwrap_err().reply.code,
            500,
            "another word"
        );
    }

    proptest! {
        /// Whatever the line, parsing never panics, and an accepted BDAT size is exactly the
        /// decimal number written.
        #[test]
        fn bdat_size_is_the_number_written(size in "[0-9+ x-]{0,25}") {
            match p(&format!("BDAT {size}")) {
                Ok(Command::Bdat { size: n, last: false }) => {
                    // Spaces between the verb and the size are tolerated; nothing else is.
                    let digits = size.trim_start_matches(' ');
                    prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.is_empty());
                    prop_assert_eq!(digits.parse::<u64>().unwrap_or(u64::MAX), n);
                }
                Ok(other) => prop_assert!(false, "{:?}", other),
                Err(r) => prop_assert!(r.close),
            }
        }

        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line);
        }

        /// A mailbox the parser accepts keeps its raw form byte for byte in the command.
        #[test]
        fn raw_address_is_a_substring_of_the_line(raw in "[a-zA-Z0-9@%!:.,\"\\\\ <>-]{0,40}") {
            let line = format!("RCPT TO:<{raw}>");
            if let Ok(Command::Rcpt(RcptTo { path: ForwardPath::Mailbox(m), .. })) = p(&line) {
                prop_assert!(line.contains(&m.raw));
                prop_assert!(!m.domain.is_empty());
            }
        }
    }
}
