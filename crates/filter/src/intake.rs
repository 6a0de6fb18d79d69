//! The intake: the handler the SMTP server hands each received message to. It checks
//! recipients against the client domains (never an open relay), scans the message with the
//! [`Engine`], decides per recipient domain, and then, before the server may answer:
//! queues the copies to deliver (tagged with the scan's headers), holds the copies to
//! quarantine, or refuses the message with a 5xx naming the reason (no backscatter: the
//! refusal goes to the connected client, never a bounce to a forged sender).
//!
//! Recipients whose domains' policies differ get one copy per action. SMTP has one reply
//! for the whole message after DATA, so when some recipients' policy says reject and
//! others' does not, the rejecting recipients' copy is quarantined instead: nothing is
//! lost and nothing bounces.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use config::{DomainTable, FilterPolicy};
use queue::Queue;
use smtp::command::Ret;
use smtp::{Accepted, Handler, Reply};
use store::{Arrival, Held, NewMessage, NewRecipient};
use tracing::{info, warn};

use crate::attachments::{self, Strip};
use crate::engine::{Action, Decision, Engine, Envelope, Report, decide};

/// What recipients must share to share a copy: action, verdict, subject prefix, and the
/// attachments removed.
type Group = (Action, &'static str, Option<String>, Vec<Strip>);
use crate::limits::RateLimiter;

/// The SMTP server's handler: relay policy, scanning, and the hand-off.
pub struct Intake {
    greylisting: config::Greylisting,
    /// Refuse at MAIL FROM when the sender's SPF forbids the client.
    spf_reject: bool,
    queue: Arc<Queue>,
    domains: Arc<DomainTable>,
    engine: Arc<Engine>,
    /// Scan at all (`filter.enabled`).
    enabled: bool,
    per_client: RateLimiter,
    per_sender_domain: RateLimiter,
}

impl Intake {
    /// The intake; `rates` are the messages a minute one client address and one sender
    /// domain may send (0: no limit).
    pub fn new(
        queue: Arc<Queue>,
        domains: Arc<DomainTable>,
        engine: Arc<Engine>,
        enabled: bool,
        rates: (u32, u32),
        greylisting: config::Greylisting,
        spf_reject: bool,
    ) -> Intake {
        Intake {
            greylisting,
            spf_reject,
            queue,
            domains,
            engine,
            enabled,
            per_client: RateLimiter::new(rates.0),
            per_sender_domain: RateLimiter::new(rates.1),
        }
    }

    async fn scan(&self, m: &Accepted, body: &Bytes) -> Report {
        let client_domains: Vec<String> =
            self.domains.all().iter().map(|d| d.name.clone()).collect();
        let sender = m.envelope.sender.to_lowercase();
        let env = Envelope {
            client: Some(m.client.peer.ip().to_canonical()),
            helo: &m.client.helo,
            sender: &sender,
        };
        self.engine.check(body, &env, &client_domains).await
    }
}

impl Intake {
    /// Greylisting's answer for a triplet: `None` to let it through, or the seconds left
    /// before a retry will be.
    async fn greylist(
        &self,
        ip: std::net::IpAddr,
        sender: &str,
        recipient: &str,
    ) -> Result<Option<u64>, store::Error> {
        let g = self.greylisting;
        let store = self.queue.store();
        let now = self.queue.now();
        let network = client_network(ip);
        if store.grey_allowed(&network, now).await? {
            return Ok(None);
        }
        let triplet = format!(
            "{network}|{}|{}",
            sender.to_lowercase(),
            recipient.to_lowercase()
        );
        let window_start = now - g.window.as_secs() as i64;
        let first = store.grey_first_seen(&triplet, now, window_start).await?;
        let waited = (now - first).max(0) as u64;
        if waited < g.delay.as_secs() {
            return Ok(Some(g.delay.as_secs() - waited));
        }
        // The retry came: the client's network is let through from now on.
        store
            .grey_allow(&network, now + g.pass.as_secs() as i64)
            .await?;
        Ok(None)
    }
}

/// The network greylisting keys a client by (a /24 or a /64: large senders retry from
/// another address of the same pool).
fn client_network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}", s[0], s[1], s[2], s[3])
        }
    }
}

