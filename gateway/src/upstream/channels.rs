//! Lazily created tonic channels, one HTTP/2 connection per endpoint address.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connect timeout to an upstream endpoint, for the dispatcher's channels and the pass-through
/// path alike; a refused or timed-out connect is provably unprocessed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Channels by endpoint address. Bounded by the endpoints of the current table (see [`Self::retain`]).
#[derive(Default)]
pub struct ChannelCache {
    // RwLock: reads on every call, writes only for a new endpoint; never held across `.await`.
    channels: RwLock<HashMap<SocketAddr, Channel>>,
}

impl ChannelCache {
    /// The channel of `addr`, created on first use. Must run inside a tokio runtime.
    pub fn get(&self, addr: SocketAddr) -> Channel {
        if let Some(ch) = self
            .channels
            .read()
            .expect("channel cache poisoned")
            .get(&addr)
        {
            return ch.clone();
        }
        let mut map = self.channels.write().expect("channel cache poisoned");
        map.entry(addr)
            .or_insert_with(|| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("socket address is a valid URI")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(false)
                    .connect_lazy()
            })
            .clone()
    }

    /// Drops channels of endpoints no longer in any pool.
    pub fn retain(&self, keep: &HashSet<SocketAddr>) {
        self.channels
            .write()
            .expect("channel cache poisoned")
            .retain(|addr, _| keep.contains(addr));
    }
}
