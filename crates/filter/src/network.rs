//! The checks that ask the DNS: sender authentication (SPF, every DKIM signature with RSA
//! or Ed25519, DMARC with alignment, policy, subdomain policy and `pct`, ARC), forward-
//! confirmed reverse DNS of the client, and DNS lists of client addresses and of link
//! domains. They share one caching resolver (hickory, through mail-auth) whose
//! nameservers the config names.
//!
//! Every answer is bounded by `filter.dns_timeout`. A check whose answer did not come says
//! so with a `*_TEMPERROR` or `DNS_UNAVAILABLE` symbol and marks the report degraded; it
//! never passes silently. After [`BREAKER_TIMEOUTS`] timeouts in a row the resolver is taken
//! for down for [`BREAKER_PAUSE`], and the checks fail at once rather than each waiting its
//! timeout (a corpus scan with no resolver, or a gateway whose resolver died, keeps going).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use config::DnsList;
use mail_auth::common::resolver::ToReverseName;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, DnsError, Error,
    IprevResult, MessageAuthenticator, SpfResult, dmarc::verify::DmarcParameters,
};

use crate::engine::{Report, Symbol};

/// Timeouts in a row after which the resolver is taken for down.
pub const BREAKER_TIMEOUTS: u32 = 3;
/// How long the resolver is left alone once taken for down.
pub const BREAKER_PAUSE: Duration = Duration::from_secs(30);

/// What the DNS checks are told about a message.
pub struct Facts<'a> {
    pub raw: &'a [u8],
    /// The client's address (`mailsilo check` without `--ip` has none: the checks that
    /// need one, SPF, reverse DNS and the address lists, are left out).
    pub client: Option<IpAddr>,
    pub helo: &'a str,
    /// The reverse path (empty: the null sender).
    pub sender: &'a str,
}

/// What DMARC asks of mail that fails it, after `pct` and testing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Reject,
    Quarantine,
}

/// The resolver and the lists.
pub struct Network {
    auth: MessageAuthenticator,
    /// This server's authserv-id (its host name).
    hostname: String,
    timeout: Duration,
    dnsbl: Vec<DnsList>,
    uribl: Vec<DnsList>,
    breaker: Mutex<Breaker>,
}

#[derive(Default)]
struct Breaker {
    timeouts: u32,
    open_until: Option<Instant>,
}

