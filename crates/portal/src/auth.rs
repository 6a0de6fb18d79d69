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

use std::net::IpAddr;
use std::time::Duration;

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
    /// The organisation's domains (lower-case), for an admin or a user.
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
    /// admin's that of the organisation's domains, a user's that of their own address while
    /// its domain is the organisation's (a domain the provider moved to another
    /// organisation takes its mail along).
    pub fn sees(&self, address: &str) -> bool {
        let address = address.trim_matches(['<', '>']).to_ascii_lowercase();
        let ours = address
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.iter().any(|o| *o == d));
        match self.role {
            Role::Operator => true,
            Role::Admin => ours,
            Role::User => ours && address == self.account.to_ascii_lowercase(),
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
    let check = |h: &PasswordHash| {
        Argon2::default()
            .verify_password(password.as_bytes(), h)
            .is_ok()
    };
    match PasswordHash::new(hash) {
        Ok(h) => check(&h),
        // A disabled account's empty hash takes as long to refuse as a wrong password.
        Err(_) => {
            let dummy = PasswordHash::new(DUMMY_HASH).expect("the dummy hash reads");
            std::hint::black_box(check(&dummy));
            false
        }
    }
}

/// A hash no password matches, checked when the account does not exist, so that the time a
/// refusal takes does not tell whether it does.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bm8tc3VjaC1hY2NvdW50$8YRnXlZxIaFJ5Nq9Wm0tCmXl0N2Rr1P8mUuA2nS3x1Q";

/// The principal an account stands for, with its organisation's domains. A user is an
/// address: their organisation is the one their domain belongs to now, so a user follows a
/// domain the provider moves to another organisation (and sees nothing while it belongs
/// to none).
pub async fn principal(
    store: &dyn Store,
    account: &str,
    role: Role,
    organisation: Option<String>,
    csrf: Option<String>,
) -> Result<Principal, store::Error> {
    let organisations = match role {
        Role::Operator => Vec::new(),
        Role::Admin | Role::User => store.organisations().await?,
    };
    let (organisation, domains) = match role {
        Role::Operator => (organisation, Vec::new()),
        Role::Admin => {
            let domains = organisations
                .into_iter()
                .find(|x| Some(&x.name) == organisation.as_ref())
                .map(|x| x.domains)
                .unwrap_or_default();
            (organisation, domains)
        }
        Role::User => {
            let domain = account.rsplit_once('@').map_or("", |(_, d)| d);
            organisations
                .into_iter()
                .find(|x| x.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
                .map_or((organisation, Vec::new()), |x| (Some(x.name), x.domains))
        }
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

/// Login attempts, counted before the password is checked (so parallel tries cannot pass
/// a limit together): at most [`ACCOUNT_FAILURES`] per account from one client network and
/// [`ADDRESS_FAILURES`] per client network within [`THROTTLE_WINDOW`], a network being an
/// IPv4 address or an IPv6 /64. A login that succeeds takes its attempt back. Keyed by
/// network, an attacker elsewhere cannot lock an account out. Counted in the store, so
/// the limits hold for a whole fleet (an attacker gains nothing by spreading over the
/// nodes); argon2 runs at most [`HASHING_AT_ONCE`] at a time on each node.
pub struct Throttle {
    hashing: tokio::sync::Semaphore,
}

pub const ACCOUNT_FAILURES: u32 = 5;
pub const ADDRESS_FAILURES: u32 = 20;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Password checks at once (argon2 takes 19 MiB and tens of milliseconds each).
pub const HASHING_AT_ONCE: usize = 4;
/// How long a login waits for a password check to be free before it is refused (503).
pub const HASHING_WAIT: Duration = Duration::from_secs(2);

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
        }
    }
}

