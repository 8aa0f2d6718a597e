//! The WebSocket push plugin (DESIGN §7–§8), built socket-free first:
//! - [`frames`]: client and server frames in both encodings (protobuf binary, JSON text with
//!   nested payloads transcoded by the route's or the push's message type);
//! - [`registry`]: user -> device -> connection, behind a trait cluster mode can back with Redis,
//!   with the multi-device policies.
//!
//! The push listener, sessions and PushService that use them are the rest of issue #4.

pub mod frames;
pub mod registry;
