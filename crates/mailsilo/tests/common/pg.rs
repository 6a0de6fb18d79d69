//! A PostgreSQL server of a test's own (initdb + pg_ctl in a temporary directory, on a free
//! loopback port), for tests that restart the database under load: the shared server of
//! scripts/test.sh must stay up for the others. Stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

pub struct Private {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// Runs a PostgreSQL program as the `postgres` user when the tests run as root (PostgreSQL
/// refuses to run as root).
fn as_postgres(program: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Private {
    pub fn start() -> Private {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (Debian package postgresql)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new()
            .prefix("mailsilo-test-pg")
            .tempdir_in("/var/tmp")
            .unwrap();
        // Readable by the postgres user when the tests run as root.
        let _ = Command::new("chown")
            .args(["postgres:", &dir.path().to_string_lossy()])
            .status();
        let ok = as_postgres(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let mut pg = Private { dir, bin, port: 0 };
        for port in 56432..56532 {
            pg.port = port;
            if pg.pg_ctl(&["start"]) {
                return pg;
            }
        }
        panic!("PostgreSQL did not start on any port of 56432..56532");
    }

    fn pg_ctl(&self, action: &[&str]) -> bool {
        let data = self.dir.path().join("data");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        as_postgres(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "-m", "immediate", "-o", &options])
            .args(action)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The URL of a new database on this server.
    pub fn database(&self, name: &str) -> String {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let out = Command::new("psql")
            .arg(&admin)
            .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server as a crash would (`-m immediate`: no checkpoint, open transactions
    /// lost, committed ones recovered from the WAL at the next start).
    pub fn crash(&self) {
        assert!(self.pg_ctl(&["stop"]), "pg_ctl stop");
    }

    pub fn start_again(&self) {
        assert!(self.pg_ctl(&["start"]), "pg_ctl start");
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.pg_ctl(&["stop"]);
    }
}
