//! The file as written; [`File::validate`] turns it into the model, checking every rule
//! and naming the key (and, through its span, the line) of the first thing wrong.
use std::collections::HashMap;
use std::net::IpAddr;

use super::*;

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub smtp: S<SmtpRaw>,
    #[serde(default)]
    pub delivery: Option<DeliveryRaw>,
    #[serde(default)]
    pub retry: Option<RetryRaw>,
    #[serde(default, rename = "domain")]
    pub domains: Vec<S<DomainRaw>>,
    #[serde(default)]
    pub sink: Option<SinkRaw>,
    #[serde(default)]
    pub dns: Option<S<DnsRaw>>,
    #[serde(default, rename = "silo")]
    pub silos: Vec<S<SiloRaw>>,
    #[serde(default)]
    pub control: Option<ControlRaw>,
    #[serde(default)]
    pub store: Option<StoreRaw>,
    #[serde(default)]
    pub filter: Option<S<FilterRaw>>,
    #[serde(default, rename = "organisation")]
    pub organisations: Vec<S<OrganisationRaw>>,
    #[serde(default, rename = "account")]
    pub accounts: Vec<S<AccountRaw>>,
    #[serde(default)]
    pub digest: Option<DigestRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationRaw {
    pub name: S<String>,
    #[serde(default)]
    pub domains: Vec<S<String>>,
    pub digest: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DigestRaw {
    pub schedule: Option<S<String>>,
    pub link_lifetime: Option<S<String>>,
    pub from: Option<S<String>>,
    pub confirm: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRaw {
    pub name: S<String>,
    pub role: S<String>,
    pub organisation: Option<S<String>>,
    pub password: Option<S<String>>,
    pub password_hash: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRaw {
    pub enabled: Option<bool>,
    pub starter_rules: Option<bool>,
    pub spam_threshold: Option<S<f64>>,
    pub reject_threshold: Option<S<f64>>,
    pub spam_action: Option<SpamAction>,
    pub subject_prefix: Option<S<String>>,
    #[serde(default)]
    pub allow: Vec<S<String>>,
    #[serde(default)]
    pub block: Vec<S<String>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<S<RuleRaw>>,
    pub dmarc: Option<DmarcMode>,
    pub nameservers: Option<Vec<S<String>>>,
    pub dns_timeout: Option<S<String>>,
    #[serde(default)]
    pub dnsbl: Vec<S<DnsListRaw>>,
    #[serde(default)]
    pub uribl: Vec<S<DnsListRaw>>,
    pub rate_limit: Option<RateLimitsRaw>,
    pub greylist: Option<bool>,
    pub greylisting: Option<GreylistingRaw>,
    pub spf_reject: Option<bool>,
    pub virus_action: Option<crate::VirusAction>,
    pub antivirus_fail_mode: Option<crate::FailMode>,
    #[serde(rename = "attachment_rule")]
    pub attachment_rules: Option<Vec<AttachmentRuleRaw>>,
    #[serde(default)]
    pub attachment_allow: Vec<S<String>>,
    pub clamd: Option<S<ClamdRaw>>,
    pub archives: Option<ArchivesRaw>,
    pub hash_blocklist: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRuleRaw {
    #[serde(default)]
    pub types: Vec<S<String>>,
    #[serde(default)]
    pub extensions: Vec<S<String>>,
    pub action: S<crate::AttachmentAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClamdRaw {
    pub address: S<String>,
    pub timeout: Option<S<String>>,
    pub max_size: Option<S<String>>,
    pub connections: Option<S<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivesRaw {
    pub max_depth: Option<S<usize>>,
    pub max_files: Option<S<usize>>,
    pub max_expanded: Option<S<String>>,
    pub max_ratio: Option<S<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreylistingRaw {
    pub delay: Option<S<String>>,
    pub window: Option<S<String>>,
    pub pass: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsRaw {
    #[serde(default)]
    pub client: u32,
    #[serde(default)]
    pub sender_domain: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsListRaw {
    pub zone: S<String>,
    pub score: Option<S<f64>>,
    #[serde(default)]
    pub reject: bool,
    #[serde(default)]
    pub codes: HashMap<String, S<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRaw {
    pub name: S<String>,
    pub header: Option<S<String>>,
    #[serde(default)]
    pub body: bool,
    #[serde(default)]
    pub url: bool,
    pub pattern: S<String>,
    pub score: S<f64>,
    pub reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreRaw {
    pub url: Option<S<String>>,
    pub lease: Option<S<String>>,
    pub trace_retention: Option<S<String>>,
    pub quarantine_retention: Option<S<String>>,
    pub stats_retention: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpRaw {
    pub hostname: S<String>,
    #[serde(default)]
    pub listen: Option<S<Vec<S<String>>>>,
    pub max_message_size: Option<S<String>>,
    pub max_recipients: Option<S<usize>>,
    pub max_errors: Option<S<usize>>,
    pub max_sessions: Option<S<usize>>,
    pub max_sessions_per_client: Option<S<usize>>,
    pub command_timeout: Option<S<String>>,
    pub data_timeout: Option<S<String>>,
    pub min_data_rate: Option<S<usize>>,
    pub stress_timeout: Option<S<String>>,
    pub greet_pause: Option<S<String>>,
    pub max_message_memory: Option<S<String>>,
    pub postmaster: Option<S<String>>,
    pub bare_newlines: Option<BareNewlines>,
    pub tls_cert: Option<S<String>>,
    pub tls_key: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRaw {
    pub destination_concurrency: Option<S<usize>>,
    pub active_limit: Option<S<usize>>,
    pub connect_timeout: Option<S<String>>,
    pub command_timeout: Option<S<String>>,
    pub connection_cache_time: Option<S<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetryRaw {
    pub min_backoff: Option<S<String>>,
    pub max_backoff: Option<S<String>>,
    pub lifetime: Option<S<String>>,
    pub delay_warning: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRaw {
    pub name: S<String>,
    pub destination: S<String>,
    #[serde(default)]
    pub require_tls: bool,
    pub recipients: Option<Vec<S<String>>>,
    pub retry: Option<RetryRaw>,
    pub silo: Option<S<String>>,
    #[serde(default)]
    pub filter: crate::runtime::FilterSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkRaw {
    pub listen: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthRaw {
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<usize>>,
    pub fall: Option<S<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRaw {
    pub listen: S<Vec<S<String>>>,
    #[serde(default, rename = "zone")]
    pub zones: Vec<S<ZoneRaw>>,
    pub rate_limit: Option<RateLimitRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneRaw {
    pub name: S<String>,
    pub ttl: Option<u32>,
    pub serial: Option<u32>,
    pub nameservers: Option<Vec<S<String>>>,
    pub hostmaster: Option<S<String>>,
    pub negative_ttl: Option<u32>,
    #[serde(default, rename = "record")]
    pub records: Vec<RecordRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRaw {
    pub name: S<String>,
    #[serde(rename = "type")]
    pub rtype: S<String>,
    pub value: S<String>,
    pub ttl: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRaw {
    pub responses_per_second: S<usize>,
    pub ipv4_prefix: Option<S<u8>>,
    pub ipv6_prefix: Option<S<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiloRaw {
    pub name: S<String>,
    pub rotation: Option<Rotation>,
    pub ttl: Option<u32>,
    pub health: Option<HealthRaw>,
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<S<ClusterRaw>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRaw {
    pub name: S<String>,
    pub address: S<String>,
    pub source: Option<S<String>>,
    #[serde(default = "yes")]
    pub proxy: bool,
    pub scheduler: Option<Scheduler>,
    pub weight: Option<S<usize>>,
    pub queue_timeout: Option<S<String>>,
    pub slowstart: Option<S<String>>,
    pub threads: Option<S<usize>>,
    pub fin_timeout: Option<S<String>>,
    pub max_connections_per_client: Option<S<usize>>,
    pub max_connections: Option<S<usize>>,
    pub health: Option<HealthRaw>,
    #[serde(default, rename = "server")]
    pub servers: Vec<S<ServerRaw>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRaw {
    pub name: S<String>,
    pub address: S<String>,
    pub loading: S<usize>,
    pub maxconn: Option<S<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRaw {
    pub listen: S<String>,
    pub url: Option<S<String>>,
    pub tls: Option<S<bool>>,
}

/// Whether `name` is a plain ASCII host name (configured names go into DNS as they are).
fn is_host_name(name: &str) -> bool {
    name.is_ascii() && super::is_host_name(name)
}

/// Validation context: the file and its text, for error positions.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, Error> {
        Err(invalid(self.file, self.text, span, key, message.into()))
    }

    /// A duration that may be zero (zero turns the thing off).
    fn duration_or_zero(
        &self,
        v: &Option<S<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, Error> {
        match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s.get_ref()).or_else(|e| {
                self.err(
                    s.span(),
                    key,
                    format!(
                        "invalid duration {:?}: {e} (e.g. \"300s\", \"5m\", \"5d\")",
                        s.get_ref()
                    ),
                )
            }),
        }
    }

    /// A timeout or interval: zero would time everything out at once, so it is refused.
    fn duration(
        &self,
        v: &Option<S<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, Error> {
        let d = self.duration_or_zero(v, key, default)?;
        match v {
            Some(s) if d.is_zero() => self.err(s.span(), key, "must be more than zero"),
            _ => Ok(d),
        }
    }

    /// A size such as "25MiB", more than zero.
    fn size(&self, v: &Option<S<String>>, key: &str, default: usize) -> Result<usize, Error> {
        match v {
            None => Ok(default),
            Some(v) => match parse_size(v.get_ref()) {
                Ok(0) => self.err(v.span(), key, "must be more than zero"),
                Ok(n) => Ok(n),
                Err(m) => self.err(v.span(), key, m),
            },
        }
    }

    fn positive(&self, v: &Option<S<usize>>, key: &str, default: usize) -> Result<usize, Error> {
        match v {
            None => Ok(default),
            Some(s) => self.at_least_one(s, key),
        }
    }

    fn at_least_one(&self, v: &S<usize>, key: &str) -> Result<usize, Error> {
        if *v.get_ref() == 0 {
            self.err(v.span(), key, "must be at least 1")
        } else {
            Ok(*v.get_ref())
        }
    }

    fn addr(&self, v: &S<String>, key: &str) -> Result<SocketAddr, Error> {
        v.get_ref().parse().or_else(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "invalid address {:?}: expected IP:PORT, e.g. \"127.0.0.1:2525\"",
                    v.get_ref()
                ),
            )
        })
    }

    /// A host name: lower-cased, without a trailing dot, checked label by label.
    fn host(&self, v: &S<String>, key: &str) -> Result<String, Error> {
        let name = v
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if is_host_name(&name) {
            Ok(name)
        } else {
            self.err(
                v.span(),
                key,
                format!("invalid host name {:?}", v.get_ref()),
            )
        }
    }

    fn health(&self, raw: &Option<HealthRaw>, prefix: &str) -> Result<Health, Error> {
        let d = Health::default();
        let Some(raw) = raw else { return Ok(d) };
        Ok(Health {
            interval: self.duration(&raw.interval, &format!("{prefix}interval"), d.interval)?,
            timeout: self.duration(&raw.timeout, &format!("{prefix}timeout"), d.timeout)?,
            rise: self.positive(&raw.rise, &format!("{prefix}rise"), d.rise as usize)? as u32,
            fall: self.positive(&raw.fall, &format!("{prefix}fall"), d.fall as usize)? as u32,
        })
    }

    fn retry(&self, raw: &RetryRaw, prefix: &str, base: Retry) -> Result<Retry, Error> {
        runtime::retry_from(&raw.written(), base).or_else(|(field, message)| {
            let span = match field {
                "min_backoff" => &raw.min_backoff,
                "max_backoff" => raw
                    .max_backoff
                    .as_ref()
                    .map_or(&raw.min_backoff, |_| &raw.max_backoff),
                "lifetime" => &raw.lifetime,
                _ => &raw.delay_warning,
            }
            .as_ref()
            .map_or(0..0, |s| s.span());
            self.err(span, &format!("{prefix}{field}"), message)
        })
    }
}

impl RetryRaw {
    /// The written values without their places in the file.
    fn written(&self) -> RetrySettings {
        let v = |f: &Option<S<String>>| f.as_ref().map(|s| s.get_ref().clone());
        RetrySettings {
            min_backoff: v(&self.min_backoff),
            max_backoff: v(&self.max_backoff),
            lifetime: v(&self.lifetime),
            delay_warning: v(&self.delay_warning),
        }
    }
}

/// Every address the configuration listens on or hands out, so that none is used twice.
#[derive(Default)]
struct Addresses(HashMap<SocketAddr, String>);

impl Addresses {
    fn claim(
        &mut self,
        cx: &Ctx<'_>,
        addr: SocketAddr,
        span: Range<usize>,
        key: &str,
    ) -> Result<(), Error> {
        if let Some(other) = self.0.get(&addr) {
            return cx.err(
                span,
                key,
                format!("address {addr} is already used by {other}"),
            );
        }
        self.0.insert(addr, key.to_string());
        Ok(())
    }
}

impl File {
    pub fn validate(self, file: &str, text: &str) -> Result<Config, Error> {
        let cx = Ctx { file, text };
        let mut used = Addresses::default();
        let smtp_span = self.smtp.span();
        let s = self.smtp.into_inner();

        let hostname = s.hostname.get_ref().trim().to_string();
        if !is_host_name(&hostname) {
            return cx.err(
                s.hostname.span(),
                "smtp.hostname",
                format!("{hostname:?} is not a host name (letters, digits, hyphens and dots, e.g. \"mx1.silo.example.net\")"),
            );
        }
        let mut listen = Vec::new();
        for a in s.listen.iter().flat_map(|l| l.get_ref()) {
            let addr = cx.addr(a, "smtp.listen")?;
            used.claim(&cx, addr, a.span(), "smtp.listen")?;
            listen.push(addr);
        }
        let max_message_size = cx.size(&s.max_message_size, "smtp.max_message_size", 25 << 20)?;
        let max_message_memory =
            cx.size(&s.max_message_memory, "smtp.max_message_memory", 512 << 20)?;
        if max_message_memory < max_message_size {
            let span = s
                .max_message_memory
                .as_ref()
                .or(s.max_message_size.as_ref())
                .map_or(smtp_span.clone(), |v| v.span());
            return cx.err(
                span,
                "smtp.max_message_memory",
                "must be at least smtp.max_message_size (one message must fit)",
            );
        }
        let postmaster = match &s.postmaster {
            None => None,
            Some(v) => {
                let a = v.get_ref().trim();
                let ok = a.rsplit_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && !l.contains([' ', '<', '>']) && is_host_name(d)
                });
                if !ok {
                    return cx.err(
                        v.span(),
                        "smtp.postmaster",
                        format!("{a:?} is not an address (write \"postmaster@provider.example\")"),
                    );
                }
                Some(a.to_string())
            }
        };
        let max_recipients = cx.positive(&s.max_recipients, "smtp.max_recipients", 1000)?;
        if max_recipients < 100 {
            let span = s
                .max_recipients
                .as_ref()
                .map_or(smtp_span.clone(), |v| v.span());
            return cx.err(
                span,
                "smtp.max_recipients",
                "RFC 5321 requires at least 100",
            );
        }
        for (v, key) in [(&s.tls_cert, "smtp.tls_cert"), (&s.tls_key, "smtp.tls_key")] {
            if let Some(v) = v
                && let Err(e) = std::fs::File::open(v.get_ref())
            {
                return cx.err(v.span(), key, format!("cannot read {:?}: {e}", v.get_ref()));
            }
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            let span = s
                .tls_cert
                .as_ref()
                .or(s.tls_key.as_ref())
                .map_or(smtp_span.clone(), |v| v.span());
            return cx.err(span, "smtp.tls_cert", "tls_cert and tls_key go together");
        }
        let smtp = Smtp {
            hostname,
            listen,
            max_message_size,
            max_recipients,
            max_errors: cx.positive(&s.max_errors, "smtp.max_errors", 20)?,
            max_sessions: cx.positive(&s.max_sessions, "smtp.max_sessions", 1000)?,
            max_sessions_per_client: cx.positive(
                &s.max_sessions_per_client,
                "smtp.max_sessions_per_client",
                50,
            )?,
            command_timeout: cx.duration(
                &s.command_timeout,
                "smtp.command_timeout",
                Duration::from_secs(300),
            )?,
            data_timeout: cx.duration(
                &s.data_timeout,
                "smtp.data_timeout",
                Duration::from_secs(180),
            )?,
            min_data_rate: cx.positive(&s.min_data_rate, "smtp.min_data_rate", 500)?,
            stress_timeout: cx.duration(
                &s.stress_timeout,
                "smtp.stress_timeout",
                Duration::from_secs(10),
            )?,
            greet_pause: {
                let d = cx.duration_or_zero(&s.greet_pause, "smtp.greet_pause", Duration::ZERO)?;
                if d > Duration::from_secs(30) {
                    return cx.err(
                        s.greet_pause
                            .as_ref()
                            .map_or(smtp_span.clone(), |v| v.span()),
                        "smtp.greet_pause",
                        "must be at most 30s (senders give up on a silent server)",
                    );
                }
                d
            },
            max_message_memory,
            postmaster,
            bare_newlines: s.bare_newlines.unwrap_or_default(),
            tls_cert: s.tls_cert.map(|v| PathBuf::from(v.into_inner())),
            tls_key: s.tls_key.map(|v| PathBuf::from(v.into_inner())),
        };

        let d = self.delivery.unwrap_or_default();
        let delivery = Delivery {
            destination_concurrency: cx.positive(
                &d.destination_concurrency,
                "delivery.destination_concurrency",
                20,
            )?,
            active_limit: cx.positive(&d.active_limit, "delivery.active_limit", 2000)?,
            connect_timeout: cx.duration(
                &d.connect_timeout,
                "delivery.connect_timeout",
                Duration::from_secs(30),
            )?,
            command_timeout: cx.duration(
                &d.command_timeout,
                "delivery.command_timeout",
                Duration::from_secs(300),
            )?,
            connection_cache_time: cx.duration_or_zero(
                &d.connection_cache_time,
                "delivery.connection_cache_time",
                Duration::from_secs(2),
            )?,
        };

        let postfix = Retry {
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 86400),
            delay_warning: None,
        };
        let retry = cx.retry(&self.retry.unwrap_or_default(), "retry.", postfix)?;

        let sink = match &self.sink {
            None => None,
            Some(s) => {
                let addr = cx.addr(&s.listen, "sink.listen")?;
                used.claim(&cx, addr, s.listen.span(), "sink.listen")?;
                Some(Sink { listen: addr })
            }
        };
        let control = match &self.control {
            None => None,
            Some(c) => {
                let addr = cx.addr(&c.listen, "control.listen")?;
                used.claim(&cx, addr, c.listen.span(), "control.listen")?;
                let tls = match &c.tls {
                    Some(t) if !*t.get_ref() && !addr.ip().is_loopback() => {
                        return cx.err(
                            t.span(),
                            "control.tls",
                            format!("{addr} is not a loopback address: the portal answers the network only over HTTPS (leave control.tls out, or true)"),
                        );
                    }
                    Some(t) => *t.get_ref(),
                    None => !addr.ip().is_loopback(),
                };
                let url = match &c.url {
                    None => format!("{}://{addr}", if tls { "https" } else { "http" }),
                    Some(u) => {
                        let v = u.get_ref().trim().trim_end_matches('/');
                        let host = v
                            .strip_prefix("https://")
                            .or_else(|| v.strip_prefix("http://"))
                            .unwrap_or("");
                        if host.is_empty()
                            || host.contains(char::is_whitespace)
                            || !v.is_ascii()
                            || v.contains(['"', '<', '>', '?', '#'])
                        {
                            return cx.err(
                                u.span(),
                                "control.url",
                                "expected the portal's address as users reach it, e.g. \"https://portal.example.net\"",
                            );
                        }
                        v.to_string()
                    }
                };
                Some(Control {
                    listen: addr,
                    tls,
                    url,
                })
            }
        };
        let dns = match &self.dns {
            None => None,
            Some(d) => Some(validate_dns(&cx, d, &mut used)?),
        };
        let silos = validate_silos(&cx, &self.silos, dns.as_ref(), &mut used)?;
        if smtp.listen.is_empty() && silos.iter().all(|s| s.clusters.is_empty()) {
            return cx.err(
                smtp_span,
                "smtp.listen",
                "nothing receives mail: give smtp.listen or a [[silo]] with servers",
            );
        }

        let filter = match &self.filter {
            None => Filter::default(),
            Some(f) => validate_filter(&cx, f)?,
        };
        let mut domains: Vec<Domain> = Vec::new();
        for (i, spanned) in self.domains.iter().enumerate() {
            let raw = spanned.get_ref();
            let settings = DomainSettings {
                destination: raw.destination.get_ref().clone(),
                require_tls: raw.require_tls,
                recipients: raw
                    .recipients
                    .as_ref()
                    .map(|l| l.iter().map(|r| r.get_ref().clone()).collect()),
                retry: raw
                    .retry
                    .as_ref()
                    .map(RetryRaw::written)
                    .unwrap_or_default(),
                silo: raw.silo.as_ref().map(|s| s.get_ref().clone()),
                filter: raw.filter.clone(),
            };
            let domain =
                Domain::from_settings(raw.name.get_ref(), &settings, retry, &filter.policy, &silos)
                    .or_else(|(field, message)| {
                        // The place in the file of the field the rules refused.
                        let span = match field {
                            "name" => raw.name.span(),
                            "destination" => raw.destination.span(),
                            "recipients" => raw
                                .recipients
                                .as_ref()
                                .and_then(|l| {
                                    l.iter()
                                        .find(|r| message.contains(&format!("{:?}", r.get_ref())))
                                })
                                .map_or(spanned.span(), |r| r.span()),
                            "silo" => raw.silo.as_ref().map_or(spanned.span(), |s| s.span()),
                            retry_field => {
                                let r = raw.retry.as_ref();
                                let f = match retry_field {
                                    "retry.min_backoff" => r.and_then(|r| r.min_backoff.as_ref()),
                                    "retry.max_backoff" => r.and_then(|r| {
                                        r.max_backoff.as_ref().or(r.min_backoff.as_ref())
                                    }),
                                    "retry.lifetime" => r.and_then(|r| r.lifetime.as_ref()),
                                    _ => r.and_then(|r| r.delay_warning.as_ref()),
                                };
                                f.map_or(spanned.span(), |s| s.span())
                            }
                        };
                        cx.err(span, &format!("domain[{i}].{field}"), message)
                    })?;
            if domains.iter().any(|d| d.name == domain.name) {
                return cx.err(
                    raw.name.span(),
                    &format!("domain[{i}].name"),
                    format!("domain {} is configured twice", domain.name),
                );
            }
            domains.push(domain);
        }
        if domains.is_empty() {
            return cx.err(
                0..0,
                "domain",
                "no client domains: add at least one [[domain]] table",
            );
        }

        let st = self.store.unwrap_or_default();
        let defaults = StoreSettings::default();
        let store = StoreSettings {
            url: match &st.url {
                None => None,
                Some(u)
                    if u.get_ref().starts_with("postgres://")
                        || u.get_ref().starts_with("postgresql://") =>
                {
                    Some(u.get_ref().clone())
                }
                Some(u) => {
                    return cx.err(
                        u.span(),
                        "store.url",
                        "expected a PostgreSQL URL, e.g. \"postgres://mailsilo@db.example.net/mailsilo\" (leave it out for the embedded store)",
                    );
                }
            },
            lease: cx.duration(&st.lease, "store.lease", defaults.lease)?,
            trace_retention: cx.duration(
                &st.trace_retention,
                "store.trace_retention",
                defaults.trace_retention,
            )?,
            quarantine_retention: cx.duration(
                &st.quarantine_retention,
                "store.quarantine_retention",
                defaults.quarantine_retention,
            )?,
            stats_retention: cx.duration(
                &st.stats_retention,
                "store.stats_retention",
                defaults.stats_retention,
            )?,
        };
        let mut warnings = Vec::new();
        let (organisations, accounts) = validate_accounts(
            &cx,
            &self.organisations,
            &self.accounts,
            &domains,
            &mut warnings,
        )?;
        if let Some(c) = control.as_ref().filter(|c| !c.listen.ip().is_loopback()) {
            for a in &accounts {
                if matches!(a.password, AccountPassword::Plain(_)) {
                    warnings.push(format!(
                        "account {:?} has its password in plain text in the configuration file, and the portal ({}) answers the network: write password_hash (from `mailsilo user hash`)",
                        a.name, c.listen
                    ));
                }
            }
        }
        let digest = validate_digest(&cx, self.digest.as_ref(), &smtp.hostname)?;
        if smtp.postmaster.is_none() {
            warnings.push(
                "smtp.postmaster is not set: RCPT TO:<postmaster> will be refused, which RFC 5321 section 4.5.1 forbids"
                    .to_string(),
            );
        }
        if let Some(c) = control.as_ref().filter(|c| !c.listen.ip().is_loopback()) {
            warnings.push(format!(
                "control.listen {} is not a loopback address: the control endpoint answers the network, over HTTPS (every call but /metrics and the portal's login needs a credential)",
                c.listen
            ));
        }
        Ok(Config {
            source: file.to_string(),
            smtp,
            delivery,
            retry,
            domains,
            sink,
            dns,
            silos,
            control,
            store,
            filter,
            digest,
            organisations,
            accounts,
            warnings,
        })
    }
}

/// The portal's organisations and accounts, seeded into the store by `up`.
fn validate_digest(cx: &Ctx<'_>, d: Option<&DigestRaw>, hostname: &str) -> Result<Digest, Error> {
    let default = DigestRaw::default();
    let d = d.unwrap_or(&default);
    let period = match &d.schedule {
        None => Some(Duration::from_secs(86400)),
        Some(s) => match digest_period(s.get_ref()) {
            Ok(p) => p,
            Err(m) => return cx.err(s.span(), "digest.schedule", m),
        },
    };
    let from = match &d.from {
        None => format!("quarantine@{hostname}"),
        Some(f) => {
            let v = f.get_ref().trim();
            match v.rsplit_once('@') {
                Some((l, dn))
                    if !l.is_empty()
                        && is_domain_name(&dn.to_ascii_lowercase())
                        && v.bytes()
                            .all(|b| b.is_ascii_graphic() && !b"<>\"(),;:\\[]".contains(&b)) =>
                {
                    v.to_string()
                }
                _ => return cx.err(f.span(), "digest.from", format!("{v:?} is not an address")),
            }
        }
    };
    Ok(Digest {
        period,
        link_lifetime: cx.duration(
            &d.link_lifetime,
            "digest.link_lifetime",
            Duration::from_secs(14 * 86400),
        )?,
        from,
        confirm: d.confirm.as_ref().is_none_or(|c| *c.get_ref()),
    })
}

fn validate_accounts(
    cx: &Ctx<'_>,
    orgs: &[S<OrganisationRaw>],
    accounts: &[S<AccountRaw>],
    domains: &[Domain],
    warnings: &mut Vec<String>,
) -> Result<(Vec<OrganisationConfig>, Vec<AccountConfig>), Error> {
    let mut out_orgs: Vec<OrganisationConfig> = Vec::new();
    for (i, o) in orgs.iter().enumerate() {
        let o = o.get_ref();
        let key = |k: &str| format!("organisation[{i}].{k}");
        let name = o.name.get_ref().trim().to_string();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return cx.err(
                o.name.span(),
                &key("name"),
                "a name of 1 to 64 printable characters",
            );
        }
        if out_orgs.iter().any(|x| x.name == name) {
            return cx.err(
                o.name.span(),
                &key("name"),
                format!("organisation {name:?} is written twice"),
            );
        }
        let mut ds = Vec::new();
        for d in &o.domains {
            let dn = d
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !is_domain_name(&dn) {
                return cx.err(
                    d.span(),
                    &key("domains"),
                    format!("{dn:?} is not a domain name"),
                );
            }
            if let Some(other) = out_orgs.iter().find(|x| x.domains.contains(&dn)) {
                return cx.err(
                    d.span(),
                    &key("domains"),
                    format!("{dn} already belongs to organisation {:?}", other.name),
                );
            }
            if !domains.iter().any(|x| x.name == dn) {
                warnings.push(format!(
                    "organisation {name:?} owns {dn}, which is not a client domain of this file (it may be added at run time)"
                ));
            }
            ds.push(dn);
        }
        let digest = match &o.digest {
            None => None,
            Some(d) => match digest_period(d.get_ref()) {
                Ok(_) => Some(d.get_ref().trim().to_string()),
                Err(m) => return cx.err(d.span(), &key("digest"), m),
            },
        };
        out_orgs.push(OrganisationConfig {
            name,
            domains: ds,
            digest,
        });
    }
    let mut out: Vec<AccountConfig> = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        let a = a.get_ref();
        let key = |k: &str| format!("account[{i}].{k}");
        let name = a.name.get_ref().trim().to_ascii_lowercase();
        if name.is_empty()
            || name.len() > 254
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return cx.err(
                a.name.span(),
                &key("name"),
                "a name of 1 to 254 characters, no spaces",
            );
        }
        if out.iter().any(|x| x.name == name) {
            return cx.err(
                a.name.span(),
                &key("name"),
                format!("account {name:?} is written twice"),
            );
        }
        let role = a.role.get_ref().trim().to_ascii_lowercase();
        if !["operator", "admin", "user"].contains(&role.as_str()) {
            return cx.err(
                a.role.span(),
                &key("role"),
                format!("{role:?} is not a role: operator, admin or user"),
            );
        }
        let organisation = match (&a.organisation, role.as_str()) {
            (None, "operator") => None,
            (Some(o), "operator") => {
                return cx.err(
                    o.span(),
                    &key("organisation"),
                    "an operator belongs to no organisation",
                );
            }
            (None, _) => {
                return cx.err(
                    a.role.span(),
                    &key("organisation"),
                    format!("an {role} needs an organisation"),
                );
            }
            (Some(o), _) => {
                let on = o.get_ref().trim().to_string();
                let Some(org) = out_orgs.iter().find(|x| x.name == on) else {
                    return cx.err(
                        o.span(),
                        &key("organisation"),
                        format!("no organisation {on:?} in this file"),
                    );
                };
                if role == "user"
                    && !name
                        .rsplit_once('@')
                        .is_some_and(|(_, d)| org.domains.iter().any(|x| x == d))
                {
                    return cx.err(
                        a.name.span(),
                        &key("name"),
                        format!("a user is named by their address at one of {on:?}'s domains"),
                    );
                }
                Some(on)
            }
        };
        let password = match (&a.password, &a.password_hash) {
            (Some(p), None) => {
                if p.get_ref().chars().count() < crate::MIN_PASSWORD {
                    return cx.err(
                        p.span(),
                        &key("password"),
                        format!("at least {} characters", crate::MIN_PASSWORD),
                    );
                }
                AccountPassword::Plain(p.get_ref().clone())
            }
            (None, Some(h)) => {
                if !h.get_ref().starts_with("$argon2") {
                    return cx.err(
                        h.span(),
                        &key("password_hash"),
                        "an argon2 hash ($argon2id$...)",
                    );
                }
                AccountPassword::Hash(h.get_ref().clone())
            }
            _ => {
                return cx.err(
                    a.name.span(),
                    &key("password"),
                    "write one of password or password_hash",
                );
            }
        };
        out.push(AccountConfig {
            name,
            role,
            organisation,
            password,
        });
    }
    Ok((out_orgs, out))
}

fn validate_filter(cx: &Ctx<'_>, f: &S<FilterRaw>) -> Result<Filter, Error> {
    let raw = f.get_ref();
    let written = crate::runtime::FilterSettings {
        spam_threshold: raw.spam_threshold.as_ref().map(|t| *t.get_ref()),
        reject_threshold: raw.reject_threshold.as_ref().map(|t| *t.get_ref()),
        spam_action: raw.spam_action,
        subject_prefix: raw.subject_prefix.as_ref().map(|p| p.get_ref().clone()),
        allow: raw.allow.iter().map(|a| a.get_ref().clone()).collect(),
        block: raw.block.iter().map(|a| a.get_ref().clone()).collect(),
        dmarc: raw.dmarc,
        greylist: raw.greylist,
        // Refused for every domain by `spf_reject` and each list's `reject` instead.
        reject_listed: None,
        reject_spf_fail: None,
        users: Default::default(),
        virus_action: raw.virus_action,
        antivirus_fail_mode: raw.antivirus_fail_mode,
        attachment_rules: match &raw.attachment_rules {
            None => None,
            Some(rules) => Some(attachment_rules(cx, rules)?),
        },
        attachment_allow: raw
            .attachment_allow
            .iter()
            .map(|a| a.get_ref().clone())
            .collect(),
    };
    let policy = written
        .over(&FilterPolicy::default())
        .or_else(|(field, message)| {
            let span = match field {
                "filter.spam_threshold" => raw.spam_threshold.as_ref().map(|v| v.span()),
                "filter.reject_threshold" => raw
                    .reject_threshold
                    .as_ref()
                    .or(raw.spam_threshold.as_ref())
                    .map(|v| v.span()),
                "filter.subject_prefix" => raw.subject_prefix.as_ref().map(|v| v.span()),
                "filter.allow" => raw.allow.first().map(|v| v.span()),
                "filter.attachment_allow" => raw.attachment_allow.first().map(|v| v.span()),
                _ => raw.block.first().map(|v| v.span()),
            };
            cx.err(span.unwrap_or(f.span()), field, message)
        })?;
    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        let r = r.get_ref();
        let key = |k: &str| format!("filter.rule[{i}].{k}");
        let name = r.name.get_ref().trim().to_string();
        if name.is_empty()
            || name.len() > 40
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return cx.err(
                r.name.span(),
                &key("name"),
                format!("{name:?} is not a symbol name (1 to 40 of A-Z, 0-9 and _)"),
            );
        }
        if rules.iter().any(|o| o.name == name) {
            return cx.err(
                r.name.span(),
                &key("name"),
                format!("rule {name} is written twice"),
            );
        }
        let target = match (&r.header, r.body, r.url) {
            (Some(h), false, false) => {
                let h = h.get_ref().trim().to_ascii_lowercase();
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return cx.err(
                        r.header.as_ref().map_or(r.name.span(), |v| v.span()),
                        &key("header"),
                        format!("{h:?} is not a header field name"),
                    );
                }
                RuleTarget::Header(h)
            }
            (None, true, false) => RuleTarget::Body,
            (None, false, true) => RuleTarget::Url,
            _ => {
                return cx.err(
                    r.name.span(),
                    &key("name"),
                    "a rule looks at exactly one of: header = \"Subject\", body = true, url = true",
                );
            }
        };
        let pattern = r.pattern.get_ref().clone();
        if let Err(e) = regex::RegexBuilder::new(&pattern)
            .size_limit(1 << 20)
            .build()
        {
            let why = e.to_string();
            let last = why.lines().last().unwrap_or("invalid").trim().to_string();
            return cx.err(
                r.pattern.span(),
                &key("pattern"),
                format!("not a valid regular expression: {last}"),
            );
        }
        let score = crate::runtime::threshold(*r.score.get_ref())
            .or_else(|m| cx.err(r.score.span(), &key("score"), m))?;
        rules.push(Rule {
            reason: r
                .reason
                .clone()
                .unwrap_or_else(|| format!("matches rule {name}")),
            name,
            target,
            pattern,
            score,
        });
    }
    let mut nameservers = Vec::new();
    for n in raw.nameservers.iter().flatten() {
        let text = n.get_ref().trim();
        let addr = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match addr {
            Ok(a) => nameservers.push(a),
            Err(_) => {
                return cx.err(
                    n.span(),
                    "filter.nameservers",
                    format!("{text:?} is not an address (\"192.0.2.53\" or \"127.0.0.1:5353\")"),
                );
            }
        }
    }
    let dns_timeout = cx.duration(
        &raw.dns_timeout,
        "filter.dns_timeout",
        Duration::from_secs(2),
    )?;
    if dns_timeout.is_zero() || dns_timeout > Duration::from_secs(30) {
        return cx.err(
            raw.dns_timeout.as_ref().map_or(f.span(), |v| v.span()),
            "filter.dns_timeout",
            "must be more than zero and at most 30s",
        );
    }
    let lists = |list: &[S<DnsListRaw>], kind: &str| -> Result<Vec<DnsList>, Error> {
        let mut out = Vec::new();
        for (i, l) in list.iter().enumerate() {
            let l = l.get_ref();
            let key = |k: &str| format!("filter.{kind}[{i}].{k}");
            let key_of = key;
            let zone = cx.host(&l.zone, &key("zone"))?;
            let score = match &l.score {
                None => 1.0,
                Some(s) => crate::runtime::threshold(*s.get_ref())
                    .or_else(|m| cx.err(s.span(), &key("score"), m))?,
            };
            let mut codes = Vec::new();
            for (code, s) in &l.codes {
                let ip: std::net::Ipv4Addr = match code.parse() {
                    Ok(ip) => ip,
                    Err(_) => {
                        return cx.err(
                            s.span(),
                            &key("codes"),
                            format!("{code:?} is not a return code (an IPv4 address such as \"127.0.0.2\")"),
                        );
                    }
                };
                let v = crate::runtime::threshold(*s.get_ref())
                    .or_else(|m| cx.err(s.span(), &key("codes"), m))?;
                codes.push((ip, v));
            }
            codes.sort_by_key(|c| c.0);
            if l.reject && kind == "uribl" {
                return cx.err(
                    l.zone.span(),
                    &key_of("reject"),
                    "reject applies to client-address lists ([[filter.dnsbl]]) only",
                );
            }
            out.push(DnsList {
                zone,
                score,
                codes,
                reject: l.reject,
            });
        }
        Ok(out)
    };
    Ok(Filter {
        enabled: raw.enabled.unwrap_or(true),
        policy,
        rules,
        starter_rules: raw.starter_rules.unwrap_or(true),
        nameservers,
        dns_timeout,
        dnsbl: lists(&raw.dnsbl, "dnsbl")?,
        uribl: lists(&raw.uribl, "uribl")?,
        greylisting: {
            let d = Greylisting::default();
            match &raw.greylisting {
                None => d,
                Some(g) => {
                    let delay = cx.duration(&g.delay, "filter.greylisting.delay", d.delay)?;
                    let window = cx.duration(&g.window, "filter.greylisting.window", d.window)?;
                    let pass = cx.duration(&g.pass, "filter.greylisting.pass", d.pass)?;
                    if window <= delay {
                        return cx.err(
                            g.window
                                .as_ref()
                                .or(g.delay.as_ref())
                                .map_or(f.span(), |v| v.span()),
                            "filter.greylisting.window",
                            "must be longer than delay (a retry must have time to come)",
                        );
                    }
                    Greylisting {
                        delay,
                        window,
                        pass,
                    }
                }
            }
        },
        spf_reject: raw.spf_reject.unwrap_or(false),
        rate_per_client: raw.rate_limit.as_ref().map_or(0, |r| r.client),
        rate_per_sender_domain: raw.rate_limit.as_ref().map_or(0, |r| r.sender_domain),
        clamd: match &raw.clamd {
            None => None,
            Some(c) => Some(validate_clamd(cx, c)?),
        },
        archives: {
            let d = crate::ArchiveLimits::default();
            match &raw.archives {
                None => d,
                Some(a) => crate::ArchiveLimits {
                    max_depth: cx
                        .positive(&a.max_depth, "filter.archives.max_depth", 4)?
                        .min(64) as u32,
                    max_files: cx.positive(
                        &a.max_files,
                        "filter.archives.max_files",
                        d.max_files,
                    )?,
                    max_expanded: cx.size(
                        &a.max_expanded,
                        "filter.archives.max_expanded",
                        d.max_expanded,
                    )?,
                    max_ratio: cx
                        .positive(&a.max_ratio, "filter.archives.max_ratio", 100)?
                        .min(1 << 20) as u32,
                },
            }
        },
        hash_blocklist: match &raw.hash_blocklist {
            None => None,
            Some(p) => {
                let path = std::path::PathBuf::from(p.get_ref());
                if let Err(e) = std::fs::metadata(&path) {
                    return cx.err(
                        p.span(),
                        "filter.hash_blocklist",
                        format!("{} cannot be read: {e}", path.display()),
                    );
                }
                Some(path)
            }
        },
    })
}

/// The global attachment rules, each type and extension checked where it is written.
fn attachment_rules(
    cx: &Ctx<'_>,
    rules: &[AttachmentRuleRaw],
) -> Result<Vec<crate::AttachmentRule>, Error> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("filter.attachment_rule[{i}].{k}");
        for (list, field) in [(&r.types, "types"), (&r.extensions, "extensions")] {
            for v in list {
                let one = crate::AttachmentRule {
                    types: if field == "types" {
                        vec![v.get_ref().clone()]
                    } else {
                        vec![]
                    },
                    extensions: if field == "types" {
                        vec![]
                    } else {
                        vec![v.get_ref().clone()]
                    },
                    action: *r.action.get_ref(),
                };
                if let Err(m) = one.checked() {
                    return cx.err(v.span(), &key(field), m);
                }
            }
        }
        let rule = crate::AttachmentRule {
            types: r.types.iter().map(|v| v.get_ref().clone()).collect(),
            extensions: r.extensions.iter().map(|v| v.get_ref().clone()).collect(),
            action: *r.action.get_ref(),
        };
        match rule.checked() {
            Ok(rule) => out.push(rule),
            Err(m) => return cx.err(r.action.span(), &key("types"), m),
        }
    }
    Ok(out)
}

fn validate_clamd(cx: &Ctx<'_>, c: &S<ClamdRaw>) -> Result<crate::Clamd, Error> {
    let raw = c.get_ref();
    let text = raw.address.get_ref().trim();
    let address = if text.starts_with('/') {
        crate::ClamdAddress::Unix(text.into())
    } else {
        crate::ClamdAddress::Tcp(cx.addr(&raw.address, "filter.clamd.address").or_else(|_| {
            cx.err(
                raw.address.span(),
                "filter.clamd.address",
                format!(
                    "{text:?} is neither IP:PORT (\"127.0.0.1:3310\") nor a socket's path (\"/run/clamav/clamd.ctl\")"
                ),
            )
        })?)
    };
    let timeout = cx.duration(
        &raw.timeout,
        "filter.clamd.timeout",
        Duration::from_secs(30),
    )?;
    if timeout.is_zero() || timeout > Duration::from_secs(600) {
        return cx.err(
            raw.timeout.as_ref().map_or(c.span(), |v| v.span()),
            "filter.clamd.timeout",
            "must be more than zero and at most 600s",
        );
    }
    Ok(crate::Clamd {
        address,
        timeout,
        max_size: cx.size(&raw.max_size, "filter.clamd.max_size", 25 << 20)?,
        connections: cx.positive(&raw.connections, "filter.clamd.connections", 4)?,
    })
}

fn validate_dns(cx: &Ctx<'_>, d: &S<DnsRaw>, used: &mut Addresses) -> Result<Dns, Error> {
    let raw = d.get_ref();
    if raw.listen.get_ref().is_empty() {
        return cx.err(
            raw.listen.span(),
            "dns.listen",
            "needs at least one address",
        );
    }
    let mut listen = Vec::new();
    for a in raw.listen.get_ref() {
        let addr = cx.addr(a, "dns.listen")?;
        used.claim(cx, addr, a.span(), "dns.listen")?;
        listen.push(addr);
    }
    if raw.zones.is_empty() {
        return cx.err(
            d.span(),
            "dns.zone",
            "the DNS needs at least one [[dns.zone]]",
        );
    }
    let mut zones: Vec<Zone> = Vec::new();
    for (i, z) in raw.zones.iter().enumerate() {
        let z = z.get_ref();
        let key = |k: &str| format!("dns.zone[{i}].{k}");
        let name = cx.host(&z.name, &key("name"))?;
        if zones.iter().any(|o| o.name == name) {
            return cx.err(
                z.name.span(),
                &key("name"),
                format!("zone {name} is configured twice"),
            );
        }
        let ttl = z.ttl.unwrap_or(900);
        let mut nameservers = Vec::new();
        for n in z.nameservers.iter().flatten() {
            nameservers.push(cx.host(n, &key("nameservers"))?);
        }
        if nameservers.is_empty() {
            nameservers.push(format!("ns1.{name}"));
        }
        let hostmaster = match &z.hostmaster {
            Some(h) => cx.host(h, &key("hostmaster"))?,
            None => format!("hostmaster.{name}"),
        };
        let mut records = Vec::new();
        for (j, r) in z.records.iter().enumerate() {
            let rkey = |k: &str| format!("dns.zone[{i}].record[{j}].{k}");
            let written = r.name.get_ref().trim().to_ascii_lowercase();
            let fqdn = if written == "@" {
                name.clone()
            } else if let Some(abs) = written.strip_suffix('.') {
                abs.to_string()
            } else {
                format!("{written}.{name}")
            };
            if !(fqdn.is_ascii() && is_record_name(&fqdn))
                || !(fqdn == name || fqdn.ends_with(&format!(".{name}")))
            {
                return cx.err(
                    r.name.span(),
                    &rkey("name"),
                    format!("{:?} is not a name inside zone {name}", r.name.get_ref()),
                );
            }
            let value = r.value.get_ref().trim();
            let bad = |what: &str| {
                cx.err(
                    r.value.span(),
                    &rkey("value"),
                    format!("invalid {what} value {value:?}"),
                )
            };
            let data = match r.rtype.get_ref().to_ascii_uppercase().as_str() {
                "A" => RecordData::A(match value.parse() {
                    Ok(v) => v,
                    Err(_) => return bad("A"),
                }),
                "AAAA" => RecordData::Aaaa(match value.parse() {
                    Ok(v) => v,
                    Err(_) => return bad("AAAA"),
                }),
                "MX" => {
                    let mut parts = value.split_whitespace();
                    match (
                        parts.next().and_then(|p| p.parse().ok()),
                        parts.next(),
                        parts.next(),
                    ) {
                        (Some(preference), Some(host), None)
                            if is_host_name(host.trim_end_matches('.')) =>
                        {
                            RecordData::Mx {
                                preference,
                                exchange: host.trim_end_matches('.').to_ascii_lowercase(),
                            }
                        }
                        _ => return bad("MX (\"10 mx.example.net\")"),
                    }
                }
                "TXT" => {
                    if value.len() > 2048 || !value.is_ascii() {
                        return cx.err(
                            r.value.span(),
                            &rkey("value"),
                            format!(
                                "a TXT value is ASCII of at most 2048 characters (served as \
                                 strings of 255); this one has {} bytes{}",
                                value.len(),
                                if value.is_ascii() {
                                    ""
                                } else {
                                    " and is not ASCII"
                                }
                            ),
                        );
                    }
                    RecordData::Txt(value.to_string())
                }
                "NS" => {
                    let host = value.trim_end_matches('.').to_ascii_lowercase();
                    if !is_host_name(&host) {
                        return bad("NS");
                    }
                    RecordData::Ns(host)
                }
                other => {
                    return cx.err(
                        r.rtype.span(),
                        &rkey("type"),
                        format!("unsupported record type {other:?} (A, AAAA, MX, TXT, NS)"),
                    );
                }
            };
            records.push(Record {
                name: fqdn,
                ttl: r.ttl.unwrap_or(ttl),
                data,
            });
        }
        zones.push(Zone {
            name,
            ttl,
            serial: z.serial.unwrap_or(1),
            nameservers,
            hostmaster,
            negative_ttl: z.negative_ttl.unwrap_or(300),
            records,
        });
    }
    let rate_limit = match &raw.rate_limit {
        None => None,
        Some(r) if *r.responses_per_second.get_ref() == 0 => None,
        Some(r) => {
            let prefix = |v: &Option<S<u8>>, key: &str, default: u8, max: u8| match v {
                None => Ok(default),
                Some(p) if *p.get_ref() == 0 || *p.get_ref() > max => {
                    cx.err(p.span(), key, format!("must be from 1 to {max}"))
                }
                Some(p) => Ok(*p.get_ref()),
            };
            Some(RateLimit {
                responses_per_second: *r.responses_per_second.get_ref() as u32,
                ipv4_prefix: prefix(&r.ipv4_prefix, "dns.rate_limit.ipv4_prefix", 24, 32)?,
                ipv6_prefix: prefix(&r.ipv6_prefix, "dns.rate_limit.ipv6_prefix", 56, 128)?,
            })
        }
    };
    Ok(Dns {
        listen,
        zones,
        rate_limit,
    })
}

fn validate_silos(
    cx: &Ctx<'_>,
    raw: &[S<SiloRaw>],
    dns: Option<&Dns>,
    used: &mut Addresses,
) -> Result<Vec<Silo>, Error> {
    let mut silos: Vec<Silo> = Vec::new();
    let mut cluster_names: HashSet<String> = HashSet::new();
    let mut server_names: HashSet<String> = HashSet::new();
    for (i, s) in raw.iter().enumerate() {
        let span = s.span();
        let s = s.get_ref();
        let key = |k: &str| format!("silo[{i}].{k}");
        let name = cx.host(&s.name, &key("name"))?;
        if silos.iter().any(|o| o.name == name) {
            return cx.err(
                s.name.span(),
                &key("name"),
                format!("silo {name} is configured twice"),
            );
        }
        if let Some(dns) = dns
            && !dns
                .zones
                .iter()
                .any(|z| name == z.name || name.ends_with(&format!(".{}", z.name)))
        {
            return cx.err(
                s.name.span(),
                &key("name"),
                format!(
                    "silo {name} is not inside any [[dns.zone]], so the DNS cannot answer for it"
                ),
            );
        }
        if s.clusters.is_empty() {
            return cx.err(
                span,
                &key("cluster"),
                "a silo needs at least one [[silo.cluster]]",
            );
        }
        let mut clusters = Vec::new();
        for (j, c) in s.clusters.iter().enumerate() {
            let cspan = c.span();
            let c = c.get_ref();
            let ckey = |k: &str| format!("silo[{i}].cluster[{j}].{k}");
            let cname = c.name.get_ref().trim().to_string();
            if cname.is_empty() || cname.contains(['/', ' ']) {
                return cx.err(
                    c.name.span(),
                    &ckey("name"),
                    "a cluster name is a word without '/' or spaces",
                );
            }
            if !cluster_names.insert(cname.clone()) {
                return cx.err(
                    c.name.span(),
                    &ckey("name"),
                    format!("cluster name {cname:?} is used twice"),
                );
            }
            let address = cx.addr(&c.address, &ckey("address"))?;
            used.claim(cx, address, c.address.span(), &ckey("address"))?;
            let source: IpAddr = match &c.source {
                None => address.ip(),
                Some(v) => v.get_ref().parse().or_else(|_| {
                    cx.err(
                        v.span(),
                        &ckey("source"),
                        format!("invalid IP address {:?}", v.get_ref()),
                    )
                })?,
            };
            if c.servers.is_empty() {
                return cx.err(
                    cspan,
                    &ckey("server"),
                    "zero total loading: a cluster needs at least one [[silo.cluster.server]]",
                );
            }
            let mut servers = Vec::new();
            for (k, v) in c.servers.iter().enumerate() {
                let v = v.get_ref();
                let skey = |x: &str| format!("silo[{i}].cluster[{j}].server[{k}].{x}");
                let sname = v.name.get_ref().trim().to_string();
                if sname.is_empty() || sname.contains(['/', ' ']) {
                    return cx.err(
                        v.name.span(),
                        &skey("name"),
                        "a server name is a word without '/' or spaces",
                    );
                }
                if !server_names.insert(sname.clone()) {
                    return cx.err(
                        v.name.span(),
                        &skey("name"),
                        format!("server name {sname:?} is used twice"),
                    );
                }
                let saddr = cx.addr(&v.address, &skey("address"))?;
                used.claim(cx, saddr, v.address.span(), &skey("address"))?;
                servers.push(Server {
                    name: sname,
                    address: saddr,
                    loading: match *v.loading.get_ref() {
                        l if LOADING.contains(&(l as u32)) && l <= u32::MAX as usize => l as u32,
                        _ => {
                            return cx.err(
                                v.loading.span(),
                                &skey("loading"),
                                format!("must be from {} to {}", LOADING.start(), LOADING.end()),
                            );
                        }
                    },
                    maxconn: cx.positive(&v.maxconn, &skey("maxconn"), DEFAULT_MAXCONN)?,
                });
            }
            clusters.push(Cluster {
                name: cname,
                address,
                source,
                proxy: c.proxy,
                scheduler: c.scheduler.unwrap_or_default(),
                weight: cx.positive(&c.weight, &ckey("weight"), 1)? as u32,
                queue_timeout: cx.duration(
                    &c.queue_timeout,
                    &ckey("queue_timeout"),
                    Duration::from_secs(5),
                )?,
                slowstart: cx.duration_or_zero(
                    &c.slowstart,
                    &ckey("slowstart"),
                    Duration::from_secs(10),
                )?,
                threads: match &c.threads {
                    None => None,
                    Some(t) => Some(cx.at_least_one(t, &ckey("threads"))?),
                },
                fin_timeout: cx.duration(
                    &c.fin_timeout,
                    &ckey("fin_timeout"),
                    Duration::from_secs(30),
                )?,
                max_connections_per_client: cx.positive(
                    &c.max_connections_per_client,
                    &ckey("max_connections_per_client"),
                    50,
                )?,
                max_connections: cx.positive(
                    &c.max_connections,
                    &ckey("max_connections"),
                    10_000,
                )?,
                health: cx.health(&c.health, &ckey("health."))?,
                servers,
            });
        }
        silos.push(Silo {
            name,
            rotation: s.rotation.unwrap_or_default(),
            ttl: s.ttl.unwrap_or(900),
            health: cx.health(&s.health, &key("health."))?,
            clusters,
        });
    }
    Ok(silos)
}

pub(crate) fn parse_destination(s: &str) -> Result<Destination, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("mx") {
        return Ok(Destination::Mx);
    }
    let bad = || {
        format!(
            "invalid destination {s:?}: expected \"mx\" or HOST:PORT, e.g. \"127.0.0.1:2526\" or \"[::1]:25\""
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    // An IPv6 address in brackets, an IPv4 address, or a host name: nothing else, so that
    // neither a typo nor a control character reaches the resolver or the logs.
    let host = match host.strip_prefix('[') {
        Some(v6) => match v6.strip_suffix(']') {
            Some(a) if a.parse::<std::net::Ipv6Addr>().is_ok() => a,
            _ => return Err(bad()),
        },
        None if host.parse::<std::net::Ipv4Addr>().is_ok() => host,
        None if host.is_ascii() && crate::is_host_name(host) => host,
        None => return Err(bad()),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok(Destination::Host {
        host: host.to_string(),
        port,
    })
}
