//! The queue: it takes each message the SMTP server has received, makes it durable in the
//! store before the server may answer 250, and delivers it to the recipient domains'
//! destinations, retrying temporary failures with exponential backoff until the message's
//! lifetime ends, then returning a DSN to the sender.
//!
//! Many nodes may share one store. A node delivers only what it holds a lease on: a freshly
//! accepted message is stored already claimed by the node that took it, which delivers it
//! from memory at once; everything else (deferred mail, DSNs, mail a dead node held) is
//! claimed by polling the store. Leases are renewed while deliveries run, and outcomes are
//! recorded under the lease token, so a node that lost its lease cannot overwrite the work
//! of the node that took over. Recipients that share a route (same next hop, same TLS
//! policy) go in one transaction; each route has a concurrency limit and a cache of idle
//! connections.

mod dsn;
mod route;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::{Config, DomainTable};
use hickory_resolver::TokioResolver;
use smtp::client::{self, Client};
use smtp::command::Ret;
use smtp::server::{QueueIds, notify};
use smtp::{Envelope, Rcpt, Reply};
use store::{
    Arrival, Attempt, Claimed, Lease, Message, NewMessage, NewRecipient, Outcome, StatQuery,
    Status, Store, Tally,
};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, info, info_span, warn};

pub use route::Route;

/// RET as the relay client sends it.
fn wire_ret(r: Option<store::Ret>) -> Option<Ret> {
    r.map(|r| match r {
        store::Ret::Full => Ret::Full,
        store::Ret::Headers => Ret::Headers,
    })
}

/// The domain of an address as the relay policy saw it (lower case, Unicode-aware), so that
/// routing and policy never disagree on which client domain an address belongs to.
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

/// The most messages claimed in one poll (their bodies are loaded with the claim).
const CLAIM_BATCH: usize = 64;

/// How often the trace retention is applied.
const TRACE_EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the statistics counted here are added to the store's counters.
const STATS_FLUSH: Duration = Duration::from_secs(10);

/// The queue manager. Share it behind an `Arc`: the filter's intake submits to it.
pub struct Queue {
    config: Arc<Config>,
    /// The client domains in force (the store's, kept current by the binary's watcher).
    domains: Arc<DomainTable>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    client: Arc<client::Settings>,
    resolver: TokioResolver,
    /// This node's lease: its id and how long a claim lasts unless renewed.
    lease: Lease,
    /// This node's queue ids (for received mail and for DSNs).
    ids: QueueIds,
    /// Messages this node holds a lease on and is delivering, with their tokens.
    held: Mutex<HashMap<String, i64>>,
    limits: Mutex<HashMap<Route, Arc<Semaphore>>>,
    idle: Mutex<HashMap<Route, Vec<(Client, Instant)>>>,
    poll_interval: Duration,
    /// This node's statistics, added to the store's counters every [`STATS_FLUSH`].
    tally: Tally,
    /// Delivery outcomes per recipient, for `/metrics`.
    outcomes: metrics::Labelled<1>,
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
    /// A queue for node `node` over `store`. It first takes back the leases this node held
    /// when it last stopped (before it takes any new mail, whose fresh leases this must not
    /// release), so that mail is delivered at once rather than when the leases expire.
    pub async fn new(
        config: Arc<Config>,
        domains: Arc<DomainTable>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        node: &str,
    ) -> Result<Arc<Queue>, Error> {
        match store.release_all(node).await? {
            0 => {}
            n => info!(
                messages = n,
                "took back the mail this node held when it last stopped"
            ),
        }
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
        let lease = Lease {
            owner: node.to_string(),
            ttl: config.store.lease,
        };
        let ids = QueueIds::new(store.node_number(node).await?);
        Ok(Arc::new(Queue {
            config,
            domains,
            store,
            clock,
            client,
            resolver,
            lease,
            ids,
            held: Mutex::default(),
            limits: Mutex::default(),
            idle: Mutex::default(),
            poll_interval: Duration::from_secs(1),
            tally: Tally::default(),
            outcomes: metrics::Labelled::counter(
                "mailsilo_queue_deliveries_total",
                "Delivery attempts' outcomes per recipient on this node",
                ["outcome"],
            ),
        }))
    }

