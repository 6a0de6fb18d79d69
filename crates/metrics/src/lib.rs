//! The Prometheus text format (version 0.0.4) for every role of a mailsilo process:
//! families of counters or gauges told apart by label values, histograms of durations,
//! and the writing of samples with their label values escaped. There is no registry and
//! no global state: each role owns its families and renders them, and the control
//! endpoint's `/metrics` joins the texts of the roles that run in the process.

use std::fmt::{Display, Write};
use std::sync::Mutex;

/// Writes a family's `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample, `name{label="value",...} value`, each label value escaped as the
/// format asks (backslash, double quote and line feed).
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A family of counters (or gauges) with `N` labels: one value per set of label values,
/// kept under a lock. Meant for events of a mail server's rate (sessions, replies,
/// messages), not for a DNS server's per-query path.
pub struct Labelled<const N: usize> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    values: Mutex<Vec<([String; N], i64)>>,
}

impl<const N: usize> Labelled<N> {
    /// A counter family: values only grow.
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> Self {
        Labelled {
            name,
            kind: "counter",
            help,
            labels,
            values: Mutex::new(Vec::new()),
        }
    }

    /// A gauge family: values go up and down.
    pub const fn gauge(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Labelled {
            name,
            kind: "gauge",
            help,
            labels,
            values: Mutex::new(Vec::new()),
        }
    }

    /// Adds `n` (negative for a gauge going down) to the value of these label values.
    pub fn add(&self, values: [&str; N], n: i64) {
        let mut all = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match all
            .iter_mut()
            .find(|(k, _)| k.iter().zip(values).all(|(a, b)| a == b))
        {
            Some((_, v)) => *v += n,
            None => all.push((values.map(str::to_string), n)),
        }
    }

    /// Adds one.
    pub fn inc(&self, values: [&str; N]) {
        self.add(values, 1);
    }

    /// The family in text format, its samples ordered by label values.
    pub fn render(&self, out: &mut String) {
        family(out, self.name, self.kind, self.help);
        let mut all = self
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        all.sort();
        for (values, n) in &all {
            let labels: Vec<(&str, &str)> = self
                .labels
                .iter()
                .zip(values)
                .map(|(l, v)| (*l, v.as_str()))
                .collect();
            sample(out, self.name, &labels, n);
        }
    }
}

/// A histogram of durations in seconds with fixed upper bounds.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    /// Observations per bucket (the last: above every bound), their sum and count.
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Histogram {
            name,
            help,
            bounds,
            state: Mutex::new((Vec::new(), 0.0, 0)),
        }
    }

    /// One observation.
    pub fn observe(&self, seconds: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0.is_empty() {
            s.0 = vec![0; self.bounds.len() + 1];
        }
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        s.0[i] += 1;
        s.1 += seconds;
        s.2 += 1;
    }

    /// The histogram in text format: cumulative buckets, `+Inf`, sum and count.
    pub fn render(&self, out: &mut String) {
        let (buckets, sum, count) = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        family(out, self.name, "histogram", self.help);
        let bucket = format!("{}_bucket", self.name);
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += buckets.get(i).copied().unwrap_or(0);
            sample(out, &bucket, &[("le", &bound.to_string())], cumulative);
        }
        sample(out, &bucket, &[("le", "+Inf")], count);
        sample(out, &format!("{}_sum", self.name), &[], sum);
        sample(out, &format!("{}_count", self.name), &[], count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\nw"), ("b", "")], 3);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",b=\"\"} 3\n");
    }

    #[test]
    fn labelled_values_add_up_per_label_set_in_order() {
        let c = Labelled::counter("mailsilo_t_total", "Test", ["server", "code"]);
        c.inc(["s2", "250"]);
        c.inc(["s1", "550"]);
        c.add(["s2", "250"], 2);
        let g = Labelled::gauge("mailsilo_t_open", "Open", ["server"]);
        g.add(["s1"], 2);
        g.add(["s1"], -1);
        let mut out = String::new();
        c.render(&mut out);
        g.render(&mut out);
        assert_eq!(
            out,
            "# HELP mailsilo_t_total Test\n# TYPE mailsilo_t_total counter\n\
             mailsilo_t_total{server=\"s1\",code=\"550\"} 1\n\
             mailsilo_t_total{server=\"s2\",code=\"250\"} 3\n\
             # HELP mailsilo_t_open Open\n# TYPE mailsilo_t_open gauge\n\
             mailsilo_t_open{server=\"s1\"} 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new("mailsilo_t_seconds", "Time", &[0.001, 0.01]);
        for s in [0.0005, 0.002, 0.003, 5.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains(
                "mailsilo_t_seconds_bucket{le=\"0.001\"} 1\n\
                 mailsilo_t_seconds_bucket{le=\"0.01\"} 3\n\
                 mailsilo_t_seconds_bucket{le=\"+Inf\"} 4\n\
                 mailsilo_t_seconds_sum 5.0055\n\
                 mailsilo_t_seconds_count 4\n"
            ),
            "{out}"
        );
    }
}
