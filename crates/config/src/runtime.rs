//! The part of the configuration that can change while mailsilo runs: the client domains
//! and their settings. In the TOML they are only the seed; once a gateway has started, the
//! store holds them, the control API changes them, and every node reloads them. This module
//! owns their portable form ([`DomainSettings`], what the store and the API carry) and its
//! validation, the same rules as the TOML's, and the live table the roles read
//! ([`DomainTable`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{DmarcMode, Domain, FilterPolicy, Retry, Sender, Silo, SpamAction, is_domain_name};

/// A client domain's settings as the store keeps them and the API takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainSettings {
    /// `HOST:PORT` or `mx`.
    pub destination: String,
    #[serde(default)]
    pub require_tls: bool,
    /// Valid local parts; `None`: any.
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
    /// Overrides of the global retry policy.
    #[serde(default, skip_serializing_if = "RetrySettings::is_empty")]
    pub retry: RetrySettings,
    /// The silo whose host name the domain's MX points at.
    #[serde(default)]
    pub silo: Option<String>,
    /// Overrides of the global filter policy.
    #[serde(default, skip_serializing_if = "FilterSettings::is_empty")]
    pub filter: FilterSettings,
}

/// A domain's overrides of the filter policy; absent fields take the global policy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_action: Option<SpamAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// Senders (address, domain or network) never judged spam.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Senders always judged spam.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
    /// What a DMARC failure does: enforce the sender's policy, quarantine rather than
    /// reject, or ignore it (score only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<DmarcMode>,
    /// Greylist mail for this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greylist: Option<bool>,
    /// Refuse recipients at RCPT TO when a client-address list lists the client (default:
    /// score it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_listed: Option<bool>,
    /// Refuse recipients at RCPT TO when the sender's SPF forbids the client (default:
    /// score it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_spf_fail: Option<bool>,
    /// Allow and block lists of single recipients (by local part), on top of the domain's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub users: std::collections::BTreeMap<String, UserLists>,
    /// What a virus does: reject (the default) or quarantine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virus_action: Option<crate::VirusAction>,
    /// When clamd cannot scan: tempfail (451, the default) or accept (degraded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antivirus_fail_mode: Option<crate::FailMode>,
    /// Attachment rules; written ones replace the global (or default) rules whole.
    #[serde(
        default,
        rename = "attachment_rule",
        skip_serializing_if = "Option::is_none"
    )]
    pub attachment_rules: Option<Vec<crate::AttachmentRule>>,
    /// Types or extensions no attachment rule applies to (added to the global ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_allow: Vec<String>,
}

/// One recipient's own allow and block lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserLists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
}

impl FilterSettings {
    pub fn is_empty(&self) -> bool {
        *self == FilterSettings::default()
    }

    /// The policy these overrides make of `base`; the error names the field.
    pub fn over(&self, base: &FilterPolicy) -> Result<FilterPolicy, (&'static str, String)> {
        let mut p = base.clone();
        if let Some(t) = self.spam_threshold {
            p.spam_threshold = threshold(t).map_err(|m| ("filter.spam_threshold", m))?;
        }
        if let Some(t) = self.reject_threshold {
            p.reject_threshold = threshold(t).map_err(|m| ("filter.reject_threshold", m))?;
        }
        if p.reject_threshold < p.spam_threshold {
            return Err((
                "filter.reject_threshold",
                format!(
                    "{} is below spam_threshold {}: mail would be refused before it is spam",
                    p.reject_threshold, p.spam_threshold
                ),
            ));
        }
        if let Some(a) = self.spam_action {
            p.spam_action = a;
        }
        if let Some(m) = self.dmarc {
            p.dmarc = m;
        }
        if let Some(g) = self.greylist {
            p.greylist = g;
        }
        if let Some(r) = self.reject_listed {
            p.reject_listed = r;
        }
        if let Some(r) = self.reject_spf_fail {
            p.reject_spf_fail = r;
        }
        if let Some(a) = self.virus_action {
            p.virus_action = a;
        }
        if let Some(m) = self.antivirus_fail_mode {
            p.antivirus_fail_mode = m;
        }
        if let Some(rules) = &self.attachment_rules {
            p.attachment_rules = rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    r.checked()
                        .map_err(|m| ("filter.attachment_rule", format!("rule {}: {m}", i + 1)))
                })
                .collect::<Result<_, _>>()?;
        }
        for a in &self.attachment_allow {
            let a = a.trim().trim_start_matches('.').to_lowercase();
            if a.is_empty() || a.contains(char::is_whitespace) {
                return Err((
                    "filter.attachment_allow",
                    format!("{a:?} is not a type or an extension"),
                ));
            }
            p.attachment_allow.push(a);
        }
        for (local, lists) in &self.users {
            let local = local.trim().to_ascii_lowercase();
            if !is_local_part(&local) {
                return Err((
                    "filter.users",
                    format!("{local:?} is not a local part (write \"alice\", not an address)"),
                ));
            }
            let mut own = (Vec::new(), Vec::new());
            for (list, out) in [(&lists.allow, &mut own.0), (&lists.block, &mut own.1)] {
                for s in list {
                    out.push(
                        Sender::parse(s).map_err(|m| ("filter.users", format!("{local}: {m}")))?,
                    );
                }
            }
            p.users.insert(local, own);
        }
        if let Some(prefix) = &self.subject_prefix {
            p.subject_prefix = subject_prefix(prefix).map_err(|m| ("filter.subject_prefix", m))?;
        }
        for (list, field, out) in [
            (&self.allow, "filter.allow", &mut p.allow),
            (&self.block, "filter.block", &mut p.block),
        ] {
            for s in list {
                out.push(Sender::parse(s).map_err(|m| (field, m))?);
            }
        }
        Ok(p)
    }
}

