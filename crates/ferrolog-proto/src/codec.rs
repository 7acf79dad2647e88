//! The protobuf codec of every Ferrolog service: tonic's prost codec, with a decode buffer
//! sized for the messages that carry record batches.
//!
//! tonic copies each received HTTP/2 DATA frame into its decode buffer, then, once it has
//! read a message's 5-byte header, reserves room for the message's whole length *beyond*
//! what the buffer already holds (grpc/grpc-rust#2735). When the message arrived in one
//! frame, as a batch of up to 1 MiB does with the 1 MiB frames Ferrolog's peers accept,
//! that reservation reallocates the buffer and copies the message a second time. A buffer
//! of twice the message from the start leaves room for both, so such a message is copied
//! once. Only the messages that carry batches through tonic get it (produce requests, fetch
//! responses); every other message keeps tonic's 8 KiB. Replica fetch responses skip
//! tonic's decoding altogether (see ferrolog-broker's `replica_fetch_call`).

use std::any::TypeId;
use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::v1;

/// The largest batch-carrying message decoded with a single copy: a 1 MiB batch (the
/// producer's default batch size) with room to spare for the message's other fields.
pub const SINGLE_COPY_MESSAGE_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// Decode buffer of a batch-carrying message: the message, and the same again for tonic's
/// reservation, plus its header.
const BATCH_MESSAGE_BUFFER_BYTES: usize = 2 * SINGLE_COPY_MESSAGE_BYTES + 5;

/// tonic's own default, for every other message.
const DEFAULT_BUFFER_BYTES: usize = 8 * 1024;
/// tonic's default: how much encoded data a stream gathers before handing it to HTTP/2.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with the decode buffer above. The generated clients and
/// servers use it (`codec_path` in build.rs).
#[derive(Debug, Clone, Copy)]
pub struct FerrologCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for FerrologCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for FerrologCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(
            DEFAULT_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(
            decode_buffer_bytes::<U>(),
            YIELD_THRESHOLD_BYTES,
        ))
    }
}

/// The decode buffer for messages of type `U`.
fn decode_buffer_bytes<U: 'static>() -> usize {
    let carries_batches = [
        TypeId::of::<v1::ProduceRequest>(),
        TypeId::of::<v1::FetchResponse>(),
    ]
    .contains(&TypeId::of::<U>());
    if carries_batches {
        BATCH_MESSAGE_BUFFER_BYTES
    } else {
        DEFAULT_BUFFER_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_batch_carrying_messages_get_the_large_buffer() {
        assert_eq!(
            decode_buffer_bytes::<v1::ProduceRequest>(),
            BATCH_MESSAGE_BUFFER_BYTES
        );
        assert_eq!(
            decode_buffer_bytes::<v1::FetchResponse>(),
            BATCH_MESSAGE_BUFFER_BYTES
        );
        assert_eq!(
            decode_buffer_bytes::<v1::ProduceResponse>(),
            DEFAULT_BUFFER_BYTES
        );
        assert_eq!(
            decode_buffer_bytes::<v1::ReplicaFetchRequest>(),
            DEFAULT_BUFFER_BYTES
        );
    }
}
