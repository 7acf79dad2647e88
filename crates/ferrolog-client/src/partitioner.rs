//! Kafka's default partitioner, bit for bit, so a key lands on the partition a Kafka client
//! would choose: murmur2 of the key bytes, made positive, modulo the partition count. Keyless
//! records use the sticky partitioner of KIP-480.

use rand::Rng;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, reading the input as
/// little-endian 4-byte words.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Kafka computes with Java `int`s; the length wraps the same way for > 2 GiB inputs.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for `key`.
///
/// # Panics
/// Panics if `partition_count` is 0; a topic always has at least one partition.
pub fn partition_for_key(key: &[u8], partition_count: u32) -> u32 {
    assert!(partition_count > 0, "a topic has at least one partition");
    (to_positive(murmur2(key)) as u32) % partition_count
}

/// The sticky partition of one topic for keyless records (KIP-480).
///
/// Keyless records all go to one partition until a batch for it is completed, then the
/// partitioner moves to another random partition. Compared with round-robin per record, this
/// fills fewer, larger batches, which lowers latency and raises throughput.
#[derive(Debug, Default, Clone)]
pub(crate) struct StickyPartitioner {
    current: Option<u32>,
}

impl StickyPartitioner {
    /// The partition for the next keyless record, choosing one at random on first use.
    pub(crate) fn partition(&mut self, partition_count: u32, rng: &mut impl Rng) -> u32 {
        match self.current {
            Some(p) if p < partition_count => p,
            _ => {
                let p = rng.random_range(0..partition_count);
                self.current = Some(p);
                p
            }
        }
    }

    /// Called when a keyless record for `previous` would have to start a new batch there:
    /// switches to a different random partition (when there is more than one) and returns it,
    /// as Kafka's `StickyPartitionCache.nextPartition` does.
    pub(crate) fn on_new_batch(
        &mut self,
        previous: u32,
        partition_count: u32,
        rng: &mut impl Rng,
    ) -> u32 {
        if self.current.is_some_and(|p| p != previous) {
            // Another record already moved the sticky partition on.
            return self.partition(partition_count, rng);
        }
        let next = if partition_count <= 1 {
            0
        } else {
            // Any partition but `previous`, uniformly.
            let candidate = rng.random_range(0..partition_count - 1);
            if candidate >= previous {
                candidate + 1
            } else {
                candidate
            }
        };
        self.current = Some(next);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
        // (testMurmur2).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107), // Kafka passes this one as a byte array.
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn murmur2_matches_values_generated_by_kafkas_java_implementation() {
        // Generated with Kafka's Utils.murmur2 by KafkaJS (partitioners/defaultJava) and Akka
        // (Murmur2Spec); they exercise every tail length.
        let cases: [(&str, i32); 12] = [
            ("0", 971_027_396),
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
            ("128", -326_012_175),
            ("2187", -1_508_407_203),
            ("16384", -325_739_742),
            ("279936", 1_462_227_128),
            ("170859375", -1_658_323_481),
            ("100:48069", 1_009_543_857),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn partition_for_key_matches_kafkas_default_partitioner() {
        // kafka-python's test_murmur2_java_compatibility, checked against Kafka's Java
        // partitioner with 1000 partitions.
        let cases: [(&[u8], u32); 6] = [
            (b"", 681),
            (b"a", 524),
            (b"ab", 434),
            (b"abc", 107),
            (b"123456789", 566),
            (b"\x00 ", 742),
        ];
        for (key, expected) in cases {
            assert_eq!(partition_for_key(key, 1000), expected, "key {key:?}");
        }
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(42), 42);
    }

    #[test]
    fn sticky_partition_stays_until_a_new_batch_then_moves_elsewhere() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut sticky = StickyPartitioner::default();
        let first = sticky.partition(8, &mut rng);
        for _ in 0..100 {
            assert_eq!(sticky.partition(8, &mut rng), first);
        }
        for _ in 0..100 {
            let previous = sticky.partition(8, &mut rng);
            let next = sticky.on_new_batch(previous, 8, &mut rng);
            assert_ne!(next, previous, "a new batch must move the sticky partition");
            assert!(next < 8);
            assert_eq!(sticky.partition(8, &mut rng), next);
        }
    }

    #[test]
    fn sticky_partition_visits_every_partition_over_time() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut sticky = StickyPartitioner::default();
        let mut seen = [false; 4];
        let mut p = sticky.partition(4, &mut rng);
        for _ in 0..200 {
            seen[p as usize] = true;
            p = sticky.on_new_batch(p, 4, &mut rng);
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }

    #[test]
    fn sticky_partition_with_one_partition_stays_on_zero() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut sticky = StickyPartitioner::default();
        assert_eq!(sticky.partition(1, &mut rng), 0);
        assert_eq!(sticky.on_new_batch(0, 1, &mut rng), 0);
    }

    #[test]
    fn stale_on_new_batch_does_not_move_an_already_moved_partition() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut sticky = StickyPartitioner::default();
        let first = sticky.partition(10, &mut rng);
        let second = sticky.on_new_batch(first, 10, &mut rng);
        assert_eq!(sticky.on_new_batch(first, 10, &mut rng), second);
    }
}
