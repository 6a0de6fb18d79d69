//! Statistics counted in memory and added to the store's counters in batches: one write
//! every few seconds, whatever the mail rate, rather than one per message. A crash loses
//! the counts of the last interval, never mail.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::{Result, StatKey, Store};

/// The longest label kept (a sender's domain, a virus name, a policy reason).
pub const MAX_LABEL: usize = 120;

/// Counts waiting for the next flush.
#[derive(Debug, Default)]
pub struct Tally {
    counts: Mutex<HashMap<StatKey, i64>>,
}

impl Tally {
    /// Counts one `metric` = `label` for mail to `domain` at `at` (unix seconds).
    pub fn add(&self, at: i64, domain: &str, metric: &'static str, label: &str) {
        self.add_n(at, domain, metric, label, 1);
    }

    /// Adds `n` to `metric` = `label` for `domain` at `at` (a sampled gauge's value).
    pub fn add_n(&self, at: i64, domain: &str, metric: &'static str, label: &str, n: i64) {
        let mut end = label.len().min(MAX_LABEL);
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        let key = StatKey {
            hour: at - at.rem_euclid(3600),
            domain: domain.to_lowercase(),
            metric: metric.to_string(),
            label: label[..end].to_string(),
        };
        *self.counts.lock().expect("tally").entry(key).or_default() += n;
    }

    /// Adds what was counted to the store; on failure the counts wait for the next flush.
    /// Returns how many counters were written.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize> {
        let batch: Vec<(StatKey, i64)> = std::mem::take(&mut *self.counts.lock().expect("tally"))
            .into_iter()
            .collect();
        let n = batch.len();
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = store.add_stats(batch.clone()).await {
            let mut counts = self.counts.lock().expect("tally");
            for (k, v) in batch {
                *counts.entry(k).or_default() += v;
            }
            return Err(e);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hour_and_bounds_labels() {
        let t = Tally::default();
        t.add(7199, "A.example", "verdict", "spam");
        t.add(3600, "a.example", "verdict", "spam");
        t.add(7200, "a.example", "verdict", "spam");
        t.add_n(7300, "a.example", "verdict", "spam", 5);
        let long = "é".repeat(100);
        t.add(0, "a.example", "sender", &long);
        let counts = t.counts.lock().unwrap();
        let spam = |hour| StatKey {
            hour,
            domain: "a.example".into(),
            metric: "verdict".into(),
            label: "spam".into(),
        };
        assert_eq!(counts[&spam(3600)], 2);
        assert_eq!(counts[&spam(7200)], 6);
        let label = &counts.keys().find(|k| k.metric == "sender").unwrap().label;
        assert!(label.len() <= MAX_LABEL && label.chars().all(|c| c == 'é'));
    }
}
