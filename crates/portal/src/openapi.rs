//! The API's OpenAPI 3.1 document, `GET /api/openapi.json`: every operation of
//! [`OPERATIONS`], with the schemas of its query, body and answer generated from the very
//! types the handlers read and write (`schemars`, which follows their serde attributes), and
//! the one error shape every refusal has.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};
use store::{HeldSummary, Summary, Trace, TraceQuery};

use crate::accounts::{AccountView, NewAccount, NewPassword};
use crate::audit::AuditQuery;
use crate::digest::{SendNow, Sent};
use crate::lb::{DnsSilo, Loading, NewServer, ServerState, ServerStatus};
use crate::lists::{Lists, NewLists};
use crate::login::{Login, Me};
use crate::organisations::{OrganisationChange, OrganisationView};
use crate::quarantine::{Bulk, BulkResult, HeldMessage, HeldQuery, Released};
use crate::queue::{Bounced, Flushed, Page, QueuedMessage};
use crate::settings::{DomainView, Effective};
use crate::stats::{Stats, StatsQuery};

/// A schema of one type, as a reference into the document's components.
type Of = fn(&mut SchemaGenerator) -> Schema;

fn of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// Who may make a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// No credential (the login).
    Anyone,
    /// Any account, each within its scope.
    Scoped,
    /// Operators only (and the control token).
    Operator,
}

/// One operation of the API.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub who: Who,
    /// The query string's fields.
    pub query: Option<Of>,
    /// The JSON body.
    pub body: Option<Of>,
    /// The success status and, unless it has none, its body.
    pub ok: (u16, Option<Of>),
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    who: Who,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        who,
        query: None,
        body: None,
        ok: (204, None),
    }
}

