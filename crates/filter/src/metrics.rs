//! The filter's counters for `/metrics` (Prometheus text format): messages by verdict and
//! action, a histogram of the time a scan takes, and per check its runs, time and the runs
//! in which it could not do its work.

use std::collections::BTreeMap;
use std::sync::Mutex;

use metrics::{Histogram, Labelled, family, sample};

/// Upper bounds of the scan-time histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// The filter's counters; shared by the engine and the intake of a process.
pub struct Metrics {
    outcomes: Labelled<2>,
    scans: Histogram,
    /// Per check: runs, seconds, runs that could not do their work.
    checks: Mutex<BTreeMap<&'static str, (u64, f64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            outcomes: Labelled::counter(
                "mailsilo_filter_messages_total",
                "Messages (one per action taken on a message) by verdict and action",
                ["verdict", "action"],
            ),
            scans: Histogram::new(
                "mailsilo_filter_scan_seconds",
                "Time one scan takes",
                &BUCKETS,
            ),
            checks: Mutex::default(),
        }
    }
}

impl Metrics {
    /// One check's run.
    pub fn check(&self, name: &'static str, seconds: f64, failed: bool) {
        let mut c = self.checks.lock().expect("metrics");
        let e = c.entry(name).or_default();
        e.0 += 1;
        e.1 += seconds;
        e.2 += u64::from(failed);
    }

    /// One whole scan.
    pub fn scan(&self, seconds: f64) {
        self.scans.observe(seconds);
    }

    /// A message's copy for some recipients became `action` on `verdict`.
    pub fn outcome(&self, verdict: &'static str, action: &'static str) {
        self.outcomes.inc([verdict, action]);
    }

    /// The counters in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.outcomes.render(&mut out);
        self.scans.render(&mut out);
        let checks = self.checks.lock().expect("metrics").clone();
        for (name, help, kind, pick) in [
            (
                "mailsilo_filter_check_runs_total",
                "Runs of each check",
                "counter",
                (|e: &(u64, f64, u64)| e.0.to_string()) as fn(&(u64, f64, u64)) -> String,
            ),
            (
                "mailsilo_filter_check_seconds_total",
                "Time spent in each check",
                "counter",
                |e| e.1.to_string(),
            ),
            (
                "mailsilo_filter_check_failures_total",
                "Runs in which a check could not do its work (the verdict was degraded)",
                "counter",
                |e| e.2.to_string(),
            ),
        ] {
            family(&mut out, name, kind, help);
            for (check, e) in &checks {
                sample(&mut out, name, &[("check", check)], pick(e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.outcome("spam", "quarantine");
        m.outcome("spam", "quarantine");
        m.outcome("clean", "deliver");
        m.scan(0.0003);
        m.scan(0.2);
        m.check("classifier", 0.0001, true);
        let text = m.render();
        assert!(
            text.contains(
                "mailsilo_filter_messages_total{verdict=\"spam\",action=\"quarantine\"} 2"
            )
        );
        assert!(
            text.contains("mailsilo_filter_messages_total{verdict=\"clean\",action=\"deliver\"} 1")
        );
        assert!(text.contains("mailsilo_filter_scan_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("mailsilo_filter_scan_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("mailsilo_filter_scan_seconds_bucket{le=\"0.1\"} 1"));
        assert!(text.contains("mailsilo_filter_scan_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("mailsilo_filter_check_failures_total{check=\"classifier\"} 1"));
    }
}
