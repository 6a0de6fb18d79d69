//! Picking a server: smooth weighted round-robin (nginx's algorithm) and weighted
//! least-connections. Pure functions over weights; a weight of 0 means "not eligible now"
//! (down, draining, in maintenance or at its maxconn).

/// Smooth weighted round-robin state: one running "current weight" per server.
#[derive(Debug, Clone, Default)]
pub struct Swrr {
    current: Vec<i64>,
}

impl Swrr {
    /// Picks among servers with a positive weight; each pick adds every eligible server's
    /// weight to its current value, takes the largest, and subtracts the total from it. Over
    /// any run of sum(weights) picks each server is chosen weight times, spread evenly:
    /// {5,1,1} gives a a b a c a a.
    pub fn pick(&mut self, weights: &[i64]) -> Option<usize> {
        self.current.resize(weights.len(), 0);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w <= 0 {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// Weighted least-connections: the eligible server with the fewest active sessions per unit
/// of weight; ties go to the one after `last`, so equal servers take turns.
pub fn least_connections(weights: &[i64], active: &[usize], last: usize) -> Option<usize> {
    let n = weights.len();
    let mut best: Option<usize> = None;
    for k in 1..=n {
        let i = (last + k) % n;
        if weights[i] <= 0 {
            continue;
        }
        // active_i / w_i < active_b / w_b, compared without division.
        let better = best.is_none_or(|b| {
            (active[i] as i128) * (weights[b] as i128) < (active[b] as i128) * (weights[i] as i128)
        });
        if better {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nginx_sequence() {
        let mut s = Swrr::default();
        let picks: String = (0..7)
            .map(|_| (b'a' + s.pick(&[5, 1, 1]).unwrap() as u8) as char)
            .collect();
        assert_eq!(picks, "aabacaa");
        assert_eq!(Swrr::default().pick(&[0, 0]), None);
        let mut s = Swrr::default();
        let picks: Vec<usize> = (0..4).map(|_| s.pick(&[1, 0, 1]).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2], "weight 0 is skipped");
    }

    #[test]
    fn least_connections_weighs_activity() {
        assert_eq!(least_connections(&[1, 2], &[1, 1], 0), Some(1), "1/2 < 1/1");
        assert_eq!(least_connections(&[1, 2], &[1, 3], 0), Some(0), "1/1 < 3/2");
        assert_eq!(
            least_connections(&[1, 1, 1], &[0, 0, 0], 0),
            Some(1),
            "ties take turns"
        );
        assert_eq!(least_connections(&[0, 0], &[0, 0], 0), None);
    }

    proptest! {
        /// Over sum(weights) picks, each server is picked exactly its weight times, and the
        /// long-run share of each is weight/sum.
        #[test]
        fn swrr_long_run_ratios(weights in proptest::collection::vec(0i64..20, 1..8), rounds in 1usize..20) {
            let total: i64 = weights.iter().sum();
            prop_assume!(total > 0);
            let mut s = Swrr::default();
            let mut counts = vec![0i64; weights.len()];
            for _ in 0..(total as usize * rounds) {
                counts[s.pick(&weights).unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, w * rounds as i64);
            }
        }

        /// With weights changed midway, the picks after the change follow the new weights.
        #[test]
        fn swrr_follows_a_weight_change(before in proptest::collection::vec(1i64..10, 2..6), after in proptest::collection::vec(1i64..10, 2..6)) {
            prop_assume!(before.len() == after.len());
            let mut s = Swrr::default();
            for _ in 0..before.iter().sum::<i64>() * 3 {
                s.pick(&before);
            }
            let total: i64 = after.iter().sum();
            let mut counts = vec![0i64; after.len()];
            for _ in 0..total * 50 {
                counts[s.pick(&after).unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&after) {
                // Exact per cycle up to the carried-over state of one cycle.
                prop_assert!((c - w * 50).abs() <= total, "{counts:?} vs {after:?}");
            }
        }

        /// Least-connections never picks an ineligible server and always picks one if any is eligible.
        #[test]
        fn least_connections_picks_eligible(weights in proptest::collection::vec(0i64..5, 1..8), active in proptest::collection::vec(0usize..50, 8), last in 0usize..8) {
            let pick = least_connections(&weights, &active[..weights.len()], last);
            match pick {
                Some(i) => prop_assert!(weights[i] > 0),
                None => prop_assert!(weights.iter().all(|&w| w <= 0)),
            }
        }
    }
}
