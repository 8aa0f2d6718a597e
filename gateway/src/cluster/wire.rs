//! Node-to-node messages (`im.gateway.v1.NodeMessage`) on the wire: encoded once per target
//! node, decoded with the format version checked first, so a newer node's message is skipped,
//! not misread, during a rolling upgrade.

use im_proto::im::gateway::v1::{node_message, NodeMessage};
use prost::Message;

/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why an inbound message was not acted on (each is counted by its label).
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not a `NodeMessage` at all.
    Malformed,
    /// Written by a newer gateway in a format this one does not speak.
    NewerFormat(u32),
    /// A message without a body (an older node's kind this one dropped, or a bug).
    Empty,
}

impl Skip {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NewerFormat(_) => "newer_format",
            Self::Empty => "empty",
        }
    }
}

pub fn encode(from_node: &str, traceparent: Option<&str>, body: node_message::Body) -> Vec<u8> {
    NodeMessage {
        version: FORMAT_VERSION,
        from_node: from_node.to_owned(),
        traceparent: traceparent.unwrap_or_default().to_owned(),
        sent_ms: crate::clock::unix_ms(),
        body: Some(body),
    }
    .encode_to_vec()
}

/// The message and its body, or why it is skipped.
pub fn decode(bytes: &[u8]) -> Result<(NodeMessage, node_message::Body), Skip> {
    let mut msg = NodeMessage::decode(bytes).map_err(|_| Skip::Malformed)?;
    if msg.version > FORMAT_VERSION {
        return Err(Skip::NewerFormat(msg.version));
    }
    let body = msg.body.take().ok_or(Skip::Empty)?;
    Ok((msg, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_proto::im::gateway::v1::NodeProbe;

    #[test]
    fn versions_are_checked_before_the_body() {
        let bytes = encode(
            "a",
            Some("tp"),
            node_message::Body::Probe(NodeProbe { nonce: 7 }),
        );
        let (msg, body) = decode(&bytes).unwrap();
        assert_eq!(
            (msg.from_node.as_str(), msg.traceparent.as_str()),
            ("a", "tp")
        );
        assert_eq!(body, node_message::Body::Probe(NodeProbe { nonce: 7 }));

        let newer = NodeMessage {
            version: FORMAT_VERSION + 1,
            ..NodeMessage::decode(bytes.as_slice()).unwrap()
        };
        assert_eq!(
            decode(&newer.encode_to_vec()).unwrap_err(),
            Skip::NewerFormat(FORMAT_VERSION + 1)
        );
        assert_eq!(decode(b"\xff\xff\xff").unwrap_err(), Skip::Malformed);
        let empty = NodeMessage {
            version: 1,
            ..NodeMessage::default()
        };
        assert_eq!(decode(&empty.encode_to_vec()).unwrap_err(), Skip::Empty);
    }
}
