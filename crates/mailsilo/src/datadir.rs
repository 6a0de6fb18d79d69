//! The data directory: private to the user running mailsilo (0700, and the process umask
//! makes everything created in it 0600/0700, whatever the caller's umask), and the control
//! token kept in it, made on first start.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Everything this process creates is private: files 0600, directories 0700.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask; called before any
    // thread is started.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates the data directory (0700), or makes an existing one private.
pub fn prepare(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))
}

/// Where the control token lives.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join("control.token")
}

/// The control token of the gateway using `dir`: read, or made (32 random octets in hex,
/// mode 0600) on first start.
pub fn control_token(dir: &Path) -> Result<String> {
    let path = token_path(dir);
    if path.exists() {
        return read_token(&path);
    }
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for the control token")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// This node's id: `given`, else the one kept in `dir/node.id`, made on first start from the
/// host name and a random suffix (so nodes of one host, with their own data dirs, differ).
pub fn node_id(dir: &Path, given: Option<String>) -> Result<String> {
    if let Some(id) = given {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            bail!("--node-id {id:?}: use letters, digits, '-', '_' and '.' (at most 64)");
        }
        return Ok(id);
    }
    let path = dir.join("node.id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().split('.').next().unwrap_or("node").to_string())
        .unwrap_or_else(|_| "node".into());
    let mut raw = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for the node id")?;
    let id = format!("{host}-{:02x}{:02x}{:02x}", raw[0], raw[1], raw[2]);
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Reads a token file.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no control token at {}: run the command from the directory where `mailsilo up` runs, or give --data-dir or --token-file",
            path.display()
        )
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        prepare(&data).unwrap();
        let t = control_token(&data).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(control_token(&data).unwrap(), t, "read back, not made anew");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&token_path(&data)), 0o600);
        assert_eq!(mode(&data), 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&data).unwrap();
        assert_eq!(mode(&data), 0o700, "an existing directory is made private");
    }
}
