//! The run-time configuration's part of the API: the client domains (listed, added,
//! changed, removed) and the effective configuration. Changes go to the store, which
//! announces them to every node.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use config::{Config, Domain, DomainSettings};
use serde::{Deserialize, Serialize};
use store::{DomainEntry, Role, ServerEntry, Store};

use crate::auth::Principal;
use crate::queue::Page;
use crate::{Ctx, Refused, refusal, unavailable};

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
    /// Other writers kept changing them: [`CHANGE_ATTEMPTS`] tries all lost.
    Busy,
}

impl From<NotSet> for Refused {
    fn from(e: NotSet) -> Refused {
        match e {
            NotSet::Invalid(m) => Refused::new(StatusCode::BAD_REQUEST, m),
            NotSet::Store(e) => Refused::store(e),
            NotSet::Busy => Refused::new(
                StatusCode::CONFLICT,
                "the domain's settings kept changing under this change: try again",
            ),
        }
    }
}

/// How many times a change is applied again to settings another writer changed meanwhile.
const CHANGE_ATTEMPTS: usize = 8;

/// The stored entry of the domain `name` (a key), unless there is none or it is removed.
async fn live(c: &Ctx, name: &str) -> store::Result<Option<DomainEntry>> {
    Ok(c.store
        .domains()
        .await?
        .into_iter()
        .find(|e| e.name == name && !e.removed))
}

/// Replaces a domain's settings whole (a PUT, adding a domain): [`change`] with settings
/// that do not depend on what is stored.
pub(crate) async fn set(
    c: &Ctx,
    who: &Principal,
    name: &str,
    settings: &DomainSettings,
) -> Result<Domain, NotSet> {
    change(c, who, name, |_| Ok(settings.clone())).await
}

/// Changes a domain's settings: `edit` gets what is stored (`None` for a domain not there
/// or removed) and returns the new settings, which are checked by the configuration's rules
/// and stored as the rules normalised them, as the nodes will apply them; the change goes
/// to the audit log as `who`'s, with the settings before and after. The store writes only
/// over what `edit` was given: when another writer (a user's lists, an admin's page, on any
/// node) changed the settings meanwhile, `edit` runs again on theirs, so no change is lost.
pub(crate) async fn change(
    c: &Ctx,
    who: &Principal,
    name: &str,
    edit: impl Fn(Option<&DomainSettings>) -> Result<DomainSettings, NotSet>,
) -> Result<Domain, NotSet> {
    let name = key(name);
    for _ in 0..CHANGE_ATTEMPTS {
        let before = live(c, &name)
            .await
            .map_err(NotSet::Store)?
            .map(|e| e.settings);
        let current =
            match &before {
                Some(json) => Some(serde_json::from_str::<DomainSettings>(json).map_err(|e| {
                    NotSet::Invalid(format!("the stored settings do not read: {e}"))
                })?),
                None => None,
            };
        let domain = check(&c.config, &name, &edit(current.as_ref())?).map_err(NotSet::Invalid)?;
        let after = serde_json::to_string(&domain.settings()).expect("settings serialize");
        // Lists are changed one address at a time: their sum is bounded here, as a whole
        // domain's settings are by the size of the request that sets them.
        if after.len() > MAX_SETTINGS_BODY {
            return Err(NotSet::Invalid(format!(
                "{name}'s settings would take {} bytes, more than the {MAX_SETTINGS_BODY} allowed: remove entries first",
                after.len()
            )));
        }
        let entry = DomainEntry {
            name: domain.name.clone(),
            settings: after.clone(),
            removed: false,
        };
        if !c
            .store
            .set_domain(entry, before.clone())
            .await
            .map_err(NotSet::Store)?
        {
            continue;
        }
        crate::audit::record(
            c,
            who,
            crate::audit::Change {
                action: "domain.set",
                object: &domain.name,
                domain: &domain.name,
                before,
                after: Some(after),
            },
        )
        .await;
        return Ok(domain);
    }
    Err(NotSet::Busy)
}

/// Whether `who` may set domain `name` to `new`: an operator any domain; an organisation's
/// admin only its own domains, which exist already, and not their silo (the provider's
/// choice). A domain out of scope does not exist for the caller (404).
pub(crate) async fn may_set(
    c: &Ctx,
    who: &Principal,
    name: &str,
    new: &DomainSettings,
) -> Result<(), Refused> {
    match who.role {
        Role::Operator => Ok(()),
        Role::User => Err(Refused::new(
            StatusCode::FORBIDDEN,
            "client domains are for operators and organisations' admins",
        )),
        Role::Admin => {
            let name = key(name);
            let current = domains(&c.store)
                .await
                .map_err(Refused::store)?
                .into_iter()
                .find(|d| d.name == name && who.domains.contains(&d.name));
            match current {
                None => Err(Refused::not_found(format!("{name} is not a client domain"))),
                Some(d) if d.settings.silo != new.silo => Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    "the silo of a domain is the provider's to change",
                )),
                Some(d) if d.settings.retry != new.retry => Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    "the retry policy of a domain is the provider's to change",
                )),
                Some(d)
                    if d.settings.destination != new.destination
                        && internal(&new.destination).await =>
                {
                    Err(Refused::new(
                        StatusCode::FORBIDDEN,
                        "a client's destination is a host of its own: an address, or a name resolving to addresses, that is not loopback, private, shared or link-local (the provider's to set)",
                    ))
                }
                Some(_) => Ok(()),
            }
        }
    }
}

