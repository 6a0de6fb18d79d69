//! Test harness: runs the real `mailsilo` binary on ephemeral loopback ports and talks to it
//! over TCP. Every process started here is killed when its handle drops.
#![allow(dead_code)] // each test binary uses part of the harness

pub mod pg;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or the one `MAILSILO_TEST_BIN` names (to check that
/// a regression test fails on an older build).
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("MAILSILO_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mailsilo").into())
});

/// A loopback address no other test uses: `127.N.M.1`, N from the process id and M counted
/// up within the process. Listeners on it use fixed ports: client sockets take their
/// ephemeral ports on 127.0.0.1, so nothing can grab a port between choosing and binding it
/// (as it could with "bind port 0, note it, close, start the server on it").
pub fn unique_ip() -> std::net::IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(n < 250, "more test addresses than one process may take");
    let pid = std::process::id();
    std::net::IpAddr::from([127, 100 + (pid % 150) as u8, n as u8, 1])
}

/// Polls `f` every 50 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Runs a Python script with arguments; fails the test unless it succeeds; returns stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A child process killed on drop, and when the test that started it dies without
/// dropping it (killed, or a timeout's signal): else it would hold its fixed addresses
/// and break the next run.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `command`, asking the kernel to kill it when the test's thread ends
    /// (`PR_SET_PDEATHSIG`; a test drops its processes before it returns).
    pub fn spawn(command: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe, as code between fork and exec must be.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Proc(command.spawn().unwrap())
    }

    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.0.id(), "-TERM");
        self.0.wait().unwrap()
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_listening(addr: SocketAddr) {
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()),
        "nothing listening on {addr}"
    );
}

/// Extra TOML for the `[smtp]` table and extra tables after it.
#[derive(Default, Clone)]
pub struct Options {
    pub smtp: String,
    pub tail: String,
    /// Leave the sink out of `up` (tests start their own with [`Gateway::start_sink`]).
    pub external_sink: bool,
    /// Shell commands run before `up` starts, in its shell (`ulimit ...`).
    pub before: String,
}

/// A running `mailsilo up` with its own data directory and ports.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub mx: SocketAddr,
    pub sink: SocketAddr,
    /// The control API (queue and trace commands go through it).
    pub control: SocketAddr,
    pub config: PathBuf,
    pub up: Option<Proc>,
    pub sink_proc: Option<Proc>,
    before: String,
}

/// Whether the tests run with PostgreSQL as the store.
pub fn on_postgres() -> bool {
    std::env::var("MAILSILO_TEST_STORE").as_deref() == Ok("postgres")
}

/// The `[store]` table for a test's gateway: empty for the embedded store, or a fresh
/// PostgreSQL database when `MAILSILO_TEST_STORE=postgres` (on the server
/// `MAILSILO_TEST_POSTGRES` names, which scripts/test.sh starts), so the same tests run on
/// both back ends.
pub fn store_table() -> String {
    if on_postgres() {
        postgres_table()
    } else {
        String::new()
    }
}

/// The `[store]` table of a fresh PostgreSQL database on the server `MAILSILO_TEST_POSTGRES`
/// names (scripts/test.sh starts one).
pub fn postgres_table() -> String {
    let admin = std::env::var("MAILSILO_TEST_POSTGRES").expect(
        "MAILSILO_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts a throw-away PostgreSQL",
    );
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let out = Command::new("psql")
        .arg(&admin)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql is installed (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database in MAILSILO_TEST_POSTGRES");
    store_at(&format!("{base}/{name}"))
}

/// The `[store]` table for the PostgreSQL database at `url`, with a short lease, so a dead
/// node's mail is taken over within the tests' waits.
pub fn store_at(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\nlease = \"5s\"\n")
}

