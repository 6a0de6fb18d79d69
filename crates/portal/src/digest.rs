//! Digests: each recipient of newly quarantined mail gets, on its organisation's schedule
//! (`digest.schedule`, or the organisation's own), an e-mail listing those messages, each
//! with a release and a delete link that works without logging in until it expires
//! (`digest.link_lifetime`). A link carries the action, the message, the recipient and its
//! expiry, signed (HMAC-SHA-256) with a secret the store keeps for every node; a link
//! altered in any part, or past its expiry, is refused. Opening a link shows the message
//! and a button: link scanners that fetch every URL of incoming mail change nothing. The
//! action is taken as that recipient (a user): a message also held for others is released
//! or deleted for that recipient alone.
//!
//! The digest goes through the normal queue, with the null sender (nothing bounces back to
//! the quarantine). One node sends each organisation's digest: the store's claim decides.

use std::fmt::Write;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use store::{Arrival, HeldFilter, HeldSummary, NewMessage, NewRecipient, Organisation, Role};

use crate::auth::Principal;
use crate::web::esc;
use crate::{Ctx, Refused, now, refusal};

/// The store's name for the links' signing secret.
const SECRET: &str = "digest-links";
/// The most messages one digest lists (the rest: "and N more").
const MAX_LISTED: usize = 200;
/// How often the schedules are looked at.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A digest link's fields (also the confirmation form's).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub id: String,
    pub to: String,
    pub expires: i64,
    pub sig: String,
}

/// What a digest link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Release,
    Delete,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "release" => Some(Action::Release),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Release => "release",
            Action::Delete => "delete",
        }
    }
}

/// The links' signing key: read from the store once per process (an unauthenticated link
/// must not cost the store a write), stored by the first node that needed one.
async fn key(c: &Ctx) -> Result<Vec<u8>, Refused> {
    static KEY: tokio::sync::OnceCell<Vec<u8>> = tokio::sync::OnceCell::const_new();
    KEY.get_or_try_init(|| async {
        c.store
            .secret(SECRET, crate::auth::secret())
            .await
            .map(String::into_bytes)
            .map_err(Refused::store)
    })
    .await
    .cloned()
}

fn mac(key: &[u8], action: Action, id: &str, to: &str, expires: i64) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(
        format!(
            "mailsilo-digest\0{}\0{id}\0{}\0{expires}",
            action.as_str(),
            to.to_ascii_lowercase()
        )
        .as_bytes(),
    );
    m
}

