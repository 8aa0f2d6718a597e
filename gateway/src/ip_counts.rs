//! Things held per client IP (open WebSocket sessions, edge connections that have not finished a
//! request head), each counted by an [`IpSlot`] that gives it back on drop. Sharded by address;
//! an entry exists only while a slot for it does, so the map is bounded by what is open. The
//! addresses are the callers' buckets (IPv6 clients as their `/64`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

const SHARDS: usize = 16;

/// Per-IP counts; take a slot with [`IpCounts::acquire`].
pub struct IpCounts {
    shards: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

impl Default for IpCounts {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// The shard of `ip`. Counted IPv6 addresses are `/64` prefixes (the low half zero), so both
/// halves are hashed: the low bits alone would put every IPv6 client in one shard.
fn shard_index(ip: IpAddr) -> usize {
    let h: u64 = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits >> 64) as u64 ^ bits as u64
        }
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize & (SHARDS - 1)
}

impl IpCounts {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.shards[shard_index(ip)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One more for `ip`, unless it already holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut shard = self.shard(ip);
        let n = shard.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                shard.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counts: self.clone(),
            ip,
        })
    }

    /// How many `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }
}

/// One counted thing of one IP; dropping it frees the count.
pub struct IpSlot {
    counts: Arc<IpCounts>,
    ip: IpAddr,
}

impl std::fmt::Debug for IpSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpSlot({})", self.ip)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut shard = self.counts.shard(self.ip);
        if let Some(n) = shard.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn a_cap_counts_frees_and_leaves_no_entry() {
        let counts = Arc::new(IpCounts::default());
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let a = counts.acquire(ip, 2).unwrap();
        let _b = counts.acquire(ip, 2).unwrap();
        assert!(counts.acquire(ip, 2).is_none());
        assert_eq!(counts.held(ip), 2);
        drop(a);
        let c = counts.acquire(ip, 2);
        assert!(c.is_some());
        drop((c, _b));
        assert!(counts.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        assert!(counts.acquire(ip, 0).is_none());
        assert!(counts.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn ipv6_prefixes_spread_over_the_shards_like_ipv4_addresses() {
        // 256 clients' /64 prefixes (low half zero, as counted) in one /48.
        let v6: HashSet<usize> = (0..256u16)
            .map(|i| {
                shard_index(IpAddr::V6(Ipv6Addr::new(
                    0x2001, 0xdb8, 0x42, i, 0, 0, 0, 0,
                )))
            })
            .collect();
        let v4: HashSet<usize> = (0..=255u8)
            .map(|i| shard_index(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i))))
            .collect();
        assert_eq!(v6.len(), SHARDS, "IPv6 prefixes use every shard");
        assert_eq!(v4.len(), SHARDS, "IPv4 addresses use every shard");
    }
}
