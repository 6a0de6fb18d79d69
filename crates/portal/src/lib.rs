//! The portal: the web UI and REST API of a running gateway, for operators, client admins
//! and users, which every administrative CLI command goes through as well. It owns the
//! accounts' sessions, roles and scopes ([`auth`], [`login`]), the balancers' servers and
//! the DNS's answers ([`lb`]), the accounts an admin or an operator manages ([`accounts`]), the quarantine and its digests ([`quarantine`], [`digest`]),
//! recipients' own allow and block lists ([`lists`]), the message trace ([`trace`]), the queue ([`queue`]), client domains and their policies
//! with the audit log ([`policy`], [`settings`], [`audit`]), statistics ([`stats`]), the
//! HTML pages ([`web`]) and the OpenAPI document ([`openapi`]), all over the store every
//! node shares.
//!
//! The portal knows the balancers only through the [`Balancers`] trait, which the binary
//! implements; it does not depend on the balancer role.
//!
//! Every call but the login, the digests' signed links and `/metrics` needs a credential: a
//! session cookie, an API token or the control token, as a bearer credential (compared in
//! constant time). Each connection is bounded like any other listener here: headers within
//! [`HEADER_TIMEOUT`], a whole request within [`REQUEST_TIMEOUT`], bodies of at most
//! [`MAX_BODY`] octets, [`MAX_CONNECTIONS`] at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (the control calls send a few dozen octets).
pub const MAX_BODY: usize = 4096;
/// Connections served at once; when all are held, a newcomer takes the place of the oldest
/// connection of the client holding the most (see `listen::Admission`).
pub const MAX_CONNECTIONS: usize = 64;
/// Connections one client may hold (an unauthenticated client can open them: `/metrics`).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// The longest a connection lives, however busy.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
pub mod accounts;
pub mod audit;
pub mod auth;
pub mod digest;
pub mod lb;
pub mod lists;
pub mod login;
pub mod openapi;
pub mod organisations;
pub mod policy;
pub mod quarantine;
pub mod queue;
pub mod settings;
pub mod stats;
pub mod trace;
pub mod web;

pub use auth::Principal;
pub use lb::{Balancers, DnsCluster, DnsSilo, Loading, NewServer, ServerState, ServerStatus};

/// Teaches the classifier a message as spam (`true`) or ham, as the filter learns (the
/// binary wires it to the filter's training).
pub type Learn = Arc<
    dyn Fn(store::Bytes, bool) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Returns a queued message to its sender now (the queue's bounce, wired by the binary):
/// how many recipients, `None` when it is not queued.
pub type Bounce = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<Option<usize>, store::Error>> + Send>>
        + Send
        + Sync,
>;

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
    /// The other roles' metrics in this process (SMTP, filter, queue, DNS), in Prometheus
    /// text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// Learning from messages reported from the quarantine.
    pub learn: Learn,
    /// Returning queued mail to its sender.
    pub bounce: Bounce,
    /// The silos as this node's DNS answers them now; none when it serves no DNS.
    pub dns: Arc<dyn Fn() -> Vec<lb::DnsSilo> + Send + Sync>,
    /// Served over HTTPS: session cookies are `Secure`.
    pub secure: bool,
}

/// The portal's own counter for `/metrics`: requests answered, by kind and status.
pub(crate) struct Requests(metrics::Labelled<2>);

impl Default for Requests {
    fn default() -> Requests {
        Requests(metrics::Labelled::counter(
            "mailsilo_portal_requests_total",
            "HTTP requests the control endpoint answered, by kind (api, page) and status",
            ["kind", "status"],
        ))
    }
}

/// Equal in constant time (for equal lengths): no timing tells how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The longest message an error carries, in characters: what a caller sent (an id, a
/// name) is echoed in it, and a 20 KB id need not come back whole.
const MAX_MESSAGE: usize = 1000;

/// An error as every API call answers one: `{"error": {"code": ..., "message": ...}}`, the
/// code a stable word for the status, the message for people (cut at [`MAX_MESSAGE`]).
fn refusal(status: StatusCode, message: &str) -> Response {
    let message = match message.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}...", &message[..at]),
        None => message.to_string(),
    };
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

/// A refused call: its status and why (answered as [`refusal`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl Refused {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Refused {
        Refused::new(StatusCode::NOT_FOUND, message)
    }

    pub fn invalid(message: impl Into<String>) -> Refused {
        Refused::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn conflict(message: impl Into<String>) -> Refused {
        Refused::new(StatusCode::CONFLICT, message)
    }

    pub fn store(e: store::Error) -> Refused {
        Refused::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refusal(self.status, &self.message)
    }
}

