//! Server-side partition assignors for consumer groups.
//!
//! Under KIP-848 the group coordinator, not an elected client leader, computes each group's
//! target assignment. Members never have to agree on an assignor or swap metadata: each one
//! sends its subscription, and the coordinator moves partitions incrementally (a partition
//! is revoked from its old owner before its new owner gets it), so a rebalance no longer
//! stops the whole group. The assignor is therefore a pure function of the group's state:
//! same input, same output, no I/O.
//!
//! - [`Assignor::Range`] (Kafka's `RangeAssignor`): per topic, the subscribers sorted by
//!   member id get contiguous ranges of partitions, the first `n % m` of them one extra.
//!   Co-partitioned topics land on the same members. It ignores the current assignment.
//! - [`Assignor::Uniform`] (Kafka's `UniformAssignor`): balance first, stickiness second.
//!   With identical subscriptions every member gets `floor(P/M)` or `ceil(P/M)` partitions,
//!   exactly `P % M` of them the ceiling, and keeps as much of its current assignment as
//!   that allows. With differing subscriptions it guarantees that no single move helps: if a
//!   member holds `n` partitions, every subscriber of a topic it holds a partition of holds
//!   at least `n - 1`. In both cases a valid partition moves only when balance requires it,
//!   and feeding the result back as `current` changes nothing.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

/// Which assignor a group uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Balanced and sticky; the default, as in KIP-848.
    #[default]
    Uniform,
    /// Contiguous ranges per topic, for consumers that join co-partitioned topics.
    Range,
}

impl Assignor {
    /// Parses "uniform" / "range" (the names clients send); None otherwise.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Uniform, Self::Range]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// The name clients send, so a group's assignor can be reported back as configured.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Range => "range",
        }
    }
}

/// One member as the assignor sees it.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub member_id: String,
    pub topics: BTreeSet<String>,
    /// The member's current assignment (what the coordinator last gave it): the uniform
    /// assignor keeps as much of it as balance allows.
    pub current: BTreeSet<TopicPartition>,
}

/// Partition count of every existing topic.
type Counts = BTreeMap<String, u32>;

/// One set of partitions per member, indexed like the member slice sorted by id.
type Holdings = Vec<BTreeSet<TopicPartition>>;

/// Member indices subscribed to each existing topic, in member-id order.
type Subscribers<'a> = BTreeMap<&'a str, Vec<usize>>;

impl TopicPartition {
    fn new(topic: &str, partition: u32) -> Self {
        let topic = topic.to_owned();
        Self { topic, partition }
    }
}

/// Computes the target assignment: every partition of every subscribed topic (topics
/// absent from `partitions_per_topic` do not exist and are skipped) goes to exactly one
/// member subscribed to its topic. Every member appears in the result (possibly with an
/// empty set). Deterministic: same input, same output (iterate BTreeMaps, sort by member id).
///
/// Member ids are expected to be unique; if one repeats, its first spec wins so that no
/// partition is handed to an entry the result map would then overwrite.
pub fn assign(
    assignor: Assignor,
    members: &[MemberSpec],
    partitions_per_topic: &BTreeMap<String, u32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let members = sorted_members(members);
    let held = match assignor {
        Assignor::Range => assign_range(&members, partitions_per_topic),
        Assignor::Uniform => assign_uniform(&members, partitions_per_topic),
    };
    let ids = members.iter().map(|member| member.member_id.clone());
    ids.zip(held).collect()
}

/// Sorts by member id and drops repeated ids, so an index means the same member everywhere.
fn sorted_members(members: &[MemberSpec]) -> Vec<&MemberSpec> {
    let mut by_id: BTreeMap<&str, &MemberSpec> = BTreeMap::new();
    for member in members {
        by_id.entry(member.member_id.as_str()).or_insert(member);
    }
    by_id.into_values().collect()
}

fn subscribers_of(members: &[&MemberSpec], topic: &str) -> Vec<usize> {
    let subscribed = |i: &usize| members[*i].topics.contains(topic);
    (0..members.len()).filter(subscribed).collect()
}

