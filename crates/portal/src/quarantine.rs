//! The quarantine's part of the API, over the store every node shares: listing (paged and
//! filtered), one message (its headers, its text, the scan's symbols and why it is held;
//! HTML only as text, attachments only listed, never rendered),
//! releasing it (queued again under a new id for its original recipients, not scanned
//! again) and deleting it.
//!
//! Every call answers within the caller's scope: an operator sees all of it, an
//! organisation's admin what is held for its domains, a user what is held for their own
//! address. A message held for no one in scope does not exist for the caller (404); one
//! held also for recipients out of scope is shown with the caller's recipients only, and
//! only an operator may release or delete it (403): it is one copy for all of them.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{Held, HeldFilter, HeldSummary, Role};

use crate::auth::Principal;
use crate::queue::Page;
use crate::{Ctx, Refused, now, refusal};

/// One quarantined message as `GET /api/v1/quarantine/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The text the recipient would read (a plain-text part, or the HTML part as text),
    /// at most [`TEXT_MAX`] characters.
    pub text: String,
    /// Its attachments, named and sized, never rendered.
    pub attachments: Vec<HeldAttachment>,
    /// The scan's symbols, each with its score, reason and time.
    pub symbols: Vec<store::ScanSymbol>,
}

/// One attachment of a held message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeldAttachment {
    pub name: String,
    /// As the message declares it (`application/pdf`).
    pub content_type: String,
    pub size: u64,
}

/// The most of a held message's text a preview shows.
pub const TEXT_MAX: usize = 64 * 1024;

/// A message's text as a preview shows it (HTML converted to text by the parser, never
/// rendered) and its attachments.
fn preview(body: &[u8]) -> (String, Vec<HeldAttachment>) {
    use mail_parser::MimeHeaders;
    let Some(m) = mail_parser::MessageParser::default().parse(body) else {
        return (String::new(), Vec::new());
    };
    let mut text: String = m.body_text(0).unwrap_or_default().into_owned();
    if let Some((cut, _)) = text.char_indices().nth(TEXT_MAX) {
        text.truncate(cut);
        text.push_str("\n[...]");
    }
    let attachments = m
        .attachments()
        .map(|a| HeldAttachment {
            name: a.attachment_name().unwrap_or("(no name)").to_string(),
            content_type: a.content_type().map_or_else(
                || "application/octet-stream".to_string(),
                |t| match t.subtype() {
                    Some(sub) => format!("{}/{sub}", t.ctype()),
                    None => t.ctype().to_string(),
                },
            ),
            size: a.len() as u64,
        })
        .collect();
    (text, attachments)
}

/// A listing's query: the page, and the filters.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
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

impl Refused {
    fn not_held(id: &str) -> Refused {
        Refused::new(
            StatusCode::NOT_FOUND,
            format!("no message {id} in the quarantine"),
        )
    }
}

/// The page of held messages `q` asks for, within the caller's scope; each shows only the
/// caller's recipients.
pub async fn list(c: &Ctx, who: &Principal, q: HeldQuery) -> Result<Vec<HeldSummary>, Refused> {
    let Some(filter) = scope(
        who,
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
        return Ok(Vec::new());
    };
    let page = Page {
        after: q.after,
        limit: q.limit,
    };
    let mut list = c
        .store
        .quarantined(page.after.as_deref(), page.limit(), &filter)
        .await
        .map_err(Refused::store)?;
    for h in &mut list {
        h.recipients.retain(|r| who.sees(r));
    }
    // (The store's scope and `sees` agree; a message left with no one is not shown.)
    list.retain(|h| !h.recipients.is_empty());
    Ok(list)
}

/// The held message if the caller may see it (404 otherwise), with the caller's
/// recipients only, and whether every recipient is the caller's.
async fn visible(c: &Ctx, who: &Principal, id: &str) -> Result<(Held, bool), Refused> {
    let Some(mut h) = c.store.held(id).await.map_err(Refused::store)? else {
        return Err(Refused::not_held(id));
    };
    let all = h.message.recipients.len();
    h.message.recipients.retain(|r| who.sees(&r.address));
    match h.message.recipients.len() {
        0 => Err(Refused::not_held(id)),
        n => Ok((h, n == all)),
    }
}

/// The held message the caller may change, with the caller's recipients only (a message
/// held also for others is changed for the caller's recipients alone), and whether those
/// are all of its recipients.
async fn changeable(c: &Ctx, who: &Principal, id: &str) -> Result<(Held, bool), Refused> {
    visible(c, who, id).await
}

/// One held message as the caller may see it.
pub async fn show(c: &Ctx, who: &Principal, id: &str) -> Result<HeldMessage, Refused> {
    let (h, _) = visible(c, who, id).await?;
    let m = &h.message;
    let end = m
        .body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(m.body.len(), |i| i + 2);
    let (text, attachments) = preview(&m.body);
    // The symbols are the trace's; a trace already expired leaves none.
    let symbols = match c.store.trace(id).await {
        Ok(t) => t.map(|t| t.symbols).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(queue_id = %id, error = %e, "no symbols for the preview");
            Vec::new()
        }
    };
    Ok(HeldMessage {
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
        text,
        attachments,
        symbols,
    })
}

