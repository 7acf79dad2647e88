//! Where a follower's log stops agreeing with the leader's (KIP-101, with KIP-320's
//! diverging epoch in the fetch answer): the follower truncates to the end offset of the
//! last epoch it shares with the leader, so no suffix the leader lacks survives.

use ferrolog_log::{LeaderEpoch, Log, Offset};

/// Where a follower's log stops agreeing with `log` (the leader's), given where it ends and
/// the epoch of its last batch: `None` when it agrees, else the epoch to truncate in and
/// where the leader's copy of it ends (`-1` and the leader's log start: start over).
pub(super) fn divergence(
    log: &Log,
    fetch_offset: Offset,
    last_fetched_epoch: i32,
    leader_end: Offset,
) -> Option<(i32, Offset)> {
    // An empty follower log (at 0, or restarted at our log start) agrees with anything.
    if fetch_offset == Offset(0)
        || (last_fetched_epoch < 0 && fetch_offset == log.log_start_offset())
    {
        return None;
    }
    if last_fetched_epoch < 0 {
        // Batches without an epoch cannot be checked; be safe and start over from ours.
        return Some((-1, log.log_start_offset()));
    }
    match log.end_offset_for_epoch(LeaderEpoch(last_fetched_epoch)) {
        Some((epoch, end)) if epoch.0 == last_fetched_epoch && fetch_offset <= end => None,
        Some((epoch, end)) => Some((epoch.0, end.min(leader_end))),
        None => Some((-1, log.log_start_offset())),
    }
}

#[cfg(test)]
mod tests {
    use ferrolog_log::{LogConfig, RecordBatchBuilder};
    use tempfile::TempDir;

    use super::*;

