//! A tonic codec that passes message bytes through untouched, the one the workspace uses: the
//! gateway compiles in no business schema and forwards what the client sent (or what JSON
//! transcoding produced); the span exporter sends requests it encoded itself.

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

#[derive(Debug, Clone, Copy, Default)]
pub struct PassThroughCodec;

impl Codec for PassThroughCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThroughCodec;
    type Decoder = PassThroughCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for PassThroughCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        small_buffers()
    }
}

/// IM messages are small: start each call's buffers at 1 KiB (tonic's default is 8 KiB, which
/// with thousands of calls in flight is memory held for nothing); they grow for larger ones.
fn small_buffers() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

impl Decoder for PassThroughCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        small_buffers()
    }
}