/// The client's address, put in each request by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// Calls any role may make (each answers within the caller's scope); every other call is
/// an operator's.
fn scoped(path: &str) -> bool {
    matches!(path, "/api/v1/me" | "/api/v1/logout" | "/" | "/logout")
        || path.starts_with("/api/v1/quarantine")
        || path.starts_with("/api/v1/trace")
        || path.starts_with("/api/v1/lists/")
        || path == "/api/v1/accounts"
        || path == "/api/v1/organisations"
        || path.starts_with("/api/v1/organisations/")
        || path == "/organisations"
        || path.starts_with("/organisations/")
        || path.starts_with("/api/v1/accounts/")
        || path == "/accounts"
        || path.starts_with("/accounts/")
        || path == "/lists"
        || path == "/api/v1/stats"
        || path == "/api/v1/audit"
        || path == "/api/v1/domains"
        || path.starts_with("/api/v1/domains/")
        || path == "/audit"
        || path == "/domains"
        || path.starts_with("/domains/")
        || path == "/stats"
        || path == "/quarantine"
        || path.starts_with("/quarantine/")
        || path == "/trace"
        || path.starts_with("/trace/")
}

/// Calls made without a credential: the metrics, and the logins.
fn public(path: &str) -> bool {
    matches!(
        path,
        "/metrics" | "/api/v1/login" | "/login" | "/api/openapi.json"
    ) || path.starts_with("/digest/")
}

/// The credentials a request carries: its bearer token and its session cookie.
fn credentials(request: &Request) -> (Option<String>, Option<String>) {
    // The scheme is case-insensitive (RFC 9110, 11.1).
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == auth::COOKIE)
        .map(|(_, value)| value.trim().to_string());
    (bearer, cookie)
}

/// Who the caller is, from the control token, an API token or a session cookie.
async fn authenticate(
    token: &str,
    ctx: &Ctx,
    bearer: Option<String>,
    cookie: Option<String>,
) -> Result<Principal, Response> {
    let unauthorized = || {
        let mut r = refusal(
            StatusCode::UNAUTHORIZED,
            "a valid control token is required (Authorization: Bearer ...), or an API token, or a session (POST /api/v1/login)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        r
    };
    let now = now();
    if let Some(given) = bearer.as_deref() {
        if same(given.as_bytes(), token.as_bytes()) {
            return Ok(Principal::control());
        }
        if given.starts_with(auth::TOKEN_PREFIX) {
            let t = match ctx.store.token(&auth::digest(given), now).await {
                Ok(Some(t)) => t,
                Ok(None) => return Err(unauthorized()),
                Err(e) => return Err(unavailable(e)),
            };
            // A token ends with its account, and with a change of the account's role or
            // organisation (it was made for what the account was then).
            return match ctx.store.account(&t.account).await {
                Ok(Some(a)) if a.role == t.role && a.organisation == t.organisation => {
                    auth::principal(ctx.store.as_ref(), &t.account, t.role, t.organisation, None)
                        .await
                        .map_err(unavailable)
                }
                Ok(_) => Err(unauthorized()),
                Err(e) => Err(unavailable(e)),
            };
        }
        return Err(unauthorized());
    }
    let Some(cookie) = cookie else {
        return Err(unauthorized());
    };
    let key = auth::digest(&cookie);
    let session = match ctx.store.session(&key, now).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(unauthorized()),
        Err(e) => return Err(unavailable(e)),
    };
    let account = match ctx.store.account(&session.account).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(unauthorized()),
        Err(e) => return Err(unavailable(e)),
    };
    let mut p = auth::principal(
        ctx.store.as_ref(),
        &account.name,
        account.role,
        account.organisation,
        Some(session.csrf),
    )
    .await
    .map_err(unavailable)?;
    p.session = Some(key);
    Ok(p)
}

