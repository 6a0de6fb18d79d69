//! The embedded store: SQLite in WAL mode, one writer thread, group commit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use async_trait::async_trait;
use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::{
    Bytes, Error, Message, NewMessage, Outcome, QueueStore, Recipient, Result, Ret, Status, Summary,
};

/// The most operations run in one transaction.
const BATCH: usize = 512;

/// The schema version this code writes (`PRAGMA user_version`).
const VERSION: i64 = 1;

/// Version 1. `ret` is NULL when the sender gave no RET, 0 for FULL, 1 for HDRS.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS message (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    envid TEXT,
    ret INTEGER,
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

/// Brings a database to [`VERSION`]: creates it, or upgrades version 0 (which stored a
/// RET=FULL it had invented as `ret_headers_only = 0`, so only HDRS is carried over).
fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let old: bool = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('message') WHERE name = 'ret_headers_only'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if old {
        tx.execute_batch(
            "ALTER TABLE message ADD COLUMN ret INTEGER;
             UPDATE message SET ret = CASE ret_headers_only WHEN 1 THEN 1 END;
             ALTER TABLE message DROP COLUMN ret_headers_only;",
        )?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
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

type Reply<T> = oneshot::Sender<Result<T>>;

/// Answers an operation once its transaction's commit outcome (an error message, if it
/// failed) is known.
type Answer = Box<dyn FnOnce(Option<&str>)>;

/// One request to the writer thread.
enum Op {
    Enqueue(Box<NewMessage>, Reply<()>),
    Due(i64, usize, Reply<Vec<String>>),
    NextDue(Reply<Option<i64>>),
    Get(String, Reply<Option<Message>>),
    Record(String, Vec<(u32, Outcome)>, Reply<()>),
    List(Reply<Vec<Summary>>),
    Delete(String, Reply<bool>),
    Flush(i64, Reply<usize>),
    Recover(i64, Reply<usize>),
}

/// The embedded queue store. Cheap to share behind an `Arc`; dropping the last handle lets
/// the writer thread finish what is queued and close the database.
pub struct Embedded {
    tx: mpsc::Sender<Op>,
    commits: Arc<AtomicU64>,
}

impl Embedded {
    /// Opens (creating if needed) the queue database in `dir`.
    pub fn open(dir: &Path) -> Result<Embedded> {
        std::fs::create_dir_all(dir)?;
        let mut conn = Connection::open(dir.join("queue.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL with synchronous=FULL: every commit fsyncs the WAL before it returns.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut conn)?;
        // The database and WAL files now exist; fsync the directory so their entries do too.
        std::fs::File::open(dir)?.sync_all()?;
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(conn, rx, &counter))?;
        Ok(Embedded { tx, commits })
    }

    /// Transactions committed so far (each batch of operations is one).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
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
        // A batch that only records delivery outcomes need not wait for its own fsync: the
        // next durable commit (the WAL is sequential) or a checkpoint makes it durable, and
        // losing it to a power cut means a repeated delivery attempt, which at-least-once
        // allows. Anything an SMTP client or an operator was told is done commits durably.
        let durable = ops.iter().any(|op| {
            !matches!(
                op,
                Op::Record(..) | Op::Due(..) | Op::NextDue(..) | Op::Get(..) | Op::List(..)
            )
        });
        if durable != synchronous_full {
            let mode = if durable { "FULL" } else { "NORMAL" };
            if conn.pragma_update(None, "synchronous", mode).is_ok() {
                synchronous_full = durable;
            }
        }
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                for op in ops {
                    fail(op, &msg);
                }
                continue;
            }
        };
        let mut done: Vec<Answer> = Vec::with_capacity(ops.len());
        for op in ops {
            done.push(run(&tx, op));
        }
        // The commit is the durable point: with synchronous=FULL it fsyncs the WAL here.
        let commit = tx.commit().err().map(|e| e.to_string());
        commits.fetch_add(1, Ordering::Relaxed);
        for answer in done {
            answer(commit.as_deref());
        }
    }
}

