//! The parsed view of a message that every content check reads: header fields (decoded
//! where MIME allows), the sender's and Reply-To mailboxes, the text of every text part
//! (HTML turned into text), and the links, with the text a reader sees for each.
//!
//! Parsing is mail-parser's (all parts, nested messages, legacy charsets). Everything here
//! is bounded, since the input is whatever a sender chose: the text kept, the links
//! collected and the nesting followed all stop at fixed limits, and a limit reached is
//! recorded so a check can say so.

use std::borrow::Cow;

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};

/// The most text kept from all parts together.
pub const MAX_TEXT: usize = 512 * 1024;
/// The most links collected of each kind (bare URLs in text; HTML anchors), so that
/// padding with one kind cannot hide the other.
pub const MAX_LINKS: usize = 1000;
/// The most HTML tag tokens kept.
pub const MAX_TAGS: usize = 2000;
/// The deepest nesting of attached messages followed.
const MAX_DEPTH: usize = 8;
/// The most parts visited.
const MAX_PARTS: usize = 2000;
/// How far past a scheme a link's host is looked for.
const HOST_LOOKAHEAD: usize = 300;
/// The longest header value kept.
const MAX_HEADER: usize = 16 * 1024;
/// The most uuencoded files taken from one text part.
const MAX_UUENCODED: usize = 32;

/// A display name and address (either may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mailbox {
    pub name: String,
    /// Lower-cased.
    pub address: String,
}

impl Mailbox {
    /// The address's domain, lower-cased (empty when there is none).
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// A link found in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The host it leads to, lower-cased.
    pub host: String,
    /// The text shown for it (HTML anchors only).
    pub text: Option<String>,
}

/// A part's transfer encoding, as mail clients read the field: its first word, lower-cased
/// (`base64 (c)` and `base64;` are base64).
fn transfer_encoding(part: &mail_parser::MessagePart<'_>) -> Option<String> {
    let e = part.content_transfer_encoding()?;
    Some(e.split([' ', '\t', ';', '(']).next()?.to_ascii_lowercase())
}

/// Whether mail-parser decoded the part's body itself: its transfer encoding is one it
/// knows, written plainly.
fn decoded_by_parser(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_transfer_encoding().is_none_or(|e| {
        ["base64", "quoted-printable", "7bit", "8bit", "binary"]
            .iter()
            .any(|k| e.eq_ignore_ascii_case(k))
    })
}

/// A part's body with its transfer encoding (base64, quoted-printable, uuencode) undone
/// and nothing else: the bytes a mail client saves. Base64 is read as RFC 2045 (6.8) says:
/// characters outside its alphabet are passed over, so a stray one hides nothing.
fn transfer_decoded(raw: &[u8], part: &mail_parser::MessagePart<'_>) -> Vec<u8> {
    let body = raw
        .get(part.offset_body as usize..part.offset_end as usize)
        .unwrap_or_default();
    let decoded = match transfer_encoding(part).as_deref() {
        Some("base64") => mail_parser::decoders::base64::base64_decode(body).or_else(|| {
            let mut clean: Vec<u8> = body
                .iter()
                .copied()
                .take_while(|&b| b != b'=')
                .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
                .collect();
            // Whole groups of four (a last lone character carries no byte).
            if clean.len() % 4 == 1 {
                clean.pop();
            }
            while !clean.len().is_multiple_of(4) {
                clean.push(b'=');
            }
            mail_parser::decoders::base64::base64_decode(&clean)
        }),
        Some("quoted-printable") => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
        }
        Some("x-uuencode" | "x-uue" | "uuencode") => uudecoded(&String::from_utf8_lossy(body))
            .into_iter()
            .next()
            .map(|(_, data)| data),
        _ => None,
    };
    decoded.unwrap_or_else(|| body.to_vec())
}

/// Every name a part gives its file (`filename` of Content-Disposition, RFC 2231's
/// `filename*` among them, then `name` of Content-Type), each once, in that order.
fn part_names(part: &mail_parser::MessagePart<'_>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let fields = [
        (part.content_disposition(), "filename"),
        (part.content_type(), "name"),
    ];
    for (field, key) in fields {
        for a in field.and_then(|f| f.attributes()).unwrap_or_default() {
            let name = a.name.trim_end_matches('*');
            if name.eq_ignore_ascii_case(key) && !names.iter().any(|n| *n == a.value) {
                names.push(a.value.to_string());
            }
        }
    }
    names
}

