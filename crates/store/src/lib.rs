//! Durable storage for mailsilo. This crate owns the storage interface ([`Store`]) and its
//! implementations, so that no spool path, table or SQL dialect leaks into the roles that
//! receive or deliver mail.
//!
//! The interface is built for many mail servers sharing one database with no master: queued
//! work is **claimed** with a lease (the claiming node's id, an expiry in database time and a
//! token), **renewed** while it is delivered, and its outcomes **recorded** under that token,
//! so that a node whose lease ran out cannot overwrite what the node that took the message
//! over did. A node that dies leaves leases that expire, and any node takes the mail over.
//! Every message keeps a **trace** (received, each delivery attempt with the remote reply,
//! the final outcome) after it has left the queue, for a retention period.
//!
//! Two implementations: [`Embedded`] (SQLite in WAL mode with `synchronous=FULL`, one writer
//! thread, group commit; the default for one machine) and [`Postgres`] (a fleet). Both pass
//! the same conformance suite (`tests/conformance.rs`). Each method states what makes it
//! durable when it returns.

mod embedded;
mod postgres;
pub mod tally;

pub use bytes::Bytes;
pub use embedded::Embedded;
pub use postgres::Postgres;
pub use tally::Tally;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors from a store, the same whatever the back end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The back end failed or could not be reached (I/O, a lost connection, the database
    /// refusing work): worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The caller's lease on this message has expired or been taken over: it must stop
    /// working on the message, and what it meant to record was not written.
    #[error("the lease on message {0} was lost")]
    LeaseLost(String),
    /// A write the store refused as it stands (a queue id that exists already).
    #[error("refused: {0}")]
    Conflict(String),
    /// The store has shut down.
    #[error("the store has shut down")]
    Closed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Opens the store a URL names: `postgres://...` (or `postgresql://`) for PostgreSQL,
/// anything else is taken as the embedded store's directory.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(Postgres::connect(url).await?))
    } else {
        Ok(std::sync::Arc::new(Embedded::open(std::path::Path::new(
            url,
        ))?))
    }
}

/// A recipient as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecipient {
    /// Exactly as received.
    pub address: String,
    /// DSN NOTIFY flags, kept as the SMTP layer encodes them (`smtp::server::notify`).
    pub notify: u8,
    /// The ORCPT parameter exactly as given (`rfc822;xtext`).
    pub orcpt: Option<String>,
}

/// The DSN RET parameter the sender gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// The whole message in a failure DSN.
    Full,
    /// Headers only.
    Headers,
}

/// Where and how a message came in, for its trace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Arrival {
    /// The client's address (behind a balancer, the one its PROXY header gave).
    pub client: String,
    pub helo: String,
    /// TLS version and cipher, when the client used STARTTLS.
    pub tls: Option<String>,
    /// The mail server that took it (its name in the silo, e.g. `c1-s2`).
    pub server: String,
    /// The node (process) that took it.
    pub node: String,
}

/// One symbol of a message's scan, as its trace keeps it: the check's name, its score, why
/// it fired and how long the check that reported it took.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScanSymbol {
    pub name: String,
    pub score: f64,
    pub reason: String,
    /// Microseconds the check took.
    pub micros: u64,
}

/// The symbols as the trace stores them (JSON; empty for none).
pub(crate) fn symbols_text(symbols: &[ScanSymbol]) -> String {
    if symbols.is_empty() {
        String::new()
    } else {
        serde_json::to_string(symbols).unwrap_or_default()
    }
}

/// The symbols a trace stored; none from an empty or unreadable column.
pub(crate) fn symbols_of(text: &str) -> Vec<ScanSymbol> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A message accepted by the SMTP server, ready to be made durable.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub id: String,
    /// The reverse path; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<NewRecipient>,
    /// DSN ENVID exactly as given (xtext).
    pub envid: Option<String>,
    /// DSN RET, when the sender gave it.
    pub ret: Option<Ret>,
    /// Unix seconds.
    pub received_at: i64,
    /// When its recipients fall due (unix seconds).
    pub next_attempt: i64,
    /// The whole message as it will be relayed, Received: header included, CRLF line ends
    /// (shared, not copied, between the store and delivery).
    pub body: Bytes,
    /// For the trace.
    pub arrival: Arrival,
    /// The filter's verdict in one line (symbols, score, action), which the trace's
    /// `received` event carries.
    pub scan: Option<String>,
    /// The filter's verdict in a word (`clean`, `spam`...), which trace searches match.
    pub verdict: Option<String>,
    /// The scan's symbols, each with its score, reason and time, for the trace.
    pub symbols: Vec<ScanSymbol>,
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Delivered,
    Failed,
}

