//! The pages of client domains and their policies, and of the audit log. A domain's page
//! is a form of its settings (destination, TLS, recipients, retry lifetime, thresholds and
//! actions, allow and block lists, attachment rules), checked by the same rules as the
//! TOML and the API, with the first wrong field named above the form as it was sent; a
//! change is applied at once by every node and recorded in the audit log.

use std::fmt::Write;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use config::{AttachmentAction, AttachmentRule, DomainSettings};
use serde::{Deserialize, Serialize};
use store::Role;

use crate::audit::AuditQuery;
use crate::auth::Principal;
use crate::web::{done_param, error_page, esc, page, token_ok, unseal, url};
use crate::{Ctx, Refused};

/// A domain's settings as the form carries them: text, one list item per line.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct DomainForm {
    #[serde(default)]
    pub csrf: String,
    pub destination: String,
    #[serde(default)]
    pub require_tls: Option<String>,
    #[serde(default)]
    pub recipients: String,
    #[serde(default)]
    pub lifetime: String,
    #[serde(default)]
    pub spam_threshold: String,
    #[serde(default)]
    pub reject_threshold: String,
    #[serde(default)]
    pub spam_action: String,
    #[serde(default)]
    pub subject_prefix: String,
    #[serde(default)]
    pub dmarc: String,
    #[serde(default)]
    pub greylist: String,
    #[serde(default)]
    pub reject_listed: String,
    #[serde(default)]
    pub reject_spf_fail: String,
    #[serde(default)]
    pub virus_action: String,
    #[serde(default)]
    pub antivirus_fail_mode: String,
    #[serde(default)]
    pub allow: String,
    #[serde(default)]
    pub block: String,
    #[serde(default)]
    pub attachment_allow: String,
    #[serde(default)]
    pub attachment_rules: String,
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A lower-case word of serde's as it names an enum value (`"quarantine"`).
fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// An enum value from its word; empty: not set.
fn choice<T: serde::de::DeserializeOwned>(field: &str, s: &str) -> Result<Option<T>, String> {
    match s.trim() {
        "" => Ok(None),
        w => serde_json::from_value(serde_json::Value::String(w.into()))
            .map(Some)
            .map_err(|_| format!("{field}: {w:?} is not one of the choices")),
    }
}

/// A switch as the form shows it: `on`, `off`, or empty (not set).
fn on_off(v: Option<bool>) -> String {
    v.map(|on| if on { "on" } else { "off" }.to_string())
        .unwrap_or_default()
}

/// A switch from the form; empty: not set.
fn switch(field: &str, s: &str) -> Result<Option<bool>, String> {
    match s.trim() {
        "" => Ok(None),
        "on" => Ok(Some(true)),
        "off" => Ok(Some(false)),
        w => Err(format!("{field}: {w:?} is not on or off")),
    }
}

fn number(field: &str, s: &str) -> Result<Option<f64>, String> {
    match s.trim() {
        "" => Ok(None),
        n => n
            .parse()
            .map(Some)
            .map_err(|_| format!("{field}: {n:?} is not a number")),
    }
}

/// An attachment rule as a line: `ACTION: type type .extension ...`.
fn rule_line(r: &AttachmentRule) -> String {
    let items: Vec<String> = r
        .types
        .iter()
        .cloned()
        .chain(r.extensions.iter().map(|e| format!(".{e}")))
        .collect();
    format!("{}: {}", r.action.as_str(), items.join(" "))
}

fn parse_rule(n: usize, line: &str) -> Result<AttachmentRule, String> {
    let (action, items) = line.split_once(':').ok_or_else(|| {
        format!("attachment rule {n}: write ACTION: TYPES AND .EXTENSIONS, e.g. \"reject: executable .exe\"")
    })?;
    let action: AttachmentAction = choice("attachment rule", action)?
        .ok_or_else(|| format!("attachment rule {n}: no action (reject, quarantine or strip)"))?;
    let (mut types, mut extensions) = (Vec::new(), Vec::new());
    for item in items.split_whitespace() {
        match item.strip_prefix('.') {
            Some(e) => extensions.push(e.to_string()),
            None => types.push(item.to_string()),
        }
    }
    Ok(AttachmentRule {
        types,
        extensions,
        action,
    })
}

