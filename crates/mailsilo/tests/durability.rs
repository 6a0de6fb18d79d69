//! Never losing mail: outages, restarts, kill -9 under load, graceful shutdown; and the
//! command line around the queue and the configuration.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, Gateway, Options, send_token, subjects, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn outage_defers_then_delivers_and_queue_commands_work() {
    let mut g = Gateway::start(Options {
        external_sink: true,
        ..Options::default()
    });
    let mut c = g.smtp();
    c.cmd("EHLO client.test");
    let mut ids = Vec::new();
    for rcpt in ["alice@example.com", "bob@example.org", "carol@example.com"] {
        let r = c.mail(
            "sender@outside.net",
            &[rcpt],
            &format!("Subject: for {rcpt}\r\n\r\nqueued while the server is down"),
        );
        assert_eq!(r.0, 250, "{r:?}");
        ids.push(r.1.rsplit(' ').next().unwrap().to_string());
    }
    // Deferred: the first attempt failed and was recorded.
    assert!(
        wait_until(WAIT, || g.queue(&["list"]).matches("connect to").count()
            == 3),
        "{}",
        g.queue(&["list"])
    );
    let list = g.queue(&["list"]);
    assert!(ids.iter().all(|id| list.contains(id)), "{list}");
    assert!(
        list.contains("-- 3 messages, 3 recipients pending"),
        "{list}"
    );
    let show = g.queue(&["show", &ids[0]]);
    assert!(
        show.contains("recipient: <alice@example.com> pending attempts="),
        "{show}"
    );
    assert!(show.contains("Subject: for alice@example.com"), "{show}");
    assert!(g.queue(&["delete", &ids[2]]).contains("deleted"));
    let out = g
        .admin_command("queue", &["delete", &ids[2]])
        .output()
        .unwrap();
    assert!(!out.status.success(), "deleting twice fails");

    g.start_sink();
    g.queue(&["flush"]);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.org").len() == 1));
    assert!(wait_until(WAIT, || g
        .queue(&["list"])
        .contains("-- 0 messages")));
    assert!(
        g.mailbox("carol@example.com").is_empty(),
        "the deleted message was not delivered"
    );
}

#[test]
fn queue_survives_kill_and_restart() {
    let mut g = Gateway::start(Options {
        external_sink: true,
        ..Options::default()
    });
    let mut c = g.smtp();
    c.cmd("EHLO client.test");
    assert_eq!(
        c.mail(
            "s@outside.net",
            &["alice@example.com"],
            "Subject: survive\r\n\r\nstill here"
        )
        .0,
        250
    );
    drop(c);
    g.up.as_mut().unwrap().kill9();
    g.start_sink();
    g.start_up();
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    assert!(g.mailbox("alice@example.com")[0].contains("still here"));
}

/// kill -9 the gateway several times under load: every message that got a 250 reaches
/// the mailbox (duplicates allowed, loss not).
#[test]
fn crash_under_load_loses_nothing_acknowledged() {
    let mut g = Gateway::start(Options {
        external_sink: true,
        ..Options::default()
    });
    g.start_sink();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4 {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), g.mx);
        senders.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let token = format!("t{t}-m{n}");
                n += 1;
                if send_token(addr, &token) {
                    acked.lock().unwrap().insert(token);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        g.up.as_mut().unwrap().kill9();
        std::thread::sleep(Duration::from_millis(100));
        g.start_up();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} messages acknowledged across 4 kill -9 restarts",
        acked.len()
    );
    assert!(
        acked.len() > 50,
        "the load ran ({} acknowledged)",
        acked.len()
    );
    let delivered = || -> BTreeSet<String> { common::subjects(&g.mailbox("alice@example.com")) };
    let all_there = wait_until(Duration::from_secs(60), || acked.is_subset(&delivered()));
    let missing: Vec<_> = acked.difference(&delivered()).cloned().collect();
    assert!(
        all_there,
        "{} of {} acknowledged messages lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn sigterm_says_421_to_open_sessions_and_exits_cleanly() {
    let mut g = Gateway::start(Options::default());
    let mut c = g.smtp();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let pid = g.up.as_ref().unwrap().0.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert_eq!(c.reply(), (421, "4.3.2 Service shutting down".into()));
    assert!(c.closed());
    let status = g.up.as_mut().unwrap().0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(g.mx).is_err(), "no longer listening");
}

