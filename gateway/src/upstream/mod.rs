//! Upstream pools: endpoint selection ([`pool`]), active and passive health ([`health`]), and the
//! tonic channels the dispatcher calls through ([`channels`]).

pub mod channels;
pub mod health;
pub mod pool;

pub use channels::ChannelCache;
pub use health::{EndpointState, HealthCheck, HealthRegistry};
pub use pool::{Endpoint, Upstream};
