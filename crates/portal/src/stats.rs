//! Statistics: the mail of a time range, by hour or by day, from the counters every node
//! adds to the store (verdicts, actions, delivery outcomes, the mail server and the cluster
//! that took each message), the top senders (addresses and domains), recipient domains,
//! viruses and policy hits, and the queue by client domain, now and over time (from the
//! queue's samples); for operators also each balanced server's health now and over time
//! (its availability, from the balancers' samples), each cluster's and each node's clamd
//! over time. The API answers
//! in JSON, the page draws the same figures as SVG charts rendered here (no script, no
//! external resource), each with a table of its numbers beside it.
//!
//! An operator sees every domain, an organisation's admin its own domains (a domain of
//! another organisation does not exist for it: 404); a user has no statistics (403).

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use store::{DomainQueue, Role, StatQuery};

use crate::auth::Principal;
use crate::{Ctx, Refused, ServerStatus, now, refusal};

/// The last second a range may reach: the end of year 9999.
const LATEST: i64 = 253_402_300_799;
/// The longest range one query covers.
pub const MAX_RANGE: i64 = 400 * 86400;
/// Ranges longer than this are summed by day rather than by hour.
const HOURLY_UP_TO: i64 = 3 * 86400;
/// How many entries each top list has.
const TOP: usize = 10;

/// `GET /api/v1/stats?since=&until=&domain=`: unix seconds (default: the last 24 hours),
/// and one client domain (default: every domain in the caller's scope).
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub domain: Option<String>,
}

/// One bucket of a series: its start (unix seconds) and the count of each label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Bucket {
    pub start: i64,
    pub counts: BTreeMap<String, i64>,
}

/// One entry of a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Ranked {
    pub label: String,
    pub count: i64,
}

/// The statistics of a range, as `GET /api/v1/stats` answers them.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Stats {
    pub since: i64,
    pub until: i64,
    /// The buckets' length in seconds: 3600 or 86400.
    pub step: i64,
    /// The domains counted; `None`: every domain.
    pub domains: Option<Vec<String>>,
    /// Messages by verdict (clean, spam, phishing, virus, policy), per recipient domain.
    pub verdicts: Vec<Bucket>,
    /// Messages by action (deliver, tag, quarantine, reject, defer).
    pub actions: Vec<Bucket>,
    /// Delivery attempts' outcomes by recipient (delivered, deferred, failed).
    pub deliveries: Vec<Bucket>,
    /// Messages by the mail server that took them.
    pub servers: Vec<Bucket>,
    /// Messages by the cluster of the mail server that took them (`-`: a listener outside
    /// every cluster).
    pub clusters: Vec<Bucket>,
    /// Sender domains (`<>`: the null sender).
    pub top_senders: Vec<Ranked>,
    /// Sender addresses, lower-case (`<>`: the null sender).
    pub top_sender_addresses: Vec<Ranked>,
    pub top_domains: Vec<Ranked>,
    pub viruses: Vec<Ranked>,
    pub policy: Vec<Ranked>,
    /// The queue now, by client domain.
    pub queue: Vec<DomainQueue>,
    /// The queue over time: the recipients waiting in the query's domains (`new`: not
    /// tried yet, `deferred`: tried and waiting to retry; together the whole queue), each
    /// bucket's average over the samples every node running the queue
    /// takes every 10 s; a bucket with no sample is empty.
    pub backlog: Vec<Bucket>,
    /// Each balanced server now (operators only; empty for others).
    pub health: Vec<ServerStatus>,
    /// Each balanced server's health over time (operators only; empty for others): every
    /// balancer's samples, one per server every 10 s, labelled `CLUSTER/SERVER STATE`
    /// with the state `up`, `down` or `maint`.
    pub availability: Vec<Bucket>,
    /// Each cluster's health over time (operators only; empty for others): every DNS
    /// node's checks of each cluster's balancer, one sample every 10 s, labelled
    /// `CLUSTER up` or `CLUSTER down`.
    pub cluster_availability: Vec<Bucket>,
    /// Each node's clamd over time (operators only; empty for others): every node with a
    /// clamd configured asks it every 10 s, labelled `NODE up` or `NODE down`.
    pub clamd_availability: Vec<Bucket>,
}