/// An attachment: a part with a file name, or binary content.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Its file name, or `part N` when it has none.
    pub name: String,
    /// Other names the part gives it (a `filename` and a `filename*` that differ: mail
    /// clients pick one or the other, so it is judged under each).
    pub aliases: Vec<String>,
    /// Its content, transfer encoding decoded.
    pub data: Vec<u8>,
    /// The bytes of the top-level part that holds it (its own part, or the attached
    /// message it is in), which removing it removes; none when that is the whole message.
    pub range: Option<(usize, usize)>,
}

/// What a message says, as the checks read it.
#[derive(Debug, Default)]
pub struct Content {
    /// Header fields of the top-level message in order: lower-cased name, value (decoded
    /// when the field is unstructured text, unfolded raw text otherwise).
    pub headers: Vec<(String, String)>,
    pub subject: String,
    pub from: Option<Mailbox>,
    pub reply_to: Option<Mailbox>,
    /// The text of every text part, HTML converted, parts separated by a blank line.
    pub text: String,
    pub links: Vec<Link>,
    anchors: usize,
    bare_urls: usize,
    /// HTML tags as `name` and `name:attribute` (and `name:attribute=value` for
    /// presentational attributes), in order, at most [`MAX_TAGS`].
    pub html_tags: Vec<String>,
    /// MIME parts seen (nested messages included).
    pub parts: usize,
    /// HTML parts seen.
    pub html_parts: usize,
    /// A part whose transfer encoding or charset could not be decoded.
    pub encoding_problem: bool,
    /// The message had no parsable header section at all.
    pub unparsable: bool,
    /// A limit cut the view short (text, links, parts or depth).
    pub truncated: bool,
    /// Parts were left unread (past the parts or depth limit, or an attached message
    /// nested deeper than the parser follows): attachments may have gone unseen.
    pub parts_skipped: bool,
    /// Attachments, at any depth.
    pub attachments: Vec<Attachment>,
}

impl Content {
    /// Parses `raw` (a whole message, CRLF or LF line ends).
    pub fn parse(raw: &[u8]) -> Content {
        let mut c = Content::default();
        let Some(message) = MessageParser::default().parse(raw) else {
            c.unparsable = true;
            return c;
        };
        c.top_headers(&message);
        c.walk(&message, 0, None);
        c
    }

