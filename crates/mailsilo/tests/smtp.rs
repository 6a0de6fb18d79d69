//! SMTP reception end to end: the real binary on loopback, driven with exact bytes, with
//! Python's smtplib and with swaks.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Gateway, Options, Smtp, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn ehlo(c: &mut Smtp) -> String {
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.0, 250, "{r:?}");
    r.1
}

#[test]
fn delivers_into_the_mailbox_with_received_header() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    let caps = ehlo(&mut c);
    for ext in [
        "PIPELINING",
        "SIZE 204800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "CHUNKING",
        "DSN",
    ] {
        assert!(caps.lines().any(|l| l == ext), "missing {ext} in {caps}");
    }
    let r = c.mail(
        "bob@sender.net",
        &["alice@example.com"],
        "Subject: hello\r\n\r\nHello Alice.",
    );
    assert_eq!(r.0, 250, "{r:?}");
    let id = r.1.rsplit(' ').next().unwrap().to_string();
    assert!(r.1.starts_with("2.0.0 Ok: queued as "), "{r:?}");
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let m = &g.mailbox("alice@example.com")[0];
    assert!(m.contains("Hello Alice.\r\n"), "{m}");
    assert!(
        m.contains(&format!(
            "by mx.test (mailsilo)\r\n\twith ESMTP id {id}\r\n\tfor <alice@example.com>"
        )),
        "{m}"
    );
    assert!(m.contains("Return-Path: <bob@sender.net>"), "{m}");
    // VRFY, HELP, NOOP, RSET answer as an MTA's should.
    let mut c = g.smtp();
    assert_eq!(c.cmd("VRFY alice").0, 252);
    assert_eq!(c.cmd("HELP").0, 214);
    assert_eq!(c.cmd("NOOP").0, 250);
    assert_eq!(c.cmd("RSET").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@b.c>").0, 503, "MAIL before HELO");
    assert_eq!(c.cmd("HELO client.test").0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.com>").0,
        503,
        "RCPT before MAIL"
    );
    assert_eq!(c.cmd("DATA").0, 503, "DATA before MAIL");
    assert_eq!(c.cmd("MAIL FROM:<>").0, 250, "null reverse-path");
    assert_eq!(c.cmd("MAIL FROM:<>").0, 503, "nested MAIL");
    assert_eq!(c.cmd("DATA").0, 554, "DATA without recipients");
    assert_eq!(c.cmd("FOO").0, 500);
}

#[test]
fn never_an_open_relay() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<spammer@evil.net>").0, 250);
    for (rcpt, code) in [
        ("victim@evil.net", 550),
        ("user%victim.net@example.com", 550),
        ("victim.net!user@example.com", 550),
        ("@example.com,@relay.net:victim@evil.net", 550),
        ("\"victim@evil.net\"@example.com", 550),
        ("\"victim%evil.net\"@example.com", 550),
        ("alice@example.com.", 550),
        ("victim@evil.net.", 550),
        ("victim@[127.0.0.1]", 550),
        ("victim@EXAMPLE.com.evil.net", 550),
        ("bob@strict.test", 550),
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(r.0, code, "{rcpt}: {r:?}");
        if code == 550 && rcpt != "bob@strict.test" {
            // Refused as relaying, not as an unknown user.
            assert!(r.1.starts_with("5.7.1"), "{rcpt}: {r:?}");
        }
    }
    assert_eq!(
        c.cmd("RCPT TO:<bob@strict.test>").1,
        "5.1.1 Recipient address rejected: user unknown"
    );
    assert_eq!(c.cmd("DATA").0, 554, "no recipient was accepted");
    // A source route is accepted and ignored (RFC 5321 section 3.6.1) when the final
    // recipient is a client's; so is a listed recipient of a restricted domain.
    assert_eq!(c.cmd("RCPT TO:<@relay.net:alice@example.com>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<Alice@Strict.Test>").0, 250);
}

