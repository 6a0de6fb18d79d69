//! Accounts in the portal: an organisation's admin lists, adds and disables its
//! organisation's accounts and sets their passwords; an operator does so for every account
//! (and adds operators). Users have none of it. Names follow the store's rule: an admin or
//! a user is named by an address, a user's at one of its organisation's domains (the
//! address whose quarantine and lists are theirs). Passwords are hashed with argon2 on the
//! blocking pool; a new password or a disabled account ends the account's sessions, and
//! disabling revokes its API tokens too. Every change goes to the audit log (never a hash).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{Account, Role};

use crate::auth::Principal;
use crate::queue::Page;
use crate::{Ctx, Refused, now, refusal};

/// An account as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccountView {
    pub name: String,
    pub role: Role,
    pub organisation: Option<String>,
    /// It has a password (a disabled account has none, and cannot log in).
    pub enabled: bool,
    /// Unix seconds.
    pub created: i64,
}

/// A new account: `POST /api/v1/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// An address for an admin or a user (a user's at one of its organisation's
    /// domains); a plain name for an operator.
    pub name: String,
    pub role: Role,
    /// An admin's or a user's organisation (an admin adds to its own, whatever this says).
    pub organisation: Option<String>,
    /// At least [`MIN_PASSWORD`] characters.
    pub password: String,
}

/// A new password: `PUT /api/v1/accounts/{name}/password`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub password: String,
}

pub use config::MIN_PASSWORD;

fn view(a: &Account) -> AccountView {
    AccountView {
        name: a.name.clone(),
        role: a.role,
        organisation: a.organisation.clone(),
        enabled: !a.password.is_empty(),
        created: a.created,
    }
}

/// Whether `who` manages `a`: an operator every account; an admin its organisation's
/// admins and the users at its domains (a user is an address: when the provider moves a
/// domain to another organisation, its users go with it).
fn manages(who: &Principal, a: &Account) -> bool {
    match (who.role, a.role) {
        (Role::Operator, _) => true,
        (Role::Admin, Role::User) => who.sees(&a.name),
        (Role::Admin, _) => who.organisation.is_some() && a.organisation == who.organisation,
        (Role::User, _) => false,
    }
}

fn users_refused() -> Refused {
    Refused::new(
        StatusCode::FORBIDDEN,
        "accounts are for operators and organisations' admins",
    )
}

/// The accounts `who` manages, by name.
pub async fn list(c: &Ctx, who: &Principal) -> Result<Vec<AccountView>, Refused> {
    if who.role == Role::User {
        return Err(users_refused());
    }
    Ok(c.store
        .accounts()
        .await
        .map_err(Refused::store)?
        .iter()
        .filter(|a| manages(who, a))
        .map(view)
        .collect())
}

async fn hashed(password: String) -> Result<String, Refused> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            format!("password: at least {MIN_PASSWORD} characters"),
        ));
    }
    tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(|e| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Whether `name` may name an account at all: at most 254 bytes, no white space or control
/// characters (the role's own rules come on top).
pub fn plain_name(name: &str) -> bool {
    name.len() <= 254 && !name.chars().any(|ch| ch.is_whitespace() || ch.is_control())
}

/// The account called `name` if `who` manages it; else 404, as for anything out of scope.
async fn managed(c: &Ctx, who: &Principal, name: &str) -> Result<Account, Refused> {
    if who.role == Role::User {
        return Err(users_refused());
    }
    c.store
        .account(name.trim())
        .await
        .map_err(Refused::store)?
        .filter(|a| manages(who, a))
        .ok_or_else(|| Refused::not_found(format!("{name}: no such account in your scope")))
}

/// The client domain an account's audit entry is filed under, so that its organisation's
/// admins see it: its address's domain when that is one of the organisation's, else the
/// organisation's first; none for an operator.
async fn audit_domain(c: &Ctx, a: &Account) -> String {
    let Some(o) = &a.organisation else {
        return String::new();
    };
    let domains = match c.store.organisations().await {
        Ok(all) => all
            .into_iter()
            .find(|x| x.name == *o)
            .map(|x| x.domains)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let own = a.name.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    own.filter(|d| domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
        .or_else(|| domains.first().map(|d| d.to_ascii_lowercase()))
        .unwrap_or_default()
}

async fn audit(c: &Ctx, who: &Principal, action: &str, before: Option<&Account>, after: &Account) {
    let shown = |a: &Account| serde_json::to_string(&view(a)).ok();
    let domain = audit_domain(c, after).await;
    crate::audit::record(
        c,
        who,
        crate::audit::Change {
            action,
            object: &after.name,
            domain: &domain,
            before: before.and_then(shown),
            after: shown(after),
        },
    )
    .await;
}

/// Adds an account (409 if the name is taken).
pub async fn add(c: &Ctx, who: &Principal, new: NewAccount) -> Result<AccountView, Refused> {
    let bad = |m: String| Refused::new(StatusCode::BAD_REQUEST, m);
    let organisation = match (who.role, new.role) {
        (Role::User, _) => return Err(users_refused()),
        (Role::Admin, Role::Operator) => {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "operators are added by operators",
            ));
        }
        (Role::Admin, _) => who.organisation.clone(),
        (Role::Operator, Role::Operator) => None,
        (Role::Operator, _) => new.organisation.clone(),
    };
    // Names are kept as login looks them up: trimmed and in lower case (so a name differing
    // only in case is the same account, and taken).
    let name = new.name.trim().to_ascii_lowercase();
    let domains = match (&organisation, new.role) {
        (_, Role::Operator) => Vec::new(),
        (None, _) => return Err(bad("organisation: an admin or a user belongs to one".into())),
        (Some(o), _) => c
            .store
            .organisations()
            .await
            .map_err(Refused::store)?
            .into_iter()
            .find(|x| x.name == *o)
            .ok_or_else(|| bad(format!("organisation: no organisation called {o:?}")))?
            .domains
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
    };
    let at_own = |name: &str| {
        name.rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && domains.iter().any(|x| x == d))
    };
    let valid = plain_name(&name)
        && match new.role {
            Role::Operator => {
                !name.is_empty()
                    && !name.contains('@')
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
            }
            // An operator may name an admin by any address (a contractor's, say); an admin
            // names the admins it adds at its own organisation's domains, as its users.
            Role::Admin if who.role == Role::Operator => name
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.')),
            Role::Admin | Role::User => at_own(&name),
        };
    if !valid {
        return Err(bad(match new.role {
            Role::Operator => "name: an operator's is a plain name (letters, digits, . _ -)".into(),
            Role::Admin if who.role == Role::Operator => {
                "name: an admin is named by an e-mail address, without spaces".into()
            }
            Role::Admin | Role::User => format!(
                "name: an address at one of the organisation's domains ({}), without spaces",
                domains.join(", ")
            ),
        }));
    }
    if c.store
        .account(&name)
        .await
        .map_err(Refused::store)?
        .is_some()
    {
        return Err(Refused::new(
            StatusCode::CONFLICT,
            format!("{name}: an account of that name exists"),
        ));
    }
    let account = Account {
        name,
        role: new.role,
        organisation,
        password: hashed(new.password).await?,
        created: now(),
    };
    c.store
        .set_account(account.clone())
        .await
        .map_err(Refused::store)?;
    tracing::info!(account = %account.name, by = %who.account, "account added");
    audit(c, who, "account.add", None, &account).await;
    Ok(view(&account))
}

