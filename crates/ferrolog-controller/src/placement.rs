//! Replica placement: Kafka's rack-unaware assignment, which spreads both replicas and
//! preferred leaders (the first replica) evenly over the brokers.

use ferrolog_metadata::BrokerId;

/// Returns, for each partition, its replica list (preferred leader first). `brokers` must
/// be non-empty and `replication_factor <= brokers.len()`; `start` rotates the layout so
/// topics created one after another do not all put partition 0 on the same broker.
pub fn assign_replicas(
    brokers: &[BrokerId],
    partitions: u32,
    replication_factor: u32,
    start: usize,
) -> Vec<Vec<BrokerId>> {
    let n = brokers.len();
    assert!(
        n > 0 && replication_factor as usize <= n,
        "validated by the caller"
    );
    (0..partitions as usize)
        .map(|p| {
            let first = (start + p) % n;
            // Kafka shifts followers by a per-wrap offset so replica sets differ between
            // partitions that share a leader; `1 + x % (n - 1)` never lands on the leader.
            let shift = p / n;
            (0..replication_factor as usize)
                .map(|r| {
                    if r == 0 {
                        brokers[first]
                    } else {
                        brokers[(first + 1 + (shift + r - 1) % (n - 1)) % n]
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn leaders_are_spread_evenly_and_replicas_are_distinct() {
        let brokers: Vec<BrokerId> = (1..=3).map(BrokerId).collect();
        let layout = assign_replicas(&brokers, 6, 3, 0);
        let mut leaders: BTreeMap<BrokerId, usize> = BTreeMap::new();
        for replicas in &layout {
            assert_eq!(
                replicas.iter().collect::<BTreeSet<_>>().len(),
                3,
                "{replicas:?}"
            );
            *leaders.entry(replicas[0]).or_default() += 1;
        }
        assert!(leaders.values().all(|&n| n == 2), "{leaders:?}");
    }

    #[test]
    fn single_broker_gets_every_replica() {
        let layout = assign_replicas(&[BrokerId(1)], 3, 1, 5);
        assert_eq!(layout, vec![vec![BrokerId(1)]; 3]);
    }
}
