//! Hostile messages get a verdict, in bounded time, with the view of them cut at its limits
//! (and the cut reported) rather than grown without end: 10,000 MIME parts, 100 levels of
//! nesting (multiparts and attached messages), a 1 MB header line, broken base64 and
//! charsets, 10,000 links.

use std::time::{Duration, Instant};

use mailsilo_filter::content::{Content, MAX_LINKS, MAX_TEXT};
use mailsilo_filter::rules::Rules;
use mailsilo_filter::{Engine, Envelope, Report};

/// Generous for an unoptimised build on a loaded 2-core machine; a release build takes a
/// small fraction of it.
const LIMIT: Duration = Duration::from_secs(10);

fn scan(raw: &[u8]) -> (Report, Duration) {
    let engine = Engine::new(Rules::new(true, &[]).unwrap());
    let start = Instant::now();
    let r = engine.scan(raw, &Envelope::default(), &["example.com".to_string()]);
    (r, start.elapsed())
}

#[test]
fn ten_thousand_parts() {
    let mut m = String::from("Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n");
    for i in 0..10_000 {
        m.push_str(&format!(
            "--b\r\nContent-Type: text/plain\r\n\r\npart {i} http://host{i}.example/\r\n"
        ));
    }
    m.push_str("--b--\r\n");
    let (r, took) = scan(m.as_bytes());
    assert!(took < LIMIT, "{took:?}");
    assert!(r.has("MIME_LIMITS"), "{}", r.symbols_line());
    let c = Content::parse(m.as_bytes());
    assert!(c.links.len() <= 2 * MAX_LINKS && c.text.len() <= MAX_TEXT + 2);
}

#[test]
fn a_hundred_levels_of_nesting() {
    let mut multipart = String::from("Subject: deep\r\n");
    for i in 0..100 {
        multipart.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
        ));
    }
    multipart.push_str("Content-Type: text/plain\r\n\r\nthe bottom\r\n");
    for i in (0..100).rev() {
        multipart.push_str(&format!("--b{i}--\r\n"));
    }
    let mut attached = String::from("Subject: deep\r\n");
    for _ in 0..100 {
        attached.push_str("Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n");
    }
    attached.push_str("\r\nthe bottom\r\n");
    for m in [multipart, attached] {
        let (r, took) = scan(m.as_bytes());
        assert!(took < LIMIT, "{took:?}");
        assert!(r.score < 6.0, "{}", r.symbols_line());
    }
}

#[test]
fn a_megabyte_header_line_and_broken_encodings() {
    let mut m = format!("Subject: {}\r\n", "a".repeat(1 << 20));
    m.push_str("Content-Type: multipart/mixed; boundary=b\r\n\r\n");
    m.push_str("--b\r\nContent-Type: text/plain; charset=x-no-such-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    m.push_str("!!!! this is not base64 ***\r\n====\r\nQUJD\r\n");
    m.push_str("--b\r\nContent-Type: text/html; charset=\"utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"http://x.example/=ZZ\">=E2=82</a>\r\n");
    m.push_str("--b\r\nContent-Type: text/plain; charset=iso-2022-jp\r\n\r\n\x1b$B$3$s$K$A$O\x1b(B\r\n--b--\r\n");
    let (r, took) = scan(m.as_bytes());
    assert!(took < LIMIT, "{took:?}");
    let c = Content::parse(m.as_bytes());
    assert!(
        c.header("subject").unwrap().len() <= 16 * 1024,
        "header values are clipped"
    );
    assert!(r.symbols.iter().all(|s| s.score.is_finite()));
}

#[test]
fn ten_thousand_links() {
    let mut text = String::from(
        "Subject: links\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n",
    );
    for i in 0..10_000 {
        text.push_str(&format!("http://h{i}.example/p "));
    }
    text.push_str("\r\n--b\r\nContent-Type: text/html\r\n\r\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "<a href=\"http://a{i}.example/\">www.b{i}.example</a>"
        ));
    }
    text.push_str("\r\n--b--\r\n");
    let (r, took) = scan(text.as_bytes());
    assert!(took < LIMIT, "{took:?}");
    assert!(r.has("MIME_LIMITS"), "{}", r.symbols_line());
    assert!(r.has("PHISH_LINK_MISMATCH"), "{}", r.symbols_line());
    assert_eq!(Content::parse(text.as_bytes()).links.len(), 2 * MAX_LINKS);
}