/// The statistics `q` asks for, within the caller's scope.
pub async fn gather(c: &Ctx, who: &Principal, q: &StatsQuery) -> Result<Stats, Refused> {
    if who.role == Role::User {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "statistics are for operators and organisation admins",
        ));
    }
    let until = q.until.unwrap_or_else(|| now() + 1);
    if !(0..=LATEST).contains(&until) || q.since.is_some_and(|s| !(0..=LATEST).contains(&s)) {
        return Err(Refused::invalid(
            "since and until are unix seconds from 0 to the end of year 9999",
        ));
    }
    let since = q.since.unwrap_or(until - 86400);
    if since >= until || until - since > MAX_RANGE {
        return Err(Refused::invalid(format!(
            "since must be before until, at most {} days apart",
            MAX_RANGE / 86400
        )));
    }
    let domains = match (&q.domain, who.role) {
        (Some(d), Role::Operator) => Some(vec![d.to_lowercase()]),
        (Some(d), _) if who.domains.contains(&d.to_lowercase()) => Some(vec![d.to_lowercase()]),
        (Some(d), _) => return Err(Refused::not_found(format!("no client domain {d}"))),
        (None, Role::Operator) => None,
        (None, _) => Some(who.domains.clone()),
    };
    let step = if until - since > HOURLY_UP_TO {
        86400
    } else {
        3600
    };
    let query = StatQuery {
        domains: domains.clone(),
        since: since - since.rem_euclid(3600),
        until,
    };
    // A series of the query's domains, or (`silo`) of the samples, which count for no
    // client domain.
    let silo = StatQuery {
        domains: Some(vec![String::new()]),
        ..query.clone()
    };
    let series_of = async |q: &StatQuery, metric: &str| -> Result<Vec<Bucket>, Refused> {
        let rows = c
            .store
            .stat_series(q, metric)
            .await
            .map_err(Refused::store)?;
        Ok(buckets(&rows, query.since, until, step))
    };
    let series = async |metric: &str| series_of(&query, metric).await;
    let silo_series = async |metric: &str| series_of(&silo, metric).await;
    let top = async |metric: &str| -> Result<Vec<Ranked>, Refused> {
        Ok(c.store
            .stat_top(&query, metric, TOP)
            .await
            .map_err(Refused::store)?
            .into_iter()
            .map(|(label, count)| Ranked { label, count })
            .collect())
    };
    let servers = series("server").await?;
    let clusters: BTreeMap<String, String> = c
        .store
        .servers()
        .await
        .map_err(Refused::store)?
        .into_iter()
        .map(|s| (s.server, s.cluster))
        .collect();
    Ok(Stats {
        since,
        until,
        step,
        verdicts: series("verdict").await?,
        actions: series("action").await?,
        deliveries: series("delivery").await?,
        clusters: relabel(&servers, |server| {
            clusters.get(server).map_or("-", String::as_str)
        }),
        servers,
        top_senders: top("sender").await?,
        top_sender_addresses: top("sender_address").await?,
        top_domains: top("domain").await?,
        viruses: top("virus").await?,
        policy: top("policy").await?,
        queue: c
            .store
            .queue_by_domain(&query)
            .await
            .map_err(Refused::store)?,
        backlog: averages(
            &series("backlog").await?,
            &silo_series("backlog_samples").await?,
        ),
        health: if who.role == Role::Operator {
            c.balancers.servers()
        } else {
            Vec::new()
        },
        availability: if who.role == Role::Operator {
            silo_series("health").await?
        } else {
            Vec::new()
        },
        cluster_availability: if who.role == Role::Operator {
            silo_series("cluster_health").await?
        } else {
            Vec::new()
        },
        clamd_availability: if who.role == Role::Operator {
            silo_series("clamd_health").await?
        } else {
            Vec::new()
        },
        domains,
    })
}