impl Gateway {
    pub fn start(opts: Options) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let ip = unique_ip();
        let mx = SocketAddr::new(ip, 2525);
        let sink = SocketAddr::new(ip, 2526);
        let control = SocketAddr::new(ip, 8025);
        let sink_table = if opts.external_sink {
            String::new()
        } else {
            format!("[sink]\nlisten = \"{sink}\"\n")
        };
        // A small size limit unless the test sets its own.
        let size = if opts.smtp.contains("max_message_size") {
            ""
        } else {
            "max_message_size = \"200KiB\""
        };
        let text = format!(
            r#"[smtp]
hostname = "mx.test"
listen = ["{mx}"]
{size}
{smtp}

[delivery]
connection_cache_time = "1s"

[retry]
min_backoff = "1s"
max_backoff = "2s"

[[domain]]
name = "example.com"
destination = "{sink}"

[[domain]]
name = "example.org"
destination = "{sink}"

[[domain]]
name = "strict.test"
destination = "{sink}"
recipients = ["alice"]

[control]
listen = "{control}"

{sink_table}
{store}
{tail}
"#,
            smtp = opts.smtp,
            tail = opts
                .tail
                .replace("{sink}", &sink.to_string())
                .replace("{ip}", &ip.to_string()),
            store = store_table(),
        );
        let config = dir.path().join("mailsilo.toml");
        std::fs::write(&config, text).unwrap();
        let mut g = Gateway {
            dir,
            mx,
            sink,
            control,
            config,
            up: None,
            sink_proc: None,
            before: opts.before,
        };
        g.start_up();
        g
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (or restarts) `mailsilo up`.
    pub fn start_up(&mut self) {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("up-{}.log", Instant::now().elapsed().as_nanos())),
        )
        .unwrap();
        // Under a permissive umask, as a careless operator's shell would have it: what
        // mailsilo writes must be private all the same.
        self.up = Some(Proc::spawn(
            Command::new("sh")
                .args([
                    "-c",
                    &format!("umask 022 && {} exec \"$0\" \"$@\"", self.before),
                    &BIN,
                    "up",
                    "--config",
                ])
                .arg(&self.config)
                .arg("--data-dir")
                .arg(self.data())
                .stdout(Stdio::null())
                .stderr(log),
        ));
        wait_listening(self.mx);
        wait_listening(self.control);
    }

    /// Starts a separate `mailsilo sink` on the sink address.
    pub fn start_sink(&mut self) {
        self.sink_proc = Some(Proc::spawn(
            Command::new(&*BIN)
                .args(["sink", "--listen", &self.sink.to_string(), "--data-dir"])
                .arg(self.data())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        ));
        wait_listening(self.sink);
    }

    /// The files delivered to a recipient's mailbox.
    pub fn mailbox(&self, rcpt: &str) -> Vec<String> {
        read_mailbox(&self.data().join("mailbox").join(rcpt))
    }

    /// Runs `mailsilo queue ...` (or `trace`, with `what`) against this gateway.
    pub fn queue(&self, args: &[&str]) -> String {
        self.admin("queue", args)
    }

    /// Runs `mailsilo WHAT ARGS...` against this gateway's control API.
    pub fn admin(&self, what: &str, args: &[&str]) -> String {
        let out = self.admin_command(what, args).output().unwrap();
        assert!(
            out.status.success(),
            "{what} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The command line of `mailsilo WHAT ARGS...` against this gateway's control API.
    pub fn admin_command(&self, what: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&*BIN);
        c.arg(what)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data())
            .args(args);
        c
    }

    /// What every `up` of this gateway wrote to its log so far.
    pub fn log(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("up-"))
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// Waits until the session of the connection that found `up` listening has ended: until
    /// then it holds a place, which tests of session limits must not count on.
    pub fn wait_startup_session_closed(&self) {
        assert!(wait_until(Duration::from_secs(20), || {
            let m = http_get(self.control, "/metrics");
            m.contains("mailsilo_smtp_sessions_total{server=\"mx.test\"} 1\n")
                && m.contains("mailsilo_smtp_sessions_active{server=\"mx.test\"} 0\n")
        }));
    }

    pub fn smtp(&self) -> Smtp {
        Smtp::connect(self.mx)
    }
}