impl Intake {
    /// A recipient's domain's early refusals: a client that a DNS list lists, a sender
    /// whose SPF forbids the client, when the policy refuses them (550 for this recipient
    /// alone). A network on the recipient's allow list exempts its clients; a sender
    /// entry does not, since a sender proves itself only in the message (DKIM, DMARC).
    async fn refuse_early(
        &self,
        policy: &FilterPolicy,
        client: &smtp::ClientInfo,
        sender: &str,
    ) -> Result<(), Reply> {
        if !policy.reject_listed && !policy.reject_spf_fail {
            return Ok(());
        }
        let ip = client.peer.ip().to_canonical();
        let exempt = policy
            .allow
            .iter()
            .any(|s| matches!(s, config::Sender::Network(..)) && s.matches("", ip));
        if exempt {
            return Ok(());
        }
        if policy.reject_listed
            && let Some(zone) = self.engine.listed(ip).await
        {
            return Err(Reply::new(
                550,
                format!("5.7.1 Client [{ip}] listed by {zone}; refused by the recipient's domain"),
            ));
        }
        if policy.reject_spf_fail
            && let Some(domain) = self.engine.spf_fails(ip, &client.helo, sender).await
        {
            return Err(spf_refusal(&domain, ip));
        }
        Ok(())
    }
}

/// The reply to a sender whose domain's SPF forbids the client.
fn spf_refusal(domain: &str, ip: std::net::IpAddr) -> Reply {
    Reply::new(
        550,
        format!("5.7.23 SPF of {domain} does not permit [{ip}] to send its mail"),
    )
}

/// The policy for a recipient address: its domain's, with the recipient's own lists.
fn policy_of(domains: &DomainTable, address: &str) -> Option<FilterPolicy> {
    let (local, domain) = address.rsplit_once('@')?;
    let local = local.trim_matches('"');
    domains
        .get(&domain.to_ascii_lowercase())
        .map(|d| d.filter.for_recipient(local))
}

#[async_trait]
impl Handler for Intake {
    fn queue_id(&self) -> String {
        self.queue.next_id()
    }

    async fn mail(&self, client: &smtp::ClientInfo, sender: &str) -> Result<(), Reply> {
        if !self.enabled {
            return Ok(());
        }
        let ip = client.peer.ip().to_canonical();
        // An IPv6 client is keyed by its /64: rotating addresses within it is one client.
        let key = match ip {
            std::net::IpAddr::V4(_) => ip.to_string(),
            std::net::IpAddr::V6(_) => client_network(ip),
        };
        if !self.per_client.allow(&key) {
            return Err(Reply::new(
                451,
                format!("4.7.1 Rate limit exceeded for client [{ip}], try again later"),
            ));
        }
        let domain = sender
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_lowercase();
        if !domain.is_empty() && !self.per_sender_domain.allow(&domain) {
            return Err(Reply::new(
                451,
                format!("4.7.1 Rate limit exceeded for sender domain {domain}, try again later"),
            ));
        }
        if self.spf_reject
            && let Some(domain) = self.engine.spf_fails(ip, &client.helo, sender).await
        {
            return Err(spf_refusal(&domain, ip));
        }
        if let Some(zone) = self.engine.blocked(ip).await {
            return Err(Reply::new(
                554,
                format!("5.7.1 Service unavailable; client [{ip}] blocked using {zone}"),
            ));
        }
        Ok(())
    }