/// Every SMTP-smuggling variant: the fake end of data and the smuggled transaction stay
/// inside the one message, which is refused; the session stays in step.
#[test]
fn smuggling_is_refused() {
    let g = Gateway::start(Options::default());
    // Each variant with what the refusal names: a bare CR or LF, or a NUL next to the dot
    // (which does not make a lone dot either).
    let bare = "Bare CR or LF";
    let variants: [(&[u8], &str); 9] = [
        (b"\n.\n", bare),
        (b"\r.\r", bare),
        (b"\n.\r\n", bare),
        (b"\r\n.\n", bare),
        (b"\r.\r\n", bare),
        (b"\r\n.\r", bare),
        (b"\n..\n", bare),
        (b"\r\n.\0\r\n", "NUL"),
        (b"\r\n\0.\r\n", "NUL"),
    ];
    let mut c = g.smtp();
    ehlo(&mut c);
    for (v, named) in variants {
        assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(b"Subject: innocent\r\n\r\nhello");
        c.send(v);
        c.send(b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n");
        let r = c.reply();
        assert_eq!(r.0, 554, "{:?}: {r:?}", String::from_utf8_lossy(v));
        assert!(r.1.contains(named), "{r:?}");
        // The next reply answers the next command: nothing smuggled was executed.
        assert_eq!(c.cmd("NOOP").1, "2.0.0 Ok");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(g.mailbox("victim@example.com").is_empty());
    assert!(g.mailbox("alice@example.com").is_empty());
}

#[test]
fn smuggling_normalised_stays_one_message() {
    let g = Gateway::start(Options {
        smtp: "bare_newlines = \"normalize\"".into(),
        ..Options::default()
    });
    let mut c = g.smtp();
    ehlo(&mut c);
    for v in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n"] {
        assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(b"Subject: innocent\r\n\r\nhello");
        c.send(v);
        c.send(b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n");
        assert_eq!(c.reply().0, 250);
        assert_eq!(c.cmd("NOOP").1, "2.0.0 Ok");
    }
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 4));
    for m in g.mailbox("alice@example.com") {
        assert!(
            m.contains("RCPT TO:<victim@example.com>\r\n"),
            "smuggled text stays in the body: {m}"
        );
        let body = m.replace("\r\n", "");
        assert!(!body.contains(['\r', '\n']), "normalised to CRLF: {m:?}");
    }
    assert!(g.mailbox("victim@example.com").is_empty());
}

#[test]
fn limits_on_lines_sizes_and_recipients() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    let long = format!("NOOP {}", "x".repeat(1200));
    assert_eq!(c.cmd(&long), (500, "5.5.2 Line too long".into()));
    assert_eq!(c.cmd("NOOP").0, 250, "the session goes on");
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net> SIZE=999999999").0, 552);
    // Content over the size limit: read to the end, then 552.
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net> SIZE=1000").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let line = format!("{}\r\n", "y".repeat(900));
    for _ in 0..300 {
        c.send(line.as_bytes());
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert_eq!(r.0, 552, "{r:?}");
    assert!(r.1.starts_with("5.3.4"));
    // A text line over 998 characters.
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(format!("Subject: x\r\n\r\n{}\r\n.\r\n", "z".repeat(999)).as_bytes());
    assert_eq!(c.reply().0, 554);
    // 150 recipients in one transaction, all delivered.
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
    let rcpts: Vec<String> = (0..150).map(|i| format!("user{i}@example.org")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    for r in &refs {
        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).0, 250);
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: many\r\n\r\nto many\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    assert!(wait_until(WAIT, || refs
        .iter()
        .all(|r| g.mailbox(r).len() == 1)));

    let g = Gateway::start(Options {
        smtp: "max_recipients = 100".into(),
        ..Options::default()
    });
    let mut c = g.smtp();
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<bob@sender.net>").0, 250);
    for i in 0..100 {
        assert_eq!(c.cmd(&format!("RCPT TO:<u{i}@example.com>")).0, 250);
    }
    assert_eq!(
        c.cmd("RCPT TO:<u100@example.com>"),
        (452, "4.5.3 Too many recipients".into())
    );
}