/// A score threshold: a finite number from -1000 to 1000.
pub(crate) fn threshold(t: f64) -> Result<f64, String> {
    if t.is_finite() && (-1000.0..=1000.0).contains(&t) {
        Ok(t)
    } else {
        Err(format!("{t} is not a score from -1000 to 1000"))
    }
}

/// A subject prefix: printable, one line, at most 64 bytes; empty means none.
pub(crate) fn subject_prefix(p: &str) -> Result<Option<String>, String> {
    if p.len() > 64 || p.chars().any(char::is_control) {
        return Err(format!(
            "{p:?} must be one printable line of at most 64 bytes"
        ));
    }
    Ok((!p.trim().is_empty()).then(|| p.trim().to_string()))
}

/// Durations written as in the TOML ("300s", "5d"); absent ones take the global policy's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_warning: Option<String>,
}

impl RetrySettings {
    /// No override: the global policy applies whole.
    pub fn is_empty(&self) -> bool {
        *self == RetrySettings::default()
    }
}

/// The shortest backoff allowed: below it a down server would be hammered every poll.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest lifetime allowed (Postfix caps `maximal_queue_lifetime` at 100 days too).
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 86_400);

fn duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v.trim())
        .map_err(|e| format!("invalid duration {v:?}: {e} (e.g. \"300s\", \"5m\", \"5d\")"))
}

/// A retry policy from its written fields over `base`; the error names the field.
pub(crate) fn retry_from(r: &RetrySettings, base: Retry) -> Result<Retry, (&'static str, String)> {
    let field = |v: &Option<String>, name: &'static str, default: Duration, zero_ok: bool| match v {
        None => Ok(default),
        Some(v) => match duration(v) {
            Ok(d) if d.is_zero() && !zero_ok => Err((name, "must be more than zero".into())),
            Ok(d) => Ok(d),
            Err(e) => Err((name, e)),
        },
    };
    let retry = Retry {
        min_backoff: field(&r.min_backoff, "min_backoff", base.min_backoff, false)?,
        max_backoff: field(&r.max_backoff, "max_backoff", base.max_backoff, false)?,
        lifetime: field(&r.lifetime, "lifetime", base.lifetime, false)?,
        delay_warning: match &r.delay_warning {
            None => base.delay_warning,
            Some(_) => Some(field(
                &r.delay_warning,
                "delay_warning",
                Duration::ZERO,
                true,
            )?)
            .filter(|d| !d.is_zero()),
        },
    };
    if retry.min_backoff < MIN_BACKOFF {
        return Err(("min_backoff", "must be at least 1s".into()));
    }
    if retry.max_backoff < retry.min_backoff {
        return Err(("max_backoff", "must not be less than min_backoff".into()));
    }
    if retry.lifetime > MAX_LIFETIME {
        return Err(("lifetime", "must be at most 100d".into()));
    }
    Ok(retry)
}

impl Domain {
    /// The portable form of this domain's settings, as written (what the TOML seeds the
    /// store with): retry fields it did not write stay absent, so they follow the global
    /// policy.
    pub fn settings(&self) -> DomainSettings {
        self.written.clone()
    }

