//! The quarantine's part of the API, over the store every node shares: listing (paged and
//! filtered), one message (its headers and why it is held, never its body rendered),
//! releasing it (queued again under a new id for its original recipients, not scanned
//! again) and deleting it.
//!
//! Every call answers within the caller's scope: an operator sees all of it, an
//! organisation's admin what is held for its domains, a user what is held for their own
//! address. A message held for no one in scope does not exist for the caller (404); one
//! held also for recipients out of scope is shown with the caller's recipients only, and
//! only an operator may release or delete it (403): it is one copy for all of them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{Held, HeldFilter, HeldSummary, Role};

use crate::auth::Principal;
use crate::queue::Page;
use crate::{Ctx, now, refusal, unavailable};

/// A listing's query: the page, and the filters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
    /// Held for this address.
    pub recipient: Option<String>,
    /// The sender contains this.
    pub sender: Option<String>,
    pub verdict: Option<String>,
    /// Received at or after, and before (Unix seconds).
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub min_score: Option<f64>,
}

/// The caller's scope as a store filter; `None` when the filter asks for mail out of it
/// (a recipient that is not the caller's), which finds nothing.
fn scope(p: &Principal, mut f: HeldFilter) -> Option<HeldFilter> {
    if f.address.as_ref().is_some_and(|a| !p.sees(a)) {
        return None;
    }
    match p.role {
        Role::Operator => {}
        // The recipient asked for (in scope) narrows the organisation's domains further.
        Role::Admin if f.address.is_none() => f.domains = Some(p.domains.clone()),
        Role::Admin => {}
        Role::User => f.address = Some(p.account.clone()),
    }
    Some(f)
}

/// The held message if the caller may see it (a 404 otherwise), and whether every one of
/// its recipients is the caller's.
async fn visible(c: &Ctx, p: &Principal, id: &str) -> Result<(Held, bool), Response> {
    match c.store.held(id).await {
        Ok(Some(h)) => {
            let seen = h
                .message
                .recipients
                .iter()
                .filter(|r| p.sees(&r.address))
                .count();
            if seen == 0 {
                return Err(not_held(id));
            }
            let all = seen == h.message.recipients.len();
            Ok((h, all))
        }
        Ok(None) => Err(not_held(id)),
        Err(e) => Err(unavailable(e)),
    }
}

/// A 403 for a change to a message also held for others.
fn shared(id: &str) -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        &format!("{id} is held for other recipients too: an operator can release or delete it"),
    )
}

/// One quarantined message as `GET /api/v1/quarantine/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldMessage {
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub received_at: i64,
    pub size: u64,
    pub verdict: String,
    pub score: f64,
    pub reason: String,
    pub client: String,
    pub headers: String,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The queue id of the copy now queued.
    pub queued_as: String,
}

fn not_held(id: &str) -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        &format!("no message {id} in the quarantine"),
    )
}

/// `GET /api/v1/quarantine`, `GET|DELETE /api/v1/quarantine/{id}`,
/// `POST /api/v1/quarantine/{id}/release`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/quarantine",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 q: Result<Query<HeldQuery>, QueryRejection>| async move {
                    let q = match q {
                        Ok(Query(q)) => q,
                        Err(e) => return refusal(e.status(), &e.body_text()),
                    };
                    let Some(filter) = scope(
                        &who,
                        HeldFilter {
                            domains: None,
                            address: q.recipient,
                            sender: q.sender,
                            verdict: q.verdict,
                            since: q.since,
                            until: q.until,
                            min_score: q.min_score,
                        },
                    ) else {
                        return Json(Vec::<HeldSummary>::new()).into_response();
                    };
                    let page = Page {
                        after: q.after,
                        limit: q.limit,
                    };
                    match c
                        .store
                        .quarantined(page.after.as_deref(), page.limit(), &filter)
                        .await
                    {
                        Ok(mut list) => {
                            for h in &mut list {
                                h.recipients.retain(|r| who.sees(r));
                            }
                            Json::<Vec<HeldSummary>>(list).into_response()
                        }
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
        .route(
            "/api/v1/quarantine/{id}",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                match visible(&c, &who, &id).await {
                    Ok((h, _)) => {
                        let m = &h.message;
                        let end = m
                            .body
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map_or(m.body.len(), |i| i + 2);
                        Json(HeldMessage {
                            id: m.id.clone(),
                            sender: m.sender.clone(),
                            recipients: m
                                .recipients
                                .iter()
                                .map(|r| r.address.clone())
                                .filter(|r| who.sees(r))
                                .collect(),
                            received_at: m.received_at,
                            size: m.body.len() as u64,
                            verdict: h.verdict.clone(),
                            score: h.score,
                            reason: h.reason.clone(),
                            client: m.arrival.client.clone(),
                            headers: String::from_utf8_lossy(&m.body[..end]).into_owned(),
                        })
                        .into_response()
                    }
                    Err(r) => r,
                }
            })
            .delete(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                match visible(&c, &who, &id).await {
                    Ok((_, true)) => {}
                    Ok((_, false)) => return shared(&id),
                    Err(r) => return r,
                }
                match c.store.delete_held(&id, &c.node).await {
                    Ok(true) => {
                        tracing::info!(queue_id = %id, account = %who.account, "deleted from the quarantine");
                        StatusCode::NO_CONTENT.into_response()
                    }
                    Ok(false) => not_held(&id),
                    Err(e) => unavailable(e),
                }
            }),
        )
        .route(
            "/api/v1/quarantine/{id}/release",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                let held = match visible(&c, &who, &id).await {
                    Ok((h, true)) => h,
                    Ok((_, false)) => return shared(&id),
                    Err(r) => return r,
                };
                let mut copy = held.message;
                copy.id = (c.next_id)();
                copy.next_attempt = now();
                copy.arrival.node = c.node.clone();
                copy.scan = Some(format!("released from the quarantine ({id}), not scanned again"));
                let queued_as = copy.id.clone();
                match c.store.release(&id, copy, &c.node).await {
                    Ok(true) => {
                        tracing::info!(queue_id = %id, %queued_as, account = %who.account, "released from the quarantine");
                        Json(Released { queued_as }).into_response()
                    }
                    Ok(false) => not_held(&id),
                    Err(e) => unavailable(e),
                }
            }),
        )
}