impl Network {
    /// A resolver on `nameservers` (empty: the system's), with `timeout` per question.
    pub fn new(
        hostname: &str,
        nameservers: &[SocketAddr],
        timeout: Duration,
        dnsbl: Vec<DnsList>,
        uribl: Vec<DnsList>,
    ) -> Result<Network, String> {
        let (config, mut opts) = if nameservers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("reading the system's resolver configuration: {e}"))?
        } else {
            let servers = nameservers
                .iter()
                .map(|a| {
                    let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                    udp.port = a.port();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_parts(None, Vec::new(), servers),
                ResolverOpts::default(),
            )
        };
        // Two tries of half the timeout each: one lost UDP packet does not cost a whole
        // timeout, and the answer still comes (or not) within `timeout`.
        opts.timeout = timeout / 2;
        opts.attempts = 2;
        opts.cache_size = 16_384;
        // "No such name" is kept at least a minute: a mail server asks the same absent
        // names (SPF and DMARC of senders that publish none) for every message, and
        // answering them from the cache spares the resolver and the wait.
        opts.negative_min_ttl = Some(Duration::from_secs(60));
        let auth = MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())?;
        Ok(Network {
            auth,
            hostname: hostname.to_string(),
            timeout,
            dnsbl,
            uribl,
            breaker: Mutex::default(),
        })
    }

    /// Whether the sender's domain publishes SPF that forbids `client` (an answer of
    /// `fail`: `-all` reached); the domain when it does. Any other answer, or none within
    /// the timeout, refuses no one.
    pub async fn spf_fails(&self, client: IpAddr, helo: &str, sender: &str) -> Option<String> {
        if self.down() || sender.is_empty() {
            return None;
        }
        let helo = if helo.is_empty() { "unknown" } else { helo };
        let spf = tokio::time::timeout(
            self.timeout,
            self.auth.verify_spf(SpfParameters::verify_mail_from(
                client,
                helo,
                &self.hostname,
                sender,
            )),
        )
        .await
        .ok()?;
        (spf.result() == SpfResult::Fail).then(|| spf.domain().to_string())
    }

    /// The zone of the first client-address list marked `reject` that lists `client`
    /// (asked through the same cache the scan's lookups use). None when none does, or the
    /// resolver is down or does not answer: a list that cannot be asked refuses no one.
    pub async fn blocked(&self, client: IpAddr) -> Option<String> {
        self.first_listing(client, true).await
    }

    /// The zone of the first client-address list, marked `reject` or not, that lists
    /// `client` (for a client domain that refuses listed clients); None as for
    /// [`Network::blocked`].
    pub async fn listed(&self, client: IpAddr) -> Option<String> {
        self.first_listing(client, false).await
    }

    async fn first_listing(&self, client: IpAddr, only_reject: bool) -> Option<String> {
        if self.down() {
            return None;
        }
        let reversed = client.to_reverse_name();
        for l in self.dnsbl.iter().filter(|l| l.reject || !only_reject) {
            let name = format!("{reversed}.{}.", l.zone);
            if let Ok(Ok(entry)) =
                tokio::time::timeout(self.timeout, self.auth.ipv4_lookup_raw(&name)).await
                && entry.entry.iter().any(|a| listing(*a))
            {
                return Some(l.zone.clone());
            }
        }
        None
    }

    /// This server's authserv-id.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Asks the resolver one question; if no answer comes (any answer, a "no such name"
    /// or a refusal included, shows it alive), takes it for down at once, so the messages
    /// that follow do not each wait for their timeout. `mailsilo check` runs this first.
    pub async fn probe(&self) -> bool {
        let alive = match tokio::time::timeout(
            self.timeout,
            // Not a special-use name (`.invalid` is answered by hickory itself).
            self.auth.txt_raw_lookup(format!("{}.", self.hostname)),
        )
        .await
        {
            Ok(Ok(_)) => true,
            // An error the resolver answered (no such name, a refusal, SERVFAIL), not one
            // that says no reply came.
            Ok(Err(e)) => !timed_out(&e),
            Err(_) => false,
        };
        if !alive {
            self.breaker.lock().expect("breaker").open_until = Some(Instant::now() + BREAKER_PAUSE);
        }
        alive
    }

    fn down(&self) -> bool {
        let b = self.breaker.lock().expect("breaker");
        b.open_until.is_some_and(|t| Instant::now() < t)
    }

    /// Notes whether a round of questions timed out.
    fn note(&self, timed_out: bool) {
        let mut b = self.breaker.lock().expect("breaker");
        if timed_out {
            b.timeouts += 1;
            if b.timeouts >= BREAKER_TIMEOUTS {
                b.open_until = Some(Instant::now() + BREAKER_PAUSE);
                b.timeouts = 0;
            }
        } else {
            b.timeouts = 0;
        }
    }

    /// Runs every DNS check on a message, adding their symbols, the DMARC disposition and
    /// the Authentication-Results to `r`.
    pub async fn check(&self, f: &Facts<'_>, r: &mut Report) {
        let t = Instant::now();
        if self.down() {
            r.fail(
                "DNS_UNAVAILABLE",
                format!(
                    "the resolver is not answering: DNS checks are skipped for up to {}s",
                    BREAKER_PAUSE.as_secs()
                ),
                t,
            );
            return;
        }
        // The whole round's deadline: every question is bounded by the resolver's timeout
        // and the checks run side by side, but SPF and DKIM-then-DMARC chain questions.
        let budget = self.timeout * 3;
        let hosts = r.hosts.clone();
        let run = async {
            tokio::join!(
                self.authenticate(f),
                self.iprev(f.client),
                self.lists(f, &hosts)
            )
        };
        match tokio::time::timeout(budget, run).await {
            Ok(((dmarc, mut auth_symbols, ar), (iprev_symbol, iprev_out), list_symbols)) => {
                // Only a question that got no reply counts: an error the DNS answered (a
                // refusal, SERVFAIL) shows it alive. SPF's own error does not say which it
                // was: it counts when it took the resolver's whole timeout.
                let waited = self.timeout.as_micros() as u64 * 9 / 10;
                let timed_out = auth_symbols
                    .iter()
                    .chain(&iprev_symbol)
                    .chain(&list_symbols)
                    .any(|s| match s.name.as_str() {
                        "SPF_TEMPERROR" => s.micros >= waited,
                        n => n.ends_with("TEMPERROR") && s.reason.ends_with("timed out"),
                    });
                self.note(timed_out);
                let mut ar = ar;
                if let (Some(iprev), Some(client)) = (&iprev_out, f.client) {
                    ar = ar.with_iprev_result(iprev, client);
                }
                auth_symbols.extend(iprev_symbol);
                auth_symbols.extend(list_symbols);
                for s in auth_symbols {
                    r.add(s);
                }
                r.dmarc = dmarc;
                r.auth_results = Some(ar.to_string());
            }
            Err(_) => {
                self.note(true);
                r.fail(
                    "DNS_TIMEOUT",
                    format!(
                        "the DNS checks took over {}s and were cut",
                        budget.as_secs_f64()
                    ),
                    t,
                );
            }
        }
    }

    /// SPF, DKIM, DMARC and ARC: findings, symbols, and the Authentication-Results.
    async fn authenticate<'a>(
        &'a self,
        f: &'a Facts<'a>,
    ) -> (Option<Disposition>, Vec<Symbol>, AuthenticationResults<'a>) {
        let t = Instant::now();
        let mut symbols = Vec::new();
        let mut disposition = None;
        let mut ar = AuthenticationResults::new(&self.hostname);
        let helo = if f.helo.is_empty() { "unknown" } else { f.helo };
        let spf = match f.client {
            None => mail_auth::SpfOutput::default(),
            Some(client) if f.sender.is_empty() => {
                self.auth
                    .verify_spf(SpfParameters::verify_ehlo(client, helo, &self.hostname))
                    .await
            }
            Some(client) => {
                self.auth
                    .verify_spf(SpfParameters::verify_mail_from(
                        client,
                        helo,
                        &self.hostname,
                        f.sender,
                    ))
                    .await
            }
        };
        if let Some(client) = f.client {
            symbols.push(spf_symbol(&spf, t));
            ar = if f.sender.is_empty() {
                ar.with_spf_ehlo_result(&spf, client, helo)
            } else {
                ar.with_spf_mailfrom_result(&spf, client, f.sender, helo)
            };
        }
        let Some(message) = AuthenticatedMessage::parse(f.raw) else {
            symbols.push(symbol(
                "AUTH_UNPARSABLE",
                0.5,
                "the header section cannot be read for DKIM and DMARC".into(),
                t,
            ));
            return (disposition, symbols, ar);
        };
        let t = Instant::now();
        let (dkim, arc) = tokio::join!(
            self.auth.verify_dkim(&message),
            self.auth.verify_arc(&message)
        );
        let from = message.from().to_string();
        symbols.extend(dkim_symbols(&dkim, t));
        ar = ar.with_dkim_results(&dkim, &from);
        match arc.result() {
            DkimResult::None => {}
            DkimResult::Pass => {
                symbols.push(symbol("ARC_VALID", 0.0, "the ARC chain verifies".into(), t))
            }
            DkimResult::TempError(e) => symbols.push(temperror("ARC_TEMPERROR", e, t)),
            other => symbols.push(symbol(
                "ARC_INVALID",
                0.5,
                format!("the ARC chain does not verify: {}", why(other)),
                t,
            )),
        }
        if arc.result() != &DkimResult::None {
            ar = ar.with_arc_result(&arc, f.client.unwrap_or(IpAddr::from([0, 0, 0, 0])));
        }
        let t = Instant::now();
        let mail_from_domain = f.sender.rsplit_once('@').map_or(helo, |(_, d)| d);
        // The author domains, read as a reader's mail program shows them (comments dropped)
        // from every From: field. mail-auth exempts a message with several of them from
        // DMARC, which would let a forged author through beside a harmless one; here each
        // is checked alone and the strictest outcome applies (RFC 7489, 6.6.1).
        let froms: Vec<&[u8]> = message
            .headers
            .iter()
            .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"from"))
            .map(|(_, value)| *value)
            .collect();
        let authors: Vec<String> = froms.iter().flat_map(|v| author_addresses(v)).collect();
        let mut domains: Vec<&str> = authors
            .iter()
            .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d))
            .filter(|d| !d.is_empty())
            .collect();
        domains.sort_unstable();
        domains.dedup();
        if froms.len() > 1 {
            symbols.push(symbol(
                "FROM_MULTIPLE",
                3.0,
                format!(
                    "{} From: fields (a message has one); DMARC applies to each author",
                    froms.len()
                ),
                t,
            ));
        }
        // Said, not scored: a message without an author is no forgery of one (mail from
        // scripts and devices often lacks it).
        if domains.is_empty() {
            symbols.push(symbol(
                "FROM_MISSING",
                0.0,
                "no author address in From:, so DMARC cannot apply".into(),
                t,
            ));
        }
        if domains.len() > MAX_AUTHOR_DOMAINS {
            symbols.push(symbol(
                "FROM_TOO_MANY_DOMAINS",
                6.0,
                format!(
                    "authors in {} domains: more than the {MAX_AUTHOR_DOMAINS} DMARC is checked for",
                    domains.len()
                ),
                t,
            ));
        }
        let mut worst: Option<(
            u8,
            mail_auth::DmarcOutput,
            Option<Symbol>,
            Option<Disposition>,
        )> = None;
        for domain in domains.iter().take(MAX_AUTHOR_DOMAINS) {
            let author = authors
                .iter()
                .find(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == *domain))
                .cloned()
                .unwrap_or_default();
            let alone;
            let checked = if message.from == [author.as_str()] {
                &message
            } else {
                alone = AuthenticatedMessage {
                    from: vec![author],
                    ..message.clone()
                };
                &alone
            };
            let dmarc = self
                .auth
                .verify_dmarc(DmarcParameters::new(checked, &dkim, mail_from_domain, &spf))
                .await;
            let (rank, found, asked) = self.dmarc_outcome(&dmarc, t).await;
            if worst.as_ref().is_none_or(|w| rank > w.0) {
                worst = Some((rank, dmarc, found, asked));
            }
        }
        if let Some((_, dmarc, found, asked)) = worst {
            ar = ar.with_dmarc_result(&dmarc);
            symbols.extend(found);
            disposition = asked;
        }
        (disposition, symbols, ar)
    }

    /// What one author domain's DMARC result means: how bad it is (a failure under a
    /// stricter policy is worse; a pass is better than an error), its symbol, and the
    /// disposition its policy asks for.
    async fn dmarc_outcome(
        &self,
        dmarc: &mail_auth::DmarcOutput,
        t: Instant,
    ) -> (u8, Option<Symbol>, Option<Disposition>) {
        let domain = dmarc.domain().to_string();
        match dmarc.result() {
            DmarcResult::None => (0, None, None),
            DmarcResult::Pass => (
                1,
                Some(symbol(
                    "DMARC_PASS",
                    -1.0,
                    format!("{domain} is aligned with a passing SPF or DKIM"),
                    t,
                )),
                None,
            ),
            DmarcResult::TempError(e) => (2, Some(temperror("DMARC_TEMPERROR", &e, t)), None),
            DmarcResult::PermError(e) => (
                3,
                Some(symbol(
                    "DMARC_PERMERROR",
                    0.5,
                    format!("{domain}'s DMARC record is broken: {e}"),
                    t,
                )),
                None,
            ),
            _ => {
                let pct = self.pct(&domain).await;
                // mail-auth has already stepped the policy down for testing mode (t=y).
                let applied = applied_policy(dmarc.policy(), pct);
                let (rank, name, score, asked, word) = match applied {
                    Policy::Reject => (
                        6,
                        "DMARC_POLICY_REJECT",
                        6.0,
                        Some(Disposition::Reject),
                        "reject",
                    ),
                    Policy::Quarantine => (
                        5,
                        "DMARC_POLICY_QUARANTINE",
                        4.0,
                        Some(Disposition::Quarantine),
                        "quarantine",
                    ),
                    _ => (4, "DMARC_POLICY_NONE", 1.5, None, "none"),
                };
                let reason = format!(
                    "{domain} fails DMARC (neither SPF nor DKIM aligned) and its policy is {word}"
                );
                (rank, Some(symbol(name, score, reason, t)), asked)
            }
        }
    }

    /// The `pct` of a domain's DMARC record (100 when absent): mail-auth follows
    /// DMARCbis, which dropped it, so it is read here from the (cached) record.
    async fn pct(&self, domain: &str) -> u8 {
        let Ok(raw) = self.auth.txt_raw_lookup(format!("_dmarc.{domain}.")).await else {
            return 100;
        };
        String::from_utf8_lossy(&raw)
            .split(';')
            .filter_map(|tag| tag.trim().strip_prefix("pct="))
            .find_map(|v| v.trim().parse::<u8>().ok())
            .map_or(100, |p| p.min(100))
    }

    /// Forward-confirmed reverse DNS of the client.
    async fn iprev(
        &self,
        client: Option<IpAddr>,
    ) -> (Option<Symbol>, Option<mail_auth::IprevOutput>) {
        let Some(client) = client else {
            return (None, None);
        };
        let t = Instant::now();
        let out = self.auth.verify_iprev(client).await;
        let s = match &out.result {
            IprevResult::Pass => symbol(
                "RDNS_CONFIRMED",
                0.0,
                format!("{client} has a reverse name that resolves back to it"),
                t,
            ),
            IprevResult::TempError(e) => temperror("RDNS_TEMPERROR", e, t),
            IprevResult::None
            | IprevResult::PermError(Error::Dns(DnsError::RecordNotFound(_)))
            | IprevResult::Fail(Error::Dns(DnsError::RecordNotFound(_))) => {
                symbol("RDNS_NONE", 1.0, format!("{client} has no reverse name"), t)
            }
            other => symbol(
                "RDNS_MISMATCH",
                1.0,
                format!(
                    "{client}'s reverse name does not resolve back to it: {}",
                    why_iprev(other)
                ),
                t,
            ),
        };
        (Some(s), Some(out))
    }

    /// The client address in each DNS list, and the link domains in each URI list.
    async fn lists(&self, f: &Facts<'_>, hosts: &[String]) -> Vec<Symbol> {
        // (question, list, what is looked up, a URI list)
        let mut queries: Vec<(String, &DnsList, String, bool)> = Vec::new();
        if let Some(client) = f.client {
            let reversed = client.to_reverse_name();
            for l in &self.dnsbl {
                queries.push((
                    format!("{reversed}.{}.", l.zone),
                    l,
                    client.to_string(),
                    false,
                ));
            }
        }
        let mut domains: Vec<String> = hosts
            .iter()
            .map(|h| registered(h))
            .filter(|d| d.contains('.'))
            .collect();
        domains.sort();
        domains.dedup();
        domains.truncate(MAX_URI_LOOKUPS);
        for l in &self.uribl {
            for d in &domains {
                queries.push((format!("{d}.{}.", l.zone), l, d.clone(), true));
            }
        }
        let lookups = queries.iter().map(|(name, list, what, uri)| async move {
            let t = Instant::now();
            match self.auth.ipv4_lookup_raw(name).await {
                Ok(entry) if !entry.entry.iter().any(|a| listing(*a)) => None,
                Ok(entry) => {
                    let code = entry
                        .entry
                        .iter()
                        .copied()
                        .find(|a| listing(*a))
                        .unwrap_or(Ipv4Addr::UNSPECIFIED);
                    let score = list
                        .codes
                        .iter()
                        .find(|c| c.0 == code)
                        .map_or(list.score, |c| c.1);
                    Some(symbol(
                        if *uri { "URIBL_LISTED" } else { "DNSBL_LISTED" },
                        score,
                        format!("{what} is listed in {} ({code})", list.zone),
                        t,
                    ))
                }
                Err(Error::Dns(DnsError::RecordNotFound(_))) => None,
                Err(e) => Some(temperror("DNSBL_TEMPERROR", &e, t)),
            }
        });
        futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The most link domains looked up in each URI list.
const MAX_URI_LOOKUPS: usize = 20;

/// Whether a DNS list's answer is a listing: an address in 127.0.0.0/8 but not in
/// 127.255.255.0/24, where lists put their errors (Spamhaus answers 127.255.255.254 to
/// queries through public resolvers). Anything else (a resolver that answers every name)
/// lists no one.
fn listing(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 127 && !(o[1] == 255 && o[2] == 255)
}

/// The last two labels of a host (a stand-in for its registered domain).
fn registered(host: &str) -> String {
    let labels: Vec<&str> = host.trim_end_matches('.').rsplit('.').take(2).collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".")
}

