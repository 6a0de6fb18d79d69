//! Client organisations in the portal: an operator lists every organisation and adds one or
//! changes its domains and its digest schedule; an organisation's admin sees its own and
//! sets its digest schedule (its domains are the operator's). Users have none of it. The
//! checks are the ones `mailsilo org set` makes ([`checked`]): domain names, a domain in
//! one organisation only, a schedule the digests understand. The digest scheduler reads
//! the store each round, so a change applies without a restart; every change is audited.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{Organisation, Role};

use crate::auth::Principal;
use crate::queue::Page;
use crate::{Ctx, Refused, refusal};

/// An organisation as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrganisationView {
    pub name: String,
    /// The client domains it owns (lower-case).
    pub domains: Vec<String>,
    /// How often its users get a digest of their quarantined mail (`daily`, `weekly`, `off`
    /// or a duration such as `12h`); none: the configuration's default.
    pub digest: Option<String>,
}

/// `PUT /api/v1/organisations/{name}`: the organisation's domains and digest schedule.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganisationChange {
    pub domains: Vec<String>,
    /// None or empty: the configuration's default.
    #[serde(default)]
    pub digest: Option<String>,
}

fn view(o: Organisation) -> OrganisationView {
    OrganisationView {
        name: o.name,
        domains: o.domains,
        digest: o.digest,
    }
}

/// The longest organisation name, in characters.
const MAX_NAME: usize = 200;

/// The organisation `name` as it may be stored beside `others`: its domains as names
/// (lower-case, without a final dot), none owned by another organisation, and a digest
/// schedule the digests understand (empty: the default). The message names what is wrong.
pub fn checked(
    name: &str,
    domains: &[String],
    digest: Option<&str>,
    others: &[Organisation],
) -> Result<Organisation, String> {
    let name = name.trim();
    // Direction marks would make the name read differently from what it is, on every page
    // that shows it.
    let hidden = |ch: char| {
        ch.is_control()
            || ['\u{61c}', '\u{200e}', '\u{200f}'].contains(&ch)
            || ('\u{202a}'..='\u{202e}').contains(&ch)
            || ('\u{2066}'..='\u{2069}').contains(&ch)
    };
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(hidden) {
        return Err(format!(
            "name: an organisation needs a name of 1 to {MAX_NAME} printable characters, without direction marks"
        ));
    }
    let digest = digest.map(str::trim).filter(|d| !d.is_empty());
    if let Some(d) = digest {
        config::digest_period(d).map_err(|e| format!("digest: {e}"))?;
    }
    let mut ds = Vec::new();
    for d in domains {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if !config::is_domain_name(&d) {
            return Err(format!("domains: {d:?} is not a domain name"));
        }
        if !ds.contains(&d) {
            ds.push(d);
        }
    }
    if let Some((o, d)) = others
        .iter()
        .filter(|o| o.name != name)
        .find_map(|o| ds.iter().find(|d| o.domains.contains(d)).map(|d| (o, d)))
    {
        return Err(format!(
            "domains: {d} already belongs to organisation {:?}",
            o.name
        ));
    }
    Ok(Organisation {
        name: name.to_string(),
        domains: ds,
        digest: digest.map(str::to_string),
    })
}

fn users_refused() -> Refused {
    Refused::new(
        StatusCode::FORBIDDEN,
        "organisations are for operators and their own admins",
    )
}

/// Whether `who` sees `o`: an operator every organisation, an admin its own.
fn sees(who: &Principal, o: &Organisation) -> bool {
    who.role == Role::Operator || who.organisation.as_deref() == Some(o.name.as_str())
}

