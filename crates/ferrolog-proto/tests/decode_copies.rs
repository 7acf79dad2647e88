//! A 1 MiB batch that arrives in one HTTP/2 frame is decoded without a second copy: with
//! tonic's own prost codec, its decode buffer is reallocated (the message copied again)
//! once the message's header is read; with `FerrologCodec`, it is not (see src/codec.rs).
//!
//! The test counts reallocations of large blocks with a global allocator; it lives in its
//! own test binary so that no other test allocates meanwhile.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use ferrolog_proto::codec::FerrologCodec;
use ferrolog_proto::v1;
use prost::Message;
use tonic::codec::{Codec, Streaming};

/// The system allocator, counting reallocations of blocks of 512 KiB or more: each copies
/// the block.
struct CountingAllocator;

static LARGE_REALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() >= 512 * 1024 {
            LARGE_REALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by its contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A produce request carrying a 1 MiB batch, framed as gRPC sends it (flag, length,
/// message) in one piece, as one HTTP/2 frame delivers it.
fn one_frame_request() -> Bytes {
    let request = v1::ProduceRequest {
        topic: "t".to_owned(),
        record_batch: Bytes::from(vec![7u8; 1024 * 1024]),
        ..Default::default()
    };
    let mut framed = BytesMut::with_capacity(5 + request.encoded_len());
    framed.put_u8(0);
    framed.put_u32(request.encoded_len() as u32);
    request.encode(&mut framed).expect("buffer sized for it");
    framed.freeze()
}

/// Decodes one request with `codec`; returns the large reallocations meanwhile.
fn large_reallocations_decoding<C>(mut codec: C) -> usize
where
    C: Codec<Decode = v1::ProduceRequest>,
    C::Decoder: Send + 'static,
{
    let body = tonic::body::Body::new(http_body_util::Full::new(one_frame_request()));
    let mut stream = Streaming::new_request(codec.decoder(), body, None, Some(8 << 20));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let before = LARGE_REALLOCATIONS.load(Ordering::Relaxed);
    let request = runtime
        .block_on(stream.message())
        .expect("decodes")
        .expect("one message");
    let reallocations = LARGE_REALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(request.record_batch.len(), 1024 * 1024);
    assert!(request.record_batch.iter().all(|b| *b == 7));
    reallocations
}

#[test]
fn a_one_frame_batch_is_decoded_without_reallocating_its_buffer() {
    // The control: tonic's own codec copies the message again.
    let with_tonic_default = large_reallocations_decoding(tonic_prost::ProstCodec::<
        v1::ProduceResponse,
        v1::ProduceRequest,
    >::default());
    assert!(
        with_tonic_default >= 1,
        "tonic no longer reallocates here: FerrologCodec's large buffer may be unneeded"
    );
    let with_ours = large_reallocations_decoding(FerrologCodec::<
        v1::ProduceResponse,
        v1::ProduceRequest,
    >::default());
    assert_eq!(with_ours, 0);
}
