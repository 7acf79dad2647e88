"""Kafka RecordBatch v2 batches built and read by kafka-python, an implementation of the
format independent of Ferrolog's, for the cross-check tests in tests/tests/compression.rs.

Run with the interpreter of the venv scripts/python-env.sh makes (pinned versions from
requirements.txt beside this file). Every mode prints one JSON document on stdout; bytes
travel as lowercase hex, so keys and values that are not UTF-8 compare exactly.

  build        One batch per codec variant (none, gzip, snappy in xerial framing as the Java
               client writes it, snappy as one raw block as librdkafka writes it, lz4, zstd),
               each holding the same known records, and those records as written:
               [{"variant", "codec_id", "batch", "records": [RECORD...]}].
  bad          Batches a broker must refuse: decompression bombs (100 MiB of zeros) and
               corrupt compressed payloads under a valid CRC-32C, and codec ids 5 to 7:
               [{"name", "batch", "kind"}], kind one of "bomb", "corrupt", "codec".
  read FILE    Reads FILE, concatenated batches as a fetch returns them, with MemoryRecords
               and DefaultRecordBatch (CRC checked, records decompressed by kafka-python):
               [{"base_offset", "codec_id", "crc_valid", "record_count", "producer_id",
                 "first_timestamp", "max_timestamp", "records": [RECORD...]}].

RECORD is {"offset", "timestamp", "key", "value", "headers": [[KEY, VALUE]...]}, with key,
value and header values as hex or null, header keys as text.
"""

import json
import struct
import sys

import kafka.record.default_records as default_records
import snappy
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c

# Codec ids in a batch's attributes (bits 0-2), as Kafka numbers them.
NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4

# Byte positions in the RecordBatch v2 header. The CRC-32C covers everything from the
# attributes on; the base offset and partition leader epoch before it are the broker's.
CRC_AT = 17
ATTRIBUTES_AT = 21
HEADER_BYTES = 61

# The first record's timestamp; the others are given relative to it, one of them earlier,
# so a negative timestamp delta is exercised.
BASE_TIMESTAMP_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# Large enough for every batch this script builds, bombs included.
BATCH_SIZE_LIMIT = 256 * 1024 * 1024


def known_records():
    """The records every variant carries, as (timestamp, key, value, headers).

    The first few cover the edge cases: a null value (a tombstone), a null key, an empty key
    and value (not null), bytes that are not UTF-8, a null header value, a repeated header
    key, a timestamp earlier than the first. The rest are text, enough of it (about 150 KiB)
    that every codec gains on it (kafka-python sends a batch uncompressed when compressing
    does not make it smaller) and that it spans several lz4 (64 KiB) and xerial snappy
    (32 KiB) blocks.
    """
    records = [
        (BASE_TIMESTAMP_MS, b"user-1", b"hello from kafka-python",
         [("trace-id", b"4bf92f3577b34da6"), ("source", b"kafka-python")]),
        (BASE_TIMESTAMP_MS + 5, None, b"a record without a key", []),
        (BASE_TIMESTAMP_MS + 7, b"user-2", None, [("reason", b"deleted"), ("nothing", None)]),
        (BASE_TIMESTAMP_MS - 3, b"bin\x00\xff\xfe", bytes(range(256)) * 4,
         [("dup", b"first"), ("dup", b"second")]),
        (BASE_TIMESTAMP_MS + 1000, b"", b"", [("empty", b"")]),
    ]
    for i in range(400):
        value = ("event %05d: the quick brown fox jumps over the lazy dog; " % i) * 6
        records.append((BASE_TIMESTAMP_MS + 2000 + i, b"key-%d" % (i % 7),
                        value.encode(), [("seq", str(i).encode())]))
    return records


def hexed(data):
    return None if data is None else bytes(data).hex()


def record_json(offset, timestamp, key, value, headers):
    return {
        "offset": offset,
        "timestamp": timestamp,
        "key": hexed(key),
        "value": hexed(value),
        "headers": [[k, hexed(v)] for k, v in headers],
    }


def raw_snappy(payload):
    """One raw snappy block, no framing: what librdkafka sends."""
    return snappy.compress(bytes(payload))