/// Releases a held message: queued again under a new id for its recipients, not scanned
/// again.
pub async fn release(c: &Ctx, who: &Principal, id: &str) -> Result<Released, Refused> {
    let (held, whole) = changeable(c, who, id).await?;
    if held.verdict == "virus" && who.role == Role::User {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "a virus is released by an admin or an operator only",
        ));
    }
    let held_for: Vec<String> = held
        .message
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    let mut copy = held.message;
    copy.id = (c.next_id)();
    copy.next_attempt = now();
    copy.arrival.node = c.node.clone();
    copy.scan = Some(format!(
        "released from the quarantine ({id}), not scanned again"
    ));
    let queued_as = copy.id.clone();
    let done = if whole {
        c.store.release(id, copy, &c.node).await
    } else {
        c.store
            .unhold_for(id, held_for.clone(), Some(copy), &c.node)
            .await
    };
    match done {
        Ok(true) => {
            tracing::info!(queue_id = %id, %queued_as, account = %who.account, "released from the quarantine");
            audit(
                c,
                who,
                "quarantine.release",
                &held_for,
                id,
                Some(&queued_as),
            )
            .await;
            Ok(Released { queued_as })
        }
        Ok(false) => Err(Refused::not_held(id)),
        Err(e) => Err(Refused::store(e)),
    }
}

/// Releases a held message and allows its sender from now on: on each recipient's own allow
/// list for a user, on each recipient domain's for an admin or an operator (an allowed
/// address counts only for mail whose SPF or DMARC passes).
pub async fn release_and_allow(c: &Ctx, who: &Principal, id: &str) -> Result<Released, Refused> {
    let (held, _) = changeable(c, who, id).await?;
    let sender = held.message.sender.to_ascii_lowercase();
    if sender.is_empty() {
        return Err(Refused {
            status: StatusCode::BAD_REQUEST,
            message: "a bounce has no sender to allow".into(),
        });
    }
    // Released first: a release refused (a virus, for a user) changes no list.
    let released = release(c, who, id).await?;
    let domains = crate::settings::domains(&c.store)
        .await
        .map_err(Refused::store)?;
    for r in &held.message.recipients {
        let Some((local, domain)) = r
            .address
            .to_ascii_lowercase()
            .rsplit_once('@')
            .map(|(l, d)| (l.trim_matches('"').to_string(), d.to_string()))
        else {
            continue;
        };
        let user = who.role == Role::User;
        let Some(view) = domains.iter().find(|d| d.name == domain) else {
            continue;
        };
        let allowed = if user {
            view.settings
                .filter
                .users
                .get(&local)
                .is_some_and(|l| l.allow.contains(&sender))
        } else {
            view.settings.filter.allow.contains(&sender)
        };
        if allowed {
            continue;
        }
        crate::settings::change(c, who, &domain, |current| {
            let mut settings = current.cloned().ok_or_else(|| {
                crate::settings::NotSet::Invalid(format!("{domain} is not a client domain"))
            })?;
            let list = if user {
                &mut settings
                    .filter
                    .users
                    .entry(local.clone())
                    .or_default()
                    .allow
            } else {
                &mut settings.filter.allow
            };
            if !list.contains(&sender) {
                list.push(sender.clone());
            }
            Ok(settings)
        })
        .await?;
        tracing::info!(domain = %domain, %sender, account = %who.account, "sender allowed from the quarantine");
    }
    Ok(released)
}

/// Deletes a held message.
pub async fn delete(c: &Ctx, who: &Principal, id: &str) -> Result<(), Refused> {
    let (held, whole) = changeable(c, who, id).await?;
    let held_for: Vec<String> = held
        .message
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    let done = if whole {
        c.store.delete_held(id, &c.node).await
    } else {
        c.store
            .unhold_for(id, held_for.clone(), None, &c.node)
            .await
    };
    match done {
        Ok(true) => {
            tracing::info!(queue_id = %id, account = %who.account, "deleted from the quarantine");
            audit(c, who, "quarantine.delete", &held_for, id, None).await;
            Ok(())
        }
        Ok(false) => Err(Refused::not_held(id)),
        Err(e) => Err(Refused::store(e)),
    }
}

