//! Kafka's record-batch compression codecs: the records section of a RecordBatch v2 (everything
//! after the 61-byte header) compressed as a whole, with the codec in the low three bits of
//! the batch attributes.
//!
//! Each codec writes the framing Kafka's Java producer writes and reads every framing a Kafka
//! client is known to send:
//! - gzip: RFC 1952 members (several concatenated members are read as one stream, as Java's
//!   `GZIPInputStream` does);
//! - snappy: the xerial `SnappyOutputStream` framing (magic, version, then length-prefixed raw
//!   snappy blocks), which the Java client writes, or one raw snappy block, which librdkafka
//!   writes;
//! - lz4: the standard LZ4 frame format (KIP-57 fixed Kafka's old header checksum), 64 KiB
//!   independent blocks;
//! - zstd: standard zstd frames, level 3 (Kafka's default).
//!
//! Decompression is bounded: a producer controls the compressed bytes, and a few kilobytes of
//! gzip or zstd can claim gigabytes. Every decoder reads at most `max_bytes` and fails past it
//! (`LogError::DecompressedTooLarge`) without allocating more.

use std::io::{Read, Write};

use crate::error::LogError;

/// The default bound on one batch's decompressed records: 64 MiB, 64 times Kafka's default
/// `max.message.bytes`. Real batches compress text three- to tenfold; a batch that claims more
/// than this is a decompression bomb or a client bug, and either would cost the broker memory
/// on every produce.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;

/// The largest zstd window (2^24 = 16 MiB) a batch may ask the decoder to allocate. A zstd
/// frame declares its window size and the decoder allocates it up front, so without this cap
/// a 20-byte frame could make it reserve 2 GiB. Producers at Kafka's default level 3 use at
/// most a 2 MiB window; level 19 on large batches uses 8 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Kafka's default zstd level (`compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;
/// The xerial snappy stream's magic header: `\x82SNAPPY\0`.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic, version and minimum compatible version.
const XERIAL_HEADER_BYTES: usize = XERIAL_MAGIC.len() + 8;
/// snappy-java's default block size, which the Java producer writes.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// Version and minimum compatible version written after the magic, as snappy-java writes them.
const XERIAL_VERSION: i32 = 1;
const XERIAL_MIN_COMPATIBLE_VERSION: i32 = 1;
/// The codec bits of the batch attributes.
const CODEC_MASK: i16 = 0x07;

/// A batch compression codec, numbered as in Kafka's batch attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// Every codec, in id order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec named by a batch's attributes; ids 5 to 7 are not codecs.
    pub fn from_attributes(attributes: i16) -> Result<Compression, LogError> {
        Self::from_id(attributes & CODEC_MASK)
    }

    /// The codec with Kafka's id `id` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn from_id(id: i16) -> Result<Compression, LogError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            codec => return Err(LogError::UnsupportedCompression { codec }),
        })
    }

    /// Kafka's id for the codec, as stored in the batch attributes.
    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec's name as Kafka's `compression.type` spells it (`none` for no codec).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a codec name: `none` (or `uncompressed`), `gzip`, `snappy`, `lz4`, `zstd`.
    pub fn from_name(name: &str) -> Option<Compression> {
        Some(match name {
            "none" | "uncompressed" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Compresses `raw` (a batch's records section) with `codec`.
pub fn compress(codec: Compression, raw: &[u8]) -> Result<Vec<u8>, LogError> {
    let failed = |source: std::io::Error| LogError::Io {
        context: "compress record batch",
        source,
    };
    match codec {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 2),
                flate2::Compression::default(),
            );
            encoder.write_all(raw).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Compression::Snappy => Ok(xerial_snappy_compress(raw)),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(
                info,
                Vec::with_capacity(raw.len() / 2),
            );
            encoder.write_all(raw).map_err(failed)?;
            encoder
                .finish()
                .map_err(|e| failed(std::io::Error::other(e)))
        }
        Compression::Zstd => zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(failed),
    }
}

/// Decompresses a batch's records section, reading at most `max_bytes` of output.
pub fn decompress(
    codec: Compression,
    compressed: &[u8],
    max_bytes: usize,
) -> Result<Vec<u8>, LogError> {
    match codec {
        Compression::None => {
            if compressed.len() > max_bytes {
                return Err(LogError::DecompressedTooLarge { codec, max_bytes });
            }
            Ok(compressed.to_vec())
        }
        Compression::Gzip => read_bounded(
            codec,
            flate2::read::MultiGzDecoder::new(compressed),
            max_bytes,
        ),
        Compression::Snappy => snappy_decompress(compressed, max_bytes),
        Compression::Lz4 => read_bounded(
            codec,
            lz4_flex::frame::FrameDecoder::new(compressed),
            max_bytes,
        ),
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(compressed)
                .map_err(|e| corrupt_stream(codec, &e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt_stream(codec, &e))?;
            read_bounded(codec, decoder, max_bytes)
        }
    }
}

fn corrupt_stream(codec: Compression, error: &dyn std::fmt::Display) -> LogError {
    LogError::corrupt(format!("{codec} data does not decompress: {error}"))
}

/// Reads a decoder to its end, failing once it yields more than `max_bytes`.
fn read_bounded(
    codec: Compression,
    decoder: impl Read,
    max_bytes: usize,
) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    decoder
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| corrupt_stream(codec, &e))?;
    if out.len() > max_bytes {
        return Err(LogError::DecompressedTooLarge { codec, max_bytes });
    }
    Ok(out)
}

