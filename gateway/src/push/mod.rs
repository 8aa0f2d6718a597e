//! The WebSocket push plugin (DESIGN §7–§8):
//! - [`frames`]: client and server frames in both encodings (protobuf binary, JSON text with
//!   nested payloads transcoded by the route's or the push's message type), socket-free;
//! - [`registry`]: this node's user -> device -> connection map, with the multi-device
//!   policies (cluster mode's view of other nodes is in `cluster`);
//! - [`hub`]: the node's sessions and how to reach them;
//! - [`outbox`]: one session's bounded outbound queue;
//! - [`frame_budget`]: the per-connection frame rate limit;
//! - [`fanout`]: one push delivered to this node's sessions, encoded once per encoding;
//! - [`handshake`]: the upgrade's query and what it establishes ([`handshake::SessionInfo`]);
//! - [`session`]: one connection's reader and writer; [`cmd`]: its request frames through the
//!   shared dispatcher;
//! - [`listener`]: the push listener's Pingora service and the synchronous handshake checks;
//! - [`control`]: ending sessions (deny the sid and close its sockets), for admin and PushService;
//! - [`service`]: `im.gateway.v1.PushService` for backends, behind the internal token;
//!   [`runtime`]: the listener's Pingora service with PushService on its runtime;
//! - [`remote`]: cluster mode: sessions in the Redis registry, pushes, kicks and presence
//!   routed to the nodes holding the users, and what other nodes send here; `forward`: a push
//!   followed up for users who moved while it was sent.

pub mod cmd;
pub mod config;
pub mod control;
pub mod fanout;
mod forward;
pub mod frame_budget;
pub mod frames;
pub mod handshake;
pub mod hub;
pub mod listener;
pub mod outbox;
pub mod registry;
pub mod remote;
pub mod runtime;
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