/// The policy DMARC applies after `pct` (RFC 7489 6.6.4: outside the sampled percentage the
/// next policy down applies).
fn applied_policy(policy: Policy, pct: u8) -> Policy {
    let sampled = pct >= 100 || rand_percent() < pct;
    match (policy, sampled) {
        (p, true) => p,
        (Policy::Reject, false) => Policy::Quarantine,
        (_, false) => Policy::None,
    }
}

/// A number from 0 to 99 (for `pct` sampling; no cryptographic quality needed).
fn rand_percent() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() % 100) as u8
}

/// The most author domains of one message checked by DMARC; more is its own symbol.
const MAX_AUTHOR_DOMAINS: usize = 4;

/// The addresses in a From: field's value (lower-cased), as a reader's mail program shows
/// them: comments dropped (`ceo@(x)example.com` is `ceo@example.com`), folding and
/// white space removed, the address in angle brackets where there is one, and group
/// names passed over.
pub fn author_addresses(value: &[u8]) -> Vec<String> {
    let value = String::from_utf8_lossy(value);
    // Comments out (nested, outside quoted strings); quoted strings kept whole.
    let mut plain = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for ch in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                plain.push(ch);
            }
            continue;
        }
        match ch {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    plain.push(ch);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                plain.push(ch);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => plain.push(ch),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for mailbox in split_outside_quotes(&plain, &[',', ';']) {
        // A group's name ends at its colon: `Team: a@x.example, b@y.example;`.
        let mailbox = match split_outside_quotes(mailbox, &[':']).as_slice() {
            [_, rest @ ..] if !rest.is_empty() && !mailbox.contains('<') => rest.join(":"),
            _ => mailbox.to_string(),
        };
        let address = match (mailbox.rfind('<'), mailbox.rfind('>')) {
            (Some(open), Some(close)) if open < close => &mailbox[open + 1..close],
            _ => mailbox.as_str(),
        };
        // A source route (`<@relay:user@example.com>`) is not the author.
        let address = address.rsplit(':').next().unwrap_or("");
        let address: String = address
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        if let Some((local, domain)) = address.rsplit_once('@')
            && let domain = domain.trim_end_matches('.')
            && !local.is_empty()
            && !domain.is_empty()
        {
            out.push(format!("{local}@{domain}"));
        }
    }
    out
}

