//! The ReplicationService over HTTP/2, served here rather than by tonic's generated
//! server, so that a replica fetch response hands the batches to h2 as they are.
//!
//! tonic's server encodes a response into one buffer, which copies every batch once per
//! follower. Here a response body is a list of chunks: the protobuf framing, made small,
//! around each batch's own `Bytes` (what the leader keeps in memory, or read from its
//! log), which h2 then writes to the socket from where it is. On the wire it is what tonic
//! would send (gRPC's 5-byte prefix, a protobuf message with the batches field last, which
//! protobuf allows, `grpc-status` in the trailers), so any gRPC client can call it; prost
//! decodes it to the same message (tested below).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use ferrolog_proto::v1;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::replication::ReplicationApi;
use crate::grpc_wire::{MESSAGE_PREFIX_BYTES, message_prefix, strip_message_prefix};

const FETCH_PATH: &str = "/ferrolog.v1.ReplicationService/ReplicaFetch";
/// The largest replica fetch request read: it names partitions, about 50 bytes each.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// The most a request may ask for, in all and per partition: a follower asks for 16 MiB
/// and 8 MiB (`fetcher`). The first partition with batches still gets one whole batch,
/// however large (KIP-74), which a produce request bounds at 100 MiB.
const MAX_ASKED_BYTES: u32 = 64 * 1024 * 1024;
/// The largest answer sent; above it the call fails rather than send megabytes nobody
/// asked for (and its length must fit gRPC's 32-bit prefix).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Field numbers in replication.proto.
const PARTITIONS_FIELD: u32 = 1;
const RECORD_BATCHES_FIELD: u32 = 6;

/// The ReplicationService, to add to a tonic server like a generated one.
#[derive(Clone)]
pub struct ReplicationServer {
    api: ReplicationApi,
}

impl ReplicationServer {
    pub fn new(api: ReplicationApi) -> Self {
        Self { api }
    }
}

impl NamedService for ReplicationServer {
    const NAME: &'static str = "ferrolog.v1.ReplicationService";
}

impl Service<http::Request<tonic::body::Body>> for ReplicationServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let api = self.api.clone();
        Box::pin(async move {
            Ok(answer(api, request)
                .await
                .unwrap_or_else(|status| status.into_http()))
        })
    }
}

async fn answer(
    api: ReplicationApi,
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    if request.uri().path() != FETCH_PATH {
        return Err(Status::unimplemented(format!(
            "ReplicationService has no method at {}",
            request.uri().path()
        )));
    }
    let message = read_message(request.into_body()).await?;
    let mut fetch = v1::ReplicaFetchRequest::decode(message)
        .map_err(|e| Status::invalid_argument(format!("decode the replica fetch request: {e}")))?;
    fetch.max_bytes = fetch.max_bytes.min(MAX_ASKED_BYTES);
    for partition in &mut fetch.partitions {
        partition.max_bytes = partition.max_bytes.min(MAX_ASKED_BYTES);
    }
    let response = api.replica_fetch(fetch).await;
    let mut frames: Vec<Result<Frame<Bytes>, Status>> = encode_chunks(&response)?
        .into_iter()
        .map(|chunk| Ok(Frame::data(chunk)))
        .collect();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    frames.push(Ok(Frame::trailers(trailers)));
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(body))
        .map_err(|e| Status::internal(format!("build the replica fetch response: {e}")))
}

/// The one message of a unary request body, without its gRPC prefix.
async fn read_message(mut body: tonic::body::Body) -> Result<Bytes, Status> {
    let mut received = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if received.len() + data.len() > MESSAGE_PREFIX_BYTES + MAX_REQUEST_BYTES {
                return Err(Status::out_of_range(format!(
                    "a replica fetch request is at most {MAX_REQUEST_BYTES} bytes"
                )));
            }
            received.extend_from_slice(&data);
        }
    }
    let mut message = received.freeze();
    strip_message_prefix(
        &mut message,
        "the replica fetch request",
        tonic::Code::InvalidArgument,
    )?;
    Ok(message)
}

/// `response` as gRPC sends it, prefix included, in chunks: each partition's batches are
/// a chunk of their own (the same `Bytes`, not a copy), everything else is encoded into
/// the small chunks between them.
fn encode_chunks(response: &v1::ReplicaFetchResponse) -> Result<Vec<Bytes>, Status> {
    let message_len: usize = response.partitions.iter().map(partition_field_len).sum();
    let prefix_len = u32::try_from(message_len)
        .ok()
        .filter(|_| message_len <= MAX_RESPONSE_BYTES)
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "the replica fetch answer would be {message_len} bytes, over the \
                 {MAX_RESPONSE_BYTES}-byte limit; ask for fewer bytes"
            ))
        })?;
    let mut chunks = Vec::with_capacity(2 * response.partitions.len() + 1);
    let mut framing = BytesMut::new();
    framing.extend_from_slice(&message_prefix(prefix_len));
    for partition in &response.partitions {
        let batches = &partition.record_batches;
        let others = without_batches(partition);
        encode_key(PARTITIONS_FIELD, WireType::LengthDelimited, &mut framing);
        encode_varint(partition_len(partition) as u64, &mut framing);
        others.encode_raw(&mut framing);
        if !batches.is_empty() {
            encode_key(
                RECORD_BATCHES_FIELD,
                WireType::LengthDelimited,
                &mut framing,
            );
            encode_varint(batches.len() as u64, &mut framing);
            chunks.push(framing.split().freeze());
            chunks.push(batches.clone());
        }
    }
    if !framing.is_empty() {
        chunks.push(framing.freeze());
    }
    Ok(chunks)
}

