//! The `mailsilo` binary: reads the configuration and starts the roles this host runs, or
//! inspects and changes a running gateway's queue. It wires the role crates together and
//! owns nothing of their logic.

mod datadir;
mod lb;
mod sink;
mod up;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use config::Config;
use store::{Embedded, QueueStore};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "mailsilo",
    version,
    about = "Managed inbound e-mail filtering: receive, spool, relay"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct Where {
    /// Configuration file (default: ./mailsilo.toml if present, else the built-in demo).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory: queue, TLS key, demo mailboxes.
    #[arg(long, default_value = "mailsilo-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role the configuration gives this host, until SIGINT or SIGTERM.
    Up {
        #[command(flatten)]
        at: Where,
        /// Run only these roles, comma-separated: mx, sink, dns, control, balancer,
        /// balancer:CLUSTER, server, server:NAME (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Run only the demo mailbox server (a stand-in for a client's own mail server).
    Sink {
        #[arg(long, default_value = "127.0.0.1:2526")]
        listen: SocketAddr,
        #[arg(long, default_value = "mailsilo-data")]
        data_dir: PathBuf,
    },
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show or change the balancers of a running `up` (through its control endpoint).
    Lb {
        /// The control endpoint (default: control.listen of the configuration).
        #[arg(long, global = true)]
        control: Option<SocketAddr>,
        /// The data directory of that `up`, where its control token is.
        #[arg(long, global = true, default_value = "mailsilo-data")]
        data_dir: PathBuf,
        /// The control token file (default: DATA_DIR/control.token).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// Configuration file to read control.listen from.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: lb::Command,
    },
    /// Inspect or change the queue (works while `up` runs).
    Queue {
        /// The data directory of the `up` whose queue to use.
        #[arg(long, global = true, default_value = "mailsilo-data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a file (default: ./mailsilo.toml) without starting anything.
    Check { file: Option<PathBuf> },
    /// Print the annotated demo configuration.
    Example,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// One line per queued message with its pending recipients.
    List,
    /// Envelope, recipient states and headers of one message.
    Show { id: String },
    /// Make every deferred recipient due now.
    Flush,
    /// Remove a message from the queue.
    Delete { id: String },
}

fn main() -> Result<()> {
    datadir::private_umask();
    // A user's error (a bad argument, a taken port) is one line: no stack trace, even where
    // RUST_BACKTRACE is set for other programs (panics keep theirs).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet; no other thread can read the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour only for a person at a terminal who has not asked for none.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up { at, only } => {
                let config = load_config(at.config.as_deref())?;
                let roles = up::Roles::parse(&only, &config)?;
                up::up(config, &at.data_dir, roles).await
            }
            Command::Lb {
                control,
                data_dir,
                token_file,
                config,
                command,
            } => {
                let addr = match control {
                    Some(a) => a,
                    None => load_config(config.as_deref())?
                        .control
                        .map(|c| c.listen)
                        .context("no [control] listen in the configuration; give --control ADDR")?,
                };
                let token = match std::env::var("MAILSILO_CONTROL_TOKEN") {
                    Ok(t) if token_file.is_none() && !t.is_empty() => t,
                    _ => datadir::read_token(
                        &token_file.unwrap_or_else(|| datadir::token_path(&data_dir)),
                    )?,
                };
                lb::run(addr, &token, command)
            }
            Command::Sink { listen, data_dir } => run_sink(listen, &data_dir).await,
            Command::Config(ConfigCommand::Example) => {
                print!("{}", config::DEMO);
                Ok(())
            }
            Command::Config(ConfigCommand::Check { file }) => {
                let file = file.unwrap_or_else(|| PathBuf::from("mailsilo.toml"));
                let c = Config::load(&file)?;
                println!("{}: ok: {}", file.display(), summary(&c));
                for w in &c.warnings {
                    println!("warning: {w}");
                }
                Ok(())
            }
            Command::Queue { data_dir, command } => queue_command(&data_dir, command).await,
        }
    })
}