/// Every operation of `/api/v1/`.
pub fn operations() -> Vec<Operation> {
    use Who::*;
    vec![
        Operation {
            body: Some(of::<Login>),
            ok: (200, Some(of::<Me>)),
            ..op(
                "post",
                "/api/v1/login",
                "Log in: a session cookie and its CSRF token",
                Anyone,
            )
        },
        op("post", "/api/v1/logout", "End the session", Scoped),
        Operation {
            ok: (200, Some(of::<Me>)),
            ..op("get", "/api/v1/me", "Who the caller is", Scoped)
        },
        Operation {
            query: Some(of::<Page>),
            ok: (200, Some(of::<Vec<ServerStatus>>)),
            ..op(
                "get",
                "/api/v1/lb",
                "Every balanced server with its health, state, loading and sessions",
                Operator,
            )
        },
        Operation {
            query: Some(of::<Page>),
            ok: (200, Some(of::<Vec<DnsSilo>>)),
            ..op(
                "get",
                "/api/v1/dns",
                "Each silo's clusters as this node's DNS answers them now",
                Operator,
            )
        },
        Operation {
            body: Some(of::<NewServer>),
            ok: (201, None),
            ..op(
                "post",
                "/api/v1/lb/{cluster}",
                "Add a server to a cluster",
                Operator,
            )
        },
        op(
            "delete",
            "/api/v1/lb/{cluster}/{server}",
            "Remove a server from its cluster (open sessions finish)",
            Operator,
        ),
        Operation {
            body: Some(of::<Loading>),
            ..op(
                "put",
                "/api/v1/lb/{cluster}/{server}/loading",
                "Set a server's loading",
                Operator,
            )
        },
        Operation {
            body: Some(of::<ServerState>),
            ..op(
                "put",
                "/api/v1/lb/{cluster}/{server}/state",
                "Set a server's state: ready, drain or maint",
                Operator,
            )
        },
        Operation {
            query: Some(of::<Page>),
            ok: (200, Some(of::<Vec<Summary>>)),
            ..op(
                "get",
                "/api/v1/queue",
                "A page of the queue, oldest id first",
                Operator,
            )
        },
        Operation {
            ok: (200, Some(of::<Flushed>)),
            ..op(
                "post",
                "/api/v1/queue/flush",
                "Make every deferred recipient due now",
                Operator,
            )
        },
        Operation {
            ok: (200, Some(of::<QueuedMessage>)),
            ..op(
                "get",
                "/api/v1/queue/{id}",
                "One queued message, with its headers",
                Operator,
            )
        },
        Operation {
            ok: (200, Some(of::<Bounced>)),
            ..op(
                "post",
                "/api/v1/queue/{id}/bounce",
                "Return a queued message to its sender now: its waiting recipients fail and one DSN goes to the sender",
                Operator,
            )
        },
        op(
            "delete",
            "/api/v1/queue/{id}",
            "Remove a message from the queue",
            Operator,
        ),
        Operation {
            query: Some(of::<HeldQuery>),
            ok: (200, Some(of::<Vec<HeldSummary>>)),
            ..op(
                "get",
                "/api/v1/quarantine",
                "A page of held messages within the caller's scope",
                Scoped,
            )
        },
        Operation {
            ok: (200, Some(of::<HeldMessage>)),
            ..op(
                "get",
                "/api/v1/quarantine/{id}",
                "One held message: why, and its headers",
                Scoped,
            )
        },
        op(
            "delete",
            "/api/v1/quarantine/{id}",
            "Delete a held message",
            Scoped,
        ),
        Operation {
            ok: (200, Some(of::<Released>)),
            ..op(
                "post",
                "/api/v1/quarantine/{id}/release",
                "Queue a held message again for its recipients, not scanned again",
                Scoped,
            )
        },
        Operation {
            ok: (200, Some(of::<Released>)),
            ..op(
                "post",
                "/api/v1/quarantine/{id}/release-and-allow",
                "Release a held message and allow its sender from now on",
                Scoped,
            )
        },
        Operation {
            ok: (200, Some(of::<Released>)),
            ..op(
                "post",
                "/api/v1/quarantine/{id}/report-ham",
                "Report a held message as not spam: learned as ham, and released",
                Scoped,
            )
        },
        op(
            "post",
            "/api/v1/quarantine/{id}/report-spam",
            "Report a held message as spam: learned as spam, and deleted",
            Scoped,
        ),
        Operation {
            body: Some(of::<Bulk>),
            ok: (200, Some(of::<Vec<BulkResult>>)),
            ..op(
                "post",
                "/api/v1/quarantine/bulk",
                "One action on many held messages, each within the caller's scope",
                Scoped,
            )
        },
        Operation {
            query: Some(of::<TraceQuery>),
            ok: (200, Some(of::<Vec<Trace>>)),
            ..op(
                "get",
                "/api/v1/trace",
                "Traces of the messages matching, newest first, within the caller's scope",
                Scoped,
            )
        },
        Operation {
            ok: (200, Some(of::<Trace>)),
            ..op("get", "/api/v1/trace/{id}", "One message's trace", Scoped)
        },
        Operation {
            query: Some(of::<StatsQuery>),
            ok: (200, Some(of::<Stats>)),
            ..op(
                "get",
                "/api/v1/stats",
                "The statistics of a time range (operators and organisations' admins)",
                Scoped,
            )
        },
        Operation {
            body: Some(of::<SendNow>),
            ok: (200, Some(of::<Sent>)),
            ..op(
                "post",
                "/api/v1/digests",
                "Queue the digests of quarantined mail now",
                Operator,
            )
        },
        Operation {
            query: Some(of::<Page>),
            ok: (200, Some(of::<Vec<DomainView>>)),
            ..op(
                "get",
                "/api/v1/domains",
                "The client domains in force (an admin: its organisation's)",
                Scoped,
            )
        },
        Operation {
            ok: (200, Some(of::<DomainView>)),
            ..op("get", "/api/v1/domains/{name}", "One client domain", Scoped)
        },
        Operation {
            body: Some(of::<config::DomainSettings>),
            ..op(
                "put",
                "/api/v1/domains/{name}",
                "Add or replace a client domain's settings (an admin: its own, not their silo)",
                Scoped,
            )
        },
        Operation {
            query: Some(of::<Page>),
            ok: (200, Some(of::<Vec<AccountView>>)),
            ..op(
                "get",
                "/api/v1/accounts",
                "The accounts the caller manages (an admin: its organisation's)",
                Scoped,
            )
        },
        Operation {
            body: Some(of::<NewAccount>),
            ok: (201, Some(of::<AccountView>)),
            ..op(
                "post",
                "/api/v1/accounts",
                "Add an account (an admin: to its organisation, not an operator)",
                Scoped,
            )
        },
        Operation {
            body: Some(of::<NewPassword>),
            ..op(
                "put",
                "/api/v1/accounts/{name}/password",
                "Set an account's password; its sessions end",
                Scoped,
            )
        },
        op(
            "post",
            "/api/v1/accounts/{name}/disable",
            "Disable an account: no password, sessions or API tokens",
            Scoped,
        ),
        Operation {
            query: Some(of::<Page>),
            ok: (200, Some(of::<Vec<OrganisationView>>)),
            ..op(
                "get",
                "/api/v1/organisations",
                "The organisations the caller sees (an admin: its own)",
                Scoped,
            )
        },
        Operation {
            body: Some(of::<OrganisationChange>),
            ok: (200, Some(of::<OrganisationView>)),
            ..op(
                "put",
                "/api/v1/organisations/{name}",
                "Add or change an organisation's domains and digest schedule (an admin: its own schedule)",
                Scoped,
            )
        },
        Operation {
            ok: (200, Some(of::<Lists>)),
            ..op(
                "get",
                "/api/v1/lists/{address}",
                "One address's own allow and block lists (a user: their own)",
                Scoped,
            )
        },
        Operation {
            body: Some(of::<NewLists>),
            ok: (200, Some(of::<Lists>)),
            ..op(
                "put",
                "/api/v1/lists/{address}",
                "Replace one address's own allow and block lists (a user: their own)",
                Scoped,
            )
        },
        Operation {
            query: Some(of::<AuditQuery>),
            ok: (200, Some(of::<Vec<store::AuditEntry>>)),
            ..op(
                "get",
                "/api/v1/audit",
                "The audit log, newest first (an admin: its domains' entries)",
                Scoped,
            )
        },
        op(
            "delete",
            "/api/v1/domains/{name}",
            "Stop accepting mail for a client domain",
            Operator,
        ),
        Operation {
            ok: (200, Some(of::<Effective>)),
            ..op(
                "get",
                "/api/v1/config",
                "The configuration in force",
                Operator,
            )
        },
    ]
}

