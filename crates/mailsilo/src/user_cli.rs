//! `mailsilo user` and `mailsilo org`: the portal's accounts and client organisations,
//! written straight to the store (so the first operator can be made before anything
//! runs), and the seeding of both from the configuration file at `up`.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use config::{AccountPassword, Config};
use store::{Account, ApiToken, Organisation, Role, Store};

#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Add an account; its password is read from standard input (one line).
    Add {
        #[command(flatten)]
        at: crate::Where,
        /// The login: a plain name for an operator, an address for an admin or a user.
        name: String,
        #[arg(long, value_parser = ["operator", "admin", "user"])]
        role: String,
        /// The organisation of an admin or a user.
        #[arg(long)]
        organisation: Option<String>,
    },
    /// Change an account's password (read from standard input); its sessions end.
    Passwd {
        #[command(flatten)]
        at: crate::Where,
        name: String,
    },
    /// List the accounts.
    List {
        #[command(flatten)]
        at: crate::Where,
    },
    /// Make an API token acting for an account (printed once; only its hash is kept).
    Token {
        #[command(flatten)]
        at: crate::Where,
        name: String,
        /// What it is for.
        #[arg(long, default_value = "script")]
        label: String,
        /// Days it lasts (default: until the account is removed).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Revoke every API token of an account.
    Revoke {
        #[command(flatten)]
        at: crate::Where,
        name: String,
    },
    /// Print the argon2 hash of a password read from standard input (for password_hash).
    Hash,
}

#[derive(clap::Subcommand)]
pub enum OrgCommand {
    /// Add an organisation, or replace its domains.
    Set {
        #[command(flatten)]
        at: crate::Where,
        name: String,
        /// A client domain it owns (repeatable).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// How often its users get a digest of their quarantined mail: daily, weekly, off,
        /// or a duration such as 12h (default: the configuration's `digest.schedule`).
        #[arg(long)]
        digest: Option<String>,
    },
    /// List the organisations and their domains.
    List {
        #[command(flatten)]
        at: crate::Where,
    },
}

fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password on standard input (echo PASSWORD | mailsilo user ...)");
    }
    // The portal's own rule, which its API and pages hold to.
    let min = portal::accounts::MIN_PASSWORD;
    if password.chars().count() < min {
        bail!("a password has at least {min} characters");
    }
    Ok(password)
}

fn hash(password: &str) -> Result<String> {
    portal::auth::hash_password(password).map_err(anyhow::Error::msg)
}

/// The store. An embedded one that does not exist yet is made only when `create` (adding
/// an account or an organisation, so the first operator can be made before `up` runs), and
/// then said so: a command run from another directory than `up`'s must not quietly read or
/// change a new, empty store.
async fn open(at: &crate::Where, create: bool) -> Result<std::sync::Arc<dyn Store>> {
    let config = crate::load_config(at.config.as_deref())?;
    if config.store.url.is_none() && !crate::up::embedded_store(&at.data_dir).exists() {
        if !create {
            bail!(
                "no store in {}: give --data-dir, the data directory `mailsilo up` runs with",
                at.data_dir.display()
            );
        }
        eprintln!(
            "{}: no store there yet; making a new one (give --data-dir for `up`'s)",
            at.data_dir.display()
        );
    }
    crate::filter_cli::open(&config, &at.data_dir).await
}

/// The checks `user add` makes of a new account (the same as the file's).
async fn check_account(
    store: &dyn Store,
    name: &str,
    role: Role,
    organisation: Option<&str>,
) -> Result<()> {
    match (role, organisation) {
        (Role::Operator, Some(_)) => bail!("an operator belongs to no organisation"),
        (Role::Operator, None) => return Ok(()),
        (_, None) => bail!("an {} needs --organisation", role.as_str()),
        (_, Some(o)) => {
            let orgs = store.organisations().await?;
            let Some(org) = orgs.iter().find(|x| x.name == o) else {
                bail!("no organisation {o:?} (add it with `mailsilo org set`)");
            };
            if role == Role::User
                && !name
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| org.domains.iter().any(|x| x == d))
            {
                bail!("a user is named by their address at one of {o:?}'s domains");
            }
        }
    }
    Ok(())
}