/// The organisations `who` sees, by name.
pub async fn list(c: &Ctx, who: &Principal) -> Result<Vec<OrganisationView>, Refused> {
    if who.role == Role::User {
        return Err(users_refused());
    }
    let mut all: Vec<_> = c
        .store
        .organisations()
        .await
        .map_err(Refused::store)?
        .into_iter()
        .filter(|o| sees(who, o))
        .map(view)
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// Adds or changes an organisation: an operator any (and its domains), an admin only its
/// own schedule (another organisation is a 404; new domains a 403).
pub async fn set(
    c: &Ctx,
    who: &Principal,
    name: &str,
    change: OrganisationChange,
) -> Result<OrganisationView, Refused> {
    if who.role == Role::User {
        return Err(users_refused());
    }
    let all = c.store.organisations().await.map_err(Refused::store)?;
    let before = all.iter().find(|o| o.name == name.trim()).cloned();
    if who.role == Role::Admin && !before.as_ref().is_some_and(|o| sees(who, o)) {
        return Err(Refused::not_found(format!(
            "{name}: no such organisation in your scope"
        )));
    }
    let after = checked(name, &change.domains, change.digest.as_deref(), &all)
        .map_err(|m| Refused::new(StatusCode::BAD_REQUEST, m))?;
    if who.role == Role::Admin
        && before.as_ref().is_some_and(|b| {
            let (mut was, mut now) = (b.domains.clone(), after.domains.clone());
            was.sort();
            now.sort();
            was != now
        })
    {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "domains: an organisation's domains are the operator's to change",
        ));
    }
    c.store
        .set_organisation(after.clone())
        .await
        .map_err(Refused::store)?;
    tracing::info!(organisation = %after.name, by = %who.account, "organisation set");
    let shown = |o: &Organisation| serde_json::to_string(&view(o.clone())).ok();
    crate::audit::record(
        c,
        who,
        crate::audit::Change {
            action: "organisation.set",
            object: &after.name,
            // Filed under its first domain, so that its admins see the entry.
            domain: after.domains.first().map_or("", String::as_str),
            before: before.as_ref().and_then(shown),
            after: shown(&after),
        },
    )
    .await;
    Ok(view(after))
}

/// `GET /api/v1/organisations`, `PUT /api/v1/organisations/{name}`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/organisations",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 p: Result<Query<Page>, QueryRejection>| async move {
                    crate::queue::paged(p, list(&c, &who).await, |o| o.name.clone())
                },
            ),
        )
        .route(
            "/api/v1/organisations/{name}",
            axum::routing::put(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>,
                 body: Result<Json<OrganisationChange>, JsonRejection>| async move {
                    match body {
                        Ok(Json(change)) => {
                            set(&c, &who, &name, change).await.map(Json).into_response()
                        }
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(name: &str, domains: &[&str]) -> Organisation {
        Organisation {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            digest: None,
        }
    }

    #[test]
    fn domains_are_names_owned_once_and_schedules_are_understood() {
        let others = [org("A", &["a.test"]), org("B", &["b.test"])];
        let ok = checked(
            " B ",
            &["B.test.".into(), "c.test".into(), "c.test".into()],
            Some(" weekly "),
            &others,
        )
        .unwrap();
        assert_eq!(ok.name, "B");
        assert_eq!(ok.domains, ["b.test", "c.test"]);
        assert_eq!(ok.digest.as_deref(), Some("weekly"));
        assert_eq!(checked("B", &[], Some(""), &others).unwrap().digest, None);
        for (name, domains, digest, wrong) in [
            ("B", vec!["a.test"], None, "domains: a.test already belongs"),
            ("B", vec!["not a domain"], None, "domains: \"not a domain\""),
            ("B", vec![], Some("fortnightly"), "digest: "),
            ("", vec![], None, "name: "),
            ("Evil\u{202e}gro.elpmaxe", vec![], None, "name: "),
            (&"x".repeat(201), vec![], None, "name: "),
        ] {
            let domains: Vec<String> = domains.into_iter().map(String::from).collect();
            let e = checked(name, &domains, digest, &others).unwrap_err();
            assert!(e.starts_with(wrong), "{e}");
        }
    }
}
