//! `mailsilo lb`: the balancers of a running `up`, through its control endpoint.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use portal::ServerStatus;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every balanced server: health, state, loading, sessions, last check.
    Show,
    /// Set a server's loading: `lb weight c1/c1-s2 3`.
    Weight { target: String, loading: u32 },
    /// No new sessions for a server; open ones finish.
    Drain { target: String },
    /// Take a server out of service.
    Maint { target: String },
    /// Put a server back in rotation.
    Ready { target: String },
}

fn split(target: &str) -> Result<(&str, &str)> {
    target
        .split_once('/')
        .with_context(|| format!("{target:?}: write CLUSTER/SERVER, e.g. c1/c1-s2"))
}

pub fn run(control: SocketAddr, command: Command) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://{control}/api/lb");
    let (path, body) = match &command {
        Command::Show => {
            let mut resp = agent
                .get(&base)
                .call()
                .with_context(|| format!("control endpoint {control}"))?;
            let servers: Vec<ServerStatus> = resp.body_mut().read_json()?;
            println!(
                "{:<8} {:<10} {:<18} {:<6} {:<6} {:>7} {:>6} {:>8}  LAST CHECK",
                "CLUSTER", "SERVER", "ADDRESS", "HEALTH", "STATE", "LOADING", "ACTIVE", "TOTAL"
            );
            for s in servers {
                let check = match (s.last_check, s.last_check_ago_ms) {
                    (Some(c), Some(ms)) => format!("{c} ({:.1} s ago)", ms as f64 / 1000.0),
                    _ => "-".into(),
                };
                let health = if s.up { "up" } else { "DOWN" };
                println!(
                    "{:<8} {:<10} {:<18} {:<6} {:<6} {:>7} {:>6} {:>8}  {check}",
                    s.cluster, s.server, s.address, health, s.state, s.loading, s.active, s.total
                );
            }
            return Ok(());
        }
        Command::Weight { target, loading } => (
            format!("{target}/loading"),
            serde_json::json!({ "loading": loading }),
        ),
        Command::Drain { target } => (
            format!("{target}/state"),
            serde_json::json!({ "state": "drain" }),
        ),
        Command::Maint { target } => (
            format!("{target}/state"),
            serde_json::json!({ "state": "maint" }),
        ),
        Command::Ready { target } => (
            format!("{target}/state"),
            serde_json::json!({ "state": "ready" }),
        ),
    };
    let (cluster, server) = split(path.rsplit_once('/').map_or(&path[..], |(t, _)| t))?;
    let what = path.rsplit('/').next().unwrap_or_default();
    let mut resp = agent
        .put(&format!("{base}/{cluster}/{server}/{what}"))
        .send_json(&body)
        .with_context(|| format!("control endpoint {control}"))?;
    if !resp.status().is_success() {
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("{message}");
    }
    println!("{cluster}/{server}: {body}");
    Ok(())
}
