//! The cleaner's key -> latest offset map, bounded by a byte budget (Kafka's
//! `log.cleaner.dedupe.buffer.size`).
//!
//! Keys are stored as 16-byte digests, as Kafka stores MD5s: a map entry costs the same
//! whatever the key's length, so the budget says how many keys fit. Two keys collide with
//! probability about n²/2¹²⁹ for n keys, which for a billion keys is below 10⁻²¹; a
//! collision would drop the older key's latest value, the same trade Kafka makes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// What one entry costs in memory: the digest and offset (24 bytes) plus the hash table's
/// control byte and spare capacity at its 7/8 load factor, rounded up.
pub(crate) const OFFSET_MAP_ENTRY_BYTES: usize = 32;

/// A 128-bit digest of a record key: two SipHash-1-3 runs with different prefixes.
pub(crate) type KeyDigest = [u8; 16];

pub(crate) fn digest(key: &[u8]) -> KeyDigest {
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish().to_le_bytes()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(0x5a));
    out[8..].copy_from_slice(&half(0xa5));
    out
}

/// Hashes a digest by taking its first 8 bytes: they are already uniformly distributed.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

/// Key digest -> offset of the latest record with that key, in the mapped range.
pub(crate) struct OffsetMap {
    entries: HashMap<KeyDigest, i64, BuildHasherDefault<DigestHasher>>,
    max_entries: usize,
}

impl OffsetMap {
    /// A map that holds at most `budget_bytes / OFFSET_MAP_ENTRY_BYTES` keys (at least one).
    pub(crate) fn with_budget(budget_bytes: usize) -> Self {
        OffsetMap {
            entries: HashMap::default(),
            max_entries: (budget_bytes / OFFSET_MAP_ENTRY_BYTES).max(1),
        }
    }

    /// Whether `more` new keys are sure to fit.
    pub(crate) fn has_room_for(&self, more: usize) -> bool {
        self.entries.len().saturating_add(more) <= self.max_entries
    }

    /// Records `offset` as the latest of `key`; offsets are inserted in ascending order.
    pub(crate) fn put(&mut self, key: &[u8], offset: i64) {
        self.entries.insert(digest(key), offset);
    }

    /// The latest offset of `key` in the mapped range.
    pub(crate) fn latest(&self, key: &[u8]) -> Option<i64> {
        self.entries.get(&digest(key)).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_offset_wins_and_the_budget_bounds_the_keys() {
        let mut map = OffsetMap::with_budget(4 * OFFSET_MAP_ENTRY_BYTES);
        map.put(b"a", 1);
        map.put(b"b", 2);
        map.put(b"a", 7);
        assert_eq!(map.latest(b"a"), Some(7));
        assert_eq!(map.latest(b"b"), Some(2));
        assert_eq!(map.latest(b"c"), None);
        assert!(map.has_room_for(2));
        assert!(!map.has_room_for(3));
        assert_eq!(map.len(), 2);
        assert_ne!(digest(b"a"), digest(b"b"));
        assert_eq!(digest(b"key"), digest(b"key"));
    }
}
