//! The SMTP servers' counters for `/metrics`: sessions (open now and in all), connections
//! refused before a session and why, every reply by code, messages taken or refused at
//! the end of their content with their size, sessions under TLS, and a histogram of the
//! time from a message's last octet to its reply (the durable hand-off and the scan).
//! Every server of a process shares one [`Metrics`]; samples are told apart by the
//! server's host name.

use metrics::{Histogram, Labelled};

/// Upper bounds of the end-of-DATA histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Why a connection got no session.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// A PROXY listener's peer that is not a configured balancer.
    NotABalancer,
    /// Every session slot taken (421).
    TooManySessions,
    /// The client's share of slots taken (421).
    TooManyFromClient,
    /// A PROXY header missing, malformed or late.
    BadProxyHeader,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NotABalancer => "not_a_balancer",
            Refusal::TooManySessions => "too_many_sessions",
            Refusal::TooManyFromClient => "too_many_from_client",
            Refusal::BadProxyHeader => "bad_proxy_header",
        }
    }
}

/// The counters of every SMTP server in a process.
pub struct Metrics {
    sessions: Labelled<1>,
    active: Labelled<1>,
    refused: Labelled<2>,
    replies: Labelled<2>,
    messages: Labelled<2>,
    bytes: Labelled<1>,
    tls: Labelled<1>,
    data_reply: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            sessions: Labelled::counter(
                "mailsilo_smtp_sessions_total",
                "SMTP sessions begun",
                ["server"],
            ),
            active: Labelled::gauge(
                "mailsilo_smtp_sessions_active",
                "SMTP sessions open now",
                ["server"],
            ),
            refused: Labelled::counter(
                "mailsilo_smtp_connections_refused_total",
                "Connections given no session, by reason",
                ["server", "reason"],
            ),
            replies: Labelled::counter(
                "mailsilo_smtp_replies_total",
                "Replies sent, by code",
                ["server", "code"],
            ),
            messages: Labelled::counter(
                "mailsilo_smtp_messages_total",
                "Messages at the end of their content, taken (250) or refused (4xx, 5xx)",
                ["server", "result"],
            ),
            bytes: Labelled::counter(
                "mailsilo_smtp_message_bytes_total",
                "Octets of the messages taken",
                ["server"],
            ),
            tls: Labelled::counter(
                "mailsilo_smtp_tls_sessions_total",
                "Sessions that completed STARTTLS",
                ["server"],
            ),
            data_reply: Histogram::new(
                "mailsilo_smtp_data_reply_seconds",
                "Time from a message's last octet to its reply (scan and durable hand-off)",
                &BUCKETS,
            ),
        }
    }
}

impl Metrics {
    pub(crate) fn session(&self, server: &str, open: bool) {
        if open {
            self.sessions.inc([server]);
        }
        self.active.add([server], if open { 1 } else { -1 });
    }

    pub(crate) fn refused(&self, server: &str, why: Refusal) {
        self.refused.inc([server, why.label()]);
    }

    pub(crate) fn reply(&self, server: &str, code: u16) {
        self.replies.inc([server, &code.to_string()]);
    }

    pub(crate) fn message(&self, server: &str, taken: Option<usize>, seconds: f64) {
        self.messages
            .inc([server, if taken.is_some() { "taken" } else { "refused" }]);
        if let Some(size) = taken {
            self.bytes.add([server], size as i64);
        }
        self.data_reply.observe(seconds);
    }

    pub(crate) fn tls(&self, server: &str) {
        self.tls.inc([server]);
    }

    /// The counters in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in [&self.sessions, &self.active, &self.tls, &self.bytes] {
            family.render(&mut out);
        }
        for family in [&self.refused, &self.replies, &self.messages] {
            family.render(&mut out);
        }
        self.data_reply.render(&mut out);
        out
    }
}