    async fn rcpt(
        &self,
        client: &smtp::ClientInfo,
        sender: &str,
        recipient: &str,
    ) -> Result<(), Reply> {
        let Some(policy) = policy_of(&self.domains, recipient).filter(|_| self.enabled) else {
            return Ok(());
        };
        self.refuse_early(&policy, client, sender).await?;
        if !policy.greylist {
            return Ok(());
        }
        match self
            .greylist(client.peer.ip().to_canonical(), sender, recipient)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(Reply::new(
                451,
                format!("4.7.1 Greylisted, please try again in {wait} seconds"),
            )),
            Err(e) => {
                // The store cannot say: let the mail through rather than refuse it.
                warn!(error = %e, "greylisting skipped");
                Ok(())
            }
        }
    }

    fn check_recipient(&self, r: &smtp::address::Recipient) -> Result<(), Reply> {
        let Some(domain) = self.domains.get(&r.domain) else {
            return Err(Reply::new(550, "5.7.1 Relay access denied"));
        };
        if let Some(valid) = &domain.recipients
            && !valid.contains(&r.local.to_lowercase())
        {
            return Err(Reply::new(
                550,
                "5.1.1 Recipient address rejected: user unknown",
            ));
        }
        Ok(())
    }

    async fn accept(&self, mut m: Accepted) -> Result<&'static str, Reply> {
        let now = self.queue.now();
        // The body leaves `m` so that the last copy can own its buffer.
        let original = std::mem::take(&mut m.body);
        if !self.enabled {
            let id = m.id.clone();
            self.submit(self.message(&m, id, &m.envelope.recipients, original, now, None))
                .await?;
            return Ok("queued");
        }
        let report = self.scan(&m, &original).await;
        let sender = m.envelope.sender.to_lowercase();
        let env = Envelope {
            client: Some(m.client.peer.ip().to_canonical()),
            helo: &m.client.helo,
            sender: &sender,
        };
        // Recipients by decision (action, verdict, subject prefix, attachments removed):
        // one copy each.
        let mut groups: BTreeMap<Group, (Decision, Vec<smtp::Rcpt>)> = BTreeMap::new();
        for r in &m.envelope.recipients {
            let policy = policy_of(&self.domains, &r.address).unwrap_or_default();
            let d = decide(&report, &policy, &env);
            groups
                .entry((
                    d.action,
                    d.verdict.as_str(),
                    d.prefix.clone(),
                    d.strip.clone(),
                ))
                .or_insert_with(|| (d, Vec::new()))
                .1
                .push(r.clone());
        }
        self.count(&m, now, &groups);
        let line = |d: &Decision| scan_line(&report, d);
        // One reply covers every recipient: when clamd could not scan and some domain
        // wants to wait for it, the whole message waits (the sender retries it whole).
        let refusal = if let Some((d, _)) = groups.values().find(|(d, _)| d.action == Action::Defer)
        {
            info!(queue_id = %m.id, symbols = %report.symbols_line(), "deferred: the antivirus cannot scan");
            Some((
                d,
                Action::Defer,
                Reply::new(
                    451,
                    "4.7.1 The message cannot be scanned for viruses now, try again later",
                ),
            ))
        } else if groups.keys().all(|k| k.0 == Action::Reject)
            && let Some((d, _)) = groups.values().next()
        {
            info!(queue_id = %m.id, score = report.score, symbols = %report.symbols_line(), reason = %d.reason, "rejected");
            Some((
                d,
                Action::Reject,
                Reply::new(550, format!("5.7.1 Message refused as {}", d.reason)),
            ))
        } else {
            None
        };
        if let Some((d, action, reply)) = refusal {
            self.engine
                .metrics()
                .outcome(d.verdict.as_str(), action.as_str());
            let traced = self.message(
                &m,
                m.id.clone(),
                &m.envelope.recipients,
                original,
                now,
                Some((line(d), d.verdict.as_str(), &report)),
            );
            self.trace_refused(traced, &reply).await;
            return Err(reply);
        }
        // Mixed policies: the refusing recipients' copies are held instead, and say so.
        let refused: Vec<_> = groups
            .keys()
            .filter(|k| k.0 == Action::Reject)
            .cloned()
            .collect();
        for key in refused {
            if let Some((mut d, rcpts)) = groups.remove(&key) {
                d.action = Action::Quarantine;
                d.reason = format!("{} (held: other recipients accept the message)", d.reason);
                groups
                    .entry((Action::Quarantine, key.1, key.2, key.3))
                    .or_insert((d, Vec::new()))
                    .1
                    .extend(rcpts);
            }
        }
        let mut first = true;
        let last = groups.len() - 1;
        let mut original = Some(original);
        // Held copies first: if holding one fails, the sender gets 451 before any copy was
        // queued (and so before any could be delivered twice when it retries).
        let mut ordered: Vec<_> = groups.iter().collect();
        ordered.sort_by_key(|(k, _)| k.0 != Action::Quarantine);
        for (i, ((action, _, _, _), (d, rcpts))) in ordered.into_iter().enumerate() {
            self.engine
                .metrics()
                .outcome(d.verdict.as_str(), action.as_str());
            // The last copy takes the message's buffer, to edit it in place.
            let own = if i == last {
                original.take().unwrap_or_default()
            } else {
                original.clone().unwrap_or_default()
            };
            let own = if d.strip.is_empty() {
                own
            } else {
                info!(queue_id = %m.id, removed = d.strip.len(), "attachments stripped");
                Bytes::from(attachments::strip(&own, &d.strip))
            };
            let id = if std::mem::take(&mut first) {
                m.id.clone()
            } else {
                self.queue.next_id()
            };
            match action {
                Action::Quarantine => {
                    // Held with the scan's headers (and without forged ones): a release
                    // delivers it as it is, not scanned again.
                    let body = with_scan_headers(own, &report, d, false, self.engine.authserv_id());
                    let message = self.message(
                        &m,
                        id,
                        rcpts,
                        body,
                        now,
                        Some((line(d), d.verdict.as_str(), &report)),
                    );
                    info!(queue_id = %message.id, score = report.score, reason = %d.reason, "quarantined");
                    self.queue
                        .store()
                        .quarantine(Held {
                            message,
                            verdict: d.verdict.as_str().into(),
                            score: report.score,
                            reason: d.reason.clone(),
                        })
                        .await
                        .map_err(|e| {
                            warn!(error = %e, "quarantine failed");
                            Reply::new(451, "4.3.0 Temporary storage failure, try again later")
                        })?;
                }
                _ => {
                    let body = with_scan_headers(
                        own,
                        &report,
                        d,
                        *action == Action::Tag,
                        self.engine.authserv_id(),
                    );
                    self.submit(self.message(
                        &m,
                        id,
                        rcpts,
                        body,
                        now,
                        Some((line(d), d.verdict.as_str(), &report)),
                    ))
                    .await?;
                }
            }
        }
        Ok(
            match (
                groups.keys().any(|k| k.0 == Action::Quarantine),
                groups.len(),
            ) {
                (false, _) => "queued",
                (true, 1) => "quarantined",
                (true, _) => "queued, and quarantined for some recipients",
            },
        )
    }
}

