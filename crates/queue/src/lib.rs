//! The queue: it takes each message the SMTP server has received, makes it durable in the
//! store before the server may answer 250, and delivers it to the recipient domains'
//! destinations, retrying temporary failures with exponential backoff until the message's
//! lifetime ends, then returning a DSN to the sender.
//!
//! A freshly accepted message goes straight to delivery from memory (the store keeps it, with
//! a later due time, in case the process stops). Everything else, deferred mail and mail
//! left over from before a restart, is picked up by polling the store for what is due.
//! Recipients that share a route (same next hop, same TLS policy) go in one transaction;
//! each route has a concurrency limit and a cache of idle connections.

mod dsn;
mod route;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::Config;
use hickory_resolver::TokioResolver;
use smtp::client::{self, Client};
use smtp::command::Ret;
use smtp::server::{new_queue_id, notify};
use smtp::{Accepted, Envelope, Handler, Rcpt, Reply};
use store::{Message, NewMessage, NewRecipient, Outcome, QueueStore, Status};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, info, info_span, warn};

pub use route::Route;

/// RET as the store keeps it.
fn stored_ret(r: Option<Ret>) -> Option<store::Ret> {
    r.map(|r| match r {
        Ret::Full => store::Ret::Full,
        Ret::Headers => store::Ret::Headers,
    })
}

/// RET as the relay client sends it.
fn wire_ret(r: Option<store::Ret>) -> Option<Ret> {
    r.map(|r| match r {
        store::Ret::Full => Ret::Full,
        store::Ret::Headers => Ret::Headers,
    })
}

