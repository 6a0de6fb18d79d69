//! The quarantine's part of the API, over the store every node shares: listing (paged),
//! one message (its headers and why it is held, never its body rendered), releasing it
//! (queued again under a new id for its original recipients, not scanned again) and
//! deleting it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use store::HeldSummary;

use crate::queue::Page;
use crate::{Ctx, now, refusal, unavailable};

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
                |State(c): State<Ctx>, p: Result<Query<Page>, QueryRejection>| async move {
                    let p = match p {
                        Ok(Query(p)) => p,
                        Err(e) => return refusal(e.status(), &e.body_text()),
                    };
                    match c.store.quarantined(p.after.as_deref(), p.limit(), &Default::default()).await {
                        Ok(list) => Json::<Vec<HeldSummary>>(list).into_response(),
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
        .route(
            "/api/v1/quarantine/{id}",
            get(|State(c): State<Ctx>, Path(id): Path<String>| async move {
                match c.store.held(&id).await {
                    Ok(Some(h)) => {
                        let m = &h.message;
                        let end = m
                            .body
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map_or(m.body.len(), |i| i + 2);
                        Json(HeldMessage {
                            id: m.id.clone(),
                            sender: m.sender.clone(),
                            recipients: m.recipients.iter().map(|r| r.address.clone()).collect(),
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
                    Ok(None) => not_held(&id),
                    Err(e) => unavailable(e),
                }
            })
            .delete(|State(c): State<Ctx>, Path(id): Path<String>| async move {
                match c.store.delete_held(&id, &c.node).await {
                    Ok(true) => {
                        tracing::info!(queue_id = %id, "deleted from the quarantine by an operator");
                        StatusCode::NO_CONTENT.into_response()
                    }
                    Ok(false) => not_held(&id),
                    Err(e) => unavailable(e),
                }
            }),
        )
        .route(
            "/api/v1/quarantine/{id}/release",
            post(|State(c): State<Ctx>, Path(id): Path<String>| async move {
                let held = match c.store.held(&id).await {
                    Ok(Some(h)) => h,
                    Ok(None) => return not_held(&id),
                    Err(e) => return unavailable(e),
                };
                let mut copy = held.message;
                copy.id = (c.next_id)();
                copy.next_attempt = now();
                copy.arrival.node = c.node.clone();
                copy.scan = Some(format!("released from the quarantine ({id}), not scanned again"));
                let queued_as = copy.id.clone();
                match c.store.release(&id, copy, &c.node).await {
                    Ok(true) => {
                        tracing::info!(queue_id = %id, %queued_as, "released from the quarantine by an operator");
                        Json(Released { queued_as }).into_response()
                    }
                    Ok(false) => not_held(&id),
                    Err(e) => unavailable(e),
                }
            }),
        )
}
