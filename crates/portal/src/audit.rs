//! The audit log: who changed what, when, and the object before and after, for every change
//! made through the API or the pages (client domains and their policies, servers, held
//! mail). An operator reads all of it, an organisation's admin its domains' entries, a user
//! none. An entry keeps only the parts of the object that changed (adding one address to a
//! user's list records that list, not the domain's every setting), each side cut at
//! [`MAX_SIDE`] bytes, so the log grows with what changes, not with what exists.

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

/// The most one side (before or after) of an entry keeps, in bytes.
pub const MAX_SIDE: usize = 16 * 1024;

/// Records a change made by `who`. The change is made already: a log that cannot be
/// written is reported loudly, not turned into a refusal of what was done.
pub async fn record(c: &Ctx, who: &Principal, change: Change<'_>) {
    let (before, after) = changed(change.before, change.after);
    let entry = AuditEntry {
        seq: 0,
        at: now(),
        actor: who.account.clone(),
        action: change.action.into(),
        object: change.object.into(),
        domain: change.domain.to_lowercase(),
        before: before.map(clip),
        after: after.map(clip),
    };
    if let Err(e) = c.store.audit(entry).await {
        tracing::error!(error = %e, action = change.action, object = change.object, account = %who.account, "the audit log could not be written");
    }
}

/// The parts of two JSON objects that differ, before and after (members present on one
/// side only are kept on that side; objects within objects are narrowed the same way).
/// Anything else is kept whole.
fn changed(before: Option<String>, after: Option<String>) -> (Option<String>, Option<String>) {
    use serde_json::{Map, Value};
    fn narrow(before: &mut Map<String, Value>, after: &mut Map<String, Value>) {
        let same: Vec<String> = before
            .iter()
            .filter(|(k, v)| after.get(*k) == Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in same {
            before.remove(&k);
            after.remove(&k);
        }
        for (k, b) in before.iter_mut() {
            if let (Value::Object(b), Some(Value::Object(a))) = (b, after.get_mut(k)) {
                narrow(b, a);
            }
        }
    }
    let parse = |s: &Option<String>| s.as_deref().map(serde_json::from_str::<Value>);
    match (parse(&before), parse(&after)) {
        (Some(Ok(Value::Object(mut b))), Some(Ok(Value::Object(mut a)))) => {
            narrow(&mut b, &mut a);
            (
                Some(Value::Object(b).to_string()),
                Some(Value::Object(a).to_string()),
            )
        }
        _ => (before, after),
    }
}

/// `side` cut to [`MAX_SIDE`] bytes, saying how much was left out.
fn clip(side: String) -> String {
    if side.len() <= MAX_SIDE {
        return side;
    }
    let mut end = MAX_SIDE;
    while !side.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes more)", &side[..end], side.len() - end)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_what_changed() {
        let before =
            r#"{"action":"tag","lists":{"a@x":{"allow":["p.test"]},"b@x":{"allow":[]}},"n":1}"#;
        let after = r#"{"action":"tag","lists":{"a@x":{"allow":["p.test","q.test"]},"b@x":{"allow":[]}},"m":2}"#;
        let (b, a) = changed(Some(before.into()), Some(after.into()));
        assert_eq!(
            b.unwrap(),
            r#"{"lists":{"a@x":{"allow":["p.test"]}},"n":1}"#
        );
        assert_eq!(
            a.unwrap(),
            r#"{"lists":{"a@x":{"allow":["p.test","q.test"]}},"m":2}"#
        );
        // A side alone, or not an object, is kept whole.
        assert_eq!(
            changed(None, Some(after.into())),
            (None, Some(after.into()))
        );
        assert_eq!(
            changed(Some("3".into()), Some("4".into())),
            (Some("3".into()), Some("4".into()))
        );
    }

    #[test]
    fn a_side_is_cut_at_its_limit() {
        assert_eq!(clip("short".into()), "short");
        let long = "é".repeat(MAX_SIDE);
        let cut = clip(long.clone());
        assert!(cut.len() < MAX_SIDE + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("... ({} bytes more)", long.len() - MAX_SIDE)));
    }
}
