//! The embedded store: SQLite in WAL mode, one writer thread, group commit. For one machine:
//! its "database time" is this host's clock.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use async_trait::async_trait;
use rusqlite::{Connection, MAIN_DB, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::{
    Account, ApiToken, Attempt, AuditEntry, Bytes, Claimed, DomainEntry, DomainQueue, Error, Event,
    Example, Held, HeldFilter, HeldSummary, Lease, Message, NewMessage, Organisation, Outcome,
    Recipient, Result, Ret, Role, ServerEntry, Session, StatKey, StatQuery, Status, Store, Summary,
    Trace, TraceQuery, being_delivered, deleted_event, dsn_event, expired_held_event, held_event,
    now_ms, outcome_event, received_event, unheld_event,
};

/// The most operations run in one transaction.
const BATCH: usize = 512;

/// The schema version this code writes (`PRAGMA user_version`).
const VERSION: i64 = 9;

/// The schema, version by version: `MIGRATIONS[n]` takes a database from version n to n+1.
/// Version 0 is the first release's (RET kept as `ret_headers_only`, which held an invented
/// RET=FULL as 0, so only HDRS is carried over).
const MIGRATIONS: [&str; 9] = [
    // 0 -> 1: RET as given.
    "ALTER TABLE message ADD COLUMN ret INTEGER;
     UPDATE message SET ret = CASE ret_headers_only WHEN 1 THEN 1 END;
     ALTER TABLE message DROP COLUMN ret_headers_only;",
    // 1 -> 2: leases and the message's due time; the trace.
    "ALTER TABLE message ADD COLUMN next_attempt INTEGER;
     ALTER TABLE message ADD COLUMN lease_owner TEXT;
     ALTER TABLE message ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE message ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
     UPDATE message SET next_attempt =
         (SELECT MIN(next_attempt) FROM recipient r WHERE r.message_id = message.id AND r.status = 0);
     DROP INDEX IF EXISTS recipient_due;
     CREATE INDEX message_due ON message (next_attempt);
     CREATE TABLE trace_message (
         id TEXT PRIMARY KEY,
         received_at INTEGER NOT NULL,
         sender TEXT NOT NULL,
         sender_lc TEXT NOT NULL,
         size INTEGER NOT NULL,
         client TEXT NOT NULL,
         helo TEXT NOT NULL,
         tls TEXT,
         server TEXT NOT NULL,
         node TEXT NOT NULL
     );
     CREATE INDEX trace_message_received ON trace_message (received_at);
     CREATE INDEX trace_message_sender ON trace_message (sender_lc);
     CREATE TABLE trace_recipient (
         id TEXT NOT NULL,
         address TEXT NOT NULL,
         address_lc TEXT NOT NULL,
         PRIMARY KEY (id, address)
     ) WITHOUT ROWID;
     CREATE INDEX trace_recipient_address ON trace_recipient (address_lc);
     CREATE TABLE trace_event (
         seq INTEGER PRIMARY KEY,
         id TEXT NOT NULL,
         at INTEGER NOT NULL,
         node TEXT NOT NULL,
         kind TEXT NOT NULL,
         recipient TEXT,
         detail TEXT NOT NULL
     );
     CREATE INDEX trace_event_id ON trace_event (id);",
    // 2 -> 3: the run-time configuration.
    "CREATE TABLE runtime_domain (
         name TEXT PRIMARY KEY,
         settings TEXT NOT NULL,
         removed INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE runtime_server (
         cluster TEXT NOT NULL,
         server TEXT NOT NULL,
         loading INTEGER NOT NULL,
         state TEXT NOT NULL,
         PRIMARY KEY (cluster, server)
     ) WITHOUT ROWID;
     CREATE TABLE runtime_version (version INTEGER NOT NULL);
     INSERT INTO runtime_version VALUES (0);
     CREATE TABLE node (id TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE);",
    // 3 -> 4: the classifier.
    "CREATE TABLE classifier_example (
         digest TEXT PRIMARY KEY,
         spam INTEGER NOT NULL,
         features BLOB NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE classifier_model (
         version INTEGER PRIMARY KEY,
         data BLOB NOT NULL
     );
     CREATE TABLE quarantine (
         id TEXT PRIMARY KEY,
         received_at INTEGER NOT NULL,
         sender TEXT NOT NULL,
         recipients TEXT NOT NULL,
         envelope TEXT NOT NULL,
         verdict TEXT NOT NULL,
         score REAL NOT NULL,
         reason TEXT NOT NULL,
         size INTEGER NOT NULL,
         body BLOB NOT NULL
     );",
    // 4 -> 5: greylisting.
    "CREATE TABLE greylist (key TEXT PRIMARY KEY, first_seen INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE greylist_pass (client TEXT PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID;",
    // 5 -> 6: the portal's organisations, accounts, sessions and API tokens.
    "CREATE TABLE organisation (name TEXT PRIMARY KEY, domains TEXT NOT NULL);
     CREATE TABLE account (
         name TEXT PRIMARY KEY,
         role TEXT NOT NULL,
         organisation TEXT,
         password TEXT NOT NULL,
         created INTEGER NOT NULL
     );
     CREATE TABLE session (
         key TEXT PRIMARY KEY,
         account TEXT NOT NULL,
         csrf TEXT NOT NULL,
         expires INTEGER NOT NULL
     );
     CREATE INDEX session_account ON session (account);
     CREATE TABLE api_token (
         key TEXT PRIMARY KEY,
         account TEXT NOT NULL,
         label TEXT NOT NULL,
         role TEXT NOT NULL,
         organisation TEXT,
         created INTEGER NOT NULL,
         expires INTEGER
     );",
    // 6 -> 7: servers added and removed at run time; the statistics; digests.
    "ALTER TABLE runtime_server ADD COLUMN address TEXT;
     ALTER TABLE runtime_server ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE stat (
         metric TEXT NOT NULL,
         hour INTEGER NOT NULL,
         domain TEXT NOT NULL,
         label TEXT NOT NULL,
         n INTEGER NOT NULL,
         PRIMARY KEY (metric, hour, domain, label)
     ) WITHOUT ROWID;
     ALTER TABLE quarantine ADD COLUMN subject TEXT NOT NULL DEFAULT '';
     ALTER TABLE organisation ADD COLUMN digest TEXT;
     CREATE TABLE secret (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE digest (organisation TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
     ALTER TABLE trace_recipient ADD COLUMN domain_lc TEXT NOT NULL DEFAULT '';
     ALTER TABLE trace_recipient ADD COLUMN received_at INTEGER NOT NULL DEFAULT 0;
     UPDATE trace_recipient SET
         domain_lc = lower(replace(address, rtrim(address, replace(address, '@', '')), '')),
         received_at = coalesce((SELECT t.received_at FROM trace_message t WHERE t.id = trace_recipient.id), 0);
     CREATE INDEX trace_recipient_domain ON trace_recipient (domain_lc, received_at);
     DROP INDEX trace_recipient_address;
     CREATE INDEX trace_recipient_address ON trace_recipient (address_lc, received_at);
     DROP INDEX trace_message_sender;
     CREATE INDEX trace_message_sender ON trace_message (sender_lc, received_at);
     CREATE TABLE quarantine_recipient (
         id TEXT NOT NULL,
         address_lc TEXT NOT NULL,
         domain_lc TEXT NOT NULL,
         PRIMARY KEY (id, address_lc)
     ) WITHOUT ROWID;
     WITH RECURSIVE split(id, rest, addr) AS (
         SELECT id, recipients || char(10), NULL FROM quarantine
         UNION ALL
         SELECT id, substr(rest, instr(rest, char(10)) + 1), substr(rest, 1, instr(rest, char(10)) - 1)
         FROM split WHERE rest <> ''
     )
     INSERT OR IGNORE INTO quarantine_recipient (id, address_lc, domain_lc)
     SELECT id, lower(addr), lower(replace(addr, rtrim(addr, replace(addr, '@', '')), ''))
     FROM split WHERE addr IS NOT NULL AND addr <> '';
     CREATE INDEX quarantine_recipient_address ON quarantine_recipient (address_lc, id);
     CREATE INDEX quarantine_recipient_domain ON quarantine_recipient (domain_lc, id);
     CREATE TABLE audit (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         at INTEGER NOT NULL,
         actor TEXT NOT NULL,
         action TEXT NOT NULL,
         object TEXT NOT NULL,
         domain TEXT NOT NULL,
         before TEXT,
         after TEXT
     );
     CREATE INDEX audit_domain ON audit (domain, seq);",
    // 7 -> 8: login attempts, counted for every node; traces found by subject and verdict.
    "CREATE TABLE login_attempt (key TEXT PRIMARY KEY, count INTEGER NOT NULL, first INTEGER NOT NULL);
     CREATE INDEX login_attempt_first ON login_attempt (first);
     ALTER TABLE trace_message ADD COLUMN subject TEXT NOT NULL DEFAULT '';
     ALTER TABLE trace_message ADD COLUMN verdict TEXT NOT NULL DEFAULT '';",
    // 8 -> 9: each trace keeps its scan's symbols (JSON).
    "ALTER TABLE trace_message ADD COLUMN symbols TEXT NOT NULL DEFAULT '';",
];

/// Version 0, as the first release created it (migrations start from here).
const BASE: &str = "
CREATE TABLE IF NOT EXISTS message (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    envid TEXT,
    ret_headers_only INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipient (
    message_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    notify INTEGER NOT NULL,
    orcpt TEXT,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt INTEGER NOT NULL,
    last_error TEXT,
    warned INTEGER NOT NULL,
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipient_due ON recipient (next_attempt) WHERE status = 0;
";

/// Brings a database to [`VERSION`], one migration at a time, in one transaction.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        tx.execute_batch(BASE)?;
    }
    while version < VERSION {
        tx.execute_batch(MIGRATIONS[version as usize])?;
        version += 1;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()
}

/// `s` with LIKE's wildcards (and the escape character) escaped by a backslash.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

const ACCOUNT_COLUMNS: &str = "SELECT name, role, organisation, password, created FROM account";

/// An account from a row of [`ACCOUNT_COLUMNS`]; an unknown role (a newer version's) reads
/// as the least one.
fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    let role: String = r.get(1)?;
    Ok(Account {
        name: r.get(0)?,
        role: Role::parse(&role).unwrap_or(Role::User),
        organisation: r.get(2)?,
        password: r.get(3)?,
        created: r.get(4)?,
    })
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        match e {
            rusqlite::Error::SqliteFailure(f, m)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::Conflict(m.unwrap_or_else(|| f.to_string()))
            }
            other => unavailable(other),
        }
    }
}

fn ret_to_sql(r: Option<Ret>) -> Option<i64> {
    r.map(|r| match r {
        Ret::Full => 0,
        Ret::Headers => 1,
    })
}

fn ret_from_sql(v: Option<i64>) -> Option<Ret> {
    v.map(|v| if v == 1 { Ret::Headers } else { Ret::Full })
}

/// Answers an operation once its transaction's commit outcome (an error message, if it
/// failed) is known.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// Runs an operation against the connection (or, when the transaction could not even start,
/// `None`), returning what answers the caller after the commit.
type Run = Box<dyn FnOnce(Option<&Connection>) -> Answer + Send>;

/// One request to the writer thread.
struct Op {
    /// Its caller was told (or will be) that the change is durable: the batch commits with
    /// `synchronous=FULL`.
    durable: bool,
    run: Run,
}

/// The embedded store. Cheap to share behind an `Arc`; dropping the last handle lets the
/// writer thread finish what is queued and close the database.
pub struct Embedded {
    tx: mpsc::Sender<Op>,
    commits: Arc<AtomicU64>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Embedded {
    /// Opens (creating or upgrading if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Embedded> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let mut conn = Connection::open(dir.join("queue.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL with synchronous=FULL: every commit fsyncs the WAL before it returns.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut conn)?;
        // The database and WAL files now exist; fsync the directory so their entries do too.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(conn, rx, &counter))
            .map_err(unavailable)?;
        Ok(Embedded {
            tx,
            commits,
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Announces a committed change of the run-time configuration.
    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Transactions committed so far (each batch of operations is one).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` in the writer thread's next transaction (inside a savepoint of its own, so a
    /// failing operation leaves the others of the batch intact) and answers after the commit.
    async fn call<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel::<Result<T>>();
        let run = move |conn: Option<&Connection>| -> Answer {
            let result = match conn {
                Some(c) => guarded(c, f),
                None => Err(Error::Unavailable("no transaction".into())),
            };
            Box::new(move |commit_error: Option<&str>| {
                let _ = reply.send(match commit_error {
                    Some(m) => Err(Error::Unavailable(m.to_string())),
                    None => result,
                });
            })
        };
        self.tx
            .send(Op {
                durable,
                run: Box::new(run),
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

fn guarded<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT op")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

/// The writer loop: take what is waiting, run it in one transaction, commit, answer.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>, commits: &AtomicU64) {
    let mut synchronous_full = true;
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // A batch with nothing anyone was promised durable (claims, outcome records, reads)
        // need not wait for its own fsync: the next durable commit (the WAL is sequential)
        // or a checkpoint makes it durable, and losing it to a power cut means a repeated
        // delivery attempt, which at-least-once allows.
        let durable = ops.iter().any(|op| op.durable);
        if durable != synchronous_full {
            let mode = if durable { "FULL" } else { "NORMAL" };
            if conn.pragma_update(None, "synchronous", mode).is_ok() {
                synchronous_full = durable;
            }
        }
        // IMMEDIATE: take the write lock at the start (waiting for it under the busy
        // timeout). A deferred transaction that reads first cannot upgrade to a writer once
        // another process (the CLI beside a running gateway) has committed in between:
        // SQLite refuses that at once with "database is locked", without waiting.
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                for op in ops {
                    (op.run)(None)(Some(&msg));
                }
                continue;
            }
        };
        let done: Vec<Answer> = ops.into_iter().map(|op| (op.run)(Some(&tx))).collect();
        // The commit is the durable point: with synchronous=FULL it fsyncs the WAL here.
        let commit = tx.commit().err().map(|e| e.to_string());
        commits.fetch_add(1, Ordering::Relaxed);
        for answer in done {
            answer(commit.as_deref());
        }
    }
}

/// Octets written into a message body per incremental blob write.
const BLOB_PIECE: usize = 256 * 1024;

fn enqueue(c: &Connection, m: &NewMessage, lease: Option<(&str, i64)>) -> Result<Option<i64>> {
    let (owner, until) = lease.map_or((None, 0), |(o, u)| (Some(o), u));
    // The body goes in as a zero blob written in place a piece at a time: binding it whole
    // would have SQLite copy the entire message into a record first.
    c.prepare_cached(
        "INSERT INTO message (id, sender, envid, ret, received_at, body, next_attempt, lease_owner, lease_until, lease_token)
         VALUES (?, ?, ?, ?, ?, zeroblob(?), ?, ?, ?, 1)",
    )?
    .execute(params![
        m.id,
        m.sender,
        m.envid,
        ret_to_sql(m.ret),
        m.received_at,
        m.body.len() as i64,
        m.next_attempt,
        owner,
        until
    ])?;
    let row = c.last_insert_rowid();
    let mut blob = c.blob_open(MAIN_DB, c"message", c"body", row, false)?;
    for (i, piece) in m.body.chunks(BLOB_PIECE).enumerate() {
        blob.write_at(piece, i * BLOB_PIECE)?;
    }
    drop(blob);
    let mut ins = c.prepare_cached(
        "INSERT INTO recipient (message_id, idx, address, notify, orcpt, status, attempts, next_attempt, last_error, warned)
         VALUES (?, ?, ?, ?, ?, 0, 0, ?, NULL, 0)",
    )?;
    for (i, r) in m.recipients.iter().enumerate() {
        ins.execute(params![
            m.id,
            i as u32,
            r.address,
            r.notify,
            r.orcpt,
            m.next_attempt
        ])?;
    }
    insert_trace(c, m)?;
    Ok(lease.map(|_| 1))
}

/// A new message's trace: its recipients, its arrival and the `received` event.
fn insert_trace(c: &Connection, m: &NewMessage) -> Result<()> {
    let mut trace_rcpt = c.prepare_cached(
        "INSERT OR IGNORE INTO trace_recipient (id, address, address_lc, domain_lc, received_at)
         VALUES (?, ?, ?, ?, ?)",
    )?;
    for r in &m.recipients {
        trace_rcpt.execute(params![
            m.id,
            r.address,
            r.address.to_lowercase(),
            crate::domain_lc(&r.address),
            m.received_at
        ])?;
    }
    let a = &m.arrival;
    c.prepare_cached(
        "INSERT INTO trace_message (id, received_at, sender, sender_lc, size, client, helo, tls, server, node, subject, verdict, symbols)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        m.id,
        m.received_at,
        m.sender,
        m.sender.to_lowercase(),
        m.body.len() as i64,
        a.client,
        a.helo,
        a.tls,
        a.server,
        a.node,
        crate::decoded_subject(&crate::subject_of(&m.body)),
        m.verdict.as_deref().unwrap_or(""),
        crate::symbols_text(&m.symbols)
    ])?;
    add_event(c, &m.id, &received_event(m))
}

fn held(c: &Connection, id: &str) -> Result<Option<Held>> {
    let row = c
        .query_row(
            "SELECT id, received_at, sender, envelope, verdict, score, reason, body FROM quarantine WHERE id = ?",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .optional()?;
    row.map(|(id, at, sender, env, verdict, score, reason, body)| {
        Held::from_columns(id, at, sender, &env, verdict, score, reason, body)
    })
    .transpose()
}

fn add_event(c: &Connection, id: &str, e: &Event) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO trace_event (id, at, node, kind, recipient, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![id, e.at, e.node, e.kind, e.recipient, e.detail])?;
    Ok(())
}

fn status_of(n: i64) -> Status {
    match n {
        0 => Status::Pending,
        1 => Status::Delivered,
        _ => Status::Failed,
    }
}

/// A queued message, with its body or (for claims) without.
fn get(c: &Connection, id: &str, with_body: bool) -> Result<Option<Message>> {
    let sql = if with_body {
        "SELECT sender, envid, ret, received_at, body FROM message WHERE id = ?"
    } else {
        "SELECT sender, envid, ret, received_at, x'' FROM message WHERE id = ?"
    };
    let m = c
        .prepare_cached(sql)?
        .query_row([id], |r| {
            Ok(Message {
                id: id.to_string(),
                sender: r.get(0)?,
                envid: r.get(1)?,
                ret: ret_from_sql(r.get(2)?),
                received_at: r.get(3)?,
                body: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                recipients: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut m) = m else { return Ok(None) };
    let mut st = c.prepare_cached(
        "SELECT idx, address, notify, orcpt, status, attempts, next_attempt, last_error, warned
         FROM recipient WHERE message_id = ? ORDER BY idx",
    )?;
    m.recipients = st
        .query_map([id], |r| {
            Ok(Recipient {
                index: r.get(0)?,
                address: r.get(1)?,
                notify: r.get(2)?,
                orcpt: r.get(3)?,
                status: status_of(r.get(4)?),
                attempts: r.get(5)?,
                next_attempt: r.get(6)?,
                last_error: r.get(7)?,
                warned: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(m))
}

fn claim(c: &Connection, owner: &str, ttl_ms: i64, now: i64, limit: usize) -> Result<Vec<Claimed>> {
    let db_now = now_ms();
    let ids: Vec<String> = c
        .prepare_cached(
            "SELECT id FROM message WHERE next_attempt <= ? AND lease_until < ?
             ORDER BY next_attempt, id LIMIT ?",
        )?
        .query_map(params![now, db_now, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut take = c.prepare_cached(
        "UPDATE message SET lease_owner = ?, lease_until = ?, lease_token = lease_token + 1
         WHERE id = ? RETURNING lease_token",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let token: i64 = take.query_row(params![owner, db_now + ttl_ms, id], |r| r.get(0))?;
        if let Some(message) = get(c, &id, false)? {
            out.push(Claimed { message, token });
        }
    }
    Ok(out)
}

/// The message's lease token, if it is still queued.
fn token_of(c: &Connection, id: &str) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT lease_token FROM message WHERE id = ?")?
            .query_row([id], |r| r.get(0))
            .optional()?,
    )
}

/// Renews the leases `held`; returns the ids whose lease was lost.
fn renew(c: &Connection, held: &[(String, i64)], ttl_ms: i64) -> Result<Vec<String>> {
    let mut update =
        c.prepare_cached("UPDATE message SET lease_until = ? WHERE id = ? AND lease_token = ?")?;
    let until = now_ms() + ttl_ms;
    let mut lost = Vec::new();
    for (id, token) in held {
        if update.execute(params![until, id, token])? == 0 {
            lost.push(id.clone());
        }
    }
    Ok(lost)
}

fn record(c: &Connection, id: &str, token: i64, node: &str, a: &Attempt) -> Result<()> {
    if token_of(c, id)? != Some(token) {
        return Err(Error::LeaseLost(id.to_string()));
    }
    let mut done = c.prepare_cached(
        "UPDATE recipient SET status = ?, attempts = attempts + 1, last_error = ? WHERE message_id = ? AND idx = ? AND status = 0 RETURNING address",
    )?;
    let mut defer = c.prepare_cached(
        "UPDATE recipient SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE message_id = ? AND idx = ? AND status = 0 RETURNING address",
    )?;
    let mut warn = c.prepare_cached(
        "UPDATE recipient SET warned = 1 WHERE message_id = ? AND idx = ? RETURNING address",
    )?;
    for (idx, o) in &a.outcomes {
        let address: Option<String> = match o {
            Outcome::Delivered { .. } => done
                .query_row(params![1, None::<String>, id, idx], |r| r.get(0))
                .optional()?,
            Outcome::Failed { reason } => done
                .query_row(params![2, reason, id, idx], |r| r.get(0))
                .optional()?,
            Outcome::Deferred {
                next_attempt,
                reason,
            } => defer
                .query_row(params![next_attempt, reason, id, idx], |r| r.get(0))
                .optional()?,
            Outcome::Warned => warn.query_row(params![id, idx], |r| r.get(0)).optional()?,
        };
        if let Some(address) = address {
            add_event(c, id, &outcome_event(node, &a.relay, &address, o))?;
        }
    }
    for dsn in &a.dsns {
        enqueue(c, dsn, None)?;
        add_event(c, id, &dsn_event(node, dsn))?;
    }
    let next: Option<i64> = c
        .prepare_cached(
            "SELECT MIN(next_attempt) FROM recipient WHERE message_id = ? AND status = 0",
        )?
        .query_row([id], |r| r.get(0))?;
    match next {
        None => {
            remove(c, id)?;
        }
        Some(next) if a.release => {
            c.prepare_cached(
                "UPDATE message SET next_attempt = ?, lease_owner = NULL, lease_until = 0 WHERE id = ?",
            )?
            .execute(params![next, id])?;
        }
        Some(next) => {
            c.prepare_cached("UPDATE message SET next_attempt = ? WHERE id = ?")?
                .execute(params![next, id])?;
        }
    }
    Ok(())
}

fn list(c: &Connection, after: Option<&str>, limit: usize) -> Result<Vec<Summary>> {
    let db_now = now_ms();
    let mut st = c.prepare_cached(
        "SELECT id, sender, length(body), received_at, next_attempt, CASE WHEN lease_until > ? THEN lease_owner END
         FROM message WHERE id > ? ORDER BY id LIMIT ?",
    )?;
    let mut out: Vec<Summary> = st
        .query_map(params![db_now, after.unwrap_or(""), limit as i64], |r| {
            Ok(Summary {
                id: r.get(0)?,
                sender: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                received_at: r.get(3)?,
                next_attempt: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                owner: r.get(5)?,
                pending: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut pending = c.prepare_cached(
        "SELECT address, last_error FROM recipient WHERE message_id = ? AND status = 0 ORDER BY idx",
    )?;
    for s in &mut out {
        s.pending = pending
            .query_map([&s.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(out)
}

/// Removes a message from the queue (its trace stays).
fn remove(c: &Connection, id: &str) -> Result<bool> {
    c.prepare_cached("DELETE FROM recipient WHERE message_id = ?")?
        .execute([id])?;
    Ok(c.prepare_cached("DELETE FROM message WHERE id = ?")?
        .execute([id])?
        > 0)
}

fn flush(c: &Connection, now: i64) -> Result<usize> {
    let n = c
        .prepare_cached(
            "UPDATE recipient SET next_attempt = ? WHERE status = 0 AND next_attempt > ?",
        )?
        .execute(params![now, now])?;
    c.prepare_cached("UPDATE message SET next_attempt = ? WHERE next_attempt > ?")?
        .execute(params![now, now])?;
    Ok(n)
}

fn trace_of(c: &Connection, id: &str, events: bool) -> Result<Option<Trace>> {
    let t = c
        .prepare_cached(
            "SELECT sender, size, received_at, client, helo, tls, server, node, subject, verdict, symbols
             FROM trace_message WHERE id = ?",
        )?
        .query_row([id], |r| {
            Ok(Trace {
                id: id.to_string(),
                sender: r.get(0)?,
                recipients: Vec::new(),
                subject: r.get(8)?,
                verdict: r.get(9)?,
                size: r.get::<_, i64>(1)? as u64,
                received_at: r.get(2)?,
                arrival: crate::Arrival {
                    client: r.get(3)?,
                    helo: r.get(4)?,
                    tls: r.get(5)?,
                    server: r.get(6)?,
                    node: r.get(7)?,
                },
                symbols: crate::symbols_of(&r.get::<_, String>(10)?),
                events: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut t) = t else { return Ok(None) };
    t.recipients = c
        .prepare_cached("SELECT address FROM trace_recipient WHERE id = ? ORDER BY address")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if events {
        t.events = c
            .prepare_cached(
                "SELECT at, node, kind, recipient, detail FROM trace_event WHERE id = ? ORDER BY seq",
            )?
            .query_map([id], |r| {
                Ok(Event {
                    at: r.get(0)?,
                    node: r.get(1)?,
                    kind: r.get(2)?,
                    recipient: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(Some(t))
}

/// Finds traces, newest first, driven by the most selective index the query allows: one
/// recipient's, one sender's, each of the scope's domains' (the newest of each, merged), or
/// arrival time alone; the other fields (an end, the page's cursor, subject, client,
/// verdict) filter along the way.
fn find_traces(c: &Connection, q: &TraceQuery) -> Result<Vec<Trace>> {
    use rusqlite::types::Value;
    let since = q.since.unwrap_or(i64::MIN);
    let scope = q.domains.as_ref().map(|ds| {
        ds.iter()
            .map(|d| Value::from(d.to_lowercase()))
            .collect::<Vec<_>>()
    });
    // The next page starts after the cursor's message, in (time, id) order.
    let cursor = match &q.before {
        Some(id) => match c
            .prepare_cached("SELECT received_at FROM trace_message WHERE id = ?")?
            .query_row([id], |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(at) => Some((at, id.clone())),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    // The filters every shape adds, on its driving table `a` and on trace_message `t`.
    let filters = |a: &str| -> (String, Vec<Value>) {
        let (mut sql, mut args) = (String::new(), Vec::<Value>::new());
        if let Some(until) = q.until {
            sql.push_str(&format!(" AND {a}.received_at < ?"));
            args.push(until.into());
        }
        if let Some((at, id)) = &cursor {
            sql.push_str(&format!(
                " AND ({a}.received_at < ? OR ({a}.received_at = ? AND {a}.id < ?))"
            ));
            args.extend([(*at).into(), (*at).into(), id.clone().into()]);
        }
        if let Some(subject) = &q.subject {
            sql.push_str(" AND instr(lower(t.subject), ?) > 0");
            args.push(subject.to_lowercase().into());
        }
        if let Some(client) = &q.client {
            sql.push_str(" AND t.client = ?");
            args.push(client.clone().into());
        }
        if let Some(verdict) = &q.verdict {
            sql.push_str(" AND t.verdict = ?");
            args.push(verdict.to_lowercase().into());
        }
        (sql, args)
    };
    let marks = |n: usize| vec!["?"; n].join(", ");
    // The SQL without its LIMIT, and its arguments for a fetch of N rows.
    type Args = Box<dyn Fn(usize) -> Vec<Value>>;
    let fixed = |args: Vec<Value>| -> Args { Box::new(move |_| args.clone()) };
    let (sql, args): (String, Args) = match (&q.to, &q.from, &scope) {
        (Some(to), from, scope) => {
            let mut sql = String::from(
                "SELECT r.id, r.received_at FROM trace_recipient r JOIN trace_message t ON t.id = r.id
                 WHERE r.address_lc = ? AND r.received_at >= ?",
            );
            let mut args = vec![to.to_lowercase().into(), since.into()];
            if let Some(from) = from {
                sql.push_str(" AND t.sender_lc = ?");
                args.push(from.to_lowercase().into());
            }
            if let Some(ds) = scope {
                sql.push_str(&format!(" AND r.domain_lc IN ({})", marks(ds.len())));
                args.extend(ds.iter().cloned());
            }
            let (more, more_args) = filters("r");
            sql.push_str(&more);
            args.extend(more_args);
            sql.push_str(" ORDER BY r.received_at DESC, r.id DESC");
            (sql, fixed(args))
        }
        (None, Some(from), scope) => {
            let mut sql = String::from(
                "SELECT t.id, t.received_at FROM trace_message t WHERE t.sender_lc = ? AND t.received_at >= ?",
            );
            let mut args = vec![from.to_lowercase().into(), since.into()];
            if let Some(ds) = scope {
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM trace_recipient r WHERE r.id = t.id AND r.domain_lc IN ({}))",
                    marks(ds.len())
                ));
                args.extend(ds.iter().cloned());
            }
            let (more, more_args) = filters("t");
            sql.push_str(&more);
            args.extend(more_args);
            sql.push_str(" ORDER BY t.received_at DESC, t.id DESC");
            (sql, fixed(args))
        }
        (None, None, Some(ds)) if ds.is_empty() => return Ok(Vec::new()),
        (None, None, Some(ds)) => {
            // Each domain's newest through its index, merged (one sort of a domain's whole
            // mail would grow with the organisation).
            let (more, more_args) = filters("r");
            let one = format!(
                "SELECT * FROM (SELECT r.id, r.received_at FROM trace_recipient r JOIN trace_message t ON t.id = r.id
                 WHERE r.domain_lc = ? AND r.received_at >= ?{more} ORDER BY r.received_at DESC, r.id DESC LIMIT ?)"
            );
            let sql = format!(
                "SELECT id, received_at FROM ({}) ORDER BY received_at DESC, id DESC",
                vec![one; ds.len()].join(" UNION ALL ")
            );
            let ds = ds.clone();
            let args: Args = Box::new(move |fetch| {
                ds.iter()
                    .flat_map(|d| {
                        let mut a = vec![d.clone(), since.into()];
                        a.extend(more_args.iter().cloned());
                        a.push((fetch as i64).into());
                        a
                    })
                    .collect()
            });
            (sql, args)
        }
        (None, None, None) => {
            let (more, more_args) = filters("t");
            let mut args = vec![since.into()];
            args.extend(more_args);
            (
                format!(
                    "SELECT t.id, t.received_at FROM trace_message t WHERE t.received_at >= ?{more}
                     ORDER BY t.received_at DESC, t.id DESC"
                ),
                fixed(args),
            )
        }
    };
    // A message with several recipients in scope comes once per recipient: fetched until
    // `limit` distinct ones are found or there are no more.
    let mut fetch = q.limit;
    let ids = loop {
        let mut a = args(fetch);
        a.push((fetch as i64).into());
        let rows: Vec<String> = c
            .prepare_cached(&format!("{sql} LIMIT ?"))?
            .query_map(rusqlite::params_from_iter(a), |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let got = rows.len();
        let mut seen = std::collections::HashSet::with_capacity(got);
        let mut ids: Vec<String> = rows
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        if ids.len() >= q.limit || got < fetch || fetch >= q.limit * 64 {
            ids.truncate(q.limit);
            break ids;
        }
        fetch *= 2;
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(trace_of(c, &id, false)?);
    }
    Ok(out)
}

fn expire_traces(c: &Connection, before: i64) -> Result<usize> {
    let old = "SELECT id FROM trace_message WHERE received_at < ?1
               AND id NOT IN (SELECT id FROM message) AND id NOT IN (SELECT id FROM quarantine)";
    c.execute(
        &format!("DELETE FROM trace_event WHERE id IN ({old})"),
        [before],
    )?;
    c.execute(
        &format!("DELETE FROM trace_recipient WHERE id IN ({old})"),
        [before],
    )?;
    Ok(c.execute(
        &format!("DELETE FROM trace_message WHERE id IN ({old})"),
        [before],
    )?)
}

fn bump(c: &Connection) -> Result<()> {
    c.prepare_cached("UPDATE runtime_version SET version = version + 1")?
        .execute([])?;
    Ok(())
}

/// Writes a domain entry if the live entry's settings are still `before`; whether it did.
fn set_domain_if(c: &Connection, e: &DomainEntry, before: Option<&str>) -> Result<bool> {
    let changed = match before {
        Some(b) => c
            .prepare_cached(
                "UPDATE runtime_domain SET settings = ?2, removed = ?3
                 WHERE name = ?1 AND NOT removed AND settings = ?4",
            )?
            .execute(params![e.name, e.settings, e.removed, b])?,
        None => c
            .prepare_cached(
                "INSERT INTO runtime_domain (name, settings, removed) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,
                     removed = excluded.removed
                 WHERE runtime_domain.removed",
            )?
            .execute(params![e.name, e.settings, e.removed])?,
    };
    Ok(changed == 1)
}

fn set_server(c: &Connection, e: &ServerEntry) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO runtime_server (cluster, server, loading, state, address, removed)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (cluster, server) DO UPDATE SET loading = excluded.loading,
             state = excluded.state, address = excluded.address, removed = excluded.removed",
    )?
    .execute(params![
        e.cluster, e.server, e.loading, e.state, e.address, e.removed
    ])?;
    Ok(())
}

/// The domain part of `col` (after its last `@`), lower-case, in SQLite (which has no
/// reverse search): what is left once everything up to the last `@` is removed.
fn domain_sql(col: &str) -> String {
    format!("lower(replace({col}, rtrim({col}, replace({col}, '@', '')), ''))")
}

/// `AND domain IN (?, ...)` for a query's scope (none for every domain; a scope of no
/// domain matches nothing), with its arguments appended to `args`.
fn in_scope(q: &StatQuery, column: &str, args: &mut Vec<rusqlite::types::Value>) -> String {
    match &q.domains {
        None => String::new(),
        Some(ds) if ds.is_empty() => " AND 0".into(),
        Some(ds) => {
            args.extend(ds.iter().map(|d| d.to_lowercase().into()));
            format!(" AND {column} IN ({})", vec!["?"; ds.len()].join(", "))
        }
    }
}

fn ttl_ms(lease: &Lease) -> i64 {
    lease.ttl.as_millis() as i64
}

#[async_trait]
impl Store for Embedded {
    async fn enqueue(&self, message: NewMessage, lease: Option<&Lease>) -> Result<Option<i64>> {
        let lease = lease.map(|l| (l.owner.clone(), ttl_ms(l)));
        self.call(true, move |c| {
            let lease = lease.as_ref().map(|(o, t)| (o.as_str(), now_ms() + t));
            enqueue(c, &message, lease)
        })
        .await
    }
    async fn claim(&self, lease: &Lease, now: i64, limit: usize) -> Result<Vec<Claimed>> {
        let (owner, ttl) = (lease.owner.clone(), ttl_ms(lease));
        self.call(false, move |c| claim(c, &owner, ttl, now, limit))
            .await
    }
    async fn claim_id(&self, id: &str, lease: &Lease) -> Result<Option<Claimed>> {
        let (id, owner, ttl) = (id.to_string(), lease.owner.clone(), ttl_ms(lease));
        self.call(false, move |c| {
            let db_now = now_ms();
            let token: Option<i64> = c
                .prepare_cached(
                    "UPDATE message SET lease_owner = ?, lease_until = ?, lease_token = lease_token + 1
                     WHERE id = ? AND lease_until < ? RETURNING lease_token",
                )?
                .query_row(params![owner, db_now + ttl, id, db_now], |r| r.get(0))
                .optional()?;
            match token {
                Some(token) => Ok(get(c, &id, true)?.map(|message| Claimed { message, token })),
                None if token_of(c, &id)?.is_some() => Err(being_delivered(&id)),
                None => Ok(None),
            }
        })
        .await
    }
    async fn count_login(
        &self,
        keys: &[(String, u32)],
        now: i64,
        window: i64,
    ) -> Result<Option<i64>> {
        let keys = keys.to_vec();
        self.call(false, move |c| {
            c.prepare_cached("DELETE FROM login_attempt WHERE first <= ?")?
                .execute([now - window])?;
            let mut count = c.prepare_cached(
                "INSERT INTO login_attempt (key, count, first) VALUES (?, 1, ?)
                 ON CONFLICT (key) DO UPDATE SET count = count + 1 RETURNING count, first",
            )?;
            let mut wait = None;
            for (key, limit) in &keys {
                let (n, first): (i64, i64) =
                    count.query_row(params![key, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
                if n > i64::from(*limit) {
                    wait = wait.max(Some((first + window - now).max(1)));
                }
            }
            Ok(wait)
        })
        .await
    }
    async fn login_succeeded(&self, forget: &str, lower: &str) -> Result<()> {
        let (forget, lower) = (forget.to_string(), lower.to_string());
        self.call(false, move |c| {
            c.prepare_cached("DELETE FROM login_attempt WHERE key = ?")?
                .execute([forget])?;
            c.prepare_cached("UPDATE login_attempt SET count = max(count - 1, 0) WHERE key = ?")?
                .execute([lower])?;
            Ok(())
        })
        .await
    }
    async fn renew(&self, held: &[(String, i64)], lease: &Lease) -> Result<Vec<String>> {
        let (held, ttl) = (held.to_vec(), ttl_ms(lease));
        self.call(false, move |c| renew(c, &held, ttl)).await
    }
    async fn record(&self, id: &str, token: i64, attempt: Attempt) -> Result<()> {
        let id = id.to_string();
        // The node recording is the lease holder; its id is in the lease, read back here.
        let durable = !attempt.dsns.is_empty();
        self.call(durable, move |c| {
            let node: String = c
                .prepare_cached("SELECT COALESCE(lease_owner, '') FROM message WHERE id = ?")?
                .query_row([&id], |r| r.get(0))
                .optional()?
                .unwrap_or_default();
            record(c, &id, token, &node, &attempt)
        })
        .await
    }
    async fn release_all(&self, owner: &str) -> Result<usize> {
        let owner = owner.to_string();
        self.call(true, move |c| {
            Ok(c.execute(
                "UPDATE message SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ?",
                [owner],
            )?)
        })
        .await
    }
    async fn get(&self, id: &str) -> Result<Option<Message>> {
        let id = id.to_string();
        self.call(false, move |c| get(c, &id, true)).await
    }
    async fn body(&self, id: &str) -> Result<Option<Bytes>> {
        let id = id.to_string();
        self.call(false, move |c| {
            Ok(c.prepare_cached("SELECT body FROM message WHERE id = ?")?
                .query_row([id], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
                .map(Bytes::from))
        })
        .await
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Summary>> {
        let after = after.map(str::to_string);
        self.call(false, move |c| list(c, after.as_deref(), limit))
            .await
    }
    async fn delete(&self, id: &str, node: &str) -> Result<bool> {
        let (id, node) = (id.to_string(), node.to_string());
        self.call(true, move |c| {
            let removed = remove(c, &id)?;
            if removed {
                add_event(c, &id, &deleted_event(&node))?;
            }
            Ok(removed)
        })
        .await
    }
    async fn flush(&self, now: i64) -> Result<usize> {
        self.call(true, move |c| flush(c, now)).await
    }
    async fn trace(&self, id: &str) -> Result<Option<Trace>> {
        let id = id.to_string();
        self.call(false, move |c| trace_of(c, &id, true)).await
    }
    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Trace>> {
        let q = query.clone();
        self.call(false, move |c| find_traces(c, &q)).await
    }
    async fn add_event(&self, id: &str, event: Event) -> Result<()> {
        let id = id.to_string();
        self.call(true, move |c| add_event(c, &id, &event)).await
    }
    async fn expire_traces(&self, before: i64) -> Result<usize> {
        self.call(true, move |c| expire_traces(c, before)).await
    }
    async fn runtime_version(&self) -> Result<i64> {
        self.call(false, |c| {
            Ok(c.prepare_cached("SELECT version FROM runtime_version")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }
    async fn quarantine(&self, held: Held) -> Result<()> {
        self.call(true, move |c| {
            let m = &held.message;
            let recipients: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
            c.prepare_cached(
                "INSERT INTO quarantine (id, received_at, sender, recipients, envelope, verdict, score, reason, size, body, subject)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                m.id,
                m.received_at,
                m.sender,
                recipients.join("\n"),
                held.envelope(),
                held.verdict,
                held.score,
                held.reason,
                m.body.len() as i64,
                &m.body[..],
                crate::subject_of(&m.body)
            ])?;
            let mut r = c.prepare_cached(
                "INSERT OR IGNORE INTO quarantine_recipient (id, address_lc, domain_lc) VALUES (?, ?, ?)",
            )?;
            for a in &recipients {
                r.execute(params![m.id, a.to_lowercase(), crate::domain_lc(a)])?;
            }
            insert_trace(c, m)?;
            add_event(c, &m.id, &held_event(&held))
        })
        .await
    }
    async fn trace_refused(&self, message: NewMessage, reply: String) -> Result<()> {
        self.call(false, move |c| {
            insert_trace(c, &message)?;
            add_event(c, &message.id, &crate::refused_event(&message, &reply))
        })
        .await
    }

    async fn quarantined(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &HeldFilter,
    ) -> Result<Vec<HeldSummary>> {
        let after = after.unwrap_or("").to_string();
        let f = filter.clone();
        self.call(false, move |c| {
            type V = rusqlite::types::Value;
            // The filters on the message itself, checked on each row the driver yields.
            let mut cond = String::new();
            let mut cargs: Vec<V> = Vec::new();
            if let Some(s) = &f.sender {
                cond.push_str(" AND lower(q.sender) LIKE ? ESCAPE '\\'");
                cargs.push(format!("%{}%", like_escape(&s.to_lowercase())).into());
            }
            if let Some(v) = &f.verdict {
                cond.push_str(" AND q.verdict = ?");
                cargs.push(v.clone().into());
            }
            if let Some(t) = f.since {
                cond.push_str(" AND q.received_at >= ?");
                cargs.push(t.into());
            }
            if let Some(t) = f.until {
                cond.push_str(" AND q.received_at < ?");
                cargs.push(t.into());
            }
            if let Some(m) = f.min_score {
                cond.push_str(" AND q.score >= ?");
                cargs.push(m.into());
            }
            let scope: Option<Vec<String>> = f
                .domains
                .as_ref()
                .map(|ds| ds.iter().map(|d| d.to_lowercase()).collect());
            // Driven by the most selective index: the recipient's, each domain's (merged),
            // or the ids'.
            let mut args: Vec<V> = Vec::new();
            let ids_sql = match (&f.address, &scope) {
                (_, Some(ds)) if ds.is_empty() => return Ok(Vec::new()),
                (Some(a), scope) => {
                    args.push(a.to_lowercase().into());
                    args.push(after.clone().into());
                    let mut sql = String::from(
                        "SELECT DISTINCT r.id FROM quarantine_recipient r JOIN quarantine q ON q.id = r.id
                         WHERE r.address_lc = ? AND r.id > ?",
                    );
                    if let Some(ds) = scope {
                        sql.push_str(&format!(
                            " AND r.domain_lc IN ({})",
                            vec!["?"; ds.len()].join(", ")
                        ));
                        args.extend(ds.iter().map(|d| V::from(d.clone())));
                    }
                    args.extend(cargs.iter().cloned());
                    args.push((limit as i64).into());
                    format!("{sql}{cond} ORDER BY r.id LIMIT ?")
                }
                (None, Some(ds)) => {
                    let one = format!(
                        "SELECT * FROM (SELECT DISTINCT r.id FROM quarantine_recipient r
                         JOIN quarantine q ON q.id = r.id WHERE r.domain_lc = ? AND r.id > ?{cond}
                         ORDER BY r.id LIMIT ?)"
                    );
                    for d in ds {
                        args.push(d.clone().into());
                        args.push(after.clone().into());
                        args.extend(cargs.iter().cloned());
                        args.push((limit as i64).into());
                    }
                    args.push((limit as i64).into());
                    format!(
                        "SELECT id FROM ({}) ORDER BY id LIMIT ?",
                        vec![one; ds.len()].join(" UNION ")
                    )
                }
                (None, None) => {
                    args.push(after.clone().into());
                    args.extend(cargs.iter().cloned());
                    args.push((limit as i64).into());
                    format!("SELECT q.id FROM quarantine q WHERE q.id > ?{cond} ORDER BY q.id LIMIT ?")
                }
            };
            let ids: Vec<String> = c
                .prepare_cached(&ids_sql)?
                .query_map(rusqlite::params_from_iter(args), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut get = c.prepare_cached(
                "SELECT id, received_at, sender, recipients, verdict, score, reason, size, subject
                 FROM quarantine WHERE id = ?",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(get.query_row([id], |r| {
                    Ok(HeldSummary {
                        id: r.get(0)?,
                        received_at: r.get(1)?,
                        sender: r.get(2)?,
                        recipients: r
                            .get::<_, String>(3)?
                            .split('\n')
                            .map(str::to_string)
                            .collect(),
                        verdict: r.get(4)?,
                        score: r.get(5)?,
                        reason: r.get(6)?,
                        size: r.get::<_, i64>(7)? as u64,
                        subject: r.get(8)?,
                    })
                })?);
            }
            Ok(out)
        })
        .await
    }

    async fn held(&self, id: &str) -> Result<Option<Held>> {
        let id = id.to_string();
        self.call(false, move |c| held(c, &id)).await
    }
    async fn release(&self, id: &str, copy: NewMessage, node: &str) -> Result<bool> {
        let (id, node) = (id.to_string(), node.to_string());
        self.call(true, move |c| {
            if c.execute("DELETE FROM quarantine WHERE id = ?", [&id])? == 0 {
                return Ok(false);
            }
            c.execute("DELETE FROM quarantine_recipient WHERE id = ?", [&id])?;
            enqueue(c, &copy, None)?;
            add_event(c, &id, &unheld_event(&node, Some(&copy.id)))?;
            Ok(true)
        })
        .await
    }
    async fn unhold_for(
        &self,
        id: &str,
        recipients: Vec<String>,
        copy: Option<NewMessage>,
        node: &str,
    ) -> Result<bool> {
        let (id, node) = (id.to_string(), node.to_string());
        let gone: Vec<String> = recipients.iter().map(|r| r.to_lowercase()).collect();
        self.call(true, move |c| {
            let Some(envelope): Option<String> = c
                .prepare_cached("SELECT envelope FROM quarantine WHERE id = ?")?
                .query_row([&id], |r| r.get(0))
                .optional()?
            else {
                return Ok(false);
            };
            let (envelope, left, taken) = crate::envelope_without(&id, &envelope, &gone)?;
            if taken.is_empty() {
                return Ok(false);
            }
            if left.is_empty() {
                c.execute("DELETE FROM quarantine WHERE id = ?", [&id])?;
                c.execute("DELETE FROM quarantine_recipient WHERE id = ?", [&id])?;
            } else {
                c.execute(
                    "UPDATE quarantine SET recipients = ?, envelope = ? WHERE id = ?",
                    params![left.join("\n"), envelope, id],
                )?;
                for r in &taken {
                    c.execute(
                        "DELETE FROM quarantine_recipient WHERE id = ? AND address_lc = ?",
                        params![id, r.to_lowercase()],
                    )?;
                }
            }
            if let Some(copy) = &copy {
                enqueue(c, copy, None)?;
            }
            for r in &taken {
                add_event(
                    c,
                    &id,
                    &crate::unheld_for_event(&node, r, copy.as_ref().map(|m| m.id.as_str())),
                )?;
            }
            Ok(true)
        })
        .await
    }
    async fn delete_held(&self, id: &str, node: &str) -> Result<bool> {
        let (id, node) = (id.to_string(), node.to_string());
        self.call(true, move |c| {
            if c.execute("DELETE FROM quarantine WHERE id = ?", [&id])? == 0 {
                return Ok(false);
            }
            c.execute("DELETE FROM quarantine_recipient WHERE id = ?", [&id])?;
            add_event(c, &id, &unheld_event(&node, None))?;
            Ok(true)
        })
        .await
    }
    async fn grey_first_seen(&self, key: &str, now: i64, window_start: i64) -> Result<i64> {
        let key = key.to_string();
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO greylist (key, first_seen) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET first_seen = excluded.first_seen
                 WHERE greylist.first_seen < ?3",
            )?
            .execute(params![key, now, window_start])?;
            Ok(
                c.prepare_cached("SELECT first_seen FROM greylist WHERE key = ?")?
                    .query_row([&key], |r| r.get(0))?,
            )
        })
        .await
    }
    async fn grey_allow(&self, client: &str, until: i64) -> Result<()> {
        let client = client.to_string();
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO greylist_pass (client, until) VALUES (?1, ?2)
                 ON CONFLICT (client) DO UPDATE SET until = max(greylist_pass.until, excluded.until)",
            )?
            .execute(params![client, until])?;
            Ok(())
        })
        .await
    }
    async fn grey_allowed(&self, client: &str, now: i64) -> Result<bool> {
        let client = client.to_string();
        self.call(false, move |c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM greylist_pass WHERE client = ? AND until > ?")?
                    .query_row(params![client, now], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
        .await
    }
    async fn expire_greylist(&self, before: i64, now: i64) -> Result<usize> {
        self.call(true, move |c| {
            Ok(
                c.execute("DELETE FROM greylist WHERE first_seen < ?", [before])?
                    + c.execute("DELETE FROM greylist_pass WHERE until <= ?", [now])?,
            )
        })
        .await
    }
    async fn expire_held(&self, before: i64, node: &str) -> Result<usize> {
        let node = node.to_string();
        self.call(true, move |c| {
            let ids: Vec<String> = c
                .prepare_cached("SELECT id FROM quarantine WHERE received_at < ?")?
                .query_map([before], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            c.execute("DELETE FROM quarantine WHERE received_at < ?", [before])?;
            let mut gone = c.prepare_cached("DELETE FROM quarantine_recipient WHERE id = ?")?;
            for id in &ids {
                gone.execute([id])?;
            }
            for id in &ids {
                add_event(c, id, &expired_held_event(&node))?;
            }
            Ok(ids.len())
        })
        .await
    }
    async fn set_organisation(&self, org: Organisation) -> Result<()> {
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO organisation (name, domains, digest) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET domains = excluded.domains, digest = excluded.digest",
            )?
            .execute(params![org.name, org.domains.join("\n"), org.digest])?;
            Ok(())
        })
        .await
    }

    async fn organisations(&self) -> Result<Vec<Organisation>> {
        self.call(false, |c| {
            let mut st =
                c.prepare_cached("SELECT name, domains, digest FROM organisation ORDER BY name")?;
            let rows = st.query_map([], |r| {
                let domains: String = r.get(1)?;
                Ok(Organisation {
                    name: r.get(0)?,
                    domains: domains
                        .split('\n')
                        .filter(|d| !d.is_empty())
                        .map(String::from)
                        .collect(),
                    digest: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn set_account(&self, a: Account) -> Result<()> {
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO account (name, role, organisation, password, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role,
                     organisation = excluded.organisation, password = excluded.password",
            )?
            .execute(params![
                a.name,
                a.role.as_str(),
                a.organisation,
                a.password,
                a.created
            ])?;
            Ok(())
        })
        .await
    }

    async fn account(&self, name: &str) -> Result<Option<Account>> {
        let name = name.to_string();
        self.call(false, move |c| {
            Ok(
                c.prepare_cached(&format!("{ACCOUNT_COLUMNS} WHERE name = ?"))?
                    .query_row([name], account_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        self.call(false, |c| {
            let mut st = c.prepare_cached(&format!("{ACCOUNT_COLUMNS} ORDER BY name"))?;
            let rows = st.query_map([], account_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn add_session(&self, s: Session) -> Result<()> {
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO session (key, account, csrf, expires) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![s.key, s.account, s.csrf, s.expires])?;
            Ok(())
        })
        .await
    }

    async fn session(&self, key: &str, now: i64) -> Result<Option<Session>> {
        let key = key.to_string();
        self.call(false, move |c| {
            Ok(c.prepare_cached(
                "SELECT key, account, csrf, expires FROM session WHERE key = ? AND expires > ?",
            )?
            .query_row(params![key, now], |r| {
                Ok(Session {
                    key: r.get(0)?,
                    account: r.get(1)?,
                    csrf: r.get(2)?,
                    expires: r.get(3)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn end_sessions(&self, key: Option<&str>, account: Option<&str>) -> Result<usize> {
        let (key, account) = (key.map(String::from), account.map(String::from));
        self.call(true, move |c| {
            Ok(c.execute(
                "DELETE FROM session WHERE key = ?1 OR account = ?2",
                params![key, account],
            )?)
        })
        .await
    }

    async fn add_token(&self, t: ApiToken) -> Result<()> {
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO api_token (key, account, label, role, organisation, created, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                t.key,
                t.account,
                t.label,
                t.role.as_str(),
                t.organisation,
                t.created,
                t.expires
            ])?;
            Ok(())
        })
        .await
    }

    async fn token(&self, key: &str, now: i64) -> Result<Option<ApiToken>> {
        let key = key.to_string();
        self.call(false, move |c| {
            Ok(c.prepare_cached(
                "SELECT key, account, label, role, organisation, created, expires FROM api_token
                 WHERE key = ?1 AND (expires IS NULL OR expires > ?2)",
            )?
            .query_row(params![key, now], |r| {
                let role: String = r.get(3)?;
                Ok(ApiToken {
                    key: r.get(0)?,
                    account: r.get(1)?,
                    label: r.get(2)?,
                    role: Role::parse(&role).unwrap_or(Role::User),
                    organisation: r.get(4)?,
                    created: r.get(5)?,
                    expires: r.get(6)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn revoke_tokens(&self, account: &str) -> Result<usize> {
        let account = account.to_string();
        self.call(true, move |c| {
            Ok(c.execute("DELETE FROM api_token WHERE account = ?", [account])?)
        })
        .await
    }

    async fn audit(&self, e: AuditEntry) -> Result<()> {
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO audit (at, actor, action, object, domain, before, after)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                e.at, e.actor, e.action, e.object, e.domain, e.before, e.after
            ])?;
            Ok(())
        })
        .await
    }

    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
        domains: Option<&[String]>,
    ) -> Result<Vec<AuditEntry>> {
        let domains: Option<Vec<String>> =
            domains.map(|d| d.iter().map(|x| x.to_lowercase()).collect());
        if domains.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        self.call(false, move |c| {
            let mut args: Vec<rusqlite::types::Value> = vec![before.unwrap_or(i64::MAX).into()];
            let mut sql = String::from(
                "SELECT seq, at, actor, action, object, domain, before, after FROM audit WHERE seq < ?",
            );
            if let Some(ds) = &domains {
                sql.push_str(&format!(" AND domain IN ({})", vec!["?"; ds.len()].join(", ")));
                args.extend(ds.iter().map(|d| d.clone().into()));
            }
            sql.push_str(" ORDER BY seq DESC LIMIT ?");
            args.push((limit as i64).into());
            Ok(c.prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok(AuditEntry {
                        seq: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        object: r.get(4)?,
                        domain: r.get(5)?,
                        before: r.get(6)?,
                        after: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn expire_sessions(&self, now: i64) -> Result<usize> {
        self.call(true, move |c| {
            Ok(c.execute("DELETE FROM session WHERE expires <= ?", [now])?
                + c.execute("DELETE FROM api_token WHERE expires <= ?", [now])?)
        })
        .await
    }

    async fn learn(&self, examples: Vec<Example>) -> Result<usize> {
        self.call(true, move |c| {
            let mut st = c.prepare_cached(
                "INSERT INTO classifier_example (digest, spam, features) VALUES (?, ?, ?)
                 ON CONFLICT (digest) DO UPDATE SET spam = excluded.spam, features = excluded.features
                 WHERE classifier_example.spam <> excluded.spam",
            )?;
            let mut changed = 0;
            for e in &examples {
                changed += st.execute(params![e.digest, e.spam, e.features])?;
            }
            Ok(changed)
        })
        .await
    }
    async fn forget(&self, digests: Vec<String>) -> Result<usize> {
        self.call(true, move |c| {
            let mut st = c.prepare_cached("DELETE FROM classifier_example WHERE digest = ?")?;
            let mut gone = 0;
            for d in &digests {
                gone += st.execute([d])?;
            }
            Ok(gone)
        })
        .await
    }
    async fn examples(&self) -> Result<Vec<Example>> {
        self.call(false, |c| {
            Ok(c.prepare_cached(
                "SELECT digest, spam, features FROM classifier_example ORDER BY digest",
            )?
            .query_map([], |r| {
                Ok(Example {
                    digest: r.get(0)?,
                    spam: r.get(1)?,
                    features: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
    async fn example_counts(&self) -> Result<(u64, u64)> {
        self.call(false, |c| {
            Ok(c.query_row(
                "SELECT COALESCE(SUM(spam), 0), COALESCE(SUM(1 - spam), 0) FROM classifier_example",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
        .await
    }
    async fn set_model(&self, data: Vec<u8>) -> Result<i64> {
        self.call(true, move |c| {
            // One row: the new version replaces the old in the same transaction.
            let version: i64 = c.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM classifier_model",
                [],
                |r| r.get(0),
            )?;
            c.execute("DELETE FROM classifier_model", [])?;
            c.execute(
                "INSERT INTO classifier_model (version, data) VALUES (?, ?)",
                params![version, data],
            )?;
            Ok(version)
        })
        .await
    }
    async fn model(&self) -> Result<Option<(i64, Vec<u8>)>> {
        self.call(false, |c| {
            Ok(
                c.query_row("SELECT version, data FROM classifier_model", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?,
            )
        })
        .await
    }
    async fn model_version(&self) -> Result<Option<i64>> {
        self.call(false, |c| {
            Ok(
                c.query_row("SELECT MAX(version) FROM classifier_model", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }
    async fn domains(&self) -> Result<Vec<DomainEntry>> {
        self.call(false, |c| {
            Ok(c.prepare_cached(
                "SELECT name, settings, removed FROM runtime_domain ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(DomainEntry {
                    name: r.get(0)?,
                    settings: r.get(1)?,
                    removed: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
    async fn set_domain(&self, entry: DomainEntry, before: Option<String>) -> Result<bool> {
        let written = self
            .call(true, move |c| {
                let written = set_domain_if(c, &entry, before.as_deref())?;
                if written {
                    bump(c)?;
                }
                Ok(written)
            })
            .await?;
        if written {
            self.changed();
        }
        Ok(written)
    }
    async fn servers(&self) -> Result<Vec<ServerEntry>> {
        self.call(false, |c| {
            Ok(c.prepare_cached(
                "SELECT cluster, server, loading, state, address, removed FROM runtime_server
                 ORDER BY cluster, server",
            )?
            .query_map([], |r| {
                Ok(ServerEntry {
                    cluster: r.get(0)?,
                    server: r.get(1)?,
                    loading: r.get(2)?,
                    state: r.get(3)?,
                    address: r.get(4)?,
                    removed: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
    async fn set_server(&self, entry: ServerEntry) -> Result<()> {
        self.call(true, move |c| {
            set_server(c, &entry)?;
            bump(c)
        })
        .await?;
        self.changed();
        Ok(())
    }
    async fn secret(&self, name: &str, candidate: String) -> Result<String> {
        let name = name.to_string();
        self.call(true, move |c| {
            c.prepare_cached(
                "INSERT INTO secret (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )?
            .execute(params![name, candidate])?;
            Ok(c.prepare_cached("SELECT value FROM secret WHERE name = ?")?
                .query_row([&name], |r| r.get(0))?)
        })
        .await
    }
    async fn claim_digest(
        &self,
        organisation: &str,
        now: i64,
        period: i64,
        first: i64,
    ) -> Result<Option<i64>> {
        let org = organisation.to_string();
        // One writer at a time: the read and the write are one step.
        self.call(true, move |c| {
            let last: Option<i64> = c
                .prepare_cached("SELECT last FROM digest WHERE organisation = ?")?
                .query_row([&org], |r| r.get(0))
                .optional()?;
            let since = match last {
                Some(l) if l > now - period => return Ok(None),
                Some(l) => l,
                None => first,
            };
            c.prepare_cached(
                "INSERT INTO digest (organisation, last) VALUES (?, ?)
                 ON CONFLICT (organisation) DO UPDATE SET last = excluded.last",
            )?
            .execute(params![org, now])?;
            Ok(Some(since))
        })
        .await
    }
    async fn add_stats(&self, counts: Vec<(StatKey, i64)>) -> Result<()> {
        self.call(true, move |c| {
            let mut add = c.prepare_cached(
                "INSERT INTO stat (metric, hour, domain, label, n) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (metric, hour, domain, label) DO UPDATE SET n = n + excluded.n",
            )?;
            for (k, n) in &counts {
                add.execute(params![k.metric, k.hour, k.domain, k.label, n])?;
            }
            Ok(())
        })
        .await
    }
    async fn stat_series(
        &self,
        query: &StatQuery,
        metric: &str,
    ) -> Result<Vec<(i64, String, i64)>> {
        let (q, metric) = (query.clone(), metric.to_string());
        self.call(false, move |c| {
            let mut args: Vec<rusqlite::types::Value> =
                vec![metric.into(), q.since.into(), q.until.into()];
            let scope = in_scope(&q, "domain", &mut args);
            let sql = format!(
                "SELECT hour, label, SUM(n) FROM stat WHERE metric = ? AND hour >= ? AND hour < ?{scope}
                 GROUP BY hour, label ORDER BY hour, label"
            );
            Ok(c.prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
    async fn stat_top(
        &self,
        query: &StatQuery,
        metric: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        let (q, metric) = (query.clone(), metric.to_string());
        self.call(false, move |c| {
            let (column, metric) = match metric.as_str() {
                "domain" => ("domain", "verdict".to_string()),
                _ => ("label", metric),
            };
            let mut args: Vec<rusqlite::types::Value> =
                vec![metric.into(), q.since.into(), q.until.into()];
            let scope = in_scope(&q, "domain", &mut args);
            args.push((limit as i64).into());
            let sql = format!(
                "SELECT {column}, SUM(n) AS total FROM stat
                 WHERE metric = ? AND hour >= ? AND hour < ?{scope}
                 GROUP BY {column} ORDER BY total DESC, {column} LIMIT ?"
            );
            Ok(c.prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
    async fn expire_stats(&self, before: i64) -> Result<usize> {
        self.call(true, move |c| {
            Ok(c.prepare_cached("DELETE FROM stat WHERE hour < ?")?
                .execute([before])?)
        })
        .await
    }
    async fn queue_by_domain(&self, query: &StatQuery) -> Result<Vec<DomainQueue>> {
        let q = query.clone();
        self.call(false, move |c| {
            let domain = domain_sql("r.address");
            let mut args = Vec::new();
            let scope = in_scope(&q, &domain, &mut args);
            let sql = format!(
                "SELECT {domain} AS d, COUNT(*), SUM(r.attempts > 0), MIN(m.received_at)
                 FROM recipient r JOIN message m ON m.id = r.message_id
                 WHERE r.status = 0{scope} GROUP BY d ORDER BY COUNT(*) DESC, d"
            );
            Ok(c.prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok(DomainQueue {
                        domain: r.get(0)?,
                        pending: r.get(1)?,
                        deferred: r.get(2)?,
                        oldest: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
    async fn seed(&self, domains: Vec<DomainEntry>, servers: Vec<ServerEntry>) -> Result<usize> {
        self.call(true, move |c| {
            let mut added = 0;
            let mut d = c.prepare_cached(
                "INSERT INTO runtime_domain (name, settings, removed) VALUES (?, ?, 0) ON CONFLICT DO NOTHING",
            )?;
            for e in &domains {
                added += d.execute(params![e.name, e.settings])?;
            }
            let mut s = c.prepare_cached(
                "INSERT INTO runtime_server (cluster, server, loading, state, address, removed)
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )?;
            for e in &servers {
                added += s.execute(params![
                    e.cluster, e.server, e.loading, e.state, e.address, e.removed
                ])?;
            }
            if added > 0 {
                bump(c)?;
            }
            Ok(added)
        })
        .await
        .inspect(|&added| {
            if added > 0 {
                self.changed();
            }
        })
    }
    async fn node_number(&self, node: &str) -> Result<u16> {
        let node = node.to_string();
        self.call(true, move |c| {
            c.execute(
                "INSERT INTO node (id, number) SELECT ?, (SELECT COALESCE(MAX(number), 0) + 1 FROM node)
                 WHERE NOT EXISTS (SELECT 1 FROM node WHERE id = ?)",
                params![node, node],
            )?;
            let n: i64 = c.query_row("SELECT number FROM node WHERE id = ?", [&node], |r| {
                r.get(0)
            })?;
            u16::try_from(n).map_err(|_| Error::Unavailable(format!("node number {n} past 65535")))
        })
        .await
    }
    fn runtime_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-0 database (RET kept as `ret_headers_only`, no leases, no trace) is
    /// upgraded in place, its queued mail kept and claimable.
    #[tokio::test(flavor = "multi_thread")]
    async fn version_zero_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("queue.db")).unwrap();
            c.execute_batch(BASE).unwrap();
            c.execute_batch(
                "INSERT INTO message VALUES ('A', 's@x', NULL, 1, 1, x'00');
                 INSERT INTO message VALUES ('B', 's@x', NULL, 0, 1, x'00');
                 INSERT INTO recipient VALUES ('A', 0, 'a@example.com', 0, NULL, 0, 0, 5, NULL, 0);
                 INSERT INTO recipient VALUES ('B', 0, 'a@example.com', 0, NULL, 0, 0, 7, NULL, 0);",
            )
            .unwrap();
        }
        let s = Embedded::open(dir.path()).unwrap();
        assert_eq!(s.get("A").await.unwrap().unwrap().ret, Some(Ret::Headers));
        assert_eq!(
            s.get("B").await.unwrap().unwrap().ret,
            None,
            "an invented FULL is dropped"
        );
        let lease = Lease {
            owner: "n1".into(),
            ttl: std::time::Duration::from_secs(60),
        };
        let claimed = s.claim(&lease, 6, 10).await.unwrap();
        assert_eq!(
            claimed.len(),
            1,
            "due times carried over: only A is due at 6"
        );
        assert_eq!(claimed[0].message.id, "A");
    }

    /// A version-6 database's held mail and traces are indexed by recipient and domain on
    /// the way to 7, so the scoped searches find them.
    #[tokio::test(flavor = "multi_thread")]
    async fn version_six_is_indexed_by_recipient() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("queue.db")).unwrap();
            c.execute_batch(BASE).unwrap();
            for m in &MIGRATIONS[..6] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 6).unwrap();
            c.execute_batch(
                "INSERT INTO quarantine VALUES ('Q1', 5, 's@x', 'Bob@Example.COM' || char(10) || '\"a@b\"@other.org', '{}', 'spam', 9, 'r', 1, x'00');
                 INSERT INTO trace_message VALUES ('T1', 7, 's@x', 's@x', 1, '192.0.2.1', 'h', NULL, 'c1-s1', 'n1');
                 INSERT INTO trace_recipient VALUES ('T1', 'Carol@Example.com', 'carol@example.com');",
            )
            .unwrap();
        }
        let s = Embedded::open(dir.path()).unwrap();
        let held = |f: HeldFilter| {
            let s = &s;
            async move { s.quarantined(None, 10, &f).await.unwrap().len() }
        };
        assert_eq!(
            held(HeldFilter {
                address: Some("bob@example.com".into()),
                ..Default::default()
            })
            .await,
            1
        );
        assert_eq!(
            held(HeldFilter {
                domains: Some(vec!["other.org".into()]),
                ..Default::default()
            })
            .await,
            1
        );
        let t = s
            .find_traces(&TraceQuery {
                domains: Some(vec!["example.com".into()]),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].received_at, 7);
    }

    fn message(id: &str) -> NewMessage {
        NewMessage {
            id: id.into(),
            sender: "s@x.net".into(),
            recipients: vec![crate::NewRecipient {
                address: "a@example.com".into(),
                notify: 0,
                orcpt: None,
            }],
            envid: None,
            ret: None,
            received_at: 1,
            next_attempt: 1,
            body: Bytes::from_static(b"Subject: t\r\n\r\nhi\r\n"),
            arrival: crate::Arrival::default(),
            scan: None,
            verdict: None,
            symbols: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_enqueues_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Embedded::open(dir.path()).unwrap());
        let before = s.commits();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.enqueue(message(&format!("M{i}")), None).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let commits = s.commits() - before;
        assert!(
            commits < 100,
            "200 concurrent enqueues took {commits} commits: no group commit"
        );
    }

    /// A second process (the CLI next to a running gateway) opens the same database and
    /// writes while the first keeps writing: neither is refused with "database is locked",
    /// which a transaction that reads before it writes gets when the other commits between.
    #[tokio::test(flavor = "multi_thread")]
    async fn two_processes_write_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::sync::Arc::new(Embedded::open(dir.path()).unwrap());
        let writer = {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..400 {
                    let (got, put) =
                        tokio::join!(a.get("A0"), a.enqueue(message(&format!("A{i}")), None));
                    got.unwrap();
                    put.unwrap();
                }
            })
        };
        for i in 0..40 {
            let b = Embedded::open(dir.path()).unwrap();
            let (got, put) = tokio::join!(b.get("A0"), b.enqueue(message(&format!("B{i}")), None));
            got.unwrap();
            put.unwrap();
        }
        writer.await.unwrap();
    }
}