fn sign(key: &[u8], action: Action, id: &str, to: &str, expires: i64) -> String {
    mac(key, action, id, to, expires)
        .finalize()
        .into_bytes()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether `link` is `action`'s, unaltered (compared in constant time) and not expired.
fn verify(key: &[u8], action: Action, link: &Link, now: i64) -> Result<(), &'static str> {
    let sig: Option<Vec<u8>> = (link.sig.len() == 64)
        .then(|| {
            (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(link.sig.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    let valid = sig.is_some_and(|sig| {
        mac(key, action, &link.id, &link.to, link.expires)
            .verify_slice(&sig)
            .is_ok()
    });
    if !valid {
        return Err("This link is not valid: it was altered or cut short.");
    }
    if link.expires < now {
        return Err("This link has expired: log in to the portal to see your quarantine.");
    }
    Ok(())
}

/// The link to `action` message `id` for recipient `to`.
fn link(base: &str, key: &[u8], action: Action, id: &str, to: &str, expires: i64) -> String {
    let url = crate::web::url;
    format!(
        "{base}/digest/{}?id={}&to={}&expires={expires}&sig={}",
        action.as_str(),
        url(id),
        url(to),
        sign(key, action, id, to, expires)
    )
}

/// Base64 in lines of 76.
fn base64_lines(text: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    b.as_bytes()
        .chunks(76)
        .map(|l| String::from_utf8_lossy(l).into_owned() + "\r\n")
        .collect()
}

/// One recipient's digest as a message (text and HTML alternatives).
/// One recipient's digest: the first [`MAX_LISTED`] of its `total` held messages.
struct Listing {
    held: Vec<HeldSummary>,
    total: usize,
}

/// Why a message is held, in words: its reason, which names its verdict and score when
/// the score decided (`spam (score 8.0): ...`), else with them put before it.
fn held_as(verdict: &str, score: f64, reason: &str) -> String {
    if reason.starts_with(verdict) {
        reason.to_string()
    } else {
        format!("{verdict} (score {score:.1}): {reason}")
    }
}

fn compose(
    c: &Ctx,
    key: &[u8],
    to: &str,
    listing: &Listing,
    (since, now): (i64, i64),
    id: &str,
) -> Vec<u8> {
    let held = &listing.held;
    let d = &c.config.digest;
    let expires = now + d.link_lifetime.as_secs() as i64;
    let base = c
        .config
        .control
        .as_ref()
        .map_or_else(String::new, |k| k.url.clone());
    let when = |t| smtp::date::rfc5322(t);
    let opens = if d.confirm {
        "it opens a page where you confirm"
    } else {
        "opening it does it"
    };
    let (mut text, mut html) = (String::new(), String::new());
    let _ = write!(
        text,
        "{n} new message(s) were held in quarantine for {to} since {since}.\r\n\
         Each link below works without logging in until {until};\r\n\
         {opens}. Release only what you trust: held mail may be dangerous.\r\n\r\n",
        n = listing.total,
        since = when(since),
        until = when(expires),
    );
    let _ = write!(
        html,
        "<!DOCTYPE html><html><body><p>{n} new message(s) were held in quarantine for {to} since {since}. \
         Each link works without logging in until {until}; {opens}. \
         Release only what you trust: held mail may be dangerous.</p><table border=\"1\" cellpadding=\"4\">\
         <tr><th>Received</th><th>From</th><th>Subject</th><th>Why</th><th></th></tr>",
        n = listing.total,
        to = esc(to),
        since = esc(&when(since)),
        until = esc(&when(expires)),
    );
    for (i, h) in held.iter().enumerate() {
        let subject = store::decoded_subject(&h.subject);
        let sender = if h.sender.is_empty() { "<>" } else { &h.sender };
        let why = held_as(&h.verdict, h.score, &h.reason);
        let _ = write!(
            text,
            "{}. {} from {sender}\r\n   Subject: {subject}\r\n   Held as {why}\r\n",
            i + 1,
            when(h.received_at),
        );
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>",
            esc(&when(h.received_at)),
            esc(sender),
            esc(&subject),
            esc(&why)
        );
        if h.verdict == "virus" {
            text.push_str("   A virus: your administrator can release it.\r\n\r\n");
            html.push_str("A virus: your administrator can release it.");
        } else {
            let release = link(&base, key, Action::Release, &h.id, to, expires);
            let delete = link(&base, key, Action::Delete, &h.id, to, expires);
            let _ = write!(
                text,
                "   Release: {release}\r\n   Delete:  {delete}\r\n\r\n"
            );
            let _ = write!(
                html,
                "<a href=\"{}\">Release</a> <a href=\"{}\">Delete</a>",
                esc(&release),
                esc(&delete)
            );
        }
        html.push_str("</td></tr>");
    }
    if listing.total > held.len() {
        let more = listing.total - held.len();
        let _ = write!(
            text,
            "... and {more} more: see the portal, {base}/quarantine\r\n"
        );
        let _ = write!(
            html,
            "<tr><td colspan=\"5\">... and {more} more: see the portal.</td></tr>"
        );
    }
    html.push_str("</table></body></html>");
    let boundary = format!("=_digest_{id}");
    let mut m = format!(
        "From: mailsilo quarantine <{from}>\r\nTo: <{to}>\r\n\
         Subject: {n} message(s) held in quarantine for you\r\nDate: {date}\r\n\
         Message-ID: <digest.{id}@{host}>\r\nAuto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n",
        from = d.from,
        n = listing.total,
        date = when(now),
        host = c.config.smtp.hostname,
    );
    for (kind, body) in [("plain", &text), ("html", &html)] {
        let _ = write!(
            m,
            "--{boundary}\r\nContent-Type: text/{kind}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            base64_lines(body)
        );
    }
    let _ = write!(m, "--{boundary}--\r\n");
    m.into_bytes()
}

/// The schedule's period of `org` in seconds; `None`: off.
fn period(c: &Ctx, org: &Organisation) -> Option<i64> {
    let p = match org.digest.as_deref().map(config::digest_period) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            tracing::warn!(organisation = %org.name, error = %e, "the organisation's digest schedule is refused; the default applies");
            c.config.digest.period
        }
        None => c.config.digest.period,
    };
    p.map(|d| d.as_secs() as i64)
}

/// Sends `org`'s digests of mail held since `since`: one message per recipient at its
/// domains; returns how many were queued. (Times are in seconds: mail held in the second of
/// a digest may be listed in the next one too, never in none.)
async fn send(c: &Ctx, org: &Organisation, since: i64, now: i64) -> Result<usize, Refused> {
    let filter = HeldFilter {
        domains: Some(org.domains.clone()),
        since: Some(since),
        ..HeldFilter::default()
    };
    // Page by page, each recipient keeping its first MAX_LISTED and a count: memory stays
    // bounded however much was held.
    let mut by_recipient: std::collections::BTreeMap<String, Listing> = Default::default();
    let mut after: Option<String> = None;
    loop {
        let page = c
            .store
            .quarantined(after.as_deref(), crate::queue::MAX_PAGE, &filter)
            .await
            .map_err(Refused::store)?;
        let full = page.len() == crate::queue::MAX_PAGE;
        after = page.last().map(|h| h.id.clone());
        for h in page {
            for r in &h.recipients {
                let ours = store::domain_lc(r);
                if !org.domains.contains(&ours) {
                    continue;
                }
                let l = by_recipient.entry(r.clone()).or_insert(Listing {
                    held: Vec::new(),
                    total: 0,
                });
                l.total += 1;
                if l.held.len() < MAX_LISTED {
                    l.held.push(h.clone());
                }
            }
        }
        if !full {
            break;
        }
    }
    let key = key(c).await?;
    let mut sent = 0;
    for (to, listing) in &by_recipient {
        let id = (c.next_id)();
        let body = compose(c, &key, to, listing, (since, now), &id);
        let message = NewMessage {
            id: id.clone(),
            sender: String::new(),
            recipients: vec![NewRecipient {
                address: to.clone(),
                notify: 0,
                orcpt: None,
            }],
            envid: None,
            ret: None,
            received_at: now,
            next_attempt: now,
            body: store::Bytes::from(body),
            arrival: Arrival {
                client: "127.0.0.1".into(),
                helo: "portal".into(),
                tls: None,
                server: "portal".into(),
                node: c.node.clone(),
            },
            scan: Some(format!("quarantine digest of {} message(s)", listing.total)),
            verdict: None,
            symbols: Vec::new(),
        };
        c.store
            .enqueue(message, None)
            .await
            .map_err(Refused::store)?;
        tracing::info!(queue_id = %id, to = %to, messages = listing.total, organisation = %org.name, "digest queued");
        sent += 1;
    }
    Ok(sent)
}

/// Sends every organisation's digest that is due (or, with `force`, every one now, covering
/// the time since its last digest); returns how many digests were queued.
pub async fn send_due(c: &Ctx, force: bool, only: Option<&str>) -> Result<usize, Refused> {
    let now = now();
    let orgs = c.store.organisations().await.map_err(Refused::store)?;
    if let Some(name) = only
        && !orgs.iter().any(|o| o.name == name)
    {
        return Err(Refused::not_found(format!("no organisation {name:?}")));
    }
    let mut sent = 0;
    for org in orgs.iter().filter(|o| only.is_none_or(|n| n == o.name)) {
        let period = period(c, org);
        let (due_after, first) = match (period, force) {
            (Some(p), false) => (p, now - p),
            (None, false) => continue,
            (p, true) => (0, now - p.unwrap_or(86400)),
        };
        let Some(since) = c
            .store
            .claim_digest(&org.name, now, due_after, first)
            .await
            .map_err(Refused::store)?
        else {
            continue;
        };
        sent += send(c, org, since, now).await?;
    }
    Ok(sent)
}

/// Sends the due digests until `shutdown`.
pub async fn follow(c: Ctx, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = send_due(&c, false, None).await {
            tracing::warn!(error = %e.message, "sending digests failed; tried again in a minute");
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// `POST /api/v1/digests` (an operator's): `{"organisation": NAME}` or `{}` for every one.
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendNow {
    #[serde(default)]
    pub organisation: Option<String>,
}

/// What a send did.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
pub struct Sent {
    pub digests: usize,
}

/// The recipient a link acts as (the link is signed for its address, at its domain).
fn recipient(link: &Link) -> Principal {
    Principal {
        account: link.to.clone(),
        role: Role::User,
        organisation: None,
        domains: link
            .to
            .rsplit_once('@')
            .map(|(_, d)| vec![d.to_ascii_lowercase()])
            .unwrap_or_default(),
        csrf: None,
        session: None,
    }
}

fn link_page(status: StatusCode, title: &str, body: &str) -> Response {
    let mut r = crate::web::page(title, None, body);
    *r.status_mut() = status;
    r
}

/// Whether `link` is a valid, unexpired `action` link; else the page that says why not.
async fn checked(c: &Ctx, action: Action, link: &Link) -> Result<(), Response> {
    let key = key(c)
        .await
        .map_err(|e| link_page(e.status, "Unavailable", &esc(&e.message)))?;
    verify(&key, action, link, now()).map_err(|why| {
        link_page(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!("<p class=\"error\" role=\"alert\">{why}</p>"),
        )
    })
}

/// The page a link opens: the message, and the button that does it.
async fn confirm(c: &Ctx, action: Action, link: &Link) -> Response {
    if let Err(refused) = checked(c, action, link).await {
        return refused;
    }
    let shown = match crate::quarantine::show(c, &recipient(link), &link.id).await {
        Ok(m) => m,
        Err(e) => {
            return link_page(
                e.status,
                "Not found",
                &format!("<p class=\"error\" role=\"alert\">{}</p>", esc(&e.message)),
            );
        }
    };
    let verb = match action {
        Action::Release => "Release",
        Action::Delete => "Delete",
    };
    let subject = shown
        .headers
        .split("\r\n")
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("subject"))
        })
        .map(|(_, v)| store::decoded_subject(v.trim()))
        .unwrap_or_default();
    let body = format!(
        "<p>Held for {to}: from {from}, subject <q>{subject}</q>, as {why}.</p>\
         <form method=\"post\" action=\"/digest/{a}\">\
         <input type=\"hidden\" name=\"id\" value=\"{id}\"><input type=\"hidden\" name=\"to\" value=\"{to}\">\
         <input type=\"hidden\" name=\"expires\" value=\"{expires}\"><input type=\"hidden\" name=\"sig\" value=\"{sig}\">\
         <button type=\"submit\">{verb} this message</button></form>",
        to = esc(&link.to),
        from = esc(&shown.sender),
        subject = esc(&subject),
        why = esc(&held_as(&shown.verdict, shown.score, &shown.reason)),
        a = action.as_str(),
        id = esc(&link.id),
        expires = link.expires,
        sig = esc(&link.sig),
    );
    link_page(StatusCode::OK, &format!("{verb} a held message"), &body)
}