#[test]
fn session_limits_errors_and_timeouts() {
    let g = Gateway::start(Options {
        smtp: "max_sessions_per_client = 2\nmax_errors = 3\ncommand_timeout = \"3s\"".into(),
        ..Options::default()
    });
    g.wait_startup_session_closed();
    let mut a = g.smtp();
    let _b = g.smtp();
    let mut third = std::net::TcpStream::connect(g.mx).unwrap();
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut third, &mut buf).unwrap();
    assert!(buf.starts_with("421 4.7.0"), "{buf:?}");
    // Errors: the third bad command ends the session.
    assert_eq!(a.cmd("BOGUS").0, 500);
    assert_eq!(a.cmd("BOGUS").0, 500);
    a.send(b"BOGUS\r\n");
    assert_eq!(a.reply().0, 500);
    assert_eq!(
        a.reply(),
        (421, "4.7.0 Too many errors, closing connection".into())
    );
    assert!(a.closed());
    // Idle past command_timeout: 421 and closed. (The closed session's slot is given back
    // just after its socket closes: a new session may need a moment to get it.)
    let mut c = None;
    assert!(wait_until(Duration::from_secs(5), || {
        let mut s = Smtp::connect_any(g.mx);
        let greeted = s.reply().0 == 220;
        c = greeted.then_some(s);
        greeted
    }));
    let mut c = c.unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(c.reply().0, 421);
    assert!(c.closed());
}