    /// A domain from its settings, checked by the TOML's rules; `base` is the global retry
    /// policy, `silos` the configured silos. The error names the field and says what is
    /// wrong.
    pub fn from_settings(
        name: &str,
        s: &DomainSettings,
        base: Retry,
        filter: &FilterPolicy,
        silos: &[Silo],
    ) -> Result<Domain, (&'static str, String)> {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !name.is_ascii() {
            return Err((
                "name",
                format!(
                    "{name:?} is not ASCII: write an internationalised domain in its A-label form (xn--...)"
                ),
            ));
        }
        if !is_domain_name(&name) {
            return Err((
                "name",
                format!(
                    "invalid domain name {name:?}: expected a registered domain such as \"example.com\""
                ),
            ));
        }
        let destination =
            crate::raw::parse_destination(&s.destination).map_err(|m| ("destination", m))?;
        let recipients = match &s.recipients {
            None => None,
            Some(list) => {
                let mut set = HashSet::new();
                for r in list {
                    let local = r.trim().to_ascii_lowercase();
                    if !is_local_part(&local) {
                        return Err((
                            "recipients",
                            format!(
                                "{r:?} is not a local part (write \"alice\", not \"alice@{name}\")"
                            ),
                        ));
                    }
                    set.insert(local);
                }
                if set.is_empty() {
                    return Err((
                        "recipients",
                        "an empty list would refuse every recipient: leave recipients out to accept any local part".into(),
                    ));
                }
                Some(set)
            }
        };
        let retry = retry_from(&s.retry, base).map_err(|(field, m)| {
            let field = match field {
                "min_backoff" => "retry.min_backoff",
                "max_backoff" => "retry.max_backoff",
                "lifetime" => "retry.lifetime",
                _ => "retry.delay_warning",
            };
            (field, m)
        })?;
        let silo = match &s.silo {
            None => None,
            Some(v) => {
                let want = v.trim().trim_end_matches('.').to_ascii_lowercase();
                if !silos.iter().any(|s| s.name == want) {
                    return Err((
                        "silo",
                        format!("unknown silo {v:?}: no [[silo]] has that name"),
                    ));
                }
                Some(want)
            }
        };
        let filter = s.filter.over(filter)?;
        let written = DomainSettings {
            destination: s.destination.trim().to_string(),
            recipients: recipients.as_ref().map(|r| {
                let mut v: Vec<String> = r.iter().cloned().collect();
                v.sort();
                v
            }),
            silo: silo.clone(),
            ..s.clone()
        };
        Ok(Domain {
            name,
            destination,
            require_tls: s.require_tls,
            recipients,
            retry,
            silo,
            filter,
            written,
        })
    }
}

impl std::fmt::Display for DomainSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "destination {}", self.destination)?;
        if self.require_tls {
            f.write_str(", require_tls")?;
        }
        if let Some(r) = &self.recipients {
            write!(f, ", recipients {}", r.join(" "))?;
        }
        if let Some(s) = &self.silo {
            write!(f, ", silo {s}")?;
        }
        Ok(())
    }
}

/// The client domains in force, shared by every role of a process and replaced whole when
/// the store's copy changes; and those removed at run time, whose settings still route the
/// mail queued for them before the removal.
#[derive(Debug, Default)]
pub struct DomainTable {
    domains: RwLock<Arc<Domains>>,
}

#[derive(Debug, Default)]
struct Domains {
    accepted: HashMap<String, Arc<Domain>>,
    removed: HashMap<String, Arc<Domain>>,
}

fn by_name(domains: Vec<Domain>) -> HashMap<String, Arc<Domain>> {
    domains
        .into_iter()
        .map(|d| (d.name.clone(), Arc::new(d)))
        .collect()
}

impl DomainTable {
    pub fn new(domains: Vec<Domain>) -> DomainTable {
        let t = DomainTable::default();
        t.replace(domains, Vec::new());
        t
    }

    /// The client domain `name` (lower-case, exact) if mail for it is accepted.
    pub fn get(&self, name: &str) -> Option<Arc<Domain>> {
        self.domains
            .read()
            .expect("domains")
            .accepted
            .get(name)
            .cloned()
    }

    /// How to deliver mail for `name`: a client domain's settings, or a removed one's.
    pub fn route(&self, name: &str) -> Option<Arc<Domain>> {
        let d = self.domains.read().expect("domains");
        d.accepted
            .get(name)
            .or_else(|| d.removed.get(name))
            .cloned()
    }

