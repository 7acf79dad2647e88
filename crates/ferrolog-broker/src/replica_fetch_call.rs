//! A follower's replica fetch over HTTP/2, made here rather than through tonic's generated
//! client, so that a response's batches reach the log without a copy in this process.
//!
//! tonic's client copies every DATA frame of a response into its own decode buffer before
//! it decodes the message. A replica fetch response is almost all batch bytes, and the
//! leader sends each partition's batches as DATA frames of their own (see
//! `service::replication_server`; frames go up to 1 MiB). Decoding from the frames as
//! received makes a partition's `record_batches` a slice of the buffer h2 received it
//! into, when they fit in one frame: up to 1 MiB, what one produce request brings. More
//! (a follower catching up gets up to 8 MiB per partition) spans frames and is joined:
//! one copy, as tonic makes.
//!
//! On the wire it is the call tonic makes: the same path and headers, gRPC's 5-byte message
//! prefix, and the status in the trailers (or alone in the headers, for an error).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferrolog_proto::v1;
use http_body_util::BodyExt;
use prost::Message;
use tonic::codegen::{Service, http};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::grpc_wire::{MESSAGE_PREFIX_BYTES, message_prefix, strip_message_prefix};

const PATH: &str = "/ferrolog.v1.ReplicationService/ReplicaFetch";

/// Sends `request` to the leader behind `channel` and decodes its answer. The call fails
/// after `timeout`, and when the answer is longer than `max_response_bytes`.
pub(crate) async fn replica_fetch(
    channel: &Channel,
    request: &v1::ReplicaFetchRequest,
    timeout: Duration,
    max_response_bytes: usize,
) -> Result<v1::ReplicaFetchResponse, Status> {
    let call = call(channel.clone(), request, timeout, max_response_bytes);
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Status::deadline_exceeded("the replica fetch timed out"))?
}

async fn call(
    mut channel: Channel,
    request: &v1::ReplicaFetchRequest,
    timeout: Duration,
    max_response_bytes: usize,
) -> Result<v1::ReplicaFetchResponse, Status> {
    let body = http_body_util::Full::new(prefixed(request));
    let http_request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PATH)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        // The leader bounds its long poll by it too.
        .header("grpc-timeout", format!("{}m", timeout.as_millis()))
        .body(tonic::body::Body::new(body))
        .map_err(|e| Status::internal(format!("build the replica fetch request: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unavailable(format!("connect to the leader: {e}")))?;
    let response = channel
        .call(http_request)
        .await
        .map_err(|e| Status::unavailable(format!("replica fetch: {e}")))?;
    // An error the server raised before any message comes alone, in the headers.
    if let Some(status) = grpc_status(response.headers()) {
        return Err(if status.code() == Code::Ok {
            Status::internal("the leader answered the replica fetch with no message")
        } else {
            status
        });
    }
    if response.status() != http::StatusCode::OK {
        // Not a gRPC answer (a proxy's, say): gRPC's mapping, roughly, all retried anyway.
        return Err(Status::unavailable(format!(
            "the leader answered the replica fetch with HTTP status {}",
            response.status()
        )));
    }
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    let mut received = 0usize;
    let mut status = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                received += data.len();
                if received > MESSAGE_PREFIX_BYTES + max_response_bytes {
                    return Err(Status::out_of_range(format!(
                        "the replica fetch response is over {max_response_bytes} bytes"
                    )));
                }
                chunks.push(data);
            }
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    status = grpc_status(trailers);
                }
            }
        }
    }
    match status {
        Some(status) if status.code() == Code::Ok => decode(Frames::new(chunks)),
        Some(status) => Err(status),
        None => Err(Status::internal(
            "the replica fetch response ended without a gRPC status",
        )),
    }
}

/// The gRPC status in `headers`, if any. Read here rather than by
/// `Status::from_header_map`, which panics on a malformed `grpc-status-details-bin`: a
/// leader's answer must not be able to stop this fetcher.
fn grpc_status(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?;
    let code = code
        .to_str()
        .ok()
        .and_then(|c| c.trim().parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from);
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(Status::new(code, message))
}

/// `request` with gRPC's message prefix, uncompressed.
fn prefixed(request: &v1::ReplicaFetchRequest) -> Bytes {
    let len = request.encoded_len();
    let mut framed = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + len);
    framed.put_slice(&message_prefix(u32::try_from(len).unwrap_or(u32::MAX)));
    request.encode_raw(&mut framed);
    framed.freeze()
}

/// A body's DATA frames, read in order without joining them: taking bytes that lie within
/// one frame (as prost does for a `bytes` field) slices that frame instead of copying.
struct Frames {
    frames: VecDeque<Bytes>,
    remaining: usize,
}