/// Links from a listing to the reads and changes of one of its entries (OpenAPI links,
/// which clients and testers such as schemathesis follow): (listing, link name, operation,
/// its parameters as runtime expressions). Removals are left out: a tester following them
/// empties the listing the other links read.
type Link = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);
const LINKS: &[Link] = &[
    (
        "get /api/v1/lb",
        "SetLoading",
        "put /api/v1/lb/{cluster}/{server}/loading",
        &[
            ("cluster", "$response.body#/0/cluster"),
            ("server", "$response.body#/0/server"),
        ],
    ),
    (
        "get /api/v1/lb",
        "SetState",
        "put /api/v1/lb/{cluster}/{server}/state",
        &[
            ("cluster", "$response.body#/0/cluster"),
            ("server", "$response.body#/0/server"),
        ],
    ),
    (
        "get /api/v1/lb",
        "AddServer",
        "post /api/v1/lb/{cluster}",
        &[("cluster", "$response.body#/0/cluster")],
    ),
    (
        "get /api/v1/queue",
        "GetQueued",
        "get /api/v1/queue/{id}",
        &[("id", "$response.body#/0/id")],
    ),
    (
        "get /api/v1/quarantine",
        "GetHeld",
        "get /api/v1/quarantine/{id}",
        &[("id", "$response.body#/0/id")],
    ),
    (
        "get /api/v1/trace",
        "GetTrace",
        "get /api/v1/trace/{id}",
        &[("id", "$response.body#/0/id")],
    ),
    (
        "get /api/v1/domains",
        "GetDomain",
        "get /api/v1/domains/{name}",
        &[("name", "$response.body#/0/name")],
    ),
    (
        "get /api/v1/domains",
        "SetDomain",
        "put /api/v1/domains/{name}",
        &[("name", "$response.body#/0/name")],
    ),
];

/// An operation's id in the document.
fn operation_id(method: &str, path: &str) -> String {
    format!("{method}{}", path.replace(['/', '{', '}', '-'], "_"))
}

