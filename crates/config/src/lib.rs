//! The configuration of a mailsilo deployment: one TOML file, read into a typed model and
//! validated as a whole before anything starts.
//!
//! This crate owns the file format and its rules. Every error names the file, the line and
//! column, and the key that is wrong, so that `mailsilo config check` can point an operator
//! at the exact place. The roles read the validated [`Config`]; none of them parses TOML.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The loadings an operator may give a server, in the file and at run time.
pub const LOADING: std::ops::RangeInclusive<u32> = 1..=1000;
/// A server's `maxconn` when none is written (and for servers added at run time).
pub const DEFAULT_MAXCONN: usize = 1000;

/// The annotated demo configuration, used when no file is given.
pub const DEMO: &str = include_str!("demo.toml");
/// The fewest characters of a portal account's password, wherever it is set (the file,
/// the CLI, the API and the pages).
pub const MIN_PASSWORD: usize = 10;

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read (its reason is part of the message, not a second error).
    #[error("{file}: cannot read: {reason}")]
    Read {
        file: String,
        reason: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// What to do with a bare CR or bare LF inside message content (SMTP smuggling defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BareNewlines {
    /// Refuse the message with a 5xx reply after its end.
    #[default]
    Reject,
    /// Replace each bare CR or LF with CRLF; the message still ends only at CRLF.CRLF.
    Normalize,
}

/// Where mail for a client domain goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A fixed next hop.
    Host { host: String, port: u16 },
    /// The domain's own MX records (port 25).
    Mx,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Host { host, port } => write!(f, "{host}:{port}"),
            Destination::Mx => f.write_str("mx"),
        }
    }
}

/// Retry policy for deliveries (Postfix's defaults: 300 s doubling to 4000 s, 5 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub lifetime: Duration,
    /// Send a "delayed" DSN once a message has waited this long; `None` sends none.
    pub delay_warning: Option<Duration>,
}

/// One client domain: mail for it is accepted and relayed to its destination.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Lower-case domain name, without a trailing dot.
    pub name: String,
    pub destination: Destination,
    /// Refuse to deliver without STARTTLS.
    pub require_tls: bool,
    /// When set, only these local parts (lower-case) are valid recipients.
    pub recipients: Option<HashSet<String>>,
    pub retry: Retry,
    /// The silo whose host name this domain's MX points at.
    pub silo: Option<String>,
    /// The filter's policy for mail to this domain (the global one with the domain's
    /// overrides).
    pub filter: FilterPolicy,
    /// The settings it was made from, as written.
    written: DomainSettings,
}

/// What becomes of mail judged spam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpamAction {
    /// Delivered untouched (the verdict is only logged and traced).
    Deliver,
    /// Delivered with `X-Spam-Status`/`X-Spam-Score` (and the subject prefix, if set).
    Tag,
    /// Kept in the quarantine until released or deleted.
    Quarantine,
    /// Refused at end of DATA with a 5xx naming the reason.
    Reject,
}

/// What becomes of mail carrying a virus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VirusAction {
    /// Refused at end of DATA (never a 250).
    Reject,
    Quarantine,
}

/// What a message gets when clamd cannot scan it (down, or too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// 451 at end of DATA: the sender retries later, nothing is lost.
    Tempfail,
    /// Accepted without the antivirus, marked degraded (symbol and header).
    Accept,
}

/// What an attachment rule does to the message it matches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentAction {
    /// The attachment is removed and a note put in its place; the rest is delivered.
    Strip,
    Quarantine,
    Reject,
}

impl AttachmentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentAction::Strip => "strip",
            AttachmentAction::Quarantine => "quarantine",
            AttachmentAction::Reject => "reject",
        }
    }
}

/// The types an attachment rule may name: kinds of content, and conditions of archives
/// and names (the malware layer's names; a test there keeps the two in step).
pub const ATTACHMENT_TYPES: &[&str] = &[
    "executable",
    "script",
    "macro-document",
    "active-pdf",
    "disk-image",
    "shortcut",
    "active-html",
    "archive",
    "document",
    "image",
    "html",
    "text",
    "other",
    "encrypted-archive",
    "archive-limit",
    "corrupt-archive",
    "uninspected-archive",
    "lying-name",
    "mime-limit",
];

/// An attachment rule: attachments (or files inside archives) of one of `types`, or
/// named with one of `extensions`, get `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Lower-case, without the dot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    pub action: AttachmentAction,
}

impl AttachmentRule {
    /// The rule, checked: known types, extensions that are extensions, something to match.
    pub fn checked(&self) -> Result<AttachmentRule, String> {
        for t in &self.types {
            if !ATTACHMENT_TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "{t:?} is not an attachment type (one of: {})",
                    ATTACHMENT_TYPES.join(", ")
                ));
            }
        }
        let mut extensions = Vec::new();
        for e in &self.extensions {
            let e = e.trim().trim_start_matches('.').to_lowercase();
            if e.is_empty()
                || e.len() > 32
                || !e
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!("{e:?} is not an extension (write \"exe\")"));
            }
            extensions.push(e);
        }
        if self.types.is_empty() && extensions.is_empty() {
            return Err("a rule names at least one of types or extensions".into());
        }
        Ok(AttachmentRule {
            types: self.types.clone(),
            extensions,
            action: self.action,
        })
    }
}

/// The attachment rules of a domain that writes none: programs, scripts, shortcuts, disk
/// images and lying names refused; macro documents, active PDF and HTML, password-protected
/// and broken archives, archives past a limit and messages whose MIME structure is past the
/// scanning limits held for review (Proxmox Mail Gateway's
/// and Microsoft's defaults are of this kind).
pub fn default_attachment_rules() -> Vec<AttachmentRule> {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    vec![
        AttachmentRule {
            types: list(&[
                "executable",
                "script",
                "shortcut",
                "disk-image",
                "lying-name",
            ]),
            extensions: list(&[
                "exe",
                "scr",
                "com",
                "pif",
                "cpl",
                "msi",
                "jar",
                "bat",
                "cmd",
                "js",
                "jse",
                "vbs",
                "vbe",
                "wsf",
                "wsh",
                "hta",
                "ps1",
                "lnk",
                "iso",
                "img",
                "vhd",
                "vhdx",
                "url",
                "library-ms",
                "settingcontent-ms",
                "msc",
                "chm",
                "one",
            ]),
            action: AttachmentAction::Reject,
        },
        AttachmentRule {
            types: list(&[
                "macro-document",
                "active-pdf",
                "active-html",
                "encrypted-archive",
                "archive-limit",
                "corrupt-archive",
                "mime-limit",
            ]),
            extensions: Vec::new(),
            action: AttachmentAction::Quarantine,
        },
    ]
}

