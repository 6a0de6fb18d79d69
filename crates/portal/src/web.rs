//! The portal's web pages, rendered on the server as plain HTML forms (no script, no
//! external resource: the portal works offline and on a phone): the login, and the
//! quarantine with its filters and its release and delete buttons. They call the same
//! operations as the API, within the same scopes.
//!
//! A page's form posts carry the session's CSRF token as a hidden field, checked here (the
//! API's calls carry it in a header instead); the login form refuses posts whose `Origin`
//! is another site. Every page is sent with a content security policy that allows no
//! script, no frame and forms only to the portal itself.

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use store::Role;

use crate::auth::{Principal, Throttle};
use crate::login::{LoginRefused, session_cookie, start_session};
use crate::quarantine::{self, HeldQuery};
use crate::{Ctx, Peer, same};

/// `s` with HTML's special characters escaped (for text and quoted attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` for a URL's query.
pub(crate) fn url(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{display:flex;flex-wrap:wrap;gap:1em;align-items:center;padding:.6em 1em;background:#22313f;color:#fff}\
header a{color:#fff}nav a{margin-right:1em}header button{color:#22313f;background:#fff;border:1px solid #fff}main{padding:1em;max-width:72em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4em;border-bottom:1px solid #ddd;vertical-align:top}\
td.actions form{display:inline}button{padding:.3em .8em;margin:.1em}\
label{display:block;margin:.4em 0 .1em}input{padding:.35em;max-width:100%}\
.notice{padding:.5em;background:#e7f3e7;border:1px solid #9c9}\
.silo{border:2px solid #22313f;padding:.6em;margin:.6em 0}.clusters{display:flex;flex-wrap:wrap;gap:.8em}\
.chart{width:100%;max-width:46em;height:auto;background:#fff;border:1px solid #ccc}.stat{margin:1em 0}\
.cluster{border:1px solid #999;padding:.5em;min-width:16em;background:#fff}.down{color:#a00;font-weight:bold}.up{color:#070}.error{padding:.5em;background:#fbeaea;border:1px solid #d99}\
@media (max-width:40em){thead{display:none}tr{display:block;border-bottom:2px solid #ccc}td{display:block;border:none}}";

/// A whole page: the header (who is logged in, the navigation, the logout) and `body`.
pub(crate) fn page(title: &str, who: Option<&Principal>, body: &str) -> Response {
    let nav = match who {
        Some(p) => format!(
            "<nav aria-label=\"Portal\">{}<a href=\"/quarantine\">Quarantine</a><a href=\"/lists\">Lists</a><a href=\"/trace\">Trace</a>{}</nav>\
             <span>{} ({})</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>",
            if p.role == Role::Operator {
                "<a href=\"/silo\">Silo</a> <a href=\"/queue\">Queue</a>"
            } else {
                ""
            },
            if p.role == Role::User {
                ""
            } else {
                "<a href=\"/stats\">Statistics</a><a href=\"/domains\">Domains</a><a href=\"/accounts\">Accounts</a><a href=\"/organisations\">Organisations</a><a href=\"/audit\">Audit</a>"
            },
            esc(&p.account),
            p.role.as_str(),
            esc(p.csrf.as_deref().unwrap_or(""))
        ),
        None => String::new(),
    };
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} - mailsilo</title><style>{STYLE}</style></head>\
         <body><header><strong>mailsilo</strong>{nav}</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    );
    let mut r = Html(html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn error_page(status: StatusCode, message: &str, who: Option<&Principal>) -> Response {
    let mut r = page(
        "Refused",
        who,
        &format!(
            "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/quarantine\">Back</a></p>",
            esc(message)
        ),
    );
    *r.status_mut() = status;
    r
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

fn login_page(message: Option<&str>, status: StatusCode) -> Response {
    let notice = message.map_or(String::new(), |m| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m))
    });
    let mut r = page(
        "Log in",
        None,
        &format!(
            "{notice}<form method=\"post\" action=\"/login\">\
             <label for=\"name\">Name or address</label>\
             <input id=\"name\" name=\"name\" autocomplete=\"username\" required autofocus>\
             <label for=\"password\">Password</label>\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
             <p><button type=\"submit\">Log in</button></p></form>"
        ),
    );
    *r.status_mut() = status;
    r
}

/// Whether a form post comes from the portal's own pages: its `Origin`, when sent, names
/// the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// A form's token is the caller's session's CSRF token.
pub(crate) fn token_ok(who: &Principal, given: &str) -> bool {
    who.csrf
        .as_deref()
        .is_some_and(|t| same(given.as_bytes(), t.as_bytes()))
}

/// The caller's CSRF token matches the form's.
fn csrf_ok(who: &Principal, form: &Result<Form<CsrfForm>, FormRejection>) -> bool {
    form.as_ref().is_ok_and(|Form(f)| token_ok(who, &f.csrf))
}

/// A posted form, once it read and carries the session's CSRF token (`csrf` finds it).
pub(crate) fn accepted<T>(
    who: &Principal,
    form: Result<Form<T>, FormRejection>,
    csrf: impl Fn(&T) -> &String,
) -> Option<T> {
    form.ok()
        .map(|Form(f)| f)
        .filter(|f| token_ok(who, csrf(f)))
}

/// A form's page: 400 when it says what was wrong with what was sent.
pub(crate) fn form_page(title: &str, who: &Principal, body: &str, wrong: bool) -> Response {
    let mut r = page(title, Some(who), body);
    if wrong {
        *r.status_mut() = StatusCode::BAD_REQUEST;
    }
    r
}

/// The query parameter that carries a notice of what was done to the page a form's
/// redirect goes to: its text sealed to the caller's session (an HMAC keyed by the
/// session's CSRF token), so a link made elsewhere cannot put words on a portal page.
pub(crate) fn done_param(who: &Principal, text: &str) -> String {
    format!("done={}", url(&format!("{}.{text}", seal(who, text))))
}

fn seal(who: &Principal, text: &str) -> String {
    use hmac::{KeyInit, Mac};
    let key = who.csrf.as_deref().unwrap_or("");
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC takes any key length");
    m.update(text.as_bytes());
    m.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text of a `done` parameter made by [`done_param`] for this session; `None` for
/// anything else.
pub(crate) fn unseal(who: &Principal, done: Option<&str>) -> Option<String> {
    let (mac, text) = done?.split_once('.')?;
    (who.csrf.is_some() && mac == seal(who, text)).then(|| text.to_string())
}

/// The paragraphs above a form: what was done, and what was wrong.
pub(crate) fn notices(done: Option<&str>, wrong: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(done) = done {
        out.push_str(&format!(
            "<p class=\"notice\" role=\"status\">{}</p>",
            esc(done)
        ));
    }
    if let Some(wrong) = wrong {
        out.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            esc(wrong)
        ));
    }
    out
}

pub(crate) fn forbidden_form(who: &Principal) -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form has expired or came from elsewhere: reload the page and try again.",
        Some(who),
    )
}

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/",
            get(|Extension(who): Extension<Principal>| async move {
                Redirect::to(if who.role == Role::Operator {
                    "/silo"
                } else {
                    "/quarantine"
                })
            }),
        )
        .route("/silo", get(silo_page))
        .route("/silo/{cluster}", post(server_add))
        .route("/silo/{cluster}/{server}/{what}", post(server_change))
        .route(
            "/login",
            get(|| async { login_page(None, StatusCode::OK) }).post(web_login),
        )
        .route(
            "/logout",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 form: Result<Form<CsrfForm>, FormRejection>| async move {
                    if !csrf_ok(&who, &form) {
                        return forbidden_form(&who);
                    }
                    if let Some(key) = &who.session
                        && let Err(e) = c.store.end_sessions(Some(key), None).await
                    {
                        return error_page(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &e.to_string(),
                            Some(&who),
                        );
                    }
                    (
                        [(header::SET_COOKIE, session_cookie("", c.secure))],
                        Redirect::to("/login"),
                    )
                        .into_response()
                },
            ),
        )
        .route("/quarantine", get(quarantine_page))
        .route(
            "/lists",
            get(lists_page)
                .post(lists_save)
                .layer(DefaultBodyLimit::max(crate::lists::MAX_LISTS_BODY)),
        )
        .route("/accounts", get(accounts_page).post(account_add))
        .route("/accounts/{name}/{what}", post(account_change))
        .route(
            "/organisations",
            get(organisations_page).post(organisation_set),
        )
        .route("/quarantine/{id}", get(quarantine_one_page))
        .route("/trace", get(trace_page))
        .route(
            "/stats",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 q: Result<Query<crate::stats::StatsQuery>, QueryRejection>| async move {
                    let Ok(Query(q)) = q else {
                        return error_page(StatusCode::BAD_REQUEST, "Bad query.", Some(&who));
                    };
                    match crate::stats::gather(&c, &who, &q).await {
                        Ok(s) => page(
                            "Statistics",
                            Some(&who),
                            &crate::stats::page_body(&s, &who, &q),
                        ),
                        Err(e) => error_page(e.status, &e.message, Some(&who)),
                    }
                },
            ),
        )
        .route("/trace/{id}", get(trace_one_page))
        .route("/quarantine/bulk", post(quarantine_bulk))
        .route("/queue", get(queue_page))
        .route("/queue/{*what}", post(queue_action))
        .route("/quarantine/{id}/{action}", post(quarantine_action))
}

