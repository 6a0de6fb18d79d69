//! The portal's accounts through the binary: logins with session cookies and CSRF tokens,
//! API tokens made with `mailsilo user token`, login throttling, and each role's scope on
//! the quarantine (a user sees their own mail, an organisation's admin its domains'; every
//! object of another organisation is a 404; a message also held for others is shown with
//! the caller's recipients only and is an operator's to release); calls beyond a role
//! refused; accounts seeded from the configuration file and added with `mailsilo user`.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Gateway, Options, wait_until};

const WAIT: Duration = Duration::from_secs(20);

const TAIL: &str = r#"
[filter]
[[filter.rule]]
name = "TEST_HOLD"
header = "subject"
pattern = "hold me"
score = 8.0

[[organisation]]
name = "Example Inc."
domains = ["example.com"]

[[organisation]]
name = "Example Org"
domains = ["example.org"]

[[account]]
name = "operator"
role = "operator"
password = "operator-pass"

[[account]]
name = "admin@example.com"
role = "admin"
organisation = "Example Inc."
password = "admin-pass"

[[account]]
name = "alice@example.com"
role = "user"
organisation = "Example Inc."
password = "alice-pass"

[[account]]
name = "admin@example.org"
role = "admin"
organisation = "Example Org"
password = "org-admin-pass"
"#;

/// One HTTP/1.1 exchange: the status, the headers (lower-case names) and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: portal\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A logged-in session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn login(control: SocketAddr, name: &str, password: &str) -> Session {
    let (status, headers, body) = http(
        control,
        "POST",
        "/api/v1/login",
        &[],
        &format!(r#"{{"name":"{name}","password":"{password}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let set = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.clone())
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    Session {
        cookie: set.split(';').next().unwrap().to_string(),
        csrf: v["csrf"].as_str().unwrap().to_string(),
    }
}

/// `list` pages by `key`: the first of `?limit=1` is the whole list's first, and
/// `?after=` it gives the rest; a malformed limit is a 400.
fn assert_paged(
    s: &Session,
    control: SocketAddr,
    list: &str,
    key: impl Fn(&serde_json::Value) -> String,
) {
    let get = |path: &str| {
        let (status, body) = s.get_at(control, path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
    };
    // Compared by key: a server's figures change between two calls.
    let keys = |page: Vec<serde_json::Value>| page.iter().map(&key).collect::<Vec<String>>();
    let all = keys(get(list));
    assert!(all.len() > 1, "{list}: too short to page");
    let first = keys(get(&format!("{list}?limit=1")));
    assert_eq!(first, all[..1], "{list}");
    let after: String = first[0]
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert_eq!(
        keys(get(&format!("{list}?after={after}"))),
        all[1..],
        "{list}"
    );
    assert_eq!(
        s.get_at(control, &format!("{list}?limit=many")).0,
        400,
        "{list}"
    );
}

impl Session {
    fn get(&self, g: &Gateway, path: &str) -> (u16, String) {
        self.get_at(g.control, path)
    }

    fn get_at(&self, control: SocketAddr, path: &str) -> (u16, String) {
        let (s, _, b) = http(control, "GET", path, &[("Cookie", &self.cookie)], "");
        (s, b)
    }

    /// A state change, with the CSRF token when `csrf`.
    fn post(&self, g: &Gateway, method: &str, path: &str, csrf: bool) -> (u16, String) {
        let mut h = vec![("Cookie", self.cookie.as_str())];
        if csrf {
            h.push(("X-CSRF-Token", self.csrf.as_str()));
        }
        let (s, _, b) = http(g.control, method, path, &h, "");
        (s, b)
    }

    /// A JSON call with the session's cookie and CSRF token.
    fn json(&self, g: &Gateway, method: &str, path: &str, body: &str) -> (u16, String) {
        let h = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", self.csrf.as_str()),
            ("Content-Type", "application/json"),
        ];
        let (status, _, b) = http(g.control, method, path, &h, body);
        (status, b)
    }
}

fn hold(g: &Gateway, to: &[&str], subject: &str) -> String {
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "promo@outside.example",
        to,
        &format!("Subject: hold me {subject}\r\n\r\nbuy now\r\n"),
    );
    assert_eq!(code, 250, "{text}");
    text.rsplit(' ').next().unwrap().trim().to_string()
}

/// A gateway with the test's rule, organisations and accounts.
fn gateway() -> Gateway {
    Gateway::start(Options {
        tail: TAIL.into(),
        ..Options::default()
    })
}

fn ids(body: &str) -> Vec<String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
    v.iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_role_sees_and_changes_only_its_own_mail() {
    let g = gateway();
    let alices = hold(&g, &["alice@example.com"], "alice");
    let bobs = hold(&g, &["bob@example.com"], "bob");
    let orgs = hold(&g, &["carol@example.org"], "carol");
    let shared = hold(&g, &["dave@example.com", "erin@example.org"], "shared");

    // Unauthenticated: refused; the login itself and /metrics are open.
    let (status, _, body) = http(g.control, "GET", "/api/v1/quarantine", &[], "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""code":"unauthorized""#), "{body}");

    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, me) = alice.get(&g, "/api/v1/me");
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["role"], "user");
    let (_, list) = alice.get(&g, "/api/v1/quarantine");
    assert_eq!(ids(&list), std::slice::from_ref(&alices));
    // Other people's mail does not exist for her.
    for id in [&bobs, &orgs, &shared] {
        let (status, body) = alice.get(&g, &format!("/api/v1/quarantine/{id}"));
        assert_eq!(status, 404, "{id}: {body}");
        let (status, _) = alice.post(
            &g,
            "POST",
            &format!("/api/v1/quarantine/{id}/release"),
            true,
        );
        assert_eq!(status, 404);
    }
    // A filter naming someone else's address finds nothing.
    let (_, list) = alice.get(&g, "/api/v1/quarantine?recipient=bob@example.com");
    assert!(ids(&list).is_empty(), "{list}");
    // Operators' calls are refused.
    let (status, _) = alice.get(&g, "/api/v1/lb");
    assert_eq!(status, 403);
    // A state change without the session's CSRF token is refused; with it, done.
    let release = format!("/api/v1/quarantine/{alices}/release");
    let (status, body) = alice.post(&g, "POST", &release, false);
    assert_eq!(status, 403, "{body}");
    let (status, body) = alice.post(&g, "POST", &release, true);
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));

    // The admin of example.com: its domain's mail; the shared message shows only its
    // recipient, and is released for that recipient alone.
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (_, list) = admin.get(&g, "/api/v1/quarantine");
    assert_eq!(ids(&list), [bobs.clone(), shared.clone()]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(v[1]["recipients"], serde_json::json!(["dave@example.com"]));
    let (status, body) = admin.get(&g, &format!("/api/v1/quarantine/{orgs}"));
    assert_eq!(status, 404, "{body}");
    let (status, body) = admin.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{shared}/release"),
        true,
    );
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(WAIT, || g
        .mailbox("dave@example.com")
        .iter()
        .any(|m| m.contains("hold me shared"))));
    assert_eq!(
        admin.get(&g, &format!("/api/v1/quarantine/{shared}")).0,
        404,
        "gone for its recipient"
    );
    let (status, _) = admin.post(&g, "DELETE", &format!("/api/v1/quarantine/{bobs}"), true);
    assert_eq!(status, 204);

    // The other organisation's admin sees only its own: the shared message still held for
    // erin, and not delivered to her.
    let other = login(g.control, "admin@example.org", "org-admin-pass");
    let (_, list) = other.get(&g, "/api/v1/quarantine");
    assert_eq!(ids(&list), [orgs.clone(), shared.clone()]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(v[1]["recipients"], serde_json::json!(["erin@example.org"]));
    assert!(g.mailbox("erin@example.org").is_empty());
    let (status, _) = other.get(&g, &format!("/api/v1/quarantine/{bobs}"));
    assert_eq!(status, 404);

    // The operator sees everything and may release what is left of the shared message.
    let operator = login(g.control, "operator", "operator-pass");
    let (_, list) = operator.get(&g, "/api/v1/quarantine");
    assert_eq!(ids(&list), [orgs.clone(), shared.clone()]);
    let (status, _) = operator.get(&g, "/api/v1/lb");
    assert_eq!(status, 200);
    let (status, body) = operator.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{shared}/release"),
        true,
    );
    assert_eq!(status, 200, "{body}");

    // Logging out ends the session.
    let (status, _) = alice.post(&g, "POST", "/api/v1/logout", true);
    assert_eq!(status, 204);
    let (status, _) = alice.get(&g, "/api/v1/me");
    assert_eq!(status, 401);
}

#[test]
fn failed_logins_are_throttled_and_tokens_keep_their_scope() {
    let g = gateway();
    let try_login = |password: &str| {
        http(
            g.control,
            "POST",
            "/api/v1/login",
            &[],
            &format!(r#"{{"name":"alice@example.com","password":"{password}"}}"#),
        )
    };
    for _ in 0..5 {
        let (status, _, body) = try_login("wrong");
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("wrong name or password"), "{body}");
    }
    // The sixth try is refused whatever it says, with the time to wait.
    let (status, headers, body) = try_login("alice-pass");
    assert_eq!(status, 429, "{body}");
    assert!(
        headers.iter().any(|(k, _)| k == "retry-after"),
        "{headers:?}"
    );
    // An unknown account is refused like a wrong password.
    let (status, _, body) = http(
        g.control,
        "POST",
        "/api/v1/login",
        &[],
        r#"{"name":"nobody","password":"x"}"#,
    );
    assert_eq!(status, 401, "{body}");

    // A token for alice, made with the CLI: her scope, no CSRF token needed, no operator
    // calls.
    let out = Command::new(&*BIN)
        .args([
            "user",
            "token",
            "alice@example.com",
            "--label",
            "test",
            "--config",
        ])
        .arg(&g.config)
        .arg("--data-dir")
        .arg(g.data())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("msk_"), "{token}");
    let bearer = format!("Bearer {token}");
    let mine = hold(&g, &["alice@example.com"], "token");
    let theirs = hold(&g, &["bob@example.com"], "token");
    let (status, _, list) = http(
        g.control,
        "GET",
        "/api/v1/quarantine",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(ids(&list), std::slice::from_ref(&mine));
    let (status, _, _) = http(
        g.control,
        "DELETE",
        &format!("/api/v1/quarantine/{theirs}"),
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 404);
    let (status, _, _) = http(
        g.control,
        "DELETE",
        &format!("/api/v1/quarantine/{mine}"),
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 204);
    let (status, _, _) = http(
        g.control,
        "GET",
        "/api/v1/lb",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 403);
    let (status, _, _) = http(
        g.control,
        "GET",
        "/api/v1/quarantine",
        &[("Authorization", "Bearer msk_not-a-token")],
        "",
    );
    assert_eq!(status, 401);
    // Revoked with the CLI, the token no longer works.
    let out = Command::new(&*BIN)
        .args(["user", "revoke", "alice@example.com", "--config"])
        .arg(&g.config)
        .arg("--data-dir")
        .arg(g.data())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 token(s)"));
    let (status, _, _) = http(
        g.control,
        "GET",
        "/api/v1/quarantine",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 401);
}

