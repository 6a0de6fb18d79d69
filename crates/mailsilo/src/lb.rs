//! `mailsilo lb`: the balancers of a running `up`, through its control API.

use anyhow::{Result, bail};
use portal::ServerStatus;

use crate::remote::Client;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every balanced server: health, state, loading, sessions, last check.
    Show,
    /// Set a server's loading (1 to 1000): `lb weight c1/c1-s2 3`.
    Weight { target: String, loading: u32 },
    /// No new sessions for a server; open ones finish.
    Drain { target: String },
    /// Take a server out of service.
    Maint { target: String },
    /// Put a server back in rotation.
    Ready { target: String },
    /// Add a server to a cluster at run time: `lb add c1/c1-s3 127.0.2.3:2525 --loading 2`.
    /// It takes sessions at once, by its loading; the change is kept in the store.
    Add {
        target: String,
        /// IP:PORT where the balancer reaches the server.
        address: String,
        /// Its loading from its capacity, 1 to 1000.
        #[arg(long)]
        loading: u32,
    },
    /// Remove a server from its cluster: no new sessions; open ones finish.
    Remove { target: String },
}

fn split(target: &str) -> Result<(&str, &str)> {
    let name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match target.split_once('/') {
        Some((c, s)) if name(c) && name(s) => Ok((c, s)),
        _ => {
            bail!("{target:?}: write CLUSTER/SERVER with the names `lb show` lists, e.g. c1/c1-s2")
        }
    }
}

pub fn run(api: &Client, command: Command) -> Result<()> {
    let (target, what, body, done) = match &command {
        Command::Show => {
            let servers: Vec<ServerStatus> = api.get("/api/v1/lb")?;
            let mut nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
            nodes.dedup();
            match nodes.as_slice() {
                [] => println!("no balancer runs in the process of this control endpoint"),
                [node] => println!("balancers of node {node}"),
                many => println!("balancers of nodes {}", many.join(", ")),
            }
            println!(
                "{:<8} {:<10} {:<18} {:<6} {:<6} {:>7} {:>6} {:>9}  LAST CHECK",
                "CLUSTER", "SERVER", "ADDRESS", "HEALTH", "STATE", "LOADING", "ACTIVE", "SESSIONS"
            );
            for s in servers {
                let check = match (s.last_check, s.last_check_ago_ms) {
                    (Some(c), Some(ms)) => format!("{c} ({:.1} s ago)", ms as f64 / 1000.0),
                    _ => "-".into(),
                };
                let health = if s.up { "up" } else { "DOWN" };
                println!(
                    "{:<8} {:<10} {:<18} {:<6} {:<6} {:>7} {:>6} {:>9}  {check}",
                    s.cluster, s.server, s.address, health, s.state, s.loading, s.active, s.total
                );
            }
            println!(
                "SESSIONS: relayed since start, the DNS's health checks of the cluster included; the balancer's own checks are not."
            );
            return Ok(());
        }
        Command::Add {
            target,
            address,
            loading,
        } => {
            let (cluster, server) = split(target)?;
            let body = portal::NewServer {
                server: server.to_string(),
                address: address.clone(),
                loading: *loading,
            };
            api.send(&format!("/api/v1/lb/{cluster}"), &body)?;
            println!(
                "{cluster}/{server}: added at {address} with loading {loading}; it takes new sessions now"
            );
            return Ok(());
        }
        Command::Remove { target } => {
            let (cluster, server) = split(target)?;
            api.delete(&format!("/api/v1/lb/{cluster}/{server}"))?;
            println!("{cluster}/{server}: removed; no new sessions, open ones finish");
            return Ok(());
        }
        Command::Weight { target, loading } => (
            target,
            "loading",
            serde_json::json!({ "loading": loading }),
            format!("loading set to {loading}; new sessions follow it, open ones are untouched"),
        ),
        Command::Drain { target } => (
            target,
            "state",
            serde_json::json!({ "state": "drain" }),
            "draining: no new sessions; open ones finish".to_string(),
        ),
        Command::Maint { target } => (
            target,
            "state",
            serde_json::json!({ "state": "maint" }),
            "in maintenance: out of service".to_string(),
        ),
        Command::Ready { target } => (
            target,
            "state",
            serde_json::json!({ "state": "ready" }),
            "ready: back in rotation while its health checks pass".to_string(),
        ),
    };
    let (cluster, server) = split(target)?;
    api.put(&format!("/api/v1/lb/{cluster}/{server}/{what}"), &body)?;
    println!("{cluster}/{server}: {done}");
    Ok(())
}
