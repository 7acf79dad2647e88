//! Identifier newtypes, so a broker id is never mistaken for a partition index.

use std::fmt;

/// A broker's (node's) id, unique within a cluster; `--node-id` sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerId(pub i32);

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partition's index within its topic, `0..partition_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A fresh 128-bit id in hex (cluster ids, topic ids), from the thread-local CSPRNG.
pub fn random_id() -> String {
    format!("{:032x}", rand08::random::<u128>())
}

/// A fresh random process incarnation: a broker registers with one per start, so the
/// controller tells a restart from a second process that claims the same broker id.
pub fn new_incarnation_id() -> u64 {
    rand08::random::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(new_incarnation_id(), new_incarnation_id());
    }
}
