//! The HTTP side operators use. For now: the local control endpoint of the balancers (their
//! servers' state as JSON, changing a server's loading or state) and their statistics in
//! Prometheus text format. The web UI and the REST API for domains, policies and quarantine
//! will be added here.
//!
//! The portal knows the balancers only through the [`Balancers`] trait, which the binary
//! implements; it does not depend on the balancer role.
//!
//! Every call but `/metrics` needs the control token as a bearer credential (compared in
//! constant time). Each connection is bounded like any other listener here: headers within
//! [`HEADER_TIMEOUT`], a whole request within [`REQUEST_TIMEOUT`], bodies of at most
//! [`MAX_BODY`] octets, [`MAX_CONNECTIONS`] at a time.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (the control calls send a few dozen octets).
pub const MAX_BODY: usize = 4096;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest a connection lives, however busy.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
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
#[serde(deny_unknown_fields)]
pub struct Loading {
    pub loading: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerState {
    pub state: String,
}

type Shared = Arc<dyn Balancers>;

/// Equal in constant time (for equal lengths): no timing tells how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Refuses, before anything else runs: a call without the control token (but `/metrics`),
/// an announced body over the limit, and a request that takes too long.
async fn guard(token: Arc<str>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/metrics" {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            let mut r = refusal(
                StatusCode::UNAUTHORIZED,
                "a valid control token is required (Authorization: Bearer ...)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return r;
        }
    }
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => refusal(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

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

/// The routes: `GET /api/lb`, `PUT /api/lb/{cluster}/{server}/loading` (`{"loading": N}`,
/// N in `config::LOADING`), `PUT /api/lb/{cluster}/{server}/state` (`{"state": "drain"}`),
/// `GET /metrics`; all but the last need `Authorization: Bearer <token>`.
pub fn router(balancers: Shared, token: &str) -> Router {
    let token: Arc<str> = token.into();
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
                 body: Result<Json<Loading>, JsonRejection>| async move {
                    match body {
                        Ok(Json(l)) => outcome(b.set_loading(&c, &s, l.loading)),
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/lb/{cluster}/{server}/state",
            put(
                |State(b): State<Shared>,
                 Path((c, s)): Path<(String, String)>,
                 body: Result<Json<ServerState>, JsonRejection>| async move {
                    match body {
                        Ok(Json(st)) => outcome(b.set_state(&c, &s, &st.state)),
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(|State(b): State<Shared>| async move { metrics(&b.servers()) }),
        )
        .fallback(|| async { refusal(StatusCode::NOT_FOUND, "no such API call") })
        .with_state(balancers)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(move |req, next| {
            guard(token.clone(), req, next)
        }))
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
    let series: [Series; 5] = [
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
        (
            "mailsilo_lb_server_ready",
            "gauge",
            "1 if the operator's state is ready (0: drain or maint)",
            |s| u8::from(s.state == "ready").to_string(),
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

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves the router on `listener` until `shutdown` turns true, each connection with a
/// header deadline and a lifetime, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    listener: TcpListener,
    balancers: Shared,
    token: &str,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(balancers, token);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

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
