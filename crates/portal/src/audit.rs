//! The audit log: who changed what, when, and the object before and after, for every change
//! made through the API or the pages (client domains and their policies, servers, held
//! mail). An operator reads all of it, an organisation's admin its domains' entries, a user
//! none.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{AuditEntry, Role};

use crate::auth::Principal;
use crate::{Ctx, Refused, now, refusal};

/// One change to record.
pub struct Change<'a> {
    pub action: &'a str,
    pub object: &'a str,
    /// The client domain it concerns; empty for the silo's own objects.
    pub domain: &'a str,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Records a change made by `who`. The change is made already: a log that cannot be
/// written is reported loudly, not turned into a refusal of what was done.
pub async fn record(c: &Ctx, who: &Principal, change: Change<'_>) {
    let entry = AuditEntry {
        seq: 0,
        at: now(),
        actor: who.account.clone(),
        action: change.action.into(),
        object: change.object.into(),
        domain: change.domain.to_lowercase(),
        before: change.before,
        after: change.after,
    };
    if let Err(e) = c.store.audit(entry).await {
        tracing::error!(error = %e, action = change.action, object = change.object, account = %who.account, "the audit log could not be written");
    }
}

/// `GET /api/v1/audit?before=SEQ&limit=N`.
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries older than this one (its `seq`).
    pub before: Option<i64>,
    pub limit: Option<usize>,
}

/// The page of the log `q` asks for, within the caller's scope.
pub async fn entries(c: &Ctx, who: &Principal, q: &AuditQuery) -> Result<Vec<AuditEntry>, Refused> {
    let limit = q.limit.unwrap_or(100).min(crate::queue::MAX_PAGE);
    let scope = match who.role {
        Role::Operator => None,
        Role::Admin => Some(who.domains.as_slice()),
        Role::User => {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "the audit log is for operators and organisations' admins",
            ));
        }
    };
    c.store
        .audit_log(q.before, limit, scope)
        .await
        .map_err(Refused::store)
}

/// `GET /api/v1/audit`.
pub fn routes() -> Router<Ctx> {
    Router::new().route(
        "/api/v1/audit",
        get(
            |State(c): State<Ctx>,
             Extension(who): Extension<Principal>,
             q: Result<Query<AuditQuery>, QueryRejection>| async move {
                match q {
                    Ok(Query(q)) => entries(&c, &who, &q).await.map(Json).into_response(),
                    Err(e) => refusal(e.status(), &e.body_text()),
                }
            },
        ),
    )
}
