//! The demo mailbox server: stands in for a client organisation's own mail server and keeps
//! each delivered message as one file in Maildir layout, `<dir>/<recipient>/new/<name>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use smtp::{Accepted, Handler, Reply};

pub struct Maildir {
    pub root: PathBuf,
}

/// A directory name for a recipient address that cannot leave the mailbox root.
fn mailbox_name(address: &str) -> String {
    let name: String = address
        .to_lowercase()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

/// Writes `bytes` into `<mailbox>/new/` the Maildir way: into tmp/, fsync, rename into new/,
/// fsync the directory. Durable when it returns.
fn deliver_file(mailbox: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mailbox.join(sub))?;
    }
    let tmp = mailbox.join("tmp").join(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, mailbox.join("new").join(name))?;
    std::fs::File::open(mailbox.join("new"))?.sync_all()
}

/// The DSN parameters the sink was given, exactly as they came, so a test (or an operator
/// trying the demo) can see what the relay passed on.
fn dsn_header(env: &smtp::Envelope, r: &smtp::Rcpt) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &env.envid {
        parts.push(format!("ENVID={e}"));
    }
    match env.ret {
        Some(smtp::command::Ret::Full) => parts.push("RET=FULL".into()),
        Some(smtp::command::Ret::Headers) => parts.push("RET=HDRS".into()),
        None => {}
    }
    if r.notify != 0 {
        parts.push(format!("NOTIFY-FLAGS={}", r.notify));
    }
    if let Some(o) = &r.orcpt {
        parts.push(format!("ORCPT={o}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("X-Mailsilo-Sink-DSN: {}\r\n", parts.join(" "))
    }
}

#[async_trait]
impl Handler for Maildir {
    fn check_recipient(&self, _: &smtp::address::Recipient) -> Result<(), Reply> {
        Ok(())
    }

    async fn accept(&self, m: Accepted) -> Result<&'static str, Reply> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let host = "sink";
            for (i, r) in m.envelope.recipients.iter().enumerate() {
                let name = format!("{}.{}_{i}.{host}", smtp::date::now(), m.id);
                let mut bytes = format!(
                    "Return-Path: <{}>\r\nDelivered-To: {}\r\n{}",
                    m.envelope.sender,
                    r.address,
                    dsn_header(&m.envelope, r)
                )
                .into_bytes();
                bytes.extend_from_slice(&m.body);
                deliver_file(&root.join(mailbox_name(&r.address)), &name, &bytes)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| {
            tracing::warn!(error = %e, "mailbox write failed");
            Reply::new(451, "4.3.0 Mailbox write failed")
        })?;
        Ok("stored in the demo mailbox")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_root() {
        assert_eq!(mailbox_name("Alice@Example.com"), "alice@example.com");
        assert_eq!(mailbox_name("../x@example.com"), "_.._x@example.com");
        assert_eq!(mailbox_name("a/b@example.com"), "a_b@example.com");
    }

    #[test]
    fn writes_into_new() {
        let dir = tempfile::tempdir().unwrap();
        deliver_file(&dir.path().join("a@x"), "m1", b"hello").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a@x/new/m1")).unwrap(),
            b"hello"
        );
        assert!(
            std::fs::read_dir(dir.path().join("a@x/tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }
}