/// Kafka's range assignment: it ignores `current`, because its point is that partition `k`
/// of co-partitioned topics always lands on the same member.
fn assign_range(members: &[&MemberSpec], counts: &Counts) -> Holdings {
    let mut held: Holdings = vec![BTreeSet::new(); members.len()];
    for (topic, &count) in counts {
        let subscribers = subscribers_of(members, topic);
        if subscribers.is_empty() {
            continue;
        }
        let partitions: Vec<u32> = (0..count).collect();
        let base = partitions.len() / subscribers.len();
        let extra = partitions.len() % subscribers.len();
        let mut rest = partitions.as_slice();
        for (rank, &member) in subscribers.iter().enumerate() {
            let len = base + usize::from(rank < extra);
            let (mine, tail) = rest.split_at(len.min(rest.len()));
            held[member].extend(mine.iter().map(|&p| TopicPartition::new(topic, p)));
            rest = tail;
        }
    }
    held
}

/// Picks the exact-quota algorithm when everyone can take every partition, since only then
/// can `floor`/`ceil` balance be promised; otherwise falls back to greedy plus local moves.
fn assign_uniform(members: &[&MemberSpec], counts: &Counts) -> Holdings {
    if members.is_empty() {
        return Vec::new();
    }
    let partitions = subscribed_partitions(members, counts);
    if has_identical_subscriptions(members, counts) {
        assign_uniform_homogeneous(members, counts, &partitions)
    } else {
        assign_uniform_heterogeneous(members, counts, &partitions)
    }
}

/// Every partition of every existing topic someone subscribes to, in (topic, partition) order.
fn subscribed_partitions(members: &[&MemberSpec], counts: &Counts) -> Vec<TopicPartition> {
    let mut partitions = Vec::new();
    for (topic, &count) in counts {
        if members.iter().any(|m| m.topics.contains(topic)) {
            partitions.extend((0..count).map(|p| TopicPartition::new(topic, p)));
        }
    }
    partitions
}

/// Compares subscriptions restricted to existing topics: a member already subscribed to a
/// topic that is not created yet should not knock the group off the exactly balanced path.
fn has_identical_subscriptions(members: &[&MemberSpec], counts: &Counts) -> bool {
    let exists = |topic: &&String| counts.contains_key(*topic);
    members.windows(2).all(|pair| {
        let (a, b) = (&pair[0].topics, &pair[1].topics);
        a.iter().filter(exists).eq(b.iter().filter(exists))
    })
}

/// Whether `member` may keep `tp`: the partition still exists and the member still wants it.
fn may_hold(member: &MemberSpec, tp: &TopicPartition, counts: &Counts) -> bool {
    let exists = counts.get(&tp.topic).is_some_and(|&n| tp.partition < n);
    exists && member.topics.contains(&tp.topic)
}

/// Keeps, member by member in id order, the valid partitions of its current assignment that
/// no earlier member kept, lowest first and at most `quota(number keepable)` of them, and
/// returns the holdings with the `partitions` nobody kept. The id order settles a partition
/// two members both claim (possible after a coordinator failover) the same way every time.
fn keep_current(
    members: &[&MemberSpec],
    counts: &Counts,
    partitions: &[TopicPartition],
    mut quota: impl FnMut(usize) -> usize,
) -> (Holdings, Vec<TopicPartition>) {
    let mut claimed: BTreeSet<&TopicPartition> = BTreeSet::new();
    let mut held: Holdings = Vec::with_capacity(members.len());
    for &member in members {
        let keepable = member.current.iter();
        let keepable = keepable.filter(|tp| !claimed.contains(*tp) && may_hold(member, tp, counts));
        let keepable: Vec<&TopicPartition> = keepable.collect();
        let limit = quota(keepable.len());
        let kept: Vec<&TopicPartition> = keepable.into_iter().take(limit).collect();
        claimed.extend(kept.iter().copied());
        held.push(kept.into_iter().cloned().collect());
    }
    let leftovers = partitions.iter().filter(|tp| !claimed.contains(tp));
    (held, leftovers.cloned().collect())
}

