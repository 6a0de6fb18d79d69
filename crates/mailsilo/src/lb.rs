//! `mailsilo lb`: the balancers of a running `up`, through its control endpoint, with the
//! control token that `up` keeps in its data directory.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use portal::ServerStatus;

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

/// Says plainly that nothing answers, rather than a transport error.
fn unreachable(control: SocketAddr, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            anyhow::anyhow!(
                "no gateway answers at {control}: start one with `mailsilo up` (or give --control ADDR for another)"
            )
        }
        other => anyhow::anyhow!("control endpoint {control}: {other}"),
    }
}

/// The error text of a refused call.
fn refused(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    match (status.as_u16(), message.trim().is_empty()) {
        (401, _) => "the gateway refused the control token: use the one of the `up` you mean (DATA_DIR/control.token with --data-dir, --token-file, or MAILSILO_CONTROL_TOKEN)".to_string(),
        (_, true) => format!("the control endpoint answered {status}"),
        _ => message,
    }
}

pub fn run(control: SocketAddr, token: &str, command: Command) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(15)))
        .build()
        .into();
    let base = format!("http://{control}/api/lb");
    let bearer = format!("Bearer {token}");
    let (target, what, body, done) = match &command {
        Command::Show => {
            let mut resp = agent
                .get(&base)
                .header("Authorization", &bearer)
                .call()
                .map_err(|e| unreachable(control, e))?;
            if !resp.status().is_success() {
                bail!("{}", refused(&mut resp));
            }
            let servers: Vec<ServerStatus> = resp.body_mut().read_json()?;
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
    let mut resp = agent
        .put(&format!("{base}/{cluster}/{server}/{what}"))
        .header("Authorization", &bearer)
        .send_json(&body)
        .map_err(|e| unreachable(control, e))?;
    if !resp.status().is_success() {
        bail!("{}", refused(&mut resp));
    }
    println!("{cluster}/{server}: {done}");
    Ok(())
}