/// A recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Recipient {
    pub index: u32,
    pub address: String,
    pub notify: u8,
    pub orcpt: Option<String>,
    pub status: Status,
    pub attempts: u32,
    /// Unix seconds.
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// A "delayed" DSN has been sent for it.
    pub warned: bool,
}

/// A queued message with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub sender: String,
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    pub received_at: i64,
    pub body: Bytes,
    pub recipients: Vec<Recipient>,
}

/// A message claimed for delivery, with the token its outcomes must be recorded under. Its
/// body is not loaded ([`Message::body`] is empty): the claimer fetches it with
/// [`Store::body`] when it has a connection to send it on, so that mail waiting for a busy
/// destination holds no memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub message: Message,
    pub token: i64,
}

/// Who claims, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The claiming node's id.
    pub owner: String,
    /// How long the lease lasts from now (database time) unless renewed.
    pub ttl: std::time::Duration,
}

/// One line of a queue listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Summary {
    pub id: String,
    pub sender: String,
    pub size: u64,
    pub received_at: i64,
    pub next_attempt: i64,
    /// The node delivering it now, if one holds a live lease.
    pub owner: Option<String>,
    /// Pending recipients with their last error.
    pub pending: Vec<(String, Option<String>)>,
}

/// What became of one recipient in a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop, with its final reply (which names its own queue id).
    Delivered {
        reply: String,
    },
    /// Try again at `next_attempt` (unix seconds).
    Deferred {
        next_attempt: i64,
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// A "delayed" DSN was sent for it; its schedule is unchanged.
    Warned,
}

/// The outcomes of one delivery attempt for some recipients of a claimed message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attempt {
    /// The next hop tried (for the trace).
    pub relay: String,
    /// By recipient index.
    pub outcomes: Vec<(u32, Outcome)>,
    /// DSNs this attempt calls for: queued in the same transaction as the outcomes, so a
    /// bounce is never lost nor sent for an outcome that was not recorded.
    pub dsns: Vec<NewMessage>,
    /// Give the lease back (the node has finished with the message for now).
    pub release: bool,
}

/// One event in a message's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// Unix milliseconds.
    pub at: i64,
    /// The node that recorded it.
    pub node: String,
    /// `received`, `delivered`, `deferred`, `failed`, `dsn`, `deleted`...
    pub kind: String,
    /// The recipient it concerns, if one.
    pub recipient: Option<String>,
    /// The remote reply, the reason, or what else explains it.
    pub detail: String,
}

/// A message's trace: how it arrived and what happened to it since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Trace {
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The first `Subject:`, decoded (at most [`SUBJECT_MAX`] octets as it came).
    pub subject: String,
    /// The filter's verdict in a word; empty for mail not scanned (a DSN, a release).
    pub verdict: String,
    pub size: u64,
    pub received_at: i64,
    pub arrival: Arrival,
    /// The scan's symbols, each with its score, reason and time; none for mail not scanned.
    pub symbols: Vec<ScanSymbol>,
    pub events: Vec<Event>,
}

/// The filter's verdicts, as traces and the quarantine store them.
pub const VERDICTS: [&str; 5] = ["clean", "spam", "phishing", "virus", "policy"];

/// Which traces to find.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TraceQuery {
    /// The sender, exactly (case-insensitive).
    pub from: Option<String>,
    /// One recipient, exactly (case-insensitive).
    pub to: Option<String>,
    /// Received at or after (unix seconds).
    pub since: Option<i64>,
    /// Received before (unix seconds).
    pub until: Option<i64>,
    /// The subject contains this (any case).
    pub subject: Option<String>,
    /// The client's address, exactly.
    pub client: Option<String>,
    /// The filter's verdict, exactly (one of [`VERDICTS`]).
    pub verdict: Option<String>,
    /// The next page: traces older than this one's (the last id of the page before).
    pub before: Option<String>,
    /// The most to return (the API's default when 0 or absent).
    #[serde(default)]
    pub limit: usize,
    /// Only messages with a recipient at one of these domains (lower-case; the part after
    /// an address's last `@`): an organisation's scope. `None`: any.
    #[serde(default, skip)]
    pub domains: Option<Vec<String>>,
}

/// One counter of the statistics: how many times `metric` took the value `label` for mail
/// to recipient domain `domain` in the hour starting at `hour` (unix seconds, a multiple of
/// 3600). Metrics: `verdict`, `action`, `sender` (the sender's domain), `server`, `virus`,
/// `policy`, `delivery`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StatKey {
    pub hour: i64,
    pub domain: String,
    pub metric: String,
    pub label: String,
}

