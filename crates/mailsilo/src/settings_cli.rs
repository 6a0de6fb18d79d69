//! `mailsilo domain` and `mailsilo config show`: the run-time configuration of a running
//! gateway (a whole fleet on PostgreSQL), through its control API.

use anyhow::{Result, bail};
use config::{DomainSettings, RetrySettings};
use portal::settings::{DomainView, Effective};
use serde::Serialize;

use crate::remote::Client;

#[derive(clap::Subcommand)]
pub enum DomainCommand {
    /// Every client domain in force.
    List,
    /// One client domain's settings.
    Show { name: String },
    /// Accept mail for a new client domain: `domain add example.net --destination mx.example.net:25`.
    Add {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a client domain's settings (those not given stay as they are).
    Set {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Stop accepting mail for a client domain (mail already queued is still delivered).
    Remove { name: String },
}

/// A domain's settings as options; each is the same as the `[[domain]]` key of its name.
#[derive(clap::Args)]
pub struct SettingsArgs {
    /// The client's server, HOST:PORT, or `mx` (the domain's MX records).
    #[arg(long)]
    destination: Option<String>,
    /// Defer rather than deliver without STARTTLS (true or false).
    #[arg(long)]
    require_tls: Option<bool>,
    /// The only valid local parts, comma-separated; `--recipients ''` accepts any.
    #[arg(long, value_delimiter = ',')]
    recipients: Option<Vec<String>>,
    /// The silo whose host name the domain's MX points at; `--silo ''` for none.
    #[arg(long)]
    silo: Option<String>,
    /// Retry policy overrides ("300s", "4000s", "5d", "4h"); `''` takes the global one again.
    #[arg(long)]
    min_backoff: Option<String>,
    #[arg(long)]
    max_backoff: Option<String>,
    #[arg(long)]
    lifetime: Option<String>,
    #[arg(long)]
    delay_warning: Option<String>,
}

/// `Some("")` clears a setting, `Some(v)` sets it, `None` leaves it.
fn apply(to: &mut Option<String>, v: Option<String>) {
    if let Some(v) = v {
        *to = Some(v).filter(|v| !v.is_empty());
    }
}

impl SettingsArgs {
    fn over(self, mut s: DomainSettings) -> DomainSettings {
        if let Some(d) = self.destination {
            s.destination = d;
        }
        if let Some(t) = self.require_tls {
            s.require_tls = t;
        }
        if let Some(r) = self.recipients {
            let r: Vec<String> = r.into_iter().filter(|r| !r.is_empty()).collect();
            s.recipients = Some(r).filter(|r| !r.is_empty());
        }
        apply(&mut s.silo, self.silo);
        let RetrySettings {
            min_backoff,
            max_backoff,
            lifetime,
            delay_warning,
        } = &mut s.retry;
        apply(min_backoff, self.min_backoff);
        apply(max_backoff, self.max_backoff);
        apply(lifetime, self.lifetime);
        apply(delay_warning, self.delay_warning);
        s
    }
}

fn path(name: &str) -> Result<String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    {
        bail!("{name:?} is not a domain name");
    }
    Ok(format!("/api/v1/domains/{name}"))
}

fn find(api: &Client, name: &str) -> Result<Option<DomainView>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let all: Vec<DomainView> = api.get("/api/v1/domains")?;
    Ok(all.into_iter().find(|d| d.name == name))
}

pub fn domain(api: &Client, command: DomainCommand) -> Result<()> {
    match command {
        DomainCommand::List => {
            let all: Vec<DomainView> = api.get("/api/v1/domains")?;
            println!(
                "{:<28} {:<24} {:<5} {:<24} RECIPIENTS",
                "DOMAIN", "DESTINATION", "TLS", "SILO"
            );
            for d in &all {
                let s = &d.settings;
                println!(
                    "{:<28} {:<24} {:<5} {:<24} {}",
                    d.name,
                    s.destination,
                    if s.require_tls { "must" } else { "may" },
                    s.silo.as_deref().unwrap_or("-"),
                    s.recipients.as_ref().map_or("any".into(), |r| r.join(","))
                );
            }
            println!("{}", crate::count(all.len(), "client domain"));
        }
        DomainCommand::Show { name } => match find(api, &name)? {
            Some(d) => print!("{}", toml_of(&[&d])?),
            None => bail!("{name} is not a client domain (see `mailsilo domain list`)"),
        },
        DomainCommand::Add { name, settings } => {
            if find(api, &name)?.is_some() {
                bail!("{name} is a client domain already: change it with `mailsilo domain set`");
            }
            if settings.destination.is_none() {
                bail!(
                    "a new client domain needs --destination (HOST:PORT of the client's server, or mx)"
                );
            }
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            api.put(&path(&name)?, &settings.over(DomainSettings::default()))?;
            println!("{name}: added; every node accepts mail for it within 2 s");
        }
        DomainCommand::Set { name, settings } => {
            let Some(d) = find(api, &name)? else {
                bail!("{name} is not a client domain: add it with `mailsilo domain add`");
            };
            api.put(&path(&d.name)?, &settings.over(d.settings))?;
            println!("{}: changed; every node follows within 2 s", d.name);
        }
        DomainCommand::Remove { name } => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            api.delete(&path(&name)?)?;
            println!(
                "{name}: removed; new mail for it is refused within 2 s, mail already queued is still delivered"
            );
        }
    }
    Ok(())
}

/// A domain as a `[[domain]]` table of the TOML.
#[derive(Serialize)]
struct DomainTable<'a> {
    name: &'a str,
    #[serde(flatten)]
    settings: &'a DomainSettings,
}

fn toml_of(domains: &[&DomainView]) -> Result<String> {
    #[derive(Serialize)]
    struct File<'a> {
        domain: Vec<DomainTable<'a>>,
    }
    let domain = domains
        .iter()
        .map(|d| DomainTable {
            name: &d.name,
            settings: &d.settings,
        })
        .collect();
    Ok(toml::to_string(&File { domain })?)
}

/// `mailsilo config show`.
pub fn show(api: &Client) -> Result<()> {
    let e: Effective = api.get("/api/v1/config")?;
    println!(
        "# The run-time configuration in force, as node {} reads it from the {} store. It started\n\
         # from {}; the store's copy wins where they differ. The file's other sections apply as written.\n",
        e.node, e.store, e.file
    );
    print!("{}", toml_of(&e.domains.iter().collect::<Vec<_>>())?);
    // The servers' loadings as comments: in a configuration file they belong inside their
    // [[silo.cluster.server]] tables, which hold what this output does not (addresses).
    println!(
        "\n# Mail servers: cluster/server, loading, the operator's state (ready, drain, maint;\n\
         # removed: taken out with `mailsilo lb remove`, though the file may still name it)."
    );
    for s in &e.servers {
        let state = if s.removed { "removed" } else { &s.state };
        println!(
            "#   {}/{}  loading {}  {state}",
            s.cluster, s.server, s.loading
        );
    }
    Ok(())
}