impl Intake {
    /// Counts the message for the statistics (the queue's tally), per recipient domain, with the action each
    /// group gets in the end: the whole message waits when one group does, and a refusal
    /// is a refusal only when every group refuses (else those recipients' copy is held).
    fn count(&self, m: &Accepted, now: i64, groups: &BTreeMap<Group, (Decision, Vec<smtp::Rcpt>)>) {
        let deferred = groups.keys().any(|k| k.0 == Action::Defer);
        let refused = groups.keys().all(|k| k.0 == Action::Reject);
        let (address, sender) = match m.envelope.sender.rsplit_once('@') {
            Some((_, d)) => (m.envelope.sender.to_lowercase(), d.to_lowercase()),
            None => ("<>".to_string(), "<>".to_string()),
        };
        for (d, rcpts) in groups.values() {
            let action = match d.action {
                _ if deferred => Action::Defer,
                Action::Reject if !refused => Action::Quarantine,
                a => a,
            };
            let mut domains: Vec<String> =
                rcpts.iter().map(|r| store::domain_lc(&r.address)).collect();
            domains.sort();
            domains.dedup();
            for domain in &domains {
                let add = |metric, label: &str| self.queue.tally().add(now, domain, metric, label);
                add("verdict", d.verdict.as_str());
                add("action", action.as_str());
                add("sender", &sender);
                add("sender_address", &address);
                add("server", &m.server);
                if matches!(d.verdict.as_str(), "virus" | "policy") {
                    add(d.verdict.as_str(), &d.reason);
                }
            }
        }
    }