/// Which statistics to read: an hour range and a scope of recipient domains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatQuery {
    /// Recipient domains (lower-case); `None`: every domain.
    pub domains: Option<Vec<String>>,
    /// From this hour (unix seconds) ...
    pub since: i64,
    /// ... to before this one.
    pub until: i64,
}

/// One change of the run-time configuration or of held mail, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Its place in the log (set by the store; 0 in a new entry).
    #[serde(default)]
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// The account that made it (`control` for the control token).
    pub actor: String,
    /// What was done, e.g. `domain.set`, `server.add`, `quarantine.release`.
    pub action: String,
    /// What it was done to: a domain, `CLUSTER/SERVER`, a queue id.
    pub object: String,
    /// The client domain it concerns (an organisation's admin sees its domains' entries);
    /// empty for the silo's own.
    pub domain: String,
    /// The object before and after (JSON), where it has a state.
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One client domain's mail in the queue now: recipients waiting, those of them deferred
/// at least once, and the oldest one's arrival (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DomainQueue {
    pub domain: String,
    /// Every recipient waiting.
    pub pending: i64,
    /// Those of them tried at least once.
    pub deferred: i64,
    pub oldest: i64,
}

impl DomainQueue {
    /// The recipients waiting that were never tried yet.
    pub fn untried(&self) -> i64 {
        self.pending - self.deferred
    }
}

/// A client domain in the store: its settings (the JSON of `config::DomainSettings`), and
/// whether it was removed at run time. A removed domain's entry stays: the TOML cannot bring
/// it back, and mail queued for it before the removal is still delivered by its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainEntry {
    pub name: String,
    pub settings: String,
    pub removed: bool,
}

/// A mail server's run-time settings: its loading and the operator's state for it, and for
/// a server an operator added at run time, its address. A removed server keeps its entry
/// (marked removed), so a server of the TOML that was removed stays removed after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerEntry {
    pub cluster: String,
    pub server: String,
    pub loading: u32,
    /// ready, drain or maint.
    pub state: String,
    /// `IP:PORT` of a server added at run time; `None` for one of the TOML.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub removed: bool,
}

/// A message held in the quarantine: the message as it would have been queued, and why it
/// was held.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub message: NewMessage,
    /// The filter's verdict (`spam`, `phishing`...).
    pub verdict: String,
    pub score: f64,
    /// The one line that explains it.
    pub reason: String,
}

/// Which quarantined messages a listing wants; every field given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldFilter {
    /// Held for a recipient at one of these domains (lower-case): an organisation's admin's
    /// scope. `None`: anyone.
    pub domains: Option<Vec<String>>,
    /// Held for this recipient address (any case): one user's scope, or a search; with
    /// `domains`, both must hold.
    pub address: Option<String>,
    /// The sender contains this (any case).
    pub sender: Option<String>,
    pub verdict: Option<String>,
    /// Received at or after (Unix seconds).
    pub since: Option<i64>,
    /// Received before (Unix seconds).
    pub until: Option<i64>,
    pub min_score: Option<f64>,
}

/// A quarantined message in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeldSummary {
    pub id: String,
    pub received_at: i64,
    pub sender: String,
    /// The message's `Subject:` as it came (unfolded, encoded words left as they are; at
    /// most [`SUBJECT_MAX`] octets).
    #[serde(default)]
    pub subject: String,
    pub recipients: Vec<String>,
    pub verdict: String,
    pub score: f64,
    pub reason: String,
    pub size: u64,
}

/// The domain part of an address (after its last `@`), lower-case; empty without one.
pub fn domain_lc(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_lowercase()
}

/// The longest subject a quarantine listing carries.
pub const SUBJECT_MAX: usize = 200;