async fn web_login(
    State(c): State<Ctx>,
    Extension(peer): Extension<Peer>,
    Extension(throttle): Extension<Arc<Throttle>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return login_page(
            Some("This login form came from another site."),
            StatusCode::FORBIDDEN,
        );
    }
    let Ok(Form(f)) = form else {
        return login_page(
            Some("Write a name and a password."),
            StatusCode::BAD_REQUEST,
        );
    };
    match start_session(&c, &throttle, peer, &f.name, f.password).await {
        Ok((secret, _)) => (
            [(header::SET_COOKIE, session_cookie(&secret, c.secure))],
            Redirect::to("/"),
        )
            .into_response(),
        Err(LoginRefused::Throttled(wait)) => login_page(
            Some(&format!(
                "Too many login attempts: try again in {} minutes.",
                wait.div_ceil(60)
            )),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Err(LoginRefused::Wrong) => {
            login_page(Some("Wrong name or password."), StatusCode::UNAUTHORIZED)
        }
        Err(LoginRefused::Busy) => login_page(
            Some("Too many logins under way: try again in a moment."),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Err(LoginRefused::Store(e)) => login_page(
            Some(&format!("The portal cannot reach its store: {e}")),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    }
}

/// The quarantine page's query: the listing's filters, and the notice of the last action.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    recipient: Option<String>,
    sender: Option<String>,
    verdict: Option<String>,
    /// Days (`YYYY-MM-DD`, UTC), the end's day included.
    since: Option<String>,
    until: Option<String>,
    /// The least score shown.
    score: Option<String>,
    after: Option<String>,
    done: Option<String>,
}

pub(crate) fn unix_time(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
    .replace('T', " ")
    .replace('Z', " UTC")
}

async fn quarantine_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let blank = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let mut wrong = Vec::new();
    let (since, until) = day_range(&q.since, &q.until, &mut wrong);
    let min_score = match blank(&q.score).map(|v| v.trim().parse::<f64>()) {
        Some(Ok(v)) if v.is_finite() => Some(v),
        Some(_) => {
            wrong.push("Score at least: write a number, such as 6 or 7.5".into());
            None
        }
        None => None,
    };
    let held = if wrong.is_empty() {
        quarantine::list(
            &c,
            &who,
            HeldQuery {
                after: blank(&q.after),
                limit: Some(PAGE),
                recipient: blank(&q.recipient),
                sender: blank(&q.sender),
                verdict: blank(&q.verdict),
                since,
                until,
                min_score,
            },
        )
        .await
    } else {
        Ok(Vec::new())
    };
    let held = match held {
        Ok(h) => h,
        Err(e) => return error_page(e.status, &e.message, Some(&who)),
    };
    let csrf = esc(who.csrf.as_deref().unwrap_or(""));
    let value = |s: &Option<String>| esc(s.as_deref().unwrap_or(""));
    let mut body = String::new();
    body.push_str(&notices(unseal(&who, q.done.as_deref()).as_deref(), None));
    let scope = match who.role {
        Role::Operator => "all held mail".to_string(),
        Role::Admin => format!("mail held for {}", who.domains.join(", ")),
        Role::User => format!("mail held for {}", who.account),
    };
    body.push_str(&format!(
        "<p>Showing {}.</p>\
         <form method=\"get\" action=\"/quarantine\" aria-label=\"Filter\">\
         <label for=\"recipient\">Recipient</label><input id=\"recipient\" name=\"recipient\" value=\"{}\">\
         <label for=\"sender\">Sender contains</label><input id=\"sender\" name=\"sender\" value=\"{}\">\
         <label for=\"verdict\">Verdict</label><input id=\"verdict\" name=\"verdict\" value=\"{}\" list=\"verdicts\">\
         <datalist id=\"verdicts\"><option value=\"spam\"><option value=\"phishing\"><option value=\"virus\"><option value=\"policy\"></datalist>\
         <label for=\"since\">From day</label><input id=\"since\" name=\"since\" type=\"date\" value=\"{}\">\
         <label for=\"until\">To day</label><input id=\"until\" name=\"until\" type=\"date\" value=\"{}\">\
         <label for=\"score\">Score at least</label><input id=\"score\" name=\"score\" inputmode=\"decimal\" value=\"{}\">\
         <p><button type=\"submit\">Filter</button></p></form>",
        esc(&scope),
        value(&q.recipient),
        value(&q.sender),
        value(&q.verdict),
        value(&q.since),
        value(&q.until),
        value(&q.score)
    ));
    for w in &wrong {
        body.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", esc(w)));
    }
    if held.is_empty() {
        body.push_str("<p>Nothing is held.</p>");
    } else {
        body.push_str(&format!(
            "<form id=\"bulk\" method=\"post\" action=\"/quarantine/bulk\" aria-label=\"Selected messages\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label for=\"bulk-action\">With the selected messages</label>\
             <select id=\"bulk-action\" name=\"action\"><option value=\"release\">Release</option>\
             <option value=\"delete\">Delete</option>{reports}</select>\
             <button type=\"submit\">Apply</button></form>",
            // Reports teach the model every client shares: an admin's or an operator's.
            reports = if who.role == Role::User {
                ""
            } else {
                "<option value=\"report-ham\">Not spam: release and learn</option>\
                 <option value=\"report-spam\">Spam: delete and learn</option>"
            }
        ));
        body.push_str(
            "<table><caption>Held messages</caption><thead><tr><th scope=\"col\">Select</th><th scope=\"col\">Received</th>\
             <th scope=\"col\">From</th><th scope=\"col\">To</th><th scope=\"col\">Subject</th><th scope=\"col\">Verdict</th>\
             <th scope=\"col\">Why</th><th scope=\"col\">Actions</th></tr></thead><tbody>",
        );
        for h in &held {
            let id = esc(&h.id);
            body.push_str(&format!(
                "<tr id=\"m-{id}\"><td><input type=\"checkbox\" name=\"id\" value=\"{id}\" form=\"bulk\" aria-label=\"Select {id}\"></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({:.1})</td><td>{}</td>\
                 <td class=\"actions\">\
                 <form method=\"post\" action=\"/quarantine/{id}/release\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" aria-label=\"Release {id}\">Release</button></form>\
                 <form method=\"post\" action=\"/quarantine/{id}/allow\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" aria-label=\"Release {id} and allow its sender\">Release and allow sender</button></form>\
                 <form method=\"post\" action=\"/quarantine/{id}/delete\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" aria-label=\"Delete {id}\">Delete</button></form></td></tr>",
                esc(&unix_time(h.received_at)),
                esc(&h.sender),
                esc(&h.recipients.join(", ")),
                format_args!(
                    "<a href=\"/quarantine/{}\">{}</a>",
                    url(&h.id),
                    esc(&match store::decoded_subject(&h.subject) {
                        s if s.trim().is_empty() => "(no subject)".to_string(),
                        s => s,
                    })
                ),
                esc(&h.verdict),
                h.score,
                esc(&h.reason),
            ));
        }
        body.push_str("</tbody></table>");
        if held.len() == PAGE
            && let Some(last) = held.last()
        {
            let keep: String = [
                ("recipient", &q.recipient),
                ("sender", &q.sender),
                ("verdict", &q.verdict),
                ("since", &q.since),
                ("until", &q.until),
                ("score", &q.score),
            ]
            .iter()
            .filter_map(|(k, v)| blank(v).map(|v| format!("&amp;{k}={}", url(&v))))
            .collect();
            body.push_str(&format!(
                "<p><a href=\"/quarantine?after={}{keep}\">Next page</a></p>",
                url(&last.id),
            ));
        }
    }
    page("Quarantine", Some(&who), &body)
}

