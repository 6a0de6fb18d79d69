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

/// What every test here starts: under a directory of its own, the client organisation's
/// Postfix delivering example.com and example.org to maildirs, and mailsilo relaying both
/// domains to it (with `tail` added to its configuration, `{ip}` standing for its address).
/// Fields drop in order: mailsilo, then Postfix, then the directory.
struct Scene {
    _up: Proc,
    _client: Postfix,
    boxes: PathBuf,
    gateway: SocketAddr,
    sender_mta: SocketAddr,
    dir: tempfile::TempDir,
}

impl Scene {
    fn start(tail: &str) -> Scene {
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

        // The client organisation's own server: maildirs for alice and for the sender (so
        // DSNs to the sender land here too); full@ is accepted, then bounced by its transport.
        let boxes = dir.path().join("boxes");
        std::fs::create_dir_all(&boxes).unwrap();
        let chown = Command::new("chown")
            .arg("postfix:postfix")
            .arg(&boxes)
            .status()
            .unwrap();
        assert!(chown.success());
        let client = Postfix::start(
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
                 [[domain]]\nname = \"example.org\"\ndestination = \"{client_mx}\"\n{}",
                tail.replace("{ip}", &gateway.ip().to_string())
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("mailsilo.log")).unwrap();
        let up = Proc::spawn(
            Command::new(&*BIN)
                .args(["up", "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(log),
        );
        assert!(wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(gateway).is_ok()
        }));
        Scene {
            _up: up,
            _client: client,
            boxes,
            gateway,
            sender_mta,
            dir,
        }
    }

    /// The sending MTA: relays example.com to mailsilo (STARTTLS, DSN, PIPELINING as
    /// offered), with `extra` in its main.cf.
    fn sender(&self, extra: &str) -> Postfix {
        Postfix::start(
            self.dir.path(),
            "sender",
            self.sender_mta,
            &format!(
                "relay_domains = example.com\ntransport_maps = inline:{{ example.com=smtp:[{}]:{} }}\n{extra}",
                self.gateway.ip(),
                self.gateway.port()
            ),
        )
    }

    /// What to read when something does not arrive.
    fn logs(&self) -> String {
        [
            "mailsilo.log",
            "sender/maillog",
            "client/maillog",
            "opendkim.log",
        ]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()
            )
        })
        .collect()
    }
}

#[test]
fn postfix_to_mailsilo_to_postfix_keeps_every_dsn_parameter() {
    let scene = Scene::start("");
    let _sender = scene.sender("");
    let sender_mta = scene.sender_mta;

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

    let alice = scene.boxes.join("alice");
    let sender = scene.boxes.join("sender");
    let logs = || scene.logs();
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

/// DKIM with a real signer in front of the gateway: Debian's opendkim, as the sending
/// Postfix's milter, signs what it relays (rsa-sha256, relaxed/simple, the 2048-bit key
/// opendkim-genkey makes); mailsilo reads the key from DNS (its own, on loopback, where the
/// key's TXT record is longer than one string) and the copy delivered to the client's
/// Postfix carries mailsilo's Authentication-Results: dkim=pass, and dmarc=pass through the
/// aligned signature (the sender domain publishes no SPF).
#[test]
fn a_message_signed_by_opendkim_passes_dkim_and_dmarc() {
    let keys = tempfile::tempdir().unwrap();
    let made = Command::new("opendkim-genkey")
        .arg("-D")
        .arg(keys.path())
        .args(["-d", "example.org", "-s", "sel"])
        .output()
        .expect("opendkim-genkey runs (Debian opendkim-tools: scripts/test.sh installs it)");
    assert!(made.status.success(), "{made:?}");
    // sel.txt holds the record as zone-file strings: join them.
    let zone_text = std::fs::read_to_string(keys.path().join("sel.txt")).unwrap();
    let record: String = zone_text.split('"').skip(1).step_by(2).collect();
    assert!(
        record.starts_with("v=DKIM1;") && record.len() > 255,
        "{record}"
    );
    let scene = Scene::start(&format!(
        r#"
[dns]
listen = ["{{ip}}:5353"]

[[dns.zone]]
name = "example.org"
nameservers = ["ns1.example.org"]
hostmaster = "hostmaster.example.org"
serial = 1

[[dns.zone.record]]
name = "sel._domainkey"
type = "TXT"
value = "{record}"

# psd=n: example.org is an organizational domain (DMARCbis), so the lookup stops here
# rather than asking _dmarc.org, which this authoritative-only DNS refuses.
[[dns.zone.record]]
name = "_dmarc"
type = "TXT"
value = "v=DMARC1; p=reject; psd=n"

[filter]
nameservers = ["{{ip}}:5353"]
"#
    ));
    let milter = SocketAddr::new(scene.gateway.ip(), 8891);
    let conf = scene.dir.path().join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain example.org\nSelector sel\nKeyFile {}\n\
             SignatureAlgorithm rsa-sha256\nCanonicalization relaxed/simple\n\
             Socket inet:{}@{}\nInternalHosts 127.0.0.0/8\nSyslog no\nBackground no\n\
             RequireSafeKeys false\n",
            keys.path().join("sel.private").display(),
            milter.port(),
            milter.ip()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(scene.dir.path().join("opendkim.log")).unwrap();
    let _opendkim = Proc(
        Command::new("opendkim")
            .arg("-f")
            .arg("-x")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("opendkim runs (Debian opendkim: scripts/test.sh installs it)"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
            milter
        )
        .is_ok()),
        "opendkim does not listen on {milter}\n{}",
        scene.logs()
    );
    let _sender = scene.sender(&format!(
        "smtpd_milters = inet:{}:{}\nmilter_default_action = tempfail",
        milter.ip(),
        milter.port()
    ));
    let script = r#"
import smtplib, sys
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30) as s:
    s.sendmail("sender@example.org", ["alice@example.com"],
               "From: Sender <sender@example.org>\r\nTo: alice@example.com\r\n"
               "Subject: signed by opendkim\r\nMessage-ID: <od@example.org>\r\n\r\n"
               "A signed body.\r\n")
print("ok")
"#;
    assert_eq!(
        python(
            script,
            &[
                &scene.sender_mta.ip().to_string(),
                &scene.sender_mta.port().to_string()
            ]
        ),
        "ok\n"
    );
    let m = expect(
        &scene.boxes.join("alice"),
        "Subject: signed by opendkim",
        &["DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.org;"],
        || scene.logs(),
    );
    let ours = m
        .split("\n\n")
        .next()
        .unwrap()
        .replace("\n\t", " ")
        .replace("\n ", " ");
    let results = ours
        .lines()
        .find(|l| l.starts_with("Authentication-Results: mx.mailsilo.test"))
        .unwrap_or_else(|| panic!("no Authentication-Results of mailsilo's in {m}"));
    for needle in ["dkim=pass", "header.d=example.org", "dmarc=pass"] {
        assert!(results.contains(needle), "{needle} in {results}");
    }
}
