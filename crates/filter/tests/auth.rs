//! Sender authentication against real signers: messages signed by dkimpy's `dkimsign`
//! (RSA and Ed25519; relaxed and simple canonicalization) verify and tampered copies fail;
//! ARC chains sealed by dkimpy's `arcsign` verify; DMARC takes each policy path (none,
//! quarantine, reject, pct, the subdomain policy) and both alignment modes, and the
//! client domain's DMARC mode turns the policy into an action. Keys are made by dkimpy's
//! `dknewkey` and published, with SPF and DMARC records, by a loopback DNS server.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ZoneServer, check};
use config::{DmarcMode, FilterPolicy};
use mailsilo_filter::{Action, Envelope, Report, decide};
use serde_json::json;

const CLIENT: &str = "192.0.2.10";
const MESSAGE: &str = "From: Alice <alice@sender.test>\r\nTo: bob@client.test\r\nSubject: quarterly figures\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n\r\nThe figures are attached.\r\nRegards,\r\nAlice\r\n";

/// A key made by `dknewkey`: its private key file and the TXT record to publish.
struct Key {
    file: std::path::PathBuf,
    record: String,
}

fn key(dir: &Path, name: &str, kind: &str) -> Key {
    let out = Command::new("dknewkey")
        .current_dir(dir)
        .args(["--ktype", kind, name])
        .output()
        .expect("dknewkey runs (PyPI dkimpy: scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = std::fs::read_to_string(dir.join(format!("{name}.dns"))).unwrap();
    Key {
        file: dir.join(format!("{name}.key")),
        record: record.trim().to_string(),
    }
}

/// A TXT record's strings (at most 255 octets each).
fn txt(record: &str) -> serde_json::Value {
    let chunks: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    json!({ "TXT": chunks })
}

/// The message signed by `dkimsign` or `opendkim-testmsg` (or sealed by `arcsign`).
fn sign(tool: &str, args: &[&str], message: &str) -> String {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} runs (PyPI dkimpy): {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each prints the new header fields, then the message.
    String::from_utf8(out.stdout)
        .unwrap()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
}

fn names(r: &Report) -> Vec<&str> {
    r.symbols.iter().map(|s| s.name.as_str()).collect()
}

fn policy(mode: DmarcMode) -> FilterPolicy {
    FilterPolicy {
        dmarc: mode,
        ..FilterPolicy::default()
    }
}

fn action(r: &Report, mode: DmarcMode, sender: &str) -> Action {
    let env = Envelope {
        client: Some(CLIENT.parse().unwrap()),
        helo: "mail.sender.test",
        sender,
    };
    decide(r, &policy(mode), &env).action
}

#[tokio::test(flavor = "multi_thread")]
async fn dkim_arc_and_dmarc_against_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = key(dir.path(), "rsa", "rsa");
    let ed = key(dir.path(), "ed", "ed25519");
    let arc = key(dir.path(), "arc", "rsa");
    let server = ZoneServer::start();
    let zone = |dmarc: &str, sub_dmarc: Option<&str>| {
        let mut z = json!({
            "rsa._domainkey.sender.test": [txt(&rsa.record)],
            "ed._domainkey.sender.test": [txt(&ed.record)],
            "arc._domainkey.forwarder.test": [txt(&arc.record)],
            "sender.test": [{"TXT": "v=spf1 ip4:192.0.2.99 -all"}],
            "_dmarc.sender.test": [{"TXT": dmarc}],
            "mail.sender.test": [{"A": "192.0.2.10"}],
        });
        if let Some(d) = sub_dmarc {
            z["_dmarc.sub.sender.test"] = json!([{"TXT": d}]);
        }
        z
    };
    server.set(&zone("v=DMARC1; p=reject", None));
    let engine = || server.engine(Duration::from_secs(2));
    let key_file = |k: &Key| k.file.display().to_string();

    // Every signer and canonicalization verifies, and passes DMARC by DKIM alignment
    // (the client is not in sender.test's SPF).
    for (label, args) in [
        (
            "rsa relaxed/simple",
            vec![
                "--hcanon",
                "relaxed",
                "--bcanon",
                "simple",
                "rsa",
                "sender.test",
                &key_file(&rsa),
            ],
        ),
        (
            "rsa simple/simple",
            vec![
                "--hcanon",
                "simple",
                "--bcanon",
                "simple",
                "rsa",
                "sender.test",
                &key_file(&rsa),
            ],
        ),
        (
            "rsa relaxed/relaxed",
            vec![
                "--hcanon",
                "relaxed",
                "--bcanon",
                "relaxed",
                "rsa",
                "sender.test",
                &key_file(&rsa),
            ],
        ),
        (
            "ed25519 relaxed/relaxed",
            vec![
                "--signalg",
                "ed25519-sha256",
                "--hcanon",
                "relaxed",
                "--bcanon",
                "relaxed",
                "ed",
                "sender.test",
                &key_file(&ed),
            ],
        ),
        (
            "ed25519 simple/simple",
            vec![
                "--signalg",
                "ed25519-sha256",
                "--hcanon",
                "simple",
                "--bcanon",
                "simple",
                "ed",
                "sender.test",
                &key_file(&ed),
            ],
        ),
    ] {
        let signed = sign("dkimsign", &args, MESSAGE);
        let r = check(
            &engine(),
            signed.as_bytes(),
            CLIENT,
            "mail.sender.test",
            "alice@sender.test",
        )
        .await;
        let n = names(&r);
        assert!(
            n.contains(&"DKIM_VALID") && n.contains(&"DMARC_PASS"),
            "{label}: {}",
            r.symbols_line()
        );
        assert!(n.contains(&"SPF_FAIL"), "{label}: {}", r.symbols_line());
        assert_eq!(
            action(&r, DmarcMode::Enforce, "alice@sender.test"),
            Action::Deliver,
            "{label}"
        );
        let ar = r.auth_results.as_deref().unwrap();
        assert!(
            ar.starts_with("mx.test;") && ar.contains("dkim=pass") && ar.contains("dmarc=pass"),
            "{ar}"
        );

        // Tampered: the body changed after signing.
        let tampered = signed.replace("The figures are attached.", "The figures are NOT attached.");
        let r = check(
            &engine(),
            tampered.as_bytes(),
            CLIENT,
            "mail.sender.test",
            "alice@sender.test",
        )
        .await;
        let n = names(&r);
        assert!(
            n.contains(&"DKIM_INVALID") && n.contains(&"DMARC_POLICY_REJECT"),
            "{label} tampered: {}",
            r.symbols_line()
        );
        assert_eq!(
            action(&r, DmarcMode::Enforce, "alice@sender.test"),
            Action::Reject,
            "{label}"
        );
        assert_eq!(
            action(&r, DmarcMode::Quarantine, "alice@sender.test"),
            Action::Quarantine
        );
        assert_eq!(
            action(&r, DmarcMode::Ignore, "alice@sender.test"),
            Action::Quarantine,
            "the score alone (SPF fail, DKIM invalid, DMARC reject) is spam: {}",
            r.score
        );
    }

    // ARC: a forwarder's seal over a message with its Authentication-Results verifies;
    // a changed seal does not.
    let with_ar = format!(
        "Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=alice@sender.test\r\n{MESSAGE}"
    );
    let sealed = sign(
        "arcsign",
        &["arc", "forwarder.test", &key_file(&arc), "forwarder.test"],
        &with_ar,
    );
    let r = check(
        &engine(),
        sealed.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "alice@sender.test",
    )
    .await;
    assert!(names(&r).contains(&"ARC_VALID"), "{:?}", r.symbols);
    let broken = sealed.replacen("cv=none", "cv=pass", 1);
    let r = check(
        &engine(),
        broken.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "alice@sender.test",
    )
    .await;
    assert!(names(&r).contains(&"ARC_INVALID"), "{}", r.symbols_line());

    // DMARC's policy paths on an unsigned message from a client SPF does not permit.
    let unsigned = MESSAGE;
    for (record, sub, from, want_symbol, want_action) in [
        (
            "v=DMARC1; p=none",
            None,
            "alice@sender.test",
            "DMARC_POLICY_NONE",
            Action::Deliver,
        ),
        (
            "v=DMARC1; p=quarantine",
            None,
            "alice@sender.test",
            "DMARC_POLICY_QUARANTINE",
            Action::Quarantine,
        ),
        (
            "v=DMARC1; p=reject",
            None,
            "alice@sender.test",
            "DMARC_POLICY_REJECT",
            Action::Reject,
        ),
        // pct=0: the policy steps down one (reject to quarantine).
        (
            "v=DMARC1; p=reject; pct=0",
            None,
            "alice@sender.test",
            "DMARC_POLICY_QUARANTINE",
            Action::Quarantine,
        ),
        // The subdomain policy: the organizational domain's record, sp= applies.
        (
            "v=DMARC1; p=reject; sp=quarantine",
            None,
            "carol@sub.sender.test",
            "DMARC_POLICY_QUARANTINE",
            Action::Quarantine,
        ),
    ] {
        server.set(&zone(record, sub));
        let msg = unsigned.replace("alice@sender.test", from);
        let r = check(&engine(), msg.as_bytes(), CLIENT, "mail.sender.test", from).await;
        assert!(
            names(&r).contains(&want_symbol),
            "{record}: {}",
            r.symbols_line()
        );
        assert_eq!(
            action(&r, DmarcMode::Enforce, from),
            want_action,
            "{record}: {}",
            r.symbols_line()
        );
    }

    // A forged author beside a harmless one, or hidden behind a comment, meets the forged
    // domain's policy: several From: fields, several addresses in one, a comment in the
    // domain. (mail-auth alone exempts several author domains from DMARC.)
    server.set(&zone("v=DMARC1; p=reject", None));
    let forged = unsigned.replace("From: Alice <alice@sender.test>\r\n", "");
    // With no author at all, the message has its own symbol (a Sender: is not the author
    // DMARC checks).
    let reject = ("DMARC_POLICY_REJECT", Action::Reject);
    for (from, (want_symbol, want_action)) in [
        (
            "From: friend@outside.test\r\nFrom: ceo@sender.test\r\n",
            reject,
        ),
        (
            "From: ceo@sender.test\r\nFrom: friend@outside.test\r\n",
            reject,
        ),
        ("From: friend@outside.test, ceo@sender.test\r\n", reject),
        ("From: ceo@(x)sender.test\r\n", reject),
        (
            "From: Team: friend@outside.test, CEO@Sender.Test.;\r\n",
            reject,
        ),
        (
            "Sender: ceo@sender.test\r\n",
            ("FROM_MISSING", Action::Deliver),
        ),
    ] {
        let msg = format!("{from}{forged}");
        let r = check(
            &engine(),
            msg.as_bytes(),
            CLIENT,
            "x.outside.test",
            "x@outside.test",
        )
        .await;
        assert!(
            names(&r).contains(&want_symbol),
            "{from}: {}",
            r.symbols_line()
        );
        assert_eq!(
            action(&r, DmarcMode::Enforce, "x@outside.test"),
            want_action,
            "{from}: {}",
            r.symbols_line()
        );
        assert_eq!(
            names(&r).contains(&"FROM_MULTIPLE"),
            from.matches("From:").count() > 1,
            "{from}"
        );
    }

    // Alignment: SPF passes for the MAIL FROM domain mail.sender.test (a subdomain of the
    // From domain): aligned in relaxed mode, not in strict.
    let mut z = zone("v=DMARC1; p=reject; aspf=r", None);
    z["mail.sender.test"] = json!([{"TXT": "v=spf1 ip4:192.0.2.10 -all"}, {"A": "192.0.2.10"}]);
    server.set(&z);
    let r = check(
        &engine(),
        MESSAGE.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "bounce@mail.sender.test",
    )
    .await;
    assert!(
        names(&r).contains(&"SPF_PASS") && names(&r).contains(&"DMARC_PASS"),
        "relaxed: {}",
        r.symbols_line()
    );
    z["_dmarc.sender.test"] = json!([{"TXT": "v=DMARC1; p=reject; aspf=s"}]);
    server.set(&z);
    let r = check(
        &engine(),
        MESSAGE.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "bounce@mail.sender.test",
    )
    .await;
    assert!(
        names(&r).contains(&"DMARC_POLICY_REJECT"),
        "strict: {}",
        r.symbols_line()
    );
    // DKIM alignment, strict: d=sender.test does not align with From: sub.sender.test.
    z["_dmarc.sender.test"] = json!([{"TXT": "v=DMARC1; p=reject; adkim=s"}]);
    server.set(&z);
    let from_sub = MESSAGE.replace("alice@sender.test", "alice@sub.sender.test");
    let signed = sign(
        "dkimsign",
        &["rsa", "sender.test", &key_file(&rsa)],
        &from_sub,
    );
    let r = check(
        &engine(),
        signed.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "alice@sub.sender.test",
    )
    .await;
    assert!(
        names(&r).contains(&"DKIM_VALID") && names(&r).contains(&"DMARC_POLICY_REJECT"),
        "adkim=s: {}",
        r.symbols_line()
    );
    z["_dmarc.sender.test"] = json!([{"TXT": "v=DMARC1; p=reject; adkim=r"}]);
    server.set(&z);
    let r = check(
        &engine(),
        signed.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "alice@sub.sender.test",
    )
    .await;
    assert!(
        names(&r).contains(&"DMARC_PASS"),
        "adkim=r: {}",
        r.symbols_line()
    );
}

