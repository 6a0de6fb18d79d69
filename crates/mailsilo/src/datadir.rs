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
