//! Retries, expiry and DSNs, with a clock the test moves and a real SMTP server on loopback
//! standing in for the client's mail server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use config::Config;
use mailsilo_queue::{Clock, ManualClock, Queue};
use smtp::server::{LOCAL_IDS, Server};
use smtp::{Accepted, Handler, Reply};
use store::{Arrival, Embedded, NewMessage, NewRecipient, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Keeps what it receives; refuses `nobody@`.
#[derive(Default)]
struct Collect(Mutex<Vec<Accepted>>);

#[async_trait]
impl Handler for Collect {
    fn check_recipient(&self, r: &smtp::address::Recipient) -> Result<(), Reply> {
        if r.local == "nobody" {
            Err(Reply::new(550, "5.1.1 No such user"))
        } else {
            Ok(())
        }
    }
    async fn accept(&self, m: Accepted) -> Result<&'static str, Reply> {
        self.0.lock().unwrap().push(m);
        Ok("queued")
    }
}

struct World {
    queue: Arc<Queue>,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    sink: Arc<Collect>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
    /// Holds the refusing port of `down.test`.
    _dead: tokio::net::TcpSocket,
}

/// The embedded store in `dir`, or a fresh PostgreSQL database when
/// `MAILSILO_TEST_STORE=postgres` (scripts/test.sh runs these tests on both).
async fn test_store(dir: &std::path::Path) -> Arc<dyn Store> {
    if std::env::var("MAILSILO_TEST_STORE").as_deref() != Ok("postgres") {
        return Arc::new(Embedded::open(dir).unwrap());
    }
    let admin = std::env::var("MAILSILO_TEST_POSTGRES").expect("MAILSILO_TEST_POSTGRES");
    let name = format!(
        "q_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let out = std::process::Command::new("psql")
        .arg(&admin)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = admin.rsplit_once('/').unwrap();
    Arc::new(
        store::Postgres::connect(&format!("{base}/{name}"))
            .await
            .unwrap(),
    )
}

async fn world(extra: &str) -> World {
    world_with("", extra).await
}

/// `smtp` goes into the `[smtp]` table (which the sink server also uses).
async fn world_with(smtp: &str, extra: &str) -> World {
    let sink = Arc::new(Collect::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    // A port bound but not listening: connections are refused, and it stays ours.
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = dead_socket.local_addr().unwrap();
    let text = format!(
        "[smtp]\nhostname = \"mx.test\"\nlisten = [\"127.0.0.1:1\"]\n{smtp}\n[retry]\nmin_backoff = \"300s\"\nmax_backoff = \"4000s\"\nlifetime = \"5d\"\n{extra}\n\
         [[domain]]\nname = \"down.test\"\ndestination = \"{dead}\"\n[[domain]]\nname = \"example.org\"\ndestination = \"{sink_addr}\"\n\
         [[domain]]\nname = \"tls.test\"\ndestination = \"{sink_addr}\"\nrequire_tls = true\n"
    );
    let config = Arc::new(Config::parse("test.toml", &text).unwrap());
    let (stop, stopped) = watch::channel(false);
    let server = Arc::new(Server::new(config.smtp.clone(), None, sink.clone()));
    tokio::spawn(server.serve(listener, stopped.clone(), Duration::from_secs(1)));
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path()).await;
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let domains = Arc::new(config::DomainTable::new(config.domains.clone()));
    let queue = Queue::new(config, domains, store.clone(), clock.clone(), "test-node")
        .await
        .unwrap()
        .with_poll_interval(Duration::from_millis(50));
    tokio::spawn(queue.clone().run(stopped));
    World {
        queue,
        store,
        clock,
        sink,
        stop,
        _dir: dir,
        _dead: dead_socket,
    }
}

impl World {
    async fn send(&self, from: &str, to: &str) -> String {
        self.send_to(from, &[to]).await
    }

    async fn send_to(&self, from: &str, to: &[&str]) -> String {
        let id = LOCAL_IDS.next();
        let now = self.queue.now();
        let m = NewMessage {
            id: id.clone(),
            sender: from.into(),
            recipients: to
                .iter()
                .map(|t| NewRecipient {
                    address: t.to_string(),
                    notify: 0,
                    orcpt: Some(format!("rfc822;{t}")),
                })
                .collect(),
            envid: Some("ENV-1".into()),
            ret: None,
            received_at: now,
            next_attempt: now,
            body: b"Subject: original\r\n\r\noriginal body\r\n"
                .to_vec()
                .into(),
            arrival: Arrival {
                client: "127.0.0.1".into(),
                helo: "x".into(),
                tls: None,
                server: "mx.test".into(),
                node: self.queue.node().to_string(),
            },
            scan: None,
            verdict: None,
            symbols: Vec::new(),
        };
        self.queue.submit(m).await.unwrap();
        id
    }

    fn received(&self) -> Vec<(String, Vec<String>, String)> {
        self.sink
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                let rcpts = m
                    .envelope
                    .recipients
                    .iter()
                    .map(|r| r.address.clone())
                    .collect();
                (
                    m.envelope.sender.clone(),
                    rcpts,
                    String::from_utf8_lossy(&m.body).into_owned(),
                )
            })
            .collect()
    }

    async fn until(&self, what: &str, mut f: impl FnMut(&World) -> bool) {
        for _ in 0..200 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Waits (at most 4 s) until recipient `idx` of message `id` has had `n` attempts and
    /// returns its count, or `u32::MAX` once the message has left the queue.
    async fn attempts(&self, id: &str, idx: usize, n: u32) -> u32 {
        let mut got = 0;
        for _ in 0..200 {
            got = self
                .store
                .get(id)
                .await
                .unwrap()
                .map_or(u32::MAX, |m| m.recipients[idx].attempts);
            if got >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_sends_one_dsn_to_the_sender() {
    let w = world("").await;
    let id = w.send("bob@example.org", "alice@down.test").await;
    let attempts = w.attempts(&id, 0, 1).await;
    assert_eq!(attempts, 1, "first attempt deferred");
    let m = w.store.get(&id).await.unwrap().unwrap();
    let r = &m.recipients[0];
    assert!(
        r.last_error.as_deref().unwrap().contains("connect to"),
        "{r:?}"
    );
    assert_eq!(
        r.next_attempt,
        w.clock.now() + 300,
        "first backoff is min_backoff"
    );

    // Retries back off: 300 s, 600 s, ... capped at 4000 s.
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(w.attempts(&id, 0, 2).await, 2);
    assert_eq!(
        w.store.get(&id).await.unwrap().unwrap().recipients[0].next_attempt,
        w.clock.now() + 600
    );
    assert!(w.received().is_empty(), "no DSN while retrying");

    // Past the 5-day lifetime: the next attempt fails for good and one DSN goes back.
    w.clock.advance(Duration::from_secs(5 * 86400 + 1));
    w.until("the DSN", |w| !w.received().is_empty()).await;
    w.until("the queue to empty", |w| w.received().len() == 1)
        .await;
    assert!(
        w.store.get(&id).await.unwrap().is_none(),
        "expired message left the queue"
    );
    let (sender, rcpts, body) = w.received().remove(0);
    assert_eq!(sender, "", "a DSN has the null sender");
    assert_eq!(rcpts, vec!["bob@example.org"]);
    for needle in [
        "Subject: Undelivered Mail Returned to Sender",
        "report-type=delivery-status",
        "Original-Envelope-Id: ENV-1",
        "Final-Recipient: rfc822; alice@down.test",
        "Original-Recipient: rfc822;alice@down.test",
        "Action: failed",
        "Status: 5.4.7",
        "delivery time expired; last error: connect to",
        "Content-Type: message/rfc822",
        "original body",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.received().len(), 1, "exactly one DSN");
    assert!(w.store.list(None, 100).await.unwrap().is_empty());
    w.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_refusal_bounces_at_once_but_never_to_the_null_sender() {
    let w = world("").await;
    w.send("bob@example.org", "nobody@example.org").await;
    w.until("the DSN", |w| !w.received().is_empty()).await;
    let (sender, rcpts, body) = w.received().remove(0);
    assert_eq!(
        (sender.as_str(), rcpts),
        ("", vec!["bob@example.org".to_string()])
    );
    assert!(
        body.contains("Status: 5.1.1")
            && body.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user"),
        "{body}"
    );

    // A bounce of a bounce is never sent.
    let id = w.send("", "nobody@example.org").await;
    assert_eq!(
        w.attempts(&id, 0, u32::MAX).await,
        u32::MAX,
        "the bounce left the queue"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.received().len(), 1);
    w.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_warning_is_sent_once() {
    let w = world("delay_warning = \"4h\"").await;
    let id = w.send("bob@example.org", "alice@down.test").await;
    w.attempts(&id, 0, 1).await;
    w.clock.advance(Duration::from_secs(5 * 3600));
    w.until("the delay warning", |w| !w.received().is_empty())
        .await;
    let body = w.received()[0].2.clone();
    assert!(
        body.contains("Action: delayed") && body.contains("Will-Retry-Until:"),
        "{body}"
    );
    assert!(
        body.contains("text/rfc822-headers") && !body.contains("original body"),
        "headers only: {body}"
    );
    // Later retries do not warn again.
    w.clock.advance(Duration::from_secs(4001));
    let before = w.attempts(&id, 0, 0).await;
    assert!(w.attempts(&id, 0, before + 1).await > before);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.received().len(), 1);
    assert!(w.store.get(&id).await.unwrap().unwrap().recipients[0].warned);
    w.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_recipient_gets_its_own_outcome() {
    let w = world("").await;
    let id = w
        .send_to(
            "bob@example.org",
            &["carol@example.org", "nobody@example.org", "alice@down.test"],
        )
        .await;
    // carol is delivered, nobody bounces at once, alice (another route, down) waits.
    w.until("carol's copy and the DSN", |w| w.received().len() == 2)
        .await;
    let got = w.received();
    let carol = got
        .iter()
        .find(|(s, _, _)| s == "bob@example.org")
        .expect("carol's copy");
    assert_eq!(
        carol.1,
        vec!["carol@example.org"],
        "only the accepted recipient"
    );
    let dsn = got.iter().find(|(s, _, _)| s.is_empty()).expect("a DSN");
    assert!(
        dsn.2
            .contains("Final-Recipient: rfc822; nobody@example.org"),
        "{}",
        dsn.2
    );
    assert!(
        !dsn.2.contains("Final-Recipient: rfc822; alice@down.test"),
        "alice is only deferred"
    );
    w.attempts(&id, 2, 1).await;
    let m = w
        .store
        .get(&id)
        .await
        .unwrap()
        .expect("still queued for alice");
    let states: Vec<_> = m.recipients.iter().map(|r| r.status).collect();
    assert_eq!(
        states,
        vec![
            store::Status::Delivered,
            store::Status::Failed,
            store::Status::Pending
        ]
    );
    w.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn require_tls_defers_rather_than_sending_in_plaintext() {
    let w = world("").await;
    let id = w.send("bob@example.org", "alice@tls.test").await;
    w.attempts(&id, 0, 1).await;
    let m = w.store.get(&id).await.unwrap().unwrap();
    assert_eq!(m.recipients[0].attempts, 1);
    assert!(
        m.recipients[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("TLS is required"),
        "{:?}",
        m.recipients[0]
    );
    assert!(w.received().is_empty(), "nothing was sent in plaintext");
    w.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_reused_and_stale_ones_replaced() {
    // The sink drops idle sessions after 1 s (with a 421); the queue keeps them for 10 s.
    let smtp = "command_timeout = \"1s\"";
    let w = world_with(smtp, "[delivery]\nconnection_cache_time = \"10s\"").await;
    let peer = |w: &World, i: usize| w.sink.0.lock().unwrap()[i].client.peer;
    w.send("bob@example.org", "carol@example.org").await;
    w.until("the first message", |w| w.received().len() == 1)
        .await;
    w.send("bob@example.org", "dave@example.org").await;
    w.until("the second message", |w| w.received().len() == 2)
        .await;
    assert_eq!(
        peer(&w, 0),
        peer(&w, 1),
        "the second went over the same connection"
    );
    // Now the cached connection goes stale: the sink closes it (421, then EOF, which the
    // pipelined MAIL/RCPT/DATA run into).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = w.send("bob@example.org", "erin@example.org").await;
    w.until(
        "the third message, at once rather than after a retry",
        |w| w.received().len() == 3,
    )
    .await;
    assert_ne!(peer(&w, 2), peer(&w, 1), "a fresh connection");
    assert_eq!(
        w.attempts(&id, 0, u32::MAX).await,
        u32::MAX,
        "delivered at the first attempt"
    );
    w.stop.send(true).unwrap();
}
