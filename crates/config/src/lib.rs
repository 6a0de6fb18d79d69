//! The configuration of a mailsilo deployment: one TOML file, read into a typed model and
//! validated as a whole before anything starts.
//!
//! This crate owns the file format and its rules. Every error names the file, the line and
//! column, and the key that is wrong, so that `mailsilo config check` can point an operator
//! at the exact place. The roles read the validated [`Config`]; none of them parses TOML.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The annotated demo configuration, used when no file is given.
pub const DEMO: &str = include_str!("demo.toml");

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
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
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub bare_newlines: BareNewlines,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Delivery behaviour shared by all destinations.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub destination_concurrency: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub connection_cache_time: Duration,
}

/// The demo mailbox server that stands in for a client's own mail server.
#[derive(Debug, Clone)]
pub struct Sink {
    pub listen: SocketAddr,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a file name, or `<demo>`).
    pub source: String,
    pub smtp: Smtp,
    pub delivery: Delivery,
    pub domains: Vec<Domain>,
    pub sink: Option<Sink>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            file: file.clone(),
            source,
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
            let message = e.message().trim().to_string();
            let key = key_at(text, &span);
            invalid(file, text, span, &key, message)
        })?;
        raw.validate(file, text)
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

/// The key written at the start of the line that holds `span`, for serde's own errors.
fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    if key.is_empty() {
        "(document)".into()
    } else {
        key.trim_matches(['[', ']']).to_string()
    }
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

