//! Sessions: `POST /api/v1/login` (a name and a password for a session cookie and its CSRF
//! token), `POST /api/v1/logout`, and `GET /api/v1/me` (who the caller is, and what it may
//! see).

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{Role, Session};

use crate::auth::{self, Principal, Throttle};
use crate::{Ctx, Peer, now, refusal, unavailable};

/// What `POST /api/v1/login` takes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub name: String,
    pub password: String,
}

/// Who the caller is: the answer of a login and of `GET /api/v1/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Me {
    pub account: String,
    pub role: Role,
    pub organisation: Option<String>,
    /// An admin's organisation's domains.
    pub domains: Vec<String>,
    /// The token a session's state changes carry in `X-CSRF-Token`.
    pub csrf: Option<String>,
}

impl From<&Principal> for Me {
    fn from(p: &Principal) -> Me {
        Me {
            account: p.account.clone(),
            role: p.role,
            organisation: p.organisation.clone(),
            domains: p.domains.clone(),
            csrf: p.csrf.clone(),
        }
    }
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's
/// page sends it), for the whole portal.
fn cookie(value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        auth::COOKIE,
        if secure { "; Secure" } else { "" }
    )
}

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route(
            "/api/v1/logout",
            post(
                |State(c): State<Ctx>, Extension(p): Extension<Principal>| async move {
                    if let Some(key) = &p.session
                        && let Err(e) = c.store.end_sessions(Some(key), None).await
                    {
                        return unavailable(e);
                    }
                    (
                        StatusCode::NO_CONTENT,
                        [(header::SET_COOKIE, session_cookie("", c.secure))],
                    )
                        .into_response()
                },
            ),
        )
        .route(
            "/api/v1/me",
            get(|Extension(p): Extension<Principal>| async move { Json(Me::from(&p)) }),
        )
}

/// Why a login did not start a session.
pub enum LoginRefused {
    /// Too many attempts: the seconds to wait.
    Throttled(u64),
    /// Too many password checks under way.
    Busy,
    Wrong,
    Store(store::Error),
}

/// Checks a name and password (throttled per account and address) and starts a session:
/// the cookie's secret and the caller.
pub async fn start_session(
    c: &Ctx,
    throttle: &Throttle,
    peer: Peer,
    name: &str,
    password: String,
) -> Result<(String, Principal), LoginRefused> {
    let name = name.trim().to_ascii_lowercase();
    if name.len() > 254 || password.len() > 1024 {
        return Err(LoginRefused::Wrong);
    }
    throttle
        .attempt(c.store.as_ref(), &name, peer.0, now())
        .await
        .map_err(LoginRefused::Store)?
        .map_err(LoginRefused::Throttled)?;
    let Some(_permit) = throttle.hashing().await else {
        return Err(LoginRefused::Busy);
    };
    let account = c.store.account(&name).await.map_err(LoginRefused::Store)?;
    // The hash is checked whether or not the account exists (on the blocking pool: argon2
    // takes tens of milliseconds by design), so the time taken tells nothing.
    let hash = account
        .as_ref()
        .map_or(auth::DUMMY_HASH.to_string(), |a| a.password.clone());
    let good = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let Some(account) = account.filter(|_| good) else {
        tracing::info!(account = %name, client = %peer.0, "failed portal login");
        return Err(LoginRefused::Wrong);
    };
    throttle
        .succeeded(c.store.as_ref(), &name, peer.0)
        .await
        .map_err(LoginRefused::Store)?;
    let (secret, csrf) = (auth::secret(), auth::secret());
    let session = Session {
        key: auth::digest(&secret),
        account: account.name.clone(),
        csrf: csrf.clone(),
        expires: now() + auth::SESSION_LIFETIME.as_secs() as i64,
    };
    c.store
        .add_session(session)
        .await
        .map_err(LoginRefused::Store)?;
    let p = auth::principal(
        c.store.as_ref(),
        &account.name,
        account.role,
        account.organisation,
        Some(csrf),
    )
    .await
    .map_err(LoginRefused::Store)?;
    tracing::info!(account = %p.account, role = p.role.as_str(), client = %peer.0, "portal login");
    Ok((secret, p))
}

/// The `Set-Cookie` value of a session (an empty secret ends it).
pub fn session_cookie(secret: &str, secure: bool) -> String {
    if secret.is_empty() {
        cookie("", 0, secure)
    } else {
        cookie(secret, auth::SESSION_LIFETIME.as_secs(), secure)
    }
}

async fn login(
    State(c): State<Ctx>,
    Extension(peer): Extension<Peer>,
    Extension(throttle): Extension<Arc<Throttle>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let Login { name, password } = match body {
        Ok(Json(l)) => l,
        Err(e) => return refusal(e.status(), &e.body_text()),
    };
    match start_session(&c, &throttle, peer, &name, password).await {
        Ok((secret, p)) => (
            [(header::SET_COOKIE, session_cookie(&secret, c.secure))],
            Json(Me::from(&p)),
        )
            .into_response(),
        Err(LoginRefused::Throttled(wait)) => {
            let mut r = refusal(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many failed logins: try again in {wait} s"),
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                wait.to_string().parse().expect("digits"),
            );
            r
        }
        Err(LoginRefused::Wrong) => refusal(StatusCode::UNAUTHORIZED, "wrong name or password"),
        Err(LoginRefused::Busy) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins under way: try again in a moment",
        ),
        Err(LoginRefused::Store(e)) => unavailable(e),
    }
}
