//! Lazily created tonic channels, one HTTP/2 connection per endpoint address.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connect timeout to an upstream endpoint, for the dispatcher's channels and the pass-through
/// path alike; a refused or timed-out connect is provably unprocessed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The h2c endpoint of `addr` (a socket address always makes a valid URI; the error is kept
/// rather than assumed away).
pub fn endpoint_of(addr: SocketAddr) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("endpoint {addr}: {e}"))
}

/// Channels by endpoint address. Bounded by the endpoints of the current table (see [`Self::retain`]).
#[derive(Default)]
pub struct ChannelCache {
    // RwLock: reads on every call, writes only for a new endpoint; never held across `.await`.
    channels: RwLock<HashMap<SocketAddr, Channel>>,
}

impl ChannelCache {
    /// The channel of `addr`, created on first use. Must run inside a tokio runtime.
    pub fn get(&self, addr: SocketAddr) -> Result<Channel, String> {
        if let Some(ch) = self
            .channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
        {
            return Ok(ch.clone());
        }
        let mut map = self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ch) = map.get(&addr) {
            return Ok(ch.clone());
        }
        let channel = endpoint_of(addr)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .connect_lazy();
        map.insert(addr, channel.clone());
        Ok(channel)
    }

    /// Drops channels of endpoints no longer in any pool.
    pub fn retain(&self, keep: &HashSet<SocketAddr>) {
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|addr, _| keep.contains(addr));
    }
}
