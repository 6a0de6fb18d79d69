//! A fleet on PostgreSQL: separate `mailsilo up --only` processes sharing one database.
//! Run-time configuration reaching every node and outliving their restart, a mail server
//! killed under load with its mail delivered by the others, and the database restarted
//! under load. Needs PostgreSQL (scripts/test.sh starts one and sets
//! MAILSILO_TEST_POSTGRES; the database-restart test starts a server of its own).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The load tests each start five processes and push thousands of messages: one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

/// A delivery the downstream server received: the message's token (its Subject), the queue
/// id and the mail server that received it (from mailsilo's Received: header), and when.
#[derive(Clone, Debug)]
struct Delivery {
    token: String,
    queue_id: String,
    server: String,
    at: Instant,
}

/// A client's own mail server that can be made slow: each transaction waits `delay` before
/// its MAIL FROM is answered (the message itself is then taken and acknowledged at once, as
/// a server that is slow to start work would). Records every message it accepts.
struct Downstream {
    delay_ms: Arc<AtomicU64>,
    got: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
}

impl Downstream {
    fn start(addr: SocketAddr, delay: Duration) -> Downstream {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let d = Downstream {
            delay_ms: Arc::new(AtomicU64::new(delay.as_millis() as u64)),
            got: Arc::default(),
            stop: Arc::default(),
        };
        let (delay_ms, got, stop) = (d.delay_ms.clone(), d.got.clone(), d.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (delay_ms, got, stop) = (delay_ms.clone(), got.clone(), stop.clone());
                        std::thread::spawn(move || {
                            let _ = serve(s, &delay_ms, &got, &stop);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        d
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    fn tokens(&self) -> HashSet<String> {
        self.deliveries().into_iter().map(|d| d.token).collect()
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    s: TcpStream,
    delay_ms: &AtomicU64,
    got: &Mutex<Vec<Delivery>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    w.write_all(b"220 downstream.test ESMTP\r\n")?;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e),
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => w.write_all(b"250 downstream.test\r\n")?,
            "MAIL" => {
                std::thread::sleep(Duration::from_millis(delay_ms.load(Ordering::Relaxed)));
                w.write_all(b"250 ok\r\n")?
            }
            "RCPT" | "RSET" | "NOOP" => w.write_all(b"250 ok\r\n")?,
            "DATA" => {
                w.write_all(b"354 go\r\n")?;
                let mut message = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) => return Ok(()),
                        Ok(_) if line == ".\r\n" => break,
                        Ok(_) => message.push_str(&line),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(e) => return Err(e),
                    }
                }
                got.lock().unwrap().push(parse(&message));
                w.write_all(b"250 queued\r\n")?;
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"502 no\r\n")?,
        }
    }
    Ok(())
}

