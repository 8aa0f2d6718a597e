//! What Redis holds for the cluster, and its names. Every name starts with `cluster.prefix`.
//!
//! - `<p>u:{<user>}`: hash, one field per live connection of the user anywhere in the cluster,
//!   `<node>/<epoch>/<conn_id>` -> `<device_id>\t<platform>`. The user is the hash tag, so on
//!   Redis Cluster one user's key sits in one slot and the registration script touches one slot.
//!   Refreshed at every registration; expires [`USER_KEY_TTL_MS`] after the last one.
//! - `<p>nodes`: sorted set of live nodes, `<node>/<epoch>` scored by the unix ms their liveness
//!   lapses at; renewed every heartbeat. An entry whose node is not in it (or lapsed) does not
//!   count, whatever the user hash still says.
//! - `<p>leaving`: sorted set of the node runs draining (announced leave), scored as `nodes`.
//! - `<p>revoked`: sorted set of denied session ids scored by the unix seconds they lapse at.
//! - channels: `<p>node:<node>` for messages to one node, `<p>revocations` for every node.

/// How long a user's registry key outlives its last registration (entries of dead nodes stop
/// counting at once; the key itself goes away on its own by then).
pub const USER_KEY_TTL_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn user(&self, user: &str) -> String {
        format!("{}u:{{{user}}}", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// Node runs that announced their leave (SIGTERM), scored like `nodes`.
    pub fn leaving(&self) -> String {
        format!("{}leaving", self.prefix)
    }

    pub fn revoked(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    pub fn node_channel(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    pub fn revocations_channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first
/// `{` and the next `}`, when not empty), else of the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key.find('{').and_then(|open| {
        let close = key[open + 1..].find('}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % 16384
}

/// Tabs would split a registry value: they become spaces (ids with tabs are not worth an error).
pub fn clean(id: &str) -> String {
    id.replace('\t', " ")
}

/// One node run: its id and the epoch (unix ms) it started at. A restarted node is a new member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRun {
    pub node: String,
    pub epoch: u64,
}

impl NodeRun {
    pub fn member(&self) -> String {
        format!("{}/{}", self.node, self.epoch)
    }

    pub fn parse_member(member: &str) -> Option<Self> {
        let (node, epoch) = member.rsplit_once('/')?;
        Some(Self {
            node: node.to_owned(),
            epoch: epoch.parse().ok()?,
        })
    }
}

/// One connection as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub run: NodeRun,
    pub conn_id: u64,
    pub device_id: String,
    pub platform: String,
}

impl Entry {
    pub fn field(run: &NodeRun, conn_id: u64) -> String {
        format!("{}/{conn_id}", run.member())
    }

    pub fn value(device_id: &str, platform: &str) -> String {
        format!("{}\t{}", clean(device_id), clean(platform))
    }

    /// An entry from its hash field and value; `None` for anything malformed.
    pub fn parse(field: &str, value: &str) -> Option<Self> {
        let (member, conn) = field.rsplit_once('/')?;
        let (device_id, platform) = value.split_once('\t')?;
        Some(Self {
            run: NodeRun::parse_member(member)?,
            conn_id: conn.parse().ok()?,
            device_id: device_id.to_owned(),
            platform: platform.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_entries_round_trip() {
        let k = Keys::new("im:");
        assert_eq!(k.user("alice"), "im:u:{alice}");
        assert_eq!(k.node_channel("n1"), "im:node:n1");
        let run = NodeRun {
            node: "gw-1".into(),
            epoch: 1700000000123,
        };
        assert_eq!(NodeRun::parse_member(&run.member()), Some(run.clone()));
        let e = Entry::parse(&Entry::field(&run, 42), &Entry::value("d\t1", "ios")).unwrap();
        assert_eq!((e.run, e.conn_id), (run, 42));
        assert_eq!((e.device_id.as_str(), e.platform.as_str()), ("d 1", "ios"));
        assert_eq!(Entry::parse("junk", "d\tp"), None);
        assert_eq!(Entry::parse("n/1/x", "d\tp"), None);
        assert_eq!(Entry::parse("n/1/2", "no tab"), None);
    }

    #[test]
    fn slots_are_redis_s() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot("somekey"), 11058);
        assert_eq!(slot("foo{hash_tag}"), 2515);
        assert_eq!(slot("bar{hash_tag}"), 2515);
        assert_eq!(slot("im:u:{alice}"), slot("alice"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(
            slot("a{}b"),
            crc16::State::<crc16::XMODEM>::calculate(b"a{}b") % 16384
        );
    }
}
