//! The gateway against a hostile client and a careless local user: each test reproduces one
//! defect found that way (issue 6) through the real binary, so it can be run against an
//! older build (`MAILSILO_TEST_BIN=...`) to see it fail there.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Gateway, Options, Smtp, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn ehlo(c: &mut Smtp) {
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.0, 250, "{r:?}");
}

/// Reads everything until the server closes (or 20 s pass).
fn rest(c: &mut Smtp) -> String {
    let mut out = String::new();
    let _ = c.reader.read_to_string(&mut out);
    out
}

#[test]
fn dsn_parameters_are_relayed_exactly_as_received() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net> ENVID=QQ+2B314").0, 250);
    let r = c.cmd(
        "RCPT TO:<alice@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Bx@example.com",
    );
    assert_eq!(r.0, 250, "{r:?}");
    let r = c.cmd("RCPT TO:<bob@example.com> ORCPT=utf-8;bob@example.com");
    assert_eq!(
        r.0, 250,
        "the utf-8 address type (RFC 6533) is accepted: {r:?}"
    );
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: dsn\r\n\r\nwith DSN parameters\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.com").len() == 1));
    let alice = &g.mailbox("alice@example.com")[0];
    assert!(
        alice.contains("X-Mailsilo-Sink-DSN: ENVID=QQ+2B314 NOTIFY-FLAGS=3 ORCPT=rfc822;alice+2Bx@example.com\r\n"),
        "ENVID, NOTIFY and ORCPT arrive byte for byte, and no RET was invented: {alice}"
    );
    let bob = &g.mailbox("bob@example.com")[0];
    assert!(bob.contains("ORCPT=utf-8;bob@example.com"), "{bob}");
    assert!(g.mailbox("bob@sender.net").is_empty(), "nothing bounced");
}

