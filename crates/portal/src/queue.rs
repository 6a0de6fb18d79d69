//! The queue's part of the API, over the store every node shares: listing (paged), one
//! message, flushing, deleting, returning to the sender.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{Recipient, Summary};

use crate::auth::Principal;
use crate::{Ctx, now, refusal, unavailable};

/// The most entries one page or one search returns.
pub const MAX_PAGE: usize = 1000;

/// A page of a listing (the queue, the quarantine): `?after=ID&limit=N`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

impl Page {
    /// The entries asked for, at most [`MAX_PAGE`] (all of those when not said).
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE)
    }

    /// This page of a listing held whole in memory (domains, accounts, servers): the items
    /// ordered by `key`, those after `after`, at most [`Page::limit`].
    pub fn of<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
        items.sort_by_key(|i| key(i));
        items
            .into_iter()
            .filter(|i| self.after.as_ref().is_none_or(|a| key(i) > *a))
            .take(self.limit())
            .collect()
    }
}

/// A listing held whole, answered as its query asks: the refusal of a malformed query or
/// of the listing itself, else the page ([`Page::of`]) as JSON.
pub fn paged<T: Serialize>(
    p: Result<Query<Page>, QueryRejection>,
    items: Result<Vec<T>, crate::Refused>,
    key: impl Fn(&T) -> String,
) -> axum::response::Response {
    match (p, items) {
        (Err(e), _) => refusal(e.status(), &e.body_text()),
        (_, Err(r)) => r.into_response(),
        (Ok(Query(p)), Ok(items)) => Json(p.of(items, key)).into_response(),
    }
}

/// The queue as the store every node shares holds it now, for `/metrics`: recipients
/// waiting per destination domain (due now, or deferred to a later attempt) and the age
/// of each domain's oldest, and whether the store answered at all.
pub(crate) async fn metrics(c: &Ctx) -> String {
    let mut out = String::new();
    let queued = c.store.queue_by_domain(&store::StatQuery::default()).await;
    metrics::family(
        &mut out,
        "mailsilo_store_up",
        "gauge",
        "1 if the store answered the queue's count for this scrape",
    );
    metrics::sample(&mut out, "mailsilo_store_up", &[], u8::from(queued.is_ok()));
    let queued = queued.unwrap_or_default();
    let name = "mailsilo_queue_recipients";
    metrics::family(
        &mut out,
        name,
        "gauge",
        "Recipients waiting in the queue, by destination domain and state (new: not tried yet; deferred: tried and waiting to retry); the states add up to the whole",
    );
    for q in &queued {
        metrics::sample(
            &mut out,
            name,
            &[("domain", &q.domain), ("state", "new")],
            q.untried(),
        );
        metrics::sample(
            &mut out,
            name,
            &[("domain", &q.domain), ("state", "deferred")],
            q.deferred,
        );
    }
    let name = "mailsilo_queue_oldest_seconds";
    metrics::family(
        &mut out,
        name,
        "gauge",
        "Age of the oldest message waiting for each destination domain",
    );
    let now = now();
    for q in &queued {
        metrics::sample(
            &mut out,
            name,
            &[("domain", &q.domain)],
            (now - q.oldest).max(0),
        );
    }
    out
}

/// One queued message as `GET /api/v1/queue/{id}` shows it (its headers, not its body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueuedMessage {
    pub id: String,
    pub sender: String,
    pub envid: Option<String>,
    pub received_at: i64,
    pub size: u64,
    pub recipients: Vec<Recipient>,
    pub headers: String,
}

/// What a flush did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Flushed {
    pub recipients: usize,
}

/// Records `action` on queued message `m` in the audit log once per recipient domain,
/// with its sender and those recipients.
async fn audit_per_domain(c: &Ctx, who: &Principal, action: &str, m: &store::Message) {
    let mut domains: Vec<String> = m
        .recipients
        .iter()
        .map(|r| store::domain_lc(&r.address))
        .collect();
    domains.sort();
    domains.dedup();
    for d in &domains {
        let mine: Vec<&str> = m
            .recipients
            .iter()
            .filter(|r| store::domain_lc(&r.address) == *d)
            .map(|r| r.address.as_str())
            .collect();
        crate::audit::record(
            c,
            who,
            crate::audit::Change {
                action,
                object: &m.id,
                domain: d,
                before: Some(
                    serde_json::json!({ "sender": m.sender, "recipients": mine }).to_string(),
                ),
                after: None,
            },
        )
        .await;
    }
}

