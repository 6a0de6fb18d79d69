//! The filter end to end, through the binary: GTUBE refused at end of DATA before any 250,
//! a spam quarantined, listed and released with the CLI to its original recipients, one
//! message split by the recipients' policies, scan headers on delivered mail (forged ones
//! removed), and `mailsilo train`, `check` and `classifier stats` on files, mboxes and
//! Maildirs, with the running gateway loading the new model by itself.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Gateway, Options, http_get, wait_until};

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const WAIT: Duration = Duration::from_secs(20);

/// A rule that makes a subject spam, and a client domain whose policy tags spam.
const TAIL: &str = r#"
[filter]
[[filter.rule]]
name = "TEST_HOLD"
header = "subject"
pattern = "hold me"
score = 8.0
reason = "the test's hold subject"

[[domain]]
name = "tagged.test"
destination = "{sink}"
[domain.filter]
spam_action = "tag"
subject_prefix = "[SPAM]"
"#;

/// One message in a session of its own; the final reply.
fn send(g: &Gateway, from: &str, to: &[&str], body: &str) -> (u16, String) {
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    s.mail(from, to, body)
}

fn gateway() -> Gateway {
    Gateway::start(Options {
        tail: TAIL.into(),
        ..Options::default()
    })
}

/// The queue id a 250 reply names.
fn queued_as(reply: &str) -> String {
    reply.rsplit(' ').next().unwrap().trim().to_string()
}

