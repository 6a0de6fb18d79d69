//! `mailsilo queue`, `mailsilo quarantine` and `mailsilo trace`: the queue, the quarantine
//! and the message trace of a running gateway (a whole fleet, when it shares PostgreSQL),
//! through its control API.

use anyhow::{Result, bail};
use clap::builder::NonEmptyStringValueParser;
use portal::quarantine::{HeldMessage, Released};
use portal::queue::{Bounced, Flushed, MAX_PAGE, QueuedMessage};
use store::{HeldSummary, Summary, Trace};

use crate::count;
use crate::remote::Client;

#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// One line per queued message with its pending recipients.
    List,
    /// Envelope, recipient states and headers of one message.
    Show {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Make every deferred recipient due now.
    Flush,
    /// Remove a message from the queue (its trace keeps the removal).
    Delete {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Return a message to its sender now: its waiting recipients fail and one DSN goes
    /// to the sender (unless it is the null sender or its NOTIFY says never).
    Bounce {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
}

#[derive(clap::Subcommand)]
pub enum QuarantineCommand {
    /// One line per quarantined message with its verdict and score.
    List,
    /// Envelope, verdict, reason and headers of one message.
    Show {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Deliver a message to its original recipients (queued again, not scanned again).
    Release {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Delete a message from the quarantine.
    Delete {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
}

#[derive(clap::Subcommand)]
pub enum DigestCommand {
    /// Queue the digests now, whatever the schedule: one per recipient of mail held since
    /// the organisation's last digest (for the first, the last period).
    Send {
        /// Only this organisation's (default: every organisation's).
        #[arg(long)]
        organisation: Option<String>,
    },
}

pub fn digest(api: &Client, command: DigestCommand) -> Result<()> {
    match command {
        DigestCommand::Send { organisation } => {
            let sent: portal::digest::Sent =
                api.post_json("/api/v1/digests", &portal::digest::SendNow { organisation })?;
            println!("{} queued", count(sent.digests, "digest"));
        }
    }
    Ok(())
}

/// Which traces `mailsilo trace` shows.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// One message's whole trace.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    id: Option<String>,
    /// Messages from this sender.
    #[arg(long)]
    from: Option<String>,
    /// Messages to this recipient.
    #[arg(long)]
    to: Option<String>,
    /// Messages received within this long ("2h", "3d").
    #[arg(long)]
    since: Option<humantime::Duration>,
    /// Messages the filter judged so (clean, spam, phishing, virus, policy), refused ones
    /// included.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(store::VERDICTS))]
    verdict: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
}

fn date(t: i64) -> String {
    smtp::date::rfc5322(t)
}

fn sender(s: &str) -> &str {
    if s.is_empty() { "MAILER-DAEMON" } else { s }
}

pub fn queue(api: &Client, command: QueueCommand) -> Result<()> {
    let now = smtp::date::now();
    match command {
        QueueCommand::List => {
            let (mut messages, mut recipients) = (0, 0);
            let mut after = String::new();
            loop {
                let page: Vec<Summary> = api.get(&format!(
                    "/api/v1/queue?limit={MAX_PAGE}&after={}",
                    urlencode(&after)
                ))?;
                for m in &page {
                    println!(
                        "{:<28} {:>9} {}  {}",
                        m.id,
                        m.size,
                        date(m.received_at),
                        sender(&m.sender)
                    );
                    for (rcpt, err) in &m.pending {
                        if let Some(e) = err {
                            println!("{:<28} ({e})", "");
                        }
                        println!("{:<40} {rcpt}", "");
                    }
                    match &m.owner {
                        Some(node) => println!("{:<28} being delivered by {node}", ""),
                        None => println!(
                            "{:<28} next attempt in {}s",
                            "",
                            (m.next_attempt - now).max(0)
                        ),
                    }
                    recipients += m.pending.len();
                }
                messages += page.len();
                match page.last() {
                    Some(last) if page.len() == MAX_PAGE => after = last.id.clone(),
                    _ => break,
                }
            }
            println!(
                "-- {}, {} pending",
                count(messages, "message"),
                count(recipients, "recipient")
            );
        }
        QueueCommand::Show { id } => {
            let m: QueuedMessage = api.get(&format!("/api/v1/queue/{}", urlencode(&id)))?;
            println!(
                "id: {}\nsender: <{}>\nreceived: {}\nsize: {}",
                m.id,
                m.sender,
                date(m.received_at),
                m.size
            );
            if let Some(e) = &m.envid {
                println!("envid: {e}");
            }
            for r in &m.recipients {
                println!(
                    "recipient: <{}> {} attempts={} next={} {}",
                    r.address,
                    format!("{:?}", r.status).to_lowercase(),
                    r.attempts,
                    date(r.next_attempt),
                    r.last_error.as_deref().unwrap_or("")
                );
            }
            println!("\n{}", m.headers.trim_end());
        }
        QueueCommand::Flush => {
            let f: Flushed = api.post("/api/v1/queue/flush")?;
            println!("{} made due now", count(f.recipients, "recipient"));
        }
        QueueCommand::Delete { id } => {
            api.delete(&format!("/api/v1/queue/{}", urlencode(&id)))?;
            println!("deleted {id}");
        }
        QueueCommand::Bounce { id } => {
            let b: Bounced = api.post(&format!("/api/v1/queue/{}/bounce", urlencode(&id)))?;
            println!(
                "returned {id} to its sender ({})",
                count(b.recipients, "recipient")
            );
        }
    }
    Ok(())
}

pub fn quarantine(api: &Client, command: QuarantineCommand) -> Result<()> {
    match command {
        QuarantineCommand::List => {
            let mut total = 0;
            let mut after = String::new();
            loop {
                let page: Vec<HeldSummary> = api.get(&format!(
                    "/api/v1/quarantine?limit={MAX_PAGE}&after={}",
                    urlencode(&after)
                ))?;
                for m in &page {
                    println!(
                        "{:<28} {:>9} {}  {:<9} {:>7.2}  {} -> {}",
                        m.id,
                        m.size,
                        date(m.received_at),
                        m.verdict,
                        m.score,
                        sender(&m.sender),
                        m.recipients.join(", ")
                    );
                }
                total += page.len();
                match page.last() {
                    Some(last) if page.len() == MAX_PAGE => after = last.id.clone(),
                    _ => break,
                }
            }
            println!("-- {} in the quarantine", count(total, "message"));
        }
        QuarantineCommand::Show { id } => {
            let m: HeldMessage = api.get(&format!("/api/v1/quarantine/{}", urlencode(&id)))?;
            println!(
                "id: {}\nsender: <{}>\nrecipients: {}\nreceived: {} from {}\nsize: {}\nverdict: {} (score {:.2})\nreason: {}",
                m.id,
                m.sender,
                m.recipients.join(", "),
                date(m.received_at),
                m.client,
                m.size,
                m.verdict,
                m.score,
                m.reason
            );
            println!("\n{}", m.headers.trim_end());
        }
        QuarantineCommand::Release { id } => {
            let r: Released =
                api.post(&format!("/api/v1/quarantine/{}/release", urlencode(&id)))?;
            println!("released {id}: queued as {}", r.queued_as);
        }
        QuarantineCommand::Delete { id } => {
            api.delete(&format!("/api/v1/quarantine/{}", urlencode(&id)))?;
            println!("deleted {id} from the quarantine");
        }
    }
    Ok(())
}

pub fn trace(api: &Client, args: TraceArgs) -> Result<()> {
    if let Some(id) = &args.id {
        if args.from.is_some()
            || args.to.is_some()
            || args.since.is_some()
            || args.verdict.is_some()
        {
            bail!("give either a queue id or --from/--to/--since/--verdict, not both");
        }
        let t: Trace = api.get(&format!("/api/v1/trace/{}", urlencode(id)))?;
        println!(
            "{} from <{}> to {} ({} octets)",
            t.id,
            t.sender,
            t.recipients
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(", "),
            t.size
        );
        for e in &t.events {
            let when = date(e.at / 1000);
            let to = e
                .recipient
                .as_deref()
                .map(|r| format!(" <{r}>"))
                .unwrap_or_default();
            println!("  {when}  {:<12} {}{to}: {}", e.kind, e.node, e.detail);
        }
        return Ok(());
    }
    let mut query = format!("/api/v1/trace?limit={}", args.limit);
    if let Some(f) = &args.from {
        query.push_str(&format!("&from={}", urlencode(f)));
    }
    if let Some(t) = &args.to {
        query.push_str(&format!("&to={}", urlencode(t)));
    }
    if let Some(v) = &args.verdict {
        query.push_str(&format!("&verdict={}", urlencode(v)));
    }
    if let Some(s) = args.since {
        let since = smtp::date::now() - std::time::Duration::from(s).as_secs() as i64;
        query.push_str(&format!("&since={since}"));
    }
    let found: Vec<Trace> = api.get(&query)?;
    for t in &found {
        let verdict = if t.verdict.is_empty() {
            String::new()
        } else {
            format!("  [{}]", t.verdict)
        };
        println!(
            "{:<28} {}  {} -> {}{verdict}",
            t.id,
            date(t.received_at),
            sender(&t.sender),
            t.recipients.join(", ")
        );
    }
    println!("-- {}", count(found.len(), "message"));
    Ok(())
}

/// Percent-encodes a query or path value (addresses may hold `+`, `%`, quotes...).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