/// The rows (hour, label, n) summed into buckets of `step` seconds from `since` to `until`,
/// every bucket present (empty ones too, so a chart's gaps show).
pub fn buckets(rows: &[(i64, String, i64)], since: i64, until: i64, step: i64) -> Vec<Bucket> {
    let first = since - since.rem_euclid(step);
    let mut out: Vec<Bucket> = (0..)
        .map(|i| first + i * step)
        .take_while(|start| *start < until)
        .map(|start| Bucket {
            start,
            counts: BTreeMap::new(),
        })
        .collect();
    for (hour, label, n) in rows {
        let i = ((hour - first) / step) as usize;
        if let Some(b) = out.get_mut(i) {
            *b.counts.entry(label.clone()).or_default() += n;
        }
    }
    out
}

/// `series` with its labels renamed by `to`, the counts of labels renamed alike summed.
fn relabel<'a>(series: &'a [Bucket], to: impl Fn(&'a str) -> &'a str) -> Vec<Bucket> {
    series
        .iter()
        .map(|b| {
            let mut counts = BTreeMap::new();
            for (label, n) in &b.counts {
                *counts.entry(to(label).to_string()).or_default() += n;
            }
            Bucket {
                start: b.start,
                counts,
            }
        })
        .collect()
}

/// Each bucket of the sums `sums` divided by its number of samples (the only label of
/// `samples`' bucket), rounded; empty where nothing was sampled.
fn averages(sums: &[Bucket], samples: &[Bucket]) -> Vec<Bucket> {
    sums.iter()
        .zip(samples)
        .map(|(b, s)| {
            let n: i64 = s.counts.values().sum();
            Bucket {
                start: b.start,
                counts: if n > 0 {
                    b.counts
                        .iter()
                        .map(|(l, sum)| (l.clone(), (*sum as f64 / n as f64).round() as i64))
                        .collect()
                } else {
                    BTreeMap::new()
                },
            }
        })
        .collect()
}

/// `GET /api/v1/stats`.
pub fn routes() -> Router<Ctx> {
    Router::new().route(
        "/api/v1/stats",
        get(
            |State(c): State<Ctx>,
             Extension(who): Extension<Principal>,
             q: Result<Query<StatsQuery>, QueryRejection>| async move {
                let q = match q {
                    Ok(Query(q)) => q,
                    Err(e) => return refusal(e.status(), &e.body_text()),
                };
                match gather(&c, &who, &q).await {
                    Ok(s) => Json(s).into_response(),
                    Err(e) => e.into_response(),
                }
            },
        ),
    )
}

/// Colours of the labels the charts know, in the order they are stacked; others take
/// the palette's in turn.
const KNOWN: &[(&str, &str)] = &[
    ("clean", "#4c9a4c"),
    ("deliver", "#4c9a4c"),
    ("delivered", "#4c9a4c"),
    ("tag", "#c9a227"),
    ("spam", "#d08c2e"),
    ("deferred", "#d08c2e"),
    ("new", "#2e9aa0"),
    ("quarantine", "#8a5fb5"),
    ("phishing", "#8a5fb5"),
    ("policy", "#3f6fb5"),
    ("defer", "#3f6fb5"),
    ("virus", "#b53f3f"),
    ("reject", "#b53f3f"),
    ("failed", "#b53f3f"),
];
const PALETTE: &[&str] = &[
    "#3f6fb5", "#d08c2e", "#4c9a4c", "#8a5fb5", "#b53f3f", "#2e9aa0", "#7a7a7a", "#c9a227",
];

fn colour(label: &str, i: usize) -> &'static str {
    KNOWN
        .iter()
        .find(|(l, _)| *l == label)
        .map_or(PALETTE[i % PALETTE.len()], |(_, c)| c)
}

/// A bucket's start as the axis shows it: the hour (UTC) or the day.
fn tick(start: i64, step: i64) -> String {
    let t = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(start.max(0) as u64),
    )
    .to_string();
    if step >= 86400 {
        t[..10].to_string()
    } else {
        format!("{} {}h", &t[5..10], &t[11..13])
    }
}

