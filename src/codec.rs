//! A gRPC codec that hands over protobuf messages as their wire bytes, undecoded.
//!
//! The Dispatcher answers most calls with the Object it was sent. Keeping the request's bytes
//! and writing them back is both faster than decode + re-encode and exact: fields newer than our
//! schema, field order and unknown records all survive.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// One protobuf message as it travels on the wire.
///
/// It may carry a guard (such as a share of the in-flight byte budget) that is released only
/// after the message has been written out.
#[derive(Default)]
pub struct RawMessage {
    bytes: Bytes,
    guard: Option<Box<dyn Send + Sync>>,
}

impl RawMessage {
    /// Wraps encoded protobuf bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            guard: None,
        }
    }

    /// Keeps `guard` alive until this message has been encoded for sending.
    #[must_use]
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded message, consuming the wrapper (and releasing any guard).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMessage")
            .field("len", &self.bytes.len())
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

/// The codec for [`RawMessage`] in both directions.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = RawMessage;
    type Decode = RawMessage;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = RawMessage;
    type Error = Status;

    fn encode(&mut self, item: RawMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.bytes.len());
        dst.put_slice(&item.bytes);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = RawMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RawMessage>, Status> {
        // Splits the frame off tonic's receive buffer: no copy.
        Ok(Some(RawMessage::new(src.copy_to_bytes(src.remaining()))))
    }
}