/// The network a client is counted by.
fn network(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl Throttle {
    fn keys(account: &str, ip: IpAddr) -> [(String, u32); 2] {
        let net = network(ip);
        [
            (format!("account {account} from {net}"), ACCOUNT_FAILURES),
            (format!("network {net}"), ADDRESS_FAILURES),
        ]
    }

    /// Counts an attempt of `account` from `ip` at `now` (unix seconds); `Err(seconds)` to
    /// wait when it is past a limit.
    pub async fn attempt(
        &self,
        store: &dyn Store,
        account: &str,
        ip: IpAddr,
        now: i64,
    ) -> store::Result<Result<(), u64>> {
        let window = THROTTLE_WINDOW.as_secs() as i64;
        Ok(
            match store
                .count_login(&Throttle::keys(account, ip), now, window)
                .await?
            {
                Some(wait) => Err(wait.max(1) as u64),
                None => Ok(()),
            },
        )
    }

    /// Takes back a successful login's attempt: the account's count from that network
    /// starts again, and the network's loses one.
    pub async fn succeeded(
        &self,
        store: &dyn Store,
        account: &str,
        ip: IpAddr,
    ) -> store::Result<()> {
        let [(account_key, _), (network_key, _)] = Throttle::keys(account, ip);
        store.login_succeeded(&account_key, &network_key).await
    }

    /// A permit to check a password, once fewer than [`HASHING_AT_ONCE`] are under way;
    /// `None` after waiting [`HASHING_WAIT`] for one (a burst of logins from many places
    /// queues for a moment rather than being refused at once).
    pub async fn hashing(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(HASHING_WAIT, self.hashing.acquire())
            .await
            .ok()?
            .ok()
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
        // A disabled account (no hash) is refused no faster than a wrong password.
        let hash = hash_password("a long password").unwrap();
        let time = |h: &str| {
            let start = std::time::Instant::now();
            assert!(!verify_password(h, "a wrong password"));
            start.elapsed()
        };
        let (wrong, disabled) = (time(&hash), time(""));
        assert!(
            disabled * 2 > wrong,
            "disabled {disabled:?}, wrong {wrong:?}"
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
        // Once the provider moves the domain to another organisation, its mail goes along.
        let moved = Principal {
            domains: vec!["example.org".into()],
            ..user.clone()
        };
        assert!(!moved.sees("alice@example.com"));
        assert!(Principal::control().sees("anyone@anywhere"));
    }

    #[tokio::test]
    async fn attempts_are_throttled_per_account_and_network() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Embedded::open(dir.path()).unwrap();
        let s = &store;
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let now = 1_000_000;
        let attempt = async |account: &str, ip| t.attempt(s, account, ip, now).await.unwrap();
        for _ in 0..ACCOUNT_FAILURES {
            assert_eq!(attempt("alice", a).await, Ok(()));
        }
        assert_eq!(attempt("alice", a).await, Err(THROTTLE_WINDOW.as_secs()));
        // From elsewhere, alice may still log in: no one locks her out from afar.
        assert_eq!(attempt("alice", b).await, Ok(()));
        t.succeeded(s, "alice", b).await.unwrap();
        // A network is limited whatever the accounts it tries.
        for i in 0..ADDRESS_FAILURES {
            assert_eq!(attempt(&format!("user{i}"), b).await, Ok(()), "{i}");
        }
        assert!(attempt("carol", b).await.is_err());
        // An IPv6 /64 is one network.
        let (x, y): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ffff:2".parse().unwrap(),
        );
        for _ in 0..ACCOUNT_FAILURES {
            attempt("bob", x).await.unwrap();
        }
        assert!(
            attempt("bob", y).await.is_err(),
            "another address of the same /64"
        );
        // A success takes the account's count back.
        t.succeeded(s, "bob", x).await.unwrap();
        assert_eq!(attempt("bob", y).await, Ok(()));
        // The window over, alice may try again.
        let later = now + THROTTLE_WINDOW.as_secs() as i64;
        assert_eq!(t.attempt(s, "alice", a, later).await.unwrap(), Ok(()));
        assert!(t.hashing().await.is_some());
    }

    #[tokio::test]
    async fn password_checks_wait_their_turn_then_give_up() {
        let t = Throttle::default();
        let mut held: Vec<_> = (0..HASHING_AT_ONCE)
            .map(|_| t.hashing.try_acquire().unwrap())
            .collect();
        // A fifth login waits, and gets the first check given back.
        let give_back = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            held.pop();
        };
        let (permit, ()) = tokio::join!(t.hashing(), give_back);
        assert!(permit.is_some());
        // With every check held, a login gives up after HASHING_WAIT.
        let start = std::time::Instant::now();
        assert!(t.hashing().await.is_none());
        assert!(start.elapsed() >= HASHING_WAIT);
    }
}