#[test]
fn bdat_sizes_are_parsed_strictly_and_nothing_is_smuggled() {
    let g = Gateway::start(Options::default());
    for size in [
        "1000000000000000000007",
        "99999999999999999999",
        "300000",
        "7x",
    ] {
        let mut c = g.smtp();
        ehlo(&mut c);
        assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
        c.send(format!("BDAT {size} LAST\r\n1234567").as_bytes());
        c.send(b"MAIL FROM:<smuggled@evil.net>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n");
        let r = c.reply();
        assert!(r.0 == 552 || r.0 == 501, "{size}: {r:?}");
        assert_eq!(
            rest(&mut c),
            "",
            "{size}: the session was closed, nothing more ran"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(g.mailbox("victim@example.com").is_empty());
}

#[test]
fn quoted_local_parts_keep_their_quotes() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<\"sender x\"@sender.net>").0, 250);
    for rcpt in [
        "\"a b\"@example.com",
        "\"a\\\"b\"@example.com",
        "\"alice\"@example.com",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(r.0, 250, "{rcpt}: {r:?}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: quoted\r\n\r\nquoted\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    // The sink keeps each under its quoted form (a backslash becomes '_' in a folder name).
    for mailbox in [
        "\"a b\"@example.com",
        "\"a_\"b\"@example.com",
        "\"alice\"@example.com",
    ] {
        assert!(
            wait_until(WAIT, || g.mailbox(mailbox).len() == 1),
            "{mailbox}"
        );
    }
    let m = &g.mailbox("\"a b\"@example.com")[0];
    assert!(m.contains("Delivered-To: \"a b\"@example.com\r\n"), "{m}");
    assert!(
        m.contains("Return-Path: <\"sender x\"@sender.net>\r\n"),
        "{m}"
    );
    assert!(g.mailbox("a b@example.com").is_empty());
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes; returns what it said
/// and how long it took.
fn drip(addr: SocketAddr, before: &[u8], bytes: &[u8], gap: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    s.write_all(before).unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for &b in bytes.iter().cycle() {
        if started.elapsed() > Duration::from_secs(30) || s.write_all(&[b]).is_err() {
            break;
        }
        let until = Instant::now() + gap;
        let mut closed = false;
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        if closed {
            break;
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_drip_sessions_are_timed_out() {
    let g = Gateway::start(Options {
        smtp: "command_timeout = \"2s\"\ndata_timeout = \"2s\"\nmin_data_rate = 500".into(),
        ..Options::default()
    });
    let gap = Duration::from_millis(250);
    // A command line dripped without its CRLF: the deadline covers the whole line.
    let (said, took) = drip(g.mx, b"EHLO drip.test\r\n", b"NOOP NOOP NOOP ", gap);
    assert!(said.contains("421 4.4.2"), "{said}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Message content dripped in: it must keep up 500 octets/s after the allowance.
    let tx =
        b"EHLO drip.test\r\nMAIL FROM:<a@sender.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n";
    let (said, took) = drip(g.mx, tx, b"Subject: drip\r\n", gap);
    assert!(
        said.contains("354 ") && said.contains("421 4.4.2"),
        "{said}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let tx = b"EHLO drip.test\r\nMAIL FROM:<a@sender.net>\r\nRCPT TO:<alice@example.com>\r\nBDAT 100000 LAST\r\n";
    let (said, took) = drip(g.mx, tx, b"chunk", gap);
    assert!(said.contains("421 4.4.2"), "{said}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A sender at a normal pace is not affected.
    let mut c = g.smtp();
    ehlo(&mut c);
    let body = "Subject: fine\r\n\r\n".to_string() + &"a normal line of text\r\n".repeat(5000);
    assert_eq!(c.mail("a@sender.net", &["alice@example.com"], &body).0, 250);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
}

#[test]
fn timeouts_shrink_when_sessions_run_short() {
    let g = Gateway::start(Options {
        smtp: "max_sessions = 10\nmax_sessions_per_client = 10\ncommand_timeout = \"60s\"\nstress_timeout = \"1s\"".into(),
        ..Options::default()
    });
    g.wait_startup_session_closed();
    // Five idle sessions of ten: no stress, they stay.
    let mut calm: Vec<Smtp> = (0..5).map(|_| g.smtp()).collect();
    std::thread::sleep(Duration::from_secs(2));
    for c in &mut calm {
        assert_eq!(
            c.cmd("NOOP").0,
            250,
            "not under stress: the 60 s timeout holds"
        );
    }
    // Nine of ten (over 80 %): idle sessions are cut after the stress timeout.
    // (A session's deadline is set when it starts to read: the ninth, opened under stress,
    // reads with the short one.)
    let mut more: Vec<Smtp> = (0..4).map(|_| g.smtp()).collect();
    let started = Instant::now();
    let r = more[3].reply();
    assert_eq!(r.0, 421, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(calm);
}

#[test]
fn invalid_utf8_and_control_bytes_are_refused_not_rewritten() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    c.send(b"MAIL FROM:<\xff\xfe@outside.net> SMTPUTF8\r\n");
    assert_eq!(c.reply().0, 553);
    assert_eq!(c.cmd("MAIL FROM:<a@outside.net> SMTPUTF8").0, 250);
    c.send(b"RCPT TO:<\xff@example.com>\r\n");
    assert_eq!(c.reply().0, 553);
    for bad in [
        &b"EHLO a\x00b\r\n"[..],
        b"EHLO a\x01b\r\n",
        b"EHLO \xc3\r\n",
    ] {
        c.send(bad);
        assert_eq!(c.reply().0, 501, "{:?}", String::from_utf8_lossy(bad));
    }
    // A HELO that is not a host name ends up in a comment; the header stays well formed.
    ehlo(&mut c);
    c.cmd("HELO evil (x); y");
    let r = c.mail(
        "a@outside.net",
        &["alice@example.com"],
        "Subject: helo\r\n\r\nx",
    );
    assert_eq!(r.0, 250);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let m = &g.mailbox("alice@example.com")[0];
    assert!(m.contains("Received: from unknown ("), "{m}");
    assert!(m.contains("helo=evil \\(x\\); y)"), "{m}");
    assert!(
        !g.data()
            .join("mailbox")
            .join("\u{fffd}@example.com")
            .exists()
    );
}

#[test]
fn recipients_over_the_limit_are_flow_control_not_errors() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    let mut batch = b"MAIL FROM:<bulk@sender.net>\r\n".to_vec();
    for i in 0..1030 {
        batch.extend_from_slice(format!("RCPT TO:<u{i}@example.org>\r\n").as_bytes());
    }
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch);
    let mut codes = Vec::new();
    for _ in 0..1032 {
        codes.push(c.reply().0);
    }
    assert_eq!(codes.iter().filter(|&&x| x == 452).count(), 30);
    assert_eq!(codes.last(), Some(&354), "the session went on to DATA");
    c.send(b"Subject: bulk\r\n\r\nto 1000 of 1030\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
}

#[test]
fn postmaster_is_accepted_and_nul_is_refused() {
    let g = Gateway::start(Options {
        smtp: "postmaster = \"hostmaster@example.org\"".into(),
        ..Options::default()
    });
    let mut c = g.smtp();
    ehlo(&mut c);
    let r = c.mail(
        "a@outside.net",
        &["postmaster"],
        "Subject: to the postmaster\r\n\r\nhello",
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(wait_until(WAIT, || g
        .mailbox("hostmaster@example.org")
        .len()
        == 1));
    assert_eq!(c.cmd("MAIL FROM:<a@outside.net>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n");
    let r = c.reply();
    assert_eq!(r.0, 554, "{r:?}");
    assert!(r.1.contains("NUL"), "{r:?}");
}

/// Peak and current resident memory of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// One message of `size` octets (CRLF lines of 78) with Python's smtplib; the reply code.
const SEND: &str = r#"
import smtplib, sys, threading
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
line = b"x" * 76 + b"\r\n"
body = b"Subject: big\r\n\r\n" + line * (size // len(line))
codes = []
def one():
    try:
        with smtplib.SMTP(host, port, timeout=120) as s:
            s.sendmail("a@outside.net", ["alice@example.com"], body)
            codes.append(250)
    except smtplib.SMTPDataError as e:
        codes.append(e.smtp_code)
ts = [threading.Thread(target=one) for _ in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(" ".join(map(str, sorted(codes))))
"#;

#[test]
fn message_memory_is_about_one_copy_and_given_back() {
    let mut g = Gateway::start(Options {
        smtp: "max_message_size = \"10MiB\"".into(),
        external_sink: true,
        ..Options::default()
    });
    g.start_sink();
    let pid = g.up.as_ref().unwrap().0.id();
    let (_, before) = memory(pid);
    let (n, size) = (10, 6_000_000u64);
    let out = common::python(
        SEND,
        &[
            &g.mx.ip().to_string(),
            &g.mx.port().to_string(),
            &n.to_string(),
            &size.to_string(),
        ],
    );
    assert_eq!(out.trim(), vec!["250"; n].join(" "));
    let (peak, _) = memory(pid);
    let total_kib = n as u64 * size / 1024;
    let grew = peak.saturating_sub(before);
    eprintln!(
        "{n} x {size} octets in parallel: peak RSS grew by {grew} KiB (messages: {total_kib} KiB)"
    );
    // On PostgreSQL the client library also serializes each body into its send buffer
    // while the INSERT is in flight: one more copy there.
    let copies = if common::on_postgres() { 3.0 } else { 1.5 };
    assert!(
        (grew as f64) < total_kib as f64 * copies,
        "peak RSS grew by {grew} KiB for {total_kib} KiB of messages"
    );
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == n));
    // Once delivered, the memory is given back (at most the store's cache stays).
    assert!(
        wait_until(WAIT, || memory(pid).1 < before + 40 * 1024),
        "RSS {} KiB, {before} KiB before the load",
        memory(pid).1
    );
}

#[test]
fn messages_beyond_the_memory_budget_get_452_and_are_not_lost() {
    let g = Gateway::start(Options {
        smtp: "max_message_size = \"4MiB\"\nmax_message_memory = \"6MiB\"".into(),
        ..Options::default()
    });
    // A session that has sent 3.3 MB of content and not yet its end.
    let line = format!("{}\r\n", "y".repeat(76));
    let pending = |c: &mut Smtp, rcpt: &str| {
        assert_eq!(c.cmd("MAIL FROM:<a@outside.net>").0, 250);
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(b"Subject: big\r\n\r\n");
        for _ in 0..42_000 {
            c.send(line.as_bytes());
        }
    };
    // The first message holds its 3.3 MB while the second arrives: 6.6 MB > 6 MiB.
    let mut first = g.smtp();
    ehlo(&mut first);
    pending(&mut first, "alice@example.com");
    std::thread::sleep(Duration::from_millis(500));
    let mut second = g.smtp();
    ehlo(&mut second);
    pending(&mut second, "bob@example.com");
    second.send(b".\r\n");
    let r = second.reply();
    assert_eq!(r.0, 452, "{r:?}");
    assert!(r.1.starts_with("4.3.1"), "{r:?}");
    first.send(b".\r\n");
    assert_eq!(first.reply().0, 250);
    // The sender tries again once there is room: nothing was lost.
    pending(&mut second, "bob@example.com");
    second.send(b".\r\n");
    assert_eq!(second.reply().0, 250);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.com").len() == 1));
}

#[test]
fn held_bdat_content_cannot_pin_the_memory_budget() {
    let g = Gateway::start(Options {
        smtp: "max_message_size = \"1MiB\"\nmax_message_memory = \"1MiB\"\ndata_timeout = \"2s\"\ncommand_timeout = \"30s\"".into(),
        ..Options::default()
    });
    // A chunk of 1 MB (the whole budget), then only NOOPs: the content's deadline runs on
    // between chunks.
    let mut holder = g.smtp();
    ehlo(&mut holder);
    assert_eq!(holder.cmd("MAIL FROM:<a@outside.net>").0, 250);
    assert_eq!(holder.cmd("RCPT TO:<alice@example.com>").0, 250);
    let chunk = format!("{}\r\n", "h".repeat(998)).repeat(1020);
    holder.send(format!("BDAT {}\r\n", chunk.len()).as_bytes());
    holder.send(chunk.as_bytes());
    assert_eq!(holder.reply().0, 250);
    // Meanwhile the budget is used up: others are told to come back.
    let mut other = g.smtp();
    ehlo(&mut other);
    assert_eq!(other.cmd("MAIL FROM:<b@outside.net>").0, 250);
    assert_eq!(other.cmd("RCPT TO:<bob@example.com>").0, 250);
    assert_eq!(other.cmd("DATA").0, 452);
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(10) {
        holder.send(b"NOOP\r\n");
        let r = holder.reply();
        if r.0 == 421 {
            assert!(r.1.starts_with("4.4.2"), "{r:?}");
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(cut, "NOOPs kept a half-sent BDAT message in memory");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Its memory is free again.
    assert_eq!(other.cmd("RSET").0, 250);
    let r = other.mail(
        "b@outside.net",
        &["bob@example.com"],
        "Subject: now\r\n\r\nroom again",
    );
    assert_eq!(r.0, 250, "{r:?}");
}

#[test]
fn mail_for_a_slow_destination_waits_without_its_body_in_memory() {
    // A client server that accepts connections and never says a word.
    let ip = common::unique_ip();
    let silent = std::net::TcpListener::bind((ip, 2527)).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().flatten().take(50) {
            keep.lock().unwrap().push(s);
        }
    });
    let g = Gateway::start(Options {
        smtp: "max_message_size = \"2MiB\"".into(),
        tail: format!("[[domain]]\nname = \"slow.test\"\ndestination = \"{ip}:2527\"\n"),
        ..Options::default()
    });
    let pid = g.up.as_ref().unwrap().0.id();
    let body = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "s".repeat(998)).repeat(1000)
    );
    let mut c = g.smtp();
    ehlo(&mut c);
    let mut batch = || {
        for _ in 0..20 {
            assert_eq!(c.mail("a@outside.net", &["victim@slow.test"], &body).0, 250);
        }
        std::thread::sleep(Duration::from_secs(1));
        memory(pid).1
    };
    // The first 20 MB bring the allocator to its working size (buffers it keeps for reuse,
    // per thread); the next 20 MB, also waiting for a destination that takes connections
    // and answers none, must not add their bodies to it.
    let (_, start) = memory(pid);
    let warm = batch();
    let after = batch();
    let grew = after.saturating_sub(warm);
    eprintln!("RSS: {start} KiB at start, {warm} KiB after 20 MB, {after} KiB after 40 MB");
    assert!(
        grew < 8 * 1024,
        "RSS grew by {grew} KiB from 20 MB to 40 MB queued for a stuck destination"
    );
    let listed = g.queue(&["list"]);
    assert!(listed.contains("-- 40 messages"), "{listed}");
    drop(held);
}

#[test]
fn confusable_addresses_utf8_orcpt_and_mail_loops_are_refused() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<a@outside.net> SMTPUTF8").0, 250);
    // The Kelvin sign lowercases to 'k': example.com to the policy, another domain to DNS.
    let r = c.cmd("RCPT TO:<kelvin@exampl\u{212a}.com>");
    assert_eq!(r.0, 553, "{r:?}");
    assert_eq!(c.cmd("RSET").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@outside.net>").0, 250);
    let r = c.cmd("RCPT TO:<alice@example.com> ORCPT=utf-8;j\u{f6}rg@example.com");
    assert_eq!(r.0, 553, "a UTF-8 ORCPT needs SMTPUTF8: {r:?}");
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let hops: String = (0..60)
        .map(|i| format!("Received: from hop{i}.example by hop{}.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n", i + 1))
        .collect();
    c.send(format!("{hops}Subject: loop\r\n\r\nround and round\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert_eq!(r.0, 554, "{r:?}");
    assert!(r.1.starts_with("5.4.6"), "{r:?}");
}

#[test]
fn any_broken_bdat_line_closes_the_session() {
    let g = Gateway::start(Options::default());
    let smuggled = b"MAIL FROM:<smug@evil.net>\r\nRCPT TO:<smuggled@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n";
    for line in [
        format!("BDAT\t{} LAST\r\n", smuggled.len()).into_bytes(),
        format!("BDAT\0{} LAST\r\n", smuggled.len()).into_bytes(),
        format!("BDAT {}{} LAST\r\n", " ".repeat(1100), smuggled.len()).into_bytes(),
    ] {
        let mut c = g.smtp();
        ehlo(&mut c);
        assert_eq!(c.cmd("MAIL FROM:<a@outside.net>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
        c.send(&line);
        c.send(smuggled);
        let r = c.reply();
        assert!(r.0 >= 500, "{r:?}");
        assert_eq!(
            rest(&mut c),
            "",
            "closed: the chunk was not read as commands"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(g.mailbox("smuggled@example.com").is_empty());
}

/// One call to the control API with Python's urllib: (status, body).
fn api(g: &Gateway, method: &str, path: &str, body: Option<&str>, auth: &str) -> (u16, String) {
    let token = std::fs::read_to_string(g.data().join("control.token")).unwrap();
    let out = common::python(
        r#"
import sys, urllib.request, urllib.error
addr, method, path, body, scheme, token = sys.argv[1:7]
if body.startswith("@"):
    body = open(body[1:]).read()
req = urllib.request.Request(f"http://{addr}{path}", method=method,
    data=body.encode() if body != "-" else None,
    headers={"Authorization": f"{scheme} {token.strip()}", "Content-Type": "application/json"})
try:
    r = urllib.request.urlopen(req, timeout=10)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"#,
        &[
            &g.control.to_string(),
            method,
            path,
            body.unwrap_or("-"),
            auth,
            &token,
        ],
    );
    let (status, rest) = out.split_once('\n').unwrap();
    (status.parse().unwrap(), rest.trim().to_string())
}

/// The client-domain API holds to the configuration's rules and answers in JSON (found by a
/// hostile probe: destinations with spaces or a line feed, which reached the logs; an empty
/// recipient list that refused everyone; backoffs of a nanosecond; non-domains such as `com`
/// or an IP address; settings stored as typed rather than as applied; a long recipient list
/// over the body limit; errors in plain text; a lower-case `bearer` refused).
#[test]
fn the_domain_api_refuses_what_the_rules_refuse_and_answers_in_json() {
    let g = Gateway::start(Options::default());
    let put = |name: &str, body: &str| {
        api(
            &g,
            "PUT",
            &format!("/api/v1/domains/{name}"),
            Some(body),
            "Bearer",
        )
    };
    for (name, body, field) in [
        (
            "x.example",
            r#"{"destination":"host with spaces:25"}"#,
            "destination",
        ),
        (
            "x.example",
            r#"{"destination":"x\n2026-01-01 INFO forged:25"}"#,
            "destination",
        ),
        ("x.example", r#"{"destination":"::1:25"}"#, "destination"),
        (
            "x.example",
            r#"{"destination":"mx","recipients":[]}"#,
            "recipients",
        ),
        (
            "x.example",
            r#"{"destination":"mx","retry":{"min_backoff":"1ns"}}"#,
            "retry.min_backoff",
        ),
        (
            "x.example",
            r#"{"destination":"mx","retry":{"lifetime":"99999d"}}"#,
            "retry.lifetime",
        ),
        ("com", r#"{"destination":"mx"}"#, "name"),
        ("127.0.0.1", r#"{"destination":"mx"}"#, "name"),
        ("dash-.example", r#"{"destination":"mx"}"#, "name"),
    ] {
        let (status, text) = put(name, body);
        assert_eq!(status, 400, "{name} {body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(field),
            "{body}: {text}"
        );
    }
    // Stored (and shown) as applied: trimmed, lower-cased, sorted, duplicates merged.
    let (status, text) = put(
        "Mixed.Example.",
        r#"{"destination":" 127.0.0.1:2526 ","recipients":["Bob ","alice","ALICE"]}"#,
    );
    assert_eq!(status, 204, "{text}");
    let (_, shown) = api(&g, "GET", "/api/v1/domains/mixed.example", None, "bearer");
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["settings"]["destination"], "127.0.0.1:2526", "{shown}");
    assert_eq!(
        v["settings"]["recipients"],
        serde_json::json!(["alice", "bob"]),
        "{shown}"
    );
    // A recipient list of thousands fits.
    let many: Vec<String> = (0..20_000).map(|i| format!("\"user{i}\"")).collect();
    let file = g.dir.path().join("big.json");
    let json = format!(
        r#"{{"destination":"mx","recipients":[{}]}}"#,
        many.join(",")
    );
    std::fs::write(&file, json).unwrap();
    let (status, text) = put("big.example", &format!("@{}", file.display()));
    assert_eq!(status, 204, "{text}");
    // Every refusal is JSON, whatever failed.
    for (method, path, body) in [
        ("GET", "/api/v1/trace?since=2h", None),
        ("GET", "/api/v1/queue?limit=lots", None),
        ("POST", "/api/v1/domains/x.example", Some("{}")),
        ("PUT", "/api/v1/domains/x.example", Some("[1, 2]")),
    ] {
        let (status, text) = api(&g, method, path, body, "Bearer");
        assert!(status >= 400, "{method} {path}: {status}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {text:?}"));
        assert!(v["error"]["message"].is_string(), "{method} {path}: {text}");
        assert!(v["error"]["code"].is_string(), "{method} {path}: {text}");
    }
    // The trace search needs no limit.
    let (status, text) = api(
        &g,
        "GET",
        "/api/v1/trace?to=alice@example.com",
        None,
        "Bearer",
    );
    assert_eq!(status, 200, "{text}");
}

/// The soft limit on open files of the process `pid`.
fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// `up` raises its soft limit on open files to the hard limit (a shell's 1024 would hold a
/// balancer to some 500 connections), and says what it has.
#[test]
fn up_raises_its_open_files_limit_to_the_hard_limit() {
    let g = Gateway::start(Options {
        before: "ulimit -S -n 300; ulimit -H -n 3000;".into(),
        ..Options::default()
    });
    let pid = g.up.as_ref().unwrap().0.id();
    assert_eq!(open_files_limit(pid), 3000);
}

/// Out of file descriptors (a hard limit of 150, a crowd of 300 connections): the sessions
/// past the limit wait to be accepted, a message ended meanwhile is either stored (250; the
/// embedded store's files are open already) or refused for now (4xx, so the sender keeps
/// it), the process lives on, and once the crowd leaves the message arrives, once.
#[test]
fn out_of_file_descriptors_loses_nothing_and_recovers() {
    let g = Gateway::start(Options {
        smtp: "max_sessions = 1000\nmax_sessions_per_client = 1000".into(),
        before: "ulimit -S -n 150; ulimit -H -n 150;".into(),
        ..Options::default()
    });
    let pid = g.up.as_ref().unwrap().0.id();
    let body = "Subject: under pressure\r\n\r\nkept\r\n";
    let mut c = g.smtp();
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(body.as_bytes());
    let crowd: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(g.mx).unwrap())
        .collect();
    // The process holds every descriptor it may.
    let open = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || open() >= 149),
        "{} open",
        open()
    );
    // Long enough out of descriptors for several tries of the accept loop (100 ms, then
    // longer), each of which would have logged before.
    std::thread::sleep(Duration::from_millis(1500));
    c.send(b".\r\n");
    let (code, text) = c.reply();
    assert!(code == 250 || (400..500).contains(&code), "{code} {text}");
    drop(crowd);
    // Given back: a refused message is sent again, as its sender would; either way it
    // arrives once.
    if code != 250 {
        let r = c.mail("bob@sender.net", &["alice@example.com"], body);
        assert_eq!(r.0, 250, "{r:?}");
    }
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    assert!(g.mailbox("alice@example.com")[0].contains("kept"));
    let mut fresh = g.smtp();
    assert_eq!(fresh.cmd("QUIT").0, 221);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(g.mailbox("alice@example.com").len(), 1);
    // One line when accepting starts to fail, one when it recovers: not one every try.
    // (A descriptor given back meanwhile, by a failed delivery say, makes a second
    // episode, which gets its own pair.)
    let log = g.log();
    let marks: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            if l.contains("accept failed") {
                Some("failed")
            } else if l.contains("accepting again") {
                Some("again")
            } else {
                None
            }
        })
        .collect();
    assert!(!marks.is_empty(), "{log}");
    for (i, mark) in marks.iter().enumerate() {
        assert_eq!(*mark, ["failed", "again"][i % 2], "{log}");
    }
    assert_eq!(marks.last(), Some(&"again"), "{log}");
}