/// The first `Subject:` of a message's header, unfolded and trimmed, at most
/// [`SUBJECT_MAX`] octets (cut at a character boundary); empty without one.
pub fn subject_of(body: &[u8]) -> String {
    let end = memchr_crlf2(body).unwrap_or(body.len());
    let header = String::from_utf8_lossy(&body[..end]);
    let mut subject: Option<String> = None;
    for line in header.split("\r\n") {
        match &mut subject {
            Some(s) if line.starts_with([' ', '\t']) => s.push_str(line),
            Some(_) => break,
            None => {
                if let Some((name, value)) = line.split_once(':')
                    && name.trim().eq_ignore_ascii_case("subject")
                {
                    subject = Some(value.to_string());
                }
            }
        }
    }
    let s = subject.unwrap_or_default();
    let s = s.trim();
    let mut cut = s.len().min(SUBJECT_MAX);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

/// A stored subject (encoded words as they came) decoded for people.
pub fn decoded_subject(raw: &str) -> String {
    let header = format!("Subject: {raw}\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse_headers(header.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| raw.to_string())
}

/// Where the header ends (the blank line), if it does.
fn memchr_crlf2(body: &[u8]) -> Option<usize> {
    body.windows(4).position(|w| w == b"\r\n\r\n")
}

/// A held message's envelope (its column's JSON) without the recipients in `gone`
/// (lower-case): the new envelope, the recipients left and those taken out.
pub(crate) fn envelope_without(
    id: &str,
    envelope: &str,
    gone: &[String],
) -> Result<(String, Vec<String>, Vec<String>)> {
    let mut e: HeldEnvelope = serde_json::from_str(envelope)
        .map_err(|e| Error::Unavailable(format!("quarantined message {id}: {e}")))?;
    let (out, kept): (Vec<NewRecipient>, Vec<NewRecipient>) = e
        .recipients
        .drain(..)
        .partition(|r| gone.contains(&r.address.to_lowercase()));
    e.recipients = kept;
    let left = e.recipients.iter().map(|r| r.address.clone()).collect();
    let taken = out.into_iter().map(|r| r.address).collect();
    Ok((
        serde_json::to_string(&e).expect("an envelope serializes"),
        left,
        taken,
    ))
}

/// The event a held message's trace gets when one recipient is taken out of it.
pub(crate) fn unheld_for_event(node: &str, recipient: &str, released_as: Option<&str>) -> Event {
    Event {
        at: now_ms(),
        node: node.to_string(),
        kind: if released_as.is_some() {
            "released"
        } else {
            "deleted"
        }
        .into(),
        recipient: Some(recipient.to_string()),
        detail: match released_as {
            Some(id) => format!("released from the quarantine for this recipient, queued as {id}"),
            None => "deleted from the quarantine for this recipient".into(),
        },
    }
}

/// What the quarantine keeps of a message beside its body and the listed columns.
#[derive(Serialize, Deserialize)]
struct HeldEnvelope {
    recipients: Vec<NewRecipient>,
    envid: Option<String>,
    ret: Option<Ret>,
    arrival: Arrival,
    next_attempt: i64,
}

impl Held {
    /// The envelope column's JSON.
    fn envelope(&self) -> String {
        let m = &self.message;
        serde_json::to_string(&HeldEnvelope {
            recipients: m.recipients.clone(),
            envid: m.envid.clone(),
            ret: m.ret,
            arrival: m.arrival.clone(),
            next_attempt: m.next_attempt,
        })
        .expect("an envelope serializes")
    }

    /// A held message from its columns.
    #[allow(clippy::too_many_arguments)]
    fn from_columns(
        id: String,
        received_at: i64,
        sender: String,
        envelope: &str,
        verdict: String,
        score: f64,
        reason: String,
        body: Vec<u8>,
    ) -> Result<Held> {
        let e: HeldEnvelope = serde_json::from_str(envelope)
            .map_err(|e| Error::Unavailable(format!("quarantined message {id}: {e}")))?;
        Ok(Held {
            message: NewMessage {
                id,
                sender,
                recipients: e.recipients,
                envid: e.envid,
                ret: e.ret,
                received_at,
                next_attempt: e.next_attempt,
                body: Bytes::from(body),
                arrival: e.arrival,
                scan: None,
                verdict: Some(verdict.clone()),
                symbols: Vec::new(),
            },
            verdict,
            score,
            reason,
        })
    }
}

/// The event a message's trace gets when it is quarantined.
pub(crate) fn held_event(h: &Held) -> Event {
    Event {
        at: now_ms(),
        node: h.message.arrival.node.clone(),
        kind: "quarantined".into(),
        recipient: None,
        detail: format!("{} (score {:.2}): {}", h.verdict, h.score, h.reason),
    }
}

/// The event a refused message's trace ends with: the reply its sender got.
pub(crate) fn refused_event(m: &NewMessage, reply: &str) -> Event {
    Event {
        at: now_ms(),
        node: m.arrival.node.clone(),
        kind: "refused".into(),
        recipient: None,
        detail: reply.to_string(),
    }
}

/// The event a quarantined message's trace gets when its retention ends.
pub(crate) fn expired_held_event(node: &str) -> Event {
    Event {
        at: now_ms(),
        node: node.to_string(),
        kind: "deleted".into(),
        recipient: None,
        detail: "deleted from the quarantine: its retention (store.quarantine_retention) ended"
            .into(),
    }
}

/// The event a quarantined message's trace gets when it leaves the quarantine.
pub(crate) fn unheld_event(node: &str, released_as: Option<&str>) -> Event {
    Event {
        at: now_ms(),
        node: node.to_string(),
        kind: if released_as.is_some() {
            "released"
        } else {
            "deleted"
        }
        .into(),
        recipient: None,
        detail: match released_as {
            Some(id) => format!("released from the quarantine, queued as {id}"),
            None => "deleted from the quarantine".into(),
        },
    }
}

/// What an account may see and do in the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: silos, servers, every organisation and all mail.
    Operator,
    /// One organisation's domains, their mail, policies and users.
    Admin,
    /// One address's quarantine and lists.
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// A client organisation: the domains it owns (lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    pub name: String,
    pub domains: Vec<String>,
    /// How often its users get a digest of their quarantined mail (`daily`, `weekly`,
    /// `off`, or a duration such as `12h`); `None`: the configuration's default.
    pub digest: Option<String>,
}

/// A portal account. Operators have a plain name; admins and users are named by their
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// The organisation of an admin or a user.
    pub organisation: Option<String>,
    /// The password's argon2 hash (PHC string); empty: no password login.
    pub password: String,
    /// Unix seconds.
    pub created: i64,
}