/// A DNS server that stops answering: the verdict comes within the timeout, degraded, and
/// once the breaker opens the next messages do not wait at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_resolver_degrades_within_the_timeout() {
    let server = ZoneServer::start();
    server.set(&json!({
        "sender.test": ["TIMEOUT"],
        "_dmarc.sender.test": ["TIMEOUT"],
        "10.2.0.192.in-addr.arpa": ["TIMEOUT"],
    }));
    let engine = server.engine(Duration::from_millis(500));
    for i in 0..6 {
        let started = std::time::Instant::now();
        let r = check(
            &engine,
            MESSAGE.as_bytes(),
            CLIENT,
            "mail.sender.test",
            "alice@sender.test",
        )
        .await;
        let took = started.elapsed();
        assert!(r.degraded(), "{}", r.symbols_line());
        assert!(
            took < Duration::from_millis(2000),
            "message {i} took {took:?}"
        );
        if i >= 3 {
            assert!(
                names(&r).contains(&"DNS_UNAVAILABLE"),
                "{}",
                r.symbols_line()
            );
            assert!(
                took < Duration::from_millis(50),
                "message {i} waited {took:?} with the breaker open"
            );
        }
    }
}

/// A client-address list marked `reject` refuses a listed client at MAIL FROM; an
/// unlisted one passes, and a list that cannot be asked refuses no one.
#[tokio::test(flavor = "multi_thread")]
async fn a_reject_list_blocks_listed_clients() {
    let server = ZoneServer::start();
    server
        .set(&json!({ "10.2.0.192.bl.test": [{"A": "127.0.0.2"}], "bl.test": [{"TXT": "list"}] }));
    let list = |reject| config::DnsList {
        zone: "bl.test".into(),
        score: 3.0,
        codes: Vec::new(),
        reject,
    };
    let network = |reject, port: u16| {
        mailsilo_filter::network::Network::new(
            "mx.test",
            &[format!("127.0.0.1:{port}").parse().unwrap()],
            Duration::from_millis(500),
            vec![list(reject)],
            Vec::new(),
        )
        .unwrap()
    };
    let n = network(true, server.port);
    assert_eq!(
        n.blocked(CLIENT.parse().unwrap()).await.as_deref(),
        Some("bl.test")
    );
    assert_eq!(n.blocked("192.0.2.11".parse().unwrap()).await, None);
    assert_eq!(
        network(false, server.port)
            .blocked(CLIENT.parse().unwrap())
            .await,
        None,
        "a scoring list blocks no one"
    );
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let n = network(true, silent.local_addr().unwrap().port());
    assert_eq!(n.blocked(CLIENT.parse().unwrap()).await, None);
}