    /// Every client domain accepted, by name.
    pub fn all(&self) -> Vec<Arc<Domain>> {
        let mut v: Vec<Arc<Domain>> = self
            .domains
            .read()
            .expect("domains")
            .accepted
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn replace(&self, accepted: Vec<Domain>, removed: Vec<Domain>) {
        *self.domains.write().expect("domains") = Arc::new(Domains {
            accepted: by_name(accepted),
            removed: by_name(removed),
        });
    }
}
/// Whether `s` can be a recipient's local part as the settings name one: not empty, no
/// `@`, no white space, angle brackets or control characters (a NUL or a line break would
/// end up in a header or a log line), and no invisible formatting characters (a
/// right-to-left override or a zero-width space would make one name look like another).
fn is_local_part(s: &str) -> bool {
    let invisible = |c: char| {
        matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    !s.is_empty()
        && !s.chars().any(|c| {
            matches!(c, '@' | '<' | '>') || c.is_whitespace() || c.is_control() || invisible(c)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn local_parts_have_no_addresses_spaces_or_control_characters() {
        for good in ["alice", "a.b+tag", "\"x\""] {
            assert!(is_local_part(good), "{good:?}");
        }
        for bad in [
            "",
            "a@b",
            "a b",
            "<a>",
            "x\r\ny",
            "x\0",
            "a\tb",
            "a\u{202e}b",
            "a\u{200b}",
            "\u{feff}a",
        ] {
            assert!(!is_local_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn settings_round_trip_and_are_checked() {
        let c = Config::demo();
        let d = c.domain("example.com").unwrap();
        let s = d.settings();
        let back = Domain::from_settings(&d.name, &s, c.retry, &c.filter.policy, &c.silos).unwrap();
        assert_eq!(back.settings(), s);
        assert_eq!(back.destination, d.destination);
        let bad = |f: &dyn Fn(&mut DomainSettings)| {
            let mut s = s.clone();
            f(&mut s);
            Domain::from_settings("example.net", &s, c.retry, &c.filter.policy, &c.silos)
                .unwrap_err()
        };
        assert_eq!(bad(&|s| s.destination = "nowhere".into()).0, "destination");
        assert_eq!(
            bad(&|s| s.recipients = Some(vec!["a@b.c".into()])).0,
            "recipients"
        );
        assert_eq!(
            bad(&|s| s.retry.min_backoff = Some("0s".into())).0,
            "retry.min_backoff"
        );
        assert_eq!(
            bad(&|s| s.retry.max_backoff = Some("1s".into())).0,
            "retry.max_backoff"
        );
        assert_eq!(bad(&|s| s.silo = Some("nope.example".into())).0, "silo");
        assert!(
            Domain::from_settings("not a name", &s, c.retry, &c.filter.policy, &c.silos).is_err()
        );
        let table = DomainTable::new(c.domains.clone());
        assert!(table.get("example.org").is_some());
        let org = table.get("example.org").unwrap();
        table.replace(vec![back], vec![(*org).clone()]);
        assert!(table.get("example.org").is_none(), "removed: not accepted");
        assert!(
            table.route("example.org").is_some(),
            "removed: still routed"
        );
        assert_eq!(table.all().len(), 1);
        assert_eq!(bad(&|s| s.recipients = Some(vec![])).0, "recipients");
        assert_eq!(
            bad(&|s| s.retry.min_backoff = Some("1ns".into())).0,
            "retry.min_backoff"
        );
        assert_eq!(
            bad(&|s| s.retry.lifetime = Some("101d".into())).0,
            "retry.lifetime"
        );
        for name in [
            "com",
            "127.0.0.1",
            "dash-.example",
            "b\u{fc}cher.example",
            "a..b",
        ] {
            assert_eq!(
                Domain::from_settings(name, &s, c.retry, &c.filter.policy, &c.silos)
                    .unwrap_err()
                    .0,
                "name",
                "{name}"
            );
        }
        for d in [
            "host with spaces:25",
            "mx:25x",
            "::1:25",
            "[::1:25",
            "a:+25",
            "x\ny:25",
        ] {
            assert_eq!(bad(&|s| s.destination = d.into()).0, "destination", "{d}");
        }
        for d in ["[::1]:25", "127.0.0.1:2526", "mail.example.net:25", "MX"] {
            let mut ok = s.clone();
            ok.destination = d.into();
            assert!(
                Domain::from_settings("example.net", &ok, c.retry, &c.filter.policy, &c.silos)
                    .is_ok(),
                "{d}"
            );
        }
        // No override, no retry table in what the store and `config show` keep.
        let plain = DomainSettings {
            destination: "mx".into(),
            ..DomainSettings::default()
        };
        assert!(!toml::to_string(&plain).unwrap().contains("retry"));
    }
}