#[test]
fn garbage_bytes() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let raw: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let (r, took) = scan(&raw);
    assert!(took < LIMIT, "{took:?}");
    assert!(r.score.is_finite());
}

/// Input built to make the link and tag scanners quadratic: a megabyte of "www.@" (empty
/// hosts that never reach the link cap) and of "<" (tags that never end).
#[test]
fn scanner_worst_cases() {
    for part in ["text/plain", "text/html"] {
        for filler in ["www.@", "<", "<a ", "http://@"] {
            let raw = format!(
                "Subject: s\r\nContent-Type: {part}\r\n\r\n{}\r\n",
                filler.repeat((1 << 20) / filler.len())
            );
            let (r, took) = scan(raw.as_bytes());
            assert!(took < LIMIT, "{part} {filler:?}: {took:?}");
            assert!(r.score.is_finite());
        }
    }
}

/// An engine with the malware checks, and the default policy's decision on `raw`.
fn judged(raw: &[u8]) -> (Report, mailsilo_filter::Decision) {
    let malware = mailsilo_filter::attachments::Malware::new(&config::Filter::default()).unwrap();
    let engine = Engine::new(Rules::new(true, &[]).unwrap()).with_malware(malware);
    let r = engine.scan(raw, &Envelope::default(), &["example.com".to_string()]);
    let d = mailsilo_filter::decide(&r, &config::FilterPolicy::default(), &Envelope::default());
    (r, d)
}

/// A base64 program, as a part's body.
const PROGRAM_B64: &str =
    "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA==";

#[test]
fn attachments_past_the_part_limit_are_held_not_passed() {
    // 2,000 empty parts (about 20 KB), then a program the view never reaches.
    let mut m =
        String::from("Subject: padded\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n");
    for _ in 0..2_000 {
        m.push_str("--b\r\n\r\n");
    }
    m.push_str(&format!(
        "--b\r\nContent-Type: application/octet-stream; name=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n{PROGRAM_B64}\r\n--b--\r\n"
    ));
    let (r, d) = judged(m.as_bytes());
    assert!(r.has("MIME_LIMITS"), "{}", r.symbols_line());
    assert_eq!(d.verdict.as_str(), "policy", "{}", d.reason);
    assert_eq!(d.action.as_str(), "quarantine", "{}", d.reason);
}

#[test]
fn a_named_text_part_is_judged_by_its_bytes_not_its_charset() {
    // A zip declared as UTF-16 text: its charset decoding would destroy the PK magic.
    let zip_b64 = base64(&stored_zip(
        "a.exe",
        &[b"MZ".as_slice(), &[0; 200]].concat(),
    ));
    let m = format!(
        "Subject: text\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: text/plain; charset=utf-16le; name=\"docs.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{zip_b64}\r\n--b--\r\n"
    );
    let c = Content::parse(m.as_bytes());
    assert_eq!(c.attachments.len(), 1);
    assert!(c.attachments[0].data.starts_with(b"PK\x03\x04"));
    let (r, d) = judged(m.as_bytes());
    assert_eq!(
        d.action.as_str(),
        "reject",
        "{} / {}",
        d.reason,
        r.symbols_line()
    );
}

#[test]
fn an_attached_message_as_the_whole_message_has_no_part_to_strip() {
    let inner = format!(
        "Subject: inner\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\nhello\r\n--i\r\nContent-Type: application/octet-stream; name=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n{PROGRAM_B64}\r\n--i--\r\n"
    );
    let m = format!("Subject: outer\r\nContent-Type: message/rfc822\r\n\r\n{inner}");
    let c = Content::parse(m.as_bytes());
    assert_eq!(c.attachments.len(), 1);
    assert_eq!(c.attachments[0].range, None);
}

/// Standard base64 with padding, in one line.
fn base64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// A zip of one stored member, written by hand (its CRC from the zip's own definition).
fn stored_zip(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = data.iter().fold(!0u32, |mut c, b| {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
        c
    }) ^ !0;
    let (n, size) = (name.len() as u16, data.len() as u32);
    let mut z = Vec::new();
    z.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0");
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let central = z.len() as u32;
    z.extend_from_slice(b"PK\x01\x02\x14\0\x14\0\0\0\0\0\0\0\0\0");
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&[0; 12]);
    z.extend_from_slice(&0u32.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    let dir = z.len() as u32 - central;
    z.extend_from_slice(b"PK\x05\x06\0\0\0\0\x01\0\x01\0");
    z.extend_from_slice(&dir.to_le_bytes());
    z.extend_from_slice(&central.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}