#[test]
fn pipelining_bdat_and_utf8() {
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    ehlo(&mut c);
    // One write, four replies in order.
    c.send(b"MAIL FROM:<bob@sender.net>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@evil.net>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 550);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 354);
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    // BDAT: chunks are length-framed; a dot line inside is content.
    c.send(b"MAIL FROM:<bob@sender.net>\r\nRCPT TO:<dave@example.com>\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    let chunk1 = b"Subject: chunked\r\n\r\nline one\r\n.\r\nQUIT\r\n";
    c.send(format!("BDAT {}\r\n", chunk1.len()).as_bytes());
    c.send(chunk1);
    assert_eq!(c.reply().0, 250);
    let chunk2 = b"line two\r\n";
    c.send(format!("BDAT {} LAST\r\n", chunk2.len()).as_bytes());
    c.send(chunk2);
    let r = c.reply();
    assert_eq!(r.0, 250, "{r:?}");
    // BDAT without a transaction: its bytes are swallowed, never run as commands.
    c.send(b"BDAT 6\r\nQUIT\r\n");
    assert_eq!(c.reply().0, 503);
    assert_eq!(c.cmd("NOOP").0, 250);
    // UTF-8 addresses need SMTPUTF8; 8-bit content with BODY=8BITMIME.
    assert_eq!(c.cmd("MAIL FROM:<jörg@sender.net>").0, 553);
    assert_eq!(
        c.cmd("MAIL FROM:<jörg@sender.net> SMTPUTF8 BODY=8BITMIME")
            .0,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<zoë@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send("Subject: grüße\r\n\r\nÄÖÜ ß\r\n.\r\n".as_bytes());
    assert_eq!(c.reply().0, 250);

    assert!(wait_until(WAIT, || g.mailbox("dave@example.com").len()
        == 1
        && g.mailbox("zoë@example.com").len() == 1));
    let dave = &g.mailbox("dave@example.com")[0];
    assert!(
        dave.ends_with("line one\r\n.\r\nQUIT\r\nline two\r\n"),
        "{dave:?}"
    );
    assert!(g.mailbox("zoë@example.com")[0].contains("ÄÖÜ ß"));
    assert_eq!(g.mailbox("carol@example.org").len(), 1);
}

#[test]
fn starttls_needs_ehlo_and_discards_injected_plaintext() {
    let g = Gateway::start(Options::default());
    // Python's ssl does the handshake; the plaintext sent after STARTTLS must vanish.
    let script = r#"
import socket, ssl, sys
s = socket.create_connection((sys.argv[2], int(sys.argv[1])), timeout=10)
def reply(f):
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l)
        if l[3] == " ":
            return lines
f = s.makefile("rb")
assert reply(f)[0].startswith("220")
# STARTTLS is offered by EHLO: refused before it, and inside a transaction.
s.sendall(b"STARTTLS\r\n")
r = reply(f); assert r[0].startswith("503 5.5.1 Send EHLO"), r
s.sendall(b"HELO x\r\nSTARTTLS\r\n"); reply(f)
r = reply(f); assert r[0].startswith("503 5.5.1 Send EHLO"), r
s.sendall(b"EHLO x\r\n"); reply(f)
s.sendall(b"MAIL FROM:<a@b.net>\r\n"); reply(f)
s.sendall(b"STARTTLS\r\n")
r = reply(f); assert r[0].startswith("503 5.5.1 STARTTLS not allowed inside"), r
s.sendall(b"RSET\r\n"); assert reply(f)[0].startswith("250")
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.net>\r\n")
r = reply(f)
assert r[0].startswith("220 2.0.0"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="mx.test")
tf = t.makefile("rb")
t.sendall(b"MAIL FROM:<a@b.net>\r\n")
r = reply(tf); assert r[0].startswith("503"), ("EHLO required after STARTTLS", r)
t.sendall(b"EHLO x\r\n")
r = reply(tf); assert not any("STARTTLS" in l for l in r), r
t.sendall(b"MAIL FROM:<a@b.net>\r\n")
r = reply(tf); assert r[0].startswith("250"), ("injected MAIL was not run, so no nested MAIL", r)
print("ok", t.version())
"#;
    assert!(
        common::python(script, &[&g.mx.port().to_string(), &g.mx.ip().to_string()])
            .starts_with("ok TLSv1.3")
    );
}

#[test]
fn python_smtplib_with_starttls() {
    let g = Gateway::start(Options::default());
    let script = r#"
import smtplib, ssl, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "sender@outside.net"; m["To"] = "alice@example.com, bob@example.org"; m["Subject"] = "smtplib"
m.set_content("Sent by smtplib over STARTTLS.\n")
with smtplib.SMTP(sys.argv[2], int(sys.argv[1]), timeout=10) as s:
    s.ehlo()
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo()
    refused = s.send_message(m)
    assert refused == {}, refused
    try:
        s.sendmail("x@outside.net", ["victim@evil.net"], "Subject: relay\r\n\r\nno")
        raise SystemExit("relay accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["victim@evil.net"][0] == 550
print("ok")
"#;
    assert_eq!(
        common::python(script, &[&g.mx.port().to_string(), &g.mx.ip().to_string()]),
        "ok\n"
    );
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.org").len() == 1));
    let m = &g.mailbox("alice@example.com")[0];
    assert!(m.contains("Sent by smtplib over STARTTLS."), "{m}");
    assert!(m.contains("with ESMTPS id"), "TLS shows in Received: {m}");
    assert!(m.contains("(using TLSv1.3 with cipher"), "{m}");
    // The first Received: is the sink's: the relay hop itself used STARTTLS.
    let first = m.split("Received: ").nth(1).unwrap();
    assert!(
        first.contains("by sink.mx.test (mailsilo)\r\n\t(using TLSv1.3"),
        "{first}"
    );
}

#[test]
fn swaks_sends_with_tls_and_pipelining() {
    let g = Gateway::start(Options::default());
    let server = g.mx.to_string();
    for extra in [&["--tls"][..], &["--pipeline"][..]] {
        let out = Command::new("swaks")
            .args([
                "--server",
                &server,
                "--from",
                "swaks@outside.net",
                "--to",
                "alice@example.com",
                "--body",
                "via swaks",
            ])
            .args(extra)
            .output()
            .expect("swaks is installed (Debian package swaks)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = Command::new("swaks")
        .args([
            "--server",
            &server,
            "--from",
            "swaks@outside.net",
            "--to",
            "victim@evil.net",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1"));
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 2));
}