pub fn read_mailbox(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("new")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

/// A raw SMTP client for driving exact bytes at the server.
pub struct Smtp {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Smtp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        let banner = c.reply();
        assert_eq!(banner.0, 220, "{banner:?}");
        c
    }

    /// Connects without reading the greeting (which may be a refusal).
    pub fn connect_any(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Smtp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Reads one reply: its code and its lines' text joined by newlines.
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "connection closed while waiting for a reply");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply line {line:?}"));
            text.push(line[4..].trim_end().to_string());
            if line.as_bytes()[3] == b' ' {
                return (code, text.join("\n"));
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends one command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Whether the server has closed the connection (reads EOF).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }

    /// A whole transaction with DATA; returns the final reply.
    pub fn mail(&mut self, from: &str, to: &[&str], body: &str) -> (u16, String) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(r.0, 250, "{r:?}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert_eq!(r.0, 250, "{t}: {r:?}");
        }
        assert_eq!(self.cmd("DATA").0, 354);
        self.send(body.as_bytes());
        self.send(b"\r\n.\r\n");
        self.reply()
    }
}

/// One cluster of a test silo.
pub struct ClusterInfo {
    pub name: String,
    /// The balancer's public address.
    pub address: SocketAddr,
    /// (server name, address)
    pub servers: Vec<(String, SocketAddr)>,
}

/// A silo on loopback: DNS, control and sink on `127.3.NET.1`, cluster `i` on `127.1.NET.i`,
/// its servers on `127.2.NET.x`, every one on a fixed port (as port 25 would be): NET is the
/// test's own, so nothing else binds these addresses. Roles run in separate
/// `mailsilo up --only` processes, so a test can kill any of them.
pub struct Silo {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub dns: SocketAddr,
    pub control: SocketAddr,
    pub sink: SocketAddr,
    pub clusters: Vec<ClusterInfo>,
    pub procs: std::collections::HashMap<String, Proc>,
}

impl Silo {
    /// `loadings[i]` lists cluster i's servers' loadings; `extra` goes into the `[[silo]]`
    /// table (e.g. `rotation = "cycle"`); `cluster_extra` into every `[[silo.cluster]]`.
    pub fn new(net: u8, loadings: &[&[u32]], extra: &str, cluster_extra: &str) -> Silo {
        Silo::build(net, loadings, extra, cluster_extra, "", &store_table())
    }

    /// As [`Silo::new`], with `delivery` added to the `[delivery]` table and `store` as the
    /// `[store]` table.
    pub fn build(
        net: u8,
        loadings: &[&[u32]],
        extra: &str,
        cluster_extra: &str,
        delivery: &str,
        store: &str,
    ) -> Silo {
        let dir = tempfile::tempdir().unwrap();
        let dns: SocketAddr = format!("127.3.{net}.1:5353").parse().unwrap();
        let control: SocketAddr = format!("127.3.{net}.1:8025").parse().unwrap();
        let sink: SocketAddr = format!("127.3.{net}.1:2526").parse().unwrap();
        let (lb_port, srv_port) = (2525, 2525);
        let mut text = format!(
            r#"[smtp]
hostname = "mx.test"
max_sessions_per_client = 1000
[delivery]
connection_cache_time = "1s"
{delivery}
[retry]
min_backoff = "1s"
max_backoff = "2s"
[[domain]]
name = "example.com"
destination = "{sink}"
silo = "silo1.mailsilo.test"
[sink]
listen = "{sink}"
[dns]
listen = ["{dns}"]
[[dns.zone]]
name = "mailsilo.test"
[[dns.zone.record]]
name = "ns1"
type = "A"
value = "127.0.0.1"
[control]
listen = "{control}"
{store}
[[silo]]
name = "silo1.mailsilo.test"
{extra}
[silo.health]
interval = "500ms"
rise = 1
fall = 2
"#
        );
        let mut clusters = Vec::new();
        let mut n = 0;
        // Few enough connections that every process's bounds fit this machine's open-files
        // limit (else `up` warns), unless the test sets its own.
        let bound = if cluster_extra.contains("max_connections =") {
            ""
        } else {
            "max_connections = 1000\n"
        };
        for (i, ls) in loadings.iter().enumerate() {
            let name = format!("c{}", i + 1);
            let addr: SocketAddr = format!("127.1.{net}.{}:{lb_port}", i + 1).parse().unwrap();
            text.push_str(&format!(
                "[[silo.cluster]]\nname = \"{name}\"\naddress = \"{addr}\"\nslowstart = \"0s\"\n{bound}{cluster_extra}\n[silo.cluster.health]\ninterval = \"1s\"\nrise = 1\n"
            ));
            let mut servers = Vec::new();
            for (j, l) in ls.iter().enumerate() {
                n += 1;
                let sname = format!("{name}-s{}", j + 1);
                let saddr: SocketAddr = format!("127.2.{net}.{n}:{srv_port}").parse().unwrap();
                text.push_str(&format!("[[silo.cluster.server]]\nname = \"{sname}\"\naddress = \"{saddr}\"\nloading = {l}\n"));
                servers.push((sname, saddr));
            }
            clusters.push(ClusterInfo {
                name,
                address: addr,
                servers,
            });
        }
        let config = dir.path().join("silo.toml");
        std::fs::write(&config, text).unwrap();
        Silo {
            dir,
            config,
            dns,
            control,
            sink,
            clusters,
            procs: Default::default(),
        }
    }

