//! A loopback DNS server for the tests (`tests/dns/zone_server.py`, Python's dnslib) and
//! an engine whose DNS checks ask it.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mailsilo_filter::network::Network;
use mailsilo_filter::rules::Rules;
use mailsilo_filter::{Engine, Envelope, Report};

pub struct ZoneServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ZoneServer {
    pub fn start() -> ZoneServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zone.json");
        std::fs::write(&path, "{}").unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dns/zone_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&path)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .expect("the test DNS server did not start (it needs Python's dnslib: scripts/test.sh installs it)");
        ZoneServer { child, port, dir }
    }

    /// Serves `zone` from now on.
    pub fn set(&self, zone: &serde_json::Value) {
        let tmp = self.dir.path().join("zone.tmp");
        std::fs::write(&tmp, zone.to_string()).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("zone.json")).unwrap();
    }

    /// An engine (starter rules, no model) whose DNS checks ask this server.
    pub fn engine(&self, timeout: Duration) -> Arc<Engine> {
        let network = Network::new(
            "mx.test",
            &[format!("127.0.0.1:{}", self.port).parse().unwrap()],
            timeout,
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        Arc::new(Engine::new(Rules::new(true, &[]).unwrap()).with_network(network))
    }
}

impl Drop for ZoneServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The engine's full check of `raw` from `client` with that HELO and sender.
pub async fn check(
    engine: &Arc<Engine>,
    raw: &[u8],
    client: &str,
    helo: &str,
    sender: &str,
) -> Report {
    let env = Envelope {
        client: Some(client.parse().unwrap()),
        helo,
        sender,
    };
    engine
        .check(&bytes::Bytes::copy_from_slice(raw), &env, &[])
        .await
}