/// Whether a destination leads inside the provider's network: by number, or by a name
/// that resolves there, or that does not resolve from here (`127.1`, `2130706433` and
/// `localhost` are names to Rust's parser and addresses to the system's resolver). An
/// admin pointing its domain there would have the gateway deliver into the provider's
/// own services. The name is resolved now, as this node's system resolver answers; a name
/// whose records change later is not caught here (docs: an admin's destination).
async fn internal(destination: &str) -> bool {
    if destination == "mx" {
        return false;
    }
    let host = destination
        .rsplit_once(':')
        .map_or(destination, |(h, _)| h)
        .trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return config::internal_ip(ip);
    }
    let lookup = tokio::net::lookup_host(destination);
    match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<_> = addrs.collect();
            addrs.is_empty() || addrs.iter().any(|a| config::internal_ip(a.ip()))
        }
        _ => true,
    }
}

/// The domains `who` sees: every one for an operator, its organisation's for an admin.
pub(crate) async fn visible(c: &Ctx, who: &Principal) -> Result<Vec<DomainView>, Refused> {
    let all = domains(&c.store).await.map_err(Refused::store)?;
    match who.role {
        Role::Operator => Ok(all),
        Role::Admin => Ok(all
            .into_iter()
            .filter(|d| who.domains.contains(&d.name))
            .collect()),
        Role::User => Err(Refused::new(
            StatusCode::FORBIDDEN,
            "client domains are for operators and organisations' admins",
        )),
    }
}

/// A domain name as the store keys it.
pub(crate) fn key(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `GET /api/v1/domains`, `GET|PUT|DELETE /api/v1/domains/{name}` (an admin: its own
/// domains, no removal), `GET /api/v1/config`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/domains",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 p: Result<Query<Page>, QueryRejection>| async move {
                    crate::queue::paged(p, visible(&c, &who).await, |d| d.name.clone())
                },
            ),
        )
        .route(
            "/api/v1/domains/{name}",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>| async move {
                    let name = key(&name);
                    match visible(&c, &who).await {
                        Ok(d) => match d.into_iter().find(|d| d.name == name) {
                            Some(d) => Json(d).into_response(),
                            None => unknown(&name),
                        },
                        Err(e) => e.into_response(),
                    }
                },
            )
            .put(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>,
                 body: Result<Json<DomainSettings>, JsonRejection>| async move {
                    let settings = match body {
                        Ok(Json(s)) => s,
                        Err(e) => return refusal(e.status(), &e.body_text()),
                    };
                    if let Err(e) = may_set(&c, &who, &name, &settings).await {
                        return e.into_response();
                    }
                    match set(&c, &who, &name, &settings).await {
                        Ok(domain) => {
                            tracing::info!(domain = %domain.name, settings = %domain.settings(), account = %who.account, "client domain set");
                            StatusCode::NO_CONTENT.into_response()
                        }
                        Err(e) => Refused::from(e).into_response(),
                    }
                },
            )
            .delete(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>| async move {
                    remove(&c, &who, &key(&name)).await.map(|()| StatusCode::NO_CONTENT).into_response()
                },
            )
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

/// Stops accepting mail for a domain (an operator's call); mail queued before is still
/// delivered by its settings, which stay in the store.
pub(crate) async fn remove(c: &Ctx, who: &Principal, name: &str) -> Result<(), Refused> {
    if who.role != Role::Operator {
        visible(c, who)
            .await?
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Refused::not_found(format!("{name} is not a client domain")))?;
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "removing a client domain is the provider's call",
        ));
    }
    let entry = live(c, name)
        .await
        .map_err(Refused::store)?
        .ok_or_else(|| Refused::not_found(format!("{name} is not a client domain")))?;
    let before = entry.settings.clone();
    let removed = c
        .store
        .set_domain(
            DomainEntry {
                removed: true,
                ..entry
            },
            Some(before.clone()),
        )
        .await
        .map_err(Refused::store)?;
    if !removed {
        return Err(Refused::new(
            StatusCode::CONFLICT,
            format!("{name} changed meanwhile: look at it again before removing it"),
        ));
    }
    tracing::info!(domain = %name, account = %who.account, "client domain removed");
    crate::audit::record(
        c,
        who,
        crate::audit::Change {
            action: "domain.remove",
            object: name,
            domain: name,
            before: Some(before),
            after: None,
        },
    )
    .await;
    Ok(())
}