/// Writes the xerial framing the Java producer writes: magic, version 1, compatible version
/// 1, then each block of at most 32 KiB as a big-endian length and a raw snappy block.
fn xerial_snappy_compress(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + raw.len() / 2 + 64);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    out.extend_from_slice(&XERIAL_MIN_COMPATIBLE_VERSION.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    let mut block = Vec::new();
    for chunk in raw.chunks(XERIAL_BLOCK_BYTES) {
        block.resize(snap::raw::max_compress_len(chunk.len()), 0);
        let written = encoder
            .compress(chunk, &mut block)
            .expect("the buffer holds max_compress_len bytes and a chunk is at most 32 KiB");
        let length = i32::try_from(written).expect("a 32 KiB chunk compresses to under 2 GiB");
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&block[..written]);
    }
    out
}

/// Reads the xerial framing (blocks of raw snappy) or, without its magic, one raw block.
fn snappy_decompress(compressed: &[u8], max_bytes: usize) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    if compressed.len() >= XERIAL_HEADER_BYTES && compressed.starts_with(&XERIAL_MAGIC) {
        let mut rest = &compressed[XERIAL_HEADER_BYTES..];
        while !rest.is_empty() {
            let Some((length, after)) = rest.split_first_chunk::<4>() else {
                return Err(LogError::corrupt("snappy block length is cut short"));
            };
            let length = usize::try_from(i32::from_be_bytes(*length))
                .map_err(|_| LogError::corrupt("negative snappy block length"))?;
            if length > after.len() {
                return Err(LogError::corrupt(format!(
                    "snappy block of {length} bytes, only {} left",
                    after.len()
                )));
            }
            let (block, next) = after.split_at(length);
            snappy_block_into(block, &mut out, max_bytes)?;
            rest = next;
        }
    } else {
        snappy_block_into(compressed, &mut out, max_bytes)?;
    }
    Ok(out)
}

