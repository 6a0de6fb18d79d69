//! The client side of the control API, which every administrative command (`lb`, `queue`,
//! `trace`) goes through: where the running gateway's endpoint is, the token it wants, and
//! its answers turned into plain errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the gateway to talk to is, and how to prove the right to.
#[derive(clap::Args, Clone)]
pub struct Remote {
    /// The control endpoint: ADDR for plain HTTP (loopback), https://HOST:PORT for HTTPS
    /// (default: control.listen of the configuration, over HTTPS when control.tls is on).
    #[arg(long, global = true)]
    control: Option<String>,
    /// The data directory of the `up` that runs it, where its control token is.
    #[arg(long, global = true, default_value = "mailsilo-data")]
    data_dir: PathBuf,
    /// The control token file (default: DATA_DIR/control.token).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The certificate to trust for HTTPS (default: smtp.tls_cert of the configuration, else
    /// the one `up` made, DATA_DIR/control-tls-cert.pem).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Configuration file to read control.listen from (default: ./mailsilo.toml, else
    /// the demo's).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

/// A connection to one gateway's control API.
pub struct Client {
    agent: ureq::Agent,
    /// `http://ADDR` or `https://HOST:PORT`.
    base: String,
    bearer: String,
}

impl Remote {
    pub fn connect(&self) -> Result<Client> {
        let config = || crate::load_config(self.config.as_deref());
        let base = match &self.control {
            Some(c) if c.starts_with("https://") => c.trim_end_matches('/').to_string(),
            Some(c) => {
                let addr: SocketAddr = c
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .with_context(|| {
                        format!("--control {c:?}: write IP:PORT, or https://HOST:PORT")
                    })?;
                format!("http://{addr}")
            }
            None => {
                let c = config()?
                    .control
                    .context("no [control] listen in the configuration; give --control ADDR")?;
                format!("{}://{}", if c.tls { "https" } else { "http" }, c.listen)
            }
        };
        let token = match std::env::var("MAILSILO_CONTROL_TOKEN") {
            Ok(t) if self.token_file.is_none() && !t.is_empty() => t,
            _ => crate::datadir::read_token(
                &self
                    .token_file
                    .clone()
                    .unwrap_or_else(|| crate::datadir::token_path(&self.data_dir)),
            )?,
        };
        let mut agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)));
        if base.starts_with("https://") {
            let ca = match &self.ca {
                Some(p) => p.clone(),
                None => config()?
                    .smtp
                    .tls_cert
                    .clone()
                    .unwrap_or_else(|| smtp::tls::control_cert_path(&self.data_dir)),
            };
            let pem = std::fs::read(&ca).with_context(|| {
                format!(
                    "the certificate to trust for the control endpoint, {} (give --ca FILE)",
                    ca.display()
                )
            })?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                bail!("{}: no certificate in it", ca.display());
            }
            agent = agent.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
                    .build(),
            );
        }
        Ok(Client {
            agent: agent.build().into(),
            base,
            bearer: format!("Bearer {token}"),
        })
    }
}

/// Says plainly that nothing answers, rather than a transport error.
fn unreachable(control: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            anyhow::anyhow!(
                "no gateway answers at {control}: start one with `mailsilo up` (or give --control ADDR for another)"
            )
        }
        other => anyhow::anyhow!("control endpoint {control}: {other}"),
    }
}

/// The error text of a refused call.
fn refused(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    match (status.as_u16(), message.trim().is_empty()) {
        (401, _) => "the gateway refused the control token: use the one of the `up` you mean (DATA_DIR/control.token with --data-dir, --token-file, or MAILSILO_CONTROL_TOKEN)".to_string(),
        (_, true) => format!("the control endpoint answered {status}"),
        _ => message,
    }
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut resp = r.map_err(|e| unreachable(&self.base, e))?;
        if !resp.status().is_success() {
            bail!("{}", refused(&mut resp));
        }
        Ok(resp)
    }

    /// GET, with the answer read as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self
            .agent
            .get(&self.url(path))
            .header("Authorization", &self.bearer)
            .call();
        Ok(self.check(r)?.body_mut().read_json()?)
    }

    /// PUT a JSON body.
    pub fn put(&self, path: &str, body: &impl Serialize) -> Result<()> {
        let r = self
            .agent
            .put(&self.url(path))
            .header("Authorization", &self.bearer)
            .send_json(body);
        self.check(r).map(drop)
    }

    /// POST without a body, with the answer read as JSON.
    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self
            .agent
            .post(&self.url(path))
            .header("Authorization", &self.bearer)
            .send_empty();
        Ok(self.check(r)?.body_mut().read_json()?)
    }

    /// POST a JSON body, with the answer read as JSON.
    pub fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let r = self
            .agent
            .post(&self.url(path))
            .header("Authorization", &self.bearer)
            .send_json(body);
        Ok(self.check(r)?.body_mut().read_json()?)
    }

    /// POST a JSON body; the answer's body is not read.
    pub fn send(&self, path: &str, body: &impl Serialize) -> Result<()> {
        let r = self
            .agent
            .post(&self.url(path))
            .header("Authorization", &self.bearer)
            .send_json(body);
        self.check(r).map(drop)
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<()> {
        let r = self
            .agent
            .delete(&self.url(path))
            .header("Authorization", &self.bearer)
            .call();
        self.check(r).map(drop)
    }
}