/// Debian's opendkim-tools: `opendkim-genkey` makes the key and `opendkim-testmsg` signs
/// (no daemon needed). That tool signs with rsa-sha1 only, which RFC 8301 forbids verifiers
/// to accept (and the record opendkim-genkey writes says h=sha256): the signature must not
/// count, so DMARC, with nothing else aligned, fails.
#[tokio::test(flavor = "multi_thread")]
async fn an_opendkim_rsa_sha1_signature_does_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("opendkim-genkey")
        .arg("-D")
        .arg(dir.path())
        .args(["-d", "sender.test", "-s", "od"])
        .output()
        .expect("opendkim-genkey runs (Debian opendkim-tools: scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // od.txt holds the record as zone-file strings: join them.
    let zone_text = std::fs::read_to_string(dir.path().join("od.txt")).unwrap();
    let record: String = zone_text
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    assert!(
        record.starts_with("v=DKIM1;") && record.contains("p="),
        "{record}"
    );
    let server = ZoneServer::start();
    server.set(&json!({
        "od._domainkey.sender.test": [txt(&record)],
        "_dmarc.sender.test": [{"TXT": "v=DMARC1; p=reject"}],
        "sender.test": [{"TXT": "v=spf1 -all"}],
    }));
    let key = dir.path().join("od.private").display().to_string();
    let signed = sign(
        "opendkim-testmsg",
        &["-d", "sender.test", "-k", &key, "-s", "od"],
        MESSAGE,
    );
    assert!(signed.contains("a=rsa-sha1"), "{signed}");
    let r = check(
        &server.engine(Duration::from_secs(2)),
        signed.as_bytes(),
        CLIENT,
        "mail.sender.test",
        "alice@sender.test",
    )
    .await;
    let n = names(&r);
    assert!(
        !n.contains(&"DKIM_VALID"),
        "an rsa-sha1 signature counted: {}",
        r.symbols_line()
    );
    assert!(n.contains(&"DMARC_POLICY_REJECT"), "{}", r.symbols_line());
}

/// SPF at MAIL FROM: the sender's domain forbids the client (`-all`): its domain is named;
/// a permitted client, a soft fail and a domain without SPF are not refused.
#[tokio::test(flavor = "multi_thread")]
async fn spf_fail_is_found_before_the_message() {
    let server = ZoneServer::start();
    server.set(&json!({
        "strict.test": [{"TXT": "v=spf1 ip4:192.0.2.99 -all"}],
        "soft.test": [{"TXT": "v=spf1 ip4:192.0.2.99 ~all"}],
    }));
    let engine = server.engine(Duration::from_secs(2));
    let client = CLIENT.parse().unwrap();
    assert_eq!(
        engine
            .spf_fails(client, "mail.example", "a@strict.test")
            .await
            .as_deref(),
        Some("strict.test")
    );
    assert_eq!(
        engine
            .spf_fails("192.0.2.99".parse().unwrap(), "h", "a@strict.test")
            .await,
        None
    );
    assert_eq!(engine.spf_fails(client, "h", "a@soft.test").await, None);
    assert_eq!(engine.spf_fails(client, "h", "a@nospf.test").await, None);
    assert_eq!(
        engine.spf_fails(client, "h", "").await,
        None,
        "the null sender"
    );
}