/// The button's work: the action, as the link's recipient.
async fn act(c: &Ctx, action: Action, link: &Link) -> Response {
    if let Err(refused) = checked(c, action, link).await {
        return refused;
    }
    let who = recipient(link);
    let done = match action {
        Action::Release => crate::quarantine::release(c, &who, &link.id)
            .await
            .map(|r| {
                format!(
                    "Released: the message is on its way (queued as {}).",
                    r.queued_as
                )
            }),
        Action::Delete => crate::quarantine::delete(c, &who, &link.id)
            .await
            .map(|()| "Deleted.".to_string()),
    };
    match done {
        Ok(text) => {
            tracing::info!(queue_id = %link.id, to = %link.to, action = action.as_str(), "done through a digest link");
            link_page(
                StatusCode::OK,
                "Done",
                &format!("<p class=\"notice\" role=\"status\">{}</p>", esc(&text)),
            )
        }
        Err(e) => link_page(
            e.status,
            "Not done",
            &format!("<p class=\"error\" role=\"alert\">{}</p>", esc(&e.message)),
        ),
    }
}

/// `GET|POST /digest/{release|delete}` (public: the signature is the credential; `GET`
/// shows the confirmation page, or acts under `digest.confirm = false`) and
/// `POST /api/v1/digests`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/digest/{action}",
            get(
                |State(c): State<Ctx>,
                 method: axum::http::Method,
                 Path(action): Path<String>,
                 q: Result<Query<Link>, QueryRejection>| async move {
                    // HEAD (link checkers, prefetchers) never acts.
                    let one_click = !c.config.digest.confirm && method == axum::http::Method::GET;
                    match (Action::parse(&action), q) {
                        (Some(a), Ok(Query(link))) if one_click => act(&c, a, &link).await,
                        (Some(a), Ok(Query(link))) => confirm(&c, a, &link).await,
                        _ => link_page(StatusCode::NOT_FOUND, "Not found", "<p>No such link.</p>"),
                    }
                },
            )
            .post(
                |State(c): State<Ctx>,
                 Path(action): Path<String>,
                 f: Result<Form<Link>, FormRejection>| async move {
                    match (Action::parse(&action), f) {
                        (Some(a), Ok(Form(link))) => act(&c, a, &link).await,
                        _ => link_page(StatusCode::NOT_FOUND, "Not found", "<p>No such link.</p>"),
                    }
                },
            ),
        )
        .route(
            "/api/v1/digests",
            post(
                |State(c): State<Ctx>, body: Result<Json<SendNow>, axum::extract::rejection::JsonRejection>| async move {
                    let b = match body {
                        Ok(Json(b)) => b,
                        Err(e) => return refusal(e.status(), &e.body_text()),
                    };
                    match send_due(&c, true, b.organisation.as_deref()).await {
                        Ok(n) => Json(Sent { digests: n }).into_response(),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_of(url: &str) -> Link {
        let q = url.split_once('?').unwrap().1;
        let get = |k: &str| {
            q.split('&')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap()
                .replace("%40", "@")
        };
        Link {
            id: get("id"),
            to: get("to"),
            expires: get("expires").parse().unwrap(),
            sig: get("sig"),
        }
    }

    #[test]
    fn why_a_message_is_held_says_its_verdict_once() {
        assert_eq!(
            held_as("spam", 8.0, "spam (score 8.0): TEST_HOLD"),
            "spam (score 8.0): TEST_HOLD"
        );
        assert_eq!(held_as("virus", 0.0, "virus: Eicar"), "virus: Eicar");
        assert_eq!(
            held_as("spam", 1.5, "the sender is on the domain's block list"),
            "spam (score 1.5): the sender is on the domain's block list"
        );
    }

    #[test]
    fn links_are_signed_per_action_message_recipient_and_expiry() {
        let key = b"k".repeat(32);
        let url = link(
            "https://p",
            &key,
            Action::Release,
            "Q1",
            "a@example.com",
            1000,
        );
        assert!(
            url.starts_with("https://p/digest/release?id=Q1&to=a%40example.com&expires=1000&sig=")
        );
        let good = link_of(&url);
        assert_eq!(verify(&key, Action::Release, &good, 999), Ok(()));
        assert!(
            verify(&key, Action::Release, &good, 1001)
                .unwrap_err()
                .contains("expired")
        );
        assert!(
            verify(&key, Action::Delete, &good, 999).is_err(),
            "another action"
        );
        for altered in [
            Link {
                id: "Q2".into(),
                ..good.clone()
            },
            Link {
                to: "b@example.com".into(),
                ..good.clone()
            },
            Link {
                expires: 5000,
                ..good.clone()
            },
            Link {
                sig: good.sig[..63].to_string(),
                ..good.clone()
            },
            Link {
                sig: "zz".repeat(32),
                ..good.clone()
            },
        ] {
            assert!(
                verify(&key, Action::Release, &altered, 999)
                    .unwrap_err()
                    .contains("not valid")
            );
        }
        assert!(verify(b"other", Action::Release, &good, 999).is_err());
        // The recipient's case does not matter (addresses' domains are case-blind).
        let upper = Link {
            to: "A@EXAMPLE.COM".into(),
            ..good
        };
        assert_eq!(verify(&key, Action::Release, &upper, 999), Ok(()));
    }
}
