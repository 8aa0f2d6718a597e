//! The cluster-wide denylist: a sorted set of session ids scored by their end, read at start by
//! every node, and each revocation announced on the revocations channel.

use im_proto::im::gateway::v1::node_message;

use super::{wire, Cluster, ClusterError};

impl Cluster {
    /// Denies `sid` on every node: persisted (new nodes load it) and announced.
    pub async fn revoke(&self, sid: &str, until: u64) -> Result<(), ClusterError> {
        let key = self.keys.revoked();
        let (member, score) = (sid.to_owned(), until);
        self.link
            .run(|mut c| async move {
                redis::pipe()
                    .zadd(&key, member, score)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(crate::clock::unix_now())
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .map_err(|e| self.fail("revoke", e))?;
        let body = node_message::Body::Revoke(im_proto::im::gateway::v1::NodeRevoke {
            sid: sid.to_owned(),
            until,
        });
        let channel = self.keys.revocations_channel();
        self.publish(channel, wire::encode(&self.run.node, None, body), "revoke")
            .await
            .map(drop)
    }

    /// Session ids denied cluster-wide and still in force, with their end (at start).
    pub async fn revoked(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let key = self.keys.revoked();
        let now = crate::clock::unix_now();
        self.link
            .run(|mut c| async move { scored_from(&key, now).query_async(&mut c).await })
            .await
            .map_err(|e| self.fail("revoked", e))
            .map(|pairs: Vec<(String, f64)>| {
                pairs
                    .into_iter()
                    .map(|(sid, until)| (sid, until as u64))
                    .collect()
            })
    }
}

/// `ZRANGE key from +inf BYSCORE WITHSCORES`: the members scored `from` or later, with scores.
pub fn scored_from(key: &str, from: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(key)
        .arg(from)
        .arg("+inf")
        .arg("BYSCORE")
        .arg("WITHSCORES");
    cmd
}