/// Messages on one page of the quarantine.
const PAGE: usize = 50;

#[derive(Debug, Deserialize)]
struct AccountForm {
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

/// The accounts an admin or an operator manages: each with its role and state, a form to
/// set its password and a button to disable it, and a form to add one.
async fn accounts_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Notice>, QueryRejection>,
) -> Response {
    let notice = unseal(&who, q.ok().and_then(|Query(n)| n.done).as_deref());
    accounts_body(&c, &who, notice.as_deref(), None).await
}

async fn accounts_body(
    c: &Ctx,
    who: &Principal,
    done: Option<&str>,
    wrong: Option<&str>,
) -> Response {
    let accounts = match crate::accounts::list(c, who).await {
        Ok(a) => a,
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    let csrf = esc(who.csrf.as_deref().unwrap_or(""));
    let mut body = String::new();
    body.push_str(&notices(done, wrong));
    body.push_str(
        "<table><caption>Accounts</caption><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Role</th>\
         <th scope=\"col\">Organisation</th><th scope=\"col\">State</th><th scope=\"col\">Change</th></tr></thead><tbody>",
    );
    for a in &accounts {
        let n = esc(&a.name);
        let u = url(&a.name);
        body.push_str(&format!(
            "<tr><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"actions\">\
             <form method=\"post\" action=\"/accounts/{u}/password\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label for=\"p-{n}\">New password for {n}</label><input id=\"p-{n}\" name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"{min}\" required>\
             <button type=\"submit\">Set password</button></form>\
             <form method=\"post\" action=\"/accounts/{u}/disable\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" aria-label=\"Disable {n}\">Disable</button></form></td></tr>",
            a.role.as_str(),
            esc(a.organisation.as_deref().unwrap_or("")),
            if a.enabled { "enabled" } else { "disabled" },
            min = crate::accounts::MIN_PASSWORD,
        ));
    }
    body.push_str("</tbody></table>");
    let roles = if who.role == Role::Operator {
        "<option>user</option><option>admin</option><option>operator</option>"
    } else {
        "<option>user</option><option>admin</option>"
    };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/accounts\" class=\"add\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <fieldset><legend>Add an account{}</legend>\
         <label for=\"name\">Name (an address; a user's at the organisation's domains)</label><input id=\"name\" name=\"name\" required>\
         <label for=\"role\">Role</label><select id=\"role\" name=\"role\">{roles}</select>\
         <label for=\"password\">Password (at least {} characters)</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required>\
         <button type=\"submit\">Add the account</button></fieldset></form>",
        who.organisation
            .as_deref()
            .map_or(String::new(), |o| format!(" to {}", esc(o))),
        crate::accounts::MIN_PASSWORD
    ));
    form_page("Accounts", who, &body, wrong.is_some())
}

