//! `mailsilo check`, `mailsilo train` and `mailsilo classifier`: the filter offline, like
//! `rspamc` and `sa-learn`. They open the store the configuration names (the embedded one
//! in the data dir, or PostgreSQL) and need no gateway running; `check` scans with the same
//! engine and policy as the mail servers.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use config::Config;
use filter::{Engine, Envelope, decide, training};
use serde_json::json;

/// What `check` is told about the messages' envelope.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// One JSON object per message and line.
    #[arg(long)]
    json: bool,
    /// The client address the message came from.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// The HELO name the client gave.
    #[arg(long, default_value = "")]
    helo: String,
    /// The envelope sender.
    #[arg(long, default_value = "")]
    from: String,
    /// The recipient whose domain's policy applies (default: the global policy).
    #[arg(long)]
    rcpt: Option<String>,
    /// The resolver for the DNS checks (repeatable; default: filter.nameservers, else the
    /// system's).
    #[arg(long)]
    nameserver: Vec<std::net::SocketAddr>,
    /// Files (one message, or an mbox), Maildirs or directories of message files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// What `train` learns or forgets.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Spam: files, mboxes, Maildirs or directories.
    #[arg(long, num_args = 1..)]
    spam: Vec<PathBuf>,
    /// Ham (wanted mail), likewise.
    #[arg(long, num_args = 1..)]
    ham: Vec<PathBuf>,
    /// Messages to unlearn, whichever class they were learned as.
    #[arg(long, num_args = 1..)]
    forget: Vec<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum ClassifierCommand {
    /// What the classifier has learned and the model in force.
    Stats {
        #[command(flatten)]
        at: crate::Where,
    },
}

/// Calls `each` with every message in `paths` and a name for it: a file holds one message,
/// or several when it is an mbox (messages after `From ` lines, `>From ` unescaped); a
/// directory is a Maildir (its `cur` and `new`) or a folder of message files, read in name
/// order (what is not a regular file in it is skipped with a warning). Paths that hold no
/// message at all are an error.
pub fn each_message(
    paths: &[PathBuf],
    mut each: impl FnMut(String, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut found = 0usize;
    let mut each = |name, raw| {
        found += 1;
        each(name, raw)
    };
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            let maildir = path.join("cur").is_dir() || path.join("new").is_dir();
            let dirs = if maildir {
                vec![path.join("cur"), path.join("new")]
            } else {
                vec![path.clone()]
            };
            for dir in dirs.iter().filter(|d| d.is_dir()) {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                    .with_context(|| format!("{}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        // A directory is read one level deep, as a Maildir folder is.
                        let file = p.is_file();
                        if !file {
                            eprintln!("warning: {}: skipped, not a regular file", p.display());
                        }
                        file
                    })
                    .collect();
                files.sort();
                for f in files {
                    file_messages(&f, &mut each)?;
                }
            }
        } else {
            file_messages(path, &mut each)?;
        }
    }
    if found == 0 && !paths.is_empty() {
        bail!(
            "no messages in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn file_messages(path: &Path, each: &mut impl FnMut(String, Vec<u8>) -> Result<()>) -> Result<()> {
    let raw = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let name = path.display().to_string();
    if !raw.starts_with(b"From ") {
        return each(name, raw);
    }
    let messages = split_mbox(&raw);
    let several = messages.len() > 1;
    for (i, m) in messages.into_iter().enumerate() {
        let name = if several {
            format!("{name}#{}", i + 1)
        } else {
            name.clone()
        };
        each(name, m)?;
    }
    Ok(())
}

/// The messages of an mbox: each starts after a `From ` line at the start of the file or
/// after an empty line; `>From ` (and `>>From `...) lose one `>`.
fn split_mbox(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut previous_blank = true;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if previous_blank && line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                messages.push(m);
            }
            current = Some(Vec::new());
            previous_blank = false;
            continue;
        }
        previous_blank = line == b"\n" || line == b"\r\n";
        if let Some(m) = current.as_mut() {
            let gt = line.iter().take_while(|&&b| b == b'>').count();
            if gt > 0 && line[gt..].starts_with(b"From ") {
                m.extend_from_slice(&line[1..]);
            } else {
                m.extend_from_slice(line);
            }
        }
    }
    messages.extend(current);
    messages
}

/// The store the configuration names (the data dir made first, for the embedded one).
pub(crate) async fn open(
    config: &Config,
    data_dir: &Path,
) -> Result<std::sync::Arc<dyn store::Store>> {
    if config.store.url.is_none() {
        crate::datadir::prepare(data_dir)?;
    }
    crate::up::open_store(config, data_dir).await
}