impl Frames {
    fn new(frames: Vec<Bytes>) -> Self {
        Self {
            remaining: frames.iter().map(Bytes::len).sum(),
            frames: frames.into_iter().filter(|f| !f.is_empty()).collect(),
        }
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.frames.front().map_or(&[], |f| f.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the frames");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.frames.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.frames.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.remaining,
            "copy_to_bytes past the end of the frames"
        );
        match self.frames.front_mut() {
            Some(front) if len <= front.len() => {
                let taken = front.split_to(len);
                self.remaining -= len;
                if front.is_empty() {
                    self.frames.pop_front();
                }
                taken
            }
            // Spans frames: joined, as `Buf`'s own `copy_to_bytes` does.
            _ => {
                let mut joined = BytesMut::with_capacity(len);
                joined.put((&mut *self).take(len));
                joined.freeze()
            }
        }
    }
}

/// Decodes the one message of a unary response body. Its `record_batches` are slices of
/// the frames, not copies, unless a batch spans frames.
fn decode(mut body: Frames) -> Result<v1::ReplicaFetchResponse, Status> {
    strip_message_prefix(&mut body, "the replica fetch response", Code::Internal)?;
    v1::ReplicaFetchResponse::decode(body)
        .map_err(|e| Status::internal(format!("decode the replica fetch response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(batches: Bytes) -> v1::ReplicaFetchResponse {
        v1::ReplicaFetchResponse {
            partitions: vec![v1::ReplicaFetchPartitionData {
                high_watermark: 7,
                log_end_offset: 9,
                record_batches: batches,
                ..Default::default()
            }],
        }
    }

    fn framed(message: &v1::ReplicaFetchResponse) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(0);
        out.put_u32(message.encoded_len() as u32);
        message.encode_raw(&mut out);
        out.freeze()
    }

    #[test]
    fn batches_of_a_one_frame_response_are_slices_of_that_frame() {
        let sent = response(Bytes::from(vec![3u8; 64 * 1024]));
        let frame = framed(&sent);
        let frame_range = frame.as_ptr_range();
        let decoded = decode(Frames::new(vec![frame.clone()])).expect("decodes");
        assert_eq!(decoded, sent);
        let batches = &decoded.partitions[0].record_batches;
        assert!(
            frame_range.contains(&batches.as_ptr()),
            "the batches were copied out of the frame"
        );
    }

    #[test]
    fn a_batch_in_a_frame_of_its_own_is_not_copied_and_one_split_across_frames_is_joined() {
        let batch = Bytes::from(vec![5u8; 10_000]);
        let sent = response(batch.clone());
        let wire = framed(&sent);
        // As the leader sends it: the framing, then the batch as a frame of its own.
        let framing = wire.len() - batch.len();
        let own_frame = wire.slice(framing..);
        let frames = vec![wire.slice(..2), wire.slice(2..framing), own_frame.clone()];
        let decoded = decode(Frames::new(frames)).expect("decodes");
        assert_eq!(decoded, sent);
        assert_eq!(
            decoded.partitions[0].record_batches.as_ptr(),
            own_frame.as_ptr()
        );
        // Split anywhere, even inside the prefix and the batch: decoded all the same.
        for cut in [1, 3, framing - 1, framing + 1, wire.len() - 1] {
            let frames = vec![wire.slice(..cut), Bytes::new(), wire.slice(cut..)];
            assert_eq!(decode(Frames::new(frames)).expect("decodes"), sent);
        }
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        let frame = framed(&response(Bytes::from_static(b"batch")));
        let one = |bytes: Bytes| Frames::new(vec![bytes]);
        let no_message = decode(one(Bytes::from_static(&[0, 0]))).expect_err("too short");
        assert!(no_message.message().contains("holds no message"));
        assert_eq!(no_message.code(), Code::Internal);

        let mut compressed = BytesMut::from(&frame[..]);
        compressed[0] = 1;
        let compressed = decode(one(compressed.freeze())).expect_err("compressed");
        assert!(compressed.message().contains("compressed"));

        let truncated = decode(one(frame.slice(..frame.len() - 1))).expect_err("truncated");
        assert!(truncated.message().contains("announces a message of"));

        let mut garbage = BytesMut::new();
        garbage.put_u8(0);
        garbage.put_u32(3);
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let garbage = decode(one(garbage.freeze())).expect_err("not protobuf");
        assert!(
            garbage
                .message()
                .contains("decode the replica fetch response")
        );
    }

    #[test]
    fn a_status_is_read_from_headers_even_with_malformed_details() {
        let mut headers = http::HeaderMap::new();
        assert!(grpc_status(&headers).is_none());
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("leader moved"),
        );
        headers.insert(
            "grpc-status-details-bin",
            http::HeaderValue::from_static("%%% not base64 %%%"),
        );
        let status = grpc_status(&headers).expect("a status");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "leader moved");
        headers.insert("grpc-status", http::HeaderValue::from_static("banana"));
        assert_eq!(
            grpc_status(&headers).expect("a status").code(),
            Code::Unknown
        );
    }

    #[test]
    fn the_request_carries_the_grpc_prefix() {
        let request = v1::ReplicaFetchRequest {
            replica_id: 2,
            max_wait_ms: 500,
            ..Default::default()
        };
        let mut body = prefixed(&request);
        assert_eq!(body.get_u8(), 0);
        assert_eq!(body.get_u32() as usize, body.len());
        assert_eq!(
            v1::ReplicaFetchRequest::decode(body).expect("decodes"),
            request
        );
    }
}