    /// A log in its own temp dir, holding one batch per `(epoch, record count)`, in order.
    fn log_of(batches: &[(i32, usize)]) -> (TempDir, Log) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Log::open(dir.path(), LogConfig::default()).expect("open the log");
        append(&mut log, batches);
        (dir, log)
    }

    fn append(log: &mut Log, batches: &[(i32, usize)]) {
        for &(epoch, records) in batches {
            let mut builder = RecordBatchBuilder::new(0);
            for _ in 0..records {
                builder.push(0, None, Some(b"record"), &[]);
            }
            log.append_batch(&mut builder.build(), LeaderEpoch(epoch), 0)
                .expect("append");
        }
    }

    /// What the leader answers a fetch from `follower`: it asks at its log end, with the
    /// epoch of its last batch (as `Partition::follower_position` reports them).
    fn answer(leader: &Log, follower: &Log) -> Option<(i32, Offset)> {
        let last_epoch = follower.last_batch_epoch().map_or(-1, |e| e.0);
        divergence(
            leader,
            follower.log_end_offset(),
            last_epoch,
            leader.log_end_offset(),
        )
    }

    /// Fetches as a follower does until the leader has no divergence to report, truncating
    /// as the fetcher does (never below where its own log says the epoch ends), and returns
    /// where the follower's log then ends.
    fn truncate_until_agreed(leader: &Log, follower: &mut Log) -> Offset {
        // Each answer names an earlier epoch: a handful of rounds is always enough.
        for _ in 0..8 {
            let Some((epoch, leader_end_of_epoch)) = answer(leader, follower) else {
                return follower.log_end_offset();
            };
            let own_end = if epoch < 0 {
                follower.log_start_offset()
            } else {
                follower
                    .end_offset_for_epoch(LeaderEpoch(epoch))
                    .map_or(leader_end_of_epoch, |(_, end)| end)
            };
            follower
                .truncate_to(leader_end_of_epoch.min(own_end))
                .expect("truncate");
        }
        panic!("the follower still diverges after 8 truncations");
    }

    #[test]
    fn a_follower_sharing_the_leaders_epoch_history_agrees() {
        let (_leader_dir, leader) = log_of(&[(1, 10), (3, 10)]);
        for follower_batches in [
            &[(1, 10), (3, 10)][..],
            &[(1, 10), (3, 5)],
            &[(1, 10)],
            &[(1, 5)],
        ] {
            let (_dir, follower) = log_of(follower_batches);
            assert_eq!(answer(&leader, &follower), None, "{follower_batches:?}");
        }
    }

    #[test]
    fn a_follower_ahead_in_a_diverged_epoch_truncates_to_where_the_leader_ended_it() {
        // The follower led epoch 1 and appended 4 records no one else got; the leader of
        // epoch 3 had only the first 10.
        let (_leader_dir, leader) = log_of(&[(1, 10), (3, 5)]);
        let (_follower_dir, mut follower) = log_of(&[(1, 10), (1, 4)]);
        assert_eq!(answer(&leader, &follower), Some((1, Offset(10))));
        assert_eq!(truncate_until_agreed(&leader, &mut follower), Offset(10));
    }

    #[test]
    fn a_follower_ahead_in_the_current_epoch_truncates_to_the_leaders_log_end() {
        let (_leader_dir, leader) = log_of(&[(1, 10), (3, 5)]);
        assert_eq!(
            divergence(&leader, Offset(18), 3, leader.log_end_offset()),
            Some((3, Offset(15)))
        );
    }

    #[test]
    fn a_follower_with_an_epoch_the_leader_never_had_truncates_to_the_last_shared_epoch() {
        // Epoch 2's leader wrote only to its own log before epoch 3's took over.
        let (_leader_dir, leader) = log_of(&[(1, 10), (3, 10)]);
        let (_follower_dir, mut follower) = log_of(&[(1, 10), (2, 4)]);
        assert_eq!(answer(&leader, &follower), Some((1, Offset(10))));
        assert_eq!(truncate_until_agreed(&leader, &mut follower), Offset(10));

        // Its own log ending epoch 1 earlier than the leader's, it truncates to its own end.
        let (_follower_dir, mut follower) = log_of(&[(1, 8), (2, 4)]);
        assert_eq!(answer(&leader, &follower), Some((1, Offset(10))));
        assert_eq!(truncate_until_agreed(&leader, &mut follower), Offset(8));
    }

    #[test]
    fn a_follower_with_an_epoch_newer_than_the_leaders_starts_over() {
        let (_leader_dir, leader) = log_of(&[(1, 10), (3, 10)]);
        let (_follower_dir, mut follower) = log_of(&[(1, 10), (5, 4)]);
        assert_eq!(answer(&leader, &follower), Some((-1, Offset(0))));
        assert_eq!(truncate_until_agreed(&leader, &mut follower), Offset(0));
    }

    #[test]
    fn an_empty_follower_agrees_with_any_leader() {
        let (_follower_dir, follower) = log_of(&[]);
        for leader_batches in [&[][..], &[(1, 10), (3, 10)]] {
            let (_dir, leader) = log_of(leader_batches);
            assert_eq!(answer(&leader, &follower), None, "{leader_batches:?}");
        }
    }

    #[test]
    fn a_follower_with_records_and_an_empty_leader_starts_over() {
        let (_leader_dir, leader) = log_of(&[]);
        let (_follower_dir, mut follower) = log_of(&[(1, 10)]);
        assert_eq!(answer(&leader, &follower), Some((-1, Offset(0))));
        assert_eq!(truncate_until_agreed(&leader, &mut follower), Offset(0));
    }

    /// A leader whose retention moved its log start to 100, holding epoch 2 from there.
    fn leader_starting_at_100() -> (TempDir, Log) {
        let (dir, mut leader) = log_of(&[]);
        leader
            .truncate_fully_and_start_at(Offset(100))
            .expect("restart the log");
        append(&mut leader, &[(2, 10)]);
        (dir, leader)
    }

    #[test]
    fn a_follower_restarted_at_the_leaders_log_start_agrees() {
        let (_leader_dir, leader) = leader_starting_at_100();
        let end = leader.log_end_offset();
        assert_eq!(divergence(&leader, Offset(100), -1, end), None);
    }

    #[test]
    fn a_follower_without_epochs_elsewhere_starts_over_at_the_leaders_log_start() {
        let (_leader_dir, leader) = leader_starting_at_100();
        let end = leader.log_end_offset();
        assert_eq!(
            divergence(&leader, Offset(50), -1, end),
            Some((-1, Offset(100)))
        );
        assert_eq!(
            divergence(&leader, Offset(105), -1, end),
            Some((-1, Offset(100)))
        );
    }
}
