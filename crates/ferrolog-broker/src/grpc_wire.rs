//! gRPC's framing of one message, shared by the two hand-made sides of the replica fetch
//! (`replica_fetch_call` on the follower, `service::replication_server` on the leader):
//! a 5-byte prefix, a compressed flag and a big-endian length, before the protobuf bytes.

use bytes::Buf;
use tonic::{Code, Status};

/// The prefix before each message: a compressed flag and a big-endian length.
pub(crate) const MESSAGE_PREFIX_BYTES: usize = 5;

/// The prefix of an uncompressed message of `len` bytes.
pub(crate) fn message_prefix(len: u32) -> [u8; MESSAGE_PREFIX_BYTES] {
    let [a, b, c, d] = len.to_be_bytes();
    [0, a, b, c, d]
}

/// Takes the prefix off `body`, the whole body of a unary call, leaving exactly the message
/// it announces. `what` names the message in errors ("the replica fetch response");
/// `malformed` is the code for a body too short or of the wrong length (INTERNAL for a bad
/// answer, INVALID_ARGUMENT for a bad request). A compressed message is INTERNAL either
/// way: neither side names a grpc-encoding, so the peer broke the protocol.
pub(crate) fn strip_message_prefix<B: Buf>(
    body: &mut B,
    what: &str,
    malformed: Code,
) -> Result<(), Status> {
    if body.remaining() < MESSAGE_PREFIX_BYTES {
        return Err(Status::new(malformed, format!("{what} holds no message")));
    }
    if body.get_u8() != 0 {
        return Err(Status::internal(format!(
            "{what} is compressed, though no compression was agreed"
        )));
    }
    let len = body.get_u32() as usize;
    if body.remaining() != len {
        return Err(Status::new(
            malformed,
            format!(
                "{what} announces a message of {len} bytes and holds {}",
                body.remaining()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut body = message_prefix(message.len() as u32).to_vec();
        body.extend_from_slice(message);
        body
    }

    #[test]
    fn a_well_framed_body_leaves_its_message() {
        let body = framed(b"hello");
        let mut rest = &body[..];
        strip_message_prefix(&mut rest, "the test body", Code::InvalidArgument).expect("framed");
        assert_eq!(rest, b"hello");
        assert_eq!(message_prefix(0x0102_0304), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_malformed_body_says_what_is_wrong_with_the_callers_code() {
        let strip = |body: &[u8]| {
            let mut rest = body;
            strip_message_prefix(&mut rest, "the test body", Code::InvalidArgument)
                .expect_err("malformed")
        };
        let short = strip(&[0, 0]);
        assert_eq!(short.code(), Code::InvalidArgument);
        assert_eq!(short.message(), "the test body holds no message");

        let mut compressed = framed(b"hello");
        compressed[0] = 1;
        let compressed = strip(&compressed);
        assert_eq!(compressed.code(), Code::Internal);
        assert!(compressed.message().contains("compressed"));

        let body = framed(b"hello");
        let truncated = strip(&body[..body.len() - 1]);
        assert_eq!(truncated.code(), Code::InvalidArgument);
        assert_eq!(
            truncated.message(),
            "the test body announces a message of 5 bytes and holds 4"
        );
    }
}