/// `mailsilo user ARGS --config CONFIG --data-dir DATA` with `stdin`: whether it
/// succeeded, and what it printed on both outputs.
fn user_cli(config: &Path, data: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut c = Command::new(&*BIN)
        .arg("user")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments exits without reading its input: the pipe may
    // be closed before it is written.
    match c.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn accounts_are_added_and_changed_with_the_cli() {
    let g = gateway();
    let user = |args: &[&str], stdin: &str| user_cli(&g.config, &g.data(), args, stdin);
    let (ok, out) = user(
        &[
            "add",
            "zoe@example.com",
            "--role",
            "user",
            "--organisation",
            "Example Inc.",
        ],
        "zoe-password\n",
    );
    assert!(ok, "{out}");
    // A password shorter than the portal allows, and a name with white space, are refused.
    let (ok, out) = user(
        &[
            "add",
            "zed@example.com",
            "--role",
            "user",
            "--organisation",
            "Example Inc.",
        ],
        "short\n",
    );
    assert!(!ok && out.contains("at least 10 characters"), "{out}");
    let (ok, out) = user(
        &["add", "night ops", "--role", "operator"],
        "long-enough-pw\n",
    );
    assert!(!ok && out.contains("white space"), "{out}");
    // A user of another organisation's domain, and a name taken, are refused.
    let (ok, out) = user(
        &[
            "add",
            "yan@example.org",
            "--role",
            "user",
            "--organisation",
            "Example Inc.",
        ],
        "x\n",
    );
    assert!(!ok && out.contains("address at one of"), "{out}");
    let (ok, out) = user(&["add", "operator", "--role", "operator"], "x\n");
    assert!(!ok && out.contains("exists"), "{out}");
    let zoe = login(g.control, "zoe@example.com", "zoe-password");
    let (ok, out) = user(&["passwd", "zoe@example.com"], "new-pass\n");
    assert!(!ok && out.contains("at least 10 characters"), "{out}");
    let (ok, out) = user(&["passwd", "zoe@example.com"], "new-password\n");
    assert!(ok && out.contains("1 session(s) ended"), "{out}");
    let (status, _) = zoe.get(&g, "/api/v1/me");
    assert_eq!(status, 401, "the old session ended");
    login(g.control, "zoe@example.com", "new-password");
    let (ok, out) = user(&["list"], "");
    assert!(
        ok && out.contains("zoe@example.com") && out.contains("-- 5 account(s)"),
        "{out}"
    );
    // With the embedded store, from a directory without a store, listing is refused
    // rather than showing a new, empty one; adding makes the store and says so. (The
    // gateway's own configuration may use PostgreSQL, where the data directory holds no
    // store: this part has a configuration of its own.)
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data");
    let embedded = elsewhere.path().join("embedded.toml");
    std::fs::write(
        &embedded,
        "[smtp]\nhostname = \"mx.test\"\nlisten = [\"127.0.0.1:1\"]\n\
         [[domain]]\nname = \"example.com\"\ndestination = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| user_cli(&embedded, &data, args, "long-enough-pw\n");
    let (ok, out) = run(&["list"]);
    assert!(!ok && out.contains("no store in"), "{out}");
    assert!(!data.exists());
    let (ok, out) = run(&["add", "ops", "--role", "operator"]);
    assert!(ok && out.contains("making a new one"), "{out}");
    let (ok, out) = run(&["list"]);
    assert!(ok && out.contains("-- 1 account(s)"), "{out}");
}

/// The quarantine page in headless Chromium (Debian's `chromium`, driven by
/// `playwright-core`, which the test command installs with npm under
/// `MAILSILO_TEST_PLAYWRIGHT`): alice logs in on a phone-sized page, finds her message and
/// releases it, and it arrives in the mailbox sink. Screenshots go to a temporary
/// directory the test prints (not committed).
#[test]
fn a_user_releases_her_mail_in_a_browser() {
    let modules = std::env::var("MAILSILO_TEST_PLAYWRIGHT").expect(
        "MAILSILO_TEST_PLAYWRIGHT is not set: run the tests with scripts/test.sh, which installs playwright-core and chromium",
    );
    let g = gateway();
    let id = hold(&g, &["alice@example.com"], "browser");
    let shots = tempfile::Builder::new()
        .prefix("mailsilo-screenshots-")
        .tempdir()
        .unwrap()
        .keep();
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/browser/portal.mjs"
        ))
        .arg(format!("http://{}", g.control))
        .args(["alice@example.com", "alice-pass", &id])
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshots: {}", shots.display());
    assert!(said.starts_with("released "), "{said}");
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
}

/// The silo page in headless Chromium: an operator changes a server's loading and adds a
/// server to the cluster, and the balancer's sessions follow both (counted by the banners
/// of sessions sent through it).
#[test]
fn an_operator_adds_a_server_in_a_browser_and_sessions_follow() {
    let modules = std::env::var("MAILSILO_TEST_PLAYWRIGHT").expect(
        "MAILSILO_TEST_PLAYWRIGHT is not set: run the tests with scripts/test.sh, which installs playwright-core and chromium",
    );
    let accounts = TAIL
        .split_once("[[organisation]]")
        .map(|(_, rest)| format!("[[organisation]]{rest}"))
        .unwrap();
    let mut silo = common::Silo::new(29, &[&[1, 1]], &accounts, "");
    silo.start_without_dns();
    let joined: SocketAddr = "127.2.29.9:2525".parse().unwrap();
    silo.start_extra_server("c1-s3", joined);
    let lb = silo.clusters[0].address;
    common::assert_shares(&common::sessions(lb, 200), &[("c1-s1", 1), ("c1-s2", 1)]);
    // One message, for the statistics page to draw (counted at the next flush, 10 s).
    let (_, mut smtp) = common::banner_of(lb);
    assert_eq!(smtp.cmd("EHLO client.test").0, 250);
    assert_eq!(
        smtp.mail(
            "a@outside.example",
            &["alice@example.com"],
            "Subject: hi\r\n\r\nhi\r\n"
        )
        .0,
        250
    );
    let token = std::fs::read_to_string(silo.token_file()).unwrap();
    let auth = format!("Bearer {}", token.trim());
    assert!(wait_until(WAIT, || {
        let (_, _, body) = http(
            silo.control,
            "GET",
            "/api/v1/stats",
            &[("Authorization", &auth)],
            "",
        );
        body.contains("\"clean\":1")
    }));
    let shots = tempfile::Builder::new()
        .prefix("mailsilo-screenshots-")
        .tempdir()
        .unwrap()
        .keep();
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/browser/silo.mjs"
        ))
        .arg(format!("http://{}", silo.control))
        .args(["operator", "operator-pass", "c1", "c1-s1", "3", "c1-s3"])
        .arg(joined.to_string())
        .arg("4")
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshots: {}", shots.display());
    assert_eq!(said.trim(), "changed");
    common::assert_shares(
        &common::sessions(lb, 400),
        &[("c1-s1", 3), ("c1-s2", 1), ("c1-s3", 4)],
    );
    silo.terminate("c1-s3");
}

/// schemathesis (from PyPI; `MAILSILO_TEST_SCHEMATHESIS` names its `st`, which the test
/// command installs) against the OpenAPI document of a gateway with mail in its queue and
/// quarantine: no 5xx, every status documented, every answer as the document says. It runs
/// in a network namespace of its own (`unshare --net`): nothing it invents leaves loopback.
#[test]
fn the_openapi_document_holds_under_schemathesis() {
    let st = std::env::var("MAILSILO_TEST_SCHEMATHESIS").expect(
        "MAILSILO_TEST_SCHEMATHESIS is not set: run the tests with scripts/test.sh, which installs schemathesis",
    );
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--", "bash"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/api/schemathesis.sh"
        ))
        .arg(&*BIN)
        .arg(&st)
        .arg(work.path())
        .arg("30")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(work.path().join("up.log")).unwrap_or_default()
    );
    let n = portal::openapi::operations().len();
    assert!(
        said.contains(&format!("{n} selected / {n} total")),
        "every operation: {said}"
    );
    // "N generated, N passed": every case passed.
    let cases = said
        .lines()
        .find_map(|l| {
            let (generated, passed) = l.trim().split_once(" generated, ")?;
            Some((
                generated.to_string(),
                passed.strip_suffix(" passed")?.to_string(),
            ))
        })
        .unwrap_or_else(|| panic!("no count of test cases: {said}"));
    assert_eq!(cases.0, cases.1, "{said}");
    assert!(cases.0.parse::<usize>().unwrap() > 1000, "{said}");
}

