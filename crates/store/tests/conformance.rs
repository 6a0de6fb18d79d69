//! The store's conformance suite: every test runs against the embedded store and against
//! PostgreSQL (a fresh database each, on the server `MAILSILO_TEST_POSTGRES` names, which
//! `scripts/test.sh` starts), so both back ends keep the same promises.

use std::sync::Arc;
use std::time::Duration;

use mailsilo_store::{
    Account, ApiToken, Arrival, Attempt, Bytes, Embedded, Error, HeldFilter, Lease, NewMessage,
    NewRecipient, Organisation, Outcome, Postgres, Role, Session, Status, Store, TraceQuery,
};

/// A throw-away PostgreSQL database, dropped (best effort) with the handle.
struct Database {
    admin: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
                        .await;
                }
            });
        })
        .join();
    }
}

/// The PostgreSQL server's URL; the suite refuses to pass without one.
fn postgres_url() -> String {
    std::env::var("MAILSILO_TEST_POSTGRES").expect(
        "MAILSILO_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts a throw-away PostgreSQL",
    )
}

async fn fresh_database() -> (String, Database) {
    let admin = postgres_url();
    let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(conn);
    let name = format!(
        "conformance_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    c.execute(&format!("CREATE DATABASE {name}"), &[])
        .await
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("MAILSILO_TEST_POSTGRES has no database part: {admin}"),
    };
    (url, Database { admin, name })
}

/// Runs `test` against both back ends (for PostgreSQL, with `pools` separate connection
/// pools on the same database, as separate nodes would have).
async fn both<F, Fut>(pools: usize, test: F)
where
    F: Fn(Vec<Arc<dyn Store>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn Store> = Arc::new(Embedded::open(dir.path()).unwrap());
    test(vec![embedded; pools]).await;
    let (url, _db) = fresh_database().await;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..pools {
        stores.push(Arc::new(Postgres::connect(&url).await.unwrap()));
    }
    test(stores).await;
}

fn message(id: &str, rcpts: &[&str], due: i64) -> NewMessage {
    NewMessage {
        id: id.into(),
        sender: "Sender@Outside.NET".into(),
        recipients: rcpts
            .iter()
            .map(|a| NewRecipient {
                address: a.to_string(),
                notify: 0,
                orcpt: Some(format!("rfc822;{a}")),
            })
            .collect(),
        envid: Some("E+2B1".into()),
        ret: None,
        received_at: due,
        next_attempt: due,
        body: Bytes::from_static(b"Subject: t\r\n\r\nhi\r\n"),
        arrival: Arrival {
            client: "192.0.2.7".into(),
            helo: "client.example".into(),
            tls: Some("TLSv1_3".into()),
            server: "c1-s1".into(),
            node: "n1".into(),
        },
        scan: None,
        verdict: None,
        symbols: Vec::new(),
    }
}

fn lease(owner: &str, ms: u64) -> Lease {
    Lease {
        owner: owner.into(),
        ttl: Duration::from_millis(ms),
    }
}