    /// Starts `mailsilo up --only ROLES` as process `name` with its own data directory, and
    /// waits until `ready` accepts connections.
    pub fn start(&mut self, name: &str, roles: &str, ready: &[SocketAddr]) {
        let config = self.config.clone();
        self.start_with(&config, name, roles, ready);
    }

    /// As [`Silo::start`], with another configuration file (another host's view of the
    /// same fleet). A restarted process appends to its log.
    pub fn start_with(&mut self, config: &Path, name: &str, roles: &str, ready: &[SocketAddr]) {
        let data = self.dir.path().join(format!("data-{name}"));
        let append = |f: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(f))
                .unwrap()
        };
        let (log, out) = (
            append(&format!("{name}.log")),
            append(&format!("{name}.out")),
        );
        let child = Proc::spawn(
            Command::new(&*BIN)
                .args(["up", "--only", roles, "--config"])
                .arg(config)
                .arg("--data-dir")
                .arg(&data)
                .stdout(out)
                .stderr(log),
        );
        self.procs.insert(name.to_string(), child);
        for a in ready {
            wait_listening(*a);
        }
    }

    /// What process `name` logged so far.
    /// Starts a mail server the silo's configuration does not list (one an operator adds at
    /// run time), as process `name`: its host's configuration is the silo's with the server
    /// added to the last cluster, and a store of its own (sharing the silo's, it would join
    /// the balancers by itself).
    pub fn start_extra_server(&mut self, name: &str, address: SocketAddr) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut text = match text.split_once("[store]\n") {
            Some((head, tail)) => {
                let rest = tail.split_once("\n[").map_or("", |(_, r)| r);
                format!("{head}{}\n[{rest}", store_table())
            }
            None => text,
        };
        text.push_str(&format!(
            "[[silo.cluster.server]]\nname = \"{name}\"\naddress = \"{address}\"\nloading = 1\n"
        ));
        let host = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&host, text).unwrap();
        self.start_with(&host, name, &format!("server:{name}"), &[address]);
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// SIGTERM to process `name`, and waits for it to stop.
    pub fn terminate(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            p.terminate();
        }
    }

    pub fn kill(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            p.kill9();
        }
    }

    /// Starts everything in one process.
    pub fn start_all(&mut self) {
        self.start_roles("mx,sink,dns,control,balancer,server");
    }

    /// Starts everything but the DNS, whose health checks would open sessions through the
    /// balancers (for tests that count a balancer's sessions exactly).
    pub fn start_without_dns(&mut self) {
        self.start_roles("mx,sink,control,balancer,server");
    }

    fn start_roles(&mut self, roles: &str) {
        let mut ready = vec![self.sink, self.control];
        ready.extend(self.clusters.iter().map(|c| c.address));
        self.start("all", roles, &ready);
    }

    pub fn mailbox(&self, rcpt: &str) -> Vec<String> {
        let data = self
            .procs
            .keys()
            .map(|n| self.dir.path().join(format!("data-{n}")));
        let mut all: Vec<String> = data
            .flat_map(|d| read_mailbox(&d.join("mailbox").join(rcpt)))
            .collect();
        all.sort();
        all
    }

    /// The control token file of the process running the control endpoint.
    pub fn token_file(&self) -> PathBuf {
        self.procs
            .keys()
            .map(|n| self.dir.path().join(format!("data-{n}/control.token")))
            .find(|p| p.exists())
            .expect("a process of this silo runs the control endpoint")
    }

    /// Runs `mailsilo lb ...` against this silo's control endpoint.
    pub fn lb(&self, args: &[&str]) -> String {
        self.remote(&["lb"], args)
    }

    /// Runs `mailsilo COMMAND --control ... ARGS` against this silo's control endpoint;
    /// returns its output.
    pub fn remote(&self, command: &[&str], args: &[&str]) -> String {
        let out = Command::new(&*BIN)
            .args(command)
            .arg("--control")
            .arg(self.control.to_string())
            .arg("--token-file")
            .arg(self.token_file())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `dig` against the silo's DNS; returns its whole output.
    pub fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .arg(format!("@{}", self.dns.ip()))
            .args([
                "-p",
                &self.dns.port().to_string(),
                "+norecurse",
                "+nocookie",
                "+time=2",
                "+tries=1",
            ])
            .args(args)
            .output()
            .expect("dig is installed (Debian package dnsutils)");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Opens an SMTP session through `addr` and returns the server's name from its banner
/// ("220 NAME ESMTP ..."), leaving the session open.
pub fn banner_of(addr: SocketAddr) -> (String, Smtp) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Smtp {
        reader: BufReader::new(s.try_clone().unwrap()),
        writer: s,
    };
    let (code, text) = c.reply();
    assert_eq!(code, 220, "{text}");
    (text.split(' ').next().unwrap().to_string(), c)
}