    /// The message one group of recipients gets, as the store takes it.
    fn message(
        &self,
        m: &Accepted,
        id: String,
        rcpts: &[smtp::Rcpt],
        body: bytes::Bytes,
        now: i64,
        scan: Option<(String, &str, &Report)>,
    ) -> NewMessage {
        NewMessage {
            id,
            sender: m.envelope.sender.clone(),
            recipients: rcpts
                .iter()
                .map(|r| NewRecipient {
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
            envid: m.envelope.envid.clone(),
            ret: m.envelope.ret.map(|r| match r {
                Ret::Full => store::Ret::Full,
                Ret::Headers => store::Ret::Headers,
            }),
            received_at: now,
            next_attempt: now,
            body,
            arrival: Arrival {
                client: m.client.peer.ip().to_string(),
                helo: m.client.helo.clone(),
                tls: m.client.tls.clone(),
                server: m.server.clone(),
                node: self.queue.node().to_string(),
            },
            verdict: scan.as_ref().map(|(_, v, _)| v.to_string()),
            symbols: scan.as_ref().map_or_else(Vec::new, |(_, _, r)| {
                r.symbols
                    .iter()
                    .map(|s| store::ScanSymbol {
                        name: s.name.clone(),
                        score: s.score,
                        reason: s.reason.clone(),
                        micros: s.micros,
                    })
                    .collect()
            }),
            scan: scan.map(|(line, _, _)| line),
        }
    }

    /// Keeps the trace of a message refused with `reply` (its queue id never reaches the
    /// queue); a failure to keep it is logged and changes nothing for the sender.
    async fn trace_refused(&self, message: NewMessage, reply: &Reply) {
        let text = format!("{} {}", reply.code, reply.lines.join(" "));
        if let Err(e) = self.queue.store().trace_refused(message, text).await {
            warn!(error = %e, "the refused message's trace was not kept");
        }
    }

    async fn submit(&self, message: NewMessage) -> Result<(), Reply> {
        self.queue.submit(message).await.map_err(|e| {
            warn!(error = %e, "enqueue failed");
            Reply::new(451, "4.3.0 Temporary storage failure, try again later")
        })
    }
}

/// The one line the trace keeps of a scan.
pub fn scan_line(r: &Report, d: &Decision) -> String {
    format!(
        "score {:.2} ({}, {}){}{} in {} us",
        r.score,
        d.verdict.as_str(),
        d.action.as_str(),
        if r.symbols.is_empty() { "" } else { " " },
        r.symbols_line(),
        r.micros
    ) + if r.degraded() { " [degraded]" } else { "" }
        + &d.strip
            .iter()
            .map(|s| format!("; stripped: {}", s.note))
            .collect::<String>()
}

/// Whether an Authentication-Results field (`field`: its name, colon and value, folded
/// lines included) names `id` as its authserv-id (RFC 8601 section 5: such fields from
/// outside are forgeries, removed). The value is unfolded, comments (nested too) are
/// skipped and a quoted authserv-id unquoted before it is compared.
fn claims(field: &[u8], id: &str) -> bool {
    let value = field.splitn(2, |&b| b == b':').nth(1).unwrap_or(b"");
    let mut text = String::new();
    let mut depth = 0usize;
    let mut escaped = false;
    for &b in value {
        let c = b as char;
        match (depth, c) {
            _ if escaped => escaped = false,
            (d, '\\') if d > 0 => escaped = true,
            (_, '(') => depth += 1,
            (d, ')') if d > 0 => depth -= 1,
            (0, '\r' | '\n' | '\t') => text.push(' '),
            (0, c) => text.push(c),
            _ => {}
        }
    }
    let found = text
        .trim_start()
        .split(|c: char| c == ';' || c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_matches('"');
    found.eq_ignore_ascii_case(id)
}

/// A header field's name, without the whitespace obsolete syntax allows before the colon.
fn field_name(field: &[u8]) -> &[u8] {
    field
        .split(|&b| b == b':')
        .next()
        .unwrap_or(b"")
        .trim_ascii_end()
}

/// Whether a header field is one this server adds: a scan header, or an
/// Authentication-Results claiming this server's authserv-id.
fn ours(field: &[u8], authserv_id: Option<&str>) -> bool {
    let name = field_name(field);
    OWN_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        || (name.eq_ignore_ascii_case(b"authentication-results")
            && authserv_id.is_some_and(|id| claims(field, id)))
}

/// The header fields of a header section, each with its folded lines and line ends.
fn fields(section: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = section;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        loop {
            end += rest[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len() - end, |i| i + 1);
            if end >= rest.len() || !matches!(rest[end], b' ' | b'\t') {
                break;
            }
        }
        let (field, tail) = rest.split_at(end);
        rest = tail;
        Some(field)
    })
}

/// A held message as it came, for learning: without the header fields the scan added
/// (the verdict's fields, and Authentication-Results naming `authserv_id`), which would
/// teach the classifier the filter's own answer.
pub fn without_scan_headers(raw: &[u8], authserv_id: Option<&str>) -> Vec<u8> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 2);
    let mut out = Vec::with_capacity(raw.len());
    for field in fields(&raw[..end]) {
        if !ours(field, authserv_id) {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(&raw[end..]);
    out
}

/// Header fields a sender could forge to look scanned; removed from incoming mail.
const OWN_HEADERS: &[&str] = &[
    "x-spam-status",
    "x-spam-score",
    "x-spam-flag",
    "x-mailsilo-degraded",
];

/// The message with the scan's header fields first, any copies of them the sender wrote
/// removed, and with `tag`, the policy's subject prefix applied. Edited in place when
/// `body` is the only reference to its buffer and the buffer has room (the SMTP server
/// leaves [`smtp::server::HANDLER_HEADROOM`]), so a large message is not copied.
pub fn with_scan_headers(
    body: Bytes,
    r: &Report,
    d: &Decision,
    tag: bool,
    authserv_id: Option<&str>,
) -> Bytes {
    let header_end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |i| i + 2);
    let header = scan_header(&body[..header_end], r, d, tag, authserv_id);
    match body.try_into_mut() {
        Ok(mut buf) => {
            let len = buf.len();
            let new_len = header.len() + (len - header_end);
            if header.len() > header_end {
                buf.resize(new_len, 0);
                buf.copy_within(header_end..len, header.len());
            } else {
                buf.copy_within(header_end..len, header.len());
                buf.truncate(new_len);
            }
            buf[..header.len()].copy_from_slice(&header);
            buf.freeze()
        }
        Err(body) => {
            let mut out = header;
            out.extend_from_slice(&body[header_end..]);
            out.into()
        }
    }
}