    /// This node's delivery counters and the messages it is delivering now, in
    /// Prometheus text format (the queue's size is the store's: see the control endpoint).
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        self.outcomes.render(&mut out);
        let name = "mailsilo_queue_delivering";
        metrics::family(
            &mut out,
            name,
            "gauge",
            "Messages this node holds a lease on and is delivering now",
        );
        let delivering = self.held.lock().map_or(0, |h| h.len());
        metrics::sample(&mut out, name, &[], delivering);
        out
    }

    /// A new queue id of this node.
    pub fn next_id(&self) -> String {
        self.ids.next()
    }

    /// The queue clock's time (unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.lease.owner
    }

    /// This node's statistics (the intake counts each message's verdict and action in it,
    /// the queue each delivery outcome).
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The store the queue works on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The same queue polling the store every `interval` (tests use short ones).
    pub fn with_poll_interval(self: Arc<Self>, interval: Duration) -> Arc<Self> {
        let mut q =
            Arc::try_unwrap(self).unwrap_or_else(|_| panic!("with_poll_interval before sharing"));
        q.poll_interval = interval;
        Arc::new(q)
    }

    /// Runs the poller until `shutdown`: claims whatever falls due, renews the leases of
    /// running deliveries, closes idle cached connections and applies the trace retention.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let renew_every = (self.lease.ttl / 3).max(Duration::from_millis(100));
        let mut last_renewal = Instant::now();
        let mut last_expiry: Option<Instant> = None;
        let mut last_flush = Instant::now();
        loop {
            match self.poll().await {
                // A full batch: there may be more due at once.
                Ok(n) if n == CLAIM_BATCH => continue,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "queue poll failed"),
            }
            if last_renewal.elapsed() >= renew_every {
                self.renew().await;
                last_renewal = Instant::now();
            }
            if last_expiry.is_none_or(|t| t.elapsed() >= TRACE_EXPIRY_INTERVAL) {
                self.expire_traces().await;
                last_expiry = Some(Instant::now());
            }
            if last_flush.elapsed() >= STATS_FLUSH {
                self.sample_backlog().await;
                self.flush_stats().await;
                last_flush = Instant::now();
            }
            self.expire_idle();
            let pause = self.poll_interval.min(renew_every);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
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
        self.flush_stats().await;
    }

    /// Counts the shared queue's backlog now into the statistics, per client domain: the
    /// recipients waiting (metric `backlog`, labels `new`: not tried yet, and `deferred`:
    /// tried and waiting to retry, which add up to the whole), and one
    /// sample (metric `backlog_samples`, no domain), so that the portal charts each
    /// period's average whatever the number of nodes sampling.
    async fn sample_backlog(&self) {
        let waiting = match self.store.queue_by_domain(&StatQuery::default()).await {
            Ok(w) => w,
            Err(e) => return warn!(error = %e, "the queue's backlog not sampled"),
        };
        let now = self.clock.now();
        self.tally.add(now, "", "backlog_samples", "");
        for d in waiting {
            self.tally
                .add_n(now, &d.domain, "backlog", "new", d.untried());
            self.tally
                .add_n(now, &d.domain, "backlog", "deferred", d.deferred);
        }
    }

    /// Adds the statistics counted since the last flush to the store's counters.
    pub async fn flush_stats(&self) {
        if let Err(e) = self.tally.flush(self.store.as_ref()).await {
            warn!(error = %e, "statistics not written; kept for the next flush");
        }
    }

    /// Claims what is due, within the active limit, and starts delivering it; returns how
    /// many were claimed.
    async fn poll(self: &Arc<Self>) -> Result<usize, store::Error> {
        let held = self.held.lock().expect("held").len();
        let room = self.config.delivery.active_limit.saturating_sub(held);
        if room == 0 {
            return Ok(0);
        }
        let claimed = self
            .store
            .claim(&self.lease, self.clock.now(), room.min(CLAIM_BATCH))
            .await?;
        let n = claimed.len();
        for c in claimed {
            // Claims come without their bodies: each delivery fetches it once it has a slot.
            self.dispatch(c, None);
        }
        Ok(n)
    }

    /// Extends the leases of every message being delivered here.
    async fn renew(&self) {
        let held: Vec<(String, i64)> = self
            .held
            .lock()
            .expect("held")
            .iter()
            .map(|(id, t)| (id.clone(), *t))
            .collect();
        match self.store.renew(&held, &self.lease).await {
            // Taken over (this node was too slow, or paused): its outcomes will be refused;
            // the node that has it now delivers it.
            Ok(lost) => {
                // Those finished meanwhile are gone from the store, not lost.
                let still = self.held.lock().expect("held");
                lost.iter()
                    .filter(|id| still.contains_key(*id))
                    .for_each(|id| warn!(queue_id = %id, "lease lost to another node"));
            }
            Err(e) => warn!(error = %e, held = held.len(), "leases not renewed"),
        }
    }

    async fn expire_traces(&self) {
        let now = self.clock.now();
        let before = now - self.config.store.trace_retention.as_secs() as i64;
        match self.store.expire_traces(before).await {
            Ok(0) => {}
            Ok(n) => info!(traces = n, "expired message traces past their retention"),
            Err(e) => warn!(error = %e, "trace expiry failed"),
        }
        let before = now - self.config.store.stats_retention.as_secs() as i64;
        match self.store.expire_stats(before).await {
            Ok(0) => {}
            Ok(n) => info!(counters = n, "expired statistics past their retention"),
            Err(e) => warn!(error = %e, "statistics expiry failed"),
        }
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

    /// Stores a message durably, claimed by this node, and starts delivering it.
    pub async fn submit(self: &Arc<Self>, message: NewMessage) -> Result<(), store::Error> {
        let token = self
            .store
            .enqueue(message.clone(), Some(&self.lease))
            .await?
            .unwrap_or_default();
        let recipients = message
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
                next_attempt: message.next_attempt,
                last_error: None,
                warned: false,
            })
            .collect();
        self.dispatch(
            Claimed {
                message: Message {
                    id: message.id,
                    sender: message.sender,
                    envid: message.envid,
                    ret: message.ret,
                    received_at: message.received_at,
                    body: store::Bytes::new(),
                    recipients,
                },
                token,
            },
            Some(message.body),
        );
        Ok(())
    }

    /// Starts one delivery task per route for a claimed message's pending recipients, with
    /// its body when it is in memory already (fresh mail). The routes record their outcomes
    /// one after the other; the last gives the lease back.
    fn dispatch(self: &Arc<Self>, claimed: Claimed, body: Option<store::Bytes>) {
        let Claimed { message, token } = claimed;
        let mut groups: HashMap<Route, Vec<store::Recipient>> = HashMap::new();
        for r in message
            .recipients
            .iter()
            .filter(|r| r.status == Status::Pending)
        {
            groups
                .entry(Route::for_domain(
                    &self.domains,
                    &store::domain_lc(&r.address),
                ))
                .or_default()
                .push(r.clone());
        }
        self.held
            .lock()
            .expect("held")
            .insert(message.id.clone(), token);
        let message = Arc::new(message);
        // Routes still to record; the last one releases the lease.
        let remaining = Arc::new(tokio::sync::Mutex::new(groups.len()));
        for (route, rcpts) in groups {
            let queue = self.clone();
            let message = message.clone();
            let body = body.clone();
            let remaining = remaining.clone();
            let span = info_span!(parent: None, "delivery", queue_id = %message.id, relay = %route);
            tokio::spawn(
                async move {
                    let attempt = queue.deliver(&message, body, &route, rcpts).await;
                    let mut left = remaining.lock().await;
                    *left -= 1;
                    let last = *left == 0;
                    queue.record(&message.id, token, attempt, last).await;
                    if last {
                        queue.held.lock().expect("held").remove(&message.id);
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Records an attempt under the lease.
    async fn record(&self, id: &str, token: i64, mut attempt: Attempt, release: bool) {
        attempt.release = release;
        if let Err(e) = self.store.record(id, token, attempt).await {
            warn!(queue_id = %id, error = %e, "could not record the delivery outcome; the attempt will be repeated");
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
    ) -> Result<Vec<Result<Reply, Reply>>, (bool, String, bool)> {
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
    ) -> Result<Vec<Result<Reply, Reply>>, (bool, String)> {
        let client = self.connect(route).await?;
        self.send(route, client, envelope, body)
            .await
            .map_err(|(permanent, reason, _)| (permanent, reason))
    }

    /// One delivery attempt for the recipients of one route; returns its outcomes and the
    /// DSNs they call for, to be recorded under the lease. `body` is the message's when it
    /// is in memory already; a delivery that must wait for a connection slot lets go of it
    /// and reads it back from the store when its turn comes, so mail queued for a slow
    /// destination holds no memory.
    async fn deliver(
        self: &Arc<Self>,
        meta: &Message,
        body: Option<store::Bytes>,
        route: &Route,
        rcpts: Vec<store::Recipient>,
    ) -> Attempt {
        let limit = self.limit(route);
        let (_permit, body) = match limit.clone().try_acquire_owned() {
            Ok(p) => (p, body),
            Err(_) => {
                drop(body);
                let p = limit.acquire_owned().await.expect("semaphore never closed");
                (p, None)
            }
        };
        let body = match body {
            Some(b) => b,
            None => match self.store.body(&meta.id).await {
                Ok(Some(b)) => b,
                // Deleted meanwhile: nothing to deliver, nothing to record.
                Ok(None) => return Attempt::default(),
                Err(e) => {
                    let results =
                        vec![Err((false, format!("reading the message: {e}"))); rcpts.len()];
                    return self.settle(meta, route, &rcpts, results);
                }
            },
        };
        let message = Message {
            body,
            ..meta.clone()
        };
        let message = &message;
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
        let outcome = match self.cached(route) {
            // A cached connection may have been closed by the server meanwhile: when it turns
            // out stale, the attempt is made again on a fresh connection.
            Some(client) => match self.send(route, client, &envelope, &message.body).await {
                Err((_, _, true)) => self.send_fresh(route, &envelope, &message.body).await,
                other => other.map_err(|(permanent, reason, _)| (permanent, reason)),
            },
            None => self.send_fresh(route, &envelope, &message.body).await,
        };
        let results: Vec<Result<String, (bool, String)>> = match outcome {
            Ok(r) => r
                .into_iter()
                .map(|r| {
                    r.map(|ok| ok.to_string())
                        .map_err(|reply| (reply.is_permanent(), reply.to_string()))
                })
                .collect(),
            Err(e) => vec![Err(e); rcpts.len()],
        };
        self.settle(message, route, &rcpts, results)
    }

    /// Turns attempt results into outcomes: delivered, deferred with backoff, or failed
    /// (permanently, or because the message outlived its lifetime), with the DSNs they call
    /// for.
    fn settle(
        &self,
        message: &Message,
        route: &Route,
        rcpts: &[store::Recipient],
        results: Vec<Result<String, (bool, String)>>,
    ) -> Attempt {
        let now = self.clock.now();
        let mut outcomes = Vec::new();
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        for (r, result) in rcpts.iter().zip(results) {
            let retry = self
                .domains
                .route(&store::domain_lc(&r.address))
                .map_or(self.config.retry, |d| d.retry);
            let outcome = match result {
                Ok(reply) => {
                    info!(to = %r.address, status = "sent", %reply, "delivered");
                    Outcome::Delivered { reply }
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
            let label = match &outcome {
                Outcome::Delivered { .. } => "delivered",
                Outcome::Deferred { .. } => "deferred",
                Outcome::Failed { .. } | Outcome::Warned => "failed",
            };
            self.tally
                .add(now, &store::domain_lc(&r.address), "delivery", label);
            self.outcomes.inc([label]);
            outcomes.push((r.index, outcome));
        }
        // DSNs go with the outcomes that call for them, in the same transaction.
        let mut dsns = Vec::new();
        let failed: Vec<_> = failed
            .into_iter()
            .filter(|(r, _)| wants(r, notify::FAILURE))
            .collect();
        dsns.extend(self.dsn(
            message,
            dsn::Action::Failed,
            failed.iter().map(|(r, why)| (*r, why.as_str())).collect(),
        ));
        let delayed: Vec<_> = delayed
            .into_iter()
            .filter(|(r, _, _)| r.notify == 0 || wants(r, notify::DELAY))
            .collect();
        if let Some((_, _, until)) = delayed.first()
            && let Some(d) = self.dsn(
                message,
                dsn::Action::Delayed {
                    retry_until: *until,
                },
                delayed
                    .iter()
                    .map(|(r, why, _)| (*r, why.as_str()))
                    .collect(),
            )
        {
            dsns.push(d);
            outcomes.extend(delayed.iter().map(|(r, _, _)| (r.index, Outcome::Warned)));
        }
        Attempt {
            relay: route.to_string(),
            outcomes,
            dsns,
            release: false,
        }
    }

    /// A DSN to the sender about `rcpts` (never to the null sender), ready to be queued.
    fn dsn(
        &self,
        message: &Message,
        action: dsn::Action,
        rcpts: Vec<(&store::Recipient, &str)>,
    ) -> Option<NewMessage> {
        dsn_message(
            &self.config.smtp.hostname,
            self.node(),
            &|| self.ids.next(),
            self.clock.now(),
            message,
            action,
            rcpts,
        )
    }
}

/// Whether recipient `r`'s NOTIFY asks for a DSN of kind `bit` (FAILURE when it said none).
fn wants(r: &store::Recipient, bit: u8) -> bool {
    r.notify == 0 && bit == notify::FAILURE || r.notify & bit != 0 && r.notify & notify::NEVER == 0
}

/// A DSN from `hostname` (node `node`) to the sender of `message` about `rcpts`, with a
/// new queue id (never to the null sender), ready to be queued.
fn dsn_message(
    hostname: &str,
    node: &str,
    next_id: &dyn Fn() -> String,
    now: i64,
    message: &Message,
    action: dsn::Action,
    rcpts: Vec<(&store::Recipient, &str)>,
) -> Option<NewMessage> {
    if rcpts.is_empty() || message.sender.is_empty() {
        return None;
    }
    let id = next_id();
    let reports: Vec<dsn::Report<'_>> = rcpts
        .iter()
        .map(|(r, why)| dsn::Report {
            recipient: &r.address,
            orcpt: r.orcpt.as_deref(),
            reason: why,
        })
        .collect();
    let body = dsn::build(hostname, &id, now, message, action, &reports);
    info!(dsn_id = %id, to = %message.sender, ?action, "DSN queued");
    Some(NewMessage {
        id,
        sender: String::new(),
        recipients: vec![NewRecipient {
            address: message.sender.clone(),
            notify: notify::NEVER,
            orcpt: None,
        }],
        envid: None,
        ret: None,
        received_at: now,
        next_attempt: now,
        body: body.into(),
        arrival: Arrival {
            client: "-".into(),
            helo: "-".into(),
            tls: None,
            server: hostname.to_string(),
            node: node.to_string(),
        },
        scan: None,
        verdict: None,
        symbols: Vec::new(),
    })
}

/// Returns message `id` to its sender now, as an operator asks (Postfix's `postsuper -e`
/// and the attempt that follows, in one step): every recipient still pending fails with
/// `reason`, one DSN goes to the sender (unless the sender is null or NOTIFY says never),
/// and the message leaves the queue, all in one transaction through `node`'s claim on it.
/// How many recipients were returned; `None` when it is not queued; the store's `Conflict`
/// while a node is delivering it (it may be gone the next moment).
pub async fn bounce(
    store: &dyn Store,
    hostname: &str,
    node: &str,
    next_id: &(dyn Fn() -> String + Sync),
    id: &str,
    reason: &str,
) -> Result<Option<usize>, store::Error> {
    let lease = Lease {
        owner: node.to_string(),
        ttl: Duration::from_secs(60),
    };
    let Some(claimed) = store.claim_id(id, &lease).await? else {
        return Ok(None);
    };
    let pending: Vec<&store::Recipient> = claimed
        .message
        .recipients
        .iter()
        .filter(|r| r.status == Status::Pending)
        .collect();
    let dsn = dsn_message(
        hostname,
        node,
        next_id,
        smtp::date::now(),
        &claimed.message,
        dsn::Action::Failed,
        pending
            .iter()
            .filter(|r| wants(r, notify::FAILURE))
            .map(|r| (*r, reason))
            .collect(),
    );
    let attempt = Attempt {
        relay: "returned by the provider".into(),
        outcomes: pending
            .iter()
            .map(|r| {
                let reason = reason.to_string();
                (r.index, Outcome::Failed { reason })
            })
            .collect(),
        dsns: dsn.into_iter().collect(),
        release: true,
    };
    store.record(id, claimed.token, attempt).await?;
    info!(queue_id = %id, recipients = pending.len(), "returned to the sender");
    Ok(Some(pending.len()))
}