def build_batch(codec_id, records, snappy_encoder=None):
    """Builds one batch with kafka-python, as its producer would (no producer id, offsets
    from 0). `snappy_encoder` replaces kafka-python's xerial encoder for this one build."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec_id, is_transactional=False,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=BATCH_SIZE_LIMIT)
    for offset, (timestamp, key, value, headers) in enumerate(records):
        if builder.append(offset, timestamp=timestamp, key=key, value=value,
                          headers=headers) is None:
            sys.exit(f"kafka-python refused record {offset} (batch full?)")
    saved = default_records.snappy_encode
    if snappy_encoder is not None:
        default_records.snappy_encode = snappy_encoder
    try:
        batch = bytes(builder.build())
    finally:
        default_records.snappy_encode = saved
    written = DefaultRecordBatch(batch).compression_type
    if written != codec_id:
        # The builder fell back to no compression: the test would not test the codec.
        sys.exit(f"asked kafka-python for codec {codec_id}, it wrote codec {written}")
    return batch


def with_crc(batch):
    """Recomputes the CRC-32C over bytes 21.., so only what a caller changed is wrong."""
    batch = bytearray(batch)
    struct.pack_into(">I", batch, CRC_AT, calc_crc32c(memoryview(batch)[ATTRIBUTES_AT:]))
    return bytes(batch)


def mode_build():
    records = known_records()
    variants = [
        ("none", NONE, None),
        ("gzip", GZIP, None),
        ("snappy", SNAPPY, None),
        ("snappy-raw", SNAPPY, raw_snappy),
        ("lz4", LZ4, None),
        ("zstd", ZSTD, None),
    ]
    out = []
    for variant, codec_id, snappy_encoder in variants:
        batch = build_batch(codec_id, records, snappy_encoder)
        out.append({
            "variant": variant,
            "codec_id": codec_id,
            "batch": batch.hex(),
            "records": [record_json(offset, *r) for offset, r in enumerate(records)],
        })
    json.dump(out, sys.stdout)


def mode_bad():
    out = []
    # 100 records of 1 MiB of zeros: 100 MiB decompressed, past the broker's 64 MiB bound,
    # a few hundred KiB (lz4) or less compressed.
    zeros = bytes(1024 * 1024)
    bomb_records = [(BASE_TIMESTAMP_MS, None, zeros, [])] * 100
    for name, codec_id in (("gzip", GZIP), ("zstd", ZSTD), ("lz4", LZ4)):
        out.append({"name": f"{name} bomb: 100 MiB of zeros",
                    "kind": "bomb", "batch": build_batch(codec_id, bomb_records).hex()})

    # Corrupt payloads under a valid CRC: the CRC only says the bytes arrived as sent, not
    # that the sender's compressor was sound. Three kinds per codec: the stream's first
    # bytes (magic or header) overwritten, the stream cut in half, and a run of its middle
    # bytes inverted.
    records = known_records()
    for name, codec_id, encoder in (("gzip", GZIP, None), ("snappy", SNAPPY, None),
                                    ("snappy-raw", SNAPPY, raw_snappy), ("lz4", LZ4, None),
                                    ("zstd", ZSTD, None)):
        good = build_batch(codec_id, records, encoder)
        payload = good[HEADER_BYTES:]

        def with_payload(new_payload):
            batch = bytearray(good[:HEADER_BYTES] + new_payload)
            struct.pack_into(">i", batch, 8, len(batch) - 12)  # batch length
            return with_crc(batch)

        middle = len(payload) // 2
        inverted = bytes(b ^ 0xFF for b in payload[middle:middle + 16])
        for what, new_payload in (
            ("first 4 bytes overwritten", b"\xde\xad\xbe\xef" + payload[4:]),
            ("cut in half", payload[:middle]),
            ("16 middle bytes inverted", payload[:middle] + inverted + payload[middle + 16:]),
        ):
            out.append({"name": f"{name} payload {what}", "kind": "corrupt",
                        "batch": with_payload(new_payload).hex()})

    # Codec ids 5, 6 and 7 name no codec: an uncompressed batch with those bits set.
    plain = build_batch(NONE, records[:3])
    for codec_id in (5, 6, 7):
        batch = bytearray(plain)
        attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
        struct.pack_into(">h", batch, ATTRIBUTES_AT, (attributes & ~0x07) | codec_id)
        out.append({"name": f"codec id {codec_id}", "kind": "codec",
                    "batch": with_crc(batch).hex()})
    json.dump(out, sys.stdout)


def mode_read(path):
    with open(path, "rb") as f:
        data = f.read()
    records = MemoryRecords(data)
    out = []
    while records.has_next():
        batch = records.next_batch()
        if not isinstance(batch, DefaultRecordBatch):
            sys.exit(f"a batch of magic {batch.magic} in {path}: expected magic 2")
        crc_valid = batch.validate_crc()  # before iterating: it decompresses in place
        out.append({
            "base_offset": batch.base_offset,
            "codec_id": batch.compression_type,
            "crc_valid": crc_valid,
            "record_count": batch.records_count,
            "producer_id": batch.producer_id,
            "first_timestamp": batch.first_timestamp,
            "max_timestamp": batch.max_timestamp,
            "records": [record_json(r.offset, r.timestamp, r.key, r.value, r.headers)
                        for r in batch],
        })
    # MemoryRecords stops quietly at a partial batch; a fetch answer holds whole ones.
    if records.valid_bytes() != len(data):
        sys.exit(f"{path}: {len(data) - records.valid_bytes()} trailing bytes are no batch")
    json.dump(out, sys.stdout)


def main():
    match sys.argv[1:]:
        case ["build"]:
            mode_build()
        case ["bad"]:
            mode_bad()
        case ["read", path]:
            mode_read(path)
        case _:
            sys.exit("usage: kafka_batches.py build | bad | read FILE")


if __name__ == "__main__":
    main()