/// `text` split at any of `separators` outside quoted strings.
fn split_outside_quotes<'a>(text: &'a str, separators: &[char]) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped, mut angle) = (0, false, false, false);
    for (i, ch) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if !quoted && !angle && separators.contains(&c) => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn symbol(name: &str, score: f64, reason: String, t: Instant) -> Symbol {
    Symbol {
        name: name.to_string(),
        score,
        reason,
        micros: t.elapsed().as_micros() as u64,
    }
}

/// A check that could not get its answer: no score, and the report degraded (the engine
/// marks every `*_TEMPERROR` symbol failed).
fn temperror(name: &str, e: &Error, t: Instant) -> Symbol {
    symbol(
        name,
        0.0,
        format!("no answer from the DNS: {}", dns_reason(e)),
        t,
    )
}

fn dns_reason(e: &Error) -> String {
    if timed_out(e) {
        "timed out".into()
    } else {
        e.to_string()
    }
}

/// Whether a DNS error says no reply came (rather than an answer that was an error).
fn timed_out(e: &Error) -> bool {
    let text = e.to_string();
    text.to_ascii_lowercase().contains("timed out") || text.contains("timeout")
}

fn why(r: &DkimResult) -> String {
    match r {
        DkimResult::Fail(e)
        | DkimResult::PermError(e)
        | DkimResult::Neutral(e)
        | DkimResult::TempError(e) => e.to_string(),
        DkimResult::Pass => "pass".into(),
        DkimResult::None => "none".into(),
    }
}