/// Removes a message from the queue as `who` (audited); false if it was not queued.
pub async fn delete(c: &Ctx, who: &Principal, id: &str) -> Result<bool, store::Error> {
    let Some(m) = c.store.get(id).await? else {
        return Ok(false);
    };
    if !c.store.delete(id, &c.node).await? {
        return Ok(false);
    }
    tracing::info!(queue_id = %id, account = %who.account, "deleted from the queue");
    audit_per_domain(c, who, "queue.delete", &m).await;
    Ok(true)
}

/// What a bounce did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Bounced {
    /// The recipients returned to the sender (those still waiting).
    pub recipients: usize,
}

/// The reply text a bounce gives the sender for each recipient it returns.
pub const BOUNCE_REASON: &str = "5.0.0 returned to the sender by the mail provider";

/// Returns a queued message to its sender now, as `who` (audited): its waiting recipients
/// fail and one DSN goes to the sender. `None` if it was not queued; the store's
/// `Conflict` while a node is delivering it.
pub async fn bounce(c: &Ctx, who: &Principal, id: &str) -> Result<Option<usize>, store::Error> {
    let Some(m) = c.store.get(id).await? else {
        return Ok(None);
    };
    let Some(n) = (c.bounce)(id.to_string()).await? else {
        return Ok(None);
    };
    tracing::info!(queue_id = %id, account = %who.account, recipients = n, "returned to the sender");
    audit_per_domain(c, who, "queue.bounce", &m).await;
    Ok(Some(n))
}

/// Makes every deferred recipient due now, as `who` (audited); how many.
pub async fn flush(c: &Ctx, who: &Principal) -> Result<usize, store::Error> {
    let n = c.store.flush(now()).await?;
    tracing::info!(recipients = n, account = %who.account, "queue flushed");
    crate::audit::record(
        c,
        who,
        crate::audit::Change {
            action: "queue.flush",
            object: "queue",
            domain: "",
            before: None,
            after: Some(serde_json::json!({ "recipients": n }).to_string()),
        },
    )
    .await;
    Ok(n)
}

/// `GET /api/v1/queue`, `GET|DELETE /api/v1/queue/{id}`, `POST /api/v1/queue/flush`,
/// `POST /api/v1/queue/{id}/bounce`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/api/v1/queue",
            get(
                |State(c): State<Ctx>, p: Result<Query<Page>, QueryRejection>| async move {
                    let p = match p {
                        Ok(Query(p)) => p,
                        Err(e) => return refusal(e.status(), &e.body_text()),
                    };
                    match c.store.list(p.after.as_deref(), p.limit()).await {
                        Ok(list) => Json::<Vec<Summary>>(list).into_response(),
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
        .route(
            "/api/v1/queue/flush",
            post(
                |State(c): State<Ctx>, Extension(who): Extension<Principal>| async move {
                    match flush(&c, &who).await {
                        Ok(n) => Json(Flushed { recipients: n }).into_response(),
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
        .route(
            "/api/v1/queue/{id}/bounce",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    match bounce(&c, &who, &id).await {
                        Ok(Some(n)) => Json(Bounced { recipients: n }).into_response(),
                        Ok(None) => refusal(
                            StatusCode::NOT_FOUND,
                            &format!("no message {id} in the queue"),
                        ),
                        Err(store::Error::Conflict(why)) => refusal(StatusCode::CONFLICT, &why),
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
        .route(
            "/api/v1/queue/{id}",
            get(|State(c): State<Ctx>, Path(id): Path<String>| async move {
                match c.store.get(&id).await {
                    Ok(Some(m)) => {
                        let end = m
                            .body
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map_or(m.body.len(), |i| i + 2);
                        Json(QueuedMessage {
                            size: m.body.len() as u64,
                            headers: String::from_utf8_lossy(&m.body[..end]).into_owned(),
                            id: m.id,
                            sender: m.sender,
                            envid: m.envid,
                            received_at: m.received_at,
                            recipients: m.recipients,
                        })
                        .into_response()
                    }
                    Ok(None) => refusal(
                        StatusCode::NOT_FOUND,
                        &format!("no message {id} in the queue"),
                    ),
                    Err(e) => unavailable(e),
                }
            })
            .delete(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    match delete(&c, &who, &id).await {
                        Ok(true) => StatusCode::NO_CONTENT.into_response(),
                        Ok(false) => refusal(
                            StatusCode::NOT_FOUND,
                            &format!("no message {id} in the queue"),
                        ),
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
}