/// "1 thing" or "2 things".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What a configuration runs, in one line.
fn summary(c: &Config) -> String {
    let mut parts = vec![count(c.domains.len(), "client domain")];
    if !c.smtp.listen.is_empty() {
        parts.push(count(c.smtp.listen.len(), "mx listener"));
    }
    for s in &c.silos {
        let servers: usize = s.clusters.iter().map(|c| c.servers.len()).sum();
        parts.push(format!(
            "silo {} with {} and {}",
            s.name,
            count(s.clusters.len(), "cluster"),
            count(servers, "mail server")
        ));
    }
    if let Some(d) = &c.dns {
        parts.push(format!("DNS for {}", count(d.zones.len(), "zone")));
    }
    if c.control.is_some() {
        parts.push("control endpoint".into());
    }
    if c.sink.is_some() {
        parts.push("demo sink".into());
    }
    parts.join(", ")
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let local = Path::new("mailsilo.toml");
    Ok(match path {
        Some(p) => Config::load(p)?,
        None if local.exists() => Config::load(local)?,
        None => Config::demo(),
    })
}

async fn run_sink(listen: SocketAddr, data_dir: &Path) -> Result<()> {
    datadir::prepare(data_dir)?;
    let mut settings = Config::demo().smtp;
    settings.hostname = "mailsilo.test".into();
    let tls = smtp::tls::server_config(None, None, "sink.mailsilo.test", data_dir)?;
    let listener = up::bind(listen, "the sink").await?;
    let root = data_dir.join("mailbox");
    println!(
        "mailsilo sink: smtp://{} -> {}",
        listener.local_addr()?,
        root.display()
    );
    let (stop, stopped) = watch::channel(false);
    let server = up::sink_server(settings, listen, tls, root);
    let task = tokio::spawn(server.serve(listener, stopped, up::GRACE));
    up::shutdown_signal().await?;
    stop.send(true).ok();
    task.await.ok();
    Ok(())
}

async fn queue_command(data_dir: &Path, command: QueueCommand) -> Result<()> {
    let dir = data_dir.join("queue");
    if !dir.join("queue.db").exists() {
        bail!(
            "no queue in {}: run the command from the directory where `mailsilo up` runs, or give --data-dir",
            data_dir.display()
        );
    }
    let store = Embedded::open(&dir)?;
    let now = smtp::date::now();
    match command {
        QueueCommand::List => {
            let list = store.list().await?;
            for m in &list {
                let sender = if m.sender.is_empty() {
                    "MAILER-DAEMON"
                } else {
                    &m.sender
                };
                println!(
                    "{:<18} {:>9} {}  {}",
                    m.id,
                    m.size,
                    smtp::date::rfc5322(m.received_at),
                    sender
                );
                for (rcpt, err) in &m.pending {
                    if let Some(e) = err {
                        println!("{:<18} ({e})", "");
                    }
                    println!("{:<40} {rcpt}", "");
                }
                println!(
                    "{:<18} next attempt in {}s",
                    "",
                    (m.next_attempt - now).max(0)
                );
            }
            let n = list.iter().map(|m| m.pending.len()).sum::<usize>();
            println!(
                "-- {}, {} pending",
                count(list.len(), "message"),
                count(n, "recipient")
            );
        }
        QueueCommand::Show { id } => {
            let Some(m) = store.get(&id).await? else {
                bail!("no message {id} in the queue")
            };
            println!(
                "id: {}\nsender: <{}>\nreceived: {}\nsize: {}",
                m.id,
                m.sender,
                smtp::date::rfc5322(m.received_at),
                m.body.len()
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
                    smtp::date::rfc5322(r.next_attempt),
                    r.last_error.as_deref().unwrap_or("")
                );
            }
            let end = m
                .body
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(m.body.len());
            println!("\n{}", String::from_utf8_lossy(&m.body[..end]));
        }
        QueueCommand::Flush => println!(
            "{} made due now",
            count(store.flush(now).await?, "recipient")
        ),
        QueueCommand::Delete { id } => {
            if !store.delete(&id).await? {
                bail!("no message {id} in the queue");
            }
            println!("deleted {id}");
        }
    }
    Ok(())
}