/// A client organisation: the domains its admins and users see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganisationConfig {
    pub name: String,
    pub domains: Vec<String>,
    /// Its digest schedule as written (`daily`, `weekly`, `off`, or a duration), checked
    /// by [`digest_period`]; `None`: `digest.schedule`.
    pub digest: Option<String>,
}

/// The digests of quarantined mail sent to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// The default schedule (`digest.schedule`); `None`: off.
    pub period: Option<Duration>,
    /// How long a digest's release and delete links work.
    pub link_lifetime: Duration,
    /// The digests' `From:` address.
    pub from: String,
    /// Whether a link opens a page with a button that acts (true: link scanners that fetch
    /// every URL change nothing) or acts as it is opened (one click).
    pub confirm: bool,
}

/// The longest digest period: a year (longer ones would overflow the scheduler's clock,
/// and "off" says never).
pub const MAX_DIGEST_PERIOD: Duration = Duration::from_secs(366 * 86400);

/// A digest schedule's period: `daily`, `weekly`, a duration of an hour to a year, or `off`
/// (`None`).
pub fn digest_period(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "off" => Ok(None),
        "daily" => Ok(Some(Duration::from_secs(86400))),
        "weekly" => Ok(Some(Duration::from_secs(7 * 86400))),
        other => match humantime::parse_duration(other) {
            Ok(d) if d > MAX_DIGEST_PERIOD => Err(format!("{other:?} is longer than a year")),
            Ok(d) if d >= Duration::from_secs(3600) => Ok(Some(d)),
            Ok(_) => Err(format!("{other:?} is shorter than an hour")),
            Err(_) => Err(format!(
                "{other:?} is not a schedule: daily, weekly, off, or a duration such as \"12h\""
            )),
        },
    }
}

/// A portal account as the file seeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// Lower-case; a user's is their address.
    pub name: String,
    /// `operator`, `admin` or `user`.
    pub role: String,
    pub organisation: Option<String>,
    pub password: AccountPassword,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountPassword {
    /// Hashed when the account is seeded (the demo's; `up` warns).
    Plain(String),
    /// An argon2 PHC string.
    Hash(String),
}

/// A sender on an allow or block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A whole address, lower-case.
    Address(String),
    /// A domain and its subdomains, lower-case.
    Domain(String),
    /// A client network.
    Network(IpAddr, u8),
}

impl Sender {
    /// Reads `alice@example.com`, `example.com` (or `@example.com`) or `192.0.2.0/24`.
    pub fn parse(s: &str) -> Result<Sender, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some((ip, len)) = s.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?}: not a network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return match len.parse::<u8>() {
                Ok(l) if l <= max => Ok(Sender::Network(ip, l)),
                _ => Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            };
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Sender::Network(ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        let domain = s.strip_prefix('@').unwrap_or(&s);
        if !domain.contains('@') && is_host_name(domain) {
            return Ok(Sender::Domain(domain.to_string()));
        }
        match s.rsplit_once('@') {
            Some((l, d)) if !l.is_empty() && is_host_name(d) && !l.contains([' ', '<', '>']) => {
                Ok(Sender::Address(s))
            }
            _ => Err(format!(
                "{s:?} is not an address, a domain or a network (e.g. \"alice@example.com\", \"example.com\", \"192.0.2.0/24\")"
            )),
        }
    }

    /// Whether a message from `sender` (an address, lower-case; empty for the null
    /// sender) sent by `client` matches.
    pub fn matches(&self, sender: &str, client: IpAddr) -> bool {
        match self {
            Sender::Address(a) => a == sender,
            Sender::Domain(d) => sender.rsplit_once('@').is_some_and(|(_, sd)| {
                sd == d
                    || sd
                        .strip_suffix(d.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            }),
            Sender::Network(net, len) => in_network(client, *net, *len),
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What a DMARC failure does to mail for a client domain (the operator's override of the
/// sender domain's published policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DmarcMode {
    /// The published policy decides: `reject` refuses, `quarantine` holds.
    Enforce,
    /// A failing `reject` policy is held rather than refused.
    Quarantine,
    /// The policy only scores (its symbol), it never decides alone.
    Ignore,
}

/// The filter's policy for a client domain.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterPolicy {
    /// A score at or above this is spam.
    pub spam_threshold: f64,
    /// A score at or above this is refused whatever `spam_action` says.
    pub reject_threshold: f64,
    pub spam_action: SpamAction,
    /// Put before the subject of tagged spam (e.g. `[SPAM]`).
    pub subject_prefix: Option<String>,
    /// Senders whose mail is never judged spam.
    pub allow: Vec<Sender>,
    /// Senders whose mail is always spam.
    pub block: Vec<Sender>,
    pub dmarc: DmarcMode,
    /// Greylist mail for this domain (see [`Greylisting`]).
    pub greylist: bool,
    /// Refuse this domain's recipients at RCPT TO (550) when a client-address list
    /// (`filter.dnsbl`, any of them) lists the client, rather than score it.
    pub reject_listed: bool,
    /// Refuse this domain's recipients at RCPT TO (550) when the sender's SPF forbids the
    /// client, rather than score it.
    pub reject_spf_fail: bool,
    /// Recipients' own allow and block lists, by local part (lower-case).
    pub users: std::collections::HashMap<String, (Vec<Sender>, Vec<Sender>)>,
    pub virus_action: VirusAction,
    pub antivirus_fail_mode: FailMode,
    /// Checked in order; the strongest action of every rule that matches applies.
    pub attachment_rules: Vec<AttachmentRule>,
    /// Types and extensions (lower-case) no attachment rule applies to.
    pub attachment_allow: Vec<String>,
}

impl FilterPolicy {
    /// The policy for one recipient: the domain's, with the recipient's own lists added.
    pub fn for_recipient(&self, local: &str) -> FilterPolicy {
        let mut p = self.clone();
        if let Some((allow, block)) = self.users.get(&local.to_ascii_lowercase()) {
            p.allow.extend(allow.iter().cloned());
            p.block.extend(block.iter().cloned());
        }
        p
    }
}

/// Greylisting's timings: a new (client network, sender, recipient) triplet is refused with
/// 451 until it is retried after `delay` and within `window`; a client network whose retry
/// passed is let through for `pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greylisting {
    pub delay: Duration,
    pub window: Duration,
    pub pass: Duration,
}

impl Default for Greylisting {
    fn default() -> Greylisting {
        // Postgrey's defaults: 5 minutes, and a retry counts for 2 days; a passing client
        // is let through for 35 days.
        Greylisting {
            delay: Duration::from_secs(300),
            window: Duration::from_secs(2 * 86_400),
            pass: Duration::from_secs(35 * 86_400),
        }
    }
}

impl Default for FilterPolicy {
    fn default() -> FilterPolicy {
        FilterPolicy {
            spam_threshold: 6.0,
            reject_threshold: 15.0,
            spam_action: SpamAction::Quarantine,
            subject_prefix: None,
            allow: Vec::new(),
            block: Vec::new(),
            dmarc: DmarcMode::Enforce,
            greylist: false,
            reject_listed: false,
            reject_spf_fail: false,
            users: Default::default(),
            virus_action: VirusAction::Reject,
            antivirus_fail_mode: FailMode::Tempfail,
            attachment_rules: default_attachment_rules(),
            attachment_allow: Vec::new(),
        }
    }
}

/// A DNS list: a zone queried with a reversed client address (an IP list) or a link's
/// domain (a URI list), and what a listing scores.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsList {
    pub zone: String,
    /// The score of a listing whose return code has none of its own.
    pub score: f64,
    /// Scores by return code (`127.0.0.2` = 4.0).
    pub codes: Vec<(std::net::Ipv4Addr, f64)>,
    /// A client address list only: refuse a listed client at MAIL FROM (Postfix's
    /// `reject_rbl_client`) rather than only score it.
    pub reject: bool,
}