/// With `control.tls`, the portal and the API answer over HTTPS only (the self-signed
/// certificate names the host and the listening address), session cookies are `Secure`,
/// and the CLI speaks HTTPS, trusting that certificate.
#[test]
fn the_portal_answers_over_https_with_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let ip = common::unique_ip();
    let control = SocketAddr::new(ip, 8025);
    let config = dir.path().join("https.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nhostname = \"mx.test\"\nlisten = [\"{ip}:2525\"]\n\
             [[domain]]\nname = \"example.com\"\ndestination = \"{ip}:2526\"\n\
             [control]\nlisten = \"{control}\"\ntls = true\n\
             [[account]]\nname = \"operator\"\nrole = \"operator\"\npassword = \"operator-pass\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let _up = common::Proc::spawn(
        Command::new(&*BIN)
            .args(["up", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(wait_until(WAIT, || std::net::TcpStream::connect(control).is_ok()));
    // Plain HTTP gets no answer.
    let mut s = std::net::TcpStream::connect(control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A browser-like client that trusts the certificate, checking the address it names.
    let cert = data.join("control-tls-cert.pem");
    let said = common::python(
        "import http.client, ssl, sys, json\n\
         ctx = ssl.create_default_context(cafile=sys.argv[3])\n\
         c = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=ctx)\n\
         c.request('POST', '/api/v1/login', json.dumps({'name': 'operator', 'password': 'operator-pass'}), {'Content-Type': 'application/json'})\n\
         r = c.getresponse()\n\
         print(r.status, r.getheader('Set-Cookie'))",
        &[&ip.to_string(), "8025", cert.to_str().unwrap()],
    );
    assert!(said.starts_with("200 mailsilo_session="), "{said}");
    assert!(said.contains("; Secure"), "{said}");
    // The CLI: from the configuration (HTTPS, the certificate `up` made), or --control.
    let cli = |args: &[&str]| {
        Command::new(&*BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = cli(&["queue", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("https://{control}");
    let out = cli(&["queue", "list", "--control", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Trusting another certificate: refused.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, std::fs::read(data.join("tls-cert.pem")).unwrap()).unwrap();
    let out = cli(&["queue", "list", "--ca", other.to_str().unwrap()]);
    assert!(!out.status.success());
}

/// The operator's queue page: the mail waiting per client domain and each message with
/// its recipients' last error; flush, delete and return to the sender from the page and
/// the CLI (audited; a DSN queued to the sender); other roles are refused it.
#[test]
fn the_queue_page_shows_waiting_mail_and_deletes_it() {
    let g = Gateway::start(Options {
        tail: TAIL.into(),
        external_sink: true,
        ..Options::default()
    });
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "a@outside.example",
        &["bob@example.com"],
        "Subject: wait\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().unwrap().trim().to_string();
    let operator = login(g.control, "operator", "operator-pass");
    // Its first attempt fails (nothing listens at the destination): deferred, with the error.
    assert!(wait_until(WAIT, || operator
        .get(&g, "/queue")
        .1
        .contains("refused")));
    let (status, page) = operator.get(&g, "/queue");
    assert_eq!(status, 200);
    assert!(page.contains(&format!("id=\"q-{id}\"")), "{page}");
    assert!(
        page.contains("<td>example.com</td><td>1</td><td>1</td>"),
        "{page}"
    );
    // The queue over time: sampled every 10 s, for the domain's admin too, not for the
    // other organisation's.
    let backlog = |who: &Session| {
        let (status, body) = who.get(&g, "/api/v1/stats");
        assert_eq!(status, 200, "{body}");
        totals(&serde_json::from_str::<serde_json::Value>(&body).unwrap()["backlog"])
    };
    let admin = login(g.control, "admin@example.com", "admin-pass");
    assert!(
        wait_until(Duration::from_secs(40), || backlog(&admin)
            .get("deferred")
            .is_some_and(|n| *n >= 1)),
        "{:?}",
        backlog(&admin)
    );
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    assert!(
        backlog(&org).values().all(|n| *n == 0),
        "{:?}",
        backlog(&org)
    );
    // /metrics: the states add up to the one recipient waiting.
    let (_, _, metrics) = http(g.control, "GET", "/metrics", &[], "");
    for line in [
        "mailsilo_queue_recipients{domain=\"example.com\",state=\"new\"} 0",
        "mailsilo_queue_recipients{domain=\"example.com\",state=\"deferred\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    let (_, page) = admin.get(&g, "/stats");
    assert!(
        page.contains("<h2>Queue (recipients waiting, average)</h2>"),
        "{page}"
    );
    let post = |path: &str, body: &str| {
        http(
            g.control,
            "POST",
            path,
            &[
                ("Cookie", &operator.cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
        .0
    };
    assert_eq!(
        post("/queue/flush", &format!("csrf={}", operator.csrf)),
        303
    );
    assert_eq!(post(&format!("/queue/{id}/delete"), "csrf=forged"), 403);
    assert_eq!(
        post(
            &format!("/queue/{id}/delete"),
            &format!("csrf={}", operator.csrf)
        ),
        303
    );
    let (_, page) = operator.get(&g, "/queue");
    assert!(page.contains("The queue is empty."), "{page}");
    let (_, log) = operator.get(&g, "/api/v1/audit");
    assert!(log.contains("queue.delete") && log.contains(&id), "{log}");

    // Returned to the sender: from the page, then with the CLI.
    let mut queued = Vec::new();
    for subject in ["page", "cli"] {
        let mut s = g.smtp();
        assert_eq!(s.cmd("EHLO client.test").0, 250);
        let body = format!("Subject: {subject}\r\n\r\nx\r\n");
        let (code, text) = s.mail("a@outside.example", &["bob@example.com"], &body);
        assert_eq!(code, 250, "{text}");
        queued.push(text.rsplit(' ').next().unwrap().trim().to_string());
    }
    assert!(wait_until(WAIT, || {
        let page = operator.get(&g, "/queue").1;
        queued
            .iter()
            .all(|id| page.contains(&format!("id=\"q-{id}\"")))
            && page.matches("refused").count() >= 2
    }));
    let bounce = format!("/queue/{}/bounce", queued[0]);
    assert_eq!(post(&bounce, "csrf=forged"), 403);
    assert_eq!(post(&bounce, &format!("csrf={}", operator.csrf)), 303);
    assert_eq!(
        post(&bounce, &format!("csrf={}", operator.csrf)),
        404,
        "returned once"
    );
    let out = g.queue(&["bounce", &queued[1]]);
    assert!(out.contains("(1 recipient)"), "{out}");
    let again = g
        .admin_command("queue", &["bounce", &queued[1]])
        .output()
        .unwrap();
    assert!(!again.status.success(), "no longer queued");
    for id in &queued {
        let (_, trace) = operator.get(&g, &format!("/api/v1/trace/{id}"));
        let trace: serde_json::Value = serde_json::from_str(&trace).unwrap();
        let events = trace["events"].as_array().unwrap();
        let failed = events
            .iter()
            .find(|e| e["kind"] == "failed")
            .unwrap_or_else(|| panic!("{trace}"));
        assert!(
            failed["detail"]
                .as_str()
                .unwrap()
                .contains("5.0.0 returned to the sender by the mail provider"),
            "{failed}"
        );
        // The DSN is queued to the sender (outside.example has no route here: it waits).
        let dsn = events
            .iter()
            .find(|e| e["kind"] == "dsn")
            .unwrap_or_else(|| panic!("{trace}"));
        let detail = dsn["detail"].as_str().unwrap();
        assert!(
            detail.ends_with("queued to <a@outside.example>"),
            "{detail}"
        );
        let dsn_id = detail.split(' ').nth(1).unwrap();
        let (status, queued_dsn) = operator.get(&g, &format!("/api/v1/queue/{dsn_id}"));
        assert_eq!(status, 200, "{queued_dsn}");
        let queued_dsn: serde_json::Value = serde_json::from_str(&queued_dsn).unwrap();
        assert_eq!(queued_dsn["sender"], "");
        let headers = queued_dsn["headers"].as_str().unwrap();
        assert!(
            headers.contains("Subject: Undelivered Mail Returned to Sender"),
            "{headers}"
        );
    }
    let (_, log) = operator.get(&g, "/api/v1/audit");
    assert_eq!(log.matches("queue.bounce").count(), 2, "{log}");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    assert_eq!(alice.get(&g, "/queue").0, 403);
    assert_eq!(
        alice
            .post(
                &g,
                "POST",
                &format!("/api/v1/queue/{}/bounce", queued[0]),
                true
            )
            .0,
        403
    );
}

/// The digest schedule: with `off` nothing is sent; started with `daily`, the first
/// digest covers the day before and goes out at once; a restart the same day sends no
/// second one (the store's claim holds for the day).
#[test]
fn digests_follow_the_schedule_across_restarts() {
    let mut g = Gateway::start(Options {
        tail: format!("{TAIL}\n[digest]\nschedule = \"off\"\n"),
        ..Options::default()
    });
    hold(&g, &["alice@example.com"], "scheduled");
    std::thread::sleep(Duration::from_secs(2));
    assert!(g.mailbox("alice@example.com").is_empty(), "off: no digest");
    let restart = |g: &mut Gateway, schedule: &str| {
        g.up.take().unwrap().terminate();
        let text = std::fs::read_to_string(&g.config).unwrap();
        let text = text
            .replace("schedule = \"off\"", schedule)
            .replace("schedule = \"daily\"", schedule);
        std::fs::write(&g.config, text).unwrap();
        g.start_up();
    };
    restart(&mut g, "schedule = \"daily\"");
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    assert!(
        g.mailbox("alice@example.com")[0]
            .contains("Subject: 1 message(s) held in quarantine for you")
    );
    restart(&mut g, "schedule = \"daily\"");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(g.mailbox("alice@example.com").len(), 1, "one a day");
}

/// A quarantined virus is released by an admin or an operator only: not by its user, and
/// its digest entry has no release link.
#[test]
fn a_held_virus_is_not_its_users_to_release() {
    let g = Gateway::start(Options {
        tail: TAIL.replace("[filter]\n", "[filter]\nvirus_action = \"quarantine\"\n")
            + "\n[digest]\nschedule = \"off\"\n",
        ..Options::default()
    });
    let eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "a@outside.example",
        &["alice@example.com"],
        &format!(
            "Subject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
             --b\r\nContent-Type: application/octet-stream; name=e.com\r\n\r\n{eicar}\r\n--b--\r\n"
        ),
    );
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().unwrap().trim().to_string();
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, body) = alice.get(&g, &format!("/api/v1/quarantine/{id}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"verdict\":\"virus\""), "{body}");
    let (status, body) = alice.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{id}/release"),
        true,
    );
    assert_eq!(status, 403, "{body}");
    // Release-and-allow refused the same way leaves her allow list as it was (it used to
    // allow the sender before the release was refused: found by a probe).
    let (status, body) = alice.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{id}/release-and-allow"),
        true,
    );
    assert_eq!(status, 403, "{body}");
    let (_, lists) = alice.get(&g, "/api/v1/lists/alice@example.com");
    assert!(!lists.contains("a@outside.example"), "{lists}");
    g.admin("digest", &["send"]);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let digest = text_part(&g.mailbox("alice@example.com")[0]);
    assert!(
        digest.contains("A virus: your administrator can release it."),
        "{digest}"
    );
    assert!(!digest.contains("Release: "), "{digest}");
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (status, body) = admin.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{id}/release"),
        true,
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn pages_need_a_session_and_their_forms_a_csrf_token() {
    let g = gateway();
    let id = hold(&g, &["alice@example.com"], "page");
    // Without a session: the login page.
    let (status, headers, _) = http(g.control, "GET", "/quarantine", &[], "");
    assert_eq!(status, 303);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "location" && v == "/login")
    );
    let (status, headers, body) = http(g.control, "GET", "/login", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("<label for=\"password\">"), "{body}");
    let csp = headers
        .iter()
        .find(|(k, _)| k == "content-security-policy")
        .unwrap();
    assert!(csp.1.contains("default-src 'none'"), "{csp:?}");
    // A login form posted from another site is refused.
    let form = "name=alice%40example.com&password=alice-pass";
    let (status, _, _) = http(
        g.control,
        "POST",
        "/login",
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form,
    );
    assert_eq!(status, 403);
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, page) = alice.get(&g, "/quarantine");
    assert_eq!(status, 200);
    assert!(page.contains(&format!("id=\"m-{id}\"")), "{page}");
    // A release posted without the form's token (another site's form) is refused.
    let (status, _, _) = http(
        g.control,
        "POST",
        &format!("/quarantine/{id}/release"),
        &[
            ("Cookie", &alice.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "csrf=forged",
    );
    assert_eq!(status, 403);
    let (status, headers, _) = http(
        g.control,
        "POST",
        &format!("/quarantine/{id}/delete"),
        &[
            ("Cookie", &alice.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={}", alice.csrf),
    );
    assert_eq!(status, 303);
    let location = &headers.iter().find(|(k, _)| k == "location").unwrap().1;
    assert!(
        location.starts_with("/quarantine?done=") && location.contains("Deleted"),
        "{location}"
    );
    // The notice is shown on the page the form leads to, sealed to the session: text a link
    // made elsewhere carries, or another session's seal, is not shown.
    let (_, page) = alice.get(&g, location);
    assert!(page.contains("role=\"status\">Deleted"), "{page}");
    let (seal, _) = location["/quarantine?done=".len()..]
        .split_once('.')
        .unwrap();
    for forged in [
        "/quarantine?done=Security%20notice%3A%20log%20in%20at%20evil.test".to_string(),
        format!("/quarantine?done={seal}.Security%20notice"),
    ] {
        let (_, page) = alice.get(&g, &forged);
        assert!(!page.contains("Security notice"), "{page}");
    }
    // Markup in what a sender chose is shown as text.
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "\"<b>bold</b>\"@outside.example",
        &["alice@example.com"],
        "Subject: hold me\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let (_, page) = alice.get(&g, "/quarantine");
    assert!(page.contains("&lt;b&gt;bold&lt;/b&gt;"), "{page}");
    assert!(!page.contains("<b>bold"), "{page}");
    // What axum's extractors refuse (a path segment that is not UTF-8) is answered like
    // every other refusal: the JSON error to the API, the error page to a browser.
    let (status, body) = alice.get(&g, "/api/v1/quarantine/%FF");
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8"),
        "{body}"
    );
    let (status, page) = alice.get(&g, "/quarantine/%FF");
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("<html") && page.contains("UTF-8"), "{page}");
    // An error echoes what was asked for, not all 20 KB of it.
    let long = "x".repeat(20_000);
    let (status, body) = alice.get(&g, &format!("/api/v1/quarantine/{long}"));
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("xxxx") && message.len() < 1100,
        "{message}"
    );
}

/// The operator's silo page draws the silo (its DNS answers, each cluster's balancer, each
/// server with health, state and loading) and changes a server's loading and state through
/// the balancers, as `lb` does; other roles are refused the page.
#[test]
fn an_operator_changes_servers_on_the_silo_page() {
    let accounts = TAIL
        .split_once("[[organisation]]")
        .map(|(_, rest)| format!("[[organisation]]{rest}"))
        .unwrap();
    let mut silo = common::Silo::new(27, &[&[1, 2]], &accounts, "");
    silo.start_without_dns();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let Session { cookie, csrf } = login(silo.control, "operator", "operator-pass");
    let (status, _, page) = http(silo.control, "GET", "/silo", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    for want in [
        "Cluster c1",
        "id=\"s-c1-s1\"",
        "id=\"s-c1-s2\"",
        "loading 2",
    ] {
        assert!(page.contains(want), "{want}: {page}");
    }
    let post = |path: &str, body: &str| {
        let mut h = form.to_vec();
        h.push(("Cookie", &cookie));
        http(silo.control, "POST", path, &h, body).0
    };
    assert_eq!(
        post("/silo/c1/c1-s1/loading", &format!("csrf={csrf}&value=7")),
        303
    );
    assert_eq!(
        post("/silo/c1/c1-s2/state", &format!("csrf={csrf}&value=drain")),
        303
    );
    assert_eq!(post("/silo/c1/c1-s1/loading", "csrf=forged&value=9"), 403);
    assert_eq!(
        post("/silo/c1/c1-s1/loading", &format!("csrf={csrf}&value=0")),
        422
    );
    // A server joins the cluster from the page, and another leaves it.
    assert_eq!(
        post(
            "/silo/c1",
            &format!("csrf={csrf}&server=c1-s3&address=127.2.27.9%3A2525&loading=3")
        ),
        303
    );
    assert_eq!(
        post(
            "/silo/c1",
            &format!("csrf={csrf}&server=c1-s3&address=127.2.27.10%3A2525&loading=3")
        ),
        409
    );
    assert_eq!(
        post(
            "/silo/c1",
            "csrf=forged&server=c1-s4&address=127.2.27.10%3A2525&loading=3"
        ),
        403
    );
    assert_eq!(post("/silo/c1/c1-s3/remove", "csrf=forged"), 403);
    let (_, _, page) = http(silo.control, "GET", "/silo", &[("Cookie", &cookie)], "");
    assert!(page.contains("id=\"s-c1-s3\""), "{page}");
    assert!(page.contains("Add a server to c1"), "{page}");
    assert_eq!(post("/silo/c1/c1-s3/remove", &format!("csrf={csrf}")), 303);
    let (_, _, page) = http(silo.control, "GET", "/silo", &[("Cookie", &cookie)], "");
    assert!(!page.contains("id=\"s-c1-s3\""), "{page}");
    // Each change is on the audit log, with the server before and after.
    let (status, _, body) = http(
        silo.control,
        "GET",
        "/api/v1/audit",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let log: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "server.remove",
            "server.add",
            "server.state",
            "server.loading"
        ]
    );
    assert_eq!(log[3]["object"], "c1/c1-s1");
    assert!(
        log[3]["before"].as_str().unwrap().contains("\"loading\":1"),
        "{}",
        log[3]
    );
    assert!(
        log[3]["after"].as_str().unwrap().contains("\"loading\":7"),
        "{}",
        log[3]
    );
    assert!(log.iter().all(|e| e["actor"] == "operator"));
    let shown = silo.lb(&["show"]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("c1-s1") && l.contains(" 7 ")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.contains("c1-s2") && l.contains("drain")),
        "{shown}"
    );
    let alice = login(silo.control, "alice@example.com", "alice-pass");
    let (status, _, page) = http(
        silo.control,
        "GET",
        "/silo",
        &[("Cookie", &alice.cookie)],
        "",
    );
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("operator"), "{page}");
}

/// The balancers sample each server's health into the statistics every 10 s: a running
/// server counts up, one that fails its checks down, one in maintenance maint; operators
/// see each server's availability over time (the API and the page's chart), admins do not.
/// The silo page gives each mail server's messages over the last hour, the statistics
/// each cluster's. Also what a newcomer meets first: `up` prints the portal's address and
/// the accounts to log in with, and the CLI without the control token says so.
#[test]
fn each_servers_availability_is_charted_over_time() {
    let accounts = TAIL
        .split_once("[[organisation]]")
        .map(|(_, rest)| format!("[[organisation]]{rest}"))
        .unwrap();
    let mut silo = common::Silo::new(30, &[&[1, 1]], &accounts, "");
    silo.start_all();
    // `up` says where the portal is and the accounts the file gives a password; each
    // logs in there with what was printed.
    // (The listeners answer before the map is printed: it is waited for.)
    let portal = format!("http://{}/", silo.control);
    let line = format!("  portal                 {portal}  (API: {portal}api/v1/)");
    let read = || std::fs::read_to_string(silo.dir.path().join("all.out")).unwrap();
    let accounts_shown = |out: &str| out.lines().filter(|l| l.contains(" / ")).count();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = read();
            out.contains(&line) && accounts_shown(&out) == 4
        }),
        "{}",
        read()
    );
    let out = read();
    let printed: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.trim().split_once(" / "))
        .filter_map(|(who, password)| Some((who.rsplit_once(' ')?.1, password)))
        .collect();
    assert_eq!(printed.len(), 4, "{out}");
    for (name, password) in printed {
        login(silo.control, name, password);
    }
    // The CLI without the control token: refused, saying where it looked; with another
    // token: refused by the gateway, saying which token it wants.
    let empty = tempfile::tempdir().unwrap();
    let cli = |token: &str| {
        Command::new(&*BIN)
            .args(["lb", "show", "--control", &silo.control.to_string()])
            .arg("--data-dir")
            .arg(empty.path())
            .env("MAILSILO_CONTROL_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = cli("");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("no control token at"),
        "{said}"
    );
    let out = cli("not-the-token");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("the gateway refused the control token"),
        "{said}"
    );
    silo.lb(&["maint", "c1/c1-s2"]);
    // Nothing listens at the new server's address: its checks fail.
    silo.lb(&["add", "c1/c1-s3", "127.2.30.9:2525", "--loading", "1"]);
    let operator = login(silo.control, "operator", "operator-pass");
    let stats = |who: &Session| -> serde_json::Value {
        let (status, _, body) = http(
            silo.control,
            "GET",
            "/api/v1/stats",
            &[("Cookie", &who.cookie)],
            "",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let want = ["c1/c1-s1 up", "c1/c1-s2 maint", "c1/c1-s3 down"];
    assert!(wait_until(Duration::from_secs(35), || {
        let seen = totals(&stats(&operator)["availability"]);
        want.iter().all(|w| seen.contains_key(*w))
    }));
    // The DNS's checks of the cluster's balancer, sampled alike.
    let clusters = totals(&stats(&operator)["cluster_availability"]);
    assert!(
        clusters.keys().eq(["c1 up"]) && clusters["c1 up"] >= 1,
        "{clusters:?}"
    );
    let seen = totals(&stats(&operator)["availability"]);
    assert!(
        seen.keys().all(|k| want.contains(&k.as_str())),
        "no other state was sampled: {seen:?}"
    );
    let (status, _, page) = http(
        silo.control,
        "GET",
        "/stats",
        &[("Cookie", &operator.cookie)],
        "",
    );
    assert_eq!(status, 200);
    for cell in [
        "c1/c1-s1</td><td>100.00%",
        "c1/c1-s3</td><td>0.00%",
        "c1/c1-s2</td><td>-</td>",
        "<h2>Cluster availability</h2>",
        "<tr><td>c1</td><td>100.00%",
    ] {
        assert!(page.contains(cell), "{cell}: {page}");
    }
    let admin = login(silo.control, "admin@example.com", "admin-pass");
    assert_eq!(stats(&admin)["availability"], serde_json::json!([]));
    assert_eq!(stats(&admin)["cluster_availability"], serde_json::json!([]));
    assert_eq!(stats(&admin)["clamd_availability"], serde_json::json!([]));
    // The silo page gives each mail server's messages over the last hour.
    let mut s = common::Smtp::connect(silo.clusters[0].address);
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "a@outside.example",
        &["bob@example.com"],
        "Subject: counted\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let silo_page = || {
        http(
            silo.control,
            "GET",
            "/silo",
            &[("Cookie", &operator.cookie)],
            "",
        )
        .2
    };
    assert!(
        wait_until(WAIT, || silo_page().contains("1 messages in the last hour")),
        "{}",
        silo_page()
    );
    // Counted for its cluster too, the API and the page.
    let clusters = totals(&stats(&operator)["clusters"]);
    assert_eq!(clusters, [("c1".to_string(), 1)].into(), "{clusters:?}");
    let (_, _, page) = http(
        silo.control,
        "GET",
        "/stats",
        &[("Cookie", &operator.cookie)],
        "",
    );
    assert!(
        page.contains("aria-label=\"Messages by cluster: 1 in all\""),
        "{page}"
    );
}

/// The sums of a series' buckets by label.
fn totals(series: &serde_json::Value) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for b in series.as_array().unwrap() {
        for (label, n) in b["counts"].as_object().unwrap() {
            *out.entry(label.clone()).or_default() += n.as_i64().unwrap();
        }
    }
    out
}

/// Statistics count each message's verdict and action per recipient domain, on every node
/// through the store; an organisation's admin sees its own domains' figures only (another
/// organisation's domain does not exist for it), a user none, and the page draws them.
#[test]
fn statistics_count_each_organisations_mail() {
    let g = gateway();
    hold(&g, &["alice@example.com"], "one");
    hold(&g, &["bob@example.com"], "two");
    hold(&g, &["erin@example.org"], "three");
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.mail(
        "friend@partner.example",
        &["bob@example.com"],
        "Subject: lunch\r\n\r\nat noon?\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let (code, text) = s.mail(
        "spammer@outside.example",
        &["erin@example.org"],
        "Subject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n",
    );
    assert_eq!(code, 550, "{text}");
    // The counters reach the store at the queue's next flush (every 10 s).
    let operator = login(g.control, "operator", "operator-pass");
    let stats = |who: &Session, q: &str| -> serde_json::Value {
        let (status, body) = who.get(&g, &format!("/api/v1/stats{q}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert!(wait_until(WAIT, || totals(
        &stats(&operator, "")["verdicts"]
    )
    .values()
    .sum::<i64>()
        == 5));
    let all = stats(&operator, "");
    let n = |pairs: &[(&str, i64)]| -> std::collections::BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    assert_eq!(totals(&all["verdicts"]), n(&[("clean", 1), ("spam", 4)]));
    assert_eq!(
        totals(&all["actions"]),
        n(&[("deliver", 1), ("quarantine", 3), ("reject", 1)])
    );
    assert_eq!(
        all["top_domains"],
        serde_json::json!([{"label": "example.com", "count": 3}, {"label": "example.org", "count": 2}])
    );
    assert_eq!(all["top_senders"][0]["label"], "outside.example");
    assert_eq!(
        all["top_sender_addresses"],
        serde_json::json!([
            {"label": "promo@outside.example", "count": 3},
            {"label": "friend@partner.example", "count": 1},
            {"label": "spammer@outside.example", "count": 1}
        ])
    );
    // The gateway's listener is in no cluster.
    assert_eq!(totals(&all["clusters"]), n(&[("-", 5)]));
    assert_eq!(all["step"], 3600);
    let hours = all["verdicts"].as_array().unwrap().len();
    assert!((24..=25).contains(&hours), "{all}");
    let com = stats(&operator, "?domain=example.com");
    assert_eq!(totals(&com["verdicts"]), n(&[("clean", 1), ("spam", 2)]));
    // An organisation's admin: its own domain's figures only.
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    let mine = stats(&org, "");
    assert_eq!(totals(&mine["verdicts"]), n(&[("spam", 2)]));
    assert_eq!(
        mine["top_domains"],
        serde_json::json!([{"label": "example.org", "count": 2}])
    );
    assert_eq!(mine["health"], serde_json::json!([]));
    let (status, body) = org.get(&g, "/api/v1/stats?domain=example.com");
    assert_eq!(status, 404, "{body}");
    let (status, body) = org.get(&g, "/api/v1/stats?since=10&until=5");
    assert_eq!(status, 422, "{body}");
    // Found by schemathesis: a range at the ends of i64 overflowed.
    let (status, body) = org.get(&g, "/api/v1/stats?until=-9223372036854775808");
    assert_eq!(status, 422, "{body}");
    let (status, body) = org.get(&g, "/api/v1/stats?since=-9223372036854775808");
    assert_eq!(status, 422, "{body}");
    let (status, body) = org.get(&g, "/api/v1/stats?bogus=1");
    assert_eq!(status, 400, "{body}");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, _) = alice.get(&g, "/api/v1/stats");
    assert_eq!(status, 403);
    let (status, _) = alice.get(&g, "/stats");
    assert_eq!(status, 403);
    // The page draws the charts, with the organisation's figures only.
    let (status, page) = org.get(&g, "/stats");
    assert_eq!(status, 200);
    assert!(
        page.contains("<svg class=\"chart\"")
            && page.contains("aria-label=\"Messages by verdict: 2 in all\""),
        "{page}"
    );
    assert!(!page.contains("example.com"), "{page}");
    let (status, page) = operator.get(&g, "/stats?since=0");
    assert_eq!(status, 422, "a range past 400 days: {page}");
}