fn why_iprev(r: &IprevResult) -> String {
    match r {
        IprevResult::Fail(e) | IprevResult::PermError(e) | IprevResult::TempError(e) => {
            e.to_string()
        }
        IprevResult::Pass => "pass".into(),
        IprevResult::None => "none".into(),
    }
}

fn spf_symbol(spf: &mail_auth::SpfOutput, t: Instant) -> Symbol {
    let domain = spf.domain();
    match spf.result() {
        SpfResult::Pass => symbol(
            "SPF_PASS",
            0.0,
            format!("{domain} permits the client by SPF"),
            t,
        ),
        SpfResult::Fail => symbol(
            "SPF_FAIL",
            2.0,
            format!("{domain}'s SPF forbids the client"),
            t,
        ),
        SpfResult::SoftFail => symbol(
            "SPF_SOFTFAIL",
            1.0,
            format!("{domain}'s SPF discourages the client (~all)"),
            t,
        ),
        SpfResult::Neutral => symbol(
            "SPF_NEUTRAL",
            0.0,
            format!("{domain}'s SPF says nothing of the client"),
            t,
        ),
        SpfResult::None => symbol("SPF_NONE", 0.0, format!("{domain} publishes no SPF"), t),
        SpfResult::PermError => symbol(
            "SPF_PERMERROR",
            0.5,
            format!("{domain}'s SPF record is broken"),
            t,
        ),
        SpfResult::TempError => symbol(
            "SPF_TEMPERROR",
            0.0,
            format!("no usable answer from the DNS for {domain}'s SPF (an error or none)"),
            t,
        ),
    }
}