/// Where a rule looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleTarget {
    /// One header field (lower-case name), decoded.
    Header(String),
    /// The text of every text part (HTML as text).
    Body,
    /// The host of every link.
    Url,
}

/// A scored regular expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The symbol it reports (upper-case letters, digits and `_`).
    pub name: String,
    pub target: RuleTarget,
    pub pattern: String,
    pub score: f64,
    /// The one line a verdict shows for it.
    pub reason: String,
}

/// The filter's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Scan mail at all (off: everything accepted is queued, as before the filter).
    pub enabled: bool,
    /// The policy of domains that set none of their own.
    pub policy: FilterPolicy,
    /// Rules from the config, beside (or, by name, instead of) the starter set.
    pub rules: Vec<Rule>,
    /// Use the built-in starter rules.
    pub starter_rules: bool,
    /// The resolver the DNS checks (SPF, DKIM, DMARC, ARC, reverse DNS, DNS lists) share;
    /// empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// How long one DNS question may take.
    pub dns_timeout: Duration,
    /// Client-address lists.
    pub dnsbl: Vec<DnsList>,
    /// Link-domain lists.
    pub uribl: Vec<DnsList>,
    pub greylisting: Greylisting,
    /// Refuse at MAIL FROM a sender whose domain's SPF forbids the client (`-all`).
    pub spf_reject: bool,
    /// Messages a minute one client address may send (0: no limit), per node.
    pub rate_per_client: u32,
    /// Messages a minute one sender domain may send (0: no limit), per node.
    pub rate_per_sender_domain: u32,
    /// ClamAV's clamd, when one is configured.
    pub clamd: Option<Clamd>,
    /// Limits on opening one attachment's archives.
    pub archives: ArchiveLimits,
    /// A file of SHA-256 hashes of files to refuse as viruses.
    pub hash_blocklist: Option<std::path::PathBuf>,
}

/// Where clamd listens and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clamd {
    /// `IP:PORT`, or a Unix socket's path.
    pub address: ClamdAddress,
    /// How long the scan of one message's parts may take.
    pub timeout: Duration,
    /// Parts larger than this are not sent (clamd's own `StreamMaxLength` is 25 MiB by
    /// default).
    pub max_size: usize,
    /// Connections at once, kept open between scans.
    pub connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

/// Hard limits on opening the archives of one attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_depth: u32,
    pub max_files: usize,
    pub max_expanded: usize,
    pub max_ratio: u32,
}

impl Default for ArchiveLimits {
    fn default() -> ArchiveLimits {
        ArchiveLimits {
            max_depth: 4,
            max_files: 1000,
            max_expanded: 32 << 20,
            max_ratio: 100,
        }
    }
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            enabled: true,
            policy: FilterPolicy::default(),
            rules: Vec::new(),
            starter_rules: true,
            nameservers: Vec::new(),
            dns_timeout: Duration::from_secs(2),
            dnsbl: Vec::new(),
            uribl: Vec::new(),
            greylisting: Greylisting::default(),
            spf_reject: false,
            rate_per_client: 0,
            rate_per_sender_domain: 0,
            clamd: None,
            archives: ArchiveLimits::default(),
            hash_blocklist: None,
        }
    }
}

/// SMTP reception limits and policy.
#[derive(Debug, Clone)]
pub struct Smtp {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_errors: usize,
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    /// How long one command line may take to arrive, whole (not per read).
    pub command_timeout: Duration,
    /// The first allowance for message content, and its cap (Postfix's `smtpd_timeout`
    /// for DATA/BDAT under `smtpd_per_request_deadline`).
    pub data_timeout: Duration,
    /// Octets a second message content must keep up (Postfix's `smtpd_min_data_rate`):
    /// each read of N octets extends the content deadline by N / rate seconds.
    pub min_data_rate: usize,
    /// Both timeouts above shrink to this while more than 80 % of `max_sessions` are open
    /// (Postfix's stress mode).
    pub stress_timeout: Duration,
    /// How long a new client must wait for the greeting without talking (Postfix's
    /// postscreen_greet_wait); one that talks first is refused. Zero: off. A client that
    /// waited is not made to wait again for a day.
    pub greet_pause: Duration,
    /// The octets of message content all sessions together may hold in memory; beyond it
    /// new DATA/BDAT get 452 4.3.1.
    pub max_message_memory: usize,
    /// Where `RCPT TO:<postmaster>` (and postmaster at the server's own name) goes.
    pub postmaster: Option<String>,
    pub bare_newlines: BareNewlines,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Delivery behaviour shared by all destinations.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub destination_concurrency: usize,
    /// The most messages a node holds leases on (claimed from the queue, or received and
    /// not yet delivered): past it, the node claims nothing more and leaves the rest of
    /// the queue to others (Postfix's qmgr_message_active_limit).
    pub active_limit: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub connection_cache_time: Duration,
}

/// The demo mailbox server that stands in for a client's own mail server.
#[derive(Debug, Clone)]
pub struct Sink {
    pub listen: SocketAddr,
}

/// Active health checking: how often, and how many results in a row change the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a target back.
    pub rise: u32,
    /// Consecutive failures that take a target out.
    pub fall: u32,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