/// Stores a changed account and ends its sessions (they were opened under what changed).
async fn replace(c: &Ctx, account: &Account) -> Result<(), Refused> {
    c.store
        .set_account(account.clone())
        .await
        .map_err(Refused::store)?;
    c.store
        .end_sessions(None, Some(&account.name))
        .await
        .map_err(Refused::store)?;
    Ok(())
}

/// Sets an account's password (enabling a disabled one); its sessions end.
pub async fn set_password(
    c: &Ctx,
    who: &Principal,
    name: &str,
    password: String,
) -> Result<(), Refused> {
    let before = managed(c, who, name).await?;
    let account = Account {
        password: hashed(password).await?,
        ..before.clone()
    };
    replace(c, &account).await?;
    audit(c, who, "account.password", Some(&before), &account).await;
    Ok(())
}

/// Disables an account: no password, no session, no API token. (Its name stays taken, and
/// the audit log keeps naming it.)
pub async fn disable(c: &Ctx, who: &Principal, name: &str) -> Result<(), Refused> {
    let before = managed(c, who, name).await?;
    if before.name == who.account {
        return Err(Refused::new(
            StatusCode::CONFLICT,
            "you cannot disable your own account",
        ));
    }
    let account = Account {
        password: String::new(),
        ..before.clone()
    };
    replace(c, &account).await?;
    c.store
        .revoke_tokens(&account.name)
        .await
        .map_err(Refused::store)?;
    tracing::info!(account = %account.name, by = %who.account, "account disabled");
    audit(c, who, "account.disable", Some(&before), &account).await;
    Ok(())
}

/// `GET|POST /api/v1/accounts`, `PUT /api/v1/accounts/{name}/password`,
/// `POST /api/v1/accounts/{name}/disable`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/accounts",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 p: Result<Query<Page>, QueryRejection>| async move {
                    crate::queue::paged(p, list(&c, &who).await, |a| a.name.clone())
                },
            )
            .post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 body: Result<Json<NewAccount>, JsonRejection>| async move {
                    match body {
                        Ok(Json(new)) => match add(&c, &who, new).await {
                            Ok(a) => (StatusCode::CREATED, Json(a)).into_response(),
                            Err(e) => e.into_response(),
                        },
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/v1/accounts/{name}/password",
            put(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>,
                 body: Result<Json<NewPassword>, JsonRejection>| async move {
                    match body {
                        Ok(Json(p)) => set_password(&c, &who, &name, p.password)
                            .await
                            .map(|()| StatusCode::NO_CONTENT)
                            .into_response(),
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/v1/accounts/{name}/disable",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>| async move {
                    disable(&c, &who, &name)
                        .await
                        .map(|()| StatusCode::NO_CONTENT)
                        .into_response()
                },
            ),
        )
}