fn attempt(outcomes: Vec<(u32, Outcome)>, release: bool) -> Attempt {
    Attempt {
        relay: "mx.client.example:25".into(),
        outcomes,
        dsns: Vec::new(),
        release,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_lives_through_claims_outcomes_and_its_trace() {
    both(1, |s| async move {
        let s = &s[0];
        s.enqueue(message("A", &["a@example.com", "b@example.com"], 100), None)
            .await
            .unwrap();
        let n1 = lease("n1", 60_000);
        assert!(
            s.claim(&n1, 99, 10).await.unwrap().is_empty(),
            "not due yet"
        );
        let claimed = s.claim(&n1, 100, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let (m, token) = (&claimed[0].message, claimed[0].token);
        assert_eq!(m.id, "A");
        assert_eq!(m.envid.as_deref(), Some("E+2B1"));
        assert!(m.body.is_empty(), "a claim leaves the body in the store");
        assert_eq!(
            &s.body("A").await.unwrap().unwrap()[..],
            b"Subject: t\r\n\r\nhi\r\n"
        );
        assert_eq!(
            &s.get("A").await.unwrap().unwrap().body[..],
            b"Subject: t\r\n\r\nhi\r\n"
        );
        assert_eq!(
            m.recipients[1].orcpt.as_deref(),
            Some("rfc822;b@example.com")
        );
        assert!(s.claim(&n1, 1000, 10).await.unwrap().is_empty(), "leased");
        let listed = s.list(None, 10).await.unwrap();
        assert_eq!(listed[0].owner.as_deref(), Some("n1"));
        s.record(
            "A",
            token,
            attempt(
                vec![
                    (
                        0,
                        Outcome::Delivered {
                            reply: "250 2.0.0 queued as X1".into(),
                        },
                    ),
                    (
                        1,
                        Outcome::Deferred {
                            next_attempt: 500,
                            reason: "451 4.3.0 busy".into(),
                        },
                    ),
                ],
                true,
            ),
        )
        .await
        .unwrap();
        let a = s.get("A").await.unwrap().unwrap();
        assert_eq!(a.recipients[0].status, Status::Delivered);
        assert_eq!(
            (a.recipients[1].status, a.recipients[1].next_attempt),
            (Status::Pending, 500)
        );
        assert!(
            s.claim(&n1, 499, 10).await.unwrap().is_empty(),
            "released, but not due"
        );
        let again = s.claim(&n1, 500, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].token > token, "every claim a new token");
        s.record(
            "A",
            again[0].token,
            attempt(
                vec![(
                    1,
                    Outcome::Failed {
                        reason: "550 5.1.1 no such user".into(),
                    },
                )],
                true,
            ),
        )
        .await
        .unwrap();
        assert!(
            s.get("A").await.unwrap().is_none(),
            "finished: out of the queue"
        );
        // The trace stays, with every step.
        let t = s.trace("A").await.unwrap().expect("the trace is kept");
        assert_eq!(t.sender, "Sender@Outside.NET");
        assert_eq!(t.recipients, vec!["a@example.com", "b@example.com"]);
        assert_eq!(t.arrival.server, "c1-s1");
        let kinds: Vec<&str> = t.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["received", "delivered", "deferred", "failed"]);
        assert!(
            t.events[1]
                .detail
                .contains("mx.client.example:25: 250 2.0.0 queued as X1")
        );
        assert_eq!(t.events[3].recipient.as_deref(), Some("b@example.com"));
        assert_eq!(t.events[3].node, "n1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_exclusive_under_concurrency() {
    both(2, |stores| async move {
        for i in 0..300 {
            stores[0]
                .enqueue(message(&format!("M{i:04}"), &["a@example.com"], 1), None)
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for t in 0..8 {
            // Tasks of both pools (nodes) claim at once.
            let s = stores[t % stores.len()].clone();
            tasks.push(tokio::spawn(async move {
                let me = lease(&format!("node{t}"), 60_000);
                let mut got = Vec::new();
                loop {
                    let batch = s.claim(&me, 10, 7).await.unwrap();
                    if batch.is_empty() {
                        break got;
                    }
                    got.extend(batch.into_iter().map(|c| c.message.id));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a message was claimed twice");
        assert_eq!(n, 300, "every message was claimed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_leases_are_taken_over_and_stale_records_refused() {
    both(2, |s| async move {
        s[0].enqueue(message("L", &["a@example.com"], 1), None)
            .await
            .unwrap();
        let (n1, n2) = (lease("n1", 800), lease("n2", 60_000));
        let first = s[0].claim(&n1, 10, 10).await.unwrap();
        assert_eq!(first.len(), 1);
        // Renewed while n1 works: n2 gets nothing.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let held = [("L".to_string(), first[0].token)];
            assert!(s[0].renew(&held, &n1).await.unwrap().is_empty());
            assert!(
                s[1].claim(&n2, 10, 10).await.unwrap().is_empty(),
                "renewed lease held"
            );
        }
        // n1 stops renewing (it died, or hangs): the lease expires and n2 takes over.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let taken = s[1].claim(&n2, 10, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "the expired lease was taken over");
        let delivered = || {
            attempt(
                vec![(
                    0,
                    Outcome::Delivered {
                        reply: "250 ok".into(),
                    },
                )],
                true,
            )
        };
        assert!(matches!(
            s[0].record("L", first[0].token, delivered()).await,
            Err(Error::LeaseLost(_))
        ));
        let held = [("L".to_string(), first[0].token), ("gone".to_string(), 1)];
        assert_eq!(
            s[0].renew(&held, &n1).await.unwrap(),
            vec!["L".to_string(), "gone".to_string()],
            "a lost lease and a message that is no more are reported, not renewed"
        );
        assert!(
            s[1].get("L").await.unwrap().is_some(),
            "the stale record wrote nothing"
        );
        s[1].record("L", taken[0].token, delivered()).await.unwrap();
        assert!(s[1].get("L").await.unwrap().is_none());
        let t = s[1].trace("L").await.unwrap().unwrap();
        assert_eq!(
            t.events.last().unwrap().node,
            "n2",
            "the trace names the node that delivered"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_mail_is_held_by_its_receiver_until_released() {
    both(2, |s| async move {
        let n1 = lease("n1", 60_000);
        let token = s[0]
            .enqueue(message("F", &["a@example.com"], 1), Some(&n1))
            .await
            .unwrap()
            .expect("a token for the receiving node");
        assert!(
            s[1].claim(&lease("n2", 60_000), 10, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // The receiver records under the token it was given.
        s[0].record(
            "F",
            token,
            attempt(
                vec![(
                    0,
                    Outcome::Deferred {
                        next_attempt: 5,
                        reason: "421 later".into(),
                    },
                )],
                false,
            ),
        )
        .await
        .unwrap();
        // It crashed before releasing; starting again it gives its leases back at once.
        assert_eq!(s[0].release_all("n1").await.unwrap(), 1);
        assert_eq!(
            s[1].claim(&lease("n2", 60_000), 10, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        // Duplicate ids are refused, whatever the back end.
        let again = s[0]
            .enqueue(message("F", &["a@example.com"], 1), None)
            .await;
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dsn_is_queued_with_the_outcome_that_caused_it_or_not_at_all() {
    both(1, |s| async move {
        let s = &s[0];
        s.enqueue(message("D", &["a@example.com"], 1), None)
            .await
            .unwrap();
        let c = s.claim(&lease("n1", 60_000), 10, 10).await.unwrap();
        let mut bounce = message("DSN1", &["Sender@Outside.NET"], 1);
        bounce.sender = String::new();
        let failed = Attempt {
            relay: "mx:25".into(),
            outcomes: vec![(
                0,
                Outcome::Failed {
                    reason: "550 5.1.1 unknown".into(),
                },
            )],
            dsns: vec![bounce.clone()],
            release: true,
        };
        // Under a stale token: neither the outcome nor the DSN.
        assert!(matches!(
            s.record("D", c[0].token + 1, failed.clone()).await,
            Err(Error::LeaseLost(_))
        ));
        assert!(s.get("DSN1").await.unwrap().is_none());
        s.record("D", c[0].token, failed).await.unwrap();
        let dsn = s.get("DSN1").await.unwrap().expect("the DSN is queued");
        assert_eq!(dsn.sender, "");
        assert!(s.get("D").await.unwrap().is_none());
        let t = s.trace("D").await.unwrap().unwrap();
        assert!(
            t.events
                .iter()
                .any(|e| e.kind == "dsn" && e.detail.contains("DSN1")),
            "{:?}",
            t.events
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_and_operator_commands() {
    both(1, |s| async move {
        let s = &s[0];
        for i in 0..25 {
            s.enqueue(message(&format!("P{i:02}"), &["a@example.com"], 1000), None)
                .await
                .unwrap();
        }
        let first = s.list(None, 10).await.unwrap();
        let second = s.list(Some(&first[9].id), 10).await.unwrap();
        let third = s.list(Some(&second[9].id), 10).await.unwrap();
        assert_eq!((first.len(), second.len(), third.len()), (10, 10, 5));
        assert_eq!(first[0].id, "P00");
        assert_eq!(third[4].id, "P24");
        assert_eq!(first[0].pending, vec![("a@example.com".to_string(), None)]);
        assert_eq!(s.flush(10).await.unwrap(), 25);
        assert_eq!(
            s.claim(&lease("n1", 60_000), 10, 100).await.unwrap().len(),
            25,
            "flushed: due now"
        );
        assert!(s.delete("P03", "operator-node").await.unwrap());
        assert!(!s.delete("P03", "operator-node").await.unwrap());
        let t = s.trace("P03").await.unwrap().unwrap();
        assert_eq!(t.events.last().unwrap().kind, "deleted");
    })
    .await;
}

/// An operator claims one message by its id whatever its schedule, with its body, but not
/// while another claim on it is live; what it records under that claim counts.
#[tokio::test(flavor = "multi_thread")]
async fn one_message_is_claimed_by_id_unless_being_delivered() {
    both(2, |s| async move {
        s[0].enqueue(message("O", &["a@example.com"], 5000), None)
            .await
            .unwrap();
        let op = lease("operator", 60_000);
        assert!(s[0].claim_id("none", &op).await.unwrap().is_none());
        let c = s[1]
            .claim_id("O", &op)
            .await
            .unwrap()
            .expect("claimed though not due");
        assert_eq!(&c.message.body[..], b"Subject: t\r\n\r\nhi\r\n");
        assert_eq!(c.message.recipients.len(), 1);
        assert!(matches!(
            s[0].claim_id("O", &lease("n2", 60_000)).await,
            Err(Error::Conflict(_))
        ));
        assert!(
            s[0].claim(&lease("n2", 60_000), 6000, 10)
                .await
                .unwrap()
                .is_empty(),
            "due, but the operator's claim holds it"
        );
        let failed = Outcome::Failed {
            reason: "5.0.0 returned".into(),
        };
        s[0].record("O", c.token, attempt(vec![(0, failed)], true))
            .await
            .unwrap();
        assert!(s[0].get("O").await.unwrap().is_none(), "no recipient left");

        s[0].enqueue(message("D", &["a@example.com"], 1), None)
            .await
            .unwrap();
        let d = s[0].claim(&lease("n1", 60_000), 10, 10).await.unwrap();
        assert!(
            matches!(s[1].claim_id("D", &op).await, Err(Error::Conflict(_))),
            "being delivered"
        );
        s[0].record("D", d[0].token, attempt(Vec::new(), true))
            .await
            .unwrap();
        assert!(
            s[1].claim_id("D", &op).await.unwrap().is_some(),
            "given back: claimable again"
        );
    })
    .await;
}

/// Login attempts are counted for every node: past a key's limit within its window the
/// attempt is refused with the seconds left, whichever node counts it; a success takes
/// the account's count back and lowers the network's; windows end.
#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_are_counted_for_every_node() {
    both(2, |s| async move {
        let keys = |account: &str| {
            vec![
                (format!("account {account} from 192.0.2.1"), 3),
                ("network 192.0.2.1".to_string(), 5),
            ]
        };
        for i in 0..3 {
            let node = &s[i % 2];
            assert_eq!(
                node.count_login(&keys("alice"), 1000, 900).await.unwrap(),
                None
            );
        }
        assert_eq!(
            s[1].count_login(&keys("alice"), 1100, 900).await.unwrap(),
            Some(800),
            "the fourth, on the other node: refused until the window ends"
        );
        s[0].login_succeeded("account bob from 192.0.2.1", "network 192.0.2.1")
            .await
            .unwrap();
        // The network has 3 of 5 left after one is taken back: bob gets 2 more.
        assert_eq!(
            s[0].count_login(&keys("bob"), 1200, 900).await.unwrap(),
            None
        );
        assert_eq!(
            s[1].count_login(&keys("bob"), 1200, 900).await.unwrap(),
            None
        );
        assert_eq!(
            s[0].count_login(&keys("bob"), 1200, 900).await.unwrap(),
            Some(700),
            "the network's limit"
        );
        // Its window over, alice starts again (so does the network).
        assert_eq!(
            s[1].count_login(&keys("alice"), 1900, 900).await.unwrap(),
            None
        );
    })
    .await;
}

/// The statistics' counters add up across nodes and flushes, read by hour and by scope,
/// rank their labels, and expire; the queue is summed by recipient domain.
#[tokio::test(flavor = "multi_thread")]
async fn statistics_add_up_by_hour_and_scope() {
    use mailsilo_store::{DomainQueue, StatKey, StatQuery};
    both(2, |s| async move {
        let key = |hour: i64, domain: &str, metric: &str, label: &str| StatKey {
            hour,
            domain: domain.into(),
            metric: metric.into(),
            label: label.into(),
        };
        s[0].add_stats(vec![
            (key(3600, "a.example", "verdict", "spam"), 2),
            (key(3600, "a.example", "verdict", "clean"), 5),
            (key(3600, "b.example", "verdict", "clean"), 1),
            (key(7200, "a.example", "verdict", "spam"), 1),
            (key(3600, "a.example", "sender", "bulk.example"), 6),
            (key(3600, "b.example", "sender", "other.example"), 9),
        ])
        .await
        .unwrap();
        // Another node's flush adds to the same counters.
        s[1].add_stats(vec![(key(3600, "a.example", "verdict", "spam"), 3)])
            .await
            .unwrap();
        let all = StatQuery {
            domains: None,
            since: 0,
            until: 10_800,
        };
        assert_eq!(
            s[0].stat_series(&all, "verdict").await.unwrap(),
            vec![
                (3600, "clean".to_string(), 6),
                (3600, "spam".to_string(), 5),
                (7200, "spam".to_string(), 1)
            ]
        );
        let a = StatQuery {
            domains: Some(vec!["A.example".into()]),
            ..all.clone()
        };
        assert_eq!(
            s[1].stat_series(&a, "verdict").await.unwrap(),
            vec![
                (3600, "clean".to_string(), 5),
                (3600, "spam".to_string(), 5),
                (7200, "spam".to_string(), 1)
            ]
        );
        let first_hour = StatQuery {
            until: 7200,
            ..a.clone()
        };
        assert_eq!(
            s[0].stat_series(&first_hour, "verdict")
                .await
                .unwrap()
                .len(),
            2
        );
        let none = StatQuery {
            domains: Some(vec![]),
            ..all.clone()
        };
        assert!(s[0].stat_series(&none, "verdict").await.unwrap().is_empty());
        assert_eq!(
            s[0].stat_top(&all, "sender", 1).await.unwrap(),
            vec![("other.example".to_string(), 9)]
        );
        assert_eq!(
            s[0].stat_top(&a, "sender", 10).await.unwrap(),
            vec![("bulk.example".to_string(), 6)]
        );
        assert_eq!(
            s[0].stat_top(&all, "domain", 10).await.unwrap(),
            vec![("a.example".to_string(), 11), ("b.example".to_string(), 1)]
        );
        assert_eq!(s[0].expire_stats(7200).await.unwrap(), 5);
        assert_eq!(s[1].stat_series(&all, "verdict").await.unwrap().len(), 1);

        // The queue by recipient domain: the part after the last '@', any case.
        s[0].enqueue(
            message(
                "Q1",
                &["a@Example.COM", "\"x@y\"@example.com", "c@other.example"],
                100,
            ),
            None,
        )
        .await
        .unwrap();
        s[0].enqueue(message("Q2", &["d@example.com"], 50), None)
            .await
            .unwrap();
        let claimed = s[0].claim(&lease("n1", 60_000), 100, 10).await.unwrap();
        let q2 = claimed.iter().find(|c| c.message.id == "Q2").unwrap();
        s[0].record(
            "Q2",
            q2.token,
            attempt(
                vec![(
                    0,
                    Outcome::Deferred {
                        next_attempt: 500,
                        reason: "451 4.3.0 busy".into(),
                    },
                )],
                true,
            ),
        )
        .await
        .unwrap();
        let queue = s[1].queue_by_domain(&all).await.unwrap();
        assert_eq!(
            queue,
            vec![
                DomainQueue {
                    domain: "example.com".into(),
                    pending: 3,
                    deferred: 1,
                    oldest: 50
                },
                DomainQueue {
                    domain: "other.example".into(),
                    pending: 1,
                    deferred: 0,
                    oldest: 100
                },
            ]
        );
        let scoped = StatQuery {
            domains: Some(vec!["other.example".into()]),
            ..all
        };
        assert_eq!(s[1].queue_by_domain(&scoped).await.unwrap().len(), 1);
    })
    .await;
}

/// Digests: one node claims each due digest (the others see it taken), the next is due a
/// period later; shared secrets are created once and read by every node; held messages
/// list their subject.
#[tokio::test(flavor = "multi_thread")]
async fn digests_are_claimed_once_and_secrets_shared() {
    use mailsilo_store::Held;
    both(2, |s| async move {
        assert_eq!(
            s[0].claim_digest("org", 100_000, 86400, 13_600).await.unwrap(),
            Some(13_600),
            "the first covers what the caller says"
        );
        assert_eq!(
            s[1].claim_digest("org", 100_001, 86400, 0).await.unwrap(),
            None,
            "claimed"
        );
        assert_eq!(
            s[1].claim_digest("other", 100_001, 86400, 7).await.unwrap(),
            Some(7)
        );
        assert_eq!(
            s[1].claim_digest("org", 186_400, 86400, 0).await.unwrap(),
            Some(100_000)
        );
        assert_eq!(
            s[0].claim_digest("org", 186_401, 0, 0).await.unwrap(),
            Some(186_400),
            "period 0: now, whatever the schedule"
        );
        let a = s[0].secret("digest", "first".into()).await.unwrap();
        let b = s[1].secret("digest", "second".into()).await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
        let mut m = message("S1", &["a@example.com"], 100);
        m.body = mailsilo_store::Bytes::from_static(
            b"From: x@y\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n  and more\r\nTo: a@example.com\r\n\r\nSubject: not this\r\n",
        );
        s[0].quarantine(Held {
            message: m,
            verdict: "spam".into(),
            score: 9.0,
            reason: "test".into(),
        })
        .await
        .unwrap();
        let listed = s[1]
            .quarantined(None, 10, &HeldFilter::default())
            .await
            .unwrap();
        assert_eq!(listed[0].subject, "=?utf-8?q?caf=C3=A9?=  and more");
    })
    .await;
}

/// A message held for several recipients is released or deleted for some of them: they
/// leave it (a copy queued for the released), the others keep it held, and it leaves the
/// quarantine with its last recipient.
#[tokio::test(flavor = "multi_thread")]
async fn held_mail_is_released_per_recipient() {
    use mailsilo_store::Held;
    both(2, |s| async move {
        let m = message("H1", &["a@x.example", "B@Y.example", "c@y.example"], 100);
        s[0].quarantine(Held {
            message: m.clone(),
            verdict: "spam".into(),
            score: 9.0,
            reason: "r".into(),
        })
        .await
        .unwrap();
        let mut copy = message("C1", &["a@x.example"], 100);
        copy.next_attempt = 100;
        assert!(
            s[1].unhold_for("H1", vec!["A@x.example".into()], Some(copy), "n2")
                .await
                .unwrap()
        );
        let held = s[0].held("H1").await.unwrap().unwrap();
        let left: Vec<&str> = held
            .message
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(left, ["B@Y.example", "c@y.example"]);
        assert!(
            s[0].get("C1").await.unwrap().is_some(),
            "the copy is queued"
        );
        let scope = |d: &str| HeldFilter {
            domains: Some(vec![d.into()]),
            ..Default::default()
        };
        assert!(
            s[0].quarantined(None, 10, &scope("x.example"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s[0].quarantined(None, 10, &scope("y.example"))
                .await
                .unwrap()[0]
                .recipients,
            left
        );
        assert!(
            !s[1]
                .unhold_for("H1", vec!["nobody@z.example".into()], None, "n2")
                .await
                .unwrap(),
            "not held for them"
        );
        assert!(
            s[1].unhold_for(
                "H1",
                vec!["b@y.example".into(), "c@y.example".into()],
                None,
                "n2"
            )
            .await
            .unwrap()
        );
        assert!(
            s[0].held("H1").await.unwrap().is_none(),
            "gone with its last recipient"
        );
        assert!(
            !s[1]
                .unhold_for("H1", vec!["c@y.example".into()], None, "n2")
                .await
                .unwrap()
        );
        let t = s[0].trace("H1").await.unwrap().unwrap();
        let taken: Vec<(&str, Option<&str>)> = t
            .events
            .iter()
            .filter(|e| e.kind == "released" || e.kind == "deleted")
            .map(|e| (e.kind.as_str(), e.recipient.as_deref()))
            .collect();
        assert_eq!(
            taken,
            [
                ("released", Some("a@x.example")),
                ("deleted", Some("B@Y.example")),
                ("deleted", Some("c@y.example"))
            ]
        );
    })
    .await;
}

/// Traces are found by subject (decoded, any case), client, verdict and a time range,
/// with any shape of search, and paged newest first by a cursor that holds across ties.
#[tokio::test(flavor = "multi_thread")]
async fn traces_are_found_by_subject_client_verdict_and_paged() {
    both(1, |s| async move {
        let s = &s[0];
        let cases = [
            (
                "U1",
                100,
                "=?utf-8?q?Invoice_caf=C3=A9?=",
                "192.0.2.1",
                Some("clean"),
            ),
            ("U2", 200, "Lunch", "192.0.2.2", Some("spam")),
            ("U3", 300, "INVOICE 2", "192.0.2.1", Some("spam")),
            ("U4", 300, "other", "192.0.2.3", None),
        ];
        for (id, at, subject, client, verdict) in cases {
            let mut m = message(id, &["alice@example.com"], at);
            m.body = Bytes::from(format!("Subject: {subject}\r\n\r\nhi\r\n"));
            m.arrival.client = client.into();
            m.verdict = verdict.map(str::to_string);
            if id == "U1" {
                m.symbols = vec![
                    mailsilo_store::ScanSymbol {
                        name: "BAYES_HAM".into(),
                        score: -2.5,
                        reason: "ham probability 0.99".into(),
                        micros: 120,
                    },
                    mailsilo_store::ScanSymbol {
                        name: "R_SPF_PASS".into(),
                        score: 0.0,
                        reason: "spf=pass \"quoted\"".into(),
                        micros: 7,
                    },
                ];
            }
            s.enqueue(m, None).await.unwrap();
        }
        let find = |q: TraceQuery| async move {
            s.find_traces(&TraceQuery { limit: 10, ..q })
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        };
        let by = |f: fn(&mut TraceQuery)| {
            let mut q = TraceQuery::default();
            f(&mut q);
            q
        };
        assert_eq!(
            find(by(|q| q.subject = Some("invoice".into()))).await,
            ["U3", "U1"]
        );
        assert_eq!(
            find(by(|q| q.subject = Some("CAFÉ".into()))).await,
            ["U1"],
            "decoded"
        );
        assert_eq!(
            find(by(|q| q.client = Some("192.0.2.1".into()))).await,
            ["U3", "U1"]
        );
        assert_eq!(
            find(by(|q| q.verdict = Some("spam".into()))).await,
            ["U3", "U2"]
        );
        assert_eq!(find(by(|q| q.until = Some(300))).await, ["U2", "U1"]);
        // With each driving shape: a recipient, a sender, a scope.
        let shapes: [fn(&mut TraceQuery); 3] = [
            |q| q.to = Some("Alice@example.com".into()),
            |q| q.from = Some("sender@outside.net".into()),
            |q| q.domains = Some(vec!["example.com".into()]),
        ];
        for shape in shapes {
            let mut q = by(shape);
            q.verdict = Some("spam".into());
            q.subject = Some("invoice".into());
            assert_eq!(find(q.clone()).await, ["U3"], "{q:?}");
            q.subject = None;
            q.until = Some(300);
            assert_eq!(find(q).await, ["U2"]);
        }
        let t = s.trace("U1").await.unwrap().unwrap();
        assert_eq!(
            (t.subject.as_str(), t.verdict.as_str()),
            ("Invoice café", "clean")
        );
        let names: Vec<_> = t
            .symbols
            .iter()
            .map(|y| (y.name.as_str(), y.score, y.reason.as_str(), y.micros))
            .collect();
        assert_eq!(
            names,
            [
                ("BAYES_HAM", -2.5, "ham probability 0.99", 120),
                ("R_SPF_PASS", 0.0, "spf=pass \"quoted\"", 7)
            ]
        );
        assert!(s.trace("U2").await.unwrap().unwrap().symbols.is_empty());
        // Pages of one, through the tie at 300, for each shape.
        for shape in shapes {
            let mut seen = Vec::new();
            let mut before = None;
            for _ in 0..6 {
                let mut q = by(shape);
                q.before = before.clone();
                let page = s.find_traces(&TraceQuery { limit: 1, ..q }).await.unwrap();
                let Some(t) = page.first() else { break };
                seen.push(t.id.clone());
                before = Some(t.id.clone());
            }
            assert_eq!(seen, ["U4", "U3", "U2", "U1"]);
        }
        let gone = TraceQuery {
            before: Some("unknown".into()),
            ..TraceQuery::default()
        };
        assert!(find(gone).await.is_empty(), "a cursor past retention");
    })
    .await;
}

/// A message refused at the end of its transaction keeps a trace (found by verdict, with
/// its symbols and the reply) without entering the queue, and its trace expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_keeps_its_trace_and_nothing_else() {
    both(1, |s| async move {
        let s = &s[0];
        let mut m = message("R1", &["alice@example.com"], 100);
        m.body = Bytes::from_static(b"Subject: GTUBE\r\n\r\nXJS*C4JDBQADN1\r\n");
        m.verdict = Some("spam".into());
        m.symbols = vec![mailsilo_store::ScanSymbol {
            name: "GTUBE".into(),
            score: 1000.0,
            reason: "the GTUBE test string".into(),
            micros: 3,
        }];
        s.trace_refused(m, "550 5.7.1 Message refused as spam".into())
            .await
            .unwrap();
        assert!(s.get("R1").await.unwrap().is_none(), "never queued");
        assert!(s.held("R1").await.unwrap().is_none(), "never held");
        let found = s
            .find_traces(&TraceQuery {
                verdict: Some("spam".into()),
                to: Some("alice@example.com".into()),
                limit: 10,
                ..TraceQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        let t = s.trace("R1").await.unwrap().unwrap();
        assert_eq!((t.subject.as_str(), t.size), ("GTUBE", 34));
        assert_eq!(t.symbols[0].name, "GTUBE");
        let kinds: Vec<_> = t
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(kinds[0].0, "received");
        assert_eq!(kinds[1], ("refused", "550 5.7.1 Message refused as spam"));
        assert_eq!(s.expire_traces(101).await.unwrap(), 1);
        assert!(s.trace("R1").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_are_found_and_expire() {
    both(1, |s| async move {
        let s = &s[0];
        let mut old = message("T1", &["Alice@Example.com"], 100);
        old.sender = "bob@sender.net".into();
        s.enqueue(old, None).await.unwrap();
        s.enqueue(message("T2", &["carol@example.com"], 200), None)
            .await
            .unwrap();
        s.enqueue(message("T3", &["alice@example.com"], 300), None)
            .await
            .unwrap();
        let ids = |ts: Vec<mailsilo_store::Trace>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
        let q = |from: Option<&str>, to: Option<&str>, since: Option<i64>| TraceQuery {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            since,
            limit: 10,
            ..TraceQuery::default()
        };
        assert_eq!(
            ids(s
                .find_traces(&q(None, Some("ALICE@example.com"), None))
                .await
                .unwrap()),
            vec!["T3", "T1"]
        );
        assert_eq!(
            ids(s
                .find_traces(&q(Some("Bob@Sender.net"), None, None))
                .await
                .unwrap()),
            vec!["T1"]
        );
        assert_eq!(
            ids(s.find_traces(&q(None, None, Some(200))).await.unwrap()),
            vec!["T3", "T2"]
        );
        // An organisation's scope: whole domains only.
        s.enqueue(
            message("T4", &["dave@xample.com", "erin@Example.org"], 400),
            None,
        )
        .await
        .unwrap();
        let scoped = |d: &[&str]| TraceQuery {
            domains: Some(d.iter().map(|x| x.to_string()).collect()),
            ..q(None, None, None)
        };
        assert_eq!(
            ids(s.find_traces(&scoped(&["example.com"])).await.unwrap()),
            vec!["T3", "T2", "T1"]
        );
        assert_eq!(
            ids(s
                .find_traces(&scoped(&["example.org", "nowhere.test"]))
                .await
                .unwrap()),
            vec!["T4"]
        );
        assert!(s.find_traces(&scoped(&[])).await.unwrap().is_empty());
        // The domain is what follows an address's last @ (a quoted local part may hold one).
        s.enqueue(message("T5", &["\"x@example.com@\"@other.test"], 500), None)
            .await
            .unwrap();
        assert_eq!(
            ids(s.find_traces(&scoped(&["other.test"])).await.unwrap()),
            vec!["T5"]
        );
        assert!(
            !ids(s.find_traces(&scoped(&["example.com"])).await.unwrap())
                .contains(&"T5".to_string())
        );
        // A message to several recipients in scope is one result, and a page still fills.
        s.enqueue(
            message(
                "T6",
                &["a@example.com", "b@example.com", "c@Example.COM"],
                600,
            ),
            None,
        )
        .await
        .unwrap();
        let two = |d: &[&str]| TraceQuery {
            limit: 2,
            ..scoped(d)
        };
        assert_eq!(
            ids(s.find_traces(&two(&["example.com"])).await.unwrap()),
            vec!["T6", "T3"]
        );
        assert_eq!(
            ids(s
                .find_traces(&two(&["example.com", "example.org"]))
                .await
                .unwrap()),
            vec!["T6", "T4"]
        );
        assert_eq!(
            ids(s
                .find_traces(&TraceQuery {
                    to: Some("b@example.com".into()),
                    ..two(&["example.com"])
                })
                .await
                .unwrap()),
            vec!["T6"]
        );
        // T1 finishes; traces older than 250 go, but T2 is still queued and keeps its own.
        let c = s.claim(&lease("n1", 60_000), 100, 1).await.unwrap();
        assert_eq!(c[0].message.id, "T1");
        s.record(
            "T1",
            c[0].token,
            attempt(
                vec![(
                    0,
                    Outcome::Delivered {
                        reply: "250 ok".into(),
                    },
                )],
                true,
            ),
        )
        .await
        .unwrap();
        assert_eq!(s.expire_traces(250).await.unwrap(), 1);
        assert!(s.trace("T1").await.unwrap().is_none());
        assert!(s.trace("T2").await.unwrap().is_some());
        s.add_event(
            "T2",
            mailsilo_store::Event {
                at: 1,
                node: "n9".into(),
                kind: "scanned".into(),
                recipient: None,
                detail: "clean".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            s.trace("T2")
                .await
                .unwrap()
                .unwrap()
                .events
                .last()
                .unwrap()
                .kind,
            "scanned"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_configuration_is_seeded_once_and_the_store_wins() {
    use mailsilo_store::{DomainEntry, ServerEntry};
    both(2, |s| async move {
        let d = |name: &str, destination: &str, removed: bool| DomainEntry {
            name: name.into(),
            settings: format!("{{\"destination\":\"{destination}\"}}"),
            removed,
        };
        let srv = |server: &str, loading: u32, state: &str| ServerEntry {
            cluster: "c1".into(),
            server: server.into(),
            loading,
            state: state.into(),
            address: None,
            removed: false,
        };
        let v0 = s[0].runtime_version().await.unwrap();
        let added = s[0]
            .seed(
                vec![d("a.example", "mx", false)],
                vec![srv("c1-s1", 1, "ready")],
            )
            .await
            .unwrap();
        assert_eq!(added, 2);
        let v1 = s[1].runtime_version().await.unwrap();
        assert!(v1 > v0, "seeding is a change every node sees");
        // Changed at run time, by another node: a.example removed (its settings kept, for
        // the mail still queued for it), b.example added.
        s[1].set_server(srv("c1-s1", 7, "drain")).await.unwrap();
        let mx = Some(d("a.example", "mx", false).settings);
        assert!(
            s[1].set_domain(d("a.example", "10.0.0.1:25", true), mx.clone())
                .await
                .unwrap()
        );
        assert!(
            s[1].set_domain(d("b.example", "mx", false), None)
                .await
                .unwrap()
        );
        assert!(s[0].runtime_version().await.unwrap() > v1);
        // Seeding again (a restart with the same TOML) changes nothing: the store wins, and
        // a removed domain stays removed; a server new in the TOML is added.
        let added = s[0]
            .seed(
                vec![d("a.example", "mx", false)],
                vec![srv("c1-s1", 1, "ready"), srv("c1-s2", 2, "ready")],
            )
            .await
            .unwrap();
        assert_eq!(added, 1);
        assert_eq!(
            s[0].domains().await.unwrap(),
            vec![
                d("a.example", "10.0.0.1:25", true),
                d("b.example", "mx", false)
            ]
        );
        assert_eq!(
            s[0].servers().await.unwrap(),
            vec![srv("c1-s1", 7, "drain"), srv("c1-s2", 2, "ready")]
        );
        // A server added at run time carries its address; a removed one keeps its entry,
        // and seeding it again from the TOML does not bring it back.
        let added = ServerEntry {
            address: Some("127.0.2.9:2525".into()),
            ..srv("c1-s9", 4, "ready")
        };
        s[1].set_server(added.clone()).await.unwrap();
        let gone = ServerEntry {
            removed: true,
            ..srv("c1-s2", 2, "ready")
        };
        s[1].set_server(gone.clone()).await.unwrap();
        s[0].seed(vec![], vec![srv("c1-s2", 2, "ready")])
            .await
            .unwrap();
        assert_eq!(
            s[0].servers().await.unwrap(),
            vec![srv("c1-s1", 7, "drain"), gone, added]
        );
    })
    .await;
}

/// A domain's settings change only from what the writer read: of two nodes changing the
/// same settings at once, one writes and the other is told, whether the entry existed,
/// was removed or is new; a removed entry is not live.
#[tokio::test]
async fn a_domain_changes_only_from_what_its_writer_read() {
    use mailsilo_store::DomainEntry;
    both(2, |s| async move {
        let d = |settings: &str, removed: bool| DomainEntry {
            name: "c.example".into(),
            settings: settings.into(),
            removed,
        };
        let v0 = s[0].runtime_version().await.unwrap();
        assert!(s[0].set_domain(d("one", false), None).await.unwrap());
        // Another node read nothing too: it is told the entry exists now.
        assert!(!s[1].set_domain(d("two", false), None).await.unwrap());
        // Both read "one"; the first write wins, the second is refused.
        let one = Some("one".to_string());
        let (a, b) = tokio::join!(
            s[0].set_domain(d("from a", false), one.clone()),
            s[1].set_domain(d("from b", false), one.clone())
        );
        assert!(
            a.unwrap() ^ b.unwrap(),
            "exactly one of two writers from one read"
        );
        let now = s[0].domains().await.unwrap();
        assert_eq!(now.len(), 1);
        assert!(now[0].settings.starts_with("from "), "{now:?}");
        // A stale read changes nothing, and announces nothing.
        let v1 = s[1].runtime_version().await.unwrap();
        assert!(v1 > v0);
        assert!(!s[1].set_domain(d("stale", true), one).await.unwrap());
        assert_eq!(s[1].runtime_version().await.unwrap(), v1);
        // Removed, it is not live: it is added again from nothing.
        let current = Some(now[0].settings.clone());
        assert!(
            s[1].set_domain(d(&now[0].settings, true), current)
                .await
                .unwrap()
        );
        assert!(
            !s[0]
                .set_domain(d("x", false), Some(now[0].settings.clone()))
                .await
                .unwrap()
        );
        assert!(s[0].set_domain(d("back", false), None).await.unwrap());
        assert_eq!(s[1].domains().await.unwrap(), vec![d("back", false)]);
    })
    .await;
}
/// Node numbers (which queue ids carry) are unique across the nodes of a store, however
/// many start at once, and stable for each node.
#[tokio::test(flavor = "multi_thread")]
async fn node_numbers_are_unique_and_stable() {
    both(2, |s| async move {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let store = s[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                store.node_number(&format!("node-{}", i % 6)).await.unwrap()
            }));
        }
        let mut by_node: std::collections::HashMap<usize, u16> = Default::default();
        for (i, t) in tasks.into_iter().enumerate() {
            let n = t.await.unwrap();
            assert_eq!(
                *by_node.entry(i % 6).or_insert(n),
                n,
                "node-{} got two numbers",
                i % 6
            );
        }
        let distinct: std::collections::HashSet<u16> = by_node.values().copied().collect();
        assert_eq!(distinct.len(), 6, "two nodes share a number: {by_node:?}");
        assert_eq!(s[1].node_number("node-3").await.unwrap(), by_node[&3]);
    })
    .await;
}

/// A quarantined message keeps its envelope, body and verdict, has a trace while held,
/// and leaves the quarantine once: released (queued under a new id, claimable at once) or
/// deleted, never both.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_holds_releases_and_deletes() {
    use mailsilo_store::Held;
    both(2, |s| async move {
        let now = 1_700_000_000;
        let mut m = message("Q1", &["a@client.example", "b@client.example"], now);
        m.scan = Some("score 9.00 GTUBE(9.00)".into());
        let held = Held {
            message: m.clone(),
            verdict: "spam".into(),
            score: 9.0,
            reason: "spam (score 9.0): test".into(),
        };
        s[0].quarantine(held.clone()).await.unwrap();
        s[0].quarantine(Held {
            message: message("Q2", &["c@client.example"], now),
            ..held.clone()
        })
        .await
        .unwrap();
        let list = s[1]
            .quarantined(None, 10, &HeldFilter::default())
            .await
            .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].id, "Q1");
        assert_eq!(list[0].recipients, ["a@client.example", "b@client.example"]);
        assert_eq!((list[0].score, list[0].size), (9.0, m.body.len() as u64));
        assert_eq!(
            s[1].quarantined(Some("Q1"), 10, &HeldFilter::default())
                .await
                .unwrap()
                .len(),
            1
        );
        let back = s[1].held("Q1").await.unwrap().unwrap();
        assert_eq!(back.message.recipients, m.recipients);
        assert_eq!(
            (back.message.body.clone(), back.message.envid.clone()),
            (m.body.clone(), m.envid.clone())
        );
        assert_eq!(back.message.arrival, m.arrival);
        assert_eq!(back.verdict, "spam");
        let trace = s[0].trace("Q1").await.unwrap().unwrap();
        let kinds: Vec<&str> = trace.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "quarantined"]);
        assert!(
            trace.events[0].detail.contains("scanned: score 9.00"),
            "{}",
            trace.events[0].detail
        );
        // Held mail is not queued mail.
        assert!(
            s[0].claim(&lease("n1", 60_000), now + 10, 10)
                .await
                .unwrap()
                .is_empty()
        );

        let mut copy = back.message.clone();
        copy.id = "R1".into();
        // Two nodes release at once: one wins, the copy is queued once.
        let (a, b) = tokio::join!(
            s[0].release("Q1", copy.clone(), "n1"),
            s[1].release("Q1", copy.clone(), "n2")
        );
        assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|x| **x).count(), 1);
        let claimed = s[1]
            .claim(&lease("n2", 60_000), now + 10, 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].message.id, "R1");
        assert_eq!(s[0].body("R1").await.unwrap().unwrap(), m.body);
        assert!(s[0].held("Q1").await.unwrap().is_none());
        let trace = s[0].trace("Q1").await.unwrap().unwrap();
        assert!(
            trace
                .events
                .iter()
                .any(|e| e.kind == "released" && e.detail.contains("R1"))
        );

        // Retention: held mail received before the cut is deleted, its trace says so.
        s[0].quarantine(Held {
            message: message("Q3", &["d@client.example"], now - 100),
            ..held.clone()
        })
        .await
        .unwrap();
        assert_eq!(s[1].expire_held(now - 50, "n2").await.unwrap(), 1);
        assert!(s[0].held("Q3").await.unwrap().is_none());
        assert!(
            s[0].held("Q2").await.unwrap().is_some(),
            "received at the cut: kept"
        );
        let trace = s[0].trace("Q3").await.unwrap().unwrap();
        assert!(
            trace
                .events
                .iter()
                .any(|e| e.kind == "deleted" && e.detail.contains("retention")),
            "{:?}",
            trace.events
        );
        assert!(s[0].delete_held("Q2", "n1").await.unwrap());
        assert!(!s[1].delete_held("Q2", "n2").await.unwrap());
        assert!(!s[1].release("Q2", copy, "n2").await.unwrap());
        assert!(
            s[0].quarantined(None, 10, &HeldFilter::default())
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

/// Greylisting: a triplet's first sighting is kept (by any node) until its window passes,
/// then starts again; passes let a client through until they end; expiry forgets both.
#[tokio::test(flavor = "multi_thread")]
async fn greylist_triplets_and_passes_are_shared() {
    both(2, |s| async move {
        assert_eq!(s[0].grey_first_seen("t1", 1000, 0).await.unwrap(), 1000);
        assert_eq!(
            s[1].grey_first_seen("t1", 1300, 0).await.unwrap(),
            1000,
            "kept"
        );
        // The window (first sighting at or after window_start) has passed: it starts again.
        assert_eq!(s[1].grey_first_seen("t1", 9000, 5000).await.unwrap(), 9000);
        let (a, b) = tokio::join!(
            s[0].grey_first_seen("t2", 100, 0),
            s[1].grey_first_seen("t2", 101, 0)
        );
        assert_eq!(a.unwrap(), b.unwrap(), "two nodes see one first sighting");
        assert!(!s[0].grey_allowed("192.0.2", 50).await.unwrap());
        s[1].grey_allow("192.0.2", 100).await.unwrap();
        s[0].grey_allow("192.0.2", 80).await.unwrap();
        assert!(
            s[0].grey_allowed("192.0.2", 99).await.unwrap(),
            "the later end is kept"
        );
        assert!(!s[1].grey_allowed("192.0.2", 100).await.unwrap());
        assert_eq!(
            s[0].expire_greylist(5000, 100).await.unwrap(),
            2,
            "t2 and the pass"
        );
        assert_eq!(
            s[0].grey_first_seen("t1", 9500, 5000).await.unwrap(),
            9000,
            "t1 kept"
        );
    })
    .await;
}

/// The classifier's examples are learned once per digest (a second learning as the other
/// class moves it), forgotten, counted and listed; models get rising versions, and a
/// model stored by one node is what every node reads.
#[tokio::test(flavor = "multi_thread")]
async fn classifier_examples_and_models_are_shared() {
    use mailsilo_store::Example;
    both(2, |s| async move {
        let ex = |d: &str, spam: bool| Example {
            digest: d.into(),
            spam,
            features: vec![1, 2, 3, spam as u8],
        };
        assert_eq!(s[0].model().await.unwrap(), None);
        assert_eq!(s[0].model_version().await.unwrap(), None);
        assert_eq!(s[0].example_counts().await.unwrap(), (0, 0));
        let learned = s[0]
            .learn(vec![ex("a", true), ex("b", true), ex("c", false)])
            .await
            .unwrap();
        assert_eq!(learned, 3);
        assert_eq!(
            s[1].learn(vec![ex("a", true)]).await.unwrap(),
            0,
            "same class again"
        );
        assert_eq!(
            s[1].learn(vec![ex("b", false)]).await.unwrap(),
            1,
            "class changed"
        );
        assert_eq!(s[0].example_counts().await.unwrap(), (1, 2));
        let all = s[1].examples().await.unwrap();
        assert_eq!(all, vec![ex("a", true), ex("b", false), ex("c", false)]);
        assert_eq!(s[0].forget(vec!["c".into(), "zz".into()]).await.unwrap(), 1);
        assert_eq!(s[1].example_counts().await.unwrap(), (1, 1));

        let v1 = s[0].set_model(vec![9; 1000]).await.unwrap();
        let v2 = s[1].set_model(vec![7; 10]).await.unwrap();
        assert!(v2 > v1, "versions rise: {v1} then {v2}");
        assert_eq!(s[0].model_version().await.unwrap(), Some(v2));
        assert_eq!(s[0].model().await.unwrap(), Some((v2, vec![7; 10])));
    })
    .await;
}

/// A change of the run-time configuration committed by one node is announced to every
/// node (on the embedded store, the one process that opens it), and only a change is.
#[tokio::test(flavor = "multi_thread")]
async fn runtime_changes_are_announced_to_every_node() {
    use mailsilo_store::ServerEntry;
    both(2, |s| async move {
        let mut watcher = s[0].runtime_changes();
        // PostgreSQL's listener ticks once when it starts listening; wait for that first.
        let _ = tokio::time::timeout(Duration::from_secs(5), watcher.changed()).await;
        watcher.mark_unchanged();
        let quiet = tokio::time::timeout(Duration::from_millis(300), watcher.changed()).await;
        assert!(quiet.is_err(), "a tick with no change");
        let entry = ServerEntry {
            cluster: "c1".into(),
            server: "c1-s1".into(),
            loading: 3,
            state: "ready".into(),
            address: None,
            removed: false,
        };
        s[1].set_server(entry).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), watcher.changed())
            .await
            .expect("the change was announced within 2 s")
            .unwrap();
    })
    .await;
}

/// Nodes starting together against a new database migrate it once; starting again finds
/// nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_migrates_once_under_concurrent_starts() {
    let (url, _db) = fresh_database().await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starts.push(tokio::spawn(async move {
            Postgres::connect(&url).await.map(|_| ())
        }));
    }
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let s = Postgres::connect(&url).await.unwrap();
    s.enqueue(message("X", &["a@example.com"], 1), None)
        .await
        .unwrap();
}

/// The portal's organisations, accounts, sessions and tokens: written by one node, read by
/// another; replaced whole; sessions and tokens only until they expire; a password change
/// (ending an account's sessions) ends them on every node.
#[tokio::test(flavor = "multi_thread")]
async fn accounts_sessions_and_tokens_are_shared() {
    both(2, |s| async move {
        s[0].set_organisation(Organisation {
            name: "example".into(),
            domains: vec!["example.com".into(), "example.net".into()],
            digest: None,
        })
        .await
        .unwrap();
        s[1].set_organisation(Organisation {
            name: "example".into(),
            domains: vec!["example.com".into()],
            digest: Some("weekly".into()),
        })
        .await
        .unwrap();
        let orgs = s[0].organisations().await.unwrap();
        assert_eq!(orgs.len(), 1);
        assert_eq!(orgs[0].domains, ["example.com"]);
        assert_eq!(orgs[0].digest.as_deref(), Some("weekly"));
        let alice = Account {
            name: "alice@example.com".into(),
            role: Role::User,
            organisation: Some("example".into()),
            password: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created: 100,
        };
        s[0].set_account(alice.clone()).await.unwrap();
        s[1].set_account(Account {
            name: "operator".into(),
            role: Role::Operator,
            organisation: None,
            password: String::new(),
            created: 50,
        })
        .await
        .unwrap();
        assert_eq!(
            s[1].account("alice@example.com").await.unwrap(),
            Some(alice.clone())
        );
        assert_eq!(s[1].account("bob").await.unwrap(), None);
        let names: Vec<_> = s[0]
            .accounts()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["alice@example.com", "operator"]);
        // Replaced whole, its creation time kept.
        s[1].set_account(Account {
            role: Role::Admin,
            password: "new".into(),
            created: 999,
            ..alice.clone()
        })
        .await
        .unwrap();
        let a = s[0].account("alice@example.com").await.unwrap().unwrap();
        assert_eq!(
            (a.role, a.password.as_str(), a.created),
            (Role::Admin, "new", 100)
        );

        for key in ["k1", "k2"] {
            s[0].add_session(Session {
                key: key.into(),
                account: "alice@example.com".into(),
                csrf: format!("csrf-{key}"),
                expires: 1000,
            })
            .await
            .unwrap();
        }
        let got = s[1].session("k1", 999).await.unwrap().unwrap();
        assert_eq!(got.csrf, "csrf-k1");
        assert_eq!(s[1].session("k1", 1000).await.unwrap(), None, "expired");
        assert_eq!(s[1].end_sessions(Some("k1"), None).await.unwrap(), 1);
        assert_eq!(s[0].session("k1", 10).await.unwrap(), None);
        assert_eq!(
            s[1].end_sessions(None, Some("alice@example.com"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(s[0].session("k2", 10).await.unwrap(), None);

        let token = ApiToken {
            key: "t1".into(),
            account: "alice@example.com".into(),
            label: "scripts".into(),
            role: Role::User,
            organisation: Some("example".into()),
            created: 10,
            expires: Some(500),
        };
        s[0].add_token(token.clone()).await.unwrap();
        s[0].add_token(ApiToken {
            key: "t2".into(),
            expires: None,
            ..token.clone()
        })
        .await
        .unwrap();
        assert_eq!(s[1].token("t1", 499).await.unwrap(), Some(token));
        assert_eq!(s[1].token("t1", 500).await.unwrap(), None);
        assert!(
            s[1].token("t2", i64::MAX - 1).await.unwrap().is_some(),
            "no end"
        );
        s[0].add_session(Session {
            key: "k3".into(),
            account: "operator".into(),
            csrf: "c".into(),
            expires: 600,
        })
        .await
        .unwrap();
        assert_eq!(s[1].expire_sessions(600).await.unwrap(), 2, "k3 and t1");
        assert!(s[0].token("t2", 700).await.unwrap().is_some());
        assert_eq!(s[1].revoke_tokens("alice@example.com").await.unwrap(), 1);
        assert!(s[0].token("t2", 700).await.unwrap().is_none());
    })
    .await;
}

/// Quarantine listings filtered in the store: by an organisation's domains or one
/// address (whole addresses and whole domains only: `xample.com` is not `example.com`,
/// `_` and `%` are not wildcards), sender, verdict, time and score, all together, paged.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_listings_are_filtered_by_scope_and_fields() {
    use mailsilo_store::Held;
    both(2, |s| async move {
        let hold = |id: &str, rcpts: &[&str], sender: &str, verdict: &str, at: i64, score: f64| {
            let mut m = message(id, rcpts, at);
            m.sender = sender.into();
            Held {
                message: m,
                verdict: verdict.into(),
                score,
                reason: "test".into(),
            }
        };
        for h in [
            hold(
                "Q1",
                &["alice@example.com"],
                "a@spam.test",
                "spam",
                100,
                9.0,
            ),
            hold(
                "Q2",
                &["Bob@Example.COM", "carol@example.org"],
                "b@spam.test",
                "virus",
                200,
                0.0,
            ),
            hold("Q3", &["dave@xample.com"], "c@other.test", "spam", 300, 7.0),
            hold(
                "Q4",
                &["e_x@example_org"],
                "d@spam.test",
                "policy",
                400,
                1.0,
            ),
            hold(
                "Q5",
                &["alice@example.com", "zed@sub.example.com"],
                "e@x.test",
                "spam",
                500,
                12.0,
            ),
        ] {
            s[0].quarantine(h).await.unwrap();
        }
        let ids = |l: Vec<mailsilo_store::HeldSummary>| -> Vec<String> {
            l.into_iter().map(|h| h.id).collect()
        };
        let list = |f: HeldFilter| {
            let s = s[1].clone();
            async move { ids(s.quarantined(None, 10, &f).await.unwrap()) }
        };
        let org = HeldFilter {
            domains: Some(vec!["example.com".into()]),
            ..Default::default()
        };
        assert_eq!(list(org.clone()).await, ["Q1", "Q2", "Q5"]);
        assert_eq!(
            list(HeldFilter {
                domains: Some(vec!["example.org".into()]),
                ..Default::default()
            })
            .await,
            ["Q2"],
            "example_org is not example.org"
        );
        assert_eq!(
            list(HeldFilter {
                domains: Some(vec![]),
                ..Default::default()
            })
            .await,
            Vec::<String>::new(),
            "an empty scope sees nothing"
        );
        assert_eq!(
            list(HeldFilter {
                address: Some("ALICE@example.com".into()),
                ..Default::default()
            })
            .await,
            ["Q1", "Q5"]
        );
        assert_eq!(
            list(HeldFilter {
                sender: Some("SPAM.test".into()),
                verdict: Some("spam".into()),
                ..org.clone()
            })
            .await,
            ["Q1"]
        );
        assert_eq!(
            list(HeldFilter {
                since: Some(200),
                until: Some(500),
                ..Default::default()
            })
            .await,
            ["Q2", "Q3", "Q4"]
        );
        assert_eq!(
            list(HeldFilter {
                min_score: Some(8.0),
                ..org.clone()
            })
            .await,
            ["Q1", "Q5"]
        );
        assert_eq!(
            ids(s[0].quarantined(Some("Q1"), 1, &org).await.unwrap()),
            ["Q2"],
            "paged"
        );
    })
    .await;
}