/// How the DNS orders a silo's cluster addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    /// All healthy addresses, the list rotated by one per answer.
    #[default]
    Rotate,
    /// One address per answer, in turn (weighted by the clusters' `weight`).
    Cycle,
}

impl fmt::Display for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rotation::Rotate => "rotate",
            Rotation::Cycle => "cycle",
        })
    }
}

/// How a balancer picks a mail server for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Smooth weighted round-robin (nginx's), by loading.
    #[default]
    RoundRobin,
    /// Fewest active sessions relative to loading.
    LeastConnections,
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConnections => "least-connections",
        })
    }
}

/// One mail server behind a cluster's balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name in banners, Received: headers and the `lb` commands (e.g. `c1-s2`).
    pub name: String,
    /// Its internal address, where the balancer connects.
    pub address: SocketAddr,
    /// The operator's weight for it, from its capacity (changeable at run time).
    pub loading: u32,
    /// Concurrent sessions the balancer sends it at most.
    pub maxconn: usize,
}

/// A cluster: a balancer on a public address in front of mail servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// The public address the balancer listens on (and the DNS hands out).
    pub address: SocketAddr,
    /// With PROXY on, the address the balancer connects to its servers from; the servers
    /// accept PROXY headers only from it. Without PROXY the kernel picks the source.
    pub source: IpAddr,
    /// Send a PROXY v2 header to the servers (and have them require one).
    pub proxy: bool,
    pub scheduler: Scheduler,
    /// The cluster's share of answers under `cycle` rotation.
    pub weight: u32,
    /// How long a connection waits for a server below its maxconn before the balancer
    /// itself answers 421.
    pub queue_timeout: Duration,
    /// A returning server's loading ramps up over this long.
    pub slowstart: Duration,
    /// Listener threads (one SO_REUSEPORT socket and single-threaded runtime each); `None`
    /// means one per core.
    pub threads: Option<usize>,
    /// Once one side of a relayed session has closed, how long the other has to follow.
    pub fin_timeout: Duration,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold through this
    /// balancer at once, over all its servers; more get 421 from the balancer.
    pub max_connections_per_client: usize,
    /// Connections the balancer relays at once; past it, a newcomer takes the place of the
    /// oldest connection of the client holding the most (see `listen::Admission`).
    pub max_connections: usize,
    pub health: Health,
    pub servers: Vec<Server>,
}

/// A silo: one host name in DNS answering with its clusters' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silo {
    /// The host name client MX records point at (lower case, no trailing dot).
    pub name: String,
    pub rotation: Rotation,
    pub ttl: u32,
    /// How the DNS checks each cluster's balancer.
    pub health: Health,
    pub clusters: Vec<Cluster>,
}

/// A static record of a DNS zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(std::net::Ipv4Addr),
    Aaaa(std::net::Ipv6Addr),
    Mx { preference: u16, exchange: String },
    Txt(String),
    Ns(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fully qualified, lower case, no trailing dot.
    pub name: String,
    pub ttl: u32,
    pub data: RecordData,
}

/// A zone the DNS is authoritative for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lower case, no trailing dot.
    pub name: String,
    pub ttl: u32,
    pub serial: u32,
    /// SOA MNAME and the NS records of the apex.
    pub nameservers: Vec<String>,
    /// SOA RNAME, as a domain name (`hostmaster.example.net`).
    pub hostmaster: String,
    /// The SOA MINIMUM: how long resolvers cache a negative answer.
    pub negative_ttl: u32,
    pub records: Vec<Record>,
}

/// Response rate limiting per client prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses a second to one prefix; more are dropped.
    pub responses_per_second: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

/// The authoritative DNS role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// UDP and TCP on each.
    pub listen: Vec<SocketAddr>,
    pub zones: Vec<Zone>,
    pub rate_limit: Option<RateLimit>,
}

/// Where the durable state lives and how nodes share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `postgres://...` for a fleet sharing PostgreSQL; `None` for the embedded store in the
    /// data directory.
    pub url: Option<String>,
    /// How long a node's claim on a message lasts unless renewed (it renews every third of
    /// this while delivering); a dead node's mail is taken over after it.
    pub lease: Duration,
    /// How long message traces are kept.
    pub trace_retention: Duration,
    /// How long quarantined mail is kept before it is deleted.
    pub quarantine_retention: Duration,
    /// How long the statistics' hourly counters are kept.
    pub stats_retention: Duration,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            url: None,
            lease: Duration::from_secs(60),
            trace_retention: Duration::from_secs(30 * 86400),
            quarantine_retention: Duration::from_secs(30 * 86400),
            stats_retention: Duration::from_secs(400 * 86400),
        }
    }
}

/// The local control endpoint (HTTP): balancer statistics and run-time changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub listen: SocketAddr,
    /// HTTPS (`control.tls`; always off loopback, where plain HTTP is refused), with
    /// smtp.tls_cert and smtp.tls_key or a self-signed certificate of its own.
    pub tls: bool,
    /// The portal's address as users reach it (in digests' links): `control.url`, by
    /// default `http://LISTEN` (`https://` with TLS).
    pub url: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a file name, or `<demo>`).
    pub source: String,
    pub smtp: Smtp,
    pub delivery: Delivery,
    /// The retry policy for destinations that are not client domains (DSNs to senders);
    /// client domains carry their own, which defaults to this.
    pub retry: Retry,
    pub domains: Vec<Domain>,
    pub sink: Option<Sink>,
    pub dns: Option<Dns>,
    pub silos: Vec<Silo>,
    pub control: Option<Control>,
    pub store: StoreSettings,
    pub filter: Filter,
    /// The portal's client organisations and accounts (seeded into the store).
    pub organisations: Vec<OrganisationConfig>,
    pub accounts: Vec<AccountConfig>,
    pub digest: Digest,
    /// Things allowed but probably not meant (`config check` prints them, `up` logs them).
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|reason| Error::Read {
            file: file.clone(),
            reason,
        })?;
        Config::parse(&file, &text)
    }

    /// The built-in demo configuration.
    pub fn demo() -> Config {
        Config::parse("<demo>", DEMO).expect("the built-in demo config is valid")
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, Error> {
        let raw: raw::File = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = in_words(e.message().trim());
            let key = key_at(text, &span);
            invalid(file, text, span, &key, message)
        })?;
        raw.validate(file, text)
    }

    /// A cluster by name, with its silo.
    pub fn cluster(&self, name: &str) -> Option<(&Silo, &Cluster)> {
        self.silos
            .iter()
            .find_map(|s| s.clusters.iter().find(|c| c.name == name).map(|c| (s, c)))
    }

    /// The client domain `name` (lower-case, exact), if configured.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == name)
    }
}