pub async fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Hash => {
            println!("{}", hash(&read_password()?)?);
        }
        UserCommand::Add {
            at,
            name,
            role,
            organisation,
        } => {
            let name = name.trim().to_ascii_lowercase();
            if !portal::accounts::plain_name(&name) {
                bail!("an account's name has no white space or control characters");
            }
            let store = open(&at, true).await?;
            let role = Role::parse(&role).expect("clap checked it");
            if store.account(&name).await?.is_some() {
                bail!("account {name:?} exists (change its password with `mailsilo user passwd`)");
            }
            check_account(store.as_ref(), &name, role, organisation.as_deref()).await?;
            let password = hash(&read_password()?)?;
            store
                .set_account(Account {
                    name: name.clone(),
                    role,
                    organisation,
                    password,
                    created: now(),
                })
                .await?;
            println!("added {} {name}", role.as_str());
        }
        UserCommand::Passwd { at, name } => {
            let store = open(&at, false).await?;
            let Some(mut account) = store.account(&name.to_ascii_lowercase()).await? else {
                bail!("no account {name:?}");
            };
            account.password = hash(&read_password()?)?;
            let account_name = account.name.clone();
            store.set_account(account).await?;
            let ended = store.end_sessions(None, Some(&account_name)).await?;
            println!("password of {account_name} changed; {ended} session(s) ended");
        }
        UserCommand::Revoke { at, name } => {
            let store = open(&at, false).await?;
            let n = store.revoke_tokens(&name.to_ascii_lowercase()).await?;
            println!("{n} token(s) of {name} revoked");
        }
        UserCommand::List { at } => {
            let store = open(&at, false).await?;
            let accounts = store.accounts().await?;
            for a in &accounts {
                println!(
                    "{:<32} {:<9} {}",
                    a.name,
                    a.role.as_str(),
                    a.organisation.as_deref().unwrap_or("-")
                );
            }
            println!("-- {} account(s)", accounts.len());
        }
        UserCommand::Token {
            at,
            name,
            label,
            days,
        } => {
            let store = open(&at, false).await?;
            let Some(account) = store.account(&name.to_ascii_lowercase()).await? else {
                bail!("no account {name:?}");
            };
            let secret = format!("{}{}", portal::auth::TOKEN_PREFIX, portal::auth::secret());
            store
                .add_token(ApiToken {
                    key: portal::auth::digest(&secret),
                    account: account.name,
                    label,
                    role: account.role,
                    organisation: account.organisation,
                    created: now(),
                    expires: days.map(|d| now() + i64::from(d) * 86_400),
                })
                .await?;
            println!("{secret}");
        }
    }
    Ok(())
}

pub async fn org(command: OrgCommand) -> Result<()> {
    match command {
        OrgCommand::Set {
            at,
            name,
            domains,
            digest,
        } => {
            let store = open(&at, true).await?;
            let others = store.organisations().await?;
            let org = portal::organisations::checked(&name, &domains, digest.as_deref(), &others)
                .map_err(anyhow::Error::msg)?;
            store.set_organisation(org).await?;
            println!("organisation {name} set");
        }
        OrgCommand::List { at } => {
            let store = open(&at, false).await?;
            for o in store.organisations().await? {
                let digest = o.digest.as_deref().unwrap_or("default");
                println!("{:<32} digest {digest:<8} {}", o.name, o.domains.join(", "));
            }
        }
    }
    Ok(())
}

/// Seeds the store with the file's organisations and accounts that it does not hold yet
/// (after that the store wins).
pub async fn seed(config: &Config, store: &dyn Store) -> Result<()> {
    let known = store.organisations().await?;
    for o in &config.organisations {
        if !known.iter().any(|k| k.name == o.name) {
            store
                .set_organisation(Organisation {
                    name: o.name.clone(),
                    domains: o.domains.clone(),
                    digest: o.digest.clone(),
                })
                .await?;
        }
    }
    for a in &config.accounts {
        if store.account(&a.name).await?.is_some() {
            continue;
        }
        let password = match &a.password {
            AccountPassword::Plain(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || hash(&p)).await??
            }
            AccountPassword::Hash(h) => h.clone(),
        };
        store
            .set_account(Account {
                name: a.name.clone(),
                role: Role::parse(&a.role).expect("the configuration checked it"),
                organisation: a.organisation.clone(),
                password,
                created: now(),
            })
            .await?;
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Where `up` says the portal is, with the accounts the file gives a plain password (the
/// demo's), as the file seeds them.
pub fn describe(portal: &str, config: &Config) -> String {
    let mut out = format!("  portal                 {portal}  (API: {portal}api/v1/)\n");
    for a in &config.accounts {
        if let AccountPassword::Plain(p) = &a.password {
            out.push_str(&format!(
                "                         {:<8} {} / {p}\n",
                a.role, a.name
            ));
        }
    }
    out
}