/// A logged-in session: the SHA-256 (hex) of its cookie's secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub key: String,
    pub account: String,
    /// The token every state change of the session must carry (CSRF).
    pub csrf: String,
    /// Unix seconds.
    pub expires: i64,
}

/// An API token for scripts: the SHA-256 (hex) of its secret, the account it acts for, and
/// the role and organisation it is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub key: String,
    pub account: String,
    /// What it is for, as its owner named it.
    pub label: String,
    pub role: Role,
    pub organisation: Option<String>,
    pub created: i64,
    pub expires: Option<i64>,
}

/// One message the classifier learned from: its digest (what tells a second learning of
/// the same message apart), its class and its features, encoded by the filter (the store
/// does not read them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub digest: String,
    pub spam: bool,
    pub features: Vec<u8>,
}

/// Durable state: the queue, the trace, the run-time configuration and the classifier.
///
/// Durability is promised per method. "Durable" means on stable storage when the method
/// returns: the embedded store's commit has fsynced its WAL; PostgreSQL's commit has
/// returned (with its default `synchronous_commit = on`, after its WAL flush).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds training examples, or changes the class of one learned before (same digest);
    /// returns how many were new or changed class (learning a message again as the same
    /// class changes nothing). Durable.
    async fn learn(&self, examples: Vec<Example>) -> Result<usize>;

    /// Adds or replaces an organisation. Durable.
    async fn set_organisation(&self, org: Organisation) -> Result<()>;

    /// Every organisation, by name.
    async fn organisations(&self) -> Result<Vec<Organisation>>;

    /// Adds or replaces an account. Durable.
    async fn set_account(&self, account: Account) -> Result<()>;

    /// The account called `name`.
    async fn account(&self, name: &str) -> Result<Option<Account>>;

    /// Every account, by name.
    async fn accounts(&self) -> Result<Vec<Account>>;

    /// Starts a session. Durable.
    async fn add_session(&self, session: Session) -> Result<()>;

    /// The session of `key` that has not expired at `now`.
    async fn session(&self, key: &str, now: i64) -> Result<Option<Session>>;

    /// Ends one session (`Some(key)`), or every session of `account`; how many ended.
    async fn end_sessions(&self, key: Option<&str>, account: Option<&str>) -> Result<usize>;

    /// Adds an API token. Durable.
    async fn add_token(&self, token: ApiToken) -> Result<()>;

    /// The token of `key` that has not expired at `now`.
    async fn token(&self, key: &str, now: i64) -> Result<Option<ApiToken>>;

    /// Revokes every API token of `account`; how many. Durable.
    async fn revoke_tokens(&self, account: &str) -> Result<usize>;

    /// Appends an entry to the audit log. Durable.
    async fn audit(&self, entry: AuditEntry) -> Result<()>;

    /// The audit log, newest first: entries before `before` (a `seq`; `None`: from the
    /// newest), at most `limit`, of these domains only (`None`: every entry).
    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
        domains: Option<&[String]>,
    ) -> Result<Vec<AuditEntry>>;

    /// Forgets sessions and tokens expired at `now`; how many.
    async fn expire_sessions(&self, now: i64) -> Result<usize>;

    /// Removes the examples with these digests; returns how many there were. Durable.
    async fn forget(&self, digests: Vec<String>) -> Result<usize>;

    /// Every training example, for training a model from them all.
    async fn examples(&self) -> Result<Vec<Example>>;

    /// How many spam and ham examples there are.
    async fn example_counts(&self) -> Result<(u64, u64)>;

    /// Stores a trained model (the filter's encoding), replacing the one before; returns its
    /// version, higher than any before. Durable.
    async fn set_model(&self, data: Vec<u8>) -> Result<i64>;

    /// The latest model and its version; `None` before any was stored.
    async fn model(&self) -> Result<Option<(i64, Vec<u8>)>>;

    /// The latest model's version alone (cheap enough to poll for a new model).
    async fn model_version(&self) -> Result<Option<i64>>;

    /// Holds a message in the quarantine, with its trace (received, quarantined). Durable.
    async fn quarantine(&self, held: Held) -> Result<()>;

    /// Quarantined messages, oldest first, after the id `after`, at most `limit`.
    async fn quarantined(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &HeldFilter,
    ) -> Result<Vec<HeldSummary>>;

    /// One quarantined message, body included.
    async fn held(&self, id: &str) -> Result<Option<Held>>;

    /// Takes message `id` out of the quarantine and queues `copy` (a new id, due at once,
    /// claimable by any node) in one transaction, so it is neither lost nor both held and
    /// queued; `false` (and nothing queued) when `id` is not in the quarantine. Durable.
    async fn release(&self, id: &str, copy: NewMessage, node: &str) -> Result<bool>;

    /// Takes `recipients` (addresses, any case) out of held message `id`, in one
    /// transaction: with `copy` (a new id, for those recipients) it is queued for them, a
    /// release; without, they are dropped, a delete. The message stays held for its other
    /// recipients, and leaves the quarantine when none remain. `false` (and nothing
    /// queued) when `id` is not held for any of them. Durable.
    async fn unhold_for(
        &self,
        id: &str,
        recipients: Vec<String>,
        copy: Option<NewMessage>,
        node: &str,
    ) -> Result<bool>;

    /// Deletes a quarantined message; `false` when it is not there. Durable.
    async fn delete_held(&self, id: &str, node: &str) -> Result<bool>;

    /// Deletes the quarantined messages received before `before` (unix seconds), each
    /// trace saying so; returns how many. Durable.
    async fn expire_held(&self, before: i64, node: &str) -> Result<usize>;

    /// Greylisting: when the triplet `key` was first seen, after recording `now` as its
    /// first sighting if it has none, or if its first sighting is older than `window_start`
    /// (the retry window passed: it starts again). Atomic across nodes. Durable.
    async fn grey_first_seen(&self, key: &str, now: i64, window_start: i64) -> Result<i64>;

    /// Greylisting: lets `client` (a client network's key) through until `until` (unix
    /// seconds), after a retried triplet passed. Durable.
    async fn grey_allow(&self, client: &str, until: i64) -> Result<()>;

    /// Greylisting: whether `client` is let through at `now`.
    async fn grey_allowed(&self, client: &str, now: i64) -> Result<bool>;

    /// Greylisting: forgets triplets first seen before `before` and passes that ended before
    /// `now`; returns how many rows went. Durable.
    async fn expire_greylist(&self, before: i64, now: i64) -> Result<usize>;

    /// Stores a new message and its trace's first event. Durable when it returns: the SMTP
    /// server answers 250 straight after. With `lease`, the message is claimed by that
    /// node at once (it delivers it from memory) and the token is returned; without, it is
    /// claimable by any node once due.
    async fn enqueue(&self, message: NewMessage, lease: Option<&Lease>) -> Result<Option<i64>>;

    /// Claims up to `limit` messages that have a recipient due at or before `now` (unix
    /// seconds) and no live lease (none, or one expired in database time), oldest due
    /// first. Each claim is exclusive: no two callers get the same message until its lease
    /// expires. Durable: a claim survives a crash of the store (and expires if the claimer
    /// dies).
    async fn claim(&self, lease: &Lease, now: i64, limit: usize) -> Result<Vec<Claimed>>;

    /// Claims message `id` with its body, due or not (an operator acting on it now); `None`
    /// when it is not queued, `Conflict` when another claim on it is live (it is being
    /// delivered now). Not durable, like every claim.
    async fn claim_id(&self, id: &str, lease: &Lease) -> Result<Option<Claimed>>;

    /// Extends the leases `held` (message id and lease token) by `lease.ttl` from now, in
    /// one statement however many they are; returns the ids whose lease was lost (taken
    /// over, or the message gone). Not durable: a renewal lost in a crash of the store only
    /// shortens a lease.
    async fn renew(&self, held: &[(String, i64)], lease: &Lease) -> Result<Vec<String>>;

    /// Records an attempt's outcomes under the lease, with their trace events and the DSNs
    /// they call for, in one transaction; a message with no pending recipient left leaves
    /// the queue (its trace stays). `LeaseLost` (and nothing written) when the token is no
    /// longer the message's. Durable when it queues DSNs; outcomes alone may be written
    /// without waiting for their own flush (embedded store: the next durable commit or a
    /// checkpoint makes them durable): losing one to a power cut repeats a delivery, which
    /// at-least-once allows, and never loses mail.
    async fn record(&self, id: &str, token: i64, attempt: Attempt) -> Result<()>;

    /// Gives back every lease `owner` holds (a node starting again after a crash takes its
    /// mail up at once rather than waiting for the leases to expire). Durable.
    async fn release_all(&self, owner: &str) -> Result<usize>;

    /// A queued message, if it is still in the queue.
    async fn get(&self, id: &str) -> Result<Option<Message>>;

    /// A queued message's body, if it is still in the queue.
    async fn body(&self, id: &str) -> Result<Option<Bytes>>;

    /// At most `limit` queued messages with ids after `after`, in id order (ids begin with
    /// their time, so this is arrival order); page through with the last id seen.
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Summary>>;

    /// Removes a message from the queue, leaving a `deleted` event in its trace; false if
    /// there was none. Durable.
    async fn delete(&self, id: &str, node: &str) -> Result<bool>;

    /// Makes every pending recipient due at `now`; returns how many. Durable.
    async fn flush(&self, now: i64) -> Result<usize>;

    /// A message's trace, if it is still kept.
    async fn trace(&self, id: &str) -> Result<Option<Trace>>;

    /// The traces matching `query`, newest first, without their events.
    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Trace>>;

    /// Adds an event to a message's trace (other stages than the queue: the filter's
    /// verdict, an operator's action). Durable.
    async fn add_event(&self, id: &str, event: Event) -> Result<()>;

    /// Keeps the trace of a message refused at the end of its transaction, which was
    /// never queued (the body only gives its size and subject): its arrival and scan, and
    /// a `refused` event with the reply the sender got. Not durable: the sender still holds
    /// the message, and a lost trace loses no mail.
    async fn trace_refused(&self, message: NewMessage, reply: String) -> Result<()>;

    /// Drops the traces of messages received before `before` (unix seconds) that have left
    /// the queue; returns how many. Durable.
    async fn expire_traces(&self, before: i64) -> Result<usize>;

    /// Node `node`'s number, unique in the fleet: given at its first call, the same ever
    /// after (queue ids carry it, so that nodes never make the same id). Durable.
    async fn node_number(&self, node: &str) -> Result<u16>;

    /// A counter that every change of the run-time configuration raises: nodes compare it
    /// to the one they last applied.
    async fn runtime_version(&self) -> Result<i64>;

    /// Ticks when the run-time configuration may have changed: on PostgreSQL when any node
    /// commits a change (LISTEN/NOTIFY) and when the listening connection is re-established
    /// (changes made meanwhile were not announced); on the embedded store when this process
    /// commits one (the only process that opens it).
    fn runtime_changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Every client domain entry, removed ones included, by name.
    async fn domains(&self) -> Result<Vec<DomainEntry>>;

    /// Adds or replaces a domain entry (`removed: true` removes it), only if the live entry
    /// (not removed) still has the settings `before` (`None`: there is no live entry), so a
    /// read-change-write loses no change another writer made in between, on any node.
    /// Returns whether it was written. Durable.
    async fn set_domain(&self, entry: DomainEntry, before: Option<String>) -> Result<bool>;

    /// Every server entry.
    async fn servers(&self) -> Result<Vec<ServerEntry>>;

    /// Adds or replaces a server entry. Durable.
    async fn set_server(&self, entry: ServerEntry) -> Result<()>;

    /// Login throttling for every node: counts one attempt against each of `keys` (a key
    /// and its limit) in the window of `window` seconds that the key's first attempt
    /// opened, forgetting windows that ended by `now`; returns the seconds until the last
    /// window past its limit ends, if one is (the attempt is refused, and counted: the
    /// window does not move). Atomic per key across nodes. Not durable.
    async fn count_login(
        &self,
        keys: &[(String, u32)],
        now: i64,
        window: i64,
    ) -> Result<Option<i64>>;

    /// Takes a successful login's attempt back: key `forget` starts again, key `lower`
    /// loses one. Not durable.
    async fn login_succeeded(&self, forget: &str, lower: &str) -> Result<()>;

    /// The shared secret named `name`: the one stored, or `candidate`, stored now if none
    /// was (every node then signs with the same). Durable.
    async fn secret(&self, name: &str, candidate: String) -> Result<String>;

    /// Claims the digest of `organisation` due at `now` when the last one is at least
    /// `period` seconds old (or there was none): records `now` as its time and returns the
    /// last one's (`first` for the first). `None`: not due, or another node claimed it.
    /// Durable.
    async fn claim_digest(
        &self,
        organisation: &str,
        now: i64,
        period: i64,
        first: i64,
    ) -> Result<Option<i64>>;

    /// Adds these counts to the statistics' counters. Durable.
    async fn add_stats(&self, counts: Vec<(StatKey, i64)>) -> Result<()>;

    /// Each hour's sum of `metric` by label, over the query's domains: (hour, label, n),
    /// by hour.
    async fn stat_series(&self, query: &StatQuery, metric: &str)
    -> Result<Vec<(i64, String, i64)>>;

    /// The `limit` labels of `metric` with the largest sums over the query, largest first;
    /// `metric` `domain` ranks the recipient domains themselves (by messages).
    async fn stat_top(
        &self,
        query: &StatQuery,
        metric: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>>;

    /// Drops the counters of hours before `before`; returns how many.
    async fn expire_stats(&self, before: i64) -> Result<usize>;

    /// The queue now, by recipient domain (the part after an address's last `@`,
    /// lower-case), in the query's domains (its hours are not used).
    async fn queue_by_domain(&self, query: &StatQuery) -> Result<Vec<DomainQueue>>;

    /// Adds the entries the store has never had (at the first start, and entries new in
    /// the TOML later); those it has, removed domains included, stay as they are: the
    /// store's copy wins. Returns how many were added. Durable.
    async fn seed(&self, domains: Vec<DomainEntry>, servers: Vec<ServerEntry>) -> Result<usize>;
}

