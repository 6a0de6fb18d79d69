//! The message trace's part of the API, over the store every node shares: finding traces by
//! sender, recipient and time, and one message's trace (its arrival, every scan, action and
//! delivery attempt).
//!
//! Every call answers within the caller's scope, as the quarantine's do: an operator sees
//! every trace, an organisation's admin those of mail for its domains, a user those of mail
//! for their own address; a trace of no one in scope does not exist for the caller (404),
//! and one of mail also for others shows the caller's recipients and their events only.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use store::{Role, Trace, TraceQuery};

use crate::auth::Principal;
use crate::queue::MAX_PAGE;
use crate::{Ctx, Refused, refusal};

/// The traces `q` asks for, within the caller's scope.
pub async fn find(c: &Ctx, who: &Principal, mut q: TraceQuery) -> Result<Vec<Trace>, Refused> {
    if let Some(v) = q
        .verdict
        .as_deref()
        .filter(|v| !store::VERDICTS.contains(v))
    {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            format!(
                "verdict: {v:?} is not one of {}",
                store::VERDICTS.join(", ")
            ),
        ));
    }
    q.limit = if q.limit == 0 {
        100
    } else {
        q.limit.min(MAX_PAGE)
    };
    if q.to.as_ref().is_some_and(|t| !who.sees(t)) {
        return Ok(Vec::new());
    }
    match who.role {
        Role::Operator => {}
        Role::Admin => q.domains = Some(who.domains.clone()),
        Role::User => q.to = Some(who.account.clone()),
    }
    let mut found = c.store.find_traces(&q).await.map_err(Refused::store)?;
    for t in &mut found {
        narrow(who, t);
    }
    // (The store's scope and `sees` agree; a trace left with no one is not shown.)
    found.retain(|t| !t.recipients.is_empty());
    Ok(found)
}

/// A trace with only the caller's recipients and the events that are theirs or the
/// message's own.
fn narrow(who: &Principal, t: &mut Trace) {
    t.recipients.retain(|r| who.sees(r));
    t.events
        .retain(|e| e.recipient.as_deref().is_none_or(|r| who.sees(r)));
}

/// One message's trace, if the caller may see it.
pub async fn one(c: &Ctx, who: &Principal, id: &str) -> Result<Trace, Refused> {
    let gone = || Refused {
        status: StatusCode::NOT_FOUND,
        message: format!("no trace of {id} (unknown, or past its retention)"),
    };
    let mut t = c
        .store
        .trace(id)
        .await
        .map_err(Refused::store)?
        .ok_or_else(gone)?;
    if !t.recipients.iter().any(|r| who.sees(r)) {
        return Err(gone());
    }
    narrow(who, &mut t);
    Ok(t)
}

/// `GET /api/v1/trace?from=&to=&since=&limit=`, `GET /api/v1/trace/{id}`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/trace",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 q: Result<Query<TraceQuery>, QueryRejection>| async move {
                    match q {
                        Ok(Query(q)) => find(&c, &who, q).await.map(Json).into_response(),
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/v1/trace/{id}",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    one(&c, &who, &id).await.map(Json).into_response()
                },
            ),
        )
}