/// An engine with the configured rules and the store's model, and with `nameservers`
/// the DNS checks.
async fn engine(
    config: &Config,
    store: &dyn store::Store,
    nameservers: Option<&[std::net::SocketAddr]>,
) -> Result<Engine> {
    let rules = filter::rules::Rules::new(config.filter.starter_rules, &config.filter.rules)
        .map_err(anyhow::Error::msg)?;
    let malware = filter::attachments::Malware::new(&config.filter).map_err(anyhow::Error::msg)?;
    let mut engine = Engine::new(rules).with_malware(malware);
    if let Some(nameservers) = nameservers {
        let network = filter::network::Network::new(
            &config.smtp.hostname,
            nameservers,
            config.filter.dns_timeout,
            config.filter.dnsbl.clone(),
            config.filter.uribl.clone(),
        )
        .map_err(anyhow::Error::msg)
        .context("the filter's resolver")?;
        engine = engine.with_network(network);
    }
    training::refresh(&engine, store)
        .await
        .context("loading the classifier model")?;
    Ok(engine)
}

/// `mailsilo check`: exit status 0 when every message is clean, 1 when one is not.
pub async fn check(config: &Config, data_dir: &Path, args: CheckArgs) -> Result<bool> {
    let store = open(config, data_dir).await?;
    let nameservers = if args.nameserver.is_empty() {
        config.filter.nameservers.clone()
    } else {
        args.nameserver.clone()
    };
    let engine = std::sync::Arc::new(engine(config, store.as_ref(), Some(&nameservers)).await?);
    let domain = match args.rcpt.as_deref().map(|r| r.rsplit_once('@')) {
        None => None,
        Some(Some((local, d))) if !local.is_empty() && !d.is_empty() => {
            Some(d.to_ascii_lowercase())
        }
        Some(_) => bail!("--rcpt: give an address, local-part@domain"),
    };
    let policy = match &domain {
        Some(d) => match config.domain(d) {
            Some(domain) => domain.filter.clone(),
            None => bail!("--rcpt: {d} is not a client domain of {}", config.source),
        },
        None => config.filter.policy.clone(),
    };
    let clients: Vec<String> = config.domains.iter().map(|d| d.name.clone()).collect();
    let sender = args.from.to_ascii_lowercase();
    let env = Envelope {
        client: args.ip,
        helo: &args.helo,
        sender: &sender,
    };
    let mut all_clean = true;
    let out = std::io::stdout();
    let mut out = out.lock();
    if !engine.probe_dns().await {
        eprintln!(
            "warning: the resolver ({}) does not answer: the DNS checks are skipped (DNS_UNAVAILABLE, degraded)",
            if nameservers.is_empty() {
                "the system's".to_string()
            } else {
                nameservers
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let mut messages = Vec::new();
    each_message(&args.paths, |name, raw| {
        messages.push((name, raw));
        Ok(())
    })?;
    for (name, raw) in messages {
        let raw = bytes::Bytes::copy_from_slice(training::strip_from_line(&raw));
        let report = engine.check(&raw, &env, &clients).await;
        let d = decide(&report, &policy, &env);
        all_clean &= d.verdict == filter::Verdict::Clean;
        if args.json {
            let symbols: Vec<_> = report
                .symbols
                .iter()
                .map(|s| json!({"name": s.name, "score": s.score, "reason": s.reason, "micros": s.micros}))
                .collect();
            writeln!(
                out,
                "{}",
                json!({
                    "file": name,
                    "score": report.score,
                    "verdict": d.verdict.as_str(),
                    "action": d.action.as_str(),
                    "reason": d.reason,
                    "degraded": report.degraded(),
                    "micros": report.micros,
                    "symbols": symbols,
                    "stripped": d.strip.iter().map(|s| &s.note).collect::<Vec<_>>(),
                })
            )?;
        } else {
            writeln!(
                out,
                "{name}: {} (score {:.2}, action {}){}",
                d.verdict.as_str(),
                report.score,
                d.action.as_str(),
                if report.degraded() { " [degraded]" } else { "" }
            )?;
            for s in &d.strip {
                writeln!(out, "  stripped: {}", s.note)?;
            }
            for s in &report.symbols {
                writeln!(
                    out,
                    "  {:<22} {:>7.2}  {}  ({} us)",
                    s.name, s.score, s.reason, s.micros
                )?;
            }
        }
    }
    Ok(all_clean)
}

/// Progress on standard error, when it is a terminal.
struct Progress {
    show: bool,
    done: usize,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            show: std::io::stderr().is_terminal(),
            done: 0,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, what: &str) {
        self.done += 1;
        if self.show && self.last.elapsed().as_millis() >= 100 {
            self.last = Instant::now();
            eprint!("\r{what}: {} messages", self.done);
        }
    }

    fn finish(&self) {
        if self.show {
            eprint!("\r\x1b[2K");
        }
    }
}

/// How many examples go to the store in one transaction.
const LEARN_BATCH: usize = 500;

/// `mailsilo train`.
pub async fn train(config: &Config, data_dir: &Path, args: TrainArgs) -> Result<()> {
    if args.spam.is_empty() && args.ham.is_empty() && args.forget.is_empty() {
        bail!("nothing to learn: give --spam, --ham or --forget with files, mboxes or Maildirs");
    }
    let store = open(config, data_dir).await?;
    let start = Instant::now();
    let mut progress = Progress::new();
    let (mut read, mut changed) = (0usize, 0usize);
    for (paths, spam) in [(&args.spam, true), (&args.ham, false)] {
        let mut batch = Vec::new();
        let mut pending: Vec<Vec<store::Example>> = Vec::new();
        each_message(paths, |_, raw| {
            batch.push(training::example(&raw, spam));
            progress.tick("reading");
            if batch.len() == LEARN_BATCH {
                pending.push(std::mem::take(&mut batch));
            }
            Ok(())
        })?;
        pending.push(batch);
        for b in pending {
            read += b.len();
            changed += store.learn(b).await?;
        }
    }
    let mut forgotten = 0;
    if !args.forget.is_empty() {
        let mut digests = Vec::new();
        each_message(&args.forget, |_, raw| {
            digests.push(training::digest(training::strip_from_line(&raw)));
            progress.tick("reading");
            Ok(())
        })?;
        forgotten = store.forget(digests).await?;
    }
    progress.finish();
    let read_time = start.elapsed();
    let (version, model) = training::retrain(store.as_ref()).await?;
    println!(
        "learned {read} messages ({changed} new or changed class), forgot {forgotten}, in {:.1} s",
        read_time.as_secs_f64()
    );
    println!(
        "model {version}: trained on {} spam and {} ham in {:.1} s, {} weights ({:.1} MB in memory); running servers load it within {} s",
        model.spam,
        model.ham,
        (start.elapsed() - read_time).as_secs_f64(),
        model.len(),
        model.memory() as f64 / 1e6,
        training::FOLLOW_INTERVAL.as_secs()
    );
    if model.spam < filter::classifier::MIN_LEARNS || model.ham < filter::classifier::MIN_LEARNS {
        println!(
            "the classifier abstains until it has learned {} spam and {} ham",
            filter::classifier::MIN_LEARNS,
            filter::classifier::MIN_LEARNS
        );
    }
    Ok(())
}

/// `mailsilo classifier stats`.
pub async fn classifier_stats(config: &Config, data_dir: &Path) -> Result<()> {
    let store = open(config, data_dir).await?;
    let (spam, ham) = store.example_counts().await?;
    println!("examples: {spam} spam, {ham} ham");
    let engine = engine(config, store.as_ref(), None).await?;
    match (store.model().await?, engine.model_version()) {
        (Some((version, data)), Some(_)) => {
            let model = filter::classifier::Model::decode(&data).map_err(anyhow::Error::msg)?;
            println!(
                "model {version}: trained on {} spam and {} ham, {} weights, {:.1} MB in memory{}",
                model.spam,
                model.ham,
                model.len(),
                model.memory() as f64 / 1e6,
                if model.spam < filter::classifier::MIN_LEARNS
                    || model.ham < filter::classifier::MIN_LEARNS
                {
                    " (too few to use: the classifier abstains)"
                } else {
                    ""
                }
            );
        }
        _ => println!("no model yet: train one with `mailsilo train --spam ... --ham ...`"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxes_split_and_unescape() {
        let raw = b"From a@b Mon\nSubject: 1\n\nhi\n>From here\n\nFrom c@d Tue\nSubject: 2\n\nbody\nFrom inside is not a separator\n";
        let m = split_mbox(raw);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0], b"Subject: 1\n\nhi\nFrom here\n\n");
        assert_eq!(
            m[1],
            b"Subject: 2\n\nbody\nFrom inside is not a separator\n"
        );
        let one = split_mbox(b"From a@b Mon\nSubject: x\n\nbody\n");
        assert_eq!(one, vec![b"Subject: x\n\nbody\n".to_vec()]);
    }
}