/// The text part of a message, decoded by Python's `email` (a real reader of MIME).
fn text_part(message: &str) -> String {
    common::python(
        "import email, sys\n\
         m = email.message_from_string(sys.argv[1])\n\
         for p in m.walk():\n\
         \x20   if p.get_content_type() == 'text/plain':\n\
         \x20       print(p.get_payload(decode=True).decode())",
        &[message],
    )
}

/// One digest link's path and query, from the digest's text.
fn digest_link(text: &str, what: &str, nth: usize) -> String {
    let line = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{what}:")))
        .nth(nth)
        .unwrap_or_else(|| panic!("no {what} link {nth}: {text}"));
    let url = line.trim();
    url.split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap()
}

/// Digests reach each recipient of held mail through the queue, with links that need no
/// login: opening one shows the message and changes nothing; its button releases once; an
/// altered or expired link is refused; a message also held for others has no link.
#[test]
fn digest_links_release_once_and_refuse_altered_or_expired_ones() {
    let g = Gateway::start(Options {
        tail: format!("{TAIL}\n[digest]\nschedule = \"off\"\nlink_lifetime = \"1h\"\n"),
        ..Options::default()
    });
    let first = hold(&g, &["alice@example.com"], "first");
    let second = hold(&g, &["alice@example.com"], "second");
    hold(&g, &["alice@example.com", "bob@example.com"], "shared");
    hold(&g, &["erin@example.org"], "erin");
    let out = g.admin("digest", &["send", "--organisation", "Example Inc."]);
    assert!(out.contains("2 digests queued"), "{out}");
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.com").len() == 1));
    assert!(
        g.mailbox("erin@example.org").is_empty(),
        "another organisation's"
    );
    let digest = &g.mailbox("alice@example.com")[0];
    assert!(
        digest.contains("Subject: 3 message(s) held in quarantine for you"),
        "{digest}"
    );
    assert!(
        digest.contains("Auto-Submitted: auto-generated"),
        "{digest}"
    );
    let text = text_part(digest);
    for want in ["hold me first", "hold me second", "hold me shared"] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert_eq!(text.matches("Release: ").count(), 3, "{text}");
    assert_eq!(
        text.matches("Held as spam (score 8.0): ").count(),
        3,
        "the verdict and score said once each: {text}"
    );
    assert!(!text.contains("): spam (score"), "{text}");
    let release = digest_link(&text, "Release", 0);
    assert!(release.contains(&format!("id={first}")), "{release}");
    // Opening the link (as a link scanner would) shows the message and changes nothing.
    let (status, _, page) = http(g.control, "GET", &release, &[], "");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Release this message") && page.contains("hold me first"),
        "{page}"
    );
    let (status, _, page) = http(g.control, "GET", &release, &[], "");
    assert_eq!(status, 200, "still held: {page}");
    // The button releases it, once.
    let form = release.split_once('?').unwrap().1.to_string();
    let post = |path: &str, body: &str| {
        http(
            g.control,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body,
        )
    };
    let (status, _, page) = post("/digest/release", &form);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Released"), "{page}");
    assert!(wait_until(WAIT, || g
        .mailbox("alice@example.com")
        .iter()
        .any(|m| m.contains("hold me first"))));
    let (status, _, page) = post("/digest/release", &form);
    assert_eq!(status, 404, "released once: {page}");
    // Altered: another message, another recipient, a later expiry, another action.
    let altered = [
        form.replace(&first, &second),
        form.replace("alice%40example.com", "bob%40example.com"),
        form.replace("expires=", "expires=9"),
    ];
    for f in &altered {
        let (status, _, page) = post("/digest/release", f);
        assert_eq!(status, 403, "{f}: {page}");
        assert!(page.contains("not valid"), "{page}");
    }
    let delete_second = digest_link(&text, "Delete", 1);
    assert!(
        delete_second.contains(&format!("id={second}")),
        "{delete_second}"
    );
    let (status, _, _) = post("/digest/release", delete_second.split_once('?').unwrap().1);
    assert_eq!(status, 403, "a delete link does not release");
    let (status, _, page) = post("/digest/delete", delete_second.split_once('?').unwrap().1);
    assert_eq!(status, 200, "{page}");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, _) = alice.get(&g, &format!("/api/v1/quarantine/{second}"));
    assert_eq!(status, 404, "deleted");
    // The links are signed for digest.link_lifetime (an hour here).
    let expires: i64 = form
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 3500..=now + 3600).contains(&expires),
        "{expires} {now}"
    );
    // Digest sending is an operator's call.
    let (status, _) = alice.post(&g, "POST", "/api/v1/digests", true);
    assert_eq!(status, 403);

    // Past its lifetime (a second here), a link is refused, and the message stays held.
    let g = Gateway::start(Options {
        tail: format!("{TAIL}\n[digest]\nschedule = \"off\"\nlink_lifetime = \"1s\"\n"),
        ..Options::default()
    });
    let id = hold(&g, &["alice@example.com"], "late");
    g.admin("digest", &["send"]);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let text = text_part(&g.mailbox("alice@example.com")[0]);
    let release = digest_link(&text, "Release", 0);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, _, page) = http(
        g.control,
        "POST",
        "/digest/release",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        release.split_once('?').unwrap().1,
    );
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("expired"), "{page}");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, _) = alice.get(&g, &format!("/api/v1/quarantine/{id}"));
    assert_eq!(status, 200, "still held");

    // One click (digest.confirm = false): opening the link releases, once; a delete link
    // deletes as it is opened.
    let g = Gateway::start(Options {
        tail: format!("{TAIL}\n[digest]\nschedule = \"off\"\nconfirm = false\n"),
        ..Options::default()
    });
    let kept = hold(&g, &["alice@example.com"], "wanted");
    let dropped = hold(&g, &["alice@example.com"], "unwanted");
    g.admin("digest", &["send"]);
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    let text = text_part(&g.mailbox("alice@example.com")[0]);
    assert!(text.contains("opening it does it"), "{text}");
    let (release, delete) = (
        digest_link(&text, "Release", 0),
        digest_link(&text, "Delete", 1),
    );
    assert!(
        release.contains(&kept) && delete.contains(&dropped),
        "{text}"
    );
    // HEAD (a link checker) does nothing.
    let (status, _, _) = http(g.control, "HEAD", &release, &[], "");
    assert_eq!(status, 200);
    let (status, _) = alice_of(&g).get(&g, &format!("/api/v1/quarantine/{kept}"));
    assert_eq!(status, 200, "still held after HEAD");
    let (status, _, page) = http(g.control, "GET", &release, &[], "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Released"), "{page}");
    let (status, _, page) = http(g.control, "GET", &release, &[], "");
    assert_eq!(status, 404, "released once: {page}");
    assert!(wait_until(WAIT, || g
        .mailbox("alice@example.com")
        .iter()
        .any(|m| m.contains("hold me wanted"))));
    let (status, _, page) = http(g.control, "GET", &delete, &[], "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Deleted"), "{page}");
    let (status, _) = alice_of(&g).get(&g, &format!("/api/v1/quarantine/{dropped}"));
    assert_eq!(status, 404, "deleted");
}

