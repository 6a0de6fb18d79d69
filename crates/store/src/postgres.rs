//! The PostgreSQL store, for a fleet of mail servers sharing one database: a pool of
//! connections (deadpool), TLS to the database with rustls when the URL asks for it, claims
//! with `FOR UPDATE SKIP LOCKED` so nodes never wait on each other's rows, and database time
//! (`clock_timestamp()`) for leases, so a node with a wrong clock cannot steal mail.
//!
//! The SQL is plain PostgreSQL without extensions, meant to run on PostgreSQL-compatible
//! distributed engines too; `FOR UPDATE SKIP LOCKED` is the one construct some of them lack
//! (they would need the claim done as a conditional UPDATE instead).
//!
//! Durability: every write is a transaction, committed before the method returns, with the
//! server's default `synchronous_commit = on`. Concurrent commits share PostgreSQL's WAL
//! flushes (its own group commit), so sessions need not be batched here.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};

use crate::{
    Account, ApiToken, Arrival, Attempt, AuditEntry, Bytes, Claimed, DomainEntry, DomainQueue,
    Error, Event, Example, Held, HeldFilter, HeldSummary, Lease, Message, NewMessage, Organisation,
    Outcome, Recipient, Result, Ret, Role, ServerEntry, Session, StatKey, StatQuery, Status, Store,
    Summary, Trace, TraceQuery, being_delivered,
};

/// The schema version this code writes.
const VERSION: i32 = 8;

