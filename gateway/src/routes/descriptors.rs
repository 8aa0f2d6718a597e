//! The protobuf descriptor set used to validate `grpc:` targets and to transcode JSON.

use std::path::{Path, PathBuf};

use prost_reflect::DescriptorPool;

/// Why a descriptor set could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("cannot read descriptor set {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("descriptor set {origin} is not a valid FileDescriptorSet: {source}")]
    Decode {
        /// The file, or `embedded`.
        origin: String,
        source: prost_reflect::DescriptorError,
    },
}

/// Decodes a descriptor set: the configured file when given, else the one embedded from `proto/`.
/// Returns the pool and the raw bytes (they feed the table's version hash).
pub fn load(path: Option<&Path>) -> Result<(DescriptorPool, Vec<u8>), DescriptorError> {
    let bytes = match path {
        Some(p) => std::fs::read(p).map_err(|source| DescriptorError::Read {
            path: p.to_owned(),
            source,
        })?,
        None => im_proto::DESCRIPTOR_SET.to_vec(),
    };
    let pool =
        DescriptorPool::decode(bytes.as_slice()).map_err(|source| DescriptorError::Decode {
            origin: path.map_or("embedded".into(), |p| p.display().to_string()),
            source,
        })?;
    Ok((pool, bytes))
}
