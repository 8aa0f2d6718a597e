//! The WebSocket push plugin (DESIGN §7–§8):
//! - [`frames`]: client and server frames in both encodings (protobuf binary, JSON text with
//!   nested payloads transcoded by the route's or the push's message type), socket-free;
//! - [`registry`]: user -> device -> connection, behind a trait cluster mode can back with Redis,
//!   with the multi-device policies;
//! - [`hub`]: the node's sessions and how to reach them;
//! - [`outbox`]: one session's bounded outbound queue;
//! - [`frame_budget`]: the per-connection frame rate limit;
//! - [`fanout`]: one push delivered to this node's sessions, encoded once per encoding;
//! - [`session`]: one connection's reader (frames -> the shared dispatcher) and writer;
//! - [`listener`]: the push listener's Pingora service and the synchronous handshake checks;
//! - [`control`]: ending sessions (deny the sid and close its sockets), for admin and PushService;
//! - [`service`]: `im.gateway.v1.PushService` for backends, behind the internal token;
//! - [`remote`]: cluster mode: sessions in the Redis registry, pushes, kicks and presence
//!   routed to the nodes holding the users, and what other nodes send here.

pub mod config;
pub mod control;
pub mod fanout;
pub mod frame_budget;
pub mod frames;
pub mod handshake;
pub mod hub;
pub mod listener;
pub mod outbox;
pub mod registry;
pub mod remote;
pub mod service;
pub mod session;
#[cfg(test)]
mod session_tests;

use std::sync::Arc;

use crate::pipeline::Pipeline;
use crate::routes::RouteStore;

pub use config::PushConfig;
pub use hub::Hub;

/// What sessions, the listener and PushService share.
pub struct PushDeps {
    pub config: PushConfig,
    pub routes: Arc<RouteStore>,
    pub pipeline: Pipeline,
    pub hub: Hub,
    /// Cluster mode (`cluster:` in gateway.yaml); `None` on a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}