/// Identical subscriptions: each member may keep `floor(P/M)` of its current partitions, and
/// the first `P % M` members (in id order) that hold more may keep one extra. Leftovers go to
/// the emptiest members; since quotas add up to `P`, nobody ends above `ceil(P/M)` and only
/// `P % M` members reach it.
fn assign_uniform_homogeneous(
    members: &[&MemberSpec],
    counts: &Counts,
    partitions: &[TopicPartition],
) -> Holdings {
    let base = partitions.len() / members.len();
    let mut extras = partitions.len() % members.len();
    let (mut held, leftovers) = keep_current(members, counts, partitions, |keepable| {
        if keepable > base && extras > 0 {
            extras -= 1;
            base + 1
        } else {
            base
        }
    });
    for tp in leftovers {
        let receiver = held
            .iter()
            .enumerate()
            .filter(|(_, set)| set.len() < base || (set.len() == base && extras > 0))
            .min_by_key(|&(i, set)| (set.len(), i))
            .map(|(i, _)| i)
            .expect("quotas add up to the partition count, so some member is below quota");
        if held[receiver].len() == base {
            extras -= 1;
        }
        held[receiver].insert(tp);
    }
    held
}

/// Differing subscriptions: exact quotas may be unreachable, so every valid current partition
/// is kept, leftovers go to the least loaded subscriber, and then partitions move one at a
/// time while a move narrows a gap of two or more between subscribers of the same topic.
fn assign_uniform_heterogeneous(
    members: &[&MemberSpec],
    counts: &Counts,
    partitions: &[TopicPartition],
) -> Holdings {
    let subscribers: Subscribers<'_> = counts
        .keys()
        .map(|t| (t.as_str(), subscribers_of(members, t)))
        .collect();
    let (mut held, leftovers) = keep_current(members, counts, partitions, |_| usize::MAX);
    for tp in leftovers {
        if let Some(receiver) = least_loaded(&held, eligible(&subscribers, &tp.topic)) {
            held[receiver].insert(tp);
        }
    }
    while rebalance_pass(&mut held, &subscribers) {}
    held
}

fn eligible<'s>(subscribers: &'s Subscribers<'_>, topic: &str) -> &'s [usize] {
    subscribers.get(topic).map_or(&[][..], Vec::as_slice)
}

/// The candidate holding the fewest partitions; ties go to the lowest member id.
fn least_loaded(held: &[BTreeSet<TopicPartition>], candidates: &[usize]) -> Option<usize> {
    let load = |&i: &usize| (held[i].len(), i);
    candidates.iter().copied().min_by_key(load)
}