/// A stacked bar chart of `buckets` as inline SVG, its labels in a legend, each bar's
/// figures in its tooltip; with the table of the same numbers for screen readers and
/// copying.
pub fn stacked_chart(title: &str, buckets: &[Bucket], step: i64) -> String {
    let esc = crate::web::esc;
    let mut labels: Vec<&str> = buckets
        .iter()
        .flat_map(|b| b.counts.keys().map(String::as_str))
        .collect();
    labels.sort_by_key(|l| {
        (
            KNOWN.iter().position(|(k, _)| k == l).unwrap_or(usize::MAX),
            *l,
        )
    });
    labels.dedup();
    let max = buckets
        .iter()
        .map(|b| b.counts.values().sum::<i64>())
        .max()
        .unwrap_or(0);
    let total: i64 = buckets.iter().flat_map(|b| b.counts.values()).sum();
    let (w, h, left, bottom) = (720.0_f64, 220.0_f64, 44.0_f64, 36.0_f64);
    let plot = h - bottom - 10.0;
    let slot = (w - left - 8.0) / buckets.len().max(1) as f64;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}: {total} in all\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title>{t}</title>\
         <line x1=\"{left}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#333\"/>\
         <text x=\"{tx}\" y=\"16\" font-size=\"11\" text-anchor=\"end\">{max}</text>\
         <text x=\"{tx}\" y=\"{y0}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        t = esc(title),
        y0 = h - bottom,
        x1 = w - 8.0,
        tx = left - 4.0,
    );
    let every = (buckets.len() / 8).max(1);
    for (i, b) in buckets.iter().enumerate() {
        let x = left + i as f64 * slot + slot * 0.1;
        let mut y = h - bottom;
        for (j, l) in labels.iter().enumerate() {
            let n = b.counts.get(*l).copied().unwrap_or(0);
            if n == 0 || max == 0 {
                continue;
            }
            let bar = plot * n as f64 / max as f64;
            y -= bar;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bar:.1}\" fill=\"{c}\"><title>{when}: {l} {n}</title></rect>",
                bw = slot * 0.8,
                c = colour(l, j),
                when = tick(b.start, step),
                l = esc(l),
            );
        }
        if i % every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{ty}\" font-size=\"10\">{}</text>",
                tick(b.start, step),
                ty = h - bottom + 14.0,
            );
        }
    }
    let mut lx = left;
    for (j, l) in labels.iter().enumerate() {
        let _ = write!(
            svg,
            "<rect x=\"{lx:.1}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{c}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\" font-size=\"11\">{l}</text>",
            ly = h - 14.0,
            c = colour(l, j),
            tx = lx + 13.0,
            ty = h - 5.0,
            l = esc(l),
        );
        lx += 24.0 + 7.0 * l.chars().count().min(24) as f64;
    }
    svg.push_str("</svg>");
    // The numbers, for those who do not see the chart.
    let mut table = format!(
        "<details><summary>{} as a table</summary><table><thead><tr><th scope=\"col\">From</th>",
        esc(title)
    );
    for l in &labels {
        let _ = write!(table, "<th scope=\"col\">{}</th>", esc(l));
    }
    table.push_str("</tr></thead><tbody>");
    for b in buckets.iter().filter(|b| !b.counts.is_empty()) {
        let _ = write!(table, "<tr><td>{}</td>", tick(b.start, step));
        for l in &labels {
            let _ = write!(table, "<td>{}</td>", b.counts.get(*l).copied().unwrap_or(0));
        }
        table.push_str("</tr>");
    }
    table.push_str("</tbody></table></details>");
    format!(
        "<section class=\"stat\" aria-label=\"{t}\"><h2>{t}</h2>{svg}{table}</section>",
        t = esc(title)
    )
}

