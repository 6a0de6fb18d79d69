//! Each recipient's own allow and block lists: senders (an address, a domain, or a client
//! network) whose mail to that one address is never judged spam, or always is, on top of
//! the domain's lists. A user keeps their own; an organisation's admin those of its
//! domains' addresses; an operator any. The lists live in the domain's settings in the
//! store (`filter.users`), so every node applies a change at once, and each change goes to
//! the audit log like any change of a domain's settings.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::{Ctx, Refused, refusal};

/// One address's own lists, as `GET /api/v1/lists/{address}` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Lists {
    pub address: String,
    /// Senders never judged spam: `user@domain`, `domain` (its subdomains included) or a
    /// network (`192.0.2.0/24`).
    pub allow: Vec<String>,
    /// Senders always judged spam.
    pub block: Vec<String>,
}

/// New lists for one address (`PUT /api/v1/lists/{address}`): each replaces the old.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLists {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub block: Vec<String>,
}

/// The address's domain and local part (lower case), when the caller may see the address
/// and it is at a client domain; else 404, as for anything out of scope.
async fn resolve(
    c: &Ctx,
    who: &Principal,
    address: &str,
) -> Result<(crate::settings::DomainView, String, String), Refused> {
    let address = address.trim().to_ascii_lowercase();
    let missing = || Refused::not_found(format!("{address}: no such address in your scope"));
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(missing());
    };
    let local = local.trim_matches('"').to_string();
    if local.is_empty() || !who.sees(&address) {
        return Err(missing());
    }
    let view = crate::settings::domains(&c.store)
        .await
        .map_err(Refused::store)?
        .into_iter()
        .find(|d| d.name == domain)
        .ok_or_else(missing)?;
    Ok((view, local, address))
}

/// One address's own lists.
pub async fn show(c: &Ctx, who: &Principal, address: &str) -> Result<Lists, Refused> {
    let (view, local, address) = resolve(c, who, address).await?;
    let own = view
        .settings
        .filter
        .users
        .get(&local)
        .cloned()
        .unwrap_or_default();
    Ok(Lists {
        address,
        allow: own.allow,
        block: own.block,
    })
}

/// Replaces one address's own lists: checked by the configuration's rules (a wrong entry
/// is named, and nothing is stored), stored with the domain's settings, audited.
pub async fn set(c: &Ctx, who: &Principal, address: &str, new: NewLists) -> Result<Lists, Refused> {
    let (view, local, address) = resolve(c, who, address).await?;
    let clean = |v: Vec<String>| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in v.into_iter().map(|s| s.trim().to_string()) {
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
        out
    };
    let (allow, block) = (clean(new.allow), clean(new.block));
    if allow.len() + block.len() > MAX_ENTRIES {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_ENTRIES} entries in one address's lists"),
        ));
    }
    // Applied to the settings as stored when written (an admin's change to the domain
    // made meanwhile stays).
    crate::settings::change(c, who, &view.name, |current| {
        let mut settings = current.cloned().ok_or_else(|| {
            crate::settings::NotSet::Invalid(format!("{} is not a client domain", view.name))
        })?;
        if allow.is_empty() && block.is_empty() {
            settings.filter.users.remove(&local);
        } else {
            settings.filter.users.insert(
                local.clone(),
                config::UserLists {
                    allow: allow.clone(),
                    block: block.clone(),
                },
            );
        }
        Ok(settings)
    })
    .await?;
    tracing::info!(%address, account = %who.account, "personal lists changed");
    Ok(Lists {
        address,
        allow,
        block,
    })
}

/// The most entries one address's lists hold together.
pub const MAX_ENTRIES: usize = 1000;
/// The largest body of a lists' change: room for [`MAX_ENTRIES`] addresses (the other
/// calls keep [`crate::MAX_BODY`]).
pub const MAX_LISTS_BODY: usize = 128 * 1024;

/// `GET|PUT /api/v1/lists/{address}`.
pub fn routes() -> Router<Ctx> {
    Router::new().route(
        "/api/v1/lists/{address}",
        get(
            |State(c): State<Ctx>,
             Extension(who): Extension<Principal>,
             Path(address): Path<String>| async move {
                show(&c, &who, &address).await.map(Json).into_response()
            },
        )
        .put(
            |State(c): State<Ctx>,
             Extension(who): Extension<Principal>,
             Path(address): Path<String>,
             body: Result<Json<NewLists>, JsonRejection>| async move {
                match body {
                    Ok(Json(new)) => set(&c, &who, &address, new).await.map(Json).into_response(),
                    Err(e) => refusal(e.status(), &e.body_text()),
                }
            },
        )
        .layer(DefaultBodyLimit::max(MAX_LISTS_BODY)),
    )
}