fn alice_of(g: &Gateway) -> Session {
    login(g.control, "alice@example.com", "alice-pass")
}

/// Client domains and their policies: an organisation's admin reads and changes its own
/// domains (not another's, not their silo, not their removal), through the API and the
/// domain page, whose form names a bad field; every change lands in the audit log with who
/// made it and the settings before and after, each admin seeing its own domains' entries.
#[test]
fn admins_change_their_domains_and_every_change_is_audited() {
    let g = gateway();
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let names = |s: &Session| -> Vec<String> {
        let (status, body) = s.get(&g, "/api/v1/domains");
        assert_eq!(status, 200, "{body}");
        let v: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        v.iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&admin), ["example.com"]);
    assert_eq!(names(&org), ["example.org"]);
    assert_eq!(alice.get(&g, "/api/v1/domains").0, 403);
    assert_eq!(admin.get(&g, "/api/v1/domains/example.org").0, 404);
    let put = |s: &Session, name: &str, body: &str| {
        http(
            g.control,
            "PUT",
            &format!("/api/v1/domains/{name}"),
            &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
            body,
        )
        .0
    };
    let tagged = format!(
        r#"{{"destination":"{}","filter":{{"spam_action":"tag","subject_prefix":"[SPAM]"}}}}"#,
        g.sink
    );
    assert_eq!(
        put(&admin, "example.org", &tagged),
        404,
        "another organisation's"
    );
    assert_eq!(
        put(&admin, "new.example", &tagged),
        404,
        "adding is the provider's"
    );
    assert_eq!(put(&admin, "example.com", &tagged), 204);
    let moved = format!(r#"{{"destination":"{}","silo":"elsewhere"}}"#, g.sink);
    assert_eq!(put(&admin, "example.com", &moved), 403);
    // Not into the provider's own network, nor a retry policy of its own.
    // By number or by name (these got through before a probe tried them).
    for inside in [
        "127.0.0.1:25",
        "10.1.2.3:25",
        "[::1]:25",
        "169.254.1.1:25",
        "100.64.0.1:25",
        "localhost:25",
        "127.1:25",
        "2130706433:25",
        "0x7f000001:25",
        "[::127.0.0.1]:25",
        "[64:ff9b::7f00:1]:25",
        "no-such-host.invalid:25",
    ] {
        let body = format!(r#"{{"destination":"{inside}"}}"#);
        assert_eq!(put(&admin, "example.com", &body), 403, "{inside}");
    }
    let retry = format!(
        r#"{{"destination":"{}","retry":{{"lifetime":"1h"}}}}"#,
        g.sink
    );
    assert_eq!(put(&admin, "example.com", &retry), 403);
    assert_eq!(
        admin
            .post(&g, "DELETE", "/api/v1/domains/example.com", true)
            .0,
        403
    );
    assert_eq!(
        org.post(&g, "DELETE", "/api/v1/domains/example.com", true)
            .0,
        404
    );
    // The page: the form shows the settings; a bad field is named, nothing is stored.
    let (status, page) = admin.get(&g, "/domains/example.com");
    assert_eq!(status, 200);
    assert!(
        page.contains("value=\"[SPAM]\"") && page.contains("<option value=\"tag\" selected>"),
        "{page}"
    );
    let form = |fields: &str| {
        http(
            g.control,
            "POST",
            "/domains/example.com",
            &[
                ("Cookie", &admin.cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &format!(
                "csrf={}&destination={}&spam_action=quarantine&{fields}",
                admin.csrf,
                g.sink.to_string().replace(':', "%3A")
            ),
        )
    };
    let (status, _, page) = form("spam_threshold=high");
    assert_eq!(status, 422, "{page}");
    assert!(
        page.contains("spam threshold: &quot;high&quot; is not a number"),
        "{page}"
    );
    let (status, _, page) = form("spam_threshold=9&reject_threshold=4");
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("filter.reject_threshold"), "{page}");
    let (status, _, _) =
        form("spam_threshold=6&attachment_rules=reject%3A+executable+.exe&block=bad.example");
    assert_eq!(status, 303);
    let (_, body) = admin.get(&g, "/api/v1/domains/example.com");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["settings"]["filter"]["spam_action"], "quarantine", "{v}");
    assert_eq!(
        v["settings"]["filter"]["block"],
        serde_json::json!(["bad.example"])
    );
    assert_eq!(
        v["settings"]["filter"]["attachment_rule"][0]["extensions"],
        serde_json::json!(["exe"])
    );
    assert_eq!(org.get(&g, "/domains/example.com").0, 404);
    // A held message released by alice is on the log too.
    let id = hold(&g, &["alice@example.com"], "audited");
    assert_eq!(
        alice
            .post(
                &g,
                "POST",
                &format!("/api/v1/quarantine/{id}/release"),
                true
            )
            .0,
        200
    );
    let log = |s: &Session| -> Vec<serde_json::Value> {
        let (status, body) = s.get(&g, "/api/v1/audit");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let mine = log(&admin);
    let actions: Vec<(&str, &str)> = mine
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("quarantine.release", "alice@example.com"),
            ("domain.set", "admin@example.com"),
            ("domain.set", "admin@example.com")
        ]
    );
    // An entry keeps what changed: the spam action set, not the destination left alone.
    let first = &mine[2];
    assert_eq!(first["before"], "{}", "{first}");
    let after = first["after"].as_str().unwrap();
    assert!(after.contains("\"tag\""), "{first}");
    assert!(!after.contains(&g.sink.to_string()), "{first}");
    assert!(log(&org).is_empty(), "another organisation's changes");
    assert_eq!(alice.get(&g, "/api/v1/audit").0, 403);
    let operator = login(g.control, "operator", "operator-pass");
    assert_eq!(log(&operator).len(), 3);
    let (status, page) = admin.get(&g, "/audit");
    assert_eq!(status, 200);
    assert!(
        page.contains("quarantine.release") && page.contains("admin@example.com"),
        "{page}"
    );
}

/// One address's lists are bounded, and so are a domain's settings as a whole: lists grown
/// one address at a time stop at the bound, and the audit log records each change (one
/// address's lists, cut at its limit), not the domain's every setting each time.
#[test]
fn lists_grow_to_a_bound_and_the_audit_log_only_with_each_change() {
    let g = gateway();
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let entries: Vec<String> = (0..1000)
        .map(|i| format!("\"sender{i:04}.example.net\""))
        .collect();
    let body = format!("{{\"allow\":[{}]}}", entries.join(","));
    let mut refused = None;
    for n in 0..200 {
        let path = format!("/api/v1/lists/grow{n}@example.com");
        let (status, text) = admin.json(&g, "PUT", &path, &body);
        if status != 200 {
            refused = Some((n, status, text));
            break;
        }
    }
    let (stored, status, text) = refused.expect("a domain's settings are bounded");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("more than the 2097152 allowed"), "{text}");
    assert!(stored > 50, "{stored}");
    let (status, body) = admin.get(&g, "/api/v1/audit?limit=1000");
    assert_eq!(status, 200);
    let log: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(log.len(), stored);
    for e in &log {
        // Before: the other addresses' lists left out.
        let before = e["before"].as_str().unwrap();
        assert!(before.len() < 100, "{before}");
        let after = e["after"].as_str().unwrap();
        assert!(after.len() < 17_000, "{}", after.len());
        assert!(after.ends_with("bytes more)"), "{after}");
    }
}