fn fail(op: Op, msg: &str) {
    let e = || Error::Transaction(msg.to_string());
    match op {
        Op::Enqueue(_, r) => drop(r.send(Err(e()))),
        Op::Due(_, _, r) => drop(r.send(Err(e()))),
        Op::NextDue(r) => drop(r.send(Err(e()))),
        Op::Get(_, r) => drop(r.send(Err(e()))),
        Op::Record(_, _, r) => drop(r.send(Err(e()))),
        Op::List(r) => drop(r.send(Err(e()))),
        Op::Delete(_, r) => drop(r.send(Err(e()))),
        Op::Flush(_, r) => drop(r.send(Err(e()))),
        Op::Recover(_, r) => drop(r.send(Err(e()))),
    }
}

/// Runs one operation inside a savepoint (so a failing one leaves the others intact) and
/// returns what answers it once the commit's outcome is known.
fn run(conn: &Connection, op: Op) -> Answer {
    fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Answer {
        Box::new(move |commit_error: Option<&str>| {
            let result = match commit_error {
                Some(msg) => Err(Error::Transaction(msg.to_string())),
                None => result,
            };
            let _ = reply.send(result);
        })
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
    match op {
        Op::Enqueue(m, r) => answer(r, guarded(conn, |c| enqueue(c, &m))),
        Op::Due(now, limit, r) => answer(r, due(conn, now, limit)),
        Op::NextDue(r) => answer(r, next_due(conn)),
        Op::Get(id, r) => answer(r, get(conn, &id)),
        Op::Record(id, o, r) => answer(r, guarded(conn, |c| record(c, &id, &o))),
        Op::List(r) => answer(r, list(conn)),
        Op::Delete(id, r) => answer(r, guarded(conn, |c| delete(c, &id))),
        Op::Flush(now, r) => answer(r, guarded(conn, |c| flush(c, now, false))),
        Op::Recover(now, r) => answer(r, guarded(conn, |c| flush(c, now, true))),
    }
}

/// Octets written into a message body per incremental blob write.
const BLOB_PIECE: usize = 256 * 1024;

fn enqueue(c: &Connection, m: &NewMessage) -> Result<()> {
    // The body goes in as a zero blob written in place a piece at a time: binding it whole
    // would have SQLite copy the entire message into a record first.
    c.prepare_cached(
        "INSERT INTO message (id, sender, envid, ret, received_at, body) VALUES (?, ?, ?, ?, ?, zeroblob(?))",
    )?
    .execute(params![m.id, m.sender, m.envid, ret_to_sql(m.ret), m.received_at, m.body.len() as i64])?;
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
    Ok(())
}

fn due(c: &Connection, now: i64, limit: usize) -> Result<Vec<String>> {
    let mut st = c.prepare_cached(
        "SELECT message_id, MIN(next_attempt) AS t FROM recipient WHERE status = 0 AND next_attempt <= ?
         GROUP BY message_id ORDER BY t LIMIT ?",
    )?;
    let rows = st.query_map(params![now, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn next_due(c: &Connection) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT MIN(next_attempt) FROM recipient WHERE status = 0",
        [],
        |r| r.get(0),
    )?)
}

fn status_of(n: i64) -> Status {
    match n {
        0 => Status::Pending,
        1 => Status::Delivered,
        _ => Status::Failed,
    }
}

fn get(c: &Connection, id: &str) -> Result<Option<Message>> {
    let m = c
        .prepare_cached("SELECT sender, envid, ret, received_at, body FROM message WHERE id = ?")?
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

fn record(c: &Connection, id: &str, outcomes: &[(u32, Outcome)]) -> Result<()> {
    let mut done = c.prepare_cached(
        "UPDATE recipient SET status = ?, attempts = attempts + 1, last_error = ? WHERE message_id = ? AND idx = ? AND status = 0",
    )?;
    let mut defer = c.prepare_cached(
        "UPDATE recipient SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE message_id = ? AND idx = ? AND status = 0",
    )?;
    let mut warn =
        c.prepare_cached("UPDATE recipient SET warned = 1 WHERE message_id = ? AND idx = ?")?;
    for (idx, o) in outcomes {
        match o {
            Outcome::Delivered => done.execute(params![1, None::<String>, id, idx])?,
            Outcome::Failed { reason } => done.execute(params![2, reason, id, idx])?,
            Outcome::Deferred {
                next_attempt,
                reason,
            } => defer.execute(params![next_attempt, reason, id, idx])?,
            Outcome::Warned => warn.execute(params![id, idx])?,
        };
    }
    let pending: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM recipient WHERE message_id = ? AND status = 0")?
        .query_row([id], |r| r.get(0))?;
    if pending == 0 {
        delete(c, id)?;
    }
    Ok(())
}

fn list(c: &Connection) -> Result<Vec<Summary>> {
    let mut st = c.prepare_cached(
        "SELECT m.id, m.sender, length(m.body), m.received_at, r.next_attempt, r.address, r.last_error
         FROM message m JOIN recipient r ON r.message_id = m.id
         WHERE r.status = 0 ORDER BY m.received_at, m.id, r.idx",
    )?;
    let mut out: Vec<Summary> = Vec::new();
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    for row in rows {
        let (id, sender, size, received_at, next, rcpt, err) = row?;
        match out.last_mut() {
            Some(s) if s.id == id => {
                s.next_attempt = s.next_attempt.min(next);
                s.pending.push((rcpt, err));
            }
            _ => out.push(Summary {
                id,
                sender,
                size: size as u64,
                received_at,
                next_attempt: next,
                pending: vec![(rcpt, err)],
            }),
        }
    }
    Ok(out)
}

fn delete(c: &Connection, id: &str) -> Result<bool> {
    c.prepare_cached("DELETE FROM recipient WHERE message_id = ?")?
        .execute([id])?;
    Ok(c.prepare_cached("DELETE FROM message WHERE id = ?")?
        .execute([id])?
        > 0)
}

fn flush(c: &Connection, now: i64, unattempted_only: bool) -> Result<usize> {
    let sql = if unattempted_only {
        "UPDATE recipient SET next_attempt = ? WHERE status = 0 AND attempts = 0 AND next_attempt > ?"
    } else {
        "UPDATE recipient SET next_attempt = ? WHERE status = 0 AND next_attempt > ?"
    };
    Ok(c.execute(sql, params![now, now])?)
}

#[async_trait]
impl QueueStore for Embedded {
    async fn enqueue(&self, message: NewMessage) -> Result<()> {
        self.call(|r| Op::Enqueue(Box::new(message), r)).await
    }
    async fn due(&self, now: i64, limit: usize) -> Result<Vec<String>> {
        self.call(|r| Op::Due(now, limit, r)).await
    }
    async fn next_due(&self) -> Result<Option<i64>> {
        self.call(Op::NextDue).await
    }
    async fn get(&self, id: &str) -> Result<Option<Message>> {
        self.call(|r| Op::Get(id.to_string(), r)).await
    }
    async fn record(&self, id: &str, outcomes: Vec<(u32, Outcome)>) -> Result<()> {
        self.call(|r| Op::Record(id.to_string(), outcomes, r)).await
    }
    async fn list(&self) -> Result<Vec<Summary>> {
        self.call(Op::List).await
    }
    async fn delete(&self, id: &str) -> Result<bool> {
        self.call(|r| Op::Delete(id.to_string(), r)).await
    }
    async fn flush(&self, now: i64) -> Result<usize> {
        self.call(|r| Op::Flush(now, r)).await
    }
    async fn recover(&self, now: i64) -> Result<usize> {
        self.call(|r| Op::Recover(now, r)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewRecipient;

    fn msg(id: &str, rcpts: &[&str], at: i64) -> NewMessage {
        NewMessage {
            id: id.into(),
            sender: "s@x.net".into(),
            recipients: rcpts
                .iter()
                .map(|a| NewRecipient {
                    address: a.to_string(),
                    notify: 0,
                    orcpt: None,
                })
                .collect(),
            envid: Some("env".into()),
            ret: None,
            received_at: at,
            next_attempt: at,
            body: Bytes::from_static(b"Subject: t\r\n\r\nhi\r\n"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        s.enqueue(msg("A", &["a@example.com", "b@example.com"], 100))
            .await
            .unwrap();
        s.enqueue(msg("B", &["c@example.com"], 200)).await.unwrap();
        assert_eq!(s.due(150, 10).await.unwrap(), vec!["A"]);
        assert_eq!(s.due(250, 10).await.unwrap(), vec!["A", "B"]);
        assert_eq!(s.next_due().await.unwrap(), Some(100));
        s.record(
            "A",
            vec![
                (0, Outcome::Delivered),
                (
                    1,
                    Outcome::Deferred {
                        next_attempt: 500,
                        reason: "451 busy".into(),
                    },
                ),
            ],
        )
        .await
        .unwrap();
        let a = s.get("A").await.unwrap().unwrap();
        assert_eq!(a.recipients[0].status, Status::Delivered);
        assert_eq!(a.recipients[1].status, Status::Pending);
        assert_eq!(a.recipients[1].next_attempt, 500);
        assert_eq!(a.recipients[1].attempts, 1);
        assert_eq!(a.envid.as_deref(), Some("env"));
        assert_eq!(a.ret, None);
        assert_eq!(&a.body[..], b"Subject: t\r\n\r\nhi\r\n");
        let l = s.list().await.unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0].pending,
            vec![("b@example.com".to_string(), Some("451 busy".to_string()))]
        );
        assert_eq!(s.flush(300).await.unwrap(), 1);
        assert_eq!(s.due(300, 10).await.unwrap(), vec!["B", "A"]);
        s.record(
            "A",
            vec![(
                1,
                Outcome::Failed {
                    reason: "550 no".into(),
                },
            )],
        )
        .await
        .unwrap();
        assert!(
            s.get("A").await.unwrap().is_none(),
            "finished message is removed"
        );
        assert!(s.delete("B").await.unwrap());
        assert!(!s.delete("B").await.unwrap());
        assert!(s.list().await.unwrap().is_empty());
        // Recording against a deleted message is harmless.
        s.record("B", vec![(0, Outcome::Delivered)]).await.unwrap();
    }

    /// A body larger than one blob piece is stored and read back byte for byte; RET
    /// round-trips, absent included.
    #[tokio::test(flavor = "multi_thread")]
    async fn large_bodies_and_ret() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..(3 * BLOB_PIECE + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        for (id, ret) in [
            ("F", Some(Ret::Full)),
            ("H", Some(Ret::Headers)),
            ("N", None),
        ] {
            let mut m = msg(id, &["a@example.com"], 1);
            m.ret = ret;
            m.body = Bytes::from(body.clone());
            s.enqueue(m).await.unwrap();
            let got = s.get(id).await.unwrap().unwrap();
            assert_eq!(got.ret, ret);
            assert!(got.body == body, "body of {id} round-trips");
        }
    }

    /// A version-0 database (RET kept as `ret_headers_only`) is upgraded in place.
    #[tokio::test(flavor = "multi_thread")]
    async fn version_zero_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("queue.db")).unwrap();
            c.execute_batch(&SCHEMA.replace("ret INTEGER,", "ret_headers_only INTEGER NOT NULL,"))
                .unwrap();
            c.execute_batch(
                "INSERT INTO message VALUES ('A', 's@x', NULL, 1, 1, x'00');
                 INSERT INTO message VALUES ('B', 's@x', NULL, 0, 1, x'00');
                 INSERT INTO recipient VALUES ('A', 0, 'a@example.com', 0, NULL, 0, 0, 1, NULL, 0);
                 INSERT INTO recipient VALUES ('B', 0, 'a@example.com', 0, NULL, 0, 0, 1, NULL, 0);",
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
        s.enqueue(msg("C", &["c@example.com"], 1)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn survives_reopen_and_recovers_unattempted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Embedded::open(dir.path()).unwrap();
            let mut m = msg("A", &["a@example.com"], 100);
            m.next_attempt = 10_000;
            s.enqueue(m).await.unwrap();
            let mut m = msg("B", &["b@example.com"], 100);
            m.next_attempt = 10_000;
            s.enqueue(m).await.unwrap();
            s.record(
                "B",
                vec![(
                    0,
                    Outcome::Deferred {
                        next_attempt: 9_000,
                        reason: "x".into(),
                    },
                )],
            )
            .await
            .unwrap();
        }
        let s = Embedded::open(dir.path()).unwrap();
        assert!(s.due(200, 10).await.unwrap().is_empty());
        assert_eq!(s.recover(200).await.unwrap(), 1, "only the never-tried one");
        assert_eq!(s.due(200, 10).await.unwrap(), vec!["A"]);
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
                s.enqueue(msg(&format!("M{i}"), &["a@example.com"], 1))
                    .await
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
        assert_eq!(s.list().await.unwrap().len(), 200);
        // A duplicate id fails alone; the store keeps working.
        assert!(s.enqueue(msg("M1", &["a@example.com"], 1)).await.is_err());
        assert_eq!(s.list().await.unwrap().len(), 200);
    }
}