/// A query struct's fields as query parameters.
fn parameters(query: Of) -> Vec<Value> {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let schema = query(&mut g);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| {
                    json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": s,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The document.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas/".into())
        .into_generator();
    let mut paths: Map<String, Value> = Map::new();
    for o in operations() {
        let mut params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(q) = o.query {
            params.extend(parameters(q));
        }
        let mut responses = Map::new();
        let (status, body) = o.ok;
        let mut ok = json!({ "description": "done" });
        if let Some(b) = body {
            ok["content"] = json!({ "application/json": { "schema": b(&mut g) } });
        }
        let key = format!("{} {}", o.method, o.path);
        let links: Map<String, Value> = LINKS
            .iter()
            .filter(|(from, ..)| *from == key)
            .map(|(_, name, to, params)| {
                let (m, p) = to.split_once(' ').expect("METHOD PATH");
                let params: Map<String, Value> = params
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                (
                    name.to_string(),
                    json!({ "operationId": operation_id(m, p), "parameters": params }),
                )
            })
            .collect();
        if !links.is_empty() {
            ok["links"] = Value::Object(links);
        }
        responses.insert(status.to_string(), ok);
        responses.insert(
            "4XX".into(),
            json!({ "$ref": "#/components/responses/Refused" }),
        );
        responses.insert(
            "5XX".into(),
            json!({ "$ref": "#/components/responses/Refused" }),
        );
        let mut operation = json!({
            "summary": o.summary,
            "operationId": operation_id(o.method, o.path),
            "parameters": params,
            "responses": responses,
            "x-roles": match o.who {
                Who::Anyone => "anyone",
                Who::Scoped => "operator, admin (its organisation's domains), user (their address)",
                Who::Operator => "operator",
            },
        });
        if let Some(b) = o.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": b(&mut g) } },
            });
        }
        if o.who == Who::Anyone {
            operation["security"] = json!([]);
        }
        paths
            .entry(o.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(o.method.into(), operation);
    }
    let schemas: Map<String, Value> = g
        .definitions()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "mailsilo",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control and portal API of a mailsilo gateway. Every refusal is {\"error\": {\"code\", \"message\"}} with its status. A session's state changes carry its CSRF token in X-CSRF-Token.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Refused": {
                    "description": "refused, with the reason",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["error"],
                        "properties": { "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string" },
                                "message": { "type": "string" },
                            },
                        }},
                    }}},
                },
            },
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "the control token, or an API token (msk_...)" },
                "session": { "type": "apiKey", "in": "cookie", "name": crate::auth::COOKIE },
            },
        },
        "security": [{ "bearer": [] }, { "session": [] }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_documented_with_its_schemas() {
        let d = document();
        let paths = d["paths"].as_object().unwrap();
        assert_eq!(
            paths
                .values()
                .map(|p| p.as_object().unwrap().len())
                .sum::<usize>(),
            operations().len()
        );
        let q = &paths["/api/v1/quarantine"]["get"];
        let names: Vec<&str> = q["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for want in [
            "after",
            "limit",
            "recipient",
            "sender",
            "verdict",
            "since",
            "until",
            "min_score",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let put = &paths["/api/v1/domains/{name}"]["put"];
        assert_eq!(
            put["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/DomainSettings"
        );
        let settings = &d["components"]["schemas"]["DomainSettings"];
        assert_eq!(settings["additionalProperties"], false, "{settings}");
        assert!(
            settings["required"]
                .as_array()
                .unwrap()
                .contains(&json!("destination"))
        );
        assert_eq!(paths["/api/v1/login"]["post"]["security"], json!([]));
        // Every link names an operation of the document.
        let ids: Vec<String> = operations()
            .iter()
            .map(|o| operation_id(o.method, o.path))
            .collect();
        for (from, _, to, _) in LINKS {
            let (m, p) = to.split_once(' ').unwrap();
            assert!(ids.contains(&operation_id(m, p)), "{to}");
            let (m, p) = from.split_once(' ').unwrap();
            assert!(
                paths[p][m]["responses"]["200"]["links"].is_object(),
                "{from}"
            );
        }
        // The trace's scope is the server's to set: not a parameter.
        let t: Vec<&str> = paths["/api/v1/trace"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(!t.contains(&"domains"), "{t:?}");
    }
}