/// Opens `n` sessions through `addr` one after another; counts them by server.
pub fn sessions(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (server, mut c) = banner_of(addr);
        *counts.entry(server).or_default() += 1;
        c.send(b"QUIT\r\n");
        assert_eq!(c.reply().0, 221);
    }
    counts
}

/// Asserts that each server's share of `counts` is its share of the loadings, within 3 points.
pub fn assert_shares(counts: &HashMap<String, usize>, loadings: &[(&str, u32)]) {
    let total: usize = counts.values().sum();
    let sum: u32 = loadings.iter().map(|(_, l)| l).sum();
    for (name, l) in loadings {
        let share = *counts.get(*name).unwrap_or(&0) as f64 / total as f64;
        let want = f64::from(*l) / f64::from(sum);
        assert!(
            (share - want).abs() <= 0.03,
            "{name}: {share:.3} of sessions, loading says {want:.3} ({counts:?})"
        );
    }
}

/// Sends one message with the token as subject through `addr`; true on 250.
pub fn send_token(addr: SocketAddr, token: &str) -> bool {
    let attempt = || -> Option<bool> {
        let s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut c = Smtp {
            reader: BufReader::new(s.try_clone().ok()?),
            writer: s,
        };
        let mut step = |line: &str, code: u16| -> Option<()> {
            use std::io::{BufRead, Write};
            if !line.is_empty() {
                c.writer.write_all(line.as_bytes()).ok()?;
            }
            let mut l = String::new();
            loop {
                l.clear();
                if c.reader.read_line(&mut l).ok()? == 0 {
                    return None;
                }
                if l.as_bytes().get(3) == Some(&b' ') {
                    break;
                }
            }
            (l.get(..3)? == code.to_string()).then_some(())
        };
        step("", 220)?;
        step("EHLO load.test\r\n", 250)?;
        step("MAIL FROM:<load@outside.net>\r\n", 250)?;
        step("RCPT TO:<alice@example.com>\r\n", 250)?;
        step("DATA\r\n", 354)?;
        step(&format!("Subject: {token}\r\n\r\n{token}\r\n.\r\n"), 250)?;
        let _ = step("QUIT\r\n", 221);
        Some(true)
    };
    attempt().unwrap_or(false)
}

/// The Subject: of each message (the load tests put a unique token there).
pub fn subjects(messages: &[String]) -> std::collections::BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

/// `GET path` over a new connection; the whole response, headers included.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}
