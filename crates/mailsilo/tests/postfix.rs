//! Interoperability with Postfix on both sides of the gateway, as a provider runs it: a
//! Postfix instance as the sending MTA (it adds ORCPT and relays DSN parameters as real
//! senders do, which simple clients never do), mailsilo in the middle, and a second Postfix
//! instance as the client organisation's own server, delivering to maildirs. Both are
//! throw-away instances on loopback (Debian's `postfix`, installed by scripts/test.sh),
//! stopped when the test ends.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Proc, python, read_mailbox, unique_ip, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// The services of a throw-away instance (shared with bench/smtp-relay.sh).
const MASTER_CF: &str = include_str!("../../../scripts/postfix-master.cf");

/// The same /24 as `ip`, host `n` (every address of it is the test's own).
fn sibling(ip: IpAddr, n: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, n])
        }
        IpAddr::V6(_) => unreachable!("tests use IPv4 loopback"),
    }
}

fn id(flag: &str) -> String {
    let out = Command::new("id")
        .args([flag, "postfix"])
        .output()
        .expect("id");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A private Postfix instance: its own configuration, queue and log under `dir`, its SMTP
/// server on `addr`. Stopped on drop.
struct Postfix {
    conf: PathBuf,
}

impl Postfix {
    fn start(dir: &Path, name: &str, addr: SocketAddr, extra: &str) -> Postfix {
        let root = dir.join(name);
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let conf = root.join("etc");
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {name}.postfix.test
mydomain = postfix.test
inet_interfaces = all
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_transport = error:5.1.1 no local delivery
smtpd_recipient_restrictions = reject_unauth_destination
smtp_tls_security_level = may
smtpd_tls_security_level = none
maillog_file = {root}/maillog
{extra}
",
                root = root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("master.cf"),
            MASTER_CF.replace("\nLISTEN ", &format!("\n{addr} ")),
        )
        .unwrap();
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("set-permissions")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let started = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .status()
            .expect("postfix is installed (Debian package postfix)");
        assert!(started.success(), "postfix {name} did not start");
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "postfix {name} does not listen on {addr}"
        );
        Postfix { conf }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The one message in `dir` whose text contains `needle`.
fn find(dir: &Path, needle: &str) -> Option<String> {
    read_mailbox(dir).into_iter().find(|m| m.contains(needle))
}

/// Waits for the message in `dir` that contains `marker`, checks it holds every one of
/// `needles`, and returns it; `logs` explains a failure.
fn expect(dir: &Path, marker: &str, needles: &[&str], logs: impl Fn() -> String) -> String {
    assert!(
        wait_until(WAIT, || find(dir, marker).is_some()),
        "no message with {marker:?}\n{}",
        logs()
    );
    let m = find(dir, marker).unwrap();
    for needle in needles {
        assert!(m.contains(needle), "{needle} in {m}");
    }
    m
}

#[test]
fn postfix_to_mailsilo_to_postfix_keeps_every_dsn_parameter() {
    // Postfix's maillog_file must be under /var; its daemons must be able to enter the dir.
    let dir = tempfile::Builder::new()
        .prefix("mailsilo-postfix")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let net = unique_ip();
    let sender_mta = SocketAddr::new(sibling(net, 1), 2525);
    let client_mx = SocketAddr::new(sibling(net, 2), 2525);
    let gateway = SocketAddr::new(sibling(net, 3), 2525);

    // The client organisation's own server: maildirs for alice and for the sender (so DSNs
    // to the sender land here too); full@ is accepted, then bounced by its transport.
    let boxes = dir.path().join("boxes");
    std::fs::create_dir_all(&boxes).unwrap();
    let chown = Command::new("chown")
        .arg("postfix:postfix")
        .arg(&boxes)
        .status()
        .unwrap();
    assert!(chown.success());
    let _client = Postfix::start(
        dir.path(),
        "client",
        client_mx,
        &format!(
            "virtual_mailbox_domains = example.com, example.org
virtual_mailbox_base = {boxes}
virtual_mailbox_maps = inline:{{ alice@example.com=alice/, full@example.com=full/, sender@example.org=sender/ }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_transport = virtual
transport_maps = inline:{{ full@example.com=error:5.2.2_mailbox_full }}",
            boxes = boxes.display(),
            uid = id("-u"),
            gid = id("-g"),
        ),
    );

    // mailsilo relays both client domains to that server.
    let config = dir.path().join("mailsilo.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nhostname = \"mx.mailsilo.test\"\nlisten = [\"{gateway}\"]\n\
             [retry]\nmin_backoff = \"1s\"\nmax_backoff = \"2s\"\n\
             [[domain]]\nname = \"example.com\"\ndestination = \"{client_mx}\"\n\
             [[domain]]\nname = \"example.org\"\ndestination = \"{client_mx}\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("mailsilo.log")).unwrap();
    let _up = Proc(
        Command::new(&*BIN)
            .args(["up", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(gateway).is_ok()
    }));

    // The sending MTA: relays example.com to mailsilo (STARTTLS, DSN, PIPELINING as offered).
    let _sender = Postfix::start(
        dir.path(),
        "sender",
        sender_mta,
        &format!(
            "relay_domains = example.com\ntransport_maps = inline:{{ example.com=smtp:[{}]:{} }}",
            gateway.ip(),
            gateway.port()
        ),
    );

    // Three messages into the sending Postfix, with the DSN parameters a mail client gives.
    let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
def body(tag):
    return ("From: sender@example.org\r\nTo: someone@example.com\r\nSubject: " + tag +
            "\r\nMessage-ID: <" + tag + "@test>\r\n\r\nThe body of " + tag + ": BODYMARK\r\n")
with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo()
    # Delivered: the client's server reports success (NOTIFY=SUCCESS); Postfix adds ORCPT.
    s.sendmail("sender@example.org", ["alice@example.com"], body("delivered"),
               mail_options=["RET=HDRS", "ENVID=ENV+2Bdelivered"], rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    # Accepted by the client's server, then bounced by it: its DSN honours RET=FULL.
    s.sendmail("sender@example.org", ["full@example.com"], body("bounced-later"),
               mail_options=["RET=FULL", "ENVID=ENV-full"], rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;Full+2Borig@example.com"])
    # Refused at RCPT by the client's server: mailsilo's own DSN, with the original recipient.
    s.sendmail("sender@example.org", ["nobody@example.com"], body("refused"),
               mail_options=["RET=HDRS", "ENVID=ENV-refused"], rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;Nobody+2Borig@example.com"])
print("ok")
"#;
    assert_eq!(
        python(
            script,
            &[&sender_mta.ip().to_string(), &sender_mta.port().to_string()]
        ),
        "ok\n"
    );

    let alice = boxes.join("alice");
    let sender = boxes.join("sender");
    // What to read when something does not arrive.
    let logs = || {
        ["mailsilo.log", "sender/maillog", "client/maillog"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(dir.path().join(f)).unwrap_or_default()
                )
            })
            .collect::<String>()
    };
    expect(
        &alice,
        "Subject: delivered",
        &[
            "by mx.mailsilo.test (mailsilo)",
            // Postfix used STARTTLS to mailsilo.
            "with ESMTPS id",
        ],
        logs,
    );
    // The success DSN of the client's server: NOTIFY, ORCPT and ENVID arrived intact.
    expect(
        &sender,
        "Action: delivered",
        &[
            "Original-Envelope-Id: ENV+delivered",
            "Final-Recipient: rfc822; alice@example.com",
            "Original-Recipient: rfc822;alice@example.com",
        ],
        logs,
    );
    // The client's server's own bounce: RET=FULL arrived (the body comes back), and the
    // sender's ORCPT with it.
    expect(
        &sender,
        "Original-Envelope-Id: ENV-full",
        &[
            "Action: failed",
            "Original-Recipient: rfc822;Full+orig@example.com",
            "The body of bounced-later: BODYMARK",
        ],
        logs,
    );
    // mailsilo's DSN for the refused recipient: the original recipient, the envelope id,
    // headers only (RET=HDRS).
    let dsn = expect(
        &sender,
        "Original-Envelope-Id: ENV-refused",
        &[
            "Reporting-MTA: dns; mx.mailsilo.test",
            "Final-Recipient: rfc822; nobody@example.com",
            "Original-Recipient: rfc822;Nobody+orig@example.com",
            "Action: failed",
            "Status: 5.1.1",
            "Content-Type: text/rfc822-headers",
            "Subject: refused",
        ],
        logs,
    );
    assert!(!dsn.contains("BODYMARK"), "RET=HDRS: headers only: {dsn}");
    // Nothing else bounced: the delivered message did not come back.
    assert_eq!(
        read_mailbox(&sender).len(),
        3,
        "{:#?}",
        read_mailbox(&sender)
    );
}