/// "Spam" and "not spam" from the quarantine (an admin's or an operator's: the model is
/// shared by every client) teach the classifier (the example is stored, the model trained
/// again in the background) and then delete or release the message; bulk calls do one
/// action to many messages, each within the caller's scope as it would be alone.
#[test]
fn reports_teach_the_classifier_and_bulk_actions_keep_each_scope() {
    let g = gateway();
    let ham = hold(&g, &["alice@example.com"], "ham");
    let spam = hold(&g, &["alice@example.com"], "spam");
    let third = hold(&g, &["alice@example.com"], "third");
    let bobs = hold(&g, &["bob@example.com"], "bob");
    let erins = hold(&g, &["erin@example.org"], "erin");
    let examples = || {
        let out = Command::new(&*BIN)
            .args(["classifier", "stats", "--config"])
            .arg(&g.config)
            .arg("--data-dir")
            .arg(g.data())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        examples().contains("examples: 0 spam, 0 ham"),
        "{}",
        examples()
    );
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    let report = |s: &Session, id: &str, what: &str| {
        s.post(
            &g,
            "POST",
            &format!("/api/v1/quarantine/{id}/report-{what}"),
            true,
        )
    };
    assert_eq!(
        report(&alice, &ham, "ham").0,
        403,
        "a user's report would move every client's verdicts"
    );
    let (status, body) = report(&admin, &ham, "ham");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("queued_as"), "{body}");
    let (status, body) = report(&admin, &spam, "spam");
    assert_eq!(status, 204, "{body}");
    assert!(
        examples().contains("examples: 1 spam, 1 ham"),
        "{}",
        examples()
    );
    assert!(
        wait_until(WAIT, || examples().contains("trained on 1 spam and 1 ham")),
        "the model was trained again: {}",
        examples()
    );
    assert_eq!(alice.get(&g, &format!("/api/v1/quarantine/{spam}")).0, 404);
    assert!(wait_until(WAIT, || g
        .mailbox("alice@example.com")
        .iter()
        .any(|m| m.contains("hold me ham"))));
    assert_eq!(report(&org, &bobs, "spam").0, 404, "another organisation's");
    // Bulk: each message as alone; the others' are 404s.
    let bulk = |s: &Session, body: &str| {
        let (status, _, b) = http(
            g.control,
            "POST",
            "/api/v1/quarantine/bulk",
            &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
            body,
        );
        assert_eq!(status, 200, "{b}");
        let v: Vec<serde_json::Value> = serde_json::from_str(&b).unwrap();
        v.iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["status"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bulk(
            &alice,
            &format!(r#"{{"ids":["{third}","{bobs}","{erins}"],"action":"delete"}}"#)
        ),
        [
            (third.clone(), 200),
            (bobs.clone(), 404),
            (erins.clone(), 404)
        ]
    );
    assert_eq!(
        bulk(
            &org,
            &format!(r#"{{"ids":["{erins}","{bobs}"],"action":"release"}}"#)
        ),
        [(erins.clone(), 200), (bobs.clone(), 404)]
    );
    let (status, _, _) = http(
        g.control,
        "POST",
        "/api/v1/quarantine/bulk",
        &[("Cookie", &alice.cookie)],
        &format!(r#"{{"ids":["{bobs}"],"action":"delete"}}"#),
    );
    assert_eq!(status, 403, "a session's change needs its CSRF token");
    // The page's bulk form.
    let (status, page) = admin.get(&g, "/quarantine");
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("value=\"{bobs}\" form=\"bulk\"")),
        "{page}"
    );
    let (status, headers, _) = http(
        g.control,
        "POST",
        "/quarantine/bulk",
        &[
            ("Cookie", &admin.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={}&action=report-spam&id={bobs}", admin.csrf),
    );
    assert_eq!(status, 303);
    let location = &headers.iter().find(|(k, _)| k == "location").unwrap().1;
    assert!(location.contains("Done%20for%201%20of%201"), "{location}");
    assert!(
        examples().contains("examples: 2 spam, 1 ham"),
        "{}",
        examples()
    );
    assert!(wait_until(WAIT, || examples().contains("trained on 2 spam and 1 ham")));
    // Each report is on the audit log.
    let (_, body) = admin.get(&g, "/api/v1/audit");
    for want in [
        "quarantine.report-ham",
        "quarantine.report-spam",
        "quarantine.delete",
    ] {
        assert!(body.contains(want), "{want}: {body}");
    }
}

/// The message trace answers within each role's scope, like the quarantine: through the API
/// and on its pages.
#[test]
fn traces_are_scoped_like_the_quarantine() {
    let g = gateway();
    let alices = hold(&g, &["alice@example.com"], "alice");
    let bobs = hold(&g, &["bob@example.com"], "bob");
    let shared = hold(&g, &["dave@example.com", "erin@example.org"], "shared");
    let traced = |s: &Session, q: &str| -> Vec<String> {
        let (status, body) = s.get(&g, &format!("/api/v1/trace{q}"));
        assert_eq!(status, 200, "{body}");
        ids(&body)
    };
    let alice = login(g.control, "alice@example.com", "alice-pass");
    assert_eq!(traced(&alice, ""), std::slice::from_ref(&alices));
    assert!(traced(&alice, "?to=bob@example.com").is_empty());
    let (status, _) = alice.get(&g, &format!("/api/v1/trace/{bobs}"));
    assert_eq!(status, 404);
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    assert_eq!(traced(&org, ""), std::slice::from_ref(&shared));
    let (status, body) = org.get(&g, &format!("/api/v1/trace/{shared}"));
    assert_eq!(status, 200);
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["recipients"], serde_json::json!(["erin@example.org"]));
    assert!(
        t["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["recipient"].is_null() || e["recipient"] == "erin@example.org"),
        "{body}"
    );
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let mut all = traced(&admin, "");
    all.sort();
    let mut want = vec![alices.clone(), bobs.clone(), shared.clone()];
    want.sort();
    assert_eq!(all, want);
    // Found by subject, verdict, client and day, and paged newest first.
    assert_eq!(
        traced(&admin, "?subject=ME%20ALICE"),
        std::slice::from_ref(&alices)
    );
    assert_eq!(traced(&admin, "?verdict=spam").len(), 3);
    assert!(traced(&admin, "?verdict=clean").is_empty());
    let (status, body) = admin.get(&g, "/api/v1/trace?verdict=spma");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not one of clean, spam"), "{body}");
    assert_eq!(traced(&admin, "?client=127.0.0.1").len(), 3);
    assert!(traced(&admin, "?client=192.0.2.1").is_empty());
    assert!(traced(&admin, "?until=1").is_empty());
    let mut paged = Vec::new();
    let mut before = String::new();
    for _ in 0..4 {
        let page = traced(&admin, &format!("?limit=1{before}"));
        let Some(id) = page.first() else { break };
        before = format!("&before={id}");
        paged.push(id.clone());
    }
    paged.sort();
    assert_eq!(paged, want, "every message once, a page at a time");
    assert!(traced(&alice, "?subject=bob").is_empty(), "the scope holds");
    let (_, page) = admin.get(&g, "/trace?subject=alice&verdict=spam&since=2000-01-01");
    assert!(
        page.contains(&format!("href=\"/trace/{alices}\"")),
        "{page}"
    );
    assert!(!page.contains(&bobs), "{page}");
    let (_, page) = admin.get(&g, "/trace?since=yesterday");
    assert!(page.contains("write a date as YYYY-MM-DD"), "{page}");
    let (status, headers, _) = http(
        g.control,
        "GET",
        &format!("/trace?id={bobs}"),
        &[("Cookie", &admin.cookie)],
        "",
    );
    assert_eq!(status, 303);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "location" && *v == format!("/trace/{bobs}")),
        "{headers:?}"
    );
    // The pages: the search, and one message's timeline.
    let (status, page) = alice.get(&g, "/trace");
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("href=\"/trace/{alices}\"")),
        "{page}"
    );
    assert!(!page.contains(&bobs), "{page}");
    let (status, page) = alice.get(&g, &format!("/trace/{alices}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("Timeline") && page.contains("quarantined"),
        "{page}"
    );
    let (status, _) = alice.get(&g, &format!("/trace/{bobs}"));
    assert_eq!(status, 404);
}

/// Releasing and allowing the sender puts the sender on the recipient's own allow list (a
/// user) or the recipient domain's (an admin), and releases the message.
#[test]
fn release_and_allow_puts_the_sender_on_the_right_list() {
    let g = gateway();
    let alices = hold(&g, &["alice@example.com"], "allow");
    let bobs = hold(&g, &["bob@example.com"], "allow");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, body) = alice.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{alices}/release-and-allow"),
        true,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = alice.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{bobs}/release-and-allow"),
        true,
    );
    assert_eq!(status, 404, "not hers: {body}");
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (status, body) = admin.post(
        &g,
        "POST",
        &format!("/api/v1/quarantine/{bobs}/release-and-allow"),
        true,
    );
    assert_eq!(status, 200, "{body}");
    let operator = login(g.control, "operator", "operator-pass");
    let (_, domain) = operator.get(&g, "/api/v1/domains/example.com");
    let v: serde_json::Value = serde_json::from_str(&domain).unwrap();
    let filter = &v["settings"]["filter"];
    assert_eq!(
        filter["users"]["alice"]["allow"],
        serde_json::json!(["promo@outside.example"]),
        "{domain}"
    );
    assert_eq!(
        filter["allow"],
        serde_json::json!(["promo@outside.example"]),
        "{domain}"
    );
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len()
        == 1
        && g.mailbox("bob@example.com").len() == 1));
}