/// The host's clock in milliseconds (trace event times; the embedded store's database time).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The first event of a message's trace.
pub(crate) fn received_event(m: &NewMessage) -> Event {
    let a = &m.arrival;
    let tls = a
        .tls
        .as_deref()
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    Event {
        at: now_ms(),
        node: a.node.clone(),
        kind: "received".into(),
        recipient: None,
        detail: format!(
            "from {} helo {}{tls} by {}, {} recipient(s), {} octets{}",
            a.client,
            a.helo,
            a.server,
            m.recipients.len(),
            m.body.len(),
            m.scan
                .as_deref()
                .map(|s| format!("; scanned: {s}"))
                .unwrap_or_default()
        ),
    }
}

/// The event a delivery outcome leaves.
pub(crate) fn outcome_event(node: &str, relay: &str, address: &str, o: &Outcome) -> Event {
    let (kind, detail) = match o {
        Outcome::Delivered { reply } => ("delivered", format!("{relay}: {reply}")),
        Outcome::Deferred { reason, .. } => ("deferred", format!("{relay}: {reason}")),
        Outcome::Failed { reason } => ("failed", format!("{relay}: {reason}")),
        Outcome::Warned => ("delay-notice", "a delay DSN went to the sender".to_string()),
    };
    Event {
        at: now_ms(),
        node: node.to_string(),
        kind: kind.into(),
        recipient: Some(address.to_string()),
        detail,
    }
}

