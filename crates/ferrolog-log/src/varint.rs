//! Kafka's zig-zag varints and a bounds-checked reader over untrusted batch bytes.
//!
//! Every read returns `LogError::CorruptBatch` instead of panicking: these bytes come from
//! clients, peers and disks.

use bytes::BufMut;

use crate::error::LogError;

/// Maps signed to unsigned so that small negative numbers stay short.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

/// Returns how many bytes `put_varlong(value)` writes; varints of `i32` values use the same
/// encoding, so this serves both.
pub(crate) fn varlong_len(value: i64) -> usize {
    let raw = zigzag(value);
    let bits = 64 - raw.leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

/// Writes a zig-zag varint; an `i32` sign-extended to `i64` encodes exactly like Kafka's varint.
pub(crate) fn put_varlong(buf: &mut impl BufMut, value: i64) {
    let mut raw = zigzag(value);
    while raw >= 0x80 {
        buf.put_u8((raw as u8) | 0x80);
        raw >>= 7;
    }
    buf.put_u8(raw as u8);
}

/// A forward-only reader over untrusted bytes.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn read_unsigned(&mut self, max_bytes: usize, what: &'static str) -> Result<u64, LogError> {
        let mut raw: u64 = 0;
        for i in 0..max_bytes {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(LogError::corrupt(format!(
                    "{what}: varint runs past the end"
                )));
            };
            self.pos += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(raw);
            }
        }
        Err(LogError::corrupt(format!(
            "{what}: varint longer than {max_bytes} bytes"
        )))
    }

    /// Reads a zig-zag varint that must fit an `i32` (at most 5 bytes).
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<i32, LogError> {
        let value = unzigzag(self.read_unsigned(5, what)?);
        i32::try_from(value).map_err(|_| LogError::corrupt(format!("{what}: varint overflows i32")))
    }

    /// Reads a zig-zag varlong (at most 10 bytes).
    pub(crate) fn varlong(&mut self, what: &'static str) -> Result<i64, LogError> {
        Ok(unzigzag(self.read_unsigned(10, what)?))
    }

    pub(crate) fn i8(&mut self, what: &'static str) -> Result<i8, LogError> {
        let bytes = self.bytes(1, what)?;
        Ok(bytes[0] as i8)
    }

    /// Takes the next `len` bytes.
    pub(crate) fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], LogError> {
        if len > self.remaining() {
            return Err(LogError::corrupt(format!(
                "{what}: needs {len} bytes, {} left",
                self.remaining()
            )));
        }
        let slice = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    /// Reads a varint length followed by that many bytes; a length of -1 means null.
    pub(crate) fn nullable_bytes(
        &mut self,
        what: &'static str,
    ) -> Result<Option<&'a [u8]>, LogError> {
        match self.varint(what)? {
            -1 => Ok(None),
            len if len < 0 => Err(LogError::corrupt(format!("{what}: negative length {len}"))),
            len => self.bytes(len as usize, what).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_report_their_length() {
        let values = [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX as i64,
            i32::MIN as i64,
        ];
        for value in values.into_iter().chain([i64::MAX, i64::MIN]) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, value);
            assert_eq!(buf.len(), varlong_len(value), "length of {value}");
            let mut cursor = Cursor::new(&buf);
            assert_eq!(cursor.varlong("v").expect("valid varlong"), value);
            assert_eq!(cursor.remaining(), 0);
        }
    }

    #[test]
    fn zigzag_matches_kafka_examples() {
        // Kafka encodes 0, -1, 1, -2 as 0, 1, 2, 3.
        for (value, raw) in [(0i64, 0u8), (-1, 1), (1, 2), (-2, 3)] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, value);
            assert_eq!(buf, vec![raw]);
        }
    }

    #[test]
    fn truncated_or_overlong_varints_are_rejected() {
        assert!(Cursor::new(&[0x80]).varint("v").is_err());
        assert!(
            Cursor::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
                .varint("v")
                .is_err()
        );
        assert!(Cursor::new(&[]).i8("v").is_err());
    }

    #[test]
    fn nullable_bytes_reads_null_and_rejects_bad_lengths() {
        assert_eq!(Cursor::new(&[1]).nullable_bytes("k").expect("null"), None);
        assert_eq!(
            Cursor::new(&[4, b'a', b'b'])
                .nullable_bytes("k")
                .expect("two bytes"),
            Some(&b"ab"[..])
        );
        assert!(
            Cursor::new(&[3]).nullable_bytes("k").is_err(),
            "-2 is not a length"
        );
        assert!(
            Cursor::new(&[6, b'a']).nullable_bytes("k").is_err(),
            "runs past end"
        );
    }
}