/// `MIGRATIONS[n]` takes the database from version n to n+1.
const MIGRATIONS: [&str; 8] = [
    "
CREATE TABLE message (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    envid TEXT,
    ret SMALLINT,
    received_at BIGINT NOT NULL,
    body BYTEA NOT NULL,
    next_attempt BIGINT,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    lease_token BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX message_due ON message (next_attempt);
CREATE TABLE recipient (
    message_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    notify SMALLINT NOT NULL,
    orcpt TEXT,
    status SMALLINT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt BIGINT NOT NULL,
    last_error TEXT,
    warned BOOLEAN NOT NULL,
    PRIMARY KEY (message_id, idx)
);
CREATE TABLE trace_message (
    id TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    sender TEXT NOT NULL,
    sender_lc TEXT NOT NULL,
    size BIGINT NOT NULL,
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
);
CREATE INDEX trace_recipient_address ON trace_recipient (address_lc);
CREATE TABLE trace_event (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL,
    at BIGINT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    recipient TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX trace_event_id ON trace_event (id);
",
    "
CREATE TABLE runtime_domain (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    removed BOOLEAN NOT NULL
);
CREATE TABLE runtime_server (
    cluster TEXT NOT NULL,
    server TEXT NOT NULL,
    loading INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (cluster, server)
);
CREATE TABLE runtime_version (version BIGINT NOT NULL);
CREATE TABLE node (id TEXT PRIMARY KEY, number INTEGER GENERATED ALWAYS AS IDENTITY UNIQUE);
INSERT INTO runtime_version VALUES (0);
",
    "
CREATE TABLE classifier_example (
    digest TEXT PRIMARY KEY,
    spam BOOLEAN NOT NULL,
    features BYTEA NOT NULL
);
CREATE TABLE classifier_model (
    version BIGINT PRIMARY KEY,
    data BYTEA NOT NULL
);
CREATE TABLE quarantine (
    id TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT[] NOT NULL,
    envelope TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    size BIGINT NOT NULL,
    body BYTEA NOT NULL
);
",
    "
CREATE TABLE greylist (key TEXT PRIMARY KEY, first_seen BIGINT NOT NULL);
CREATE TABLE greylist_pass (client TEXT PRIMARY KEY, until BIGINT NOT NULL);
",
    "
CREATE TABLE organisation (name TEXT PRIMARY KEY, domains TEXT[] NOT NULL);
CREATE TABLE account (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    organisation TEXT,
    password TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE session (
    key TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX session_account ON session (account);
CREATE TABLE api_token (
    key TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    label TEXT NOT NULL,
    role TEXT NOT NULL,
    organisation TEXT,
    created BIGINT NOT NULL,
    expires BIGINT
);
",
    // Servers added and removed at run time; the statistics; digests.
    "
ALTER TABLE runtime_server ADD COLUMN address TEXT;
ALTER TABLE runtime_server ADD COLUMN removed BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE stat (
    metric TEXT NOT NULL,
    hour BIGINT NOT NULL,
    domain TEXT NOT NULL,
    label TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (metric, hour, domain, label)
);
ALTER TABLE quarantine ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE organisation ADD COLUMN digest TEXT;
CREATE TABLE secret (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE digest (organisation TEXT PRIMARY KEY, last BIGINT NOT NULL);
ALTER TABLE trace_recipient ADD COLUMN domain_lc TEXT NOT NULL DEFAULT '';
ALTER TABLE trace_recipient ADD COLUMN received_at BIGINT NOT NULL DEFAULT 0;
UPDATE trace_recipient r SET domain_lc = coalesce(lower(substring(r.address from '@([^@]*)$')), ''),
    received_at = t.received_at FROM trace_message t WHERE t.id = r.id;
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
);
INSERT INTO quarantine_recipient (id, address_lc, domain_lc)
SELECT DISTINCT q.id, lower(a), coalesce(lower(substring(a from '@([^@]*)$')), '')
FROM quarantine q, unnest(q.recipients) AS a;
CREATE INDEX quarantine_recipient_address ON quarantine_recipient (address_lc, id);
CREATE INDEX quarantine_recipient_domain ON quarantine_recipient (domain_lc, id);
CREATE TABLE audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    domain TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX audit_domain ON audit (domain, seq);
",
    // 6 -> 7: login attempts, counted for every node; traces found by subject and verdict.
    "
CREATE TABLE login_attempt (key TEXT PRIMARY KEY, count INTEGER NOT NULL, first BIGINT NOT NULL);
CREATE INDEX login_attempt_first ON login_attempt (first);
ALTER TABLE trace_message ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE trace_message ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
",
    // 7 -> 8: each trace keeps its scan's symbols (JSON).
    "ALTER TABLE trace_message ADD COLUMN symbols TEXT NOT NULL DEFAULT '';",
];

/// Database time in milliseconds, as SQL (a macro, so that statements using it stay
/// constants).
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}
const NOW_MS: &str = now_ms!();

/// Connections in the pool of one process.
const POOL_SIZE: usize = 24;

/// A body larger than this leaves its connection's buffers that large: the connection is
/// closed after it rather than kept in the pool holding the memory.
const LARGE: usize = 1 << 20;

/// Closes a pooled connection instead of returning it to the pool.
fn retire(client: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(client));
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            Error::Conflict(e.to_string())
        } else {
            unavailable(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Error {
        unavailable(e)
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct Postgres {
    pool: Pool,
    changes: watch::Receiver<u64>,
}

/// TLS to the database: the system's trust anchors, used when the URL's `sslmode` asks.
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/database?sslmode=...`), and
    /// brings the schema to this version (under an advisory lock, so that nodes starting
    /// together migrate once).
    pub async fn connect(url: &str) -> Result<Postgres> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Unavailable(format!("store.url: {e}")))?;
        let (announce, changes) = watch::channel(0);
        tokio::spawn(listen(config.clone(), announce));
        let manager = Manager::from_config(
            config,
            tls(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        let store = Postgres { pool, changes };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One node migrates; the others wait here, then find nothing left to do.
        tx.execute("SELECT pg_advisory_xact_lock(7734001)", &[])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS mailsilo_schema (version INTEGER NOT NULL)")
            .await?;
        let version: i32 = match tx
            .query_opt("SELECT version FROM mailsilo_schema", &[])
            .await?
        {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO mailsilo_schema VALUES (0)", &[])
                    .await?;
                0
            }
        };
        for m in MIGRATIONS.iter().skip(version as usize) {
            tx.batch_execute(m).await?;
        }
        tx.execute("UPDATE mailsilo_schema SET version = $1", &[&VERSION])
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

const ACCOUNT_COLUMNS: &str = "SELECT name, role, organisation, password, created FROM account";

/// An account from a row of [`ACCOUNT_COLUMNS`]; an unknown role (a newer version's) reads
/// as the least one.
fn account_row(r: &tokio_postgres::Row) -> Account {
    let role: String = r.get(1);
    Account {
        name: r.get(0),
        role: Role::parse(&role).unwrap_or(Role::User),
        organisation: r.get(2),
        password: r.get(3),
        created: r.get(4),
    }
}

fn ret_to_sql(r: Option<Ret>) -> Option<i16> {
    r.map(|r| match r {
        Ret::Full => 0,
        Ret::Headers => 1,
    })
}

fn ret_from_sql(v: Option<i16>) -> Option<Ret> {
    v.map(|v| if v == 1 { Ret::Headers } else { Ret::Full })
}

fn status_of(n: i16) -> Status {
    match n {
        0 => Status::Pending,
        1 => Status::Delivered,
        _ => Status::Failed,
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

const INSERT_MESSAGE: &str = concat!(
    "INSERT INTO message (id, sender, envid, ret, received_at, body, next_attempt, lease_owner, lease_until, lease_token)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9::bigint < 0 THEN 0 ELSE ",
    now_ms!(),
    " + $9::bigint END, 1)"
);
const INSERT_RECIPIENTS: &str = "INSERT INTO recipient (message_id, idx, address, notify, orcpt, status, attempts, next_attempt, last_error, warned)
     SELECT $1, i, a, n, o, 0, 0, $6, NULL, false FROM unnest($2::int[], $3::text[], $4::smallint[], $5::text[]) AS u(i, a, n, o)";
const INSERT_TRACE_RECIPIENTS: &str = "INSERT INTO trace_recipient (id, address, address_lc, domain_lc, received_at)
     SELECT DISTINCT $1, a, l, d, $5::bigint FROM unnest($2::text[], $3::text[], $4::text[]) AS u(a, l, d)
     ON CONFLICT DO NOTHING";
const INSERT_TRACE_MESSAGE: &str = "INSERT INTO trace_message (id, received_at, sender, sender_lc, size, client, helo, tls, server, node, subject, verdict, symbols)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
const INSERT_EVENTS: &str = "INSERT INTO trace_event (id, at, node, kind, recipient, detail)
     SELECT $1, at, node, kind, recipient, detail
     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(at, node, kind, recipient, detail)";

/// Inserts a message's trace events in one statement.
async fn add_events(c: &impl GenericClient, id: &str, events: &[Event]) -> Result<u64> {
    let at: Vec<i64> = events.iter().map(|e| e.at).collect();
    let node: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let kind: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let recipient: Vec<Option<&str>> = events.iter().map(|e| e.recipient.as_deref()).collect();
    let detail: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
    let statement = c.prepare_cached(INSERT_EVENTS).await?;
    Ok(
        c.execute(&statement, &[&id, &at, &node, &kind, &recipient, &detail])
            .await?,
    )
}

/// Queues a message: its row, its recipients, its trace. The five statements are prepared
/// once per connection and sent together (tokio-postgres pipelines concurrent requests on a
/// connection), so a message costs one round trip here, not ten.
async fn enqueue(c: &impl GenericClient, m: &NewMessage, lease: Option<&Lease>) -> Result<()> {
    let owner = lease.map(|l| l.owner.as_str());
    let ttl = lease.map_or(-1, |l| ms(l.ttl));
    let n = m.recipients.len();
    let addresses: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
    let notify: Vec<i16> = m.recipients.iter().map(|r| i16::from(r.notify)).collect();
    let orcpt: Vec<Option<&str>> = m.recipients.iter().map(|r| r.orcpt.as_deref()).collect();
    let idx: Vec<i32> = (0..n as i32).collect();
    let (message, recipients) = tokio::try_join!(
        c.prepare_cached(INSERT_MESSAGE),
        c.prepare_cached(INSERT_RECIPIENTS),
    )?;
    // Results taken in statement order: after a failure PostgreSQL aborts the later ones,
    // and their errors must not hide the first (a duplicate id is a conflict).
    let (r1, r2, r3) = tokio::join!(
        async {
            c.execute(
                &message,
                &[
                    &m.id,
                    &m.sender,
                    &m.envid,
                    &ret_to_sql(m.ret),
                    &m.received_at,
                    &&m.body[..],
                    &m.next_attempt,
                    &owner,
                    &ttl,
                ],
            )
            .await
            .map_err(Error::from)
        },
        async {
            c.execute(
                &recipients,
                &[&m.id, &idx, &addresses, &notify, &orcpt, &m.next_attempt],
            )
            .await
            .map_err(Error::from)
        },
        insert_trace(c, m, &[]),
    );
    r1?;
    r2?;
    r3
}

/// A new message's trace: its recipients, its arrival, the `received` event and `more`
/// events, in three pipelined statements.
async fn insert_trace(c: &impl GenericClient, m: &NewMessage, more: &[Event]) -> Result<()> {
    let addresses: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
    let lower: Vec<String> = addresses.iter().map(|a| a.to_lowercase()).collect();
    let domains: Vec<String> = addresses.iter().map(|a| crate::domain_lc(a)).collect();
    let (trace_recipients, trace_message) = tokio::try_join!(
        c.prepare_cached(INSERT_TRACE_RECIPIENTS),
        c.prepare_cached(INSERT_TRACE_MESSAGE),
    )?;
    let a = &m.arrival;
    let mut events = vec![crate::received_event(m)];
    events.extend_from_slice(more);
    let sender_lc = m.sender.to_lowercase();
    let size = m.body.len() as i64;
    let subject = crate::decoded_subject(&crate::subject_of(&m.body));
    let verdict = m.verdict.as_deref().unwrap_or("");
    let symbols = crate::symbols_text(&m.symbols);
    let (r1, r2, r3) = tokio::join!(
        async {
            c.execute(
                &trace_recipients,
                &[&m.id, &addresses, &lower, &domains, &m.received_at],
            )
            .await
            .map_err(Error::from)
        },
        async {
            c.execute(
                &trace_message,
                &[
                    &m.id,
                    &m.received_at,
                    &m.sender,
                    &sender_lc,
                    &size,
                    &a.client,
                    &a.helo,
                    &a.tls,
                    &a.server,
                    &a.node,
                    &subject,
                    &verdict,
                    &symbols,
                ],
            )
            .await
            .map_err(Error::from)
        },
        add_events(c, &m.id, &events),
    );
    r1?;
    r2?;
    r3?;
    Ok(())
}

fn message_from(r: &Row) -> Message {
    Message {
        id: r.get("id"),
        sender: r.get("sender"),
        envid: r.get("envid"),
        ret: ret_from_sql(r.get("ret")),
        received_at: r.get("received_at"),
        body: Bytes::from(r.get::<_, Vec<u8>>("body")),
        recipients: Vec::new(),
    }
}

fn recipient_from(r: &Row) -> Recipient {
    Recipient {
        index: r.get::<_, i32>("idx") as u32,
        address: r.get("address"),
        notify: r.get::<_, i16>("notify") as u8,
        orcpt: r.get("orcpt"),
        status: status_of(r.get("status")),
        attempts: r.get::<_, i32>("attempts") as u32,
        next_attempt: r.get("next_attempt"),
        last_error: r.get("last_error"),
        warned: r.get("warned"),
    }
}

/// The messages `ids` with their recipients, in the order of `ids`; their bodies only with
/// `with_body`.
async fn load(c: &impl GenericClient, ids: &[String], with_body: bool) -> Result<Vec<Message>> {
    let sql = if with_body {
        "SELECT id, sender, envid, ret, received_at, body FROM message WHERE id = ANY($1)"
    } else {
        "SELECT id, sender, envid, ret, received_at, ''::bytea AS body FROM message WHERE id = ANY($1)"
    };
    let rows = c.query(sql, &[&ids]).await?;
    let mut messages: Vec<Message> = rows.iter().map(message_from).collect();
    let rcpts = c
        .query(
            "SELECT message_id, idx, address, notify, orcpt, status, attempts, next_attempt, last_error, warned
             FROM recipient WHERE message_id = ANY($1) ORDER BY message_id, idx",
            &[&ids],
        )
        .await?;
    for r in &rcpts {
        let id: &str = r.get("message_id");
        if let Some(m) = messages.iter_mut().find(|m| m.id == id) {
            m.recipients.push(recipient_from(r));
        }
    }
    messages.sort_by_key(|m| ids.iter().position(|i| *i == m.id));
    Ok(messages)
}

#[async_trait]
impl Store for Postgres {
    async fn enqueue(&self, message: NewMessage, lease: Option<&Lease>) -> Result<Option<i64>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        enqueue(&tx, &message, lease).await?;
        // The durable point: the commit returns after PostgreSQL's WAL flush.
        tx.commit().await?;
        if message.body.len() > LARGE {
            retire(client);
        }
        Ok(lease.map(|_| 1))
    }

    async fn claim(&self, lease: &Lease, now: i64, limit: usize) -> Result<Vec<Claimed>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: nodes claiming at once take different rows instead of waiting.
        let claim = tx
            .prepare_cached(concat!(
                "WITH picked AS (
                     SELECT id FROM message
                     WHERE next_attempt <= $1 AND lease_until < ",
                now_ms!(),
                "
                     ORDER BY next_attempt, id LIMIT $2
                     FOR UPDATE SKIP LOCKED)
                 UPDATE message m SET lease_owner = $3, lease_until = ",
                now_ms!(),
                " + $4, lease_token = m.lease_token + 1
                 FROM picked WHERE m.id = picked.id
                 RETURNING m.id, m.lease_token"
            ))
            .await?;
        let rows = tx
            .query(
                &claim,
                &[&now, &(limit as i64), &lease.owner, &ms(lease.ttl)],
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let messages = load(&tx, &ids, false).await?;
        tx.commit().await?;
        Ok(messages
            .into_iter()
            .filter_map(|message| {
                let token = rows
                    .iter()
                    .find(|r| r.get::<_, &str>(0) == message.id)?
                    .get(1);
                Some(Claimed { message, token })
            })
            .collect())
    }

    async fn claim_id(&self, id: &str, lease: &Lease) -> Result<Option<Claimed>> {
        let client = self.pool.get().await?;
        let claimed = client
            .query_opt(
                &format!(
                    "UPDATE message SET lease_owner = $2, lease_until = {NOW_MS} + $3,
                         lease_token = lease_token + 1
                     WHERE id = $1 AND lease_until < {NOW_MS} RETURNING lease_token"
                ),
                &[&id, &lease.owner, &ms(lease.ttl)],
            )
            .await?;
        let ids = [id.to_string()];
        match claimed {
            Some(row) => Ok(load(&client, &ids, true)
                .await?
                .pop()
                .map(|message| Claimed {
                    message,
                    token: row.get(0),
                })),
            None if !load(&client, &ids, false).await?.is_empty() => Err(being_delivered(id)),
            None => Ok(None),
        }
    }

    async fn count_login(
        &self,
        keys: &[(String, u32)],
        now: i64,
        window: i64,
    ) -> Result<Option<i64>> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM login_attempt WHERE first <= $1",
                &[&(now - window)],
            )
            .await?;
        let count = client
            .prepare_cached(
                "INSERT INTO login_attempt (key, count, first) VALUES ($1, 1, $2)
                 ON CONFLICT (key) DO UPDATE SET count = login_attempt.count + 1
                 RETURNING count, first",
            )
            .await?;
        let mut wait = None;
        for (key, limit) in keys {
            let row = client.query_one(&count, &[key, &now]).await?;
            let (n, first): (i32, i64) = (row.get(0), row.get(1));
            if i64::from(n) > i64::from(*limit) {
                wait = wait.max(Some((first + window - now).max(1)));
            }
        }
        Ok(wait)
    }

    async fn login_succeeded(&self, forget: &str, lower: &str) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM login_attempt WHERE key = $1", &[&forget])
            .await?;
        client
            .execute(
                "UPDATE login_attempt SET count = GREATEST(count - 1, 0) WHERE key = $1",
                &[&lower],
            )
            .await?;
        Ok(())
    }

    async fn renew(&self, held: &[(String, i64)], lease: &Lease) -> Result<Vec<String>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, tokens): (Vec<&str>, Vec<i64>) =
            held.iter().map(|(id, t)| (id.as_str(), *t)).unzip();
        let client = self.pool.get().await?;
        let renewed: std::collections::HashSet<String> = client
            .query(
                &format!(
                    "UPDATE message m SET lease_until = {NOW_MS} + $3
                     FROM unnest($1::text[], $2::bigint[]) AS h(id, token)
                     WHERE m.id = h.id AND m.lease_token = h.token
                     RETURNING m.id"
                ),
                &[&ids, &tokens, &ms(lease.ttl)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(ids
            .into_iter()
            .filter(|id| !renewed.contains(*id))
            .map(str::to_string)
            .collect())
    }

    async fn record(&self, id: &str, token: i64, a: Attempt) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (durability, lock, recipients) = tokio::try_join!(
            tx.prepare_cached("SELECT set_config('synchronous_commit', $1, true)"),
            tx.prepare_cached(
                "SELECT lease_token, COALESCE(lease_owner, '') FROM message WHERE id = $1 FOR UPDATE"
            ),
            tx.prepare_cached("SELECT idx, address, status FROM recipient WHERE message_id = $1"),
        )?;
        // Outcomes alone need not wait for their own WAL flush (the trait's contract: a lost
        // one repeats a delivery); DSNs do.
        let sync = if a.dsns.is_empty() { "off" } else { "on" };
        let (sync_params, id_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&sync], [&id]);
        let (set, held, rows) = tokio::join!(
            tx.query_one(&durability, &sync_params),
            tx.query_opt(&lock, &id_params),
            tx.query(&recipients, &id_params),
        );
        set?;
        let (held, rows) = (held?, rows?);
        let node: String = match held {
            Some(r) if r.get::<_, i64>(0) == token => r.get(1),
            _ => return Err(Error::LeaseLost(id.to_string())),
        };
        // What changes, decided on the rows just read (the message row is locked: no other
        // node records for it meanwhile); written below in a few statements sent together.
        let (mut idx, mut status, mut next, mut error) = (vec![], vec![], vec![], vec![]);
        let mut warned: Vec<i32> = Vec::new();
        let mut events = Vec::new();
        for (i, o) in &a.outcomes {
            let Some(row) = rows.iter().find(|r| r.get::<_, i32>(0) == *i as i32) else {
                continue;
            };
            let pending = row.get::<_, i16>(2) == 0;
            match o {
                Outcome::Warned => warned.push(*i as i32),
                _ if !pending => continue,
                Outcome::Delivered { .. } => {
                    idx.push(*i as i32);
                    status.push(1i16);
                    next.push(None::<i64>);
                    error.push(None::<&str>);
                }
                Outcome::Failed { reason } => {
                    idx.push(*i as i32);
                    status.push(2);
                    next.push(None);
                    error.push(Some(reason.as_str()));
                }
                Outcome::Deferred {
                    next_attempt,
                    reason,
                } => {
                    idx.push(*i as i32);
                    status.push(0);
                    next.push(Some(*next_attempt));
                    error.push(Some(reason.as_str()));
                }
            }
            events.push(crate::outcome_event(&node, &a.relay, row.get(1), o));
        }
        for dsn in &a.dsns {
            enqueue(&tx, dsn, None).await?;
            events.push(crate::dsn_event(&node, dsn));
        }
        let (outcomes, warn, finished_rcpts, finished, reschedule) = tokio::try_join!(
            tx.prepare_cached(
                "UPDATE recipient r SET status = u.status, attempts = r.attempts + 1,
                     next_attempt = COALESCE(u.next, r.next_attempt), last_error = u.error
                 FROM unnest($2::int[], $3::smallint[], $4::bigint[], $5::text[]) AS u(idx, status, next, error)
                 WHERE r.message_id = $1 AND r.idx = u.idx AND r.status = 0"
            ),
            tx.prepare_cached(
                "UPDATE recipient SET warned = true WHERE message_id = $1 AND idx = ANY($2)"
            ),
            tx.prepare_cached(
                "DELETE FROM recipient WHERE message_id = $1
                 AND NOT EXISTS (SELECT 1 FROM recipient WHERE message_id = $1 AND status = 0)"
            ),
            tx.prepare_cached(
                "DELETE FROM message WHERE id = $1
                 AND NOT EXISTS (SELECT 1 FROM recipient WHERE message_id = $1)"
            ),
            tx.prepare_cached(
                "UPDATE message SET
                     next_attempt = (SELECT MIN(next_attempt) FROM recipient WHERE message_id = $1 AND status = 0),
                     lease_owner = CASE WHEN $2 THEN NULL ELSE lease_owner END,
                     lease_until = CASE WHEN $2 THEN 0 ELSE lease_until END
                 WHERE id = $1"
            ),
        )?;
        // Sent together and run in order: the outcomes, then the message leaves the queue
        // when no recipient is pending, or is rescheduled (and released) when some are.
        let (r1, r2, r3, r4, r5, r6) = tokio::join!(
            async {
                if idx.is_empty() {
                    return Ok(0);
                }
                tx.execute(&outcomes, &[&id, &idx, &status, &next, &error])
                    .await
                    .map_err(Error::from)
            },
            async {
                if warned.is_empty() {
                    return Ok(0);
                }
                tx.execute(&warn, &[&id, &warned])
                    .await
                    .map_err(Error::from)
            },
            add_events(&tx, id, &events),
            async {
                tx.execute(&finished_rcpts, &[&id])
                    .await
                    .map_err(Error::from)
            },
            async { tx.execute(&finished, &[&id]).await.map_err(Error::from) },
            async {
                tx.execute(&reschedule, &[&id, &a.release])
                    .await
                    .map_err(Error::from)
            },
        );
        for r in [r1, r2, r3, r4, r5, r6] {
            r?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_all(&self, owner: &str) -> Result<usize> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "UPDATE message SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1",
                &[&owner],
            )
            .await? as usize)
    }

    async fn get(&self, id: &str) -> Result<Option<Message>> {
        let mut client = self.pool.get().await?;
        let tx = snapshot(&mut client).await?;
        let m = load(&tx, &[id.to_string()], true).await?.pop();
        tx.commit().await?;
        if m.as_ref().is_some_and(|m| m.body.len() > LARGE) {
            retire(client);
        }
        Ok(m)
    }

    async fn body(&self, id: &str) -> Result<Option<Bytes>> {
        let client = self.pool.get().await?;
        let body = client
            .query_opt("SELECT body FROM message WHERE id = $1", &[&id])
            .await?
            .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)));
        if body.as_ref().is_some_and(|b| b.len() > LARGE) {
            retire(client);
        }
        Ok(body)
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Summary>> {
        let mut client = self.pool.get().await?;
        let client = snapshot(&mut client).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, sender, octet_length(body)::bigint, received_at, next_attempt,
                         CASE WHEN lease_until > {NOW_MS} THEN lease_owner END
                     FROM message WHERE id > $1 ORDER BY id LIMIT $2"
                ),
                &[&after.unwrap_or(""), &(limit as i64)],
            )
            .await?;
        let mut out: Vec<Summary> = rows
            .iter()
            .map(|r| Summary {
                id: r.get(0),
                sender: r.get(1),
                size: r.get::<_, i64>(2) as u64,
                received_at: r.get(3),
                next_attempt: r.get::<_, Option<i64>>(4).unwrap_or(0),
                owner: r.get(5),
                pending: Vec::new(),
            })
            .collect();
        let ids: Vec<&str> = out.iter().map(|s| s.id.as_str()).collect();
        let pending = client
            .query(
                "SELECT message_id, address, last_error FROM recipient
                 WHERE message_id = ANY($1) AND status = 0 ORDER BY message_id, idx",
                &[&ids],
            )
            .await?;
        for r in &pending {
            let id: &str = r.get(0);
            if let Some(s) = out.iter_mut().find(|s| s.id == id) {
                s.pending.push((r.get(1), r.get(2)));
            }
        }
        Ok(out)
    }

    async fn delete(&self, id: &str, node: &str) -> Result<bool> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let removed = remove(&tx, id).await?;
        if removed {
            add_events(&tx, id, &[crate::deleted_event(node)]).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn flush(&self, now: i64) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE recipient SET next_attempt = $1 WHERE status = 0 AND next_attempt > $1",
                &[&now],
            )
            .await?;
        tx.execute(
            "UPDATE message SET next_attempt = $1 WHERE next_attempt > $1",
            &[&now],
        )
        .await?;
        tx.commit().await?;
        Ok(n as usize)
    }

    async fn trace(&self, id: &str) -> Result<Option<Trace>> {
        let mut client = self.pool.get().await?;
        let client = snapshot(&mut client).await?;
        let Some(mut t) = trace_of(&client, id).await? else {
            return Ok(None);
        };
        t.events = client
            .query(
                "SELECT at, node, kind, recipient, detail FROM trace_event WHERE id = $1 ORDER BY seq",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| Event {
                at: r.get(0),
                node: r.get(1),
                kind: r.get(2),
                recipient: r.get(3),
                detail: r.get(4),
            })
            .collect();
        Ok(Some(t))
    }

    async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<Trace>> {
        let mut client = self.pool.get().await?;
        let client = snapshot(&mut client).await?;
        // Driven by the most selective index the query allows: one recipient's, one
        // sender's, each of the scope's domains' (the newest of each, merged), or arrival
        // time alone; one statement per shape, so each gets its own plan. The other fields
        // (an end, the page's cursor, subject, client, verdict) filter along the way.
        let since = q.since.unwrap_or(i64::MIN);
        let from = q.from.as_deref().map(str::to_lowercase);
        let to = q.to.as_deref().map(str::to_lowercase);
        let scope: Option<Vec<String>> = q
            .domains
            .as_ref()
            .map(|d| d.iter().map(|x| x.to_lowercase()).collect());
        if scope.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        // The next page starts after the cursor's message, in (time, id) order.
        let cursor: Option<(i64, String)> = match &q.before {
            Some(id) => match client
                .query_opt("SELECT received_at FROM trace_message WHERE id = $1", &[id])
                .await?
            {
                Some(r) => Some((r.get(0), id.clone())),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let subject = q.subject.as_deref().map(str::to_lowercase);
        let verdict = q.verdict.as_deref().map(str::to_lowercase);
        // $1: since, $2: the rows to fetch; then the shape's own.
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
        let mut sql = match (&to, &from) {
            (Some(to), _) => {
                params.push(to);
                String::from(
                    "SELECT r.id, r.received_at FROM trace_recipient r JOIN trace_message t ON t.id = r.id
                     WHERE r.received_at >= $1 AND r.address_lc = $3",
                )
            }
            (None, Some(from)) => {
                params.push(from);
                String::from(
                    "SELECT t.id, t.received_at FROM trace_message t
                     WHERE t.received_at >= $1 AND t.sender_lc = $3",
                )
            }
            (None, None) if scope.is_some() => String::from(
                "SELECT x.id, x.received_at FROM unnest($3::text[]) AS d(name)
                 CROSS JOIN LATERAL (SELECT r.id, r.received_at FROM trace_recipient r
                     JOIN trace_message t ON t.id = r.id
                     WHERE r.domain_lc = d.name AND r.received_at >= $1 FILTERS
                     ORDER BY r.received_at DESC, r.id DESC LIMIT $2) x WHERE true",
            ),
            (None, None) => String::from(
                "SELECT t.id, t.received_at FROM trace_message t WHERE t.received_at >= $1",
            ),
        };
        if to.is_some()
            && let Some(from) = &from
        {
            params.push(from);
            sql.push_str(&format!(" AND t.sender_lc = ${}", params.len() + 1));
        }
        if let Some(d) = &scope {
            params.push(d);
            let n = params.len() + 1;
            match (&to, &from) {
                (Some(_), _) => sql.push_str(&format!(" AND r.domain_lc = ANY(${n})")),
                (None, Some(_)) => sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM trace_recipient r WHERE r.id = t.id AND r.domain_lc = ANY(${n}))"
                )),
                // The scope is the lateral join's list ($3).
                (None, None) => {}
            }
        }
        let a = if to.is_some() || (from.is_none() && scope.is_some()) {
            "r"
        } else {
            "t"
        };
        let mut filters = String::new();
        if let Some(until) = &q.until {
            params.push(until);
            filters.push_str(&format!(" AND {a}.received_at < ${}", params.len() + 1));
        }
        if let Some((at, id)) = &cursor {
            params.push(at);
            params.push(id);
            let (t, i) = (params.len(), params.len() + 1);
            filters.push_str(&format!(
                " AND ({a}.received_at < ${t} OR ({a}.received_at = ${t} AND {a}.id < ${i}))"
            ));
        }
        if let Some(subject) = &subject {
            params.push(subject);
            filters.push_str(&format!(
                " AND strpos(lower(t.subject), ${}) > 0",
                params.len() + 1
            ));
        }
        if let Some(client) = &q.client {
            params.push(client);
            filters.push_str(&format!(" AND t.client = ${}", params.len() + 1));
        }
        if let Some(verdict) = &verdict {
            params.push(verdict);
            filters.push_str(&format!(" AND t.verdict = ${}", params.len() + 1));
        }
        if sql.contains(" FILTERS") {
            sql = sql.replace(" FILTERS", &filters);
        } else {
            sql.push_str(&filters);
        }
        let order = match (&to, &from, &scope) {
            (Some(_), _, _) => " ORDER BY r.received_at DESC, r.id DESC LIMIT $2",
            (None, None, Some(_)) => " ORDER BY x.received_at DESC, x.id DESC LIMIT $2",
            _ => " ORDER BY t.received_at DESC, t.id DESC LIMIT $2",
        };
        sql.push_str(order);
        // A message with several recipients in scope comes once per recipient: fetched
        // until `limit` distinct ones are found or there are no more.
        let mut fetch = q.limit as i64;
        let ids = loop {
            let mut p = params.clone();
            p.insert(1, &fetch);
            let rows = client.query(&sql, &p).await?;
            let got = rows.len() as i64;
            let mut seen = std::collections::HashSet::new();
            let mut ids: Vec<String> = rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|id| seen.insert(id.clone()))
                .collect();
            if ids.len() >= q.limit || got < fetch || fetch >= q.limit as i64 * 64 {
                ids.truncate(q.limit);
                break ids;
            }
            fetch *= 2;
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            out.extend(trace_of(&client, id).await?);
        }
        Ok(out)
    }

    async fn add_event(&self, id: &str, event: Event) -> Result<()> {
        let client = self.pool.get().await?;
        add_events(&client, id, &[event]).await.map(drop)
    }

    async fn expire_traces(&self, before: i64) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let old = "SELECT id FROM trace_message WHERE received_at < $1
                   AND id NOT IN (SELECT id FROM message) AND id NOT IN (SELECT id FROM quarantine)";
        let params: [&(dyn ToSql + Sync); 1] = [&before];
        tx.execute(
            &format!("DELETE FROM trace_event WHERE id IN ({old})"),
            &params,
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM trace_recipient WHERE id IN ({old})"),
            &params,
        )
        .await?;
        let n = tx
            .execute(
                &format!("DELETE FROM trace_message WHERE id IN ({old})"),
                &params,
            )
            .await?;
        tx.commit().await?;
        Ok(n as usize)
    }

    async fn runtime_version(&self) -> Result<i64> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one("SELECT version FROM runtime_version", &[])
            .await?
            .get(0))
    }

    async fn quarantine(&self, held: Held) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let m = &held.message;
        let recipients: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
        tx.execute(
            "INSERT INTO quarantine (id, received_at, sender, recipients, envelope, verdict, score, reason, size, body, subject)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &m.id,
                &m.received_at,
                &m.sender,
                &recipients,
                &held.envelope(),
                &held.verdict,
                &held.score,
                &held.reason,
                &(m.body.len() as i64),
                &&m.body[..],
                &crate::subject_of(&m.body),
            ],
        )
        .await?;
        let lower: Vec<String> = recipients.iter().map(|a| a.to_lowercase()).collect();
        let domains: Vec<String> = recipients.iter().map(|a| crate::domain_lc(a)).collect();
        tx.execute(
            "INSERT INTO quarantine_recipient (id, address_lc, domain_lc)
             SELECT DISTINCT $1::TEXT, a, d FROM unnest($2::TEXT[], $3::TEXT[]) AS u(a, d)
             ON CONFLICT DO NOTHING",
            &[&m.id, &lower, &domains],
        )
        .await?;
        insert_trace(&tx, m, &[crate::held_event(&held)]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn trace_refused(&self, message: NewMessage, reply: String) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        insert_trace(&tx, &message, &[crate::refused_event(&message, &reply)]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn quarantined(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &HeldFilter,
    ) -> Result<Vec<HeldSummary>> {
        let client = self.pool.get().await?;
        let after = after.unwrap_or("");
        let limit = limit as i64;
        let scope: Option<Vec<String>> = filter
            .domains
            .as_ref()
            .map(|ds| ds.iter().map(|d| d.to_lowercase()).collect());
        if scope.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let address = filter.address.as_ref().map(|a| a.to_lowercase());
        let sender = filter.sender.as_ref().map(|s| s.to_lowercase());
        // $1 after, $2 limit, $3-$7 the filters on the message itself; then the driver's.
        let cond = "($3::TEXT IS NULL OR strpos(lower(q.sender), $3) > 0)
                 AND ($4::TEXT IS NULL OR q.verdict = $4)
                 AND ($5::BIGINT IS NULL OR q.received_at >= $5)
                 AND ($6::BIGINT IS NULL OR q.received_at < $6)
                 AND ($7::DOUBLE PRECISION IS NULL OR q.score >= $7)";
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &after,
            &limit,
            &sender,
            &filter.verdict,
            &filter.since,
            &filter.until,
            &filter.min_score,
        ];
        // Driven by the most selective index: the recipient's, each domain's (merged), or
        // the ids'.
        let sql = match (&address, &scope) {
            (Some(a), scope) => {
                params.push(a);
                params.push(scope);
                format!(
                    "SELECT DISTINCT r.id FROM quarantine_recipient r JOIN quarantine q ON q.id = r.id
                     WHERE r.address_lc = $8 AND ($9::TEXT[] IS NULL OR r.domain_lc = ANY($9))
                     AND r.id > $1 AND {cond} ORDER BY r.id LIMIT $2"
                )
            }
            (None, Some(ds)) => {
                params.push(ds);
                format!(
                    "SELECT DISTINCT x.id FROM unnest($8::TEXT[]) AS d(name)
                     CROSS JOIN LATERAL (SELECT DISTINCT r.id FROM quarantine_recipient r
                         JOIN quarantine q ON q.id = r.id
                         WHERE r.domain_lc = d.name AND r.id > $1 AND {cond}
                         ORDER BY r.id LIMIT $2) x
                     ORDER BY x.id LIMIT $2"
                )
            }
            (None, None) => {
                format!(
                    "SELECT q.id FROM quarantine q WHERE q.id > $1 AND {cond} ORDER BY q.id LIMIT $2"
                )
            }
        };
        let ids: Vec<String> = client
            .query(&sql, &params)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(client
            .query(
                "SELECT id, received_at, sender, recipients, verdict, score, reason, size, subject
                 FROM quarantine WHERE id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| HeldSummary {
                id: r.get(0),
                received_at: r.get(1),
                sender: r.get(2),
                recipients: r.get(3),
                verdict: r.get(4),
                score: r.get(5),
                reason: r.get(6),
                size: r.get::<_, i64>(7) as u64,
                subject: r.get(8),
            })
            .collect())
    }

    async fn held(&self, id: &str) -> Result<Option<Held>> {
        let client = self.pool.get().await?;
        client
            .query_opt(
                "SELECT id, received_at, sender, envelope, verdict, score, reason, body FROM quarantine WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|r| {
                Held::from_columns(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                )
            })
            .transpose()
    }

    async fn release(&self, id: &str, copy: NewMessage, node: &str) -> Result<bool> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if tx
            .execute("DELETE FROM quarantine WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Ok(false);
        }
        tx.execute("DELETE FROM quarantine_recipient WHERE id = $1", &[&id])
            .await?;
        enqueue(&tx, &copy, None).await?;
        add_events(&tx, id, &[crate::unheld_event(node, Some(&copy.id))]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn unhold_for(
        &self,
        id: &str,
        recipients: Vec<String>,
        copy: Option<NewMessage>,
        node: &str,
    ) -> Result<bool> {
        let gone: Vec<String> = recipients.iter().map(|r| r.to_lowercase()).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT envelope FROM quarantine WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
        else {
            return Ok(false);
        };
        let (envelope, left, taken) = crate::envelope_without(id, row.get(0), &gone)?;
        if taken.is_empty() {
            return Ok(false);
        }
        if left.is_empty() {
            tx.execute("DELETE FROM quarantine WHERE id = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM quarantine_recipient WHERE id = $1", &[&id])
                .await?;
        } else {
            tx.execute(
                "UPDATE quarantine SET recipients = $2, envelope = $3 WHERE id = $1",
                &[&id, &left, &envelope],
            )
            .await?;
            let taken_lc: Vec<String> = taken.iter().map(|r| r.to_lowercase()).collect();
            tx.execute(
                "DELETE FROM quarantine_recipient WHERE id = $1 AND address_lc = ANY($2)",
                &[&id, &taken_lc],
            )
            .await?;
        }
        if let Some(copy) = &copy {
            enqueue(&tx, copy, None).await?;
        }
        let events: Vec<Event> = taken
            .iter()
            .map(|r| crate::unheld_for_event(node, r, copy.as_ref().map(|m| m.id.as_str())))
            .collect();
        add_events(&tx, id, &events).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_held(&self, id: &str, node: &str) -> Result<bool> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if tx
            .execute("DELETE FROM quarantine WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Ok(false);
        }
        tx.execute("DELETE FROM quarantine_recipient WHERE id = $1", &[&id])
            .await?;
        add_events(&tx, id, &[crate::unheld_event(node, None)]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn grey_first_seen(&self, key: &str, now: i64, window_start: i64) -> Result<i64> {
        let client = self.pool.get().await?;
        // The upsert returns the row it wrote; when it wrote none (a sighting inside the
        // window), the existing first sighting is read.
        let written = client
            .query_opt(
                "INSERT INTO greylist (key, first_seen) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET first_seen = excluded.first_seen
                 WHERE greylist.first_seen < $3
                 RETURNING first_seen",
                &[&key, &now, &window_start],
            )
            .await?;
        match written {
            Some(r) => Ok(r.get(0)),
            None => Ok(client
                .query_one("SELECT first_seen FROM greylist WHERE key = $1", &[&key])
                .await?
                .get(0)),
        }
    }

    async fn grey_allow(&self, client: &str, until: i64) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO greylist_pass (client, until) VALUES ($1, $2)
             ON CONFLICT (client) DO UPDATE SET until = greatest(greylist_pass.until, excluded.until)",
            &[&client, &until],
        )
        .await?;
        Ok(())
    }

    async fn grey_allowed(&self, client: &str, now: i64) -> Result<bool> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT 1 FROM greylist_pass WHERE client = $1 AND until > $2",
            &[&client, &now],
        )
        .await?
        .is_some())
    }

    async fn expire_greylist(&self, before: i64, now: i64) -> Result<usize> {
        let c = self.pool.get().await?;
        let a = c
            .execute("DELETE FROM greylist WHERE first_seen < $1", &[&before])
            .await?;
        let b = c
            .execute("DELETE FROM greylist_pass WHERE until <= $1", &[&now])
            .await?;
        Ok((a + b) as usize)
    }

    async fn expire_held(&self, before: i64, node: &str) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids: Vec<String> = tx
            .query(
                "DELETE FROM quarantine WHERE received_at < $1 RETURNING id",
                &[&before],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "DELETE FROM quarantine_recipient WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
        let event = [crate::expired_held_event(node)];
        for id in &ids {
            add_events(&tx, id, &event).await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn set_organisation(&self, org: Organisation) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO organisation (name, domains, digest) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET domains = excluded.domains, digest = excluded.digest",
            &[&org.name, &org.domains, &org.digest],
        )
        .await?;
        Ok(())
    }

    async fn organisations(&self) -> Result<Vec<Organisation>> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT name, domains, digest FROM organisation ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| Organisation {
            name: r.get(0),
            domains: r.get(1),
            digest: r.get(2),
        })
        .collect())
    }

    async fn set_account(&self, a: Account) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO account (name, role, organisation, password, created)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET role = excluded.role,
                 organisation = excluded.organisation, password = excluded.password",
            &[
                &a.name,
                &a.role.as_str(),
                &a.organisation,
                &a.password,
                &a.created,
            ],
        )
        .await?;
        Ok(())
    }

    async fn account(&self, name: &str) -> Result<Option<Account>> {
        let c = self.pool.get().await?;
        Ok(
            c.query_opt(&format!("{ACCOUNT_COLUMNS} WHERE name = $1"), &[&name])
                .await?
                .map(|r| account_row(&r)),
        )
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        let c = self.pool.get().await?;
        Ok(c.query(&format!("{ACCOUNT_COLUMNS} ORDER BY name"), &[])
            .await?
            .iter()
            .map(account_row)
            .collect())
    }

    async fn add_session(&self, s: Session) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO session (key, account, csrf, expires) VALUES ($1, $2, $3, $4)",
            &[&s.key, &s.account, &s.csrf, &s.expires],
        )
        .await?;
        Ok(())
    }

    async fn session(&self, key: &str, now: i64) -> Result<Option<Session>> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT key, account, csrf, expires FROM session WHERE key = $1 AND expires > $2",
            &[&key, &now],
        )
        .await?
        .map(|r| Session {
            key: r.get(0),
            account: r.get(1),
            csrf: r.get(2),
            expires: r.get(3),
        }))
    }

    async fn end_sessions(&self, key: Option<&str>, account: Option<&str>) -> Result<usize> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "DELETE FROM session WHERE key = $1 OR account = $2",
            &[&key, &account],
        )
        .await? as usize)
    }

    async fn add_token(&self, t: ApiToken) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO api_token (key, account, label, role, organisation, created, expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &t.key,
                &t.account,
                &t.label,
                &t.role.as_str(),
                &t.organisation,
                &t.created,
                &t.expires,
            ],
        )
        .await?;
        Ok(())
    }

    async fn token(&self, key: &str, now: i64) -> Result<Option<ApiToken>> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT key, account, label, role, organisation, created, expires FROM api_token
             WHERE key = $1 AND (expires IS NULL OR expires > $2)",
            &[&key, &now],
        )
        .await?
        .map(|r| {
            let role: String = r.get(3);
            ApiToken {
                key: r.get(0),
                account: r.get(1),
                label: r.get(2),
                role: Role::parse(&role).unwrap_or(Role::User),
                organisation: r.get(4),
                created: r.get(5),
                expires: r.get(6),
            }
        }))
    }

    async fn revoke_tokens(&self, account: &str) -> Result<usize> {
        let c = self.pool.get().await?;
        Ok(
            c.execute("DELETE FROM api_token WHERE account = $1", &[&account])
                .await? as usize,
        )
    }

    async fn audit(&self, e: AuditEntry) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO audit (at, actor, action, object, domain, before, after)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &e.at, &e.actor, &e.action, &e.object, &e.domain, &e.before, &e.after,
            ],
        )
        .await?;
        Ok(())
    }

    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
        domains: Option<&[String]>,
    ) -> Result<Vec<AuditEntry>> {
        let c = self.pool.get().await?;
        let domains: Option<Vec<String>> =
            domains.map(|d| d.iter().map(|x| x.to_lowercase()).collect());
        Ok(c.query(
            "SELECT seq, at, actor, action, object, domain, before, after FROM audit
             WHERE seq < $1 AND ($3::TEXT[] IS NULL OR domain = ANY($3))
             ORDER BY seq DESC LIMIT $2",
            &[&before.unwrap_or(i64::MAX), &(limit as i64), &domains],
        )
        .await?
        .iter()
        .map(|r| AuditEntry {
            seq: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            object: r.get(4),
            domain: r.get(5),
            before: r.get(6),
            after: r.get(7),
        })
        .collect())
    }

    async fn expire_sessions(&self, now: i64) -> Result<usize> {
        let c = self.pool.get().await?;
        let a = c
            .execute("DELETE FROM session WHERE expires <= $1", &[&now])
            .await?;
        let b = c
            .execute("DELETE FROM api_token WHERE expires <= $1", &[&now])
            .await?;
        Ok((a + b) as usize)
    }

    async fn learn(&self, examples: Vec<Example>) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let st = tx
            .prepare_cached(
                "INSERT INTO classifier_example (digest, spam, features) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO UPDATE SET spam = excluded.spam, features = excluded.features
                 WHERE classifier_example.spam <> excluded.spam",
            )
            .await?;
        let mut changed = 0;
        for e in &examples {
            changed += tx.execute(&st, &[&e.digest, &e.spam, &e.features]).await? as usize;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn forget(&self, digests: Vec<String>) -> Result<usize> {
        let client = self.pool.get().await?;
        let gone = client
            .execute(
                "DELETE FROM classifier_example WHERE digest = ANY($1)",
                &[&digests],
            )
            .await?;
        Ok(gone as usize)
    }

    async fn examples(&self) -> Result<Vec<Example>> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT digest, spam, features FROM classifier_example ORDER BY digest",
                &[],
            )
            .await?
            .iter()
            .map(|r| Example {
                digest: r.get(0),
                spam: r.get(1),
                features: r.get(2),
            })
            .collect())
    }

    async fn example_counts(&self) -> Result<(u64, u64)> {
        let client = self.pool.get().await?;
        let r = client
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE spam), COUNT(*) FILTER (WHERE NOT spam)
                 FROM classifier_example",
                &[],
            )
            .await?;
        Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
    }

    async fn set_model(&self, data: Vec<u8>) -> Result<i64> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Serialises writers of the model: two trainers commit one after the other, each
        // with a higher version.
        tx.execute("LOCK TABLE classifier_model IN EXCLUSIVE MODE", &[])
            .await?;
        let version: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM classifier_model",
                &[],
            )
            .await?
            .get(0);
        tx.execute("DELETE FROM classifier_model", &[]).await?;
        tx.execute(
            "INSERT INTO classifier_model (version, data) VALUES ($1, $2)",
            &[&version, &data],
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn model(&self) -> Result<Option<(i64, Vec<u8>)>> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT version, data FROM classifier_model", &[])
            .await?
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn model_version(&self) -> Result<Option<i64>> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one("SELECT MAX(version) FROM classifier_model", &[])
            .await?
            .get(0))
    }

    async fn domains(&self) -> Result<Vec<DomainEntry>> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT name, settings, removed FROM runtime_domain ORDER BY name",
                &[],
            )
            .await?
            .iter()
            .map(|r| DomainEntry {
                name: r.get(0),
                settings: r.get(1),
                removed: r.get(2),
            })
            .collect())
    }

    async fn set_domain(&self, e: DomainEntry, before: Option<String>) -> Result<bool> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One statement each: under READ COMMITTED an UPDATE waiting on a row another
        // transaction changed checks its WHERE again on the new row, and an INSERT racing
        // another for the same name meets it as a conflict.
        let changed = match &before {
            Some(b) => {
                tx.execute(
                    "UPDATE runtime_domain SET settings = $2, removed = $3
                     WHERE name = $1 AND NOT removed AND settings = $4",
                    &[&e.name, &e.settings, &e.removed, b],
                )
                .await?
            }
            None => {
                tx.execute(
                    "INSERT INTO runtime_domain (name, settings, removed) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,
                         removed = excluded.removed
                     WHERE runtime_domain.removed",
                    &[&e.name, &e.settings, &e.removed],
                )
                .await?
            }
        };
        if changed != 1 {
            return Ok(false);
        }
        bump(&tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn servers(&self) -> Result<Vec<ServerEntry>> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT cluster, server, loading, state, address, removed FROM runtime_server
                 ORDER BY cluster, server",
                &[],
            )
            .await?
            .iter()
            .map(|r| ServerEntry {
                cluster: r.get(0),
                server: r.get(1),
                loading: r.get::<_, i32>(2) as u32,
                state: r.get(3),
                address: r.get(4),
                removed: r.get(5),
            })
            .collect())
    }

    async fn set_server(&self, e: ServerEntry) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            SET_SERVER,
            &[
                &e.cluster,
                &e.server,
                &(e.loading as i32),
                &e.state,
                &e.address,
                &e.removed,
            ],
        )
        .await?;
        bump(&tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn node_number(&self, node: &str) -> Result<u16> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO node (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                &[&node],
            )
            .await?;
        let n: i32 = client
            .query_one("SELECT number FROM node WHERE id = $1", &[&node])
            .await?
            .get(0);
        u16::try_from(n).map_err(|_| Error::Unavailable(format!("node number {n} past 65535")))
    }

    fn runtime_changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn secret(&self, name: &str, candidate: String) -> Result<String> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO secret (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &candidate],
        )
        .await?;
        Ok(
            c.query_one("SELECT value FROM secret WHERE name = $1", &[&name])
                .await?
                .get(0),
        )
    }

    async fn claim_digest(
        &self,
        organisation: &str,
        now: i64,
        period: i64,
        first: i64,
    ) -> Result<Option<i64>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The row exists before it is locked, so two nodes claiming at once queue on it
        // (`i64::MIN` marks "never sent").
        tx.execute(
            "INSERT INTO digest (organisation, last) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&organisation, &i64::MIN],
        )
        .await?;
        let last: i64 = tx
            .query_one(
                "SELECT last FROM digest WHERE organisation = $1 FOR UPDATE",
                &[&organisation],
            )
            .await?
            .get(0);
        if last != i64::MIN && last > now - period {
            return Ok(None);
        }
        let last = if last == i64::MIN { first } else { last };
        tx.execute(
            "UPDATE digest SET last = $2 WHERE organisation = $1",
            &[&organisation, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(last))
    }

    async fn add_stats(&self, counts: Vec<(StatKey, i64)>) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        // One statement for the batch (sorted, so concurrent flushes lock rows in one
        // order and cannot deadlock).
        let mut counts = counts;
        counts.sort();
        let mut metric = Vec::with_capacity(counts.len());
        let mut hour = Vec::with_capacity(counts.len());
        let mut domain = Vec::with_capacity(counts.len());
        let mut label = Vec::with_capacity(counts.len());
        let mut n = Vec::with_capacity(counts.len());
        for (k, v) in counts {
            metric.push(k.metric);
            hour.push(k.hour);
            domain.push(k.domain);
            label.push(k.label);
            n.push(v);
        }
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO stat (metric, hour, domain, label, n)
                 SELECT metric, hour, domain, label, SUM(n)
                 FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[])
                      AS t(metric, hour, domain, label, n)
                 GROUP BY metric, hour, domain, label
                 ON CONFLICT (metric, hour, domain, label) DO UPDATE SET n = stat.n + excluded.n",
                &[&metric, &hour, &domain, &label, &n],
            )
            .await?;
        Ok(())
    }

    async fn stat_series(
        &self,
        query: &StatQuery,
        metric: &str,
    ) -> Result<Vec<(i64, String, i64)>> {
        let client = self.pool.get().await?;
        let domains = scope(query);
        Ok(client
            .query(
                "SELECT hour, label, SUM(n)::BIGINT FROM stat
                 WHERE metric = $1 AND hour >= $2 AND hour < $3
                 AND ($4::TEXT[] IS NULL OR domain = ANY($4))
                 GROUP BY hour, label ORDER BY hour, label",
                &[&metric, &query.since, &query.until, &domains],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn stat_top(
        &self,
        query: &StatQuery,
        metric: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        let client = self.pool.get().await?;
        let domains = scope(query);
        let (column, metric) = match metric {
            "domain" => ("domain", "verdict"),
            m => ("label", m),
        };
        Ok(client
            .query(
                &format!(
                    "SELECT {column}, SUM(n)::BIGINT AS total FROM stat
                     WHERE metric = $1 AND hour >= $2 AND hour < $3
                     AND ($4::TEXT[] IS NULL OR domain = ANY($4))
                     GROUP BY {column} ORDER BY total DESC, {column} LIMIT $5"
                ),
                &[
                    &metric,
                    &query.since,
                    &query.until,
                    &domains,
                    &(limit as i64),
                ],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn expire_stats(&self, before: i64) -> Result<usize> {
        let client = self.pool.get().await?;
        Ok(client
            .execute("DELETE FROM stat WHERE hour < $1", &[&before])
            .await? as usize)
    }

    async fn queue_by_domain(&self, query: &StatQuery) -> Result<Vec<DomainQueue>> {
        let client = self.pool.get().await?;
        let domains = scope(query);
        Ok(client
            .query(
                "SELECT d, COUNT(*), COUNT(*) FILTER (WHERE attempts > 0), MIN(received_at)
                 FROM (SELECT lower(substring(r.address from '@([^@]*)$')) AS d, r.attempts,
                              m.received_at
                       FROM recipient r JOIN message m ON m.id = r.message_id
                       WHERE r.status = 0) q
                 WHERE $1::TEXT[] IS NULL OR d = ANY($1)
                 GROUP BY d ORDER BY COUNT(*) DESC, d",
                &[&domains],
            )
            .await?
            .iter()
            .map(|r| DomainQueue {
                domain: r.get::<_, Option<String>>(0).unwrap_or_default(),
                pending: r.get(1),
                deferred: r.get(2),
                oldest: r.get(3),
            })
            .collect())
    }

    async fn seed(&self, domains: Vec<DomainEntry>, servers: Vec<ServerEntry>) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut added = 0;
        for e in &domains {
            added += tx
                .execute(
                    "INSERT INTO runtime_domain (name, settings, removed) VALUES ($1, $2, false) ON CONFLICT DO NOTHING",
                    &[&e.name, &e.settings],
                )
                .await? as usize;
        }
        for e in &servers {
            added += tx
                .execute(
                    "INSERT INTO runtime_server (cluster, server, loading, state, address, removed)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[
                        &e.cluster,
                        &e.server,
                        &(e.loading as i32),
                        &e.state,
                        &e.address,
                        &e.removed,
                    ],
                )
                .await? as usize;
        }
        if added > 0 {
            bump(&tx).await?;
        }
        tx.commit().await?;
        Ok(added)
    }
}

/// A statistics query's domains, lower-case, as a parameter (`NULL`: every domain).
fn scope(q: &StatQuery) -> Option<Vec<String>> {
    q.domains
        .as_ref()
        .map(|ds| ds.iter().map(|d| d.to_lowercase()).collect())
}

/// A read-only transaction on one snapshot, for reads of several statements (a message and
/// its recipients): under the default READ COMMITTED each statement would see its own
/// moment, and a message could show without the recipients a commit removed in between.
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The channel on which a change of the run-time configuration is announced.
const CHANNEL: &str = "mailsilo_runtime";

/// Raises the run-time configuration's version and announces the change to every node; the
/// notification leaves when the transaction commits. (LISTEN/NOTIFY is the one feature here
/// that PostgreSQL-compatible engines often lack: there the nodes' periodic re-read, see
/// `runtime_changes`'s callers, is what carries a change.)
async fn bump(c: &impl GenericClient) -> Result<()> {
    c.execute("UPDATE runtime_version SET version = version + 1", &[])
        .await?;
    c.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
    Ok(())
}

/// Keeps one connection listening for announced changes and ticks `changes` for each, and
/// once each time listening starts (what changed while no connection listened was not
/// announced); reconnects every second while the database is away. Ends when no one
/// follows `changes` any more.
async fn listen(config: tokio_postgres::Config, changes: watch::Sender<u64>) {
    let tick = || changes.send_modify(|n| *n += 1);
    let mut lost = false;
    loop {
        let connected = tokio::select! {
            c = config.connect(tls()) => c,
            _ = changes.closed() => return,
        };
        match connected {
            Ok((client, mut connection)) => {
                let sql = format!("LISTEN {CHANNEL}");
                let mut listening = std::pin::pin!(client.batch_execute(&sql));
                let mut started = false;
                let error = loop {
                    tokio::select! {
                        r = &mut listening, if !started => match r {
                            Ok(()) => {
                                started = true;
                                if lost {
                                    tracing::info!("listening for run-time configuration changes again");
                                    lost = false;
                                }
                                tick();
                            }
                            Err(e) => break e.to_string(),
                        },
                        m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                            Some(Ok(AsyncMessage::Notification(_))) => tick(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break e.to_string(),
                            None => break "connection closed".into(),
                        },
                        _ = changes.closed() => return,
                    }
                };
                if !lost {
                    tracing::warn!(%error, "lost the connection that listens for run-time configuration changes; reconnecting");
                    lost = true;
                }
            }
            Err(error) => {
                if !lost {
                    tracing::warn!(%error, "cannot listen for run-time configuration changes; retrying");
                    lost = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = changes.closed() => return,
        }
    }
}

const SET_SERVER: &str =
    "INSERT INTO runtime_server (cluster, server, loading, state, address, removed)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (cluster, server) DO UPDATE SET loading = excluded.loading,
        state = excluded.state, address = excluded.address, removed = excluded.removed";

async fn remove(c: &impl GenericClient, id: &str) -> Result<bool> {
    c.execute("DELETE FROM recipient WHERE message_id = $1", &[&id])
        .await?;
    Ok(c.execute("DELETE FROM message WHERE id = $1", &[&id])
        .await?
        > 0)
}

async fn trace_of(c: &impl GenericClient, id: &str) -> Result<Option<Trace>> {
    let Some(r) = c
        .query_opt(
            "SELECT sender, size, received_at, client, helo, tls, server, node, subject, verdict, symbols
             FROM trace_message WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let recipients = c
        .query(
            "SELECT address FROM trace_recipient WHERE id = $1 ORDER BY address",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(Trace {
        id: id.to_string(),
        sender: r.get(0),
        recipients,
        subject: r.get(8),
        verdict: r.get(9),
        size: r.get::<_, i64>(1) as u64,
        received_at: r.get(2),
        arrival: Arrival {
            client: r.get(3),
            helo: r.get(4),
            tls: r.get(5),
            server: r.get(6),
            node: r.get(7),
        },
        symbols: crate::symbols_of(r.get(10)),
        events: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh database named `name` at schema version `version` (its first migrations
    /// applied, as that release left it), with `rows` written: the admin connection (to
    /// drop it) and the database's URL.
    async fn old_database(
        name: &str,
        version: usize,
        rows: &str,
    ) -> (tokio_postgres::Client, String) {
        let admin = std::env::var("MAILSILO_TEST_POSTGRES").expect(
            "MAILSILO_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts a throw-away PostgreSQL",
        );
        let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            c.batch_execute(&sql).await.unwrap();
        }
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let (old, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for m in &MIGRATIONS[..version] {
            old.batch_execute(m).await.unwrap();
        }
        old.batch_execute(&format!(
            "CREATE TABLE mailsilo_schema (version INTEGER NOT NULL);
             INSERT INTO mailsilo_schema VALUES ({version});
             {rows}"
        ))
        .await
        .unwrap();
        (c, url)
    }

    /// A database at schema version 1 (before the run-time configuration and node numbers)
    /// is brought to this version when a node connects, its queued mail kept and claimable.
    #[tokio::test(flavor = "multi_thread")]
    async fn version_one_is_migrated() {
        let name = format!("migrate_{}", std::process::id());
        let (c, url) = old_database(
            &name,
            1,
            "INSERT INTO message (id, sender, received_at, body, next_attempt)
                 VALUES ('OLD', 'a@outside.test', 1, 'Subject: x\r\n\r\nx\r\n', 1);
             INSERT INTO recipient VALUES ('OLD', 0, 'bob@example.com', 0, NULL, 0, 0, 1, NULL, false);",
        )
        .await;
        let store = Postgres::connect(&url).await.unwrap();
        let client = store.pool.get().await.unwrap();
        let version: i32 = client
            .query_one("SELECT version FROM mailsilo_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, VERSION);
        drop(client);
        let lease = Lease {
            owner: "n1".into(),
            ttl: Duration::from_secs(60),
        };
        let claimed = store.claim(&lease, 10, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].message.recipients[0].address, "bob@example.com");
        assert_eq!(store.runtime_version().await.unwrap(), 0);
        assert_eq!(store.node_number("n1").await.unwrap(), 1);
        drop(store);
        let _ = c
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await;
    }

    /// A version-5 database's held mail and traces are indexed by recipient and domain on
    /// the way to 6, so the scoped searches find them.
    #[tokio::test(flavor = "multi_thread")]
    async fn version_five_is_indexed_by_recipient() {
        let name = format!("migrate5_{}", std::process::id());
        let (c, url) = old_database(
            &name,
            5,
            "INSERT INTO quarantine VALUES ('Q1', 5, 's@x', ARRAY['Bob@Example.COM', '\"a@b\"@other.org'],
                 '{}', 'spam', 9, 'r', 1, '\\x00');
             INSERT INTO trace_message VALUES ('T1', 7, 's@x', 's@x', 1, '192.0.2.1', 'h', NULL, 'c1-s1', 'n1');
             INSERT INTO trace_recipient VALUES ('T1', 'Carol@Example.com', 'carol@example.com');",
        )
        .await;
        let store = Postgres::connect(&url).await.unwrap();
        for (address, domains) in [
            (Some("bob@example.com"), None),
            (None, Some(vec!["other.org".to_string()])),
        ] {
            let f = HeldFilter {
                address: address.map(str::to_string),
                domains,
                ..Default::default()
            };
            assert_eq!(
                store.quarantined(None, 10, &f).await.unwrap().len(),
                1,
                "{f:?}"
            );
        }
        let t = store
            .find_traces(&TraceQuery {
                domains: Some(vec!["example.com".into()]),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].received_at, 7);
        drop(store);
        let _ = c
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await;
    }
}