fn invalid(file: &str, text: &str, span: Range<usize>, key: &str, message: String) -> Error {
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Error::Invalid {
        file: file.to_string(),
        line,
        column,
        key: key.to_string(),
        message,
    }
}

/// The full path of the key at the start of the line that holds `span` (for the parser's
/// own errors): the table headers before it give the path, with the index of each array of
/// tables, as the validation's own messages write it (`silo[0].cluster[2].server[1].loading`).
fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    // How many times each array of tables has been opened under its current parent.
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut table = String::new();
    let mut header_line = false;
    for (i, line) in text[..start]
        .lines()
        .chain(text[start..].lines().take(1))
        .enumerate()
    {
        let trimmed = line.trim();
        let is_current = text[..start].lines().count() == i;
        let (array, path) = if let Some(p) = trimmed
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
        {
            (true, p.trim())
        } else if let Some(p) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
            (false, p.trim())
        } else {
            continue;
        };
        header_line = is_current;
        if array {
            *counts.entry(path.to_string()).or_insert(0) += 1;
            // Arrays below this one start counting afresh.
            let deeper = format!("{path}.");
            counts.retain(|k, _| !k.starts_with(&deeper));
        }
        let mut rendered = Vec::new();
        let mut prefix = String::new();
        for part in path.split('.') {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(part.trim());
            match counts.get(&prefix) {
                Some(n) => rendered.push(format!("{}[{}]", part.trim(), n - 1)),
                None => rendered.push(part.trim().to_string()),
            }
        }
        table = rendered.join(".");
    }
    let line = text[start..].lines().next().unwrap_or("");
    let key = if header_line {
        ""
    } else {
        line.split('=').next().unwrap_or("").trim()
    };
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(top level)".into(),
        (true, false) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// The parser's messages with Rust type names put in words.
fn in_words(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("unknown variant", "unknown value"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, e.g. [\"a\", \"b\"]",
        ),
        ("expected a string", "expected a string in quotes"),
        ("missing field", "missing key"),
        ("unknown field", "unknown key"),
        ("invalid type: integer", "a number"),
        ("invalid type: string", "a string"),
        ("invalid type: sequence", "a list"),
        ("invalid type: boolean", "true/false"),
        ("invalid type: map", "a table"),
        ("invalid value: integer", "the number"),
    ] {
        m = m.replace(rust, words);
    }
    m
}

/// Whether `name` is a plain host name: dot-separated labels of letters, digits (any script,
/// as SMTPUTF8 addresses may have them) and hyphens, none empty, over 63 octets or starting
/// with a hyphen.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Whether `name` can own DNS records: a host name whose labels may also hold `_`, as the
/// names of service records do (`_dmarc`, `selector._domainkey`).
pub fn is_record_name(name: &str) -> bool {
    is_host_name(&name.replace('_', "x"))
}