/// Appends one raw snappy block to `out`, checking its declared length against what is left
/// of `max_bytes` before allocating.
fn snappy_block_into(block: &[u8], out: &mut Vec<u8>, max_bytes: usize) -> Result<(), LogError> {
    let length =
        snap::raw::decompress_len(block).map_err(|e| corrupt_stream(Compression::Snappy, &e))?;
    if length > max_bytes.saturating_sub(out.len()) {
        return Err(LogError::DecompressedTooLarge {
            codec: Compression::Snappy,
            max_bytes,
        });
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| corrupt_stream(Compression::Snappy, &e))?;
    out.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_like(len: usize) -> Vec<u8> {
        let words = [
            "order", "customer", "amount", "currency", "EUR", "status", "shipped",
        ];
        let mut out = Vec::with_capacity(len);
        let mut i = 0usize;
        while out.len() < len {
            out.extend_from_slice(words[i % words.len()].as_bytes());
            out.extend_from_slice(format!("={} ", i * 7919 % 1000).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn every_codec_round_trips_empty_small_and_multi_block_inputs() {
        for codec in Compression::ALL {
            for len in [
                0,
                1,
                100,
                XERIAL_BLOCK_BYTES,
                3 * XERIAL_BLOCK_BYTES + 17,
                300_000,
            ] {
                let raw = text_like(len);
                let packed = compress(codec, &raw).expect("compresses");
                let unpacked = decompress(codec, &packed, DEFAULT_MAX_DECOMPRESSED_BYTES)
                    .unwrap_or_else(|e| panic!("{codec} {len}: {e}"));
                assert_eq!(unpacked, raw, "{codec} with {len} bytes");
                if codec != Compression::None && len >= 100_000 {
                    assert!(packed.len() < raw.len() / 2, "{codec} compresses text");
                }
            }
        }
    }

    #[test]
    fn ids_and_names_are_kafkas() {
        for (id, codec) in Compression::ALL.into_iter().enumerate() {
            assert_eq!(codec.id(), id as i16);
            assert_eq!(Compression::from_id(id as i16).expect("known"), codec);
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
            // Attributes carry other flags above the codec bits.
            assert_eq!(
                Compression::from_attributes(0x30 | id as i16).expect("known"),
                codec
            );
        }
        for id in 5..8 {
            assert!(matches!(
                Compression::from_attributes(id),
                Err(LogError::UnsupportedCompression { codec }) if codec == id
            ));
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound_for_every_codec() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        for codec in Compression::ALL {
            let packed = compress(codec, &zeros).expect("compresses");
            let bound = 1024 * 1024;
            assert!(
                matches!(
                    decompress(codec, &packed, bound),
                    Err(LogError::DecompressedTooLarge { codec: c, max_bytes }) if c == codec && max_bytes == bound
                ),
                "{codec}"
            );
            // Exactly at the bound is fine.
            assert_eq!(
                decompress(codec, &packed, zeros.len()).expect("fits").len(),
                zeros.len()
            );
        }
    }

    #[test]
    fn raw_snappy_as_librdkafka_writes_it_is_read_too() {
        let raw = text_like(10_000);
        let block = snap::raw::Encoder::new()
            .compress_vec(&raw)
            .expect("compresses");
        assert_eq!(
            decompress(Compression::Snappy, &block, DEFAULT_MAX_DECOMPRESSED_BYTES)
                .expect("raw block"),
            raw
        );
    }

    #[test]
    fn corrupt_or_truncated_input_is_an_error_not_a_panic() {
        let raw = text_like(50_000);
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &raw).expect("compresses");
            // Not a cut of the last byte: lz4_flex reads a frame whose end mark is short as
            // ended. The batch CRC, checked before decompression, is what proves the bytes
            // whole; the record walk then checks the count.
            for cut in [0, 1, packed.len() / 2] {
                let result = decompress(codec, &packed[..cut], DEFAULT_MAX_DECOMPRESSED_BYTES);
                assert!(
                    result.as_ref().map_or(true, |out| out != &raw),
                    "{codec} cut at {cut} decoded to the original"
                );
            }
            for at in [packed.len() / 3, packed.len() / 2, packed.len() - 5] {
                let mut bad = packed.clone();
                bad[at] ^= 0x5a;
                let _ = decompress(codec, &bad, DEFAULT_MAX_DECOMPRESSED_BYTES);
            }
        }
    }

    #[test]
    fn a_zstd_frame_declaring_a_huge_window_is_refused() {
        // Magic, then a frame header descriptor with no single-segment flag, and a window
        // descriptor of exponent 31 - 10: a 2 GiB window.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3, 0, 0, 0, 0];
        assert!(decompress(Compression::Zstd, &frame, DEFAULT_MAX_DECOMPRESSED_BYTES).is_err());
    }
}