/// The event of a DSN queued for a message.
pub(crate) fn dsn_event(node: &str, dsn: &NewMessage) -> Event {
    let to = dsn.recipients.first().map_or("", |r| r.address.as_str());
    Event {
        at: now_ms(),
        node: node.to_string(),
        kind: "dsn".into(),
        recipient: None,
        detail: format!("DSN {} queued to <{to}>", dsn.id),
    }
}

/// The event of an operator's removal.
/// The refusal of a claim on a message another claim holds.
pub(crate) fn being_delivered(id: &str) -> Error {
    Error::Conflict(format!("message {id} is being delivered now; try again"))
}

pub(crate) fn deleted_event(node: &str) -> Event {
    Event {
        at: now_ms(),
        node: node.to_string(),
        kind: "deleted".into(),
        recipient: None,
        detail: "removed from the queue by an operator".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_found_and_decoded() {
        let body = b"From: a@b\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n time\r\n\r\nSubject: body\r\n";
        assert_eq!(subject_of(body), "=?utf-8?q?caf=C3=A9?= time");
        assert_eq!(decoded_subject(&subject_of(body)), "café time");
        assert_eq!(decoded_subject("plain"), "plain");
        assert_eq!(subject_of(b"From: a@b\r\n\r\n"), "");
    }
}