/// A horizontal bar chart of a top list, as inline SVG, with its numbers in the bars' text.
pub fn ranked_chart(title: &str, items: &[Ranked]) -> String {
    let esc = crate::web::esc;
    if items.is_empty() {
        return format!(
            "<section class=\"stat\" aria-label=\"{t}\"><h2>{t}</h2><p>None in this range.</p></section>",
            t = esc(title)
        );
    }
    let max = items.iter().map(|r| r.count).max().unwrap_or(1).max(1);
    let (w, row) = (720.0_f64, 20.0_f64);
    let h = row * items.len() as f64 + 4.0;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{t}</title>",
        t = esc(title)
    );
    let mut list = String::from("<ol class=\"ranked\">");
    for (i, r) in items.iter().enumerate() {
        let y = i as f64 * row + 2.0;
        let bar = (w - 300.0) * r.count as f64 / max as f64;
        // Long labels are cut where they are drawn, and said whole in the tooltip.
        let label: String = if r.label.chars().count() > 40 {
            r.label.chars().take(39).chain(['…']).collect()
        } else {
            r.label.clone()
        };
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{ty:.1}\" font-size=\"11\">{l}</text>\
             <rect x=\"240\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"#3f6fb5\"><title>{whole}: {n}</title></rect>\
             <text x=\"{nx:.1}\" y=\"{ty:.1}\" font-size=\"11\">{n}</text>",
            ty = y + row * 0.65,
            l = esc(&label),
            whole = esc(&r.label),
            bh = row * 0.75,
            nx = 244.0 + bar,
            n = r.count,
        );
        let _ = write!(list, "<li>{}: {}</li>", esc(&r.label), r.count);
    }
    svg.push_str("</svg>");
    list.push_str("</ol>");
    format!(
        "<section class=\"stat\" aria-label=\"{t}\"><h2>{t}</h2>{svg}<details><summary>{t} as a list</summary>{list}</details></section>",
        t = esc(title)
    )
}

/// Messages per second by label over the hour before `now`, from hourly counters `rows`
/// (hour, label, count): this hour's count, and the last hour's in the share of it that
/// the hour before `now` still covers.
pub fn last_hour_rates(rows: &[(i64, String, i64)], now: i64) -> BTreeMap<String, f64> {
    let hour = now - now.rem_euclid(3600);
    let left = 1.0 - (now - hour) as f64 / 3600.0;
    let mut out = BTreeMap::new();
    for (h, label, n) in rows {
        let weight = match *h {
            h if h == hour => 1.0,
            h if h == hour - 3600 => left,
            _ => 0.0,
        };
        *out.entry(label.clone()).or_insert(0.0) += *n as f64 * weight / 3600.0;
    }
    out
}

/// One server's samples in a bucket: up, down, in maintenance.
#[derive(Default, Clone, Copy)]
struct Samples {
    up: i64,
    down: i64,
    maint: i64,
}

impl Samples {
    /// The share of checked samples that were up, if any was checked.
    fn share_up(self) -> Option<f64> {
        let checked = self.up + self.down;
        (checked > 0).then(|| self.up as f64 / checked as f64)
    }
}

/// Per server (`CLUSTER/SERVER`) or cluster, its samples in each of `buckets`.
fn samples_by_server(buckets: &[Bucket]) -> BTreeMap<&str, Vec<Samples>> {
    let mut out: BTreeMap<&str, Vec<Samples>> = BTreeMap::new();
    for (i, b) in buckets.iter().enumerate() {
        for (label, n) in &b.counts {
            let Some((server, state)) = label.rsplit_once(' ') else {
                continue;
            };
            let row = out
                .entry(server)
                .or_insert_with(|| vec![Samples::default(); buckets.len()]);
            match state {
                "up" => row[i].up += n,
                "down" => row[i].down += n,
                "maint" => row[i].maint += n,
                _ => {}
            }
        }
    }
    out
}