/// Whether `name` can be a client domain: an ASCII host name of two labels or more whose
/// last label is not a number (so neither a top-level domain alone nor an IP address).
pub fn is_domain_name(name: &str) -> bool {
    name.is_ascii()
        && is_host_name(name)
        && name
            .rsplit_once('.')
            .is_some_and(|(_, tld)| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a size such as `25MiB`, `10MB`, `512k` or `1048576`.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: usize = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (use B, kB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

mod raw;
mod runtime;

pub use runtime::{DomainSettings, DomainTable, FilterSettings, RetrySettings, UserLists};

/// Whether an address is inside the provider's network or no client's host: loopback,
/// private, shared (100.64/10), link-local, unspecified or "this network" (0/8),
/// broadcast, multicast, and IPv6 forms that carry such an IPv4 address (mapped,
/// compatible, NAT64's 64:ff9b::/96).
pub fn internal_ip(ip: IpAddr) -> bool {
    use std::net::Ipv4Addr;
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_multicast()
                || first == 0
                || (first == 100 && second & 0xc0 == 64)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let embedded = Ipv4Addr::from_bits(a.to_bits() as u32);
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|v4| internal_ip(v4.into()))
                || (s[..6] == [0; 6] && internal_ip(embedded.into()))
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && internal_ip(embedded.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse("t.toml", text).unwrap_err().to_string()
    }

    const MIN: &str = "[smtp]\nhostname = \"mx\"\nlisten = [\"127.0.0.1:25\"]\n[[domain]]\nname = \"example.com\"\ndestination = \"127.0.0.1:26\"\n";

    /// Digests and the portal's URL: defaults, and each bad value named by its key.
    #[test]
    fn digest_settings() {
        let c = Config::parse("t.toml", MIN).unwrap();
        assert_eq!(c.digest.period, Some(Duration::from_secs(86400)));
        assert_eq!(c.digest.link_lifetime, Duration::from_secs(14 * 86400));
        assert_eq!(c.digest.from, "quarantine@mx");
        assert!(c.digest.confirm, "links confirm by default");
        let one_click = Config::parse("t.toml", &format!("{MIN}[digest]\nconfirm = false\n"));
        assert!(!one_click.unwrap().digest.confirm);
        assert!(
            err(&format!("{MIN}[digest]\nconfirm = \"no\"\n")).contains("t.toml:8"),
            "a string where a boolean goes is named by its line"
        );
        let c = Config::parse(
            "t.toml",
            &format!("{MIN}[control]\nlisten = \"127.0.0.1:8025\"\n[digest]\nschedule = \"weekly\"\nfrom = \"q@example.com\"\n[[organisation]]\nname = \"A\"\ndigest = \"12h\"\n"),
        )
        .unwrap();
        assert_eq!(c.digest.period, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.organisations[0].digest.as_deref(), Some("12h"));
        let control = c.control.unwrap();
        assert_eq!(control.url, "http://127.0.0.1:8025");
        assert!(!control.tls, "plain HTTP on loopback by default");
        let c = Config::parse(
            "t.toml",
            &format!("{MIN}[control]\nlisten = \"192.0.2.1:8025\"\n"),
        )
        .unwrap();
        let control = c.control.unwrap();
        assert!(control.tls, "HTTPS off loopback");
        assert_eq!(control.url, "https://192.0.2.1:8025");
        let e = err(&format!(
            "{MIN}[control]\nlisten = \"192.0.2.1:8025\"\ntls = false\n"
        ));
        assert!(
            e.contains("control.tls: 192.0.2.1:8025 is not a loopback address"),
            "{e}"
        );
        assert_eq!(digest_period("off"), Ok(None));
        for (tail, says) in [
            (
                "[digest]\nschedule = \"hourly\"\n",
                "digest.schedule: \"hourly\" is not a schedule",
            ),
            (
                "[digest]\nschedule = \"5m\"\n",
                "digest.schedule: \"5m\" is shorter than an hour",
            ),
            (
                "[digest]\nschedule = \"18446744073709551615s\"\n",
                "digest.schedule: \"18446744073709551615s\" is longer than a year",
            ),
            ("[digest]\nfrom = \"not an address\"\n", "digest.from"),
            (
                "[digest]\nlink_lifetime = \"0s\"\n",
                "digest.link_lifetime: must be more than zero",
            ),
            (
                "[[organisation]]\nname = \"A\"\ndigest = \"often\"\n",
                "organisation[0].digest",
            ),
            (
                "[control]\nlisten = \"127.0.0.1:8025\"\nurl = \"portal.example\"\n",
                "control.url",
            ),
            (
                "[control]\nlisten = \"127.0.0.1:8025\"\nurl = \"https://p/?x\"\n",
                "control.url",
            ),
        ] {
            let e = err(&format!("{MIN}{tail}"));
            assert!(e.contains(says), "{tail}: {e}");
        }
        let c = Config::parse(
            "t.toml",
            &format!("{MIN}[control]\nlisten = \"127.0.0.1:8025\"\nurl = \"https://portal.example.net/\"\n"),
        )
        .unwrap();
        assert_eq!(c.control.unwrap().url, "https://portal.example.net");
    }

    /// The fleet example that scripts/fleet.sh runs: four mail servers in two clusters, on
    /// PostgreSQL, the demo's addresses.
    #[test]
    fn the_fleet_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet.toml");
        let c = Config::load(&path).unwrap();
        assert!(c.store.url.as_deref().unwrap().starts_with("postgres://"));
        assert!(c.smtp.listen.is_empty());
        let servers: Vec<(&str, String)> = c.silos[0]
            .clusters
            .iter()
            .flat_map(|cl| {
                cl.servers
                    .iter()
                    .map(|s| (s.name.as_str(), s.address.to_string()))
            })
            .collect();
        assert_eq!(
            servers,
            [
                ("c1-s1", "127.0.2.1:2525".to_string()),
                ("c1-s2", "127.0.2.2:2525".into()),
                ("c2-s1", "127.0.2.3:2525".into()),
                ("c2-s2", "127.0.2.4:2525".into())
            ]
        );
        assert_eq!(c.control.unwrap().listen.to_string(), "127.0.0.1:8025");
    }

    #[test]
    fn demo_is_valid() {
        let c = Config::demo();
        assert_eq!(
            c.smtp.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.domain("example.com").is_some());
        assert!(c.domain("example.org").is_some());
        assert_eq!(c.sink.as_ref().unwrap().listen.port(), 2526);
        assert_eq!(c.domains[0].retry.min_backoff, Duration::from_secs(300));
        let silo = &c.silos[0];
        assert_eq!(silo.name, "silo1.mailsilo.test");
        assert_eq!(silo.rotation, Rotation::Rotate);
        assert_eq!(silo.clusters.len(), 4);
        for (i, cl) in silo.clusters.iter().enumerate() {
            assert_eq!(
                cl.address,
                format!("127.0.1.{}:2525", i + 1).parse().unwrap()
            );
            assert_eq!(cl.source, cl.address.ip());
            let loadings: Vec<u32> = cl.servers.iter().map(|s| s.loading).collect();
            assert_eq!(loadings, vec![1, 2]);
            assert_eq!(
                cl.servers[1].address,
                format!("127.0.2.{}:2525", 2 * i + 2).parse().unwrap()
            );
        }
        assert_eq!(
            c.dns.as_ref().unwrap().listen,
            vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.domains[0].silo.as_deref(), Some("silo1.mailsilo.test"));
        assert_eq!(c.cluster("c3").unwrap().1.servers[0].name, "c3-s1");
    }

    #[test]
    fn topology_rules() {
        let demo = DEMO.to_string();
        let e = err(&demo.replace(
            "address = \"127.0.2.8:2525\"",
            "address = \"127.0.2.1:2525\"",
        ));
        assert!(e.contains("silo[0].cluster[3].server[1].address: address 127.0.2.1:2525 is already used by silo[0].cluster[0].server[0].address"), "{e}");
        let e = err(&demo.replacen(
            "silo = \"silo1.mailsilo.test\"",
            "silo = \"silo9.mailsilo.test\"",
            1,
        ));
        assert!(
            e.contains("domain[0].silo: unknown silo \"silo9.mailsilo.test\""),
            "{e}"
        );
        let e = err(&demo.replace("loading = 2\n", "loading = 0\n"));
        assert!(e.contains(".loading: must be from 1 to 1000"), "{e}");
        let e = err(&demo.replace(
            "name = \"c4\"\n",
            "name = \"c4\"\nmax_connections_per_client = 0\n",
        ));
        assert!(
            e.contains("silo[0].cluster[3].max_connections_per_client: must be at least 1"),
            "{e}"
        );
        let cluster = &Config::demo().silos[0].clusters[3];
        assert_eq!(
            (cluster.max_connections_per_client, cluster.max_connections),
            (50, 1000)
        );
        let defaults =
            Config::parse("t.toml", &demo.replace("max_connections = 1000", "")).unwrap();
        assert_eq!(defaults.silos[0].clusters[3].max_connections, 10_000);
        let e = err(&demo.replace("name = \"c4-s2\"", "name = \"c1-s1\""));
        assert!(e.contains("server name \"c1-s1\" is used twice"), "{e}");
        let e = err(&demo.replace(
            "name = \"silo1.mailsilo.test\"",
            "name = \"silo1.elsewhere.test\"",
        ));
        assert!(
            e.contains("silo[0].name: silo silo1.elsewhere.test is not inside any [[dns.zone]]"),
            "{e}"
        );
        let e = err(&demo.replace("type = \"A\"", "type = \"SRV\""));
        assert!(
            e.contains("dns.zone[0].record[0].type: unsupported record type \"SRV\""),
            "{e}"
        );
        let e = err(&demo.replace("listen = \"127.0.0.1:8025\"", "listen = \"127.0.0.1:5353\""));
        assert!(
            e.contains("dns.listen: address 127.0.0.1:5353 is already used by control.listen"),
            "{e}"
        );
        // A cluster without servers has zero total loading.
        let start = demo
            .find("[[silo.cluster.server]]\nname = \"c4-s1\"")
            .unwrap();
        let e = err(&demo[..start]);
        assert!(
            e.contains("silo[0].cluster[3].server: zero total loading"),
            "{e}"
        );
        // Every error carries a line number that points at the key.
        let bad = demo.replace("loading = 2\n", "loading = 0\n");
        let line = bad.lines().position(|l| l == "loading = 0").unwrap() + 1;
        assert!(
            err(&bad).starts_with(&format!("t.toml:{line}:")),
            "{}",
            err(&bad)
        );
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = Config::parse("t.toml", MIN).unwrap();
        assert_eq!(c.smtp.max_message_size, 25 << 20);
        assert_eq!(c.smtp.max_recipients, 1000);
        assert_eq!(c.domains[0].retry.lifetime, Duration::from_secs(5 * 86400));
        assert_eq!(
            c.domains[0].destination,
            Destination::Host {
                host: "127.0.0.1".into(),
                port: 26
            }
        );
    }

    /// The filter's settings: each mistake named by line and key.
    #[test]
    fn filter_settings_are_checked() {
        let cases = [
            (
                "[filter]\n[[filter.rule]]\nname = \"X\"\nbody = true\npattern = \"(unclosed\"\nscore = 1.0\n",
                "t.toml:11:11: filter.rule[0].pattern: not a valid regular expression",
            ),
            (
                "[filter]\n[[filter.rule]]\nname = \"lower\"\nbody = true\npattern = \"x\"\nscore = 1.0\n",
                "t.toml:9:8: filter.rule[0].name:",
            ),
            (
                "[filter]\n[[filter.rule]]\nname = \"BOTH\"\nbody = true\nurl = true\npattern = \"x\"\nscore = 1.0\n",
                "t.toml:9:8: filter.rule[0].name: a rule looks at exactly one of",
            ),
            (
                "[filter]\nnameservers = [\"resolver\"]\n",
                "t.toml:8:16: filter.nameservers:",
            ),
            (
                "[filter]\nspam_action = \"discard\"\n",
                "t.toml:8:15: filter.spam_action: unknown value `discard`, expected one of",
            ),
            (
                "[filter]\nspam_threshold = 9.0\nreject_threshold = 8.0\n",
                "t.toml:9:20: filter.reject_threshold: 8 is below spam_threshold 9",
            ),
            (
                "[filter]\nallow = [\"not an address\"]\n",
                "t.toml:8:10: filter.allow:",
            ),
            (
                "[filter]\ndns_timeout = \"1m\"\n",
                "t.toml:8:15: filter.dns_timeout: must be more than zero and at most 30s",
            ),
            (
                "[[filter.uribl]]\nzone = \"uribl.example\"\nreject = true\n",
                "t.toml:8:8: filter.uribl[0].reject: reject applies to client-address lists",
            ),
            (
                "[[filter.dnsbl]]\nzone = \"bl.example\"\ncodes = { \"two\" = 1.0 }\n",
                "filter.dnsbl[0].codes: \"two\" is not a return code",
            ),
            (
                "[filter]\n[[filter.attachment_rule]]\ntypes = [\"script\"]\naction = \"reject\"\n[[filter.attachment_rule]]\ntypes = [\"exe\"]\naction = \"strip\"\n",
                "t.toml:12:10: filter.attachment_rule[1].types: \"exe\" is not an attachment type",
            ),
            (
                "[filter]\n[[filter.attachment_rule]]\naction = \"delete\"\n",
                "t.toml:9:10: filter.attachment_rule[0].action: unknown value `delete`",
            ),
            (
                "[filter.clamd]\naddress = \"clamd.local\"\n",
                "t.toml:8:11: filter.clamd.address: \"clamd.local\" is neither IP:PORT",
            ),
            (
                &format!(
                    "[dns]\nlisten = [\"127.0.0.1:5353\"]\n[[dns.zone]]\nname = \"z.test\"\nnameservers = [\"ns.z.test\"]\nhostmaster = \"h.z.test\"\n[[dns.zone.record]]\nname = \"k\"\ntype = \"TXT\"\nvalue = \"{}\"\n",
                    "p".repeat(2049)
                ),
                "t.toml:16:9: dns.zone[0].record[0].value: a TXT value is ASCII of at most 2048 characters (served as strings of 255); this one has 2049 bytes",
            ),
            (
                "[filter.archives]\nmax_depth = 0\n",
                "t.toml:8:13: filter.archives.max_depth: must be at least 1",
            ),
            (
                "[filter]\nhash_blocklist = \"/nonexistent/sha256.txt\"\n",
                "t.toml:8:18: filter.hash_blocklist: /nonexistent/sha256.txt cannot be read",
            ),
        ];
        for (tail, want) in cases {
            let e = err(&format!("{MIN}{tail}"));
            assert!(e.contains(want), "{tail}: {e}");
        }
        let ok = Config::parse(
            "t.toml",
            &format!("{MIN}[filter]\nspam_action = \"tag\"\nsubject_prefix = \"[SPAM]\"\nnameservers = [\"127.0.0.1:5353\", \"192.0.2.53\"]\n[filter.rate_limit]\nclient = 10\n[[filter.dnsbl]]\nzone = \"bl.example\"\nreject = true\ncodes = {{ \"127.0.0.2\" = 4.0 }}\n"),
        )
        .unwrap();
        assert_eq!(ok.filter.nameservers[1].port(), 53);
        assert_eq!(ok.filter.rate_per_client, 10);
        assert!(ok.filter.dnsbl[0].reject);
        assert_eq!(
            ok.filter.dnsbl[0].codes,
            vec![("127.0.0.2".parse().unwrap(), 4.0)]
        );
        assert_eq!(ok.domains[0].filter.spam_action, SpamAction::Tag);
        assert_eq!(
            ok.domains[0].filter.subject_prefix.as_deref(),
            Some("[SPAM]")
        );
    }

    /// The portal's organisations and accounts: each mistake named by line and key.
    #[test]
    fn accounts_are_checked() {
        let org = "[[organisation]]\nname = \"Org\"\ndomains = [\"example.com\"]\n";
        let cases = [
            (
                "[[account]]\nname = \"op\"\nrole = \"root\"\npassword = \"x\"\n",
                "account[0].role: \"root\" is not a role",
            ),
            (
                "[[account]]\nname = \"a@example.com\"\nrole = \"admin\"\npassword = \"x\"\n",
                "account[0].organisation: an admin needs an organisation",
            ),
            (
                "[[account]]\nname = \"a@example.org\"\nrole = \"user\"\norganisation = \"Org\"\npassword = \"x\"\n",
                "account[0].name: a user is named by their address",
            ),
            (
                "[[account]]\nname = \"op\"\nrole = \"operator\"\npassword = \"x\"\npassword_hash = \"$argon2id$x\"\n",
                "account[0].password: write one of password or password_hash",
            ),
            (
                "[[account]]\nname = \"op\"\nrole = \"operator\"\npassword = \"short\"\n",
                "account[0].password: at least 10 characters",
            ),
            (
                "[[account]]\nname = \"op\"\nrole = \"operator\"\npassword_hash = \"md5:abc\"\n",
                "account[0].password_hash: an argon2 hash",
            ),
            (
                "[[organisation]]\nname = \"Two\"\ndomains = [\"example.com\"]\n",
                "organisation[1].domains: example.com already belongs to organisation \"Org\"",
            ),
        ];
        for (tail, want) in cases {
            let e = err(&format!("{MIN}{org}{tail}"));
            assert!(e.contains(want), "{tail}: {e}");
            assert!(e.starts_with("t.toml:"), "{e}");
        }
        let ok = Config::parse(
            "t.toml",
            &format!("{MIN}{org}[[account]]\nname = \"Alice@Example.com\"\nrole = \"user\"\norganisation = \"Org\"\npassword = \"alice-password\"\n"),
        )
        .unwrap();
        assert_eq!(ok.accounts[0].name, "alice@example.com");
        assert_eq!(ok.organisations[0].domains, ["example.com"]);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err(&MIN.replace("127.0.0.1:26", "nowhere"));
        assert!(
            e.starts_with("t.toml:6:15: domain[0].destination: invalid destination"),
            "{e}"
        );
        let e = err(&format!("{MIN}[retry]\nmin_backoff = \"soon\"\n"));
        assert!(
            e.starts_with("t.toml:8:15: retry.min_backoff: invalid duration"),
            "{e}"
        );
        let e = err(&MIN.replace("hostname", "hostnme"));
        assert!(
            e.starts_with("t.toml:2:1: smtp.hostnme: unknown key `hostnme`"),
            "{e}"
        );
        let e = err(&format!(
            "{MIN}[[domain]]\nname = \"Example.COM\"\ndestination = \"mx\"\n"
        ));
        assert!(
            e.starts_with("t.toml:8:8: domain[1].name: domain example.com is configured twice"),
            "{e}"
        );
        let e = err(&MIN.replace("[\"127.0.0.1:25\"]", "[\"127.0.0.1\"]"));
        assert!(
            e.starts_with("t.toml:3:11: smtp.listen: invalid address"),
            "{e}"
        );
        let e = err("[smtp]\nhostname = \"mx\"\nlisten = [\"127.0.0.1:25\"]\n");
        assert!(e.contains("domain: no client domains"), "{e}");
        let e = err(&format!("{MIN}[smtp2]\n"));
        assert!(e.contains("smtp2: unknown key `smtp2`"), "{e}");
        // The parser's own errors name the full key and say what was expected in words.
        let e = err(&MIN.replace("listen = [", "max_recipients = \"many\"\nlisten = ["));
        assert!(
            e.starts_with(
                "t.toml:3:18: smtp.max_recipients: a string \"many\", expected a whole number"
            ),
            "{e}"
        );
        let e = err(&DEMO.replace("loading = 2\n", "loading = -2\n"));
        assert!(
            e.contains(
                "silo[0].cluster[0].server[1].loading: the number `-2`, expected a whole number"
            ),
            "{e}"
        );
        let demo_last = DEMO.rfind("loading = 2\n").unwrap();
        let mut text = DEMO.to_string();
        text.replace_range(demo_last..demo_last + 11, "loading = \"2\"");
        let e = err(&text);
        assert!(
            e.contains("silo[0].cluster[3].server[1].loading: a string"),
            "{e}"
        );
        let e = err(&format!("{MIN}[domain.retry]\nlifetime = 5\n"));
        assert!(
            e.contains("domain[0].retry.lifetime: a number `5`, expected a string in quotes"),
            "{e}"
        );
        let e = err(&MIN.replace("[\"127.0.0.1:25\"]", "\"127.0.0.1:25\""));
        assert!(
            e.contains("smtp.listen: a string \"127.0.0.1:25\", expected a list"),
            "{e}"
        );
        let e = err(&MIN.replace("listen = [", "max_recipients = 10\nlisten = ["));
        assert!(
            e.starts_with("t.toml:3:18: smtp.max_recipients: RFC 5321 requires at least 100"),
            "{e}"
        );
    }

    #[test]
    fn timeouts_names_files_and_warnings() {
        let e = err(&MIN.replace("listen = [", "command_timeout = \"0s\"\nlisten = ["));
        assert!(
            e.contains("smtp.command_timeout: must be more than zero"),
            "{e}"
        );
        let ok = Config::parse(
            "t.toml",
            &format!("{MIN}[delivery]\nconnection_cache_time = \"0s\"\n"),
        );
        assert!(ok.is_ok(), "zero turns connection caching off");
        let e = err(&MIN.replace("hostname = \"mx\"", "hostname = \"mx_mail!silo\""));
        assert!(
            e.contains("smtp.hostname: \"mx_mail!silo\" is not a host name"),
            "{e}"
        );
        let e = err(&MIN.replace(
            "listen = [",
            "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\nlisten = [",
        ));
        assert!(
            e.contains("smtp.tls_cert: cannot read \"/nonexistent/cert.pem\""),
            "{e}"
        );
        let c = Config::parse("t.toml", MIN).unwrap();
        assert!(
            c.warnings[0].starts_with("smtp.postmaster is not set"),
            "{:?}",
            c.warnings
        );
        let c = Config::parse(
            "t.toml",
            &format!("{MIN}[control]\nlisten = \"0.0.0.0:8025\"\n"),
        )
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("is not a loopback address")),
            "{:?}",
            c.warnings
        );
        assert!(Config::demo().warnings.is_empty());
        let e = err("");
        assert!(e.contains("(top level): missing key `smtp`"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn recipients_are_local_parts() {
        let c = Config::parse(
            "t.toml",
            &format!("{MIN}recipients = [\"Alice\", \"bob\"]\n"),
        )
        .unwrap();
        assert!(c.domains[0].recipients.as_ref().unwrap().contains("alice"));
        let e = err(&format!("{MIN}recipients = [\"alice@example.com\"]\n"));
        assert!(
            e.contains("domain[0].recipients: \"alice@example.com\" is not a local part"),
            "{e}"
        );
    }
}
