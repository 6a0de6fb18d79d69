//! Durable storage for mailsilo. This crate owns the queue's storage interface ([`QueueStore`])
//! and its implementations, so that no spool path, table or file format leaks into the roles
//! that receive or deliver mail.
//!
//! The embedded implementation ([`Embedded`]) keeps the queue in one SQLite database in WAL
//! mode with `synchronous=FULL`: a write is on stable storage when its transaction commits.
//! A single writer thread takes every waiting operation, runs them in one transaction and
//! commits once, so concurrent SMTP sessions share each fsync (group commit).

mod embedded;

pub use embedded::Embedded;

use async_trait::async_trait;
pub use bytes::Bytes;

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store has shut down")]
    Closed,
    #[error("transaction failed: {0}")]
    Transaction(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A recipient as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    pub address: String,
    /// DSN NOTIFY flags, kept as the SMTP layer encodes them (`smtp::server::notify`).
    pub notify: u8,
    /// The ORCPT parameter exactly as given (`rfc822;xtext`).
    pub orcpt: Option<String>,
}

/// The DSN RET parameter the sender gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message in a failure DSN.
    Full,
    /// Headers only.
    Headers,
}

/// A message accepted by the SMTP server, ready to be made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: String,
    /// The reverse path; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<NewRecipient>,
    /// DSN ENVID exactly as given (xtext).
    pub envid: Option<String>,
    /// DSN RET, when the sender gave it.
    pub ret: Option<Ret>,
    /// Unix seconds.
    pub received_at: i64,
    /// When the queue should pick it up from the store (unix seconds); a message handed
    /// straight to delivery is given a later time, and [`QueueStore::recover`] brings it
    /// forward if the process stopped before trying it.
    pub next_attempt: i64,
    /// The whole message as it will be relayed, Received: header included, CRLF line ends
    /// (shared, not copied, between the store and delivery).
    pub body: Bytes,
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    Failed,
}

/// A recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub index: u32,
    pub address: String,
    pub notify: u8,
    pub orcpt: Option<String>,
    pub status: Status,
    pub attempts: u32,
    /// Unix seconds.
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// A "delayed" DSN has been sent for it.
    pub warned: bool,
}

/// A queued message with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub sender: String,
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    pub received_at: i64,
    pub body: Bytes,
    pub recipients: Vec<Recipient>,
}

/// One line of a queue listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: String,
    pub sender: String,
    pub size: u64,
    pub received_at: i64,
    pub next_attempt: i64,
    /// Pending recipients with their last error.
    pub pending: Vec<(String, Option<String>)>,
}

/// What became of one recipient in a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again at `next_attempt` (unix seconds).
    Deferred {
        next_attempt: i64,
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// A "delayed" DSN was sent for it; its schedule is unchanged.
    Warned,
}

/// The queue's durable state.
///
/// Every method that changes state returns once the change is on stable storage.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Stores a new message; `Ok` means it survives a crash.
    async fn enqueue(&self, message: NewMessage) -> Result<()>;
    /// Ids of messages with a pending recipient due at or before `now`, oldest first.
    async fn due(&self, now: i64, limit: usize) -> Result<Vec<String>>;
    /// The earliest `next_attempt` of any pending recipient.
    async fn next_due(&self) -> Result<Option<i64>>;
    async fn get(&self, id: &str) -> Result<Option<Message>>;
    /// Records attempt outcomes by recipient index; a message with no pending recipient
    /// left is removed. Unknown ids (deleted meanwhile) are ignored.
    async fn record(&self, id: &str, outcomes: Vec<(u32, Outcome)>) -> Result<()>;
    async fn list(&self) -> Result<Vec<Summary>>;
    /// Removes a message; false if there was none.
    async fn delete(&self, id: &str) -> Result<bool>;
    /// Makes every pending recipient due at `now`; returns how many.
    async fn flush(&self, now: i64) -> Result<usize>;
    /// Makes recipients that were never attempted due at `now` (after a restart, messages
    /// that were in flight when the process stopped).
    async fn recover(&self, now: i64) -> Result<usize>;
}