mod raw {
    //! The file as written; [`File::validate`] turns it into the model.
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
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SmtpRaw {
        pub hostname: S<String>,
        pub listen: S<Vec<S<String>>>,
        pub max_message_size: Option<S<String>>,
        pub max_recipients: Option<S<usize>>,
        pub max_errors: Option<S<usize>>,
        pub max_sessions: Option<S<usize>>,
        pub max_sessions_per_client: Option<S<usize>>,
        pub command_timeout: Option<S<String>>,
        pub data_timeout: Option<S<String>>,
        pub bare_newlines: Option<BareNewlines>,
        pub tls_cert: Option<S<String>>,
        pub tls_key: Option<S<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct DeliveryRaw {
        pub destination_concurrency: Option<S<usize>>,
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
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SinkRaw {
        pub listen: S<String>,
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

        fn duration(
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

        fn positive(
            &self,
            v: &Option<S<usize>>,
            key: &str,
            default: usize,
        ) -> Result<usize, Error> {
            match v {
                None => Ok(default),
                Some(s) if *s.get_ref() == 0 => self.err(s.span(), key, "must be at least 1"),
                Some(s) => Ok(*s.get_ref()),
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

        fn retry(&self, raw: &RetryRaw, prefix: &str, base: Retry) -> Result<Retry, Error> {
            let r = Retry {
                min_backoff: self.duration(
                    &raw.min_backoff,
                    &format!("{prefix}min_backoff"),
                    base.min_backoff,
                )?,
                max_backoff: self.duration(
                    &raw.max_backoff,
                    &format!("{prefix}max_backoff"),
                    base.max_backoff,
                )?,
                lifetime: self.duration(
                    &raw.lifetime,
                    &format!("{prefix}lifetime"),
                    base.lifetime,
                )?,
                delay_warning: match &raw.delay_warning {
                    None => base.delay_warning,
                    Some(_) => Some(self.duration(
                        &raw.delay_warning,
                        &format!("{prefix}delay_warning"),
                        Duration::ZERO,
                    )?)
                    .filter(|d| !d.is_zero()),
                },
            };
            if r.min_backoff.is_zero() {
                let span = raw.min_backoff.as_ref().map_or(0..0, |s| s.span());
                return self.err(
                    span,
                    &format!("{prefix}min_backoff"),
                    "must be more than zero",
                );
            }
            if r.max_backoff < r.min_backoff {
                let span = raw
                    .max_backoff
                    .as_ref()
                    .or(raw.min_backoff.as_ref())
                    .map_or(0..0, |s| s.span());
                return self.err(
                    span,
                    &format!("{prefix}max_backoff"),
                    "must not be less than min_backoff",
                );
            }
            Ok(r)
        }
    }

    impl File {
        pub fn validate(self, file: &str, text: &str) -> Result<Config, Error> {
            let cx = Ctx { file, text };
            let smtp_span = self.smtp.span();
            let s = self.smtp.into_inner();

            let hostname = s.hostname.get_ref().trim().to_string();
            if hostname.is_empty() || hostname.contains(char::is_whitespace) {
                return cx.err(
                    s.hostname.span(),
                    "smtp.hostname",
                    "must be a host name without spaces",
                );
            }
            if s.listen.get_ref().is_empty() {
                return cx.err(s.listen.span(), "smtp.listen", "needs at least one address");
            }
            let mut listen = Vec::new();
            for a in s.listen.get_ref() {
                let addr = cx.addr(a, "smtp.listen")?;
                if listen.contains(&addr) {
                    return cx.err(a.span(), "smtp.listen", format!("duplicate address {addr}"));
                }
                listen.push(addr);
            }
            let max_message_size = match &s.max_message_size {
                None => 25 << 20,
                Some(v) => match parse_size(v.get_ref()) {
                    Ok(0) => {
                        return cx.err(v.span(), "smtp.max_message_size", "must be more than zero");
                    }
                    Ok(n) => n,
                    Err(m) => return cx.err(v.span(), "smtp.max_message_size", m),
                },
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
            if s.tls_cert.is_some() != s.tls_key.is_some() {
                let span = s
                    .tls_cert
                    .as_ref()
                    .or(s.tls_key.as_ref())
                    .map_or(smtp_span, |v| v.span());
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
                connection_cache_time: cx.duration(
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

            let mut domains: Vec<Domain> = Vec::new();
            for (i, spanned) in self.domains.iter().enumerate() {
                let raw = spanned.get_ref();
                let key = |k: &str| format!("domain[{i}].{k}");
                let name = raw.name.get_ref().trim().to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !valid {
                    return cx.err(
                        raw.name.span(),
                        &key("name"),
                        format!("invalid domain name {:?}", raw.name.get_ref()),
                    );
                }
                if domains.iter().any(|d| d.name == name) {
                    return cx.err(
                        raw.name.span(),
                        &key("name"),
                        format!("domain {name} is configured twice"),
                    );
                }
                let destination = parse_destination(raw.destination.get_ref())
                    .or_else(|m| cx.err(raw.destination.span(), &key("destination"), m))?;
                let recipients = match &raw.recipients {
                    None => None,
                    Some(list) => {
                        let mut set = HashSet::new();
                        for r in list {
                            let local = r.get_ref().trim().to_ascii_lowercase();
                            if local.is_empty() || local.contains(['@', ' ', '<', '>']) {
                                return cx.err(r.span(), &key("recipients"), format!("{:?} is not a local part (write \"alice\", not \"alice@{name}\")", r.get_ref()));
                            }
                            set.insert(local);
                        }
                        Some(set)
                    }
                };
                let retry = match &raw.retry {
                    None => retry,
                    Some(r) => cx.retry(r, &key("retry."), retry)?,
                };
                domains.push(Domain {
                    name,
                    destination,
                    require_tls: raw.require_tls,
                    recipients,
                    retry,
                });
            }
            if domains.is_empty() {
                return cx.err(
                    0..0,
                    "domain",
                    "no client domains: add at least one [[domain]] table",
                );
            }

            let sink = match &self.sink {
                None => None,
                Some(s) => {
                    let addr = cx.addr(&s.listen, "sink.listen")?;
                    if smtp.listen.contains(&addr) {
                        return cx.err(
                            s.listen.span(),
                            "sink.listen",
                            format!("{addr} is also an smtp.listen address"),
                        );
                    }
                    Some(Sink { listen: addr })
                }
            };

            Ok(Config {
                source: file.to_string(),
                smtp,
                delivery,
                domains,
                sink,
            })
        }
    }

    fn parse_destination(s: &str) -> Result<Destination, String> {
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
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Destination::Host {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse("t.toml", text).unwrap_err().to_string()
    }

    const MIN: &str = "[smtp]\nhostname = \"mx\"\nlisten = [\"127.0.0.1:25\"]\n[[domain]]\nname = \"example.com\"\ndestination = \"127.0.0.1:26\"\n";

    #[test]
    fn demo_is_valid() {
        let c = Config::demo();
        assert_eq!(
            c.smtp.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.domain("example.com").is_some());
        assert!(c.domain("example.org").is_some());
        assert_eq!(c.sink.unwrap().listen.port(), 2526);
        assert_eq!(c.domains[0].retry.min_backoff, Duration::from_secs(300));
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
            e.starts_with("t.toml:2:1: hostnme: unknown field `hostnme`"),
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
        assert!(e.contains("unknown field `smtp2`"), "{e}");
        let e = err(&MIN.replace("listen = [", "max_recipients = 10\nlisten = ["));
        assert!(
            e.starts_with("t.toml:3:18: smtp.max_recipients: RFC 5321 requires at least 100"),
            "{e}"
        );
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
