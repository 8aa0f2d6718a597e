//! Protocol buffers of the IM system.
//!
//! - the prost/tonic types of every package under `proto/im/`;
//! - [`DESCRIPTOR_SET`], the encoded `FileDescriptorSet` of the same files, which the gateway embeds
//!   as its default for JSON transcoding and route validation;
//! - [`codec::PassThroughCodec`], tonic's codec for messages kept as bytes.

pub mod codec;

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` in this crate.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/im_descriptor.bin"));

pub mod im {
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("im.gateway.v1");
        }
    }
    pub mod echo {
        pub mod v1 {
            tonic::include_proto!("im.echo.v1");
        }
    }
    pub mod user {
        pub mod v1 {
            tonic::include_proto!("im.user.v1");
        }
    }
    pub mod friend {
        pub mod v1 {
            tonic::include_proto!("im.friend.v1");
        }
    }
    pub mod message {
        pub mod v1 {
            tonic::include_proto!("im.message.v1");
        }
    }
    pub mod file {
        pub mod v1 {
            tonic::include_proto!("im.file.v1");
        }
    }
    pub mod speech {
        pub mod v1 {
            tonic::include_proto!("im.speech.v1");
        }
    }
}