/// The new header section: the scan's fields, then the message's own (without forged
/// scan fields; the subject prefixed when tagging).
fn scan_header(
    section: &[u8],
    r: &Report,
    d: &Decision,
    tag: bool,
    authserv_id: Option<&str>,
) -> Vec<u8> {
    let spam = d.verdict != crate::Verdict::Clean;
    let mut out = Vec::with_capacity(section.len() + 1024);
    if let Some(ar) = &r.auth_results {
        out.extend_from_slice(b"Authentication-Results: ");
        out.extend_from_slice(ar.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let tests: Vec<String> = r
        .symbols
        .iter()
        .map(|s| format!("{}({:.2})", s.name, s.score))
        .collect();
    out.extend_from_slice(
        format!(
            "X-Spam-Status: {}, score={:.2} action={}\r\n\ttests={}\r\n",
            if spam { "Yes" } else { "No" },
            r.score,
            d.action.as_str(),
            tests.join(",\r\n\t")
        )
        .as_bytes(),
    );
    out.extend_from_slice(format!("X-Spam-Score: {:.2}\r\n", r.score).as_bytes());
    if spam {
        out.extend_from_slice(b"X-Spam-Flag: YES\r\n");
    }
    if r.degraded() {
        out.extend_from_slice(
            format!("X-Mailsilo-Degraded: {}\r\n", r.failed.join(", ")).as_bytes(),
        );
    }
    let prefix = tag.then_some(d.prefix.as_deref()).flatten();
    let mut subject_done = prefix.is_none();
    for field in fields(section) {
        if ours(field, authserv_id) {
            continue;
        }
        let name = field_name(field);
        if !subject_done && name.eq_ignore_ascii_case(b"subject") {
            let colon = field
                .iter()
                .position(|&b| b == b':')
                .map_or(field.len(), |i| i + 1);
            let value = &field[colon..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            out.extend_from_slice(b"Subject: ");
            out.extend_from_slice(prefix.unwrap_or_default().as_bytes());
            out.push(b' ');
            out.extend_from_slice(value);
            subject_done = true;
            continue;
        }
        out.extend_from_slice(field);
    }
    if !subject_done {
        out.extend_from_slice(format!("Subject: {}\r\n", prefix.unwrap_or_default()).as_bytes());
    }
    out
}

/// Every hour until shutdown: forgets the greylisting triplets whose window passed and the
/// passes that ended, and deletes quarantined mail past `quarantine_retention`.
pub async fn expire(
    queue: Arc<Queue>,
    g: config::Greylisting,
    quarantine_retention: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = queue.now();
        let store = queue.store();
        if let Err(e) = store
            .expire_greylist(now - g.window.as_secs() as i64, now)
            .await
        {
            warn!(error = %e, "greylist expiry failed");
        }
        match store
            .expire_held(now - quarantine_retention.as_secs() as i64, queue.node())
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(messages = n, "quarantined mail past its retention deleted"),
            Err(e) => warn!(error = %e, "quarantine expiry failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod scan_header_tests {
    use super::*;

    #[test]
    fn learning_sees_the_message_without_the_scans_fields() {
        let held = b"Authentication-Results: mx.test;\r\n spf=pass\r\nX-Spam-Status: Yes, score=9\r\n\ttests=A\r\nX-Spam-Score: 9\r\nX-Spam-Flag: YES\r\nAuthentication-Results: other.example; dkim=pass\r\nSubject: hi\r\n\r\nX-Spam-Flag: body\r\n";
        let out = without_scan_headers(held, Some("mx.test"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Authentication-Results: other.example; dkim=pass\r\nSubject: hi\r\n\r\nX-Spam-Flag: body\r\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;

    fn report() -> Report {
        let mut r = Report::default();
        r.symbols.push(crate::Symbol {
            name: "X".into(),
            score: 7.5,
            reason: "x".into(),
            micros: 1,
        });
        r.score = 7.5;
        r
    }

    #[test]
    fn scan_headers_replace_forged_ones_and_tag_the_subject() {
        let body = Bytes::from_static(
            b"Received: from x\r\nX-Spam-Status: No, score=-100\r\n\tforged=yes\r\nSubject: Hello\r\nx-spam-flag: NO\r\nAuthentication-Results: MX.test;\r\n\tdkim=pass forged\r\nAuthentication-Results: (c) mx.test; spf=pass forged\r\nAuthentication-Results: other.example; spf=pass kept\r\n\r\nbody\r\nX-Spam-Status: stays in the body\r\n",
        );
        let d = Decision {
            verdict: Verdict::Spam,
            action: Action::Tag,
            reason: "spam".into(),
            prefix: Some("[SPAM]".into()),
            strip: Vec::new(),
        };
        let out = with_scan_headers(body, &report(), &d, true, Some("mx.test"));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("X-Spam-Status: Yes, score=7.50 action=tag\r\n\ttests=X(7.50)\r\nX-Spam-Score: 7.50\r\nX-Spam-Flag: YES\r\nReceived: from x\r\nSubject: [SPAM] Hello\r\nAuthentication-Results: other.example; spf=pass kept\r\n\r\n"), "{text}");
        assert!(!text.contains("forged") && !text.contains("score=-100") && !text.contains("NO"));
        assert!(text.contains("Authentication-Results: other.example; spf=pass kept\r\n"));
        assert!(text.ends_with("body\r\nX-Spam-Status: stays in the body\r\n"));
    }

    #[test]
    fn forged_authentication_results_are_removed_however_written() {
        let forged = [
            "Authentication-Results:\r\n mx.test; dkim=pass\r\n",
            "Authentication-Results: (a (nested) comment) mx.test; spf=pass\r\n",
            "Authentication-Results: \"mx.test\"; dmarc=pass\r\n",
            "Authentication-Results : MX.TEST; dkim=pass\r\n",
            "X-Spam-Status : No\r\n",
        ];
        for f in forged {
            let body = Bytes::from(format!("Received: x\r\n{f}Subject: s\r\n\r\nbody\r\n"));
            let d = Decision {
                verdict: Verdict::Clean,
                action: Action::Deliver,
                reason: "clean".into(),
                prefix: None,
                strip: Vec::new(),
            };
            let out = with_scan_headers(body, &report(), &d, false, Some("mx.test"));
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert!(
                !text.contains("=pass") && !text.contains("Status : No"),
                "{f:?} survived:\n{text}"
            );
            assert!(
                text.ends_with("Received: x\r\nSubject: s\r\n\r\nbody\r\n"),
                "{text}"
            );
        }
        assert!(!claims(
            b"Authentication-Results: mx.test.evil; spf=pass",
            "mx.test"
        ));
        assert!(claims(b"Authentication-Results: mx.test", "mx.test"));
    }

    #[test]
    fn a_sole_owner_with_room_is_edited_in_place() {
        let mut v = b"Subject: a\r\n\r\n".to_vec();
        v.extend(std::iter::repeat_n(b'x', 1 << 20));
        v.reserve(smtp::server::HANDLER_HEADROOM);
        let body = Bytes::from(v);
        let before = body.as_ptr();
        let d = Decision {
            verdict: Verdict::Clean,
            action: Action::Deliver,
            reason: "clean".into(),
            prefix: None,
            strip: Vec::new(),
        };
        let out = with_scan_headers(body, &report(), &d, false, None);
        assert_eq!(out.as_ptr(), before, "the buffer was copied");
        assert!(out.starts_with(b"X-Spam-Status: No, score=7.50 action=deliver"));
        assert!(out.ends_with(b"xxxx"));
        // Shared: copied, the original untouched.
        let shared = Bytes::from_static(b"Subject: a\r\n\r\nbody");
        let keep = shared.clone();
        let out = with_scan_headers(shared, &report(), &d, false, None);
        assert!(out.ends_with(b"Subject: a\r\n\r\nbody"));
        assert_eq!(&keep[..], b"Subject: a\r\n\r\nbody");
    }
}