/// The partition's fields other than its batches (a cheap clone: `Bytes` and small
/// fields).
fn without_batches(partition: &v1::ReplicaFetchPartitionData) -> v1::ReplicaFetchPartitionData {
    v1::ReplicaFetchPartitionData {
        record_batches: Bytes::new(),
        ..partition.clone()
    }
}

/// Encoded length of one partition's message, batches included.
fn partition_len(partition: &v1::ReplicaFetchPartitionData) -> usize {
    let batches = partition.record_batches.len();
    let batches_field = if batches == 0 {
        0
    } else {
        key_len(RECORD_BATCHES_FIELD) + encoded_len_varint(batches as u64) + batches
    };
    without_batches(partition).encoded_len() + batches_field
}

/// Encoded length of one partition as a field of the response: key, length, message.
fn partition_field_len(partition: &v1::ReplicaFetchPartitionData) -> usize {
    let len = partition_len(partition);
    key_len(PARTITIONS_FIELD) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use super::*;

    fn partition(batches: &'static [u8], error_code: i32) -> v1::ReplicaFetchPartitionData {
        v1::ReplicaFetchPartitionData {
            error_code,
            error_message: if error_code == 0 {
                String::new()
            } else {
                "not the leader".to_owned()
            },
            high_watermark: 41,
            log_start_offset: 3,
            log_end_offset: 57,
            record_batches: Bytes::from_static(batches),
            diverging_epoch: None,
        }
    }

    fn joined(chunks: &[Bytes]) -> Bytes {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn chunks_decode_to_the_response_and_carry_the_batches_uncopied() {
        let big: &'static [u8] = Box::leak(vec![9u8; 300_000].into_boxed_slice());
        let mut diverged = partition(b"", 0);
        diverged.diverging_epoch = Some(v1::DivergingEpoch {
            epoch: 4,
            end_offset: 12,
        });
        let response = v1::ReplicaFetchResponse {
            partitions: vec![
                partition(big, 0),
                partition(b"", 6),
                diverged,
                partition(b"small batch", 0),
                v1::ReplicaFetchPartitionData::default(),
            ],
        };
        let chunks = encode_chunks(&response).expect("under the limit");
        // As tonic would send it: prefix, then prost's encoding of the message (the
        // batches field moves after the others, which protobuf allows).
        let mut wire = joined(&chunks);
        assert_eq!(wire.get_u8(), 0);
        assert_eq!(wire.get_u32() as usize, wire.len());
        assert_eq!(wire.len(), response.encoded_len());
        assert_eq!(
            v1::ReplicaFetchResponse::decode(wire).expect("decodes"),
            response
        );
        // The big batch is one chunk, pointing at the batch's own memory.
        assert!(
            chunks
                .iter()
                .any(|c| c.len() == big.len() && c.as_ptr() == big.as_ptr()),
            "the batches were copied"
        );
    }

    #[test]
    fn an_empty_response_is_a_prefix_alone() {
        let chunks = encode_chunks(&v1::ReplicaFetchResponse::default()).expect("empty");
        assert_eq!(joined(&chunks), Bytes::from_static(&[0, 0, 0, 0, 0]));
    }

    #[tokio::test]
    async fn a_request_body_gives_its_message_or_says_what_is_wrong() {
        let request = v1::ReplicaFetchRequest {
            replica_id: 3,
            max_wait_ms: 500,
            max_bytes: 1 << 20,
            partitions: vec![v1::ReplicaFetchPartition {
                topic: "orders".to_owned(),
                partition: 1,
                ..Default::default()
            }],
        };
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(request.encoded_len() as u32).to_be_bytes());
        framed.extend_from_slice(&request.encode_to_vec());
        let body =
            |bytes: Vec<u8>| tonic::body::Body::new(http_body_util::Full::new(Bytes::from(bytes)));

        let message = read_message(body(framed.clone())).await.expect("reads");
        assert_eq!(
            v1::ReplicaFetchRequest::decode(message).expect("decodes"),
            request
        );

        let empty = read_message(body(vec![0, 0])).await.expect_err("too short");
        assert!(empty.message().contains("holds no message"));
        let mut compressed = framed.clone();
        compressed[0] = 1;
        let compressed = read_message(body(compressed))
            .await
            .expect_err("compressed");
        assert_eq!(compressed.code(), tonic::Code::Internal);
        let truncated = read_message(body(framed[..framed.len() - 1].to_vec()))
            .await
            .expect_err("truncated");
        assert!(truncated.message().contains("announces a message of"));
    }
}