    /// The value of the first header field called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn top_headers(&mut self, message: &Message<'_>) {
        let raw = message.raw_message();
        for h in message.headers() {
            let name = h.name().to_ascii_lowercase();
            let value = match h.value() {
                HeaderValue::Text(t) => clip(t.to_string()),
                _ => {
                    let start = (h.offset_start() as usize).min(raw.len());
                    let end = (h.offset_end() as usize).clamp(start, raw.len());
                    clip(unfold(&String::from_utf8_lossy(&raw[start..end])))
                }
            };
            self.headers.push((name, value));
        }
        self.subject = message
            .subject()
            .map(|s| clip(s.to_string()))
            .unwrap_or_default();
        self.from = mailbox(message.from());
        self.reply_to = mailbox(message.reply_to());
    }

    /// Walks `message`'s parts; `top` is the range of the top-level part holding it, for
    /// an attached message.
    fn walk(&mut self, message: &Message<'_>, depth: usize, top: Option<(usize, usize)>) {
        if depth >= MAX_DEPTH {
            self.truncated = true;
            self.parts_skipped = true;
            return;
        }
        let multipart = matches!(
            message.parts.first().map(|p| &p.body),
            Some(PartType::Multipart(_))
        );
        for (i, part) in message.parts.iter().enumerate() {
            if self.parts >= MAX_PARTS {
                self.truncated = true;
                self.parts_skipped = true;
                return;
            }
            self.parts += 1;
            self.encoding_problem |= part.is_encoding_problem;
            // The part's own bytes, when it is a top-level part that is not the message;
            // inside an attached message, the top-level part holding that message (none
            // when the message itself is the attached one: its offsets are not the raw's).
            let range = match top {
                Some(r) => Some(r),
                None if depth == 0 && multipart && i > 0 => {
                    Some((part.offset_header as usize, part.offset_end as usize))
                }
                None => None,
            };
            let mut names = part_names(part);
            let named = !names.is_empty()
                || part
                    .content_disposition()
                    .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
            if names.is_empty() {
                names.push(format!("part {}", self.parts));
            }
            // A named text part is saved as its bytes, not as the text its charset gives.
            let saved = || transfer_decoded(message.raw_message(), part);
            match &part.body {
                PartType::Text(t) => {
                    if named || malware::is_eicar(t.as_bytes()) {
                        // (The EICAR test file typed into a message is the file as well.)
                        self.attach(names, &saved(), range);
                    } else {
                        for (file, data) in uudecoded(t) {
                            self.attach(vec![file], &data, range);
                        }
                    }
                    self.push_text(t);
                    self.text_links(t);
                }
                PartType::Html(h) => {
                    if named {
                        self.attach(names, &saved(), range);
                    }
                    self.html_parts += 1;
                    self.html_links(h);
                    self.tags(h);
                    let text = mail_parser::decoders::html::html_to_text(h);
                    self.push_text(&text);
                }
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    // An attached message the parser did not follow (it stops at a depth
                    // of its own): what it holds goes unseen.
                    // (Reports such as message/delivery-status are not messages.)
                    self.parts_skipped |= part.content_type().is_some_and(|c| {
                        c.ctype().eq_ignore_ascii_case("message")
                            && c.subtype().is_some_and(|s| {
                                s.eq_ignore_ascii_case("rfc822") || s.eq_ignore_ascii_case("global")
                            })
                    });
                    if decoded_by_parser(part) {
                        self.attach(names, b, range);
                    } else {
                        self.attach(names, &saved(), range);
                    }
                }
                PartType::Message(inner) => self.walk(inner, depth + 1, range),
                PartType::Multipart(_) => {}
            }
        }
    }

    /// An attachment under the first of `names` (never empty), the others its aliases.
    fn attach(&mut self, mut names: Vec<String>, data: &[u8], range: Option<(usize, usize)>) {
        let aliases = names.split_off(1);
        self.attachments.push(Attachment {
            name: names.remove(0),
            aliases,
            data: data.to_vec(),
            range,
        });
    }

    fn push_text(&mut self, t: &str) {
        let room = MAX_TEXT.saturating_sub(self.text.len());
        if room == 0 {
            self.truncated = true;
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str("\n\n");
        }
        let mut end = t.len().min(room);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        self.truncated |= end < t.len();
        self.text.push_str(&t[..end]);
    }

    /// Adds a link (an HTML anchor, or a bare URL); false once the links of its kind are
    /// at their limit.
    fn push_link(&mut self, host: String, text: Option<String>, anchor: bool) -> bool {
        let count = if anchor {
            &mut self.anchors
        } else {
            &mut self.bare_urls
        };
        if *count >= MAX_LINKS {
            self.truncated = true;
            return false;
        }
        if !host.is_empty() {
            *count += 1;
            self.links.push(Link { host, text });
        }
        true
    }

    /// Bare URLs in plain text: `http(s)://host...` and `www.host...`.
    fn text_links(&mut self, t: &str) {
        let bytes = t.as_bytes();
        let mut i = 0;
        while let Some(at) = find_url_start(&bytes[i..]) {
            let start = i + at;
            // find_url_start matched one of these, in any case.
            let skip = if starts_with_ci(&bytes[start..], b"https://") {
                8
            } else if starts_with_ci(&bytes[start..], b"http://") {
                7
            } else {
                0
            };
            let host = host_of(&t[start + skip..]);
            i = start + skip + host.len().max(1);
            if !self.push_link(host, None, false) {
                return;
            }
        }
    }

    /// The tags of an HTML part, for the classifier.
    fn tags(&mut self, h: &str) {
        let mut rest = h;
        // Tags looked at, counted apart from those kept: a part of "<<<<..." yields none.
        let mut looked = 0;
        while let Some(at) = rest.find('<') {
            looked += 1;
            if self.html_tags.len() >= MAX_TAGS {
                return;
            }
            if looked > 4 * MAX_TAGS {
                self.truncated = true;
                return;
            }
            rest = &rest[at + 1..];
            // A tag's end is looked for within 512 octets only: a part of "<<<<..." with no
            // '>' must not cost the square of its length.
            let window = &rest.as_bytes()[..rest.len().min(512)];
            let Some(end) = window.iter().position(|&b| b == b'>') else {
                continue;
            };
            let mut end_ok = end;
            while !rest.is_char_boundary(end_ok) {
                end_ok -= 1;
            }
            let tag = rest[..end_ok].to_ascii_lowercase();
            let mut words = tag.split_whitespace();
            let Some(name) = words.next() else { continue };
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'!')
            {
                continue;
            }
            self.html_tags.push(name.to_string());
            for attr in words.take(8) {
                let (key, value) = attr.split_once('=').unwrap_or((attr, ""));
                if !key.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                    continue;
                }
                let value = value.trim_matches(['"', '\'', '/']);
                if matches!(
                    key,
                    "color" | "bgcolor" | "size" | "face" | "align" | "border"
                ) {
                    self.html_tags.push(format!("{name}:{key}={value}"));
                } else {
                    self.html_tags.push(format!("{name}:{key}"));
                }
            }
        }
    }

    /// `<a href=...>text</a>` anchors in HTML, with the text a reader sees.
    fn html_links(&mut self, h: &str) {
        let lower = h.to_ascii_lowercase();
        let mut i = 0;
        while let Some(at) = lower[i..].find("<a") {
            let tag_start = i + at;
            let Some(tag_len) = lower[tag_start..].find('>') else {
                return;
            };
            let tag = &h[tag_start..tag_start + tag_len];
            let body_start = tag_start + tag_len + 1;
            let body_end = lower[body_start..]
                .find("</a")
                .map_or(lower.len(), |e| body_start + e);
            i = body_end.max(body_start);
            let Some(href) = attribute(tag, "href") else {
                continue;
            };
            let Some(host) = url_host(href) else {
                continue;
            };
            let text = strip_tags(&h[body_start..body_end]);
            if !self.push_link(host, (!text.is_empty()).then_some(text), true) {
                return;
            }
        }
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_HEADER {
        let mut end = MAX_HEADER;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn unfold(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn mailbox(a: Option<&mail_parser::Address<'_>>) -> Option<Mailbox> {
    let a = a?.first()?;
    Some(Mailbox {
        name: a.name().unwrap_or_default().trim().to_string(),
        address: a.address().unwrap_or_default().trim().to_ascii_lowercase(),
    })
}

fn find_url_start(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let word_start = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if word_start
            && (starts_with_ci(rest, b"http://")
                || starts_with_ci(rest, b"https://")
                || starts_with_ci(rest, b"www."))
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The host at the start of `s` (after the scheme): letters, digits, dots and hyphens,
/// lower-cased, without userinfo.
fn host_of(s: &str) -> String {
    // A host name is at most 253 octets: look no further (a part full of "www." must not
    // cost the square of its length).
    let mut end = s.len().min(HOST_LOOKAHEAD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s[..end];
    let s = match s.find(['/', '?', '#', ' ', '\r', '\n']) {
        Some(end) => &s[..end],
        None => s,
    };
    let s = s.rsplit_once('@').map_or(s, |(_, h)| h);
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .take(253)
        .collect::<String>()
        .trim_matches('.')
        .to_ascii_lowercase()
}

/// The host of an absolute http(s) URL (`None` for mailto:, relative links and the like).
pub fn url_host(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &url[7..]
    } else if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("//") {
        &url[2..]
    } else {
        return None;
    };
    let host = host_of(rest);
    (!host.is_empty()).then_some(host)
}

/// The value of attribute `name` in an HTML start tag.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let pos = from + at;
        from = pos + name.len();
        let before_ok = pos > 0 && lower.as_bytes()[pos - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap_or(""),
        });
    }
    None
}

/// Text with HTML tags removed and whitespace collapsed, at most 200 characters.
fn strip_tags(h: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in h.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
        if out.len() > 800 {
            break;
        }
    }
    let text: Cow<'_, str> = Cow::Owned(out.split_whitespace().collect::<Vec<_>>().join(" "));
    text.chars().take(200).collect()
}

