//! The run-time configuration's part of the API: the client domains (listed, added,
//! changed, removed) and the effective configuration. Changes go to the store, which
//! announces them to every node.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use config::{Config, Domain, DomainSettings};
use serde::{Deserialize, Serialize};
use store::{DomainEntry, ServerEntry, Store};

use crate::{Ctx, refusal, unavailable};

/// The largest body of a domain's settings: room for a recipient list of tens of thousands
/// of local parts (the other calls keep [`crate::MAX_BODY`]).
pub const MAX_SETTINGS_BODY: usize = 2 << 20;

/// A client domain in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DomainView {
    pub name: String,
    pub settings: DomainSettings,
}

/// The configuration in force: what the store holds over the TOML's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Effective {
    /// The node answering.
    pub node: String,
    /// The configuration file it started with (or "built-in demo").
    pub file: String,
    /// `embedded` or `postgresql`.
    pub store: String,
    pub domains: Vec<DomainView>,
    pub servers: Vec<ServerEntry>,
}

fn unknown(name: &str) -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        &format!("{name} is not a client domain"),
    )
}

/// The domains in force, from the store's entries (removed ones left out, unreadable ones
/// reported by name).
pub async fn domains(store: &Arc<dyn Store>) -> store::Result<Vec<DomainView>> {
    Ok(store
        .domains()
        .await?
        .into_iter()
        .filter(|e| !e.removed)
        .filter_map(|e| {
            let settings = serde_json::from_str(&e.settings)
                .inspect_err(|err| tracing::warn!(domain = %e.name, error = %err, "unreadable domain settings in the store"))
                .ok()?;
            Some(DomainView {
                name: e.name,
                settings,
            })
        })
        .collect())
}

/// Checks settings by the configuration's rules; the error says which field is wrong.
fn check(config: &Config, name: &str, s: &DomainSettings) -> Result<Domain, String> {
    Domain::from_settings(name, s, config.retry, &config.filter.policy, &config.silos)
        .map_err(|(field, message)| format!("{field}: {message}"))
}

/// Why settings were not stored.
pub(crate) enum NotSet {
    Invalid(String),
    Store(store::Error),
}

/// Checks a domain's settings by the configuration's rules and stores them as the rules
/// normalised them, as the nodes will apply them.
pub(crate) async fn set(c: &Ctx, name: &str, settings: &DomainSettings) -> Result<Domain, NotSet> {
    let domain = check(&c.config, name, settings).map_err(NotSet::Invalid)?;
    let entry = DomainEntry {
        name: domain.name.clone(),
        settings: serde_json::to_string(&domain.settings()).expect("settings serialize"),
        removed: false,
    };
    c.store.set_domain(entry).await.map_err(NotSet::Store)?;
    Ok(domain)
}

/// A domain name as the store keys it.
fn key(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `GET /api/v1/domains`, `GET|PUT|DELETE /api/v1/domains/{name}`, `GET /api/v1/config`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/domains",
            get(|State(c): State<Ctx>| async move {
                match domains(&c.store).await {
                    Ok(d) => Json(d).into_response(),
                    Err(e) => unavailable(e),
                }
            }),
        )
        .route(
            "/api/v1/domains/{name}",
            get(|State(c): State<Ctx>, Path(name): Path<String>| async move {
                let name = key(&name);
                match domains(&c.store).await {
                    Ok(d) => match d.into_iter().find(|d| d.name == name) {
                        Some(d) => Json(d).into_response(),
                        None => unknown(&name),
                    },
                    Err(e) => unavailable(e),
                }
            })
            .put(
                |State(c): State<Ctx>,
                 Path(name): Path<String>,
                 body: Result<Json<DomainSettings>, JsonRejection>| async move {
                    let settings = match body {
                        Ok(Json(s)) => s,
                        Err(e) => return refusal(e.status(), &e.body_text()),
                    };
                    match set(&c, &name, &settings).await {
                        Ok(domain) => {
                            tracing::info!(domain = %domain.name, settings = %domain.settings(), "client domain set by an operator");
                            StatusCode::NO_CONTENT.into_response()
                        }
                        Err(NotSet::Invalid(m)) => refusal(StatusCode::BAD_REQUEST, &m),
                        Err(NotSet::Store(e)) => unavailable(e),
                    }
                },
            )
            .delete(|State(c): State<Ctx>, Path(name): Path<String>| async move {
                let name = key(&name);
                let entry = match c.store.domains().await {
                    Ok(d) => match d.into_iter().find(|e| e.name == name && !e.removed) {
                        Some(e) => e,
                        None => return unknown(&name),
                    },
                    Err(e) => return unavailable(e),
                };
                // Its settings stay, to deliver what was queued for it before.
                let entry = DomainEntry {
                    removed: true,
                    ..entry
                };
                match c.store.set_domain(entry).await {
                    Ok(()) => {
                        tracing::info!(domain = %name, "client domain removed by an operator");
                        StatusCode::NO_CONTENT.into_response()
                    }
                    Err(e) => unavailable(e),
                }
            })
            .layer(DefaultBodyLimit::max(MAX_SETTINGS_BODY)),
        )
        .route(
            "/api/v1/config",
            get(|State(c): State<Ctx>| async move {
                let (domains, servers) = match (domains(&c.store).await, c.store.servers().await) {
                    (Ok(d), Ok(s)) => (d, s),
                    (Err(e), _) | (_, Err(e)) => return unavailable(e),
                };
                let store = if c.config.store.url.is_some() { "postgresql" } else { "embedded" };
                Json(Effective {
                    node: c.node.clone(),
                    file: c.config.source.clone(),
                    store: store.into(),
                    domains,
                    servers,
                })
                .into_response()
            }),
        )
}