/// The token, queue id and receiving server of a delivered message.
fn parse(message: &str) -> Delivery {
    let token = message
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .to_string();
    // mailsilo's Received: "\tby c1-s1 (mailsilo)" ... "\twith ESMTP id ID".
    let server = message
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("by "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
        .to_string();
    let queue_id = message
        .lines()
        .find_map(|l| l.split_once(" id ").map(|(_, id)| id))
        .and_then(|l| l.split([' ', ';']).next())
        .unwrap_or_default()
        .to_string();
    Delivery {
        token,
        queue_id,
        server,
        at: Instant::now(),
    }
}

/// What a load run saw: each message acknowledged (250) once at least; the replies that
/// were not 250, by first digit; sessions broken by the server going away.
#[derive(Default)]
struct Load {
    next: AtomicUsize,
    retry: Mutex<Vec<usize>>,
    acked: Mutex<HashSet<usize>>,
    temporary: AtomicUsize,
    permanent: AtomicUsize,
    broken: AtomicUsize,
}

/// A line-at-a-time SMTP client that reports I/O errors instead of panicking.
struct Session {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Session {
    fn open(addr: SocketAddr) -> std::io::Result<Session> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Session {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        c.expect("", 220)?;
        c.expect("EHLO load.test\r\n", 250)?;
        Ok(c)
    }

    /// Sends `line` (unless empty) and reads the reply's code.
    fn code(&mut self, line: &str) -> std::io::Result<u16> {
        if !line.is_empty() {
            self.w.write_all(line.as_bytes())?;
        }
        let mut l = String::new();
        loop {
            l.clear();
            if self.r.read_line(&mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        l.get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad reply {l:?}")))
    }

    fn expect(&mut self, line: &str, want: u16) -> std::io::Result<()> {
        match self.code(line)? {
            c if c == want => Ok(()),
            c => Err(std::io::Error::other(format!("{line:?} answered {c}"))),
        }
    }

    /// One message; the reply to its end of data.
    fn send(&mut self, token: &str) -> std::io::Result<u16> {
        for (line, want) in [
            ("MAIL FROM:<load@outside.test>\r\n", 250),
            ("RCPT TO:<alice@example.com>\r\n", 250),
        ] {
            let c = self.code(line)?;
            if c != want {
                let _ = self.code("RSET\r\n");
                return Ok(c);
            }
        }
        let c = self.code("DATA\r\n")?;
        if c != 354 {
            return Ok(c);
        }
        let body = format!(
            "Subject: {token}\r\nMessage-ID: <{token}@load.test>\r\n\r\n{}\r\n.\r\n",
            "fleet test body line\r\n".repeat(20)
        );
        self.code(&body)
    }
}

impl Load {
    /// Runs `threads` clients until each of `total` messages has been acknowledged once,
    /// `per_session` messages a session, round-robin over `targets`, retrying what was not
    /// acknowledged (as a sending MTA would). Gives up after `limit`.
    fn run(
        self: &Arc<Load>,
        targets: Vec<SocketAddr>,
        total: usize,
        threads: usize,
        per_session: usize,
        limit: Duration,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let start = Instant::now();
        (0..threads)
            .map(|t| {
                let load = self.clone();
                let targets = targets.clone();
                std::thread::spawn(move || {
                    let mut turn = t;
                    while start.elapsed() < limit {
                        let mut batch: Vec<usize> = {
                            let mut r = load.retry.lock().unwrap();
                            let n = r.len().min(per_session);
                            r.drain(..n).collect()
                        };
                        while batch.len() < per_session {
                            let i = load.next.fetch_add(1, Ordering::SeqCst);
                            if i >= total {
                                break;
                            }
                            batch.push(i);
                        }
                        if batch.is_empty() {
                            if load.acked.lock().unwrap().len() >= total {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        turn += 1;
                        load.session(targets[turn % targets.len()], batch);
                    }
                })
            })
            .collect()
    }

    fn session(&self, addr: SocketAddr, batch: Vec<usize>) {
        let mut pending = batch.into_iter();
        let mut failed: Vec<usize> = Vec::new();
        match Session::open(addr) {
            Ok(mut s) => {
                for i in pending.by_ref() {
                    match s.send(&format!("fleet-{i}")) {
                        Ok(250) => {
                            self.acked.lock().unwrap().insert(i);
                        }
                        Ok(c) => {
                            if c >= 500 {
                                self.permanent.fetch_add(1, Ordering::Relaxed);
                            } else {
                                self.temporary.fetch_add(1, Ordering::Relaxed);
                            }
                            failed.push(i);
                            if c == 421 {
                                break;
                            }
                        }
                        Err(_) => {
                            self.broken.fetch_add(1, Ordering::Relaxed);
                            failed.push(i);
                            break;
                        }
                    }
                }
                let _ = s.code("QUIT\r\n");
            }
            Err(_) => {
                self.broken.fetch_add(1, Ordering::Relaxed);
            }
        }
        failed.extend(pending);
        if !failed.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            self.retry.lock().unwrap().extend(failed);
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Every node's balancer follows a loading change made through one node's control API
/// within 2 s, every mail server a new client domain; both outlive a restart of every node,
/// and the restarted nodes log where the file and the store disagree.
#[test]
fn fleet_runtime_changes_reach_every_node_and_survive_restart() {
    let store = postgres_table();
    let mut silo = Silo::build(61, &[&[1, 1]], "", "", "", &store);
    // A second host of the fleet: its own balancer for c1 (as a second balancer host would
    // have) and its own control endpoint, the same mail servers, the same database.
    let text = std::fs::read_to_string(&silo.config).unwrap();
    let lb_b: SocketAddr = "127.1.61.9:2525".parse().unwrap();
    let control_b: SocketAddr = "127.3.61.2:8025".parse().unwrap();
    let text_b = text
        .replace(&silo.clusters[0].address.to_string(), &lb_b.to_string())
        .replace(
            &format!("listen = \"{}\"", silo.control),
            &format!("listen = \"{control_b}\""),
        );
    assert_ne!(text, text_b);
    let config_b = silo.dir.path().join("host-b.toml");
    std::fs::write(&config_b, &text_b).unwrap();
    let servers: Vec<SocketAddr> = silo.clusters[0].servers.iter().map(|s| s.1).collect();
    let (lb_a, control_a, sink) = (silo.clusters[0].address, silo.control, silo.sink);
    let start_all = |silo: &mut Silo| {
        silo.start("a", "balancer,control,sink", &[lb_a, control_a, sink]);
        let config_b = config_b.clone();
        silo.start_with(
            &config_b,
            "b",
            "balancer,control,server",
            &[lb_b, control_b],
        );
        for s in &servers {
            wait_until(Duration::from_secs(10), || TcpStream::connect(s).is_ok());
        }
    };
    start_all(&mut silo);
    let token_b = silo.dir.path().join("data-b/control.token");
    let admin = |control: SocketAddr, token: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(&*BIN)
            .args(args)
            .arg("--control")
            .arg(control.to_string())
            .arg("--token-file")
            .arg(token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let token_a = silo.dir.path().join("data-a/control.token");
    let loading_of = |show: &str, server: &str| -> Option<u32> {
        show.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(server))
            .and_then(|l| l.split_whitespace().nth(5)?.parse().ok())
    };
    assert_eq!(
        loading_of(&admin(control_b, &token_b, &["lb", "show"]), "c1-s2"),
        Some(1)
    );

    // Each host names its node: made once, kept in its data dir.
    for (host, control, token) in [("a", control_a, &token_a), ("b", control_b, &token_b)] {
        let node =
            std::fs::read_to_string(silo.dir.path().join(format!("data-{host}/node.id"))).unwrap();
        let show = admin(control, token, &["lb", "show"]);
        assert!(
            show.starts_with(&format!("balancers of node {}\n", node.trim())),
            "{show}"
        );
    }

    // A loading change through host A reaches host B's balancer within 2 s.
    let changed = Instant::now();
    admin(control_a, &token_a, &["lb", "weight", "c1/c1-s2", "9"]);
    assert!(
        wait_until(Duration::from_secs(2), || {
            loading_of(&admin(control_b, &token_b, &["lb", "show"]), "c1-s2") == Some(9)
        }),
        "host B's balancer did not follow within 2 s"
    );
    eprintln!(
        "loading change reached the other node in {:?}",
        changed.elapsed()
    );

    // A new client domain added through host A is accepted by host B's mail servers within
    // 2 s (through B's balancer), and mail for it is delivered.
    let refused = send_to(lb_b, "bob@example.net", "before");
    assert!(!refused, "example.net accepted before it was added");
    let added = Instant::now();
    admin(
        control_a,
        &token_a,
        &[
            "domain",
            "add",
            "example.net",
            "--destination",
            &sink.to_string(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(2), || send_to(
            lb_b,
            "bob@example.net",
            "added"
        )),
        "host B's mail servers did not accept the new domain within 2 s"
    );
    eprintln!(
        "new client domain accepted by the other node in {:?}",
        added.elapsed()
    );
    assert!(wait_until(Duration::from_secs(20), || {
        subjects(&silo.mailbox("bob@example.net")).contains("added")
    }));

    // Every node restarts: the changes stay, and each node says the store won.
    silo.terminate("a");
    silo.terminate("b");
    start_all(&mut silo);
    for (control, token) in [(control_a, &token_a), (control_b, &token_b)] {
        assert_eq!(
            loading_of(&admin(control, token, &["lb", "show"]), "c1-s2"),
            Some(9)
        );
        let domains = admin(control, token, &["domain", "list"]);
        assert!(domains.contains("example.net"), "{domains}");
        let effective = admin(control, token, &["config", "show"]);
        assert!(effective.contains("name = \"example.net\""), "{effective}");
        assert!(effective.contains("c1/c1-s2  loading 9"), "{effective}");
    }
    assert!(send_to(lb_b, "bob@example.net", "after restart"));
    let log = silo.log("b");
    assert!(
        log.contains("the store wins") && log.contains("c1-s2"),
        "the disagreement about c1-s2 was not logged:\n{log}"
    );
}

/// Sends one message to `rcpt` through `addr`; true when it was accepted.
fn send_to(addr: SocketAddr, rcpt: &str, subject: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = Session::open(addr)?;
        s.expect("MAIL FROM:<a@outside.test>\r\n", 250)?;
        if s.code(&format!("RCPT TO:<{rcpt}>\r\n"))? != 250 {
            return Ok(false);
        }
        s.expect("DATA\r\n", 354)?;
        let ok = s.code(&format!("Subject: {subject}\r\n\r\nx\r\n.\r\n"))? == 250;
        let _ = s.code("QUIT\r\n");
        Ok(ok)
    };
    attempt().unwrap_or(false)
}

/// Starts the silo's balancers and control endpoint in one process ("front") and each mail
/// server in a process of its own, and waits until every server is in rotation; returns the
/// balancers' addresses and the servers.
fn start_fleet(silo: &mut Silo) -> (Vec<SocketAddr>, Vec<(String, SocketAddr)>) {
    let lbs: Vec<SocketAddr> = silo.clusters.iter().map(|c| c.address).collect();
    let mut ready = lbs.clone();
    ready.push(silo.control);
    silo.start("front", "balancer,control", &ready);
    let servers: Vec<(String, SocketAddr)> = silo
        .clusters
        .iter()
        .flat_map(|c| c.servers.clone())
        .collect();
    for (name, addr) in &servers {
        silo.start(name, &format!("server:{name}"), &[*addr]);
    }
    assert!(wait_until(Duration::from_secs(15), || {
        silo.lb(&["show"]).matches(" up ").count() == servers.len()
    }));
    (lbs, servers)
}

/// 10,000 messages over four mail servers on one PostgreSQL, the client's server slow so
/// that mail queues; one mail server is killed (-9) halfway. The others deliver everything
/// it had acknowledged; nothing is lost; duplicates are counted (target: under 0.1 %).
#[test]
fn fleet_node_loss_loses_nothing() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    const TOTAL: usize = 10_000;
    let store = postgres_table();
    let mut silo = Silo::build(
        62,
        &[&[1, 1], &[1, 1]],
        "",
        "",
        "destination_concurrency = 4",
        &store,
    );
    let downstream = Downstream::start(silo.sink, Duration::from_millis(100));
    let (lbs, _) = start_fleet(&mut silo);

    let load = Arc::new(Load::default());
    let started = Instant::now();
    let clients = load.run(lbs, TOTAL, 8, 20, Duration::from_secs(400));
    assert!(
        wait_until(Duration::from_secs(200), || load.acked() >= TOTAL / 2),
        "half the load was not acknowledged in time"
    );
    let victim = "c1-s1";
    silo.kill(victim);
    let killed = Instant::now();
    let acked_at_kill = load.acked();
    for c in clients {
        c.join().unwrap();
    }
    let load_time = started.elapsed();
    assert_eq!(load.acked(), TOTAL, "the load did not finish");
    let queued_at_end = TOTAL - downstream.tokens().len();
    // The client's server recovers; everything acknowledged must arrive.
    downstream.set_delay(Duration::ZERO);
    let all: HashSet<String> = (0..TOTAL).map(|i| format!("fleet-{i}")).collect();
    let arrived = wait_until(Duration::from_secs(240), || {
        downstream.tokens().is_superset(&all)
    });
    let deliveries = downstream.deliveries();
    let tokens: HashSet<&str> = deliveries.iter().map(|d| d.token.as_str()).collect();
    let lost = all.iter().filter(|t| !tokens.contains(t.as_str())).count();
    assert!(arrived, "{lost} acknowledged messages never arrived");

    // Duplicates: the same queue id delivered twice (a delivery whose outcome the killed
    // node never recorded), and the same message under two queue ids (stored, but its 250
    // never reached the client, who sent it again).
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    let mut ids_per_token: HashMap<&str, HashSet<&str>> = HashMap::new();
    for d in &deliveries {
        *per_id.entry(&d.queue_id).or_default() += 1;
        ids_per_token
            .entry(&d.token)
            .or_default()
            .insert(&d.queue_id);
    }
    let redelivered: usize = per_id.values().map(|n| n - 1).sum();
    let resent: usize = ids_per_token.values().map(|ids| ids.len() - 1).sum();
    let victims_mail = deliveries.iter().filter(|d| d.server == victim).count();
    let taken_over = deliveries
        .iter()
        .filter(|d| d.server == victim && d.at > killed)
        .count();
    println!(
        "node loss: {TOTAL} messages acknowledged in {load_time:.1?} (8 clients, 20 per session), \
         {victim} killed at {acked_at_kill} acknowledged; {queued_at_end} still queued when the load ended; \
         {victims_mail} received by {victim}, {taken_over} of them delivered by the others after it died; \
         lost {lost}; duplicates: {redelivered} redelivered (same queue id), {resent} resent by the client \
         after an unanswered end of data, {:.3} % in all; client saw {} 4xx, {} 5xx, {} broken sessions",
        (redelivered + resent) as f64 * 100.0 / TOTAL as f64,
        load.temporary.load(Ordering::Relaxed),
        load.permanent.load(Ordering::Relaxed),
        load.broken.load(Ordering::Relaxed),
    );
    assert!(
        taken_over > 0,
        "nothing of the killed node's was delivered by the others"
    );
    assert_eq!(
        load.permanent.load(Ordering::Relaxed),
        0,
        "a message was refused"
    );
    assert!(
        (redelivered + resent) * 1000 < TOTAL,
        "duplicates over 0.1 %: {redelivered} redelivered, {resent} resent"
    );
}

/// The database crashes and restarts under load: mail servers reconnect; sessions that
/// reach the end of data meanwhile get a 4xx, never a 250 for a message not saved; every
/// 250 is delivered.
#[test]
fn fleet_database_restart_loses_nothing() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    const TOTAL: usize = 3_000;
    let pg = pg::Private::start();
    let url = pg.database("fleet");
    let mut silo = Silo::build(63, &[&[1, 1]], "", "", "", &store_at(&url));
    let downstream = Downstream::start(silo.sink, Duration::ZERO);
    let (lbs, servers) = start_fleet(&mut silo);
    let load = Arc::new(Load::default());
    let clients = load.run(lbs, TOTAL, 6, 10, Duration::from_secs(300));
    assert!(wait_until(Duration::from_secs(120), || load.acked() >= TOTAL / 3));
    let before = load.acked();
    pg.crash();
    let down = load.acked();
    std::thread::sleep(Duration::from_secs(3));
    let during = load.acked();
    pg.start_again();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        load.acked(),
        TOTAL,
        "the load did not finish after the restart"
    );
    let all: HashSet<String> = (0..TOTAL).map(|i| format!("fleet-{i}")).collect();
    let arrived = wait_until(Duration::from_secs(120), || {
        downstream.tokens().is_superset(&all)
    });
    let lost = all.difference(&downstream.tokens()).count();
    let temporary = load.temporary.load(Ordering::Relaxed);
    println!(
        "database restart: crashed at {before} acknowledged ({} more committed before the crash \
         was complete), {} acknowledged in the 3 s it was down; the client saw {temporary} 4xx, \
         {} 5xx, {} broken sessions; lost {lost}",
        down - before,
        during - down,
        load.permanent.load(Ordering::Relaxed),
        load.broken.load(Ordering::Relaxed)
    );
    assert!(arrived, "{lost} acknowledged messages never arrived");
    assert!(
        temporary > 0,
        "no session met the outage: the test proved nothing"
    );
    assert_eq!(
        load.permanent.load(Ordering::Relaxed),
        0,
        "a message was refused"
    );
    assert!(
        servers
            .iter()
            .any(|(name, _)| silo.log(name).contains("enqueue failed")),
        "no mail server logged a failed enqueue"
    );
}

/// A running scripts/fleet.sh in a process group of its own, interrupted when dropped.
struct Script(std::process::Child);

impl Script {
    /// SIGINT to the script's whole process group, as Ctrl-C at a terminal sends it.
    fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-INT", "--", &format!("-{}", self.0.id())])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        None
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.interrupt();
        }
    }
}

/// scripts/fleet.sh as the README runs it: PostgreSQL and every part of the fleet as its own
/// process on the demo's addresses; mail goes through a balancer to the sink's mailbox, the
/// admin commands work against it, and Ctrl-C stops every process it started.
#[test]
fn fleet_script_starts_the_fleet_and_stops_all_of_it() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/fleet.sh");
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("bash")
        .process_group(0)
        .arg(script)
        .arg(dir.path())
        .env("MAILSILO", &*BIN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("script.err")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut script = Script(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !printed
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops the fleet"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => printed.push(l),
            Err(_) => panic!(
                "the fleet did not start: {printed:#?}\n{}",
                std::fs::read_to_string(dir.path().join("script.err")).unwrap_or_default()
            ),
        }
    }
    // Each process's role and PID.
    let pids: HashMap<String, u32> = printed
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, pid) = (w.next()?, w.next()?.parse().ok()?);
            Some((name.to_string(), pid))
        })
        .collect();
    for role in [
        "postgresql",
        "sink",
        "front",
        "c1-s1",
        "c1-s2",
        "c2-s1",
        "c2-s2",
    ] {
        assert!(
            pids.contains_key(role),
            "no PID printed for {role}: {printed:#?}"
        );
    }
    let front = dir.path().join("front");
    let admin = |args: &[&str]| {
        let out = std::process::Command::new(&*BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&front)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(wait_until(Duration::from_secs(15), || {
        admin(&["lb", "show"]).matches(" up ").count() == 4
    }));
    for (i, lb) in ["127.0.1.1:2525", "127.0.1.2:2525"].iter().enumerate() {
        assert!(send_to(
            lb.parse().unwrap(),
            "alice@example.com",
            &format!("via c{}", i + 1)
        ));
    }
    let mailbox = dir.path().join("mailbox/alice@example.com");
    assert!(
        wait_until(Duration::from_secs(20), || {
            subjects(&read_mailbox(&mailbox)) == ["via c1", "via c2"].map(String::from).into()
        }),
        "{:?}",
        subjects(&read_mailbox(&mailbox))
    );
    assert!(admin(&["queue", "list"]).contains("0 messages"));
    assert!(admin(&["trace", "--to", "alice@example.com"]).contains("2 messages"));

    // Ctrl-C: everything stops.
    let status = script
        .interrupt()
        .expect("the script stopped within a minute");
    assert!(status.success() || status.code() == Some(130), "{status:?}");
    for (role, pid) in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "{role} (PID {pid}) still runs"
        );
    }
}
