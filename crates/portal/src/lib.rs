//! The HTTP side operators use. For now: the local control endpoint of the balancers (their
//! servers' state as JSON, changing a server's loading or state) and their statistics in
//! Prometheus text format. The web UI and the REST API for domains, policies and quarantine
//! will be added here.
//!
//! The portal knows the balancers only through the [`Balancers`] trait, which the binary
//! implements; it does not depend on the balancer role.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One balanced mail server as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub cluster: String,
    pub server: String,
    pub address: String,
    /// What the health checks say.
    pub up: bool,
    /// ready, drain or maint.
    pub state: String,
    pub loading: u32,
    pub active: usize,
    pub total: u64,
    pub last_check: Option<String>,
    pub last_check_ago_ms: Option<u64>,
}

/// What the portal needs from the balancers.
pub trait Balancers: Send + Sync + 'static {
    fn servers(&self) -> Vec<ServerStatus>;
    fn set_loading(&self, cluster: &str, server: &str, loading: u32) -> Result<(), String>;
    fn set_state(&self, cluster: &str, server: &str, state: &str) -> Result<(), String>;
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Loading {
    pub loading: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServerState {
    pub state: String,
}

type Shared = Arc<dyn Balancers>;

fn outcome(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
    }
}

/// The routes: `GET /api/lb`, `PUT /api/lb/{cluster}/{server}/loading` (`{"loading": N}`),
/// `PUT /api/lb/{cluster}/{server}/state` (`{"state": "drain"}`), `GET /metrics`.
pub fn router(balancers: Shared) -> Router {
    Router::new()
        .route(
            "/api/lb",
            get(|State(b): State<Shared>| async move { Json(b.servers()) }),
        )
        .route(
            "/api/lb/{cluster}/{server}/loading",
            put(
                |State(b): State<Shared>,
                 Path((c, s)): Path<(String, String)>,
                 Json(l): Json<Loading>| async move {
                    outcome(b.set_loading(&c, &s, l.loading))
                },
            ),
        )
        .route(
            "/api/lb/{cluster}/{server}/state",
            put(
                |State(b): State<Shared>,
                 Path((c, s)): Path<(String, String)>,
                 Json(st): Json<ServerState>| async move {
                    outcome(b.set_state(&c, &s, &st.state))
                },
            ),
        )
        .route(
            "/metrics",
            get(|State(b): State<Shared>| async move { metrics(&b.servers()) }),
        )
        .with_state(balancers)
}

/// One metric: name, type, help, and how to read it off a server.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServerStatus) -> String,
);

/// The balancers' statistics in Prometheus text format.
pub fn metrics(servers: &[ServerStatus]) -> String {
    let mut out = String::new();
    let series: [Series; 4] = [
        (
            "mailsilo_lb_server_active_sessions",
            "gauge",
            "Sessions open now",
            |s| s.active.to_string(),
        ),
        (
            "mailsilo_lb_server_sessions_total",
            "counter",
            "Sessions since start",
            |s| s.total.to_string(),
        ),
        (
            "mailsilo_lb_server_up",
            "gauge",
            "1 if the health checks pass",
            |s| u8::from(s.up).to_string(),
        ),
        (
            "mailsilo_lb_server_loading",
            "gauge",
            "The server's loading (weight)",
            |s| s.loading.to_string(),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in servers {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\",server=\"{}\"}} {}",
                s.cluster,
                s.server,
                value(s)
            );
        }
    }
    out
}

/// Serves the router on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, balancers: Shared, mut shutdown: watch::Receiver<bool>) {
    let app = router(balancers);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "control endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let s = ServerStatus {
            cluster: "c1".into(),
            server: "c1-s1".into(),
            address: "127.0.2.1:2525".into(),
            up: true,
            state: "ready".into(),
            loading: 2,
            active: 3,
            total: 40,
            last_check: None,
            last_check_ago_ms: None,
        };
        let text = metrics(&[s]);
        assert!(text.contains("# TYPE mailsilo_lb_server_sessions_total counter\nmailsilo_lb_server_sessions_total{cluster=\"c1\",server=\"c1-s1\"} 40\n"), "{text}");
        assert!(text.contains("mailsilo_lb_server_up{cluster=\"c1\",server=\"c1-s1\"} 1\n"));
    }
}
