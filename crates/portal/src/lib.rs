//! The HTTP side operators use. For now: the control API of a running gateway, which every
//! administrative CLI command goes through: the balancers ([`lb`]: their servers' state,
//! loading and run-time changes, statistics for Prometheus) and the queue and message trace
//! ([`queue`], over the store every node shares). The web UI and the rest of the REST API
//! will be added here.
//!
//! The portal knows the balancers only through the [`Balancers`] trait, which the binary
//! implements; it does not depend on the balancer role.
//!
//! Every call but `/metrics` needs the control token as a bearer credential (compared in
//! constant time). Each connection is bounded like any other listener here: headers within
//! [`HEADER_TIMEOUT`], a whole request within [`REQUEST_TIMEOUT`], bodies of at most
//! [`MAX_BODY`] octets, [`MAX_CONNECTIONS`] at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
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
/// Connections one address may hold (an unauthenticated client can open them: `/metrics`).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// The longest a connection lives, however busy.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
pub mod auth;
pub mod lb;
pub mod quarantine;
pub mod queue;
pub mod settings;

pub use lb::{Balancers, Loading, ServerState, ServerStatus};

/// What the API works on, shared by every request.
#[derive(Clone)]
pub struct Ctx {
    pub config: Arc<config::Config>,
    pub balancers: Arc<dyn Balancers>,
    pub store: Arc<dyn store::Store>,
    /// The node serving the API (it names itself in the trace of what it changes).
    pub node: String,
    /// A new queue id of this node (for mail the API queues: a released copy).
    pub next_id: Arc<dyn Fn() -> String + Send + Sync>,
    /// The other roles' metrics in this process (the filter's), in Prometheus text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Equal in constant time (for equal lengths): no timing tells how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error as every API call answers one: `{"error": {"code": ..., "message": ...}}`, the
/// code a stable word for the status, the message for people.
fn refusal(status: StatusCode, message: &str) -> Response {
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "too_many_requests",
        503 => "unavailable",
        _ => "error",
    };
    (
        status,
        Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// Refuses, before anything else runs: a call without the control token (but `/metrics`),
/// an announced body over the limit, and a request that takes too long.
async fn guard(token: Arc<str>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/metrics" {
        // The scheme is case-insensitive (RFC 9110, 11.1).
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim());
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
    let limit = if request.uri().path().starts_with("/api/v1/domains/") {
        settings::MAX_SETTINGS_BODY
    } else {
        MAX_BODY
    };
    if announced.is_some_and(|n| n > limit as u64) {
        return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => refusal(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

/// 204 for a change made, the reason as a JSON error otherwise.
/// A store that failed: 503 with its error.
fn unavailable(e: store::Error) -> Response {
    refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

/// Unix seconds.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn done(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refusal(StatusCode::BAD_REQUEST, &e),
    }
}

/// Every route, behind the guard; all but `GET /metrics` need `Authorization: Bearer
/// <token>`.
pub fn router(ctx: Ctx, token: &str) -> Router {
    let token: Arc<str> = token.into();
    Router::new()
        .merge(lb::routes())
        .merge(queue::routes())
        .merge(quarantine::routes())
        .merge(settings::routes())
        .fallback(|| async { refusal(StatusCode::NOT_FOUND, "no such API call") })
        .method_not_allowed_fallback(|| async {
            refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "this API call does not take that method",
            )
        })
        .with_state(ctx)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(move |req, next| {
            guard(token.clone(), req, next)
        }))
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves the router on `listener` until `shutdown` turns true, each connection with a
/// header deadline and a lifetime, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    listener: TcpListener,
    ctx: Ctx,
    token: &str,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(ctx, token);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = listen::PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Some(slot) = per_address.take(peer.ip()) else {
            tracing::debug!(%peer, "control: too many connections from this address");
            continue;
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
            let (_permit, _slot) = (permit, slot);
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
}