fn dkim_symbols(dkim: &[mail_auth::DkimOutput<'_>], t: Instant) -> Vec<Symbol> {
    let mut out = Vec::new();
    for d in dkim {
        let who = d
            .signature()
            .map_or("?".to_string(), |s| format!("d={} s={}", s.d, s.s));
        match d.result() {
            DkimResult::Pass => out.push(symbol(
                "DKIM_VALID",
                -0.5,
                format!("the signature {who} verifies"),
                t,
            )),
            DkimResult::None => {}
            DkimResult::TempError(e) => out.push(temperror("DKIM_TEMPERROR", e, t)),
            other => out.push(symbol(
                "DKIM_INVALID",
                1.0,
                format!("the signature {who} does not verify: {}", why(other)),
                t,
            )),
        }
    }
    // One score per kind, however many signatures: the reasons say which.
    let mut seen = std::collections::HashSet::new();
    for s in &mut out {
        if !seen.insert(s.name.clone()) {
            s.score = 0.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authors_are_read_as_a_mail_program_shows_them() {
        for (value, want) in [
            ("Alice <alice@sender.test>", &["alice@sender.test"][..]),
            ("ceo@(x)sender.test", &["ceo@sender.test"]),
            ("ceo(a (nested) one)@sender.test", &["ceo@sender.test"]),
            (
                "friend@outside.net, ceo@sender.test",
                &["friend@outside.net", "ceo@sender.test"],
            ),
            (
                "\"ceo@sender.test\" <friend@outside.net>",
                &["friend@outside.net"],
            ),
            ("\"Doe, (Jane)\" <jane@y.test>", &["jane@y.test"]),
            ("Team: a@x.test, b@y.test;", &["a@x.test", "b@y.test"]),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.test:user@example.com>", &["user@example.com"]),
            (" CEO@Sender.Test. ", &["ceo@sender.test"]),
            ("Alice\r\n <alice@sender.test>", &["alice@sender.test"]),
            ("=?utf-8?q?Al=C3=AFce?= <a@b.test>", &["a@b.test"]),
            ("no address here", &[]),
            ("x@.", &[]),
        ] {
            assert_eq!(author_addresses(value.as_bytes()), want, "{value}");
        }
    }

    #[test]
    fn pct_steps_the_policy_down() {
        assert_eq!(applied_policy(Policy::Reject, 100), Policy::Reject);
        assert_eq!(applied_policy(Policy::Reject, 0), Policy::Quarantine);
        assert_eq!(applied_policy(Policy::Quarantine, 0), Policy::None);
        let sampled = (0..1000)
            .filter(|_| applied_policy(Policy::Reject, 50) == Policy::Reject)
            .count();
        assert!((300..700).contains(&sampled), "{sampled} of 1000 at pct=50");
    }

    #[test]
    fn only_loopback_answers_outside_the_error_range_list() {
        for (a, listed) in [
            ("127.0.0.2", true),
            ("127.0.1.4", true),
            ("127.255.255.254", false),
            ("127.255.255.252", false),
            ("192.0.2.1", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(listing(a.parse().unwrap()), listed, "{a}");
        }
    }

    #[test]
    fn registered_domains() {
        assert_eq!(registered("www.Example.com."), "Example.com");
        assert_eq!(registered("a.b.c.example.org"), "example.org");
        assert_eq!(registered("localhost"), "localhost");
    }
}