#[test]
fn config_check_and_example() {
    let dir = tempfile::tempdir().unwrap();
    let example = Command::new(&*BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(example.status.success());
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &example.stdout).unwrap();
    let out = Command::new(&*BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("ok: 2 client domains, 1 mx listener, silo silo1.mailsilo.test with 4 clusters and 8 mail servers, DNS for 2 zones, control endpoint, demo sink"),
        "{said}"
    );
    assert!(
        !said.contains("warning"),
        "the demo warns of nothing: {said}"
    );

    let bad = dir.path().join("bad.toml");
    let text = String::from_utf8(example.stdout)
        .unwrap()
        .replace("listen = [\"127.0.0.1:2525\"]", "listen = [\"127.0.0.1\"]");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(&*BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&bad).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("listen = [\"127.0.0.1\"]"))
        .unwrap()
        + 1;
    let expected = format!(
        "{}:{line}:11: smtp.listen: invalid address \"127.0.0.1\"",
        bad.display()
    );
    assert!(err.contains(&expected), "{err}");

    let out = Command::new(&*BIN)
        .args(["config", "check"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.toml: cannot read"), "{err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "a missing file is reported once: {err}"
    );

    // The parser's own errors: the full key path, and what was expected in words.
    std::fs::write(&bad, "[smtp]\nhostname = \"mx\"\nlisten = [\"127.0.0.1:25\"]\nmax_recipients = \"lots\"\n[[domain]]\nname = \"a.example\"\ndestination = \"mx\"\n").unwrap();
    let out = Command::new(&*BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":4:18: smtp.max_recipients: a string \"lots\", expected a whole number"),
        "{err}"
    );
}

/// A listener whose address is taken: the error names the role, the address and the
/// likely cause.
#[test]
fn a_port_in_use_is_explained() {
    let g = Gateway::start(Options {
        external_sink: true,
        ..Options::default()
    });
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(&*BIN)
        .args(["up", "--config"])
        .arg(&g.config)
        .arg("--data-dir")
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the mx listener (smtp.listen) cannot listen on {}",
            g.mx
        )) && err.contains("another `mailsilo up` running?"),
        "{err}"
    );
}

/// Started under umask 022, the gateway still keeps everything it writes private: the
/// queue, the TLS key, the demo mailboxes.
#[test]
fn everything_written_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let g = Gateway::start(Options::default());
    let mut c = g.smtp();
    assert_eq!(c.cmd("EHLO private.test").0, 250);
    assert_eq!(
        c.mail(
            "a@outside.net",
            &["alice@example.com"],
            "Subject: private\r\n\r\nsecret"
        )
        .0,
        250
    );
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let mut seen = 0;
    let mut stack = vec![g.data()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        seen += 1;
    }
    let mut expected = vec!["tls-key.pem", "tls-cert.pem", "control.token", "node.id"];
    if !common::on_postgres() {
        expected.extend(["queue/queue.db", "queue/queue.db-wal"]);
    }
    for f in expected {
        assert!(g.data().join(f).exists(), "{f}");
    }
    assert!(seen > 6, "checked {seen} paths");
}

/// A client domain removed at run time refuses new mail at once, and the mail queued for it
/// before still goes to its own server (by the settings it had), not to the domain's MX
/// (which points at the silo itself): found by a probe of the fleet.
#[test]
fn a_removed_domain_still_gets_the_mail_queued_for_it() {
    let mut g = Gateway::start(Options {
        external_sink: true,
        ..Options::default()
    });
    let mut c = g.smtp();
    c.cmd("EHLO client.test");
    let r = c.mail(
        "s@outside.net",
        &["alice@example.org"],
        "Subject: queued before the removal\r\n\r\nx",
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(wait_until(WAIT, || g
        .queue(&["list"])
        .contains("connect to")));
    g.admin("domain", &["remove", "example.org"]);
    assert!(
        wait_until(Duration::from_secs(2), || {
            let mut c = g.smtp();
            c.cmd("EHLO client.test");
            c.cmd("MAIL FROM:<s@outside.net>");
            c.cmd("RCPT TO:<bob@example.org>").0 == 550
        }),
        "new mail for the removed domain is refused"
    );
    g.start_sink();
    g.queue(&["flush"]);
    assert!(
        wait_until(WAIT, || subjects(&g.mailbox("alice@example.org"))
            .contains("queued before the removal")),
        "{}",
        g.queue(&["list"])
    );
    assert!(!g.admin("domain", &["list"]).contains("example.org"));
}