/// Where the queue reads the time, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    /// Unix seconds.
    fn now(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        smtp::date::now()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: i64) -> ManualClock {
        ManualClock(AtomicI64::new(start))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How long a message handed straight to delivery stays out of the store's due list.
const IN_FLIGHT_LEASE: i64 = 3600;

/// The queue manager. Share it behind an `Arc`; it is also the SMTP server's [`Handler`].
pub struct Queue {
    config: Arc<Config>,
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    client: Arc<client::Settings>,
    resolver: TokioResolver,
    /// Messages being delivered now; the poller leaves them alone.
    active: Mutex<HashSet<String>>,
    limits: Mutex<HashMap<Route, Arc<Semaphore>>>,
    idle: Mutex<HashMap<Route, Vec<(Client, Instant)>>>,
    poll_interval: Duration,
}

/// Errors starting the queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(#[from] store::Error),
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

impl Queue {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn QueueStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Queue>, Error> {
        let resolver = TokioResolver::builder_tokio()
            .or_else(|_| {
                Ok::<_, hickory_resolver::ResolveError>(TokioResolver::builder_with_config(
                    hickory_resolver::config::ResolverConfig::default(),
                    hickory_resolver::name_server::TokioConnectionProvider::default(),
                ))
            })
            .map_err(|e| Error::Resolver(e.to_string()))?
            .build();
        let d = &config.delivery;
        let client = Arc::new(client::Settings::new(
            config.smtp.hostname.clone(),
            d.connect_timeout,
            d.command_timeout,
        ));
        Ok(Arc::new(Queue {
            config,
            store,
            clock,
            client,
            resolver,
            active: Mutex::default(),
            limits: Mutex::default(),
            idle: Mutex::default(),
            poll_interval: Duration::from_secs(1),
        }))
    }

    /// The same queue polling the store every `interval` (tests use short ones).
    pub fn with_poll_interval(self: Arc<Self>, interval: Duration) -> Arc<Self> {
        let mut q =
            Arc::try_unwrap(self).unwrap_or_else(|_| panic!("with_poll_interval before sharing"));
        q.poll_interval = interval;
        Arc::new(q)
    }

    /// Runs the poller until `shutdown`: recovers mail that was in flight at the last stop,
    /// then picks up whatever falls due, and closes idle cached connections.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        match self.store.recover(self.clock.now()).await {
            Ok(0) => {}
            Ok(n) => info!(
                recipients = n,
                "recovered mail that was in flight at the last stop"
            ),
            Err(e) => warn!(error = %e, "recovery failed"),
        }
        loop {
            if let Err(e) = self.poll().await {
                warn!(error = %e, "queue poll failed");
            }
            self.expire_idle();
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = smtp::server::stopped(&mut shutdown) => break,
            }
        }
        let idle: Vec<_> = self
            .idle
            .lock()
            .expect("idle")
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for (c, _) in idle {
            c.quit().await;
        }
    }

    async fn poll(self: &Arc<Self>) -> Result<(), store::Error> {
        let due = self.store.due(self.clock.now(), 1000).await?;
        for id in due {
            if !self.active.lock().expect("active").insert(id.clone()) {
                continue;
            }
            match self.store.get(&id).await? {
                Some(m) => self.dispatch(m),
                None => {
                    self.active.lock().expect("active").remove(&id);
                }
            }
        }
        Ok(())
    }

    fn expire_idle(&self) {
        let keep = self.config.delivery.connection_cache_time;
        let mut stale = Vec::new();
        for conns in self.idle.lock().expect("idle").values_mut() {
            let (old, fresh): (Vec<_>, Vec<_>) =
                conns.drain(..).partition(|(_, t)| t.elapsed() >= keep);
            *conns = fresh;
            stale.extend(old);
        }
        for (c, _) in stale {
            tokio::spawn(c.quit());
        }
    }

    /// Stores a message durably and starts delivering it.
    pub async fn submit(self: &Arc<Self>, message: NewMessage) -> Result<(), store::Error> {
        let id = message.id.clone();
        self.active.lock().expect("active").insert(id.clone());
        let stored = message.clone();
        if let Err(e) = self.store.enqueue(message).await {
            self.active.lock().expect("active").remove(&id);
            return Err(e);
        }
        let recipients = stored
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| store::Recipient {
                index: i as u32,
                address: r.address.clone(),
                notify: r.notify,
                orcpt: r.orcpt.clone(),
                status: Status::Pending,
                attempts: 0,
                next_attempt: stored.next_attempt,
                last_error: None,
                warned: false,
            })
            .collect();
        self.dispatch(Message {
            id: stored.id,
            sender: stored.sender,
            envid: stored.envid,
            ret: stored.ret,
            received_at: stored.received_at,
            body: stored.body,
            recipients,
        });
        Ok(())
    }

    /// Starts one delivery task per route for a message's pending recipients (the caller has
    /// marked it active).
    fn dispatch(self: &Arc<Self>, message: Message) {
        let mut groups: HashMap<Route, Vec<store::Recipient>> = HashMap::new();
        for r in message
            .recipients
            .iter()
            .filter(|r| r.status == Status::Pending)
        {
            let domain = r
                .address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            groups
                .entry(Route::for_domain(&self.config, &domain))
                .or_default()
                .push(r.clone());
        }
        let message = Arc::new(message);
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(groups.len()));
        if groups.is_empty() {
            self.active.lock().expect("active").remove(&message.id);
        }
        for (route, rcpts) in groups {
            let queue = self.clone();
            let message = message.clone();
            let remaining = remaining.clone();
            let span = info_span!(parent: None, "delivery", queue_id = %message.id, relay = %route);
            tokio::spawn(
                async move {
                    queue.deliver(&message, &route, rcpts).await;
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        queue.active.lock().expect("active").remove(&message.id);
                    }
                }
                .instrument(span),
            );
        }
    }

    fn limit(&self, route: &Route) -> Arc<Semaphore> {
        self.limits
            .lock()
            .expect("limits")
            .entry(route.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.config.delivery.destination_concurrency))
            })
            .clone()
    }

    fn cached(&self, route: &Route) -> Option<Client> {
        let keep = self.config.delivery.connection_cache_time;
        let mut idle = self.idle.lock().expect("idle");
        let conns = idle.get_mut(route)?;
        while let Some((c, t)) = conns.pop() {
            if t.elapsed() < keep {
                return Some(c);
            }
            tokio::spawn(c.quit());
        }
        None
    }

    async fn connect(&self, route: &Route) -> Result<Client, (bool, String)> {
        let addrs = route::resolve(route, &self.resolver)
            .await
            .map_err(|e| (e.permanent, e.reason))?;
        let mut last = String::from("no address");
        for (addr, name) in addrs {
            match Client::connect(addr, &name, self.client.clone(), route.require_tls).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    last = e.to_string();
                    if e.is_permanent() {
                        return Err((true, last));
                    }
                }
            }
        }
        Err((false, last))
    }

    /// Sends on `client` and caches it for reuse when the transaction went through. An
    /// error says whether it is permanent, why, and whether the connection was stale.
    async fn send(
        &self,
        route: &Route,
        mut client: Client,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<Vec<Result<(), Reply>>, (bool, String, bool)> {
        match client.send(envelope, body).await {
            Ok(results) => {
                self.idle
                    .lock()
                    .expect("idle")
                    .entry(route.clone())
                    .or_default()
                    .push((client, Instant::now()));
                Ok(results)
            }
            // An I/O error means the connection was dead: stale, if it came from the cache.
            Err(e) => Err((
                e.is_permanent(),
                e.to_string(),
                matches!(e, client::Error::Io(_)),
            )),
        }
    }

    /// Sends on a new connection.
    async fn send_fresh(
        &self,
        route: &Route,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<Vec<Result<(), Reply>>, (bool, String)> {
        let client = self.connect(route).await?;
        self.send(route, client, envelope, body)
            .await
            .map_err(|(permanent, reason, _)| (permanent, reason))
    }

    /// One delivery attempt for the recipients of one route, and its bookkeeping.
    async fn deliver(
        self: &Arc<Self>,
        message: &Message,
        route: &Route,
        rcpts: Vec<store::Recipient>,
    ) {
        let limit = self.limit(route);
        let _permit = limit.acquire().await.expect("semaphore never closed");
        let envelope = Envelope {
            sender: message.sender.clone(),
            recipients: rcpts
                .iter()
                .map(|r| Rcpt {
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
            envid: message.envid.clone(),
            ret: wire_ret(message.ret),
            smtputf8: !message.sender.is_ascii() || rcpts.iter().any(|r| !r.address.is_ascii()),
            eight_bit: !message.body.is_ascii(),
        };
        // A cached connection may have been closed by the server meanwhile: on an I/O error
        // with one, try once more on a fresh connection.
        let outcome = match self.cached(route) {
            // A cached connection may have been closed by the server meanwhile: when it turns
            // out stale, the attempt is made again on a fresh connection.
            Some(client) => match self.send(route, client, &envelope, &message.body).await {
                Err((_, _, true)) => self.send_fresh(route, &envelope, &message.body).await,
                other => other.map_err(|(permanent, reason, _)| (permanent, reason)),
            },
            None => self.send_fresh(route, &envelope, &message.body).await,
        };
        let results: Vec<Result<(), (bool, String)>> = match outcome {
            Ok(r) => r
                .into_iter()
                .map(|r| r.map_err(|reply| (reply.is_permanent(), reply.to_string())))
                .collect(),
            Err(e) => vec![Err(e); rcpts.len()],
        };
        self.settle(message, route, &rcpts, results).await;
    }

    /// Turns attempt results into outcomes: delivered, deferred with backoff, or failed
    /// (permanently, or because the message outlived its lifetime), with DSNs as due.
    async fn settle(
        self: &Arc<Self>,
        message: &Message,
        route: &Route,
        rcpts: &[store::Recipient],
        results: Vec<Result<(), (bool, String)>>,
    ) {
        let now = self.clock.now();
        let mut outcomes = Vec::new();
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        for (r, result) in rcpts.iter().zip(results) {
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let retry = self
                .config
                .domain(domain)
                .map_or(self.config.retry, |d| d.retry);
            let outcome = match result {
                Ok(()) => {
                    info!(to = %r.address, status = "sent", "delivered");
                    Outcome::Delivered
                }
                Err((true, reason)) => {
                    info!(to = %r.address, status = "bounced", %reason, "delivery failed");
                    failed.push((r, reason.clone()));
                    Outcome::Failed { reason }
                }
                Err((false, reason)) => {
                    let age = now - message.received_at;
                    if age >= retry.lifetime.as_secs() as i64 {
                        let reason = format!("delivery time expired; last error: {reason}");
                        info!(to = %r.address, status = "expired", %reason, "delivery failed");
                        failed.push((r, reason.clone()));
                        Outcome::Failed { reason }
                    } else {
                        let shift = r.attempts.min(20);
                        let backoff = retry
                            .min_backoff
                            .saturating_mul(1 << shift)
                            .min(retry.max_backoff);
                        let next_attempt = now + backoff.as_secs().max(1) as i64;
                        info!(to = %r.address, status = "deferred", %reason, retry_in = backoff.as_secs(), "delivery deferred");
                        if let Some(w) = retry.delay_warning
                            && !r.warned
                            && age >= w.as_secs() as i64
                        {
                            delayed.push((
                                r,
                                reason.clone(),
                                message.received_at + retry.lifetime.as_secs() as i64,
                            ));
                        }
                        Outcome::Deferred {
                            next_attempt,
                            reason,
                        }
                    }
                }
            };
            outcomes.push((r.index, outcome));
        }
        // DSNs are queued before the outcomes are recorded: a crash in between repeats a DSN
        // rather than losing it.
        let wants = |r: &store::Recipient, bit: u8| {
            r.notify == 0 && bit == notify::FAILURE
                || r.notify & bit != 0 && r.notify & notify::NEVER == 0
        };
        let failed: Vec<_> = failed
            .into_iter()
            .filter(|(r, _)| wants(r, notify::FAILURE))
            .collect();
        self.send_dsn(
            message,
            dsn::Action::Failed,
            failed.iter().map(|(r, why)| (*r, why.as_str())).collect(),
        )
        .await;
        let delayed: Vec<_> = delayed
            .into_iter()
            .filter(|(r, _, _)| r.notify == 0 || wants(r, notify::DELAY))
            .collect();
        if let Some((_, _, until)) = delayed.first() {
            let until = *until;
            let sent = self
                .send_dsn(
                    message,
                    dsn::Action::Delayed { retry_until: until },
                    delayed
                        .iter()
                        .map(|(r, why, _)| (*r, why.as_str()))
                        .collect(),
                )
                .await;
            if sent {
                outcomes.extend(delayed.iter().map(|(r, _, _)| (r.index, Outcome::Warned)));
            }
        }
        if let Err(e) = self.store.record(&message.id, outcomes).await {
            warn!(error = %e, %route, "could not record delivery outcome; the attempt will be repeated");
        }
    }

    /// Queues a DSN to the sender (never to the null sender); true if one was queued.
    async fn send_dsn(
        self: &Arc<Self>,
        message: &Message,
        action: dsn::Action,
        rcpts: Vec<(&store::Recipient, &str)>,
    ) -> bool {
        if rcpts.is_empty() || message.sender.is_empty() {
            return false;
        }
        let id = new_queue_id();
        let now = self.clock.now();
        let reports: Vec<dsn::Report<'_>> = rcpts
            .iter()
            .map(|(r, why)| dsn::Report {
                recipient: &r.address,
                orcpt: r.orcpt.as_deref(),
                reason: why,
            })
            .collect();
        let body = dsn::build(
            &self.config.smtp.hostname,
            &id,
            now,
            message,
            action,
            &reports,
        );
        let dsn = NewMessage {
            id: id.clone(),
            sender: String::new(),
            recipients: vec![NewRecipient {
                address: message.sender.clone(),
                notify: notify::NEVER,
                orcpt: None,
            }],
            envid: None,
            ret: None,
            received_at: now,
            next_attempt: now + IN_FLIGHT_LEASE,
            body: body.into(),
        };
        match self.submit(dsn).await {
            Ok(()) => {
                info!(dsn_id = %id, to = %message.sender, ?action, "DSN queued");
                true
            }
            Err(e) => {
                warn!(error = %e, "could not queue DSN");
                false
            }
        }
    }
}

/// The handler the SMTP server holds: the queue behind an `Arc`, since delivery tasks
/// spawned at acceptance need their own handle on it.
pub struct Intake(pub Arc<Queue>);

#[async_trait]
impl Handler for Intake {
    fn check_recipient(&self, r: &smtp::address::Recipient) -> Result<(), Reply> {
        let Some(domain) = self.0.config.domain(&r.domain) else {
            return Err(Reply::new(550, "5.7.1 Relay access denied"));
        };
        if let Some(valid) = &domain.recipients
            && !valid.contains(&r.local.to_lowercase())
        {
            return Err(Reply::new(
                550,
                "5.1.1 Recipient address rejected: user unknown",
            ));
        }
        Ok(())
    }

    async fn accept(&self, m: Accepted) -> Result<(), Reply> {
        let now = self.0.clock.now();
        let message = NewMessage {
            id: m.id,
            sender: m.envelope.sender,
            recipients: m
                .envelope
                .recipients
                .into_iter()
                .map(|r| NewRecipient {
                    address: r.address,
                    notify: r.notify,
                    orcpt: r.orcpt,
                })
                .collect(),
            envid: m.envelope.envid,
            ret: stored_ret(m.envelope.ret),
            received_at: now,
            next_attempt: now + IN_FLIGHT_LEASE,
            body: m.body,
        };
        self.0.submit(message).await.map_err(|e| {
            warn!(error = %e, "enqueue failed");
            Reply::new(451, "4.3.0 Temporary storage failure, try again later")
        })
    }
}
