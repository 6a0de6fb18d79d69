//! The `mailsilo` binary: reads the configuration and starts the roles this host runs, or
//! inspects and changes a running gateway's queue. It wires the role crates together and
//! owns nothing of their logic.

mod datadir;
mod filter_cli;
mod lb;
mod live;
mod queue_cli;
mod remote;
mod settings_cli;
mod sink;
mod up;
mod user_cli;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use config::Config;
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
pub(crate) struct Where {
    /// Configuration file (default: ./mailsilo.toml if present, else the built-in demo).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory: queue, TLS key, demo mailboxes.
    #[arg(long, default_value = "mailsilo-data")]
    pub(crate) data_dir: PathBuf,
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
        /// This node's id in a fleet (default: made once and kept in DATA_DIR/node.id).
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Run only the demo mailbox server (a stand-in for a client's own mail server).
    Sink {
        #[arg(long, default_value = "127.0.0.1:2526")]
        listen: SocketAddr,
        #[arg(long, default_value = "mailsilo-data")]
        data_dir: PathBuf,
        /// Where the mailboxes go (default: DATA_DIR/mailbox).
        #[arg(long)]
        mailbox: Option<PathBuf>,
    },
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show or change the balancers of a running `up` (through its control API).
    Lb {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: lb::Command,
    },
    /// Inspect or change the queue of a running `up` (a whole fleet on PostgreSQL).
    Queue {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: queue_cli::QueueCommand,
    },
    /// List, show, release or delete quarantined mail of a running `up` (a whole fleet on
    /// PostgreSQL).
    Quarantine {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: queue_cli::QuarantineCommand,
    },
    /// The digests of quarantined mail users get (`digest send`: now).
    Digest {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: queue_cli::DigestCommand,
    },
    /// List, add, change or remove the client domains of a running `up` (a whole fleet on
    /// PostgreSQL).
    Domain {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: settings_cli::DomainCommand,
    },
    /// Scan messages offline with the configured rules, model and policy (exit status 0:
    /// all clean, 1: one is not, 2: an error).
    Check {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        args: filter_cli::CheckArgs,
    },
    /// Teach the classifier spam and ham (files, mboxes, Maildirs), or make it forget.
    Train {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        args: filter_cli::TrainArgs,
    },
    /// The classifier's examples and model.
    #[command(subcommand)]
    Classifier(filter_cli::ClassifierCommand),
    /// The portal's accounts (written to the store: no running `up` needed).
    #[command(subcommand)]
    User(user_cli::UserCommand),
    /// The portal's client organisations and their domains.
    #[command(subcommand)]
    Org(user_cli::OrgCommand),
    /// A message's trace (received, each delivery attempt, the outcome), or the messages
    /// matching --from, --to and --since.
    Trace {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(flatten)]
        args: queue_cli::TraceArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a file (default: ./mailsilo.toml) without starting anything.
    Check { file: Option<PathBuf> },
    /// Print the annotated demo configuration.
    Example,
    /// Print the run-time configuration a running `up` applies (client domains, servers'
    /// loadings), which the store holds over the file's seed.
    Show {
        #[command(flatten)]
        remote: remote::Remote,
    },
}

/// Large buffers (message bodies, database and socket buffers of large messages) are given
/// back to the system when freed. glibc's malloc otherwise raises its mmap threshold to the
/// largest block freed so far (up to 32 MiB), after which message-sized blocks come from the
/// heap and stay resident after a burst of large mail (measured: tens of MB held a minute
/// later). A fixed threshold turns that adaptation off.
fn return_large_blocks() {
    // SAFETY: mallopt only sets a malloc tuning parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() -> Result<()> {
    return_large_blocks();
    datadir::private_umask();
    // A user's error (a bad argument, a taken port) is one line: no stack trace, even where
    // RUST_BACKTRACE is set for other programs (panics keep theirs).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet; no other thread can read the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up { .. } | Command::Sink { .. }) {
        // A command whose output goes into a pipe ends quietly when the reader stops
        // (`mailsilo trace ... | head`), as a Unix command does. (Rust ignores SIGPIPE so that
        // servers see a failed write instead; `up` and `sink` keep it so.)
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
            Command::Up { at, only, node_id } => {
                let config = load_config(at.config.as_deref())?;
                let roles = up::Roles::parse(&only, &config)?;
                up::up(config, &at.data_dir, roles, node_id).await
            }
            Command::Check { at, args } => {
                // Any error, the configuration's too, is exit status 2 (1 is "not clean").
                let checked = match load_config(at.config.as_deref()) {
                    Ok(config) => filter_cli::check(&config, &at.data_dir, args).await,
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(true) => Ok(()),
                    Ok(false) => std::process::exit(1),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        std::process::exit(2)
                    }
                }
            }
            Command::Train { at, args } => {
                let config = load_config(at.config.as_deref())?;
                filter_cli::train(&config, &at.data_dir, args).await
            }
            Command::Classifier(filter_cli::ClassifierCommand::Stats { at }) => {
                let config = load_config(at.config.as_deref())?;
                filter_cli::classifier_stats(&config, &at.data_dir).await
            }
            Command::User(command) => user_cli::user(command).await,
            Command::Org(command) => user_cli::org(command).await,
            Command::Lb { remote, command } => lb::run(&remote.connect()?, command),
            Command::Queue { remote, command } => queue_cli::queue(&remote.connect()?, command),
            Command::Quarantine { remote, command } => {
                queue_cli::quarantine(&remote.connect()?, command)
            }
            Command::Trace { remote, args } => queue_cli::trace(&remote.connect()?, args),
            Command::Digest { remote, command } => queue_cli::digest(&remote.connect()?, command),
            Command::Domain { remote, command } => {
                settings_cli::domain(&remote.connect()?, command)
            }
            Command::Config(ConfigCommand::Show { remote }) => {
                settings_cli::show(&remote.connect()?)
            }
            Command::Sink {
                listen,
                data_dir,
                mailbox,
            } => {
                let mailbox = mailbox.unwrap_or_else(|| data_dir.join("mailbox"));
                run_sink(listen, &data_dir, mailbox).await
            }
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
        }
    })
}

/// "1 thing" or "2 things".
pub(crate) fn count(n: usize, what: &str) -> String {
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

pub(crate) fn load_config(path: Option<&Path>) -> Result<Config> {
    let local = Path::new("mailsilo.toml");
    Ok(match path {
        Some(p) => Config::load(p)?,
        None if local.exists() => Config::load(local)?,
        None => Config::demo(),
    })
}

async fn run_sink(listen: SocketAddr, data_dir: &Path, root: PathBuf) -> Result<()> {
    datadir::prepare(data_dir)?;
    let mut settings = Config::demo().smtp;
    settings.hostname = "mailsilo.test".into();
    let tls = smtp::tls::server_config(None, None, "sink.mailsilo.test", data_dir)?;
    let listener = up::bind(listen, "the sink")?;
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