/// Each server's (or cluster's, or node's clamd: `what`) availability over time as inline SVG,
/// HAProxy-stats style: one row per server, one cell per bucket, green when every sample
/// was up, amber when most were, red otherwise, blue-grey in maintenance, pale where
/// nothing was sampled; each cell's share in its tooltip, and each server's share over the
/// range in a table.
pub fn availability_chart(what: &str, buckets: &[Bucket], step: i64) -> String {
    let esc = crate::web::esc;
    let title = format!("{what} availability");
    let servers = samples_by_server(buckets);
    if servers.is_empty() {
        return format!(
            "<section class=\"stat\" aria-label=\"{title}\"><h2>{title}</h2><p>No health samples in this range.</p></section>"
        );
    }
    let (w, row, left, top) = (720.0_f64, 18.0_f64, 150.0_f64, 4.0_f64);
    let h = top + row * servers.len() as f64 + 20.0;
    let slot = (w - left - 8.0) / buckets.len().max(1) as f64;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{title}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{title}</title>"
    );
    let mut table = format!(
        "<details><summary>{title} as a table</summary><table><thead><tr><th scope=\"col\">{what}</th>\
         <th scope=\"col\">Up</th><th scope=\"col\">Samples up</th><th scope=\"col\">Samples down</th>\
         <th scope=\"col\">Samples in maintenance</th></tr></thead><tbody>"
    );
    for (r, (server, cells)) in servers.iter().enumerate() {
        let y = top + r as f64 * row;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{ty:.1}\" font-size=\"11\">{s}</text>",
            ty = y + row * 0.7,
            s = esc(&server.chars().take(24).collect::<String>()),
        );
        for (i, c) in cells.iter().enumerate() {
            let (fill, said) = match c.share_up() {
                Some(1.0) => ("#4c9a4c", "100% up".to_string()),
                Some(f) if f >= 0.9 => ("#d08c2e", format!("{:.1}% up", f * 100.0)),
                Some(f) => ("#b53f3f", format!("{:.1}% up", f * 100.0)),
                None if c.maint > 0 => ("#7a8ca0", "in maintenance".to_string()),
                None => ("#eeeeee", "no samples".to_string()),
            };
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cw:.1}\" height=\"{ch:.1}\" fill=\"{fill}\"><title>{s} {when}: {said}</title></rect>",
                x = left + i as f64 * slot,
                cw = (slot - 1.0).max(0.5),
                ch = row - 3.0,
                s = esc(server),
                when = tick(buckets[i].start, step),
            );
        }
        let sum = cells.iter().fold(Samples::default(), |a, c| Samples {
            up: a.up + c.up,
            down: a.down + c.down,
            maint: a.maint + c.maint,
        });
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(server),
            sum.share_up()
                .map_or("-".to_string(), |f| format!("{:.2}%", f * 100.0)),
            sum.up,
            sum.down,
            sum.maint
        );
    }
    let every = (buckets.len() / 8).max(1);
    for (i, b) in buckets.iter().enumerate().step_by(every) {
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{ty:.1}\" font-size=\"10\">{}</text>",
            tick(b.start, step),
            x = left + i as f64 * slot,
            ty = h - 6.0,
        );
    }
    svg.push_str("</svg>");
    table.push_str("</tbody></table></details>");
    format!("<section class=\"stat\" aria-label=\"{title}\"><h2>{title}</h2>{svg}{table}</section>")
}