/// A held message's preview: its text (the HTML part only as text, never markup), its
/// attachments named but not shown, and the scan's symbols with score, reason and time, in
/// the API and on its page; the trace page lists the same symbols.
#[test]
fn a_held_message_is_previewed_with_its_text_attachments_and_symbols() {
    let g = gateway();
    let mut s = g.smtp();
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let message = "Subject: hold me preview\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
        --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
        <html><body><script>alert('x')</script><p>Cheap <b>watches</b> here</p></body></html>\r\n\
        --b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJSVFT0YK\r\n--b1--\r\n";
    let (code, text) = s.mail("promo@outside.example", &["alice@example.com"], message);
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().unwrap().trim().to_string();

    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, body) = alice.get(&g, &format!("/api/v1/quarantine/{id}"));
    assert_eq!(status, 200, "{body}");
    let held: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shown = held["text"].as_str().unwrap();
    assert!(shown.contains("Cheap watches here"), "{shown}");
    assert!(!shown.contains('<'), "markup in the text: {shown}");
    assert_eq!(held["attachments"][0]["name"], "invoice.pdf", "{body}");
    assert_eq!(held["attachments"][0]["content_type"], "application/pdf");
    assert_eq!(held["attachments"][0]["size"], 15);
    let symbols = held["symbols"].as_array().unwrap();
    let rule = symbols
        .iter()
        .find(|s| s["name"] == "TEST_HOLD")
        .unwrap_or_else(|| panic!("no TEST_HOLD: {body}"));
    assert_eq!(rule["score"], 8.0);
    assert!(!rule["reason"].as_str().unwrap().is_empty(), "{rule}");
    assert!(rule["micros"].is_u64(), "{rule}");

    let (status, page) = alice.get(&g, &format!("/quarantine/{id}"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<caption>Symbols</caption>"), "{page}");
    assert!(page.contains("<td>TEST_HOLD</td><td>8.00</td>"), "{page}");
    assert!(page.contains("Cheap watches here"), "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("<td>invoice.pdf</td>"), "{page}");
    assert!(
        page.contains(&format!("action=\"/quarantine/{id}/release\"")),
        "{page}"
    );
    let (_, list) = alice.get(&g, "/quarantine");
    assert!(
        list.contains(&format!("href=\"/quarantine/{id}\"")),
        "{list}"
    );
    let (status, trace) = alice.get(&g, &format!("/trace/{id}"));
    assert_eq!(status, 200);
    assert!(trace.contains("<td>TEST_HOLD</td><td>8.00</td>"), "{trace}");
    let (_, api) = alice.get(&g, &format!("/api/v1/trace/{id}"));
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert!(
        api["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "TEST_HOLD"),
        "{api}"
    );
    assert!(
        trace.contains("<th scope=\"col\">Stage took</th>"),
        "{trace}"
    );
    // Someone else's held message has no preview for her.
    let bobs = hold(&g, &["bob@example.com"], "bob");
    assert_eq!(alice.get(&g, &format!("/quarantine/{bobs}")).0, 404);

    // The list's filters: days and a least score (the rule scores 8), kept in the form.
    let today = {
        let (_, me) = alice.get(&g, &format!("/api/v1/quarantine/{id}"));
        let at = serde_json::from_str::<serde_json::Value>(&me).unwrap()["received_at"]
            .as_i64()
            .unwrap();
        let (y, m, d) = civil(at / 86400);
        format!("{y:04}-{m:02}-{d:02}")
    };
    let listed = |query: &str| {
        let (status, page) = alice.get(&g, &format!("/quarantine?{query}"));
        assert_eq!(status, 200, "{page}");
        (page.contains(&format!("href=\"/quarantine/{id}\"")), page)
    };
    assert!(listed(&format!("since={today}&until={today}&score=7.5")).0);
    assert!(!listed("until=2001-01-01").0);
    assert!(!listed("score=8.5").0);
    let (shown, page) = listed("score=lots&since=yesterday");
    assert!(!shown);
    assert!(page.contains("Score at least: write a number"), "{page}");
    assert!(
        page.contains("From day: write a date as YYYY-MM-DD"),
        "{page}"
    );
    assert!(
        page.contains("value=\"lots\""),
        "the form keeps what was sent"
    );
    // Reports teach the shared model: not offered to a user, offered to an admin.
    let (_, page) = alice.get(&g, "/quarantine");
    assert!(!page.contains("value=\"report-spam\""), "{page}");
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (_, page) = admin.get(&g, "/quarantine");
    assert!(page.contains("value=\"report-spam\""), "{page}");
}

/// The civil date (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A cluster whose servers an operator takes out (drained, in maintenance) leaves the DNS
/// answers at once, before the DNS's own checks through its balancer would notice, and
/// comes back when one is ready again; the silo page and `GET /api/v1/dns` show the
/// answers as the DNS gives them now.
#[test]
fn servers_taken_out_at_run_time_take_their_cluster_out_of_the_dns() {
    let accounts = TAIL
        .split_once("[[organisation]]")
        .map(|(_, rest)| format!("[[organisation]]{rest}"))
        .unwrap();
    let mut silo = common::Silo::new(31, &[&[1], &[1]], &accounts, "");
    silo.start_all();
    let answer = |s: &common::Silo| {
        let mut a: Vec<String> = s
            .dig(&["+short", "silo1.mailsilo.test"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        a.sort();
        a
    };
    let both = ["127.1.31.1", "127.1.31.2"];
    assert!(common::wait_until(Duration::from_secs(10), || answer(
        &silo
    ) == both));
    let operator = login(silo.control, "operator", "operator-pass");
    assert_paged(&operator, silo.control, "/api/v1/lb", |v| {
        format!(
            "{}/{}",
            v["cluster"].as_str().unwrap(),
            v["server"].as_str().unwrap()
        )
    });
    let dns = || {
        let (status, body) = operator.get_at(silo.control, "/api/v1/dns");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v[0]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["answered"].as_bool().unwrap(),
                    c["serving"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        dns(),
        [("c1".into(), true, true), ("c2".into(), true, true)]
    );

    // The trace names the cluster that took a message, and its server.
    let mut c = common::Smtp::connect(silo.clusters[1].address);
    assert_eq!(c.cmd("EHLO sender.test").0, 250);
    let (code, text) = c.mail(
        "sender@outside.net",
        &["alice@example.com"],
        "Subject: via c2\r\n\r\nthrough the silo\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().unwrap().trim();
    let (status, page) = operator.get_at(silo.control, &format!("/trace/{id}"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("mail server c2-s1 of cluster c2"), "{page}");

    let log = silo.dir.path().join("all.log");
    let c2_down = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .any(|l| l.contains("cluster down") && l.contains("cluster=c2"))
    };
    silo.lb(&["maint", "c2/c2-s1"]);
    assert!(common::wait_until(Duration::from_secs(5), || answer(&silo) == ["127.1.31.1"]));
    assert!(
        !c2_down(),
        "c2 left the answers through the run-time state, not the health checks"
    );
    assert_eq!(
        dns(),
        [("c1".into(), true, true), ("c2".into(), false, false)]
    );
    let (_, page) = operator.get_at(silo.control, "/silo");
    assert!(page.contains("DNS answers now: 127.1.31.1 (TTL"), "{page}");
    assert!(
        page.contains("out of the DNS answers: no server is ready"),
        "{page}"
    );
    // Drained is out too; ready brings it back.
    silo.lb(&["drain", "c2/c2-s1"]);
    silo.lb(&["ready", "c2/c2-s1"]);
    assert!(common::wait_until(Duration::from_secs(10), || answer(
        &silo
    ) == both));
    let (_, page) = operator.get_at(silo.control, "/silo");
    assert!(page.contains("last check "), "{page}");
    // A cluster whose server was removed leaves the answers too, and one added comes back.
    silo.lb(&["remove", "c2/c2-s1"]);
    assert!(common::wait_until(Duration::from_secs(5), || answer(&silo) == ["127.1.31.1"]));
    let address = silo.clusters[1].servers[0].1.to_string();
    silo.lb(&["add", "c2/c2-s1", &address, "--loading", "1"]);
    assert!(common::wait_until(Duration::from_secs(10), || answer(
        &silo
    ) == both));
    silo.lb(&["drain", "c1/c1-s1"]);
    assert!(common::wait_until(Duration::from_secs(5), || answer(&silo) == ["127.1.31.2"]));
    // Every cluster out: the answer is never empty.
    silo.lb(&["maint", "c2/c2-s1"]);
    assert!(common::wait_until(Duration::from_secs(5), || dns()
        .iter()
        .all(|(_, _, serving)| !serving)));
    assert_eq!(answer(&silo), both);
}

/// Each user keeps their own allow and block lists (API and page), which mail to that
/// address alone follows at once; an admin keeps its organisation's addresses' lists; no one
/// sees another scope's; a wrong entry is named and nothing is stored; each change is
/// audited.
#[test]
fn users_keep_their_own_lists_and_their_mail_follows_them() {
    let g = gateway();
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, body) = alice.get(&g, "/api/v1/lists/alice@example.com");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"address": "alice@example.com", "allow": [], "block": []})
    );
    let put = |s: &Session, address: &str, body: &str| {
        let h = [
            ("Cookie", s.cookie.as_str()),
            ("X-CSRF-Token", s.csrf.as_str()),
            ("Content-Type", "application/json"),
        ];
        let (status, _, b) = http(
            g.control,
            "PUT",
            &format!("/api/v1/lists/{address}"),
            &h,
            body,
        );
        (status, b)
    };
    let (status, body) = put(
        &alice,
        "Alice@Example.com",
        r#"{"allow": ["friend@pals.example"], "block": ["blocked.example", " blocked.example "]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"address": "alice@example.com", "allow": ["friend@pals.example"], "block": ["blocked.example"]})
    );
    // A wrong entry is named, and nothing is stored.
    let (status, body) = put(&alice, "alice@example.com", r#"{"block": ["bad sender!"]}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad sender!"), "{body}");
    let (_, body) = alice.get(&g, "/api/v1/lists/alice@example.com");
    assert!(body.contains("blocked.example"), "{body}");
    // Another address is out of her scope; a domain that is not a client's too.
    assert_eq!(alice.get(&g, "/api/v1/lists/bob@example.com").0, 404);
    assert_eq!(
        put(&alice, "bob@example.com", r#"{"block": ["x.example"]}"#).0,
        404
    );
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    assert_eq!(org.get(&g, "/api/v1/lists/alice@example.com").0, 404);
    let admin = login(g.control, "admin@example.com", "admin-pass");
    assert_eq!(admin.get(&g, "/api/v1/lists/alice@example.com").0, 200);
    assert_eq!(
        admin.get(&g, "/api/v1/lists/nobody@elsewhere.example").0,
        404
    );

    // Mail from the blocked domain is held for her, and only for her.
    let send = |to: &str| {
        let mut s = g.smtp();
        assert_eq!(s.cmd("EHLO client.test").0, 250);
        let (code, text) = s.mail(
            "news@blocked.example",
            &[to],
            "Subject: weekly news\r\n\r\nhello\r\n",
        );
        assert_eq!(code, 250, "{text}");
        text.rsplit(' ').next().unwrap().trim().to_string()
    };
    let hers = send("alice@example.com");
    let bobs = send("bob@example.com");
    let (_, held) = admin.get(&g, "/api/v1/quarantine");
    let held = ids(&held);
    assert!(held.contains(&hers), "{held:?}");
    assert!(!held.contains(&bobs), "{held:?}");

    // The page: her lists in the form; saving them; a forged form; a wrong entry.
    let (status, page) = alice.get(&g, "/lists");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(">friend@pals.example</textarea>"), "{page}");
    let form = |csrf: &str, block: &str| {
        let h = [
            ("Cookie", alice.cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let (status, _, body) = http(
            g.control,
            "POST",
            "/lists",
            &h,
            &format!("csrf={csrf}&address=alice%40example.com&allow=&block={block}"),
        );
        (status, body)
    };
    assert_eq!(form("forged", "x.example").0, 403);
    let (status, body) = form(&alice.csrf, "spam.example%0D%0Aworse.example");
    assert_eq!(status, 303, "{body}");
    let (_, body) = alice.get(&g, "/api/v1/lists/alice@example.com");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["block"],
        serde_json::json!(["spam.example", "worse.example"])
    );
    let (status, page) = form(&alice.csrf, "not%20a%20sender");
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("role=\"alert\""), "{page}");
    assert!(page.contains(">not a sender</textarea>"), "{page}");
    // Each change is on the domain's audit log, by who made it.
    let (_, log) = admin.get(&g, "/api/v1/audit");
    let log: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let by_alice = log
        .iter()
        .filter(|e| e["action"] == "domain.set" && e["actor"] == "alice@example.com")
        .count();
    assert_eq!(by_alice, 2, "{log:?}");
}

/// Changes to one domain's settings made at once lose nothing: a user's lists, an admin's
/// lists for another address and the admin's page each apply to what is stored when they
/// write (a probe lost 41 of 61 such changes when each wrote back what it had read).
#[test]
fn concurrent_changes_to_a_domain_lose_nothing() {
    let g = gateway();
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let put = |s: &Session, address: &str, allow: &str| {
        let path = format!("/api/v1/lists/{address}");
        let (status, body) = s.json(&g, "PUT", &path, &format!(r#"{{"allow":["{allow}"]}}"#));
        assert_eq!(status, 200, "{body}");
    };
    let rounds = 25;
    std::thread::scope(|t| {
        t.spawn(|| {
            (0..rounds).for_each(|i| put(&alice, "alice@example.com", &format!("a{i}.example")))
        });
        t.spawn(|| {
            (0..rounds).for_each(|i| put(&admin, "bob@example.com", &format!("b{i}.example")))
        });
        t.spawn(|| {
            for i in 0..rounds {
                let (status, _, body) = http(
                    g.control,
                    "POST",
                    "/domains/example.com",
                    &[
                        ("Cookie", admin.cookie.as_str()),
                        ("Content-Type", "application/x-www-form-urlencoded"),
                    ],
                    &format!(
                        "csrf={}&destination={}&spam_action=quarantine&subject_prefix=round{i}",
                        admin.csrf,
                        g.sink.to_string().replace(':', "%3A")
                    ),
                );
                assert_eq!(status, 303, "{body}");
            }
        });
    });
    let last = rounds - 1;
    for (address, allow) in [
        ("alice@example.com", format!("a{last}.example")),
        ("bob@example.com", format!("b{last}.example")),
    ] {
        let (_, body) = admin.get(&g, &format!("/api/v1/lists/{address}"));
        let lists: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            lists["allow"],
            serde_json::json!([allow]),
            "{address}: {body}"
        );
    }
    let (_, body) = admin.get(&g, "/api/v1/domains/example.com");
    assert!(body.contains(&format!("round{last}")), "{body}");
}

/// An admin manages its organisation's accounts (lists them, adds users and admins at its
/// domains, sets passwords, disables them), an operator every account; a user none; each
/// change ends the sessions it should and is audited without a hash.
#[test]
fn admins_manage_their_organisations_accounts() {
    let g = gateway();
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (status, body) = admin.get(&g, "/api/v1/accounts");
    assert_eq!(status, 200, "{body}");
    let names = |body: &str| -> Vec<String> {
        serde_json::from_str::<Vec<serde_json::Value>>(body)
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&body), ["admin@example.com", "alice@example.com"]);
    let call = |s: &Session, method: &str, path: &str, body: &str| s.json(&g, method, path, body);
    let add = |s: &Session, name: &str, role: &str, password: &str| {
        call(
            s,
            "POST",
            "/api/v1/accounts",
            &format!(
                r#"{{"name":"{name}","role":"{role}","password":"{password}","organisation":"Example Org"}}"#
            ),
        )
    };
    // The admin's organisation, whatever the request says.
    let (status, body) = add(&admin, "bob@example.com", "user", "bob-password-1");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""organisation":"Example Inc.""#), "{body}");
    let bob = login(g.control, "bob@example.com", "bob-password-1");
    assert_eq!(bob.get(&g, "/api/v1/accounts").0, 403);
    // A name in capitals is stored as login finds it, and logs in.
    let (status, body) = add(&admin, "Boss@Example.com", "admin", "boss-password-1");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""name":"boss@example.com""#), "{body}");
    login(g.control, "Boss@Example.com", "boss-password-1");
    assert_eq!(add(&bob, "x@example.com", "user", "long-enough-1").0, 403);
    for (name, role, password, status) in [
        ("eve@example.org", "user", "long-enough-1", 400),
        // An admin adds admins at its own domains only (found by a probe: it could name
        // one at another organisation's domain, which that organisation could then never
        // use or see).
        ("postmaster@example.org", "admin", "long-enough-1", 400),
        ("root", "operator", "long-enough-1", 403),
        ("alice@example.com", "user", "long-enough-1", 409),
        // Names are kept as login looks them up: a case variant is the same account.
        ("ALICE@example.com", "user", "long-enough-1", 409),
        ("tab\t@example.com", "user", "long-enough-1", 400),
        ("carl@example.com", "user", "short", 400),
    ] {
        let (got, body) = add(&admin, name, role, password);
        assert_eq!(got, status, "{name}: {body}");
    }
    // A new password ends her sessions; the old one no longer works.
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let (status, body) = call(
        &admin,
        "PUT",
        "/api/v1/accounts/alice@example.com/password",
        r#"{"password":"alice-new-password"}"#,
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(alice.get(&g, "/api/v1/me").0, 401);
    login(g.control, "alice@example.com", "alice-new-password");
    // Another organisation's admin: these accounts do not exist for it.
    let org = login(g.control, "admin@example.org", "org-admin-pass");
    let (_, body) = org.get(&g, "/api/v1/accounts");
    assert_eq!(names(&body), ["admin@example.org"]);
    for (method, path, body) in [
        (
            "PUT",
            "/api/v1/accounts/alice@example.com/password",
            r#"{"password":"taken-over-1"}"#,
        ),
        ("POST", "/api/v1/accounts/alice@example.com/disable", ""),
    ] {
        assert_eq!(call(&org, method, path, body).0, 404, "{path}");
    }
    // Disabled: no login, no session; not one's own.
    assert_eq!(
        call(
            &admin,
            "POST",
            "/api/v1/accounts/bob@example.com/disable",
            ""
        )
        .0,
        204
    );
    assert_eq!(bob.get(&g, "/api/v1/me").0, 401);
    let (status, _, _) = http(
        g.control,
        "POST",
        "/api/v1/login",
        &[],
        r#"{"name":"bob@example.com","password":"bob-password-1"}"#,
    );
    assert_eq!(status, 401);
    assert_eq!(
        call(
            &admin,
            "POST",
            "/api/v1/accounts/admin@example.com/disable",
            ""
        )
        .0,
        409
    );
    // An operator adds to any organisation.
    let operator = login(g.control, "operator", "operator-pass");
    let (status, body) = add(&operator, "dan@example.org", "user", "dan-password-1");
    assert_eq!(status, 201, "{body}");
    // The page: the admin's accounts, a forged form, an account added.
    let (status, page) = admin.get(&g, "/accounts");
    assert_eq!(status, 200);
    assert!(
        page.contains(
            "<td>bob@example.com</td><td>user</td><td>Example Inc.</td><td>disabled</td>"
        ),
        "{page}"
    );
    let form = |csrf: &str, body: &str| {
        let h = [
            ("Cookie", admin.cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        http(
            g.control,
            "POST",
            "/accounts",
            &h,
            &format!("csrf={csrf}&{body}"),
        )
        .0
    };
    assert_eq!(
        form(
            "forged",
            "name=carl%40example.com&role=user&password=carl-password-1"
        ),
        403
    );
    assert_eq!(
        form(
            &admin.csrf,
            "name=carl%40example.com&role=user&password=carl-password-1"
        ),
        303
    );
    login(g.control, "carl@example.com", "carl-password-1");
    assert_eq!(
        form(
            &admin.csrf,
            "name=carl%40example.com&role=user&password=carl-password-1"
        ),
        400
    );
    assert_eq!(alice_page_status(&g), 403);
    // Audited, in the organisation's log, never with a hash.
    let (_, log) = admin.get(&g, "/api/v1/audit");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .filter(|a| a.starts_with("account."))
        .collect();
    assert_eq!(
        actions,
        [
            "account.add",
            "account.disable",
            "account.password",
            "account.add",
            "account.add"
        ]
    );
    assert!(!log.contains("argon2"), "{log}");
}

fn alice_page_status(g: &Gateway) -> u16 {
    let alice = login(g.control, "alice@example.com", "alice-new-password");
    alice.get(g, "/accounts").0
}

/// A user's lists may hold many entries (past the other calls' 4 KiB bodies), up to the
/// lists' own bound; past it, the change is refused whole.
#[test]
fn long_lists_fit_and_too_long_ones_are_refused() {
    let g = gateway();
    let alice = login(g.control, "alice@example.com", "alice-pass");
    let put = |n: usize| {
        let block: Vec<String> = (0..n).map(|i| format!("sender{i}.example")).collect();
        let body = serde_json::json!({ "block": block }).to_string();
        let h = [
            ("Cookie", alice.cookie.as_str()),
            ("X-CSRF-Token", alice.csrf.as_str()),
            ("Content-Type", "application/json"),
        ];
        http(
            g.control,
            "PUT",
            "/api/v1/lists/alice@example.com",
            &h,
            &body,
        )
        .0
    };
    assert_eq!(put(1000), 200);
    assert_eq!(put(1001), 400);
    let (_, body) = alice.get(&g, "/api/v1/lists/alice@example.com");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["block"].as_array().unwrap().len(), 1000);
}

/// Organisations in the portal: an operator adds one and changes its domains and digest
/// schedule; an admin sees its own and sets its schedule, not its domains and not another
/// organisation's; a domain belongs to one organisation; the page saves and refuses a
/// forged form; every change is audited, in the organisation's own log.
#[test]
fn organisations_are_managed_in_the_portal() {
    let g = gateway();
    let call = |s: &Session, method: &str, path: &str, body: &str| s.json(&g, method, path, body);
    let names = |body: &str| -> Vec<String> {
        serde_json::from_str::<Vec<serde_json::Value>>(body)
            .unwrap_or_else(|e| panic!("{e}: {body}"))
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    let operator = login(g.control, "operator", "operator-pass");
    let (status, body) = operator.get(&g, "/api/v1/organisations");
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body), ["Example Inc.", "Example Org"]);
    // Every listing pages by name: `after` the last one seen, at most `limit`.
    for list in [
        "/api/v1/organisations",
        "/api/v1/accounts",
        "/api/v1/domains",
    ] {
        assert_paged(&operator, g.control, list, |v| {
            v["name"].as_str().unwrap().into()
        });
    }
    let (status, body) = call(
        &operator,
        "PUT",
        "/api/v1/organisations/New%20Org",
        r#"{"domains":["New.test."],"digest":"weekly"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""domains":["new.test"]"#) && body.contains(r#""digest":"weekly""#),
        "{body}"
    );
    for (change, wrong) in [
        (r#"{"domains":["example.com"]}"#, "already belongs"),
        (r#"{"domains":["not a domain"]}"#, "not a domain name"),
        (r#"{"domains":[],"digest":"fortnightly"}"#, "digest:"),
    ] {
        let (status, body) = call(&operator, "PUT", "/api/v1/organisations/New%20Org", change);
        assert_eq!(status, 400, "{change}: {body}");
        assert!(body.contains(wrong), "{change}: {body}");
    }
    // The admin: its own organisation, its schedule only.
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (_, body) = admin.get(&g, "/api/v1/organisations");
    assert_eq!(names(&body), ["Example Inc."]);
    let (status, body) = call(
        &admin,
        "PUT",
        "/api/v1/organisations/Example%20Inc.",
        r#"{"domains":["example.com"],"digest":"12h"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(
        &admin,
        "PUT",
        "/api/v1/organisations/Example%20Inc.",
        r#"{"domains":["example.com","new2.test"]}"#,
    );
    assert_eq!(status, 403);
    for other in ["Example%20Org", "New%20Org", "Nobody"] {
        let path = format!("/api/v1/organisations/{other}");
        let (status, _) = call(&admin, "PUT", &path, r#"{"domains":[]}"#);
        assert_eq!(status, 404, "{other}");
    }
    let alice = login(g.control, "alice@example.com", "alice-pass");
    assert_eq!(alice.get(&g, "/api/v1/organisations").0, 403);
    assert_eq!(alice.get(&g, "/organisations").0, 403);
    // The page: the admin's form changes the schedule and keeps the domains.
    let (status, page) = admin.get(&g, "/organisations");
    assert_eq!(status, 200);
    assert!(
        page.contains("<td>Example Inc.</td><td>example.com</td><td>12h</td>"),
        "{page}"
    );
    assert!(!page.contains("Add an organisation"), "{page}");
    let form = |s: &Session, csrf: &str, body: &str| {
        let h = [
            ("Cookie", s.cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let (status, _, page) = http(
            g.control,
            "POST",
            "/organisations",
            &h,
            &format!("csrf={csrf}&{body}"),
        );
        (status, page)
    };
    assert_eq!(
        form(&admin, "forged", "name=Example+Inc.&digest=off").0,
        403
    );
    assert_eq!(
        form(&admin, &admin.csrf, "name=Example+Inc.&digest=daily").0,
        303
    );
    let (status, page) = form(&admin, &admin.csrf, "name=Example+Inc.&digest=hourly-ish");
    assert_eq!(status, 400);
    assert!(page.contains("digest:"), "{page}");
    let (_, body) = operator.get(&g, "/api/v1/organisations");
    let orgs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(orgs[0]["domains"], serde_json::json!(["example.com"]));
    assert_eq!(orgs[0]["digest"], "daily");
    // The operator's page adds one with its domains.
    let (status, _) = form(
        &operator,
        &operator.csrf,
        "name=Third&domains=third.test%2C+third.example&digest=",
    );
    assert_eq!(status, 303);
    let (_, page) = operator.get(&g, "/organisations");
    assert!(
        page.contains("<td>Third</td><td>third.test, third.example</td><td>default</td>"),
        "{page}"
    );
    // Audited: the admin sees its organisation's changes, not the others'.
    let (_, log) = admin.get(&g, "/api/v1/audit");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let objects: Vec<&str> = entries
        .iter()
        .filter(|e| e["action"] == "organisation.set")
        .map(|e| e["object"].as_str().unwrap())
        .collect();
    assert_eq!(objects, ["Example Inc.", "Example Inc."]);
}

/// A user is an address: when the provider moves a domain to another organisation, its
/// users go with it. The new organisation's admin manages them and they see their mail; the
/// old admin can no longer list them, reset their passwords or see their mail.
#[test]
fn users_follow_a_domain_moved_to_another_organisation() {
    let g = gateway();
    let id = hold(&g, &["alice@example.com"], "hold me moved");
    let operator = login(g.control, "operator", "operator-pass");
    let move_to = |from: &str, to: &str| {
        for (org, domains) in [
            (from, r#"{"domains":[]}"#),
            (to, r#"{"domains":["example.com"]}"#),
        ] {
            let path = format!("/api/v1/organisations/{org}");
            let (status, body) = operator.json(&g, "PUT", &path, domains);
            assert_eq!(status, 200, "{path}: {body}");
        }
    };
    move_to("Example%20Inc.", "Example%20Org");
    let old = login(g.control, "admin@example.com", "admin-pass");
    let (_, body) = old.get(&g, "/api/v1/accounts");
    assert!(!body.contains("alice@example.com"), "{body}");
    let reset = r#"{"password":"taken-over-password"}"#;
    let path = "/api/v1/accounts/alice@example.com/password";
    assert_eq!(old.json(&g, "PUT", path, reset).0, 404);
    assert_eq!(old.get(&g, &format!("/api/v1/quarantine/{id}")).0, 404);
    let new = login(g.control, "admin@example.org", "org-admin-pass");
    let (_, body) = new.get(&g, "/api/v1/accounts");
    assert!(body.contains("alice@example.com"), "{body}");
    assert_eq!(new.get(&g, &format!("/api/v1/quarantine/{id}")).0, 200);
    let alice = login(g.control, "alice@example.com", "alice-pass");
    assert_eq!(alice.get(&g, &format!("/api/v1/quarantine/{id}")).0, 200);
    assert_eq!(new.json(&g, "PUT", path, reset).0, 204);
    // While the domain belongs to no organisation, its user sees nothing.
    let (status, _) = operator.json(
        &g,
        "PUT",
        "/api/v1/organisations/Example%20Org",
        r#"{"domains":["example.org"]}"#,
    );
    assert_eq!(status, 200);
    let alice = login(g.control, "alice@example.com", "taken-over-password");
    assert_eq!(alice.get(&g, &format!("/api/v1/quarantine/{id}")).0, 404);
}

/// An organisation's own digest schedule, set through the API, wins over the default: with
/// digests off by default, the organisation that asked for daily ones gets one (at the
/// scheduler's first round after a restart) and the other organisation none.
#[test]
fn an_organisations_own_digest_schedule_wins_over_the_default() {
    let mut g = Gateway::start(Options {
        tail: format!("{TAIL}\n[digest]\nschedule = \"off\"\n"),
        ..Options::default()
    });
    hold(&g, &["alice@example.com", "bob@example.org"], "scheduled");
    let operator = login(g.control, "operator", "operator-pass");
    let h = [
        ("Cookie", operator.cookie.as_str()),
        ("X-CSRF-Token", operator.csrf.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, _, body) = http(
        g.control,
        "PUT",
        "/api/v1/organisations/Example%20Inc.",
        &h,
        r#"{"domains":["example.com"],"digest":"daily"}"#,
    );
    assert_eq!(status, 200, "{body}");
    g.up.take().unwrap().terminate();
    g.start_up();
    assert!(wait_until(WAIT, || g.mailbox("alice@example.com").len() == 1));
    std::thread::sleep(Duration::from_secs(2));
    assert!(g.mailbox("bob@example.org").is_empty(), "off by default");
}

/// An operator adds a client domain on the domains page and removes it on its own page;
/// the silo accepts and then refuses its mail without a restart. Admins get neither form,
/// a forged form is refused, and both changes are audited.
#[test]
fn operators_add_and_remove_client_domains_on_the_pages() {
    let g = gateway();
    let operator = login(g.control, "operator", "operator-pass");
    let admin = login(g.control, "admin@example.com", "admin-pass");
    let (_, page) = operator.get(&g, "/domains");
    assert!(page.contains("Add a client domain"), "{page}");
    let (_, page) = admin.get(&g, "/domains");
    assert!(!page.contains("Add a client domain"), "{page}");
    let form = |s: &Session, path: &str, csrf: &str, body: &str| {
        let h = [
            ("Cookie", s.cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let (status, headers, page) =
            http(g.control, "POST", path, &h, &format!("csrf={csrf}&{body}"));
        (status, headers, page)
    };
    let new = "name=New.Test&destination=127.0.0.1%3A2&silo=";
    assert_eq!(form(&operator, "/domains", "forged", new).0, 403);
    assert_eq!(form(&admin, "/domains", &admin.csrf, new).0, 403);
    let rcpt = |to: &str| {
        let mut s = g.smtp();
        assert_eq!(s.cmd("EHLO client.test").0, 250);
        assert_eq!(s.cmd("MAIL FROM:<x@outside.example>").0, 250);
        s.cmd(&format!("RCPT TO:<{to}>")).0
    };
    assert_eq!(rcpt("anyone@new.test"), 550, "not a client domain yet");
    let (status, headers, _) = form(&operator, "/domains", &operator.csrf, new);
    assert_eq!(status, 303);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("location")
                && v.starts_with("/domains/new.test?done=")),
        "{headers:?}"
    );
    assert!(wait_until(WAIT, || rcpt("anyone@new.test") == 250));
    let (_, page) = operator.get(&g, "/domains/new.test");
    assert!(page.contains("Remove new.test"), "{page}");
    let (_, page) = admin.get(&g, "/domains/example.com");
    assert!(!page.contains("Remove example.com"), "{page}");
    // A name taken and a bad destination are named above the form; nothing changes.
    let (status, _, page) = form(&operator, "/domains", &operator.csrf, new);
    assert_eq!(status, 400);
    assert!(
        page.contains("new.test is a client domain already"),
        "{page}"
    );
    let (status, _, page) = form(
        &operator,
        "/domains",
        &operator.csrf,
        "name=other.test&destination=nowhere",
    );
    assert_eq!(status, 400);
    assert!(page.contains("destination"), "{page}");
    let (status, _, _) = form(&admin, "/domains/example.com/remove", &admin.csrf, "");
    assert_eq!(status, 403);
    assert_eq!(
        form(&operator, "/domains/new.test/remove", "forged", "").0,
        403
    );
    let (status, headers, _) = form(&operator, "/domains/new.test/remove", &operator.csrf, "");
    assert_eq!(status, 303, "{headers:?}");
    assert!(wait_until(WAIT, || rcpt("anyone@new.test") == 550));
    let (_, log) = operator.get(&g, "/api/v1/audit");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let new_test: Vec<&str> = entries
        .iter()
        .filter(|e| e["object"] == "new.test")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(new_test, ["domain.remove", "domain.set"]);
}
