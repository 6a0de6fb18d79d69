//! The balancers' part of the API: every balanced server's state, changing a server's
//! loading or state, adding and removing servers, and their statistics for Prometheus.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::queue::Page;
use crate::{Ctx, Refused, refusal};

/// One balanced mail server as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerStatus {
    pub cluster: String,
    pub server: String,
    /// The node whose balancer this is.
    pub node: String,
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

/// A silo as this node's DNS answers it now: `GET /api/v1/dns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DnsSilo {
    /// Its host name (what clients' MX records name).
    pub name: String,
    pub ttl: u32,
    pub clusters: Vec<DnsCluster>,
}

/// One cluster's address in a silo's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DnsCluster {
    pub name: String,
    /// Its balancer's public address.
    pub address: String,
    /// Its balancer passes the DNS's SMTP checks.
    pub healthy: bool,
    /// At least one of its servers is ready in the run-time configuration.
    pub serving: bool,
    /// The answers carry it now (healthy and serving; every cluster when none is).
    pub answered: bool,
}

/// What the portal needs from the balancers: their servers as this node sees them, and
/// changing a server's loading or state, adding and removing servers, which the
/// implementation records in the store (so every node applies it, and it survives a
/// restart) and applies here at once.
#[async_trait::async_trait]
pub trait Balancers: Send + Sync + 'static {
    fn servers(&self) -> Vec<ServerStatus>;
    async fn set_loading(&self, cluster: &str, server: &str, loading: u32) -> Result<(), Refused>;
    async fn set_state(&self, cluster: &str, server: &str, state: &str) -> Result<(), Refused>;
    async fn add_server(&self, cluster: &str, server: &NewServer) -> Result<(), Refused>;
    async fn remove_server(&self, cluster: &str, server: &str) -> Result<(), Refused>;
}

/// A server joining a cluster: `POST /api/v1/lb/{cluster}`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    /// Its name, unique in the silo: letters, digits, `-`, `_`, `.`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub server: String,
    /// `IP:PORT` where the balancer reaches it.
    pub address: String,
    /// Its loading from its capacity, 1 to 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub loading: u32,
}

/// A change of a server, as the portal asks for it.
pub enum Change<'a> {
    Loading(u32),
    State(&'a str),
    Add(&'a NewServer),
    Remove,
}

/// The server's state as the audit log keeps it.
fn state_of(c: &Ctx, cluster: &str, server: &str) -> Option<String> {
    c.balancers
        .servers()
        .into_iter()
        .find(|s| s.cluster == cluster && s.server == server)
        .map(|s| {
            serde_json::json!({ "address": s.address, "loading": s.loading, "state": s.state })
                .to_string()
        })
}

/// Makes a change to a server, and records it in the audit log as `who`'s.
pub async fn change(
    c: &Ctx,
    who: &Principal,
    cluster: &str,
    server: &str,
    change: Change<'_>,
) -> Result<(), Refused> {
    let before = state_of(c, cluster, server);
    let action = match change {
        Change::Loading(l) => {
            c.balancers.set_loading(cluster, server, l).await?;
            "server.loading"
        }
        Change::State(s) => {
            c.balancers.set_state(cluster, server, s).await?;
            "server.state"
        }
        Change::Add(new) => {
            c.balancers.add_server(cluster, new).await?;
            "server.add"
        }
        Change::Remove => {
            c.balancers.remove_server(cluster, server).await?;
            "server.remove"
        }
    };
    let after = match change {
        Change::Add(new) => Some(
            serde_json::json!({ "address": new.address, "loading": new.loading, "state": "ready" })
                .to_string(),
        ),
        Change::Remove => None,
        _ => state_of(c, cluster, server),
    };
    tracing::info!(%cluster, %server, action, account = %who.account, "server changed");
    crate::audit::record(
        c,
        who,
        crate::audit::Change {
            action,
            object: &format!("{cluster}/{server}"),
            domain: "",
            before,
            after,
        },
    )
    .await;
    Ok(())
}

/// No content on success, else the refusal.
fn done(r: Result<(), Refused>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Loading {
    #[schemars(range(min = 1, max = 1000))]
    pub loading: u32,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerState {
    #[schemars(extend("enum" = ["ready", "drain", "maint", "maintenance"]))]
    pub state: String,
}

/// `GET /api/v1/lb`, `GET /api/v1/dns`, `POST /api/v1/lb/{cluster}` (a [`NewServer`]), `DELETE
/// /api/v1/lb/{cluster}/{server}`, `PUT /api/v1/lb/{cluster}/{server}/loading`
/// (`{"loading": N}`, N in `config::LOADING`), `PUT /api/v1/lb/{cluster}/{server}/state`
/// (`{"state": "drain"}`), `GET /metrics`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/lb",
            get(
                |State(c): State<Ctx>, p: Result<Query<Page>, QueryRejection>| async move {
                    crate::queue::paged(p, Ok(c.balancers.servers()), |s| {
                        format!("{}/{}", s.cluster, s.server)
                    })
                },
            ),
        )
        .route(
            "/api/v1/dns",
            get(
                |State(c): State<Ctx>, p: Result<Query<Page>, QueryRejection>| async move {
                    crate::queue::paged(p, Ok((c.dns)()), |s| s.name.clone())
                },
            ),
        )
        .route(
            "/api/v1/lb/{cluster}",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(cluster): Path<String>,
                 body: Result<Json<NewServer>, JsonRejection>| async move {
                    match body {
                        Ok(Json(s)) => match change(&c, &who, &cluster, &s.server, Change::Add(&s)).await {
                            Ok(()) => StatusCode::CREATED.into_response(),
                            Err(e) => e.into_response(),
                        },
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/v1/lb/{cluster}/{server}",
            delete(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path((cluster, server)): Path<(String, String)>| async move {
                    done(change(&c, &who, &cluster, &server, Change::Remove).await)
                },
            ),
        )
        .route(
            "/api/v1/lb/{cluster}/{server}/loading",
            put(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path((cluster, server)): Path<(String, String)>,
                 body: Result<Json<Loading>, JsonRejection>| async move {
                    match body {
                        Ok(Json(l)) => {
                            done(change(&c, &who, &cluster, &server, Change::Loading(l.loading)).await)
                        }
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/v1/lb/{cluster}/{server}/state",
            put(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path((cluster, server)): Path<(String, String)>,
                 body: Result<Json<ServerState>, JsonRejection>| async move {
                    match body {
                        Ok(Json(st)) => {
                            done(change(&c, &who, &cluster, &server, Change::State(&st.state)).await)
                        }
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(
                |State(c): State<Ctx>, Extension(requests): Extension<Arc<crate::Requests>>| async move {
                    let mut out = metrics(&c.balancers.servers());
                    out.push_str(&(c.metrics)());
                    out.push_str(&crate::queue::metrics(&c).await);
                    requests.0.render(&mut out);
                    out
                },
            ),
        )
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
        metrics::family(&mut out, name, kind, help);
        for s in servers {
            metrics::sample(
                &mut out,
                name,
                &[("cluster", &s.cluster), ("server", &s.server)],
                value(s),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let s = ServerStatus {
            cluster: "c1".into(),
            server: "c1-s1".into(),
            node: "n1".into(),
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