/// The statistics page's body: the range and domain chooser, then every chart.
pub fn page_body(s: &Stats, who: &Principal, q: &StatsQuery) -> String {
    let esc = crate::web::esc;
    let mut body = String::new();
    let domain = q.domain.as_deref().unwrap_or("");
    let mut ranges = String::from("<p>Range: ");
    for (label, secs) in [
        ("last 24 hours", 86400),
        ("last 7 days", 7 * 86400),
        ("last 30 days", 30 * 86400),
    ] {
        let _ = write!(
            ranges,
            "<a href=\"/stats?since={}{}\">{label}</a> ",
            s.until - secs,
            if domain.is_empty() {
                String::new()
            } else {
                format!("&amp;domain={}", crate::web::url(domain))
            }
        );
    }
    ranges.push_str("</p>");
    body.push_str(&ranges);
    let choices: Vec<String> = match who.role {
        Role::Operator => s.queue.iter().map(|d| d.domain.clone()).collect(),
        _ => who.domains.clone(),
    };
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/stats\"><input type=\"hidden\" name=\"since\" value=\"{}\">\
         <label for=\"domain\">Client domain (empty: all)</label>\
         <input id=\"domain\" name=\"domain\" value=\"{}\" list=\"domains\"><datalist id=\"domains\">{}</datalist>\
         <button type=\"submit\">Show</button></form>",
        s.since,
        esc(domain),
        choices
            .iter()
            .map(|d| format!("<option value=\"{}\">", esc(d)))
            .collect::<String>()
    );
    let _ = write!(
        body,
        "<p>From {} to {} (UTC), by {}{}.</p>",
        tick(s.since, 3600),
        tick(s.until, 3600),
        if s.step == 3600 { "hour" } else { "day" },
        match &s.domains {
            None => ", every client domain".to_string(),
            Some(d) => format!(", for {}", esc(&d.join(", "))),
        }
    );
    body.push_str(&stacked_chart("Messages by verdict", &s.verdicts, s.step));
    body.push_str(&stacked_chart("Messages by action", &s.actions, s.step));
    body.push_str(&stacked_chart("Delivery outcomes", &s.deliveries, s.step));
    body.push_str(&stacked_chart("Messages by cluster", &s.clusters, s.step));
    body.push_str(&stacked_chart(
        "Messages by mail server",
        &s.servers,
        s.step,
    ));
    body.push_str(&ranked_chart("Top senders", &s.top_sender_addresses));
    body.push_str(&ranked_chart("Top sender domains", &s.top_senders));
    body.push_str(&ranked_chart("Top recipient domains", &s.top_domains));
    body.push_str(&ranked_chart("Viruses", &s.viruses));
    body.push_str(&ranked_chart("Attachment policy hits", &s.policy));
    body.push_str(&stacked_chart(
        "Queue (recipients waiting, average)",
        &s.backlog,
        s.step,
    ));
    body.push_str(
        "<section class=\"stat\" aria-label=\"Queue now\"><h2>Queue now</h2><table><thead><tr>\
         <th scope=\"col\">Client domain</th><th scope=\"col\">Waiting</th>\
         <th scope=\"col\">Deferred</th><th scope=\"col\">Oldest</th></tr></thead><tbody>",
    );
    for d in &s.queue {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.domain),
            d.pending,
            d.deferred,
            tick(d.oldest, 3600)
        );
    }
    if s.queue.is_empty() {
        body.push_str("<tr><td colspan=\"4\">Nothing waiting.</td></tr>");
    }
    body.push_str("</tbody></table></section>");
    if who.role == Role::Operator {
        body.push_str(&availability_chart("Server", &s.availability, s.step));
        body.push_str(&availability_chart(
            "Cluster",
            &s.cluster_availability,
            s.step,
        ));
        body.push_str(&availability_chart("clamd", &s.clamd_availability, s.step));
        body.push_str(
            "<section class=\"stat\" aria-label=\"Servers now\"><h2>Servers now</h2><table><thead><tr>\
             <th scope=\"col\">Cluster</th><th scope=\"col\">Server</th><th scope=\"col\">Health</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Loading</th><th scope=\"col\">Open sessions</th>\
             <th scope=\"col\">Sessions</th><th scope=\"col\">Last check</th></tr></thead><tbody>",
        );
        for h in &s.health {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"{up}\">{up}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&h.cluster),
                esc(&h.server),
                esc(&h.state),
                h.loading,
                h.active,
                h.total,
                esc(h.last_check.as_deref().unwrap_or("-")),
                up = if h.up { "up" } else { "down" },
            );
        }
        body.push_str("</tbody></table></section>");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_by_step() {
        let rows = vec![
            (3600, "spam".to_string(), 2),
            (7200, "spam".to_string(), 1),
            (7200, "clean".to_string(), 4),
            (90000, "clean".to_string(), 1),
        ];
        let hourly = buckets(&rows, 3600, 3 * 3600, 3600);
        assert_eq!(hourly.len(), 2);
        assert_eq!(hourly[1].counts["clean"], 4);
        let daily = buckets(&rows, 0, 2 * 86400, 86400);
        assert_eq!(daily.len(), 2);
        assert_eq!(daily[0].counts["spam"], 3);
        assert_eq!(daily[1].counts["clean"], 1);
    }

    #[test]
    fn clusters_and_averages_from_other_series() {
        let b = buckets(
            &[
                (0, "c1-s1".to_string(), 2),
                (0, "c1-s2".to_string(), 3),
                (0, "c2-s1".to_string(), 1),
                (3600, "mx.test".to_string(), 4),
            ],
            0,
            7200,
            3600,
        );
        let cluster = |s: &str| if s.starts_with("c1-") { "c1" } else { "c2" };
        let by = relabel(&b, cluster);
        assert_eq!(by[0].counts, [("c1".into(), 5), ("c2".into(), 1)].into());
        assert_eq!(by[1].counts, [("c2".into(), 4)].into());
        // Two samples of 3 and 4 deferred, 1 new: averages 3.5 -> 4 and 0.5 -> 1; an
        // hour with no sample is a gap, not a zero.
        let sums = buckets(
            &[
                (0, "deferred".to_string(), 7),
                (0, "new".to_string(), 1),
                (3600, "deferred".to_string(), 9),
            ],
            0,
            7200,
            3600,
        );
        let samples = buckets(&[(0, String::new(), 2)], 0, 7200, 3600);
        let avg = averages(&sums, &samples);
        assert_eq!(
            avg[0].counts,
            [("deferred".into(), 4), ("new".into(), 1)].into()
        );
        assert!(avg[1].counts.is_empty());
    }

    #[test]
    fn dates_and_charts() {
        assert_eq!(tick(20_000 * 86400, 86400), "2024-10-04");
        assert_eq!(tick(86400 + 5 * 3600, 3600), "01-02 05h");
        let b = buckets(
            &[(0, "<spam>".to_string(), 3), (3600, "clean".to_string(), 1)],
            0,
            7200,
            3600,
        );
        let svg = stacked_chart("Verdicts", &b, 3600);
        assert!(svg.contains("aria-label=\"Verdicts: 4 in all\""), "{svg}");
        assert!(
            svg.contains("&lt;spam&gt; 3") && !svg.contains("<spam>"),
            "{svg}"
        );
        assert_eq!(
            svg.matches("<rect").count(),
            2 + 2,
            "two bars, two legend keys"
        );
        let top = ranked_chart(
            "Top",
            &[Ranked {
                label: "a.example".into(),
                count: 7,
            }],
        );
        assert!(top.contains("<li>a.example: 7</li>"), "{top}");
        let long = format!("{}@example.com", "é".repeat(50));
        let top = ranked_chart(
            "Top",
            &[Ranked {
                label: long.clone(),
                count: 1,
            }],
        );
        let cut: String = long.chars().take(39).collect();
        assert!(top.contains(&format!(">{cut}…</text>")), "{top}");
        assert!(top.contains(&format!("<title>{long}: 1</title>")), "{top}");
    }

    #[test]
    fn rates_over_the_last_hour() {
        let hour = 36_000;
        let rows = [
            (hour - 7200, "s1".to_string(), 9999),
            (hour - 3600, "s1".to_string(), 720),
            (hour, "s1".to_string(), 360),
            (hour, "s2".to_string(), 36),
        ];
        let r = last_hour_rates(&rows, hour + 1800);
        assert!((r["s1"] - 0.2).abs() < 1e-9, "{r:?}");
        assert!((r["s2"] - 0.01).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn availability_by_server_and_hour() {
        let rows = [
            (0, "c1/s1 up".to_string(), 360),
            (0, "c1/s2 up".to_string(), 300),
            (0, "c1/s2 down".to_string(), 60),
            (3600, "c1/s1 up".to_string(), 350),
            (3600, "c1/s1 down".to_string(), 10),
            (3600, "c1/s2 maint".to_string(), 360),
        ];
        let b = buckets(&rows, 0, 3 * 3600, 3600);
        let svg = availability_chart("Server", &b, 3600);
        for want in [
            "c1/s1 01-01 00h: 100% up",
            "c1/s2 01-01 00h: 83.3% up",
            "c1/s1 01-01 01h: 97.2% up",
            "c1/s2 01-01 01h: in maintenance",
            "c1/s1 01-01 02h: no samples",
            // Over the range: s1 710 of 720, s2 300 of 360 checked.
            "<tr><td>c1/s1</td><td>98.61%</td><td>710</td><td>10</td><td>0</td></tr>",
            "<tr><td>c1/s2</td><td>83.33%</td><td>300</td><td>60</td><td>360</td></tr>",
        ] {
            assert!(svg.contains(want), "{want}: {svg}");
        }
        let fills = |c: &str| svg.matches(&format!("fill=\"{c}\"")).count();
        assert_eq!(
            (
                fills("#4c9a4c"),
                fills("#d08c2e"),
                fills("#b53f3f"),
                fills("#7a8ca0"),
                fills("#eeeeee")
            ),
            (1, 1, 1, 1, 2),
            "{svg}"
        );
        assert!(
            availability_chart("Cluster", &buckets(&[], 0, 3600, 3600), 3600)
                .contains("No health samples")
        );
    }
}