/// Files uuencoded in a text body (`begin 644 NAME`, lines of encoded bytes, `end`), as old
/// mailers sent attachments and malware still does, since a scanner that reads only MIME
/// parts misses them; at most [`MAX_UUENCODED`]. A block cut short gives what it holds.
fn uudecoded(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut lines = text.lines();
    while files.len() < MAX_UUENCODED
        && let Some(line) = lines.next()
    {
        let Some((mode, name)) = line
            .strip_prefix("begin ")
            .and_then(|rest| rest.trim_end().split_once(' '))
        else {
            continue;
        };
        if !(3..=4).contains(&mode.len())
            || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
            || name.trim().is_empty()
        {
            continue;
        }
        let mut data = Vec::new();
        for line in lines.by_ref() {
            // Only the line break goes: trailing spaces are data (a space stands for 0, as
            // a backquote does), and a line whose trailing spaces were lost reads them as 0.
            let line = line.trim_end_matches('\r').as_bytes();
            if line == b"end" || !line.iter().all(|c| (32..=96).contains(c)) {
                break;
            }
            let Some((&count, body)) = line.split_first() else {
                break;
            };
            // Each character carries 6 bits, offset by 32.
            let six = |c: Option<&u8>| c.map_or(0, |c| u32::from(c.wrapping_sub(32) & 63));
            let count = six(Some(&count)) as usize;
            for group in 0..count.div_ceil(3) {
                let v = (0..4).fold(0, |v, i| v << 6 | six(body.get(group * 4 + i)));
                let bytes = v.to_be_bytes();
                data.extend_from_slice(&bytes[1..1 + (count - group * 3).min(3)]);
            }
        }
        files.push((name.trim().to_string(), data));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuencoded_files_in_a_text_body_are_attachments() {
        // "MZ" and 61 bytes more, as `uuencode setup.exe` writes them (45 bytes a line).
        let data: Vec<u8> = b"MZ".iter().copied().chain(0..61).collect();
        let mut body = String::from("Hello,\r\n\r\nbegin 644 setup.exe\r\n");
        for line in data.chunks(45) {
            body.push((32 + line.len() as u8) as char);
            for g in line.chunks(3) {
                let v = g
                    .iter()
                    .enumerate()
                    .fold(0u32, |v, (i, &b)| v | u32::from(b) << (16 - 8 * i));
                for k in (0..4).rev() {
                    let c = (v >> (6 * k)) & 63;
                    body.push(if c == 0 { '`' } else { (32 + c as u8) as char });
                }
            }
            body.push_str("\r\n");
        }
        body.push_str("`\r\nend\r\n\r\nBye\r\n");
        let c = Content::parse(format!("Subject: files\r\n\r\n{body}").as_bytes());
        assert_eq!(c.attachments.len(), 1, "{:?}", c.attachments);
        assert_eq!(c.attachments[0].name, "setup.exe");
        assert_eq!(c.attachments[0].data, data);
        // Text that only looks like a begin line is not a file.
        let c = Content::parse(b"Subject: x\r\n\r\nbegin now the meeting\r\nend\r\n");
        assert!(c.attachments.is_empty());
    }

    #[test]
    fn headers_text_and_links_of_a_multipart_message() {
        let raw = b"From: \"PayPal\" <Service@Evil.example>\r\nReply-To: other@x.example\r\n\
Subject: =?utf-8?q?Caf=C3=A9?=\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsee http://plain.example/x and www.other.example\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>Hi <a class=x href=\"https://bad.example/login\">\
https://www.paypal.com</a></p>\r\n--b--\r\n";
        let c = Content::parse(raw);
        assert_eq!(c.subject, "Café");
        let from = c.from.as_ref().unwrap();
        assert_eq!(
            (from.name.as_str(), from.domain()),
            ("PayPal", "evil.example")
        );
        assert_eq!(c.reply_to.as_ref().unwrap().address, "other@x.example");
        assert!(c.text.contains("see http://plain.example/x"));
        assert!(c.text.contains("Hi"));
        let hosts: Vec<_> = c.links.iter().map(|l| l.host.as_str()).collect();
        assert_eq!(hosts, ["plain.example", "www.other.example", "bad.example"]);
        assert_eq!(c.links[2].text.as_deref(), Some("https://www.paypal.com"));
        assert_eq!(c.html_parts, 1);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("HTTPS://User@Host.Example:8080/p").unwrap(),
            "host.example"
        );
        assert_eq!(url_host("mailto:a@b.example"), None);
        assert_eq!(url_host("/relative"), None);
    }

    #[test]
    fn upper_case_www_before_multibyte_text() {
        // Found by the filter_engine fuzz target: the scheme's length was taken from the
        // next colon, which here lies past a multi-byte character.
        let c = Content::parse(
            "Subject: x\r\n\r\nWWW.é:x HTTPS://Host.Example/ www.a.example\r\n".as_bytes(),
        );
        let hosts: Vec<_> = c.links.iter().map(|l| l.host.as_str()).collect();
        assert_eq!(hosts, ["www", "host.example", "www.a.example"]);
    }

    #[test]
    fn garbage_gives_an_empty_view() {
        let c = Content::parse(b"");
        assert!(c.unparsable || c.text.is_empty());
        let c = Content::parse(b"\xff\xfe\x00garbage without headers");
        assert!(c.links.is_empty());
    }
}