/// Adds an account from the page's form (an operator adds admins and users to the
/// organisation of the address's domain).
async fn account_add(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    form: Result<Form<AccountForm>, FormRejection>,
) -> Response {
    let Some(f) = accepted(&who, form, |f| &f.csrf) else {
        return forbidden_form(&who);
    };
    let role = match f.role.as_str() {
        "operator" => Role::Operator,
        "admin" => Role::Admin,
        _ => Role::User,
    };
    let organisation = match (who.role, role) {
        (Role::Operator, Role::Admin | Role::User) => {
            let domain = f
                .name
                .rsplit_once('@')
                .map(|(_, d)| d.trim().to_ascii_lowercase());
            match c.store.organisations().await {
                Ok(orgs) => orgs
                    .into_iter()
                    .find(|o| domain.as_ref().is_some_and(|d| o.domains.contains(d)))
                    .map(|o| o.name),
                Err(e) => {
                    return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), Some(&who));
                }
            }
        }
        _ => None,
    };
    let new = crate::accounts::NewAccount {
        name: f.name.clone(),
        role,
        organisation,
        password: f.password,
    };
    match crate::accounts::add(&c, &who, new).await {
        Ok(a) => Redirect::to(&format!(
            "/accounts?{}",
            done_param(&who, &format!("Added {}.", a.name))
        ))
        .into_response(),
        Err(e) if matches!(e.status.as_u16(), 400 | 409) => {
            accounts_body(&c, &who, None, Some(&e.message)).await
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

/// Sets an account's password or disables it, from the page's forms.
async fn account_change(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path((name, what)): Path<(String, String)>,
    form: Result<Form<AccountForm>, FormRejection>,
) -> Response {
    let Some(f) = accepted(&who, form, |f| &f.csrf) else {
        return forbidden_form(&who);
    };
    let done = match what.as_str() {
        "password" => crate::accounts::set_password(&c, &who, &name, f.password)
            .await
            .map(|()| format!("Set the password of {name}; its sessions ended.")),
        "disable" => crate::accounts::disable(&c, &who, &name)
            .await
            .map(|()| format!("Disabled {name}.")),
        _ => return error_page(StatusCode::NOT_FOUND, "No such action.", Some(&who)),
    };
    match done {
        Ok(m) => Redirect::to(&format!("/accounts?{}", done_param(&who, &m))).into_response(),
        Err(e) if matches!(e.status.as_u16(), 400 | 409) => {
            accounts_body(&c, &who, None, Some(&e.message)).await
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

#[derive(Debug, Deserialize)]
struct OrganisationForm {
    csrf: String,
    #[serde(default)]
    name: String,
    /// Separated by commas or spaces; absent (an admin's form): unchanged.
    domains: Option<String>,
    #[serde(default)]
    digest: String,
}

/// The organisations an operator manages (or an admin's own): each with its domains and
/// digest schedule and a form to change them (an admin's: the schedule only), and for an
/// operator a form to add one.
async fn organisations_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Notice>, QueryRejection>,
) -> Response {
    let notice = unseal(&who, q.ok().and_then(|Query(n)| n.done).as_deref());
    organisations_body(&c, &who, notice.as_deref(), None).await
}

async fn organisations_body(
    c: &Ctx,
    who: &Principal,
    done: Option<&str>,
    wrong: Option<&str>,
) -> Response {
    let orgs = match crate::organisations::list(c, who).await {
        Ok(o) => o,
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    let csrf = esc(who.csrf.as_deref().unwrap_or(""));
    let operator = who.role == Role::Operator;
    let mut body = String::new();
    body.push_str(&notices(done, wrong));
    body.push_str(
        "<table><caption>Organisations</caption><thead><tr><th scope=\"col\">Name</th>\
         <th scope=\"col\">Domains</th><th scope=\"col\">Digest</th><th scope=\"col\">Change</th></tr></thead><tbody>",
    );
    for (i, o) in orgs.iter().enumerate() {
        let domains = esc(&o.domains.join(", "));
        let digest = esc(o.digest.as_deref().unwrap_or(""));
        let domains_field = if operator {
            format!(
                "<label for=\"d-{i}\">Domains of {n}</label><input id=\"d-{i}\" name=\"domains\" value=\"{domains}\">",
                n = esc(&o.name)
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{n}</td><td>{domains}</td><td>{shown}</td><td class=\"actions\">\
             <form method=\"post\" action=\"/organisations\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"name\" value=\"{n}\">{domains_field}\
             <label for=\"g-{i}\">Digest of {n} (daily, weekly, off, 12h; empty: default)</label>\
             <input id=\"g-{i}\" name=\"digest\" value=\"{digest}\">\
             <button type=\"submit\">Save {n}</button></form></td></tr>",
            n = esc(&o.name),
            shown = if digest.is_empty() { "default" } else { &digest },
        ));
    }
    body.push_str("</tbody></table>");
    if operator {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/organisations\" class=\"add\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <fieldset><legend>Add an organisation</legend>\
             <label for=\"name\">Name</label><input id=\"name\" name=\"name\" required>\
             <label for=\"domains\">Domains (separated by commas)</label><input id=\"domains\" name=\"domains\">\
             <label for=\"digest\">Digest (daily, weekly, off, 12h; empty: default)</label><input id=\"digest\" name=\"digest\">\
             <button type=\"submit\">Add the organisation</button></fieldset></form>"
        ));
    }
    form_page("Organisations", who, &body, wrong.is_some())
}

/// Adds or changes an organisation from the page's forms (an admin's form carries no
/// domains: they stay as they are).
async fn organisation_set(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    form: Result<Form<OrganisationForm>, FormRejection>,
) -> Response {
    let Some(f) = accepted(&who, form, |f| &f.csrf) else {
        return forbidden_form(&who);
    };
    let domains = match &f.domains {
        Some(d) => d
            .split([',', ' '])
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
        None => match crate::organisations::list(&c, &who).await {
            Ok(orgs) => orgs
                .into_iter()
                .find(|o| o.name == f.name)
                .map(|o| o.domains)
                .unwrap_or_default(),
            Err(e) => return error_page(e.status, &e.message, Some(&who)),
        },
    };
    let change = crate::organisations::OrganisationChange {
        domains,
        digest: Some(f.digest),
    };
    match crate::organisations::set(&c, &who, &f.name, change).await {
        Ok(o) => Redirect::to(&format!(
            "/organisations?{}",
            done_param(&who, &format!("Saved {}.", o.name))
        ))
        .into_response(),
        Err(e) if e.status.as_u16() == 400 => {
            organisations_body(&c, &who, None, Some(&e.message)).await
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListsQuery {
    address: Option<String>,
    done: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListsForm {
    csrf: String,
    address: String,
    #[serde(default)]
    allow: String,
    #[serde(default)]
    block: String,
}

/// The lists' page: a user's own allow and block lists (an admin's or an operator's for
/// the address they name), one sender per line.
async fn lists_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<ListsQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let address = match q.address.filter(|a| !a.trim().is_empty()) {
        Some(a) => a,
        None if who.role == Role::User => who.account.clone(),
        None => {
            return page(
                "Allow and block lists",
                Some(&who),
                &format!("{}{}", lists_pick(""), LISTS_HELP),
            );
        }
    };
    match crate::lists::show(&c, &who, &address).await {
        Ok(l) => lists_form(
            &who,
            &l.address,
            &l.allow.join("\n"),
            &l.block.join("\n"),
            unseal(&who, q.done.as_deref()).as_deref(),
            None,
        ),
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

const LISTS_HELP: &str = "<p>One sender per line: an address (<code>news@shop.example</code>), a domain \
    (<code>shop.example</code>, its subdomains included) or a network \
    (<code>192.0.2.0/24</code>). Mail from an allowed sender is never judged spam for this address \
    (an allowed address counts only when SPF or DMARC passes); mail from a blocked one always is. \
    Viruses and forbidden attachments are stopped whoever sends them.</p>";

/// The form that asks an admin or an operator which address's lists to open.
fn lists_pick(address: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/lists\" aria-label=\"Whose lists\">\
         <label for=\"address\">Address</label><input id=\"address\" name=\"address\" type=\"email\" required value=\"{}\">\
         <button type=\"submit\">Open</button></form>",
        esc(address)
    )
}

fn lists_form(
    who: &Principal,
    address: &str,
    allow: &str,
    block: &str,
    done: Option<&str>,
    wrong: Option<&str>,
) -> Response {
    let mut body = String::new();
    body.push_str(&notices(done, wrong));
    if who.role != Role::User {
        body.push_str(&lists_pick(address));
    }
    body.push_str(&format!(
        "<h2>Lists of {0}</h2>{LISTS_HELP}<form method=\"post\" action=\"/lists\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{1}\"><input type=\"hidden\" name=\"address\" value=\"{0}\">\
         <label for=\"allow\">Allowed senders</label><textarea id=\"allow\" name=\"allow\" rows=\"8\" cols=\"50\">{2}</textarea>\
         <label for=\"block\">Blocked senders</label><textarea id=\"block\" name=\"block\" rows=\"8\" cols=\"50\">{3}</textarea>\
         <p><button type=\"submit\">Save the lists</button></p></form>",
        esc(address),
        esc(who.csrf.as_deref().unwrap_or("")),
        esc(allow),
        esc(block)
    ));
    form_page("Allow and block lists", who, &body, wrong.is_some())
}

/// Saves the lists' form; a wrong entry is named above the form as it was sent, and
/// nothing is stored.
async fn lists_save(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    form: Result<Form<ListsForm>, FormRejection>,
) -> Response {
    let Some(f) = accepted(&who, form, |f| &f.csrf) else {
        return forbidden_form(&who);
    };
    let lines = |t: &str| -> Vec<String> { t.lines().map(str::to_string).collect() };
    let new = crate::lists::NewLists {
        allow: lines(&f.allow),
        block: lines(&f.block),
    };
    match crate::lists::set(&c, &who, &f.address, new).await {
        Ok(l) => Redirect::to(&format!(
            "/lists?address={}&{}",
            url(&l.address),
            done_param(&who, "Saved.")
        ))
        .into_response(),
        Err(e) if e.status == StatusCode::BAD_REQUEST => {
            lists_form(&who, &f.address, &f.allow, &f.block, None, Some(&e.message))
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

/// The scan's symbols as a table: name, score, reason and the time its check took.
fn symbols_table(symbols: &[store::ScanSymbol]) -> String {
    if symbols.is_empty() {
        return "<p>No symbols: the message was not scanned, or nothing fired.</p>".into();
    }
    let mut out = String::from(
        "<table><caption>Symbols</caption><thead><tr><th scope=\"col\">Symbol</th><th scope=\"col\">Score</th>\
         <th scope=\"col\">Why</th><th scope=\"col\">Time</th></tr></thead><tbody>",
    );
    for s in symbols {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{:.3} ms</td></tr>",
            esc(&s.name),
            s.score,
            esc(&s.reason),
            s.micros as f64 / 1000.0
        ));
    }
    out.push_str("</tbody></table>");
    out
}

/// One held message: why it is held, its symbols, its headers and its text (HTML as the
/// parser's text, never rendered), its attachments by name only, and the actions.
async fn quarantine_one_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let h = match quarantine::show(&c, &who, &id).await {
        Ok(h) => h,
        Err(e) => return error_page(e.status, &e.message, Some(&who)),
    };
    let csrf = esc(who.csrf.as_deref().unwrap_or(""));
    let qid = url(&h.id);
    let mut body = format!(
        "<dl><dt>Queue id</dt><dd>{}</dd><dt>From</dt><dd>{}</dd><dt>To</dt><dd>{}</dd><dt>Received</dt><dd>{}</dd>\
         <dt>Verdict</dt><dd>{} (score {:.2})</dd><dt>Why</dt><dd>{}</dd><dt>Client</dt><dd>{}</dd><dt>Size</dt><dd>{} bytes</dd></dl>\
         <div class=\"actions\">\
         <form method=\"post\" action=\"/quarantine/{qid}/release\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Release</button></form>\
         <form method=\"post\" action=\"/quarantine/{qid}/allow\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Release and allow sender</button></form>\
         <form method=\"post\" action=\"/quarantine/{qid}/delete\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Delete</button></form>{reports}</div>",
        esc(&h.id),
        esc(&h.sender),
        esc(&h.recipients.join(", ")),
        esc(&unix_time(h.received_at)),
        esc(&h.verdict),
        h.score,
        esc(&h.reason),
        esc(&h.client),
        h.size,
        reports = if who.role == Role::User {
            String::new()
        } else {
            format!(
                "<form method=\"post\" action=\"/quarantine/{qid}/report-ham\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Not spam: release and learn</button></form>\
                 <form method=\"post\" action=\"/quarantine/{qid}/report-spam\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Spam: delete and learn</button></form>"
            )
        }
    );
    body.push_str(&symbols_table(&h.symbols));
    body.push_str(&format!(
        "<h2>Headers</h2><pre class=\"headers\">{}</pre><h2>Text</h2><pre class=\"text\">{}</pre>",
        esc(&h.headers),
        esc(&h.text)
    ));
    if !h.attachments.is_empty() {
        body.push_str(
            "<table><caption>Attachments (not shown)</caption><thead><tr><th scope=\"col\">Name</th>\
             <th scope=\"col\">Type</th><th scope=\"col\">Size</th></tr></thead><tbody>",
        );
        for a in &h.attachments {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{} bytes</td></tr>",
                esc(&a.name),
                esc(&a.content_type),
                a.size
            ));
        }
        body.push_str("</tbody></table>");
    }
    page(&format!("Held message {}", h.id), Some(&who), &body)
}

#[derive(Debug, Default, Deserialize)]
struct TraceSearch {
    id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    client: Option<String>,
    verdict: Option<String>,
    /// Dates (`YYYY-MM-DD`, UTC), the end's day included.
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
}

/// A search form's days (`YYYY-MM-DD`, UTC) as unix seconds: the start of the first, and
/// the end of the last (its day included); a wrong one is said in `wrong`.
fn day_range(
    since: &Option<String>,
    until: &Option<String>,
    wrong: &mut Vec<String>,
) -> (Option<i64>, Option<i64>) {
    let mut date = |field: &str, v: &Option<String>| match v.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => day(text).or_else(|| {
            wrong.push(format!("{field}: write a date as YYYY-MM-DD"));
            None
        }),
        _ => None,
    };
    let since = date("From day", since);
    (since, date("To day", until).map(|d| d + 86400))
}

/// A day (`YYYY-MM-DD`, UTC) as unix seconds at its start.
fn day(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(&format!("{}T00:00:00Z", text.trim())).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// The message trace's search: messages by queue id, sender, recipient, subject, client
/// address, verdict and days, newest first, a page at a time.
async fn trace_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<TraceSearch>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let blank = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    if let Some(id) = blank(&q.id) {
        return Redirect::to(&format!("/trace/{}", url(id.trim()))).into_response();
    }
    let mut wrong = Vec::new();
    let (since, until) = day_range(&q.since, &q.until, &mut wrong);
    let query = store::TraceQuery {
        from: blank(&q.from),
        to: blank(&q.to),
        subject: blank(&q.subject),
        client: blank(&q.client).map(|c| c.trim().to_string()),
        verdict: blank(&q.verdict),
        since,
        until,
        before: blank(&q.before),
        limit: PAGE,
        ..Default::default()
    };
    let found = if wrong.is_empty() {
        crate::trace::find(&c, &who, query).await
    } else {
        Ok(Vec::new())
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => return error_page(e.status, &e.message, Some(&who)),
    };
    let value = |s: &Option<String>| esc(s.as_deref().unwrap_or(""));
    let options: String = std::iter::once(&"")
        .chain(&store::VERDICTS)
        .map(|v| {
            format!(
                "<option value=\"{v}\"{}>{}</option>",
                if q.verdict.as_deref() == Some(*v) {
                    " selected"
                } else {
                    ""
                },
                if v.is_empty() { "any" } else { v }
            )
        })
        .collect();
    let mut body = format!(
        "<form method=\"get\" action=\"/trace\" aria-label=\"Search\">\
         <label for=\"id\">Queue id</label><input id=\"id\" name=\"id\" value=\"\">\
         <label for=\"from\">From</label><input id=\"from\" name=\"from\" value=\"{}\">\
         <label for=\"to\">To</label><input id=\"to\" name=\"to\" value=\"{}\">\
         <label for=\"subject\">Subject contains</label><input id=\"subject\" name=\"subject\" value=\"{}\">\
         <label for=\"client\">Client address</label><input id=\"client\" name=\"client\" value=\"{}\">\
         <label for=\"verdict\">Verdict</label><select id=\"verdict\" name=\"verdict\">{options}</select>\
         <label for=\"since\">From day (UTC)</label><input id=\"since\" name=\"since\" type=\"date\" value=\"{}\">\
         <label for=\"until\">To day (UTC)</label><input id=\"until\" name=\"until\" type=\"date\" value=\"{}\">\
         <p><button type=\"submit\">Search</button></p></form>",
        value(&q.from),
        value(&q.to),
        value(&q.subject),
        value(&q.client),
        value(&q.since),
        value(&q.until),
    );
    for w in &wrong {
        body.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", esc(w)));
    }
    if found.is_empty() {
        body.push_str("<p>No message found.</p>");
    } else {
        body.push_str(
            "<table><caption>Messages, newest first</caption><thead><tr><th scope=\"col\">Received</th>\
             <th scope=\"col\">From</th><th scope=\"col\">To</th><th scope=\"col\">Subject</th>\
             <th scope=\"col\">Client</th><th scope=\"col\">Verdict</th><th scope=\"col\">Last event</th></tr></thead><tbody>",
        );
        for t in &found {
            let last = t
                .events
                .last()
                .map_or(String::new(), |e| format!("{}: {}", e.kind, e.detail));
            body.push_str(&format!(
                "<tr><td><a href=\"/trace/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                url(&t.id),
                esc(&unix_time(t.received_at)),
                esc(&t.sender),
                esc(&t.recipients.join(", ")),
                esc(&t.subject),
                esc(&t.arrival.client),
                esc(&t.verdict),
                esc(&last)
            ));
        }
        body.push_str("</tbody></table>");
        if found.len() == PAGE
            && let Some(last) = found.last()
        {
            let keep: String = [
                ("from", &q.from),
                ("to", &q.to),
                ("subject", &q.subject),
                ("client", &q.client),
                ("verdict", &q.verdict),
                ("since", &q.since),
                ("until", &q.until),
            ]
            .iter()
            .filter_map(|(k, v)| blank(v).map(|v| format!("{k}={}&amp;", url(&v))))
            .collect();
            body.push_str(&format!(
                "<p><a rel=\"next\" href=\"/trace?{keep}before={}\">Older messages</a></p>",
                url(&last.id)
            ));
        }
    }
    page("Message trace", Some(&who), &body)
}

/// The cluster a mail server belongs to: the balancers' view (servers added at run time),
/// else the configuration's.
fn cluster_of(c: &Ctx, server: &str) -> Option<String> {
    c.balancers
        .servers()
        .into_iter()
        .find(|s| s.server == server)
        .map(|s| s.cluster)
        .or_else(|| {
            c.config
                .silos
                .iter()
                .flat_map(|s| &s.clusters)
                .find(|k| k.servers.iter().any(|s| s.name == server))
                .map(|k| k.name.clone())
        })
}

/// One message's life: its arrival, and every event with the time since it arrived.
async fn trace_one_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let t = match crate::trace::one(&c, &who, &id).await {
        Ok(t) => t,
        Err(e) => return error_page(e.status, &e.message, Some(&who)),
    };
    let a = &t.arrival;
    let mut body = format!(
        "<dl><dt>Queue id</dt><dd>{}</dd><dt>From</dt><dd>{}</dd><dt>To</dt><dd>{}</dd>\
         <dt>Subject</dt><dd>{}</dd><dt>Verdict</dt><dd>{}</dd><dt>Size</dt><dd>{} bytes</dd><dt>Client</dt><dd>{} (HELO {})</dd><dt>TLS</dt><dd>{}</dd>\
         <dt>Taken by</dt><dd>mail server {}{} on node {}</dd></dl>",
        esc(&t.id),
        esc(&t.sender),
        esc(&t.recipients.join(", ")),
        esc(&t.subject),
        esc(if t.verdict.is_empty() {
            "not scanned"
        } else {
            &t.verdict
        }),
        t.size,
        esc(&a.client),
        esc(&a.helo),
        esc(a.tls.as_deref().unwrap_or("none")),
        esc(&a.server),
        esc(&cluster_of(&c, &a.server).map_or(String::new(), |k| format!(" of cluster {k}"))),
        esc(&a.node)
    );
    body.push_str(&symbols_table(&t.symbols));
    body.push_str(
        "<table><caption>Timeline</caption><thead><tr><th scope=\"col\">After</th><th scope=\"col\">Stage took</th><th scope=\"col\">Event</th>\
         <th scope=\"col\">Recipient</th><th scope=\"col\">Detail</th><th scope=\"col\">Node</th></tr></thead><tbody>",
    );
    let start = t.events.first().map_or(t.received_at * 1000, |e| e.at);
    let mut previous = start;
    for e in &t.events {
        // Each stage's duration: from the event before it to this one.
        let took = (e.at - std::mem::replace(&mut previous, e.at)).max(0);
        body.push_str(&format!(
            "<tr><td>{:.3} s</td><td>{:.3} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (e.at - start) as f64 / 1000.0,
            took as f64 / 1000.0,
            esc(&e.kind),
            esc(e.recipient.as_deref().unwrap_or("")),
            esc(&e.detail),
            esc(&e.node)
        ));
    }
    body.push_str("</tbody></table>");
    page(&format!("Message {}", t.id), Some(&who), &body)
}

#[derive(Debug, Default, Deserialize)]
struct Notice {
    done: Option<String>,
}

/// The operator's front page: the silo drawn live (its name and DNS answers, each cluster
/// with its balancer, each server with health, state, loading, sessions and messages per
/// second over the last hour), with the forms that change a server's loading and state.
async fn silo_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Notice>, QueryRejection>,
) -> Response {
    let servers = c.balancers.servers();
    // Each mail server's messages per second over the last hour, from the statistics.
    let now = crate::now();
    let recent = store::StatQuery {
        domains: None,
        since: now - now.rem_euclid(3600) - 3600,
        until: now + 1,
    };
    let rates = match c.store.stat_series(&recent, "server").await {
        Ok(rows) => crate::stats::last_hour_rates(&rows, now),
        Err(e) => {
            tracing::warn!(error = %e, "no message rates for the silo page");
            Default::default()
        }
    };
    let csrf = esc(who.csrf.as_deref().unwrap_or(""));
    let mut body = String::new();
    let done = q.ok().and_then(|Query(n)| n.done);
    body.push_str(&notices(unseal(&who, done.as_deref()).as_deref(), None));
    let dns = (c.dns)();
    for silo in &c.config.silos {
        // What this node's DNS answers now; a node serving no DNS shows the configuration's.
        let live = dns.iter().find(|d| d.name == silo.name);
        let answers = match live {
            Some(d) => format!(
                "DNS answers now: {}",
                d.clusters
                    .iter()
                    .filter(|k| k.answered)
                    .map(|k| k.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!(
                "This node serves no DNS; the configuration's answers: {}",
                silo.clusters
                    .iter()
                    .map(|k| k.address.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        body.push_str(&format!(
            "<section class=\"silo\" aria-label=\"Silo {0}\"><h2>{0}</h2>\
             <p class=\"answers\">{1} (TTL {2} s)</p><div class=\"clusters\">",
            esc(&silo.name),
            esc(&answers),
            silo.ttl
        ));
        for k in &silo.clusters {
            let mine: Vec<_> = servers.iter().filter(|s| s.cluster == k.name).collect();
            let healthy = mine.iter().filter(|s| s.up).count();
            let in_dns = match live.and_then(|d| d.clusters.iter().find(|x| x.name == k.name)) {
                None => "",
                Some(x) if x.answered => " - in the DNS answers",
                Some(x) if !x.healthy => " - out of the DNS answers: its balancer fails the checks",
                Some(_) => " - out of the DNS answers: no server is ready",
            };
            body.push_str(&format!(
                "<div class=\"cluster\"><h3>Cluster {}</h3><p>Balancer {} - {} of {} servers up{}</p><ul>",
                esc(&k.name),
                esc(&k.address.to_string()),
                healthy,
                mine.len(),
                in_dns
            ));
            for s in mine {
                let id = format!("{}/{}", url(&s.cluster), url(&s.server));
                let options: String = ["ready", "drain", "maint"]
                    .iter()
                    .map(|o| {
                        format!(
                            "<option{}>{o}</option>",
                            if *o == s.state { " selected" } else { "" }
                        )
                    })
                    .collect();
                body.push_str(&format!(
                    "<li id=\"s-{name}\"><strong>{name}</strong> {addr} \
                     <span class=\"{health}\">{health}</span>, {state}, loading {loading}, {active} open sessions, {total} in all, {last_hour:.0} messages in the last hour ({rate:.2}/s), {checked}\
                     <form method=\"post\" action=\"/silo/{id}/loading\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <label for=\"l-{name}\">Loading of {name}</label>\
                     <input id=\"l-{name}\" name=\"value\" type=\"number\" min=\"1\" max=\"1000\" value=\"{loading}\">\
                     <button type=\"submit\">Set loading</button></form>\
                     <form method=\"post\" action=\"/silo/{id}/state\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <label for=\"t-{name}\">State of {name}</label>\
                     <select id=\"t-{name}\" name=\"value\">{options}</select>\
                     <button type=\"submit\">Set state</button></form>\
                     <form method=\"post\" action=\"/silo/{id}/remove\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\" aria-label=\"Remove {name} from the cluster\">Remove</button></form></li>",
                    name = esc(&s.server),
                    addr = esc(&s.address),
                    health = if s.up { "up" } else { "down" },
                    state = esc(&s.state),
                    loading = s.loading,
                    active = s.active,
                    total = s.total,
                    rate = rates.get(&s.server).copied().unwrap_or(0.0),
                    last_hour = rates.get(&s.server).copied().unwrap_or(0.0) * 3600.0,
                    checked = match (&s.last_check, s.last_check_ago_ms) {
                        (Some(what), Some(ago)) => {
                            format!("last check {:.1} s ago: {}", ago as f64 / 1000.0, esc(what))
                        }
                        _ => "not checked yet".to_string(),
                    },
                ));
            }
            body.push_str(&format!(
                "</ul><form method=\"post\" action=\"/silo/{cid}\" class=\"add\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><fieldset><legend>Add a server to {cname}</legend>\
                 <label for=\"n-{cname}\">Name</label><input id=\"n-{cname}\" name=\"server\" required pattern=\"[A-Za-z0-9._\\-]+\">\
                 <label for=\"a-{cname}\">Address (IP:PORT)</label><input id=\"a-{cname}\" name=\"address\" required>\
                 <label for=\"w-{cname}\">Loading</label><input id=\"w-{cname}\" name=\"loading\" type=\"number\" min=\"1\" max=\"1000\" required>\
                 <button type=\"submit\">Add server</button></fieldset></form></div>",
                cid = url(&k.name),
                cname = esc(&k.name),
            ));
        }
        body.push_str("</div></section>");
    }
    if c.config.silos.is_empty() {
        body.push_str("<p>This configuration has no silo.</p>");
    }
    page("Silo", Some(&who), &body)
}

#[derive(Debug, Deserialize)]
struct ServerChange {
    csrf: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct ServerAdd {
    csrf: String,
    server: String,
    address: String,
    loading: String,
}

/// The silo page again, saying what was done.
fn silo_done(who: &Principal, what: &str) -> Response {
    Redirect::to(&format!("/silo?{}", done_param(who, what))).into_response()
}

async fn server_add(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path(cluster): Path<String>,
    form: Result<Form<ServerAdd>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return forbidden_form(&who);
    };
    if !token_ok(&who, &f.csrf) {
        return forbidden_form(&who);
    }
    let Ok(loading) = f.loading.trim().parse::<u32>() else {
        let e = format!("{:?} is not a loading (1 to 1000)", f.loading);
        return error_page(StatusCode::UNPROCESSABLE_ENTITY, &e, Some(&who));
    };
    let new = crate::NewServer {
        server: f.server.trim().to_string(),
        address: f.address.trim().to_string(),
        loading,
    };
    match crate::lb::change(
        &c,
        &who,
        &cluster,
        &new.server,
        crate::lb::Change::Add(&new),
    )
    .await
    {
        Ok(()) => silo_done(
            &who,
            &format!(
                "{cluster}/{}: added at {} with loading {loading}",
                new.server, new.address
            ),
        ),
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

async fn server_change(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path((cluster, server, what)): Path<(String, String, String)>,
    form: Result<Form<ServerChange>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return forbidden_form(&who);
    };
    if !token_ok(&who, &f.csrf) {
        return forbidden_form(&who);
    }
    let done = match what.as_str() {
        "loading" => match f.value.trim().parse::<u32>() {
            Ok(n) => {
                crate::lb::change(&c, &who, &cluster, &server, crate::lb::Change::Loading(n)).await
            }
            Err(_) => Err(crate::Refused::invalid(format!(
                "{:?} is not a loading (1 to 1000)",
                f.value
            ))),
        },
        "remove" => crate::lb::change(&c, &who, &cluster, &server, crate::lb::Change::Remove).await,
        "state" => {
            crate::lb::change(
                &c,
                &who,
                &cluster,
                &server,
                crate::lb::Change::State(f.value.trim()),
            )
            .await
        }
        _ => return error_page(StatusCode::NOT_FOUND, "No such change.", Some(&who)),
    };
    match done {
        Ok(()) => {
            if what == "remove" {
                silo_done(
                    &who,
                    &format!("{cluster}/{server}: removed; open sessions finish"),
                )
            } else {
                silo_done(
                    &who,
                    &format!("{cluster}/{server}: {what} set to {}", f.value.trim()),
                )
            }
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

async fn quarantine_action(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if !csrf_ok(&who, &form) {
        return forbidden_form(&who);
    }
    let done = match action.as_str() {
        "release" => quarantine::release(&c, &who, &id)
            .await
            .map(|r| format!("Released {id}: queued as {}.", r.queued_as)),
        "allow" => quarantine::release_and_allow(&c, &who, &id).await.map(|r| {
            format!(
                "Released {id}: queued as {}; its sender is allowed from now on.",
                r.queued_as
            )
        }),
        "delete" => quarantine::delete(&c, &who, &id)
            .await
            .map(|()| format!("Deleted {id}.")),
        "report-spam" => quarantine::report(&c, &who, &id, true)
            .await
            .map(|_| format!("Reported {id} as spam: deleted, and learned.")),
        "report-ham" => quarantine::report(&c, &who, &id, false).await.map(|r| {
            format!(
                "Reported {id} as not spam: learned, and released (queued as {}).",
                r.map(|r| r.queued_as).unwrap_or_default()
            )
        }),
        _ => return error_page(StatusCode::NOT_FOUND, "No such action.", Some(&who)),
    };
    match done {
        Ok(message) => {
            Redirect::to(&format!("/quarantine?{}", done_param(&who, &message))).into_response()
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

/// The operator's queue page: the mail waiting per client domain (with how much of it was
/// deferred and since when), then the oldest messages with each pending recipient's last
/// error, and the forms that flush the queue, delete a message and return one to its
/// sender.
async fn queue_page(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Notice>, QueryRejection>,
) -> Response {
    let all = store::StatQuery::default();
    let (by_domain, list) = match (
        c.store.queue_by_domain(&all).await,
        c.store.list(None, PAGE).await,
    ) {
        (Ok(d), Ok(l)) => (d, l),
        (Err(e), _) | (_, Err(e)) => {
            return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), Some(&who));
        }
    };
    let csrf = esc(who.csrf.as_deref().unwrap_or(""));
    let mut body = String::new();
    let done = q.ok().and_then(|Query(n)| n.done);
    body.push_str(&notices(unseal(&who, done.as_deref()).as_deref(), None));
    body.push_str(&format!(
        "<form method=\"post\" action=\"/queue/flush\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Flush: try every deferred recipient now</button></form>\
         <table><caption>Waiting, per client domain</caption><thead><tr><th scope=\"col\">Domain</th>\
         <th scope=\"col\">Recipients waiting</th><th scope=\"col\">Deferred</th><th scope=\"col\">Oldest</th></tr></thead><tbody>"
    ));
    for d in &by_domain {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.domain),
            d.pending,
            d.deferred,
            esc(&unix_time(d.oldest))
        ));
    }
    if by_domain.is_empty() {
        body.push_str("<tr><td colspan=\"4\">The queue is empty.</td></tr>");
    }
    body.push_str(
        "</tbody></table><table><caption>Messages, oldest first</caption><thead><tr>\
         <th scope=\"col\">Queue id</th><th scope=\"col\">From</th><th scope=\"col\">Waiting for (last error)</th>\
         <th scope=\"col\">Next attempt</th><th scope=\"col\">Held by</th><th scope=\"col\">Actions</th></tr></thead><tbody>",
    );
    for m in &list {
        let id = esc(&m.id);
        let pending: Vec<String> = m
            .pending
            .iter()
            .map(|(r, e)| match e {
                Some(e) => format!("{} ({})", esc(r), esc(e)),
                None => esc(r),
            })
            .collect();
        body.push_str(&format!(
            "<tr id=\"q-{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>\
             <form method=\"post\" action=\"/queue/{}/delete\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" aria-label=\"Delete {id}\">Delete</button></form>\
             <form method=\"post\" action=\"/queue/{}/bounce\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" aria-label=\"Return {id} to its sender\">Return to sender</button></form></td></tr>",
            esc(if m.sender.is_empty() { "<>" } else { &m.sender }),
            pending.join("<br>"),
            esc(&unix_time(m.next_attempt)),
            esc(m.owner.as_deref().unwrap_or("-")),
            url(&m.id),
            url(&m.id),
        ));
    }
    body.push_str("</tbody></table>");
    page("Queue", Some(&who), &body)
}

async fn queue_action(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    Path(what): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if !csrf_ok(&who, &form) {
        return forbidden_form(&who);
    }
    let done = match what.split_once('/') {
        None if what == "flush" => crate::queue::flush(&c, &who)
            .await
            .map(|n| format!("Flushed: {n} recipient(s) due now.")),
        Some((id, "delete")) => match crate::queue::delete(&c, &who, id).await {
            Ok(true) => Ok(format!("Deleted {id} from the queue.")),
            Ok(false) => {
                return error_page(
                    StatusCode::NOT_FOUND,
                    &format!("No message {id} in the queue."),
                    Some(&who),
                );
            }
            Err(e) => Err(e),
        },
        Some((id, "bounce")) => match crate::queue::bounce(&c, &who, id).await {
            Ok(Some(n)) => Ok(format!("Returned {id} to its sender ({n} recipient(s)).")),
            Ok(None) => {
                return error_page(
                    StatusCode::NOT_FOUND,
                    &format!("No message {id} in the queue."),
                    Some(&who),
                );
            }
            Err(store::Error::Conflict(why)) => {
                return error_page(StatusCode::CONFLICT, &why, Some(&who));
            }
            Err(e) => Err(e),
        },
        _ => return error_page(StatusCode::NOT_FOUND, "No such action.", Some(&who)),
    };
    match done {
        Ok(text) => Redirect::to(&format!("/queue?{}", done_param(&who, &text))).into_response(),
        Err(e) => error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), Some(&who)),
    }
}

/// The bulk form: an action and the selected ids (`id=A&id=B`, which a struct cannot
/// take: read as pairs).
async fn quarantine_bulk(
    State(c): State<Ctx>,
    Extension(who): Extension<Principal>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Ok(Form(pairs)) = form else {
        return forbidden_form(&who);
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !token_ok(&who, get("csrf").unwrap_or("")) {
        return forbidden_form(&who);
    }
    let action = match get("action") {
        Some("release") => quarantine::BulkAction::Release,
        Some("delete") => quarantine::BulkAction::Delete,
        Some("report-spam") => quarantine::BulkAction::ReportSpam,
        Some("report-ham") => quarantine::BulkAction::ReportHam,
        _ => return error_page(StatusCode::BAD_REQUEST, "No such action.", Some(&who)),
    };
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(n, _)| n == "id")
        .map(|(_, v)| v.clone())
        .collect();
    if ids.is_empty() {
        return Redirect::to(&format!(
            "/quarantine?{}",
            done_param(&who, "No message was selected.")
        ))
        .into_response();
    }
    match quarantine::bulk(&c, &who, &quarantine::Bulk { ids, action }).await {
        Ok(results) => {
            let done = results.iter().filter(|r| r.status == 200).count();
            let mut text = format!("Done for {done} of {} message(s).", results.len());
            for r in results.iter().filter(|r| r.status != 200) {
                text.push_str(&format!(" {}: {}.", r.id, r.error.as_deref().unwrap_or("")));
            }
            Redirect::to(&format!("/quarantine?{}", done_param(&who, &text))).into_response()
        }
        Err(e) => error_page(e.status, &e.message, Some(&who)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8025".parse().unwrap());
        assert!(
            same_origin(&h),
            "no Origin: a same-origin form or an old browser"
        );
        h.insert(header::ORIGIN, "http://127.0.0.1:8025".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