#[test]
fn gtube_is_refused_at_end_of_data_and_nothing_is_kept() {
    let g = gateway();
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "someone@outside.example",
        &["alice@example.com"],
        &format!("Subject: test\r\n\r\nthe test string: {GTUBE}\r\n"),
    );
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1") && text.contains("GTUBE"), "{text}");
    // The session goes on: the next message is taken.
    let (code, text) = s.mail(
        "someone@outside.example",
        &["alice@example.com"],
        "Subject: lunch\r\n\r\nnoon?\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    std::thread::sleep(Duration::from_millis(500));
    let delivered = g.mailbox("alice@example.com");
    assert_eq!(
        delivered.len(),
        1,
        "the GTUBE message must not be delivered"
    );
    assert!(delivered[0].contains("Subject: lunch"));
    assert!(g.admin("quarantine", &["list"]).contains("-- 0 messages"));
    // The refused message is traced, with the reply its sender got.
    let found = g.admin("trace", &["--to", "alice@example.com", "--verdict", "spam"]);
    assert!(
        found.contains("[spam]") && found.contains("-- 1 message"),
        "{found}"
    );
    let id = found.split_whitespace().next().unwrap();
    // Arguments that cannot find anything are refused, not answered with nothing.
    for args in [&["--verdict", "spma"][..], &["--limit", "0"], &[""]] {
        let out = g.admin_command("trace", args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    let trace = g.admin("trace", &[id]);
    assert!(
        trace.contains("refused") && trace.contains("550 5.7.1 Message refused as"),
        "{trace}"
    );
    let metrics = http_get(g.control, "/metrics");
    for want in [
        "mailsilo_filter_messages_total{verdict=\"spam\",action=\"reject\"} 1",
        "mailsilo_filter_messages_total{verdict=\"clean\",action=\"deliver\"} 1",
        "mailsilo_filter_scan_seconds_count 2",
        "mailsilo_filter_check_failures_total{check=\"classifier\"} 2",
        "result=\"refused\"} 1\n",
        "result=\"taken\"} 1\n",
        "code=\"550\"} 1\n",
        "mailsilo_smtp_data_reply_seconds_count 2\n",
        "mailsilo_queue_deliveries_total{outcome=\"delivered\"} 1\n",
        "mailsilo_store_up 1\n",
        "mailsilo_portal_requests_total{kind=\"api\",status=\"200\"}",
    ] {
        assert!(metrics.contains(want), "{want} not in:\n{metrics}");
    }
}

/// The body of a plain HTTP GET.

#[test]
fn spam_is_quarantined_and_released_to_its_recipients() {
    let g = gateway();
    let (code, text) = send(
        &g,
        "promo@outside.example",
        &["alice@example.com", "bob@example.org"],
        "Subject: please hold me\r\nX-Spam-Status: No, forged\r\n\r\nbuy now\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let id = queued_as(&text);
    let list = g.admin("quarantine", &["list"]);
    assert!(list.contains(&id) && list.contains("spam"), "{list}");
    assert!(
        list.contains("alice@example.com, bob@example.org"),
        "{list}"
    );
    let show = g.admin("quarantine", &["show", &id]);
    assert!(show.contains("the test's hold subject"), "{show}");
    assert!(show.contains("Subject: please hold me"), "{show}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(g.mailbox("alice@example.com").is_empty());

    let released = g.admin("quarantine", &["release", &id]);
    assert!(released.contains("queued as"), "{released}");
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.org").len() == 1));
    assert!(g.admin("quarantine", &["list"]).contains("-- 0 messages"));
    let again = g
        .admin_command("quarantine", &["release", &id])
        .output()
        .unwrap();
    assert!(!again.status.success(), "released twice");
    let trace = g.admin("trace", &[&id]);
    for want in [
        "scanned: score 8.00 (spam, quarantine)",
        "TEST_HOLD(8.00)",
        "quarantined",
        "released",
    ] {
        assert!(trace.contains(want), "{want} not in the trace:\n{trace}");
    }
}

#[test]
fn recipients_get_their_own_domains_action_and_the_scan_headers() {
    let g = gateway();
    let (code, text) = send(
        &g,
        "promo@outside.example",
        &["alice@example.com", "carol@tagged.test"],
        "Subject: hold me please\r\nX-Spam-Flag: NO\r\n\r\noffer\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert!(wait_until(WAIT, || g.mailbox("carol@tagged.test").len() == 1));
    let tagged = &g.mailbox("carol@tagged.test")[0];
    assert!(
        tagged.contains("Subject: [SPAM] hold me please"),
        "{tagged}"
    );
    assert!(tagged.contains("X-Spam-Flag: YES"), "{tagged}");
    assert!(
        tagged.contains("X-Spam-Status: Yes, score=8.00 action=tag"),
        "{tagged}"
    );
    assert!(
        !tagged.contains("X-Spam-Flag: NO"),
        "a forged header survived: {tagged}"
    );
    let list = g.admin("quarantine", &["list"]);
    assert!(
        list.contains("alice@example.com") && !list.contains("carol"),
        "{list}"
    );
    assert!(g.mailbox("alice@example.com").is_empty());

    // Clean mail says it was scanned, and that the classifier has no model yet.
    let (code, _) = send(
        &g,
        "friend@outside.example",
        &["alice@example.com"],
        "Subject: lunch\r\n\r\nnoon?\r\n",
    );
    assert_eq!(code, 250);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let clean = &g.mailbox("alice@example.com")[0];
    assert!(
        clean.contains("X-Spam-Status: No, score=0.00 action=deliver"),
        "{clean}"
    );
    assert!(
        clean.contains("X-Mailsilo-Degraded: CLASSIFIER_ABSENT"),
        "{clean}"
    );
}

/// Messages that tell two vocabularies apart, as files.
fn corpus(dir: &Path) {
    let maildir = dir.join("spam/cur");
    std::fs::create_dir_all(&maildir).unwrap();
    std::fs::create_dir_all(dir.join("spam/new")).unwrap();
    for i in 0..60 {
        std::fs::write(
            maildir.join(format!("{i}.eml")),
            format!("From: deals{i}@promo.example\r\nSubject: cheap pills {i}\r\n\r\nbuy cheap pills now, limited offer {i}, click the link\r\n"),
        )
        .unwrap();
    }
    let mut mbox = String::new();
    for i in 0..60 {
        mbox.push_str(&format!(
            "From colleague@work.example Mon Jan  1 00:00:00 2024\nFrom: colleague{i}@work.example\nSubject: minutes {i}\n\nthe meeting agenda for release {i} is attached, see you on monday\n\n"
        ));
    }
    std::fs::write(dir.join("ham.mbox"), mbox).unwrap();
    std::fs::write(
        dir.join("one-spam.eml"),
        "From: deals@promo.example\r\nSubject: cheap pills\r\n\r\nbuy cheap pills now, limited offer\r\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("one-ham.eml"),
        "From: colleague@work.example\r\nSubject: minutes\r\n\r\nthe agenda for the release meeting on monday\r\n",
    )
    .unwrap();
}

fn run(g: &Gateway, args: &[&str]) -> (i32, String) {
    let out = Command::new(&*BIN)
        .args(args)
        .arg("--config")
        .arg(&g.config)
        .arg("--data-dir")
        .arg(g.data())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn train_check_and_stats_and_the_gateway_follows_the_model() {
    let g = gateway();
    let files = tempfile::tempdir().unwrap();
    corpus(files.path());
    let path = |p: &str| files.path().join(p).display().to_string();

    let (code, out) = run(&g, &["check", "--json", &path("one-ham.eml")]);
    assert_eq!(code, 0, "{out}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["degraded"], true, "{out}");
    assert_eq!(line["verdict"], "clean");

    let (code, out) = run(
        &g,
        &["train", "--spam", &path("spam"), "--ham", &path("ham.mbox")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("learned 120 messages (120 new or changed class)"),
        "{out}"
    );
    let (_, out) = run(&g, &["train", "--spam", &path("spam")]);
    assert!(
        out.contains("learned 60 messages (0 new or changed class)"),
        "learning twice counts once: {out}"
    );
    let (_, out) = run(&g, &["classifier", "stats"]);
    assert!(out.contains("examples: 60 spam, 60 ham"), "{out}");

    let (code, out) = run(
        &g,
        &[
            "check",
            "--json",
            &path("one-spam.eml"),
            &path("one-ham.eml"),
        ],
    );
    assert_eq!(code, 1, "a spam among them: exit status 1\n{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["verdict"], "spam", "{out}");
    assert_eq!(lines[0]["symbols"][0]["name"], "CLASSIFIER_SPAM", "{out}");
    assert_eq!(lines[1]["verdict"], "clean", "{out}");
    assert_eq!(lines[1]["degraded"], false, "{out}");
    let (code, out) = run(&g, &["check", "/nonexistent/file"]);
    assert_eq!(code, 2, "{out}");
    // Every error is status 2 (1 means "not clean"), a wrong configuration's too; a folder
    // with no message is one; what is not a file in a folder is skipped aloud.
    let empty = files.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let out = Command::new(&*BIN)
        .args(["check", "--config", "/nonexistent.toml"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (code, out) = run(&g, &["check", &empty.display().to_string()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("sub: skipped, not a regular file"), "{out}");
    assert!(out.contains("no messages in"), "{out}");
    let (code, out) = run(&g, &["check", "--rcpt", "alice", &path("one-ham.eml")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--rcpt: give an address"), "{out}");

    // The running gateway loads the model by itself.
    assert!(wait_until(Duration::from_secs(15), || {
        let (code, text) = send(
            &g,
            "colleague@work.example",
            &["alice@example.com"],
            "Subject: minutes\r\n\r\nthe agenda for the release meeting on monday\r\n",
        );
        assert_eq!(code, 250, "{text}");
        let trace = g.admin("trace", &[&queued_as(&text)]);
        trace.contains("CLASSIFIER_HAM")
    }));

    let (_, out) = run(&g, &["train", "--forget", &path("spam")]);
    assert!(out.contains("forgot 60"), "{out}");
    let (_, out) = run(&g, &["classifier", "stats"]);
    assert!(
        out.contains("examples: 0 spam, 60 ham") && out.contains("abstains"),
        "{out}"
    );
}

/// A resolver that does not answer: every message still gets its 250 within about the
/// DNS timeout, scanned and marked degraded, and is delivered; once the breaker opens the
/// next messages do not wait at all.
#[test]
fn a_silent_resolver_degrades_the_verdict_and_mail_keeps_flowing() {
    // A UDP socket that reads nothing and answers nothing.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gateway::start(Options {
        tail: format!(
            "[filter]\nnameservers = [\"{}\"]\ndns_timeout = \"500ms\"\n",
            silent.local_addr().unwrap()
        ),
        ..Options::default()
    });
    let mut waits = Vec::new();
    for i in 0..5 {
        let started = std::time::Instant::now();
        let (code, text) = send(
            &g,
            "someone@outside.example",
            &["alice@example.com"],
            &format!("Subject: note {i}\r\n\r\nhello\r\n"),
        );
        waits.push(started.elapsed());
        assert_eq!(code, 250, "{text}");
        let trace = g.admin("trace", &[&queued_as(&text)]);
        assert!(trace.contains("[degraded]"), "{trace}");
    }
    assert!(
        waits[..3].iter().all(|w| *w < Duration::from_secs(3)),
        "{waits:?}"
    );
    assert!(
        waits[3..].iter().all(|w| *w < Duration::from_millis(500)),
        "the breaker did not open: {waits:?}"
    );
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 5));
    let delivered = &g.mailbox("alice@example.com")[0];
    assert!(delivered.contains("X-Mailsilo-Degraded:"), "{delivered}");
    // mailsilo check asks it once, gets no reply within the timeout, says so and skips the
    // DNS checks of every message at once.
    let files = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::write(
            files.path().join(format!("{i}.eml")),
            "Subject: offline\r\n\r\nhello\r\n",
        )
        .unwrap();
    }
    let started = std::time::Instant::now();
    let (_, out) = run(&g, &["check", files.path().to_str().unwrap()]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(out.contains("does not answer"), "{out}");
    assert_eq!(out.matches("DNS_UNAVAILABLE ").count(), 3, "{out}");
    drop(silent);
}

/// Connection-stage policy: a client that talks before the greeting is refused, one that
/// waits is greeted (and not made to wait again); past the per-client rate limit, MAIL
/// FROM gets 451.
#[test]
fn early_talkers_are_refused_and_rates_are_limited() {
    let g = Gateway::start(Options {
        smtp: "greet_pause = \"1s\"".into(),
        tail: "[filter]\n[filter.rate_limit]\nclient = 3\n".into(),
        ..Options::default()
    });
    use std::io::{Read, Write};
    let mut early = std::net::TcpStream::connect(g.mx).unwrap();
    early.write_all(b"EHLO impatient.example\r\n").unwrap();
    let mut said = String::new();
    early.read_to_string(&mut said).unwrap();
    assert!(said.starts_with("554 5.5.1"), "{said}");

    let started = std::time::Instant::now();
    let mut s = common::Smtp::connect(g.mx);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the greeting came at once"
    );
    assert_eq!(s.cmd("EHLO patient.example").0, 250);
    let started = std::time::Instant::now();
    let mut again = common::Smtp::connect(g.mx);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a patient client waited again"
    );
    assert_eq!(again.cmd("EHLO patient.example").0, 250);
    drop(again);

    for i in 0..3 {
        let (code, text) = s.mail(
            "a@outside.example",
            &["alice@example.com"],
            &format!("Subject: {i}\r\n\r\nx\r\n"),
        );
        assert_eq!(code, 250, "{text}");
    }
    let (code, text) = s.cmd("MAIL FROM:<a@outside.example>");
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("4.7.1 Rate limit exceeded for client"),
        "{text}"
    );
}

/// Greylisting for a client domain that asks for it: a new triplet gets 451 until it is
/// retried after the delay; then the client's network passes at once, for other senders
/// too; a domain without greylisting is never delayed.
#[test]
fn greylisting_delays_new_triplets_then_lets_the_network_through() {
    let g = Gateway::start(Options {
        tail: "[filter.greylisting]\ndelay = \"2s\"\nwindow = \"1h\"\n\n[[domain]]\nname = \"grey.test\"\ndestination = \"{sink}\"\n[domain.filter]\ngreylist = true\n".into(),
        ..Options::default()
    });
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@outside.example>").0, 250);
    let (code, text) = s.cmd("RCPT TO:<carol@grey.test>");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.7.1 Greylisted"), "{text}");
    assert_eq!(
        s.cmd("RCPT TO:<alice@example.com>").0,
        250,
        "no greylisting for example.com"
    );
    assert_eq!(s.cmd("RSET").0, 250);
    std::thread::sleep(Duration::from_millis(2200));
    let (code, text) = s.mail(
        "a@outside.example",
        &["carol@grey.test"],
        "Subject: retried\r\n\r\nhello\r\n",
    );
    assert_eq!(code, 250, "{text}");
    // The network passed: another sender is not delayed.
    assert_eq!(s.cmd("MAIL FROM:<b@elsewhere.example>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<dave@grey.test>").0, 250);
    assert!(wait_until(WAIT, || g.mailbox("carol@grey.test").len() == 1));
}

/// A recipient's own block list: one message to two recipients of the same domain is held
/// for the one who blocked its sender and delivered to the other.
#[test]
fn a_recipients_own_block_list_applies_to_that_recipient_only() {
    let g = Gateway::start(Options {
        tail: "[[domain]]\nname = \"users.test\"\ndestination = \"{sink}\"\n[domain.filter.users.alice]\nblock = [\"pushy.example\"]\n".into(),
        ..Options::default()
    });
    let (code, text) = send(
        &g,
        "sales@pushy.example",
        &["alice@users.test", "bob@users.test"],
        "Subject: offer\r\n\r\nhello\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert!(wait_until(WAIT, || g.mailbox("bob@users.test").len() == 1));
    let list = g.admin("quarantine", &["list"]);
    assert!(
        list.contains("alice@users.test") && !list.contains("bob@"),
        "{list}"
    );
    assert!(g.mailbox("alice@users.test").is_empty());
}

/// Early refusals per client domain: a domain that refuses listed clients gets 550 at RCPT
/// TO from a client a DNS list lists, one that refuses SPF failures 550 for a sender whose
/// SPF forbids the client; the other recipients of the same transaction are taken, and
/// the message scored. A network on the domain's allow list exempts its clients. The DNS
/// answers come from the gateway's own DNS on loopback.
#[test]
fn early_refusals_apply_to_the_domains_that_ask_for_them() {
    let tail = r#"
[dns]
listen = ["{ip}:5353"]

[[dns.zone]]
name = "bl.test"
nameservers = ["ns1.bl.test"]
hostmaster = "hostmaster.bl.test"
serial = 1

[[dns.zone.record]]
name = "1.0.0.127"
type = "A"
value = "127.0.0.2"

[[dns.zone]]
name = "senders.test"
nameservers = ["ns1.senders.test"]
hostmaster = "hostmaster.senders.test"
serial = 1

[[dns.zone.record]]
name = "forbidden"
type = "TXT"
value = "v=spf1 -all"

[[dns.zone.record]]
name = "permitted"
type = "TXT"
value = "v=spf1 ip4:127.0.0.0/8 -all"

[filter]
nameservers = ["{ip}:5353"]

[[filter.dnsbl]]
zone = "bl.test"
score = 1.0

[[domain]]
name = "listed.test"
destination = "{sink}"
[domain.filter]
reject_listed = true

[[domain]]
name = "spf.test"
destination = "{sink}"
[domain.filter]
reject_spf_fail = true

[[domain]]
name = "trusting.test"
destination = "{sink}"
[domain.filter]
reject_listed = true
allow = ["127.0.0.0/8"]
"#;
    let g = Gateway::start(Options {
        tail: tail.into(),
        ..Options::default()
    });
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@forbidden.senders.test>").0, 250);
    let (code, text) = s.cmd("RCPT TO:<x@listed.test>");
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1 Client [127.0.0.1] listed by bl.test"),
        "{text}"
    );
    let (code, text) = s.cmd("RCPT TO:<y@spf.test>");
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.23 SPF of forbidden.senders.test does not permit [127.0.0.1]"),
        "{text}"
    );
    assert_eq!(s.cmd("RCPT TO:<z@trusting.test>").0, 250, "allowed network");
    assert_eq!(s.cmd("RCPT TO:<alice@example.com>").0, 250, "scores only");
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(b"Subject: early\r\n\r\nhello\r\n.\r\n");
    assert_eq!(s.reply().0, 250);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("z@trusting.test").len() == 1));
    let delivered = &g.mailbox("alice@example.com")[0];
    assert!(
        delivered.contains("DNSBL_LISTED(1.00)") && delivered.contains("SPF_FAIL("),
        "scored instead: {delivered}"
    );
    assert!(g.mailbox("x@listed.test").is_empty() && g.mailbox("y@spf.test").is_empty());
    // A sender whose SPF permits the client: taken by the SPF domain.
    assert_eq!(s.cmd("MAIL FROM:<a@permitted.senders.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<y@spf.test>").0, 250);
    assert_eq!(s.cmd("RSET").0, 250);
    // A DNS that refuses a sender domain's questions is answering: the checks go on for
    // the messages that follow (a refusal once read as a timeout, which took the resolver
    // for down and skipped every check for 30 s).
    for i in 0..4 {
        let (code, text) = s.mail(
            "a@outside.example",
            &["bob@example.com"],
            &format!("Subject: next {i}\r\n\r\nhello\r\n"),
        );
        assert_eq!(code, 250, "{text}");
    }
    assert!(wait_until(WAIT, || g.mailbox("bob@example.com").len() == 4));
    for m in g.mailbox("bob@example.com") {
        assert!(
            m.contains("DNSBL_LISTED(1.00)") && !m.contains("DNS_UNAVAILABLE"),
            "{m}"
        );
    }
    // mailsilo check first asks the resolver about this server's own name; the gateway's
    // DNS refuses it (no zone of its own holds it), which is an answer: the checks run.
    // (A refusal once read as silence, and check skipped every DNS check.)
    let message = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(message.path(), "Subject: offline\r\n\r\nhello\r\n").unwrap();
    let (_, out) = run(
        &g,
        &[
            "check",
            "--ip",
            "127.0.0.1",
            message.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("DNSBL_LISTED") && !out.contains("DNS_UNAVAILABLE"),
        "{out}"
    );
}