/// Moves each partition whose owner holds at least two more than the least loaded subscriber
/// of its topic, and reports whether anything moved. Each move lowers the sum of squared
/// loads, so repeating passes ends; once a pass moves nothing, no single move helps.
fn rebalance_pass(held: &mut [BTreeSet<TopicPartition>], subscribers: &Subscribers<'_>) -> bool {
    let mut owned: Vec<(usize, TopicPartition)> = Vec::new();
    for (donor, set) in held.iter().enumerate() {
        owned.extend(set.iter().map(|tp| (donor, tp.clone())));
    }
    let mut moved = false;
    for (donor, tp) in owned {
        let Some(receiver) = least_loaded(held, eligible(subscribers, &tp.topic)) else {
            continue;
        };
        if held[receiver].len() + 1 < held[donor].len() {
            held[donor].remove(&tp);
            held[receiver].insert(tp);
            moved = true;
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::Assignor::{Range, Uniform};
    use super::*;

    type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

    fn set(parts: &[(&str, u32)]) -> BTreeSet<TopicPartition> {
        let tp = |&(topic, p): &(&str, u32)| TopicPartition::new(topic, p);
        parts.iter().map(tp).collect()
    }

    fn member(id: &str, topics: &[&str], current: &[(&str, u32)]) -> MemberSpec {
        let member_id = id.to_owned();
        let topics = topics.iter().map(|&t| t.to_owned()).collect();
        MemberSpec {
            member_id,
            topics,
            current: set(current),
        }
    }

    fn counts(counts: &[(&str, u32)]) -> Counts {
        counts.iter().map(|&(t, n)| (t.to_owned(), n)).collect()
    }

    #[test]
    fn assignor_names_round_trip_and_unknown_names_are_rejected() {
        for assignor in [Uniform, Range] {
            assert_eq!(Assignor::from_name(assignor.name()), Some(assignor));
        }
        assert_eq!(Assignor::from_name("cooperative-sticky"), None);
    }

    #[test]
    fn range_gives_the_first_member_the_extra_partition_and_skips_non_subscribers() {
        let on_t = |id| member(id, &["t"], &[]);
        let members = [on_t("b"), member("c", &["o"], &[]), on_t("a")];
        let result = assign(Range, &members, &counts(&[("t", 5), ("o", 2)]));
        assert_eq!(result["a"], set(&[("t", 0), ("t", 1), ("t", 2)]));
        assert_eq!(result["b"], set(&[("t", 3), ("t", 4)]));
        assert_eq!(result["c"], set(&[("o", 0), ("o", 1)]));
    }

    #[test]
    fn uniform_splits_four_partitions_two_and_two_assigning_each_once() {
        let members = [member("a", &["t"], &[]), member("b", &["t"], &[])];
        let result = assign(Uniform, &members, &counts(&[("t", 4)]));
        assert_eq!((result["a"].len(), result["b"].len()), (2, 2));
        let all: BTreeSet<&TopicPartition> = result.values().flatten().collect();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn given_two_members_holding_two_each_when_a_third_joins_then_exactly_one_partition_moves() {
        let a = member("a", &["t"], &[("t", 0), ("t", 1)]);
        let b = member("b", &["t"], &[("t", 2), ("t", 3)]);
        let members = [a, b, member("c", &["t"], &[])];
        let result = assign(Uniform, &members, &counts(&[("t", 4)]));
        let lost = |m: &MemberSpec| m.current.difference(&result[&m.member_id]).count();
        assert_eq!(members.iter().map(lost).sum::<usize>(), 1);
        assert!(result["a"].is_subset(&members[0].current));
        assert!(result["b"].is_subset(&members[1].current));
        let sizes = [&result["a"], &result["b"], &result["c"]].map(BTreeSet::len);
        assert!(sizes == [2, 1, 1] || sizes == [1, 2, 1], "sizes {sizes:?}");
    }

    #[test]
    fn given_three_members_when_one_leaves_then_only_its_partitions_move() {
        let a = member("a", &["t"], &[("t", 0), ("t", 1)]);
        let b = member("b", &["t"], &[("t", 2), ("t", 3)]);
        let result = assign(Uniform, &[a.clone(), b.clone()], &counts(&[("t", 6)]));
        assert!(result["a"].is_superset(&a.current));
        assert!(result["b"].is_superset(&b.current));
        assert_eq!((result["a"].len(), result["b"].len()), (3, 3));
    }

    #[test]
    fn uniform_skips_unsubscribed_topics_and_drops_stale_current_partitions() {
        let stale = [("t", 0), ("t", 7), ("gone", 0), ("orphan", 1)];
        let a = member("a", &["t"], &stale);
        let members = [a, member("b", &["t"], &[])];
        let result = assign(Uniform, &members, &counts(&[("t", 2), ("orphan", 3)]));
        assert_eq!(result["a"], set(&[("t", 0)]));
        assert_eq!(result["b"], set(&[("t", 1)]));
    }

    #[test]
    fn given_mixed_subscriptions_when_one_member_holds_everything_then_shared_partitions_move() {
        let a = member("a", &["x", "y"], &[("x", 0), ("x", 1), ("y", 0), ("y", 1)]);
        let members = [a, member("b", &["y"], &[])];
        let result = assign(Uniform, &members, &counts(&[("x", 2), ("y", 2)]));
        assert_eq!(result["a"], set(&[("x", 0), ("x", 1)]));
        assert_eq!(result["b"], set(&[("y", 0), ("y", 1)]));
    }

    /// Knuth's MMIX LCG: no crates needed, and a case number replays the same input.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u32) -> u32 {
            let next = self.0.wrapping_mul(6_364_136_223_846_793_005);
            self.0 = next.wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % u64::from(bound.max(1))) as u32
        }

        fn one_in(&mut self, odds: u32) -> bool {
            self.below(odds) == 0
        }
    }

    /// Members may subscribe to and hold `t{last}`, a topic that does not exist, and hold
    /// partitions beyond the counts, so stale input is exercised too.
    fn random_case(rng: &mut Lcg) -> (Vec<MemberSpec>, Counts) {
        let existing = 1 + rng.below(3) as usize;
        let names: Vec<String> = (0..=existing).map(|t| format!("t{t}")).collect();
        let counts = names[..existing].iter().map(|n| (n.clone(), rng.below(10)));
        let counts = counts.collect();
        let identical = rng.one_in(3);
        let shared: BTreeSet<String> = names.iter().filter(|_| rng.one_in(2)).cloned().collect();
        let mut members = Vec::new();
        for i in 0..1 + rng.below(5) {
            let topics = if identical {
                shared.clone()
            } else {
                names.iter().filter(|_| rng.one_in(2)).cloned().collect()
            };
            let mut current = BTreeSet::new();
            for _ in 0..rng.below(6) {
                let topic = &names[rng.below(names.len() as u32) as usize];
                current.insert(TopicPartition::new(topic, rng.below(12)));
            }
            members.push(MemberSpec {
                member_id: format!("m{i}"),
                topics,
                current,
            });
        }
        (members, counts)
    }

    /// Every partition of a subscribed topic is assigned exactly once, only to a subscriber.
    fn check_coverage(case: u32, members: &[MemberSpec], counts: &Counts, result: &Assignment) {
        assert_eq!(result.len(), members.len(), "case {case}");
        let mut seen: BTreeSet<&TopicPartition> = BTreeSet::new();
        for member in members {
            for tp in &result[&member.member_id] {
                assert!(may_hold(member, tp, counts), "case {case}: {tp:?}");
                assert!(seen.insert(tp), "case {case}: {tp:?} assigned twice");
            }
        }
        for (topic, &count) in counts {
            let subscribed = members.iter().any(|m| m.topics.contains(topic));
            for p in 0..count {
                let assigned = seen.contains(&TopicPartition::new(topic, p));
                assert_eq!(assigned, subscribed, "case {case}: {topic}-{p}");
            }
        }
    }

    /// No single move helps; with equal subscriptions, sizes differ by at most one.
    fn check_balance(case: u32, members: &[MemberSpec], result: &Assignment) {
        for member in members {
            let held = result[&member.member_id].len();
            for tp in &result[&member.member_id] {
                for other in members.iter().filter(|m| m.topics.contains(&tp.topic)) {
                    let fewer = result[&other.member_id].len() + 1 < held;
                    assert!(!fewer, "case {case}: moving {tp:?} would help");
                }
            }
        }
        if members.windows(2).all(|w| w[0].topics == w[1].topics) {
            let max = result.values().map(BTreeSet::len).max().unwrap_or(0);
            let min = result.values().map(BTreeSet::len).min().unwrap_or(0);
            assert!(max - min <= 1, "case {case}: sizes {min}..{max}");
        }
    }

    #[test]
    fn random_groups_get_complete_balanced_and_stable_assignments() {
        let mut rng = Lcg(0x5EED);
        for case in 0..200 {
            let (members, counts) = random_case(&mut rng);
            check_coverage(case, &members, &counts, &assign(Range, &members, &counts));

            let uniform = assign(Uniform, &members, &counts);
            check_coverage(case, &members, &counts, &uniform);
            check_balance(case, &members, &uniform);

            let mut again = members.clone();
            for member in &mut again {
                member.current = uniform[&member.member_id].clone();
            }
            let rerun = assign(Uniform, &again, &counts);
            assert_eq!(rerun, uniform, "case {case}: not a fixed point");
        }
    }
}
