//! Weighted least-connections, the balancer's second way of picking a server (the first,
//! smooth weighted round-robin, is shared with the DNS in the `health` crate). A pure
//! function over weights; a weight of 0 means "not eligible now" (down, draining, in
//! maintenance or at its maxconn).

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
