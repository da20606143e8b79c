//! A gRPC codec that hands over protobuf messages as their wire bytes, undecoded.
//!
//! The Dispatcher answers most calls with the Object it was sent. Keeping the request's bytes
//! and writing them back is both faster than decode + re-encode and exact: fields newer than our
//! schema, field order and unknown records all survive.

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// One protobuf message as it travels on the wire.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawMessage {
    bytes: Bytes,
}

impl RawMessage {
    /// Wraps encoded protobuf bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
        }
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded message, consuming the wrapper.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
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
