//! Who is connected where: user -> devices -> connection handles, with the multi-device policy
//! of DESIGN §7 applied at registration. The node-local part only: cluster mode keeps its own
//! view of other nodes' connections in Redis (`cluster`, used from `push::remote`).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

pub use crate::policy::MultiDevicePolicy;
use crate::sharded::Sharded;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: String,
    pub platform: String,
}

/// One live connection of a user.
#[derive(Debug, Clone)]
pub struct Connection<H> {
    pub conn_id: u64,
    pub device: Device,
    pub handle: H,
}

const SHARDS: usize = 64;

/// The node-local registry: sharded maps, so registrations on different users rarely contend.
/// Bounded: at most `max_per_user` connections per user (the oldest is displaced beyond it);
/// the total is bounded by the gateway's connection cap.
pub struct MemoryRegistry<H> {
    policy: MultiDevicePolicy,
    max_per_user: usize,
    // RwLock per shard: pushes read, (un)registrations write; never held across `.await`.
    shards: Sharded<RwLock<HashMap<String, Vec<Connection<H>>>>>,
}

impl<H> MemoryRegistry<H> {
    pub fn new(policy: MultiDevicePolicy, max_per_user: usize) -> Self {
        Self {
            policy,
            max_per_user: max_per_user.max(1),
            shards: Sharded::new(SHARDS, RwLock::default),
        }
    }

    fn shard(&self, user: &str) -> &RwLock<HashMap<String, Vec<Connection<H>>>> {
        self.shards.of(user)
    }
}

impl<H> MemoryRegistry<H> {
    /// Visits every connection (scrape-time statistics); holds one shard's lock at a time.
    pub fn for_each(&self, mut visit: impl FnMut(&Connection<H>)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            shard.values().flatten().for_each(&mut visit);
        }
    }
}

impl<H> MemoryRegistry<H> {
    /// Visits every connection with its user (cluster mode re-registering after an outage).
    pub fn for_each_user(&self, mut visit: impl FnMut(&str, &Connection<H>)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (user, conns) in shard.iter() {
                conns.iter().for_each(|c| visit(user, c));
            }
        }
    }
}

impl<H: Clone> MemoryRegistry<H> {
    /// Every connection matching `pred`, over all users: O(connections), for rare operations
    /// such as revoking a session id.
    pub fn find(&self, pred: impl Fn(&Connection<H>) -> bool) -> Vec<Connection<H>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(shard.values().flatten().filter(|c| pred(c)).cloned());
        }
        out
    }
}

impl<H: Clone> MemoryRegistry<H> {
    /// Adds a connection; returns the ones it displaces under the policy (the caller kicks them).
    pub fn register(&self, user: &str, conn: Connection<H>) -> Vec<Connection<H>> {
        let mut shard = self
            .shard(user)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Most users have one connection: start with room for exactly one.
        let conns = shard
            .entry(user.to_owned())
            .or_insert_with(|| Vec::with_capacity(1));
        let displaced_by_policy = |c: &Connection<H>| match self.policy {
            MultiDevicePolicy::Allow => c.device.device_id == conn.device.device_id,
            MultiDevicePolicy::OnePerPlatform => {
                c.device.platform == conn.device.platform
                    || c.device.device_id == conn.device.device_id
            }
            MultiDevicePolicy::One => true,
        };
        let (mut displaced, kept): (Vec<_>, Vec<_>) =
            conns.drain(..).partition(|c| displaced_by_policy(c));
        *conns = kept;
        while conns.len() >= self.max_per_user {
            displaced.push(conns.remove(0));
        }
        conns.push(conn);
        displaced
    }

    /// Removes a connection (on close); a no-op when it was already displaced.
    pub fn unregister(&self, user: &str, conn_id: u64) {
        let mut shard = self
            .shard(user)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(conns) = shard.get_mut(user) {
            conns.retain(|c| c.conn_id != conn_id);
            if conns.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// The user's live connections (for pushes, kicks, revocation).
    pub fn connections(&self, user: &str) -> Vec<Connection<H>> {
        let shard = self
            .shard(user)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(user).cloned().unwrap_or_default()
    }

    /// Visits the user's live connections without copying them (the push fan-out path).
    /// `visit` must not call back into the registry.
    pub fn visit(&self, user: &str, visit: &mut dyn FnMut(&Connection<H>)) {
        let shard = self
            .shard(user)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for c in shard.get(user).into_iter().flatten() {
            visit(c);
        }
    }

    /// Live connections over all users.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, device: &str, platform: &str) -> Connection<u64> {
        Connection {
            conn_id: id,
            device: Device {
                device_id: device.into(),
                platform: platform.into(),
            },
            handle: id,
        }
    }

    fn ids(v: &[Connection<u64>]) -> Vec<u64> {
        v.iter().map(|c| c.conn_id).collect()
    }

    #[test]
    fn allow_keeps_every_device_but_replaces_the_same_device() {
        let r = MemoryRegistry::new(MultiDevicePolicy::Allow, 8);
        assert!(r.register("u", conn(1, "phone", "ios")).is_empty());
        assert!(r.register("u", conn(2, "laptop", "web")).is_empty());
        assert!(r.register("u", conn(3, "tablet", "ios")).is_empty());
        assert_eq!(
            ids(&r.register("u", conn(4, "phone", "ios"))),
            [1],
            "a reconnecting device replaces itself"
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn one_per_platform_kicks_the_older_session_of_that_platform() {
        let r = MemoryRegistry::new(MultiDevicePolicy::OnePerPlatform, 8);
        r.register("u", conn(1, "phone", "ios"));
        r.register("u", conn(2, "laptop", "web"));
        assert_eq!(ids(&r.register("u", conn(3, "tablet", "ios"))), [1]);
        assert_eq!(ids(&r.connections("u")), [2, 3]);
        assert!(
            r.register("v", conn(4, "phone", "ios")).is_empty(),
            "other users are untouched"
        );
    }

    #[test]
    fn one_kicks_everything_older() {
        let r = MemoryRegistry::new(MultiDevicePolicy::One, 8);
        r.register("u", conn(1, "phone", "ios"));
        assert_eq!(ids(&r.register("u", conn(2, "laptop", "web"))), [1]);
        assert_eq!(ids(&r.register("u", conn(3, "tablet", "android"))), [2]);
        assert_eq!(ids(&r.connections("u")), [3]);
    }

    #[test]
    fn bounded_per_user_and_unregister_cleans_up() {
        let r = MemoryRegistry::new(MultiDevicePolicy::Allow, 2);
        r.register("u", conn(1, "a", "web"));
        r.register("u", conn(2, "b", "web"));
        assert_eq!(ids(&r.register("u", conn(3, "c", "web"))), [1]);
        r.unregister("u", 2);
        r.unregister("u", 3);
        r.unregister("u", 99);
        assert!(r.is_empty());
        assert!(r.connections("u").is_empty());
    }
}