impl DomainForm {
    /// The form of stored settings.
    pub fn of(s: &DomainSettings) -> DomainForm {
        let f = &s.filter;
        DomainForm {
            csrf: String::new(),
            destination: s.destination.clone(),
            require_tls: s.require_tls.then(|| "on".into()),
            recipients: s.recipients.as_deref().unwrap_or_default().join("\n"),
            lifetime: s.retry.lifetime.clone().unwrap_or_default(),
            spam_threshold: f.spam_threshold.map(|t| t.to_string()).unwrap_or_default(),
            reject_threshold: f
                .reject_threshold
                .map(|t| t.to_string())
                .unwrap_or_default(),
            spam_action: f.spam_action.as_ref().map(word).unwrap_or_default(),
            subject_prefix: f.subject_prefix.clone().unwrap_or_default(),
            dmarc: f.dmarc.as_ref().map(word).unwrap_or_default(),
            greylist: on_off(f.greylist),
            reject_listed: on_off(f.reject_listed),
            reject_spf_fail: on_off(f.reject_spf_fail),
            virus_action: f.virus_action.as_ref().map(word).unwrap_or_default(),
            antivirus_fail_mode: f.antivirus_fail_mode.as_ref().map(word).unwrap_or_default(),
            allow: f.allow.join("\n"),
            block: f.block.join("\n"),
            attachment_allow: f.attachment_allow.join("\n"),
            attachment_rules: f
                .attachment_rules
                .iter()
                .flatten()
                .map(rule_line)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The settings this form makes of `current` (what the form does not show is kept: the
    /// silo, the other retry overrides, each user's own lists); the error names the field.
    pub fn apply(&self, current: &DomainSettings) -> Result<DomainSettings, String> {
        let mut s = current.clone();
        s.destination = self.destination.trim().to_string();
        s.require_tls = self.require_tls.is_some();
        let recipients = lines(&self.recipients);
        s.recipients = (!recipients.is_empty()).then_some(recipients);
        let lifetime = self.lifetime.trim();
        s.retry.lifetime = (!lifetime.is_empty()).then(|| lifetime.to_string());
        let f = &mut s.filter;
        f.spam_threshold = number("spam threshold", &self.spam_threshold)?;
        f.reject_threshold = number("reject threshold", &self.reject_threshold)?;
        f.spam_action = choice("spam action", &self.spam_action)?;
        let prefix = self.subject_prefix.trim();
        f.subject_prefix = (!prefix.is_empty()).then(|| prefix.to_string());
        f.dmarc = choice("DMARC", &self.dmarc)?;
        f.greylist = switch("greylisting", &self.greylist)?;
        f.reject_listed = switch("refusing listed clients", &self.reject_listed)?;
        f.reject_spf_fail = switch("refusing SPF failures", &self.reject_spf_fail)?;
        f.virus_action = choice("virus action", &self.virus_action)?;
        f.antivirus_fail_mode = choice("antivirus fail mode", &self.antivirus_fail_mode)?;
        f.allow = lines(&self.allow);
        f.block = lines(&self.block);
        f.attachment_allow = lines(&self.attachment_allow);
        let rules = lines(&self.attachment_rules);
        f.attachment_rules = if rules.is_empty() {
            None
        } else {
            Some(
                rules
                    .iter()
                    .enumerate()
                    .map(|(i, l)| parse_rule(i + 1, l))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(s)
    }
}

fn select(id: &str, label: &str, value: &str, options: &[&str]) -> String {
    let opts: String = std::iter::once("")
        .chain(options.iter().copied())
        .map(|o| {
            format!(
                "<option value=\"{o}\"{}>{}</option>",
                if o == value { " selected" } else { "" },
                if o.is_empty() { "(the default)" } else { o }
            )
        })
        .collect();
    format!("<label for=\"{id}\">{label}</label><select id=\"{id}\" name=\"{id}\">{opts}</select>")
}

fn text(id: &str, label: &str, value: &str) -> String {
    format!(
        "<label for=\"{id}\">{label}</label><input id=\"{id}\" name=\"{id}\" value=\"{}\">",
        esc(value)
    )
}

fn area(id: &str, label: &str, value: &str) -> String {
    format!(
        "<label for=\"{id}\">{label}</label><textarea id=\"{id}\" name=\"{id}\" rows=\"4\" cols=\"50\">{}</textarea>",
        esc(value)
    )
}

/// A domain's page: its form, filled with `form`, and `message` (an error) above it.
fn domain_page(who: &Principal, name: &str, form: &DomainForm, message: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(m) = message {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(m));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/domains/{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <fieldset><legend>Delivery</legend>{}\
         <label><input type=\"checkbox\" name=\"require_tls\"{}> Require TLS to the destination</label>\
         {}{}</fieldset>\
         <fieldset><legend>Spam policy</legend>{}{}{}{}{}{}{}{}</fieldset>\
         <fieldset><legend>Viruses and attachments</legend>{}{}{}{}</fieldset>\
         <fieldset><legend>Allow and block lists (an address, a domain or a network per line)</legend>{}{}</fieldset>\
         <button type=\"submit\">Save {}</button></form>",
        url(name),
        esc(who.csrf.as_deref().unwrap_or("")),
        text(
            "destination",
            "Destination (HOST:PORT, or mx)",
            &form.destination
        ),
        if form.require_tls.is_some() {
            " checked"
        } else {
            ""
        },
        area(
            "recipients",
            "Valid recipients (local parts, one per line; empty: any)",
            &form.recipients
        ),
        text(
            "lifetime",
            "Retry lifetime (e.g. 5d; empty: the default)",
            &form.lifetime
        ),
        text(
            "spam_threshold",
            "Spam threshold (empty: the default)",
            &form.spam_threshold
        ),
        text(
            "reject_threshold",
            "Reject threshold (empty: the default)",
            &form.reject_threshold
        ),
        select(
            "spam_action",
            "Spam action",
            &form.spam_action,
            &["deliver", "tag", "quarantine", "reject"]
        ),
        text(
            "subject_prefix",
            "Subject prefix for tagged mail",
            &form.subject_prefix
        ),
        select(
            "dmarc",
            "DMARC failures",
            &form.dmarc,
            &["enforce", "quarantine", "ignore"]
        ),
        select("greylist", "Greylisting", &form.greylist, &["on", "off"]),
        select(
            "reject_listed",
            "Refuse clients a DNS list lists, at RCPT TO",
            &form.reject_listed,
            &["on", "off"]
        ),
        select(
            "reject_spf_fail",
            "Refuse senders whose SPF fails, at RCPT TO",
            &form.reject_spf_fail,
            &["on", "off"]
        ),
        select(
            "virus_action",
            "Virus action",
            &form.virus_action,
            &["reject", "quarantine"]
        ),
        select(
            "antivirus_fail_mode",
            "When the antivirus cannot scan",
            &form.antivirus_fail_mode,
            &["tempfail", "accept"]
        ),
        area(
            "attachment_rules",
            "Attachment rules, one per line: ACTION: types and .extensions (e.g. reject: executable script .exe); empty: the defaults",
            &form.attachment_rules
        ),
        area(
            "attachment_allow",
            "Types or extensions no rule applies to",
            &form.attachment_allow
        ),
        area("allow", "Allowed senders", &form.allow),
        area("block", "Blocked senders", &form.block),
        esc(name),
    );
    body
}

async fn list_page(c: &Ctx, who: &Principal, done: Option<&str>, wrong: Option<&str>) -> Response {
    let domains = match crate::settings::visible(c, who).await {
        Ok(d) => d,
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    let mut body = crate::web::notices(done, wrong);
    body.push_str(
        "<table><caption>Client domains</caption><thead><tr><th scope=\"col\">Domain</th>\
         <th scope=\"col\">Destination</th><th scope=\"col\">TLS</th><th scope=\"col\">Spam action</th>\
         <th scope=\"col\">Recipients</th></tr></thead><tbody>",
    );
    for d in &domains {
        let s = &d.settings;
        let _ = write!(
            body,
            "<tr><td><a href=\"/domains/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url(&d.name),
            esc(&d.name),
            esc(&s.destination),
            if s.require_tls {
                "required"
            } else {
                "opportunistic"
            },
            s.filter
                .spam_action
                .as_ref()
                .map(word)
                .unwrap_or_else(|| "default".into()),
            s.recipients
                .as_ref()
                .map_or("any".to_string(), |r| format!("{} listed", r.len())),
        );
    }
    if domains.is_empty() {
        body.push_str("<tr><td colspan=\"5\">No client domain.</td></tr>");
    }
    body.push_str("</tbody></table>");
    if who.role == Role::Operator {
        let silos: String = c
            .config
            .silos
            .iter()
            .map(|s| format!("<option>{}</option>", esc(&s.name)))
            .collect();
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/domains\" class=\"add\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <fieldset><legend>Add a client domain</legend>\
             <label for=\"name\">Domain</label><input id=\"name\" name=\"name\" required>\
             <label for=\"destination\">Destination (HOST:PORT, or mx)</label><input id=\"destination\" name=\"destination\" required>\
             <label for=\"silo\">Silo its MX points at</label><select id=\"silo\" name=\"silo\"><option value=\"\">none</option>{silos}</select>\
             <button type=\"submit\">Add the domain</button></fieldset></form>",
            esc(who.csrf.as_deref().unwrap_or(""))
        );
    }
    crate::web::form_page("Domains", who, &body, wrong.is_some())
}

/// The page's form for a new client domain (an operator's): its destination and silo;
/// the rest of its policy is set on its own page.
#[derive(Debug, Deserialize)]
struct NewDomainForm {
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    destination: String,
    #[serde(default)]
    silo: String,
}

async fn add(c: &Ctx, who: &Principal, f: NewDomainForm) -> Response {
    if who.role != Role::Operator {
        return error_page(
            StatusCode::FORBIDDEN,
            "Client domains are added by operators.",
            Some(who),
        );
    }
    let name = crate::settings::key(&f.name);
    let exists = match crate::settings::visible(c, who).await {
        Ok(d) => d.iter().any(|d| d.name == name),
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    if exists {
        let m = format!("{name} is a client domain already: change it on its page");
        return list_page(c, who, None, Some(&m)).await;
    }
    let settings = DomainSettings {
        destination: f.destination.trim().to_string(),
        silo: Some(f.silo.trim().to_string()).filter(|s| !s.is_empty()),
        ..DomainSettings::default()
    };
    match crate::settings::set(c, who, &name, &settings).await {
        Ok(d) => Redirect::to(&format!(
            "/domains/{}?{}",
            url(&d.name),
            done_param(
                who,
                "Added: every node accepts its mail now. Set its policy below."
            )
        ))
        .into_response(),
        Err(e) => {
            let e = Refused::from(e);
            if e.status == StatusCode::BAD_REQUEST {
                list_page(c, who, None, Some(&e.message)).await
            } else {
                error_page(e.status, &e.message, Some(who))
            }
        }
    }
}

/// Removes a client domain from its page's button (an operator's).
async fn remove(c: &Ctx, who: &Principal, name: &str, csrf: &str) -> Response {
    if !token_ok(who, csrf) {
        return crate::web::forbidden_form(who);
    }
    let name = crate::settings::key(name);
    match crate::settings::remove(c, who, &name).await {
        Ok(()) => Redirect::to(&format!(
            "/domains?{}",
            done_param(who, &format!(
                "Removed {name}: no node accepts its mail now; mail queued for it is still delivered."
            ))
        ))
        .into_response(),
        Err(e) => error_page(e.status, &e.message, Some(who)),
    }
}

async fn one_page(c: &Ctx, who: &Principal, name: &str, done: Option<&str>) -> Response {
    let name = crate::settings::key(name);
    let found = match crate::settings::visible(c, who).await {
        Ok(d) => d.into_iter().find(|d| d.name == name),
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    let Some(d) = found else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("{name} is not a client domain"),
            Some(who),
        );
    };
    let mut body = crate::web::notices(done, None);
    body.push_str(&domain_page(who, &name, &DomainForm::of(&d.settings), None));
    if who.role == Role::Operator {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/domains/{}/remove\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Remove {}</button> (its mail is refused from then on; mail queued for it is still delivered)</form>",
            url(&name),
            esc(who.csrf.as_deref().unwrap_or("")),
            esc(&name)
        );
    }
    page(&format!("Domain {name}"), Some(who), &body)
}

async fn save(c: &Ctx, who: &Principal, name: &str, form: DomainForm) -> Response {
    if !token_ok(who, &form.csrf) {
        return crate::web::forbidden_form(who);
    }
    let name = crate::settings::key(name);
    let current = match crate::settings::visible(c, who).await {
        Ok(d) => d.into_iter().find(|d| d.name == name),
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    let Some(current) = current else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("{name} is not a client domain"),
            Some(who),
        );
    };
    let refused = |status: StatusCode, m: &str| {
        let mut r = page(
            &format!("Domain {name}"),
            Some(who),
            &domain_page(who, &name, &form, Some(m)),
        );
        *r.status_mut() = status;
        r
    };
    let settings = match form.apply(&current.settings) {
        Ok(s) => s,
        Err(m) => return refused(StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    if let Err(e) = crate::settings::may_set(c, who, &name, &settings).await {
        return refused(e.status, &e.message);
    }
    // The form applied to the settings as stored when written: users' lists changed since
    // the page was shown stay.
    let changed = crate::settings::change(c, who, &name, |stored| {
        form.apply(stored.unwrap_or(&current.settings))
            .map_err(crate::settings::NotSet::Invalid)
    });
    match changed.await {
        Ok(_) => Redirect::to(&format!(
            "/domains/{}?{}",
            url(&name),
            done_param(who, "Saved: every node applies it now.")
        ))
        .into_response(),
        Err(e) => {
            let e = Refused::from(e);
            refused(
                if e.status == StatusCode::BAD_REQUEST {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    e.status
                },
                &e.message,
            )
        }
    }
}

async fn audit_page(c: &Ctx, who: &Principal, q: &AuditQuery) -> Response {
    let entries = match crate::audit::entries(c, who, q).await {
        Ok(e) => e,
        Err(e) => return error_page(e.status, &e.message, Some(who)),
    };
    let mut body = String::from(
        "<table><caption>Changes, newest first</caption><thead><tr><th scope=\"col\">When</th>\
         <th scope=\"col\">Who</th><th scope=\"col\">What</th><th scope=\"col\">Object</th>\
         <th scope=\"col\">Before</th><th scope=\"col\">After</th></tr></thead><tbody>",
    );
    for e in &entries {
        let json = |v: &Option<String>| {
            v.as_deref().map_or(String::from("-"), |v| {
                format!(
                    "<details><summary>show</summary><pre>{}</pre></details>",
                    esc(&pretty(v))
                )
            })
        };
        let _ = write!(
            body,
            "<tr id=\"a-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            esc(&crate::web::unix_time(e.at)),
            esc(&e.actor),
            esc(&e.action),
            esc(&e.object),
            json(&e.before),
            json(&e.after),
        );
    }
    if entries.is_empty() {
        body.push_str("<tr><td colspan=\"6\">No change recorded.</td></tr>");
    }
    body.push_str("</tbody></table>");
    if let Some(last) = entries
        .last()
        .filter(|_| entries.len() == q.limit.unwrap_or(100))
    {
        let _ = write!(
            body,
            "<p><a href=\"/audit?before={}\">Older</a></p>",
            last.seq
        );
    }
    page("Audit log", Some(who), &body)
}

/// JSON laid out for reading.
fn pretty(v: &str) -> String {
    serde_json::from_str::<serde_json::Value>(v)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| v.to_string())
}

#[derive(Debug, Deserialize)]
struct CsrfOnly {
    csrf: String,
}

#[derive(Debug, Deserialize)]
struct Done {
    done: Option<String>,
}

/// `/domains`, `/domains/{name}` (GET the form, POST it), `/audit`.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(
            "/domains",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 q: Result<Query<Done>, QueryRejection>| async move {
                    let done = unseal(&who, q.ok().and_then(|Query(d)| d.done).as_deref());
                    list_page(&c, &who, done.as_deref(), None).await
                },
            )
            .post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 form: Result<Form<NewDomainForm>, FormRejection>| async move {
                    match crate::web::accepted(&who, form, |f| &f.csrf) {
                        Some(f) => add(&c, &who, f).await,
                        None => crate::web::forbidden_form(&who),
                    }
                },
            ),
        )
        .route(
            "/domains/{name}/remove",
            post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>,
                 form: Result<Form<CsrfOnly>, FormRejection>| async move {
                    match form {
                        Ok(Form(f)) => remove(&c, &who, &name, &f.csrf).await,
                        Err(_) => crate::web::forbidden_form(&who),
                    }
                },
            ),
        )
        .route(
            "/domains/{name}",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>,
                 q: Result<Query<Done>, QueryRejection>| async move {
                    let done = unseal(&who, q.ok().and_then(|Query(d)| d.done).as_deref());
                    one_page(&c, &who, &name, done.as_deref()).await
                },
            )
            .post(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 Path(name): Path<String>,
                 form: Result<Form<DomainForm>, FormRejection>| async move {
                    match form {
                        Ok(Form(f)) => save(&c, &who, &name, f).await,
                        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => error_page(
                            e.status(),
                            "The form is larger than the portal takes (2 MiB).",
                            Some(&who),
                        ),
                        Err(_) => crate::web::forbidden_form(&who),
                    }
                },
            )
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::settings::MAX_SETTINGS_BODY,
            )),
        )
        .route(
            "/audit",
            get(
                |State(c): State<Ctx>,
                 Extension(who): Extension<Principal>,
                 q: Result<Query<AuditQuery>, QueryRejection>| async move {
                    match q {
                        Ok(Query(q)) => audit_page(&c, &who, &q).await,
                        Err(_) => error_page(StatusCode::BAD_REQUEST, "Bad query.", Some(&who)),
                    }
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_round_trips_settings_and_names_bad_fields() {
        let s: DomainSettings = serde_json::from_value(serde_json::json!({
            "destination": "10.0.0.1:25",
            "require_tls": true,
            "recipients": ["alice", "bob"],
            "silo": "silo1",
            "retry": {"lifetime": "3d", "min_backoff": "1m"},
            "filter": {
                "spam_threshold": 6.0, "spam_action": "quarantine", "dmarc": "ignore",
                "greylist": false, "reject_listed": true, "allow": ["friend.example"],
                "attachment_rule": [{"types": ["executable"], "extensions": ["exe"], "action": "reject"}],
                "users": {"alice": {"allow": ["x@y.example"]}}
            }
        }))
        .unwrap();
        let form = DomainForm::of(&s);
        assert_eq!(form.attachment_rules, "reject: executable .exe");
        assert_eq!(form.greylist, "off");
        assert_eq!(
            (form.reject_listed.as_str(), form.reject_spf_fail.as_str()),
            ("on", "")
        );
        assert_eq!(
            form.apply(&s).unwrap(),
            s,
            "what the form does not show is kept"
        );
        let bad = |f: DomainForm| f.apply(&s).unwrap_err();
        assert!(
            bad(DomainForm {
                spam_threshold: "high".into(),
                ..form.clone()
            })
            .starts_with("spam threshold")
        );
        assert!(
            bad(DomainForm {
                spam_action: "bounce".into(),
                ..form.clone()
            })
            .starts_with("spam action")
        );
        assert!(
            bad(DomainForm {
                reject_spf_fail: "yes".into(),
                ..form.clone()
            })
            .starts_with("refusing SPF failures")
        );
        assert!(
            bad(DomainForm {
                attachment_rules: "exe files".into(),
                ..form.clone()
            })
            .starts_with("attachment rule 1")
        );
        assert!(
            bad(DomainForm {
                attachment_rules: "reject: .exe\nburn: .js".into(),
                ..form.clone()
            })
            .contains("attachment rule")
        );
        let cleared = DomainForm {
            recipients: " \n".into(),
            attachment_rules: String::new(),
            ..form
        }
        .apply(&s)
        .unwrap();
        assert_eq!(cleared.recipients, None);
        assert_eq!(cleared.filter.attachment_rules, None);
    }
}