/// Refuses, before anything else runs: a call without a valid credential (but `/metrics`
/// and the login), a session's state change without its CSRF token, a call beyond the
/// caller's role, an announced body over the limit, and a request that takes too long.
async fn guard(token: Arc<str>, ctx: Ctx, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let api = path.starts_with("/api/");
    if !public(&path) {
        let (bearer, cookie) = credentials(&request);
        let principal = match authenticate(&token, &ctx, bearer, cookie).await {
            Ok(p) => p,
            // A page asked for without a session leads to the login.
            Err(_) if !api => return axum::response::Redirect::to("/login").into_response(),
            Err(r) => return r,
        };
        let reads = matches!(*request.method(), Method::GET | Method::HEAD);
        // The API's changes carry the session's CSRF token in a header; the pages' forms
        // carry it as a field, which their handlers check.
        if let Some(csrf) = &principal.csrf
            && !reads
            && api
        {
            let given = request
                .headers()
                .get(auth::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same(given.as_bytes(), csrf.as_bytes()) {
                return refusal(
                    StatusCode::FORBIDDEN,
                    "a session's changes carry its CSRF token (X-CSRF-Token, from the login's answer)",
                );
            }
        }
        if principal.role != store::Role::Operator && !scoped(&path) {
            return if api {
                refusal(StatusCode::FORBIDDEN, "this call is an operator's")
            } else {
                web::error_page(
                    StatusCode::FORBIDDEN,
                    "This page is an operator's.",
                    Some(&principal),
                )
            };
        }
        request.extensions_mut().insert(principal);
    }
    let principal = request.extensions().get::<Principal>().cloned();
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    let path = request.uri().path();
    let limit = if path.starts_with("/api/v1/domains/") || path.starts_with("/domains/") {
        settings::MAX_SETTINGS_BODY
    } else if path.starts_with("/api/v1/lists/") || path == "/lists" {
        lists::MAX_LISTS_BODY
    } else {
        MAX_BODY
    };
    if announced.is_some_and(|n| n > limit as u64) {
        return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => in_kind(r, api, principal.as_ref()).await,
        Err(_) => refusal(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

/// A refusal written by axum's extractors (a path segment that is not UTF-8, a query or
/// form that does not parse: plain text) answered as every other refusal is: the JSON
/// error for the API, the error page for the pages.
async fn in_kind(response: Response, api: bool, principal: Option<&Principal>) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body);
    if api {
        refusal(status, &message)
    } else {
        web::error_page(status, &message, principal)
    }
}

/// RFC 9112, 3.2: an HTTP/1.1 request without a `Host` field, and any request with more than
/// one, get 400: a proxy in front might read another host than the portal does.
async fn one_host(req: Request, next: Next) -> Response {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let why = match hosts {
        0 if req.version() == axum::http::Version::HTTP_11 => {
            "an HTTP/1.1 request needs a Host header"
        }
        0 | 1 => return next.run(req).await,
        _ => "a request may have only one Host header",
    };
    if req.uri().path().starts_with("/api/") {
        refusal(StatusCode::BAD_REQUEST, why)
    } else {
        web::error_page(StatusCode::BAD_REQUEST, why, None)
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

/// Every route, behind the guard; all but `GET /metrics` need `Authorization: Bearer
/// <token>`.
pub fn router(ctx: Ctx, token: &str) -> Router {
    let token: Arc<str> = token.into();
    let guarded = ctx.clone();
    let requests = Arc::new(Requests::default());
    let counted = requests.clone();
    Router::new()
        .merge(login::routes())
        .merge(web::routes())
        .merge(lb::routes())
        .merge(stats::routes())
        .merge(digest::routes())
        .merge(audit::routes())
        .merge(policy::routes())
        .route(
            "/api/openapi.json",
            axum::routing::get(|| async {
                static DOCUMENT: std::sync::OnceLock<serde_json::Value> =
                    std::sync::OnceLock::new();
                Json(DOCUMENT.get_or_init(openapi::document).clone())
            }),
        )
        .merge(queue::routes())
        .merge(quarantine::routes())
        .merge(trace::routes())
        .merge(settings::routes())
        .merge(lists::routes())
        .merge(accounts::routes())
        .merge(organisations::routes())
        .fallback(|| async { refusal(StatusCode::NOT_FOUND, "no such API call") })
        .method_not_allowed_fallback(|| async {
            refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "this API call does not take that method",
            )
        })
        .with_state(ctx)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(Arc::new(auth::Throttle::default())))
        .layer(middleware::from_fn(move |req, next| {
            guard(token.clone(), guarded.clone(), req, next)
        }))
        .layer(middleware::from_fn(one_host))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let requests = counted.clone();
            async move {
                let kind = if req.uri().path().starts_with("/api/") {
                    "api"
                } else {
                    "page"
                };
                let response = next.run(req).await;
                requests.0.inc([kind, response.status().as_str()]);
                response
            }
        }))
        .layer(axum::Extension(requests))
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves the API and the portal on `listener` until `shutdown`, each connection with a
/// header deadline and a lifetime, at most [`MAX_CONNECTIONS`] at once: over HTTPS with
/// `tls` (each handshake within [`HEADER_TIMEOUT`]), else plain HTTP (loopback only: the
/// configuration refuses plain HTTP elsewhere).
pub async fn serve(
    listener: TcpListener,
    ctx: Ctx,
    token: &str,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Sessions and tokens past their end are forgotten hourly.
    let (store, mut expiry_stop) = (ctx.store.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            match store.expire_sessions(now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "portal sessions and tokens expired"),
                Err(e) => tracing::warn!(error = %e, "expiring portal sessions failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = stopped(&mut expiry_stop) => return,
            }
        }
    });
    // Digests of quarantined mail, on each organisation's schedule.
    tokio::spawn(digest::follow(ctx.clone(), shutdown.clone()));
    let app = router(ctx, token);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let admission = listen::Admission::new(MAX_CONNECTIONS_PER_ADDRESS, MAX_CONNECTIONS);
    let mut listener = listen::Acceptor::new(listener, "control");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.next() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        let Ok(slot) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "control: too many connections");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(Peer(peer.ip().to_canonical()))),
        );
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .clone();
            let served = async {
                match acceptor {
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                    Some(a) => {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(HEADER_TIMEOUT, a.accept(stream)).await
                        else {
                            tracing::debug!(%peer, "control: no TLS handshake");
                            return;
                        };
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, served) => {}
                _ = slot.evicted() => {
                    tracing::debug!(%peer, "control: closed to make room for another client");
                }
            }
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