/// Reports a held message: as spam, it is learned as spam and deleted; as not spam (ham),
/// learned as ham and released (`queued_as` then says where).
pub async fn report(
    c: &Ctx,
    who: &Principal,
    id: &str,
    spam: bool,
) -> Result<Option<Released>, Refused> {
    if who.role == Role::User {
        // One user's reports would move the verdicts of every organisation.
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "reports teach the classifier every client shares: an admin's or an operator's call",
        ));
    }
    let (held, _) = changeable(c, who, id).await?;
    (c.learn)(held.message.body.clone(), spam)
        .await
        .map_err(|e| Refused::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let held_for: Vec<String> = held
        .message
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    let action = if spam {
        "quarantine.report-spam"
    } else {
        "quarantine.report-ham"
    };
    audit(c, who, action, &held_for, id, None).await;
    if spam {
        delete(c, who, id).await.map(|()| None)
    } else {
        release(c, who, id).await.map(Some)
    }
}

/// What a bulk call does to each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BulkAction {
    Release,
    Delete,
    ReportSpam,
    ReportHam,
}

/// `POST /api/v1/quarantine/bulk`: one action on many held messages.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    /// At most [`crate::queue::MAX_PAGE`] ids.
    pub ids: Vec<String>,
    pub action: BulkAction,
}

/// What became of one message of a bulk call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BulkResult {
    pub id: String,
    /// The status the single call would have answered.
    pub status: u16,
    /// Why not, when not done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_as: Option<String>,
}

/// Does `b.action` to each of `b.ids`, each within the caller's scope as alone.
pub async fn bulk(c: &Ctx, who: &Principal, b: &Bulk) -> Result<Vec<BulkResult>, Refused> {
    if b.ids.len() > crate::queue::MAX_PAGE {
        return Err(Refused::invalid(format!(
            "at most {} messages at once",
            crate::queue::MAX_PAGE
        )));
    }
    let mut out = Vec::with_capacity(b.ids.len());
    for id in &b.ids {
        let done = match b.action {
            BulkAction::Release => release(c, who, id).await.map(|r| Some(r.queued_as)),
            BulkAction::Delete => delete(c, who, id).await.map(|()| None),
            BulkAction::ReportSpam => report(c, who, id, true).await.map(|_| None),
            BulkAction::ReportHam => report(c, who, id, false)
                .await
                .map(|r| r.map(|r| r.queued_as)),
        };
        out.push(match done {
            Ok(queued_as) => BulkResult {
                id: id.clone(),
                status: 200,
                error: None,
                queued_as,
            },
            Err(e) => BulkResult {
                id: id.clone(),
                status: e.status.as_u16(),
                error: Some(e.message),
                queued_as: None,
            },
        });
    }
    Ok(out)
}

/// Records a quarantine action once per recipient domain (each organisation's admin sees
/// its own).
async fn audit(
    c: &Ctx,
    who: &Principal,
    action: &str,
    recipients: &[String],
    id: &str,
    queued_as: Option<&str>,
) {
    let mut domains: Vec<String> = recipients.iter().map(|r| store::domain_lc(r)).collect();
    domains.sort();
    domains.dedup();
    for d in &domains {
        // Each organisation's entry names its own recipients only.
        let mine: Vec<&String> = recipients
            .iter()
            .filter(|r| store::domain_lc(r) == *d)
            .collect();
        crate::audit::record(
            c,
            who,
            crate::audit::Change {
                action,
                object: id,
                domain: d,
                before: Some(serde_json::json!({ "held_for": mine }).to_string()),
                after: queued_as.map(|q| serde_json::json!({ "queued_as": q }).to_string()),
            },
        )
        .await;
    }
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Released {
    /// The queue id of the copy now queued.
    pub queued_as: String,
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
                    match q {
                        Ok(Query(q)) => list(&c, &who, q).await.map(Json).into_response(),
                        Err(e) => refusal(e.status(), &e.body_text()),
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
                    show(&c, &who, &id).await.map(Json).into_response()
                },
            )
            .delete(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    delete(&c, &who, &id)
                        .await
                        .map(|()| StatusCode::NO_CONTENT)
                        .into_response()
                },
            ),
        )
        .route(
            "/api/v1/quarantine/{id}/release-and-allow",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    release_and_allow(&c, &who, &id)
                        .await
                        .map(Json)
                        .into_response()
                },
            ),
        )
        .route(
            "/api/v1/quarantine/bulk",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 body: Result<Json<Bulk>, JsonRejection>| async move {
                    match body {
                        Ok(Json(b)) => bulk(&c, &who, &b).await.map(Json).into_response(),
                        Err(e) => refusal(e.status(), &e.body_text()),
                    }
                },
            ),
        )
        .route(
            "/api/v1/quarantine/{id}/report-spam",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    report(&c, &who, &id, true)
                        .await
                        .map(|_| StatusCode::NO_CONTENT)
                        .into_response()
                },
            ),
        )
        .route(
            "/api/v1/quarantine/{id}/report-ham",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    match report(&c, &who, &id, false).await {
                        Ok(Some(r)) => Json(r).into_response(),
                        Ok(None) => StatusCode::NO_CONTENT.into_response(),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/api/v1/quarantine/{id}/release",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(id): Path<String>| async move {
                    release(&c, &who, &id).await.map(Json).into_response()
                },
            ),
        )
}
