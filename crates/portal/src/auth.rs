//! Who is calling, and what they may see. Three credentials are taken:
//!
//! - the control token (`Authorization: Bearer <token>`, the CLI's): an operator;
//! - an API token (`Authorization: Bearer msk_...`), made with `mailsilo user token`: the
//!   role and organisation it was made for;
//! - a session cookie (`mailsilo_session`, HttpOnly, SameSite=Strict) from
//!   `POST /api/v1/login`: the account's role and organisation. A session's state changes
//!   (anything but GET and HEAD) must also carry its CSRF token in `X-CSRF-Token`.
//!
//! Secrets are 32 random bytes; the store keeps only their SHA-256. Passwords are hashed
//! with argon2id. Failed logins are throttled per account and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};
use store::{Role, Store};

/// The session cookie's name.
pub const COOKIE: &str = "mailsilo_session";
/// The header a session's state changes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The prefix of API tokens (so a leaked one is recognisable, and told from the control
/// token).
pub const TOKEN_PREFIX: &str = "msk_";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The caller of a request, once its credential was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The account (`control` for the control token).
    pub account: String,
    pub role: Role,
    pub organisation: Option<String>,
    /// The organisation's domains (lower-case), for an admin.
    pub domains: Vec<String>,
    /// The session's CSRF token, when the caller came with a session cookie.
    pub csrf: Option<String>,
    /// The session's key (the digest of its cookie), when the caller came with one.
    pub session: Option<String>,
}

impl Principal {
    /// The operator the control token stands for.
    pub fn control() -> Principal {
        Principal {
            account: "control".into(),
            role: Role::Operator,
            organisation: None,
            domains: Vec::new(),
            csrf: None,
            session: None,
        }
    }

    /// Whether mail for `address` is this caller's to see: an operator's all of it, an
    /// admin's that of the organisation's domains, a user's that of their own address.
    pub fn sees(&self, address: &str) -> bool {
        let address = address.trim_matches(['<', '>']).to_ascii_lowercase();
        match self.role {
            Role::Operator => true,
            Role::Admin => address
                .rsplit_once('@')
                .is_some_and(|(_, d)| self.domains.iter().any(|o| *o == d)),
            Role::User => address == self.account.to_ascii_lowercase(),
        }
    }
}

/// A new secret: 32 random bytes, hex.
pub fn secret() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// What the store keeps of a secret.
pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The argon2id hash (PHC string) of a password.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (false for an empty or unreadable hash). Takes the
/// same time whether or not an account exists: call it with [`DUMMY_HASH`] when none does.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash no password matches, checked when the account does not exist, so that the time a
/// refusal takes does not tell whether it does.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bm8tc3VjaC1hY2NvdW50$8YRnXlZxIaFJ5Nq9Wm0tCmXl0N2Rr1P8mUuA2nS3x1Q";

/// The principal an account stands for, with its organisation's domains.
pub async fn principal(
    store: &dyn Store,
    account: &str,
    role: Role,
    organisation: Option<String>,
    csrf: Option<String>,
) -> Result<Principal, store::Error> {
    let domains = match (&organisation, role) {
        (Some(o), Role::Admin) => store
            .organisations()
            .await?
            .into_iter()
            .find(|x| x.name == *o)
            .map(|x| x.domains)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(Principal {
        account: account.to_string(),
        role,
        organisation,
        domains,
        csrf,
        session: None,
    })
}

/// Failed logins: at most [`ACCOUNT_FAILURES`] per account and [`ADDRESS_FAILURES`] per
/// client address within [`THROTTLE_WINDOW`]; past either, logins are refused until the
/// window of the first failure ends. Counted per node, in memory.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

pub const ACCOUNT_FAILURES: u32 = 5;
pub const ADDRESS_FAILURES: u32 = 20;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The most keys remembered (older ones are forgotten first).
const THROTTLE_KEYS: usize = 100_000;

impl Throttle {
    /// The seconds until `account` from `address` may try again, when it may not now.
    pub fn wait(&self, account: &str, address: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let failures = self.failures.lock().expect("throttle");
        [
            (format!("account {account}"), ACCOUNT_FAILURES),
            (format!("address {address}"), ADDRESS_FAILURES),
        ]
        .iter()
        .filter_map(|(key, limit)| {
            let (n, first) = failures.get(key)?;
            let left = THROTTLE_WINDOW.checked_sub(now.duration_since(*first))?;
            (*n >= *limit).then(|| left.as_secs().max(1))
        })
        .max()
    }

    /// Counts a failed login.
    pub fn failed(&self, account: &str, address: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("throttle");
        if failures.len() >= THROTTLE_KEYS {
            failures.retain(|_, (_, first)| now.duration_since(*first) < THROTTLE_WINDOW);
        }
        for key in [format!("account {account}"), format!("address {address}")] {
            let e = failures.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= THROTTLE_WINDOW {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    /// Forgets an account's failures after it logged in.
    pub fn succeeded(&self, account: &str) {
        self.failures
            .lock()
            .expect("throttle")
            .remove(&format!("account {account}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("alice-demo").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "alice-demo"));
        assert!(!verify_password(&h, "alice-demO"));
        assert!(!verify_password("", "x"));
        assert!(!verify_password(DUMMY_HASH, ""));
        assert!(
            PasswordHash::new(DUMMY_HASH).is_ok(),
            "the dummy hash parses"
        );
    }

    #[test]
    fn secrets_differ_and_digests_are_hex() {
        let (a, b) = (secret(), secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), a);
    }

    #[test]
    fn scopes() {
        let admin = Principal {
            account: "admin@example.com".into(),
            role: Role::Admin,
            organisation: Some("example".into()),
            domains: vec!["example.com".into()],
            csrf: None,
            session: None,
        };
        assert!(admin.sees("Bob@Example.COM"));
        assert!(!admin.sees("bob@example.org"));
        assert!(!admin.sees("bob@sub.example.com"));
        let user = Principal {
            account: "alice@example.com".into(),
            role: Role::User,
            ..admin.clone()
        };
        assert!(user.sees("<ALICE@example.com>"));
        assert!(!user.sees("bob@example.com"));
        assert!(Principal::control().sees("anyone@anywhere"));
    }

    #[test]
    fn failures_are_throttled_per_account_and_address() {
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..ACCOUNT_FAILURES {
            assert_eq!(t.wait("alice", a), None);
            t.failed("alice", a);
        }
        assert!(t.wait("alice", a).is_some());
        assert!(t.wait("alice", b).is_some(), "the account, from anywhere");
        assert_eq!(t.wait("bob", b), None);
        for i in 0..ADDRESS_FAILURES {
            t.failed(&format!("user{i}"), b);
        }
        assert!(t.wait("carol", b).is_some(), "the address, for any account");
        t.succeeded("alice");
        assert_eq!(t.wait("alice", a), None);
    }
}
