//! The protobuf descriptor set used to validate `grpc:` targets and to transcode JSON.

use std::path::Path;

use prost_reflect::DescriptorPool;

/// Decodes a descriptor set: the configured file when given, else the one embedded from `proto/`.
/// Returns the pool and the raw bytes (they feed the table's version hash).
pub fn load(path: Option<&Path>) -> Result<(DescriptorPool, Vec<u8>), String> {
    let bytes = match path {
        Some(p) => std::fs::read(p)
            .map_err(|e| format!("cannot read descriptor set {}: {e}", p.display()))?,
        None => im_proto::DESCRIPTOR_SET.to_vec(),
    };
    let pool = DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
        let origin = path.map_or("embedded".into(), |p| p.display().to_string());
        format!("descriptor set {origin} is not a valid FileDescriptorSet: {e}")
    })?;
    Ok((pool, bytes))
}
