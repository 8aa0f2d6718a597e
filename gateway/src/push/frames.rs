//! WebSocket frames (`im.gateway.v1.ClientFrame` / `ServerFrame`), decoded and encoded without
//! sockets. Binary messages carry protobuf; JSON text messages carry the same frames in the JSON
//! of DESIGN §4 with `payload` as a nested object, transcoded with the route method's input and
//! output types (requests, responses) or with the push's `payload_type`.

use std::sync::Arc;

use bytes::Bytes;
use im_proto::im::gateway::v1::{server_frame, ClientFrame, Push, Response, ServerFrame};
use prost::Message;
use prost_reflect::DescriptorPool;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tonic::Code;

use crate::dispatch::code_name;
use crate::pipeline::{self, transcode, usable_traceparent, CallError, Request};
use crate::routes::{RouteTable, UnaryRoute};

/// The encoding a session speaks, chosen at the handshake: the pipeline's.
pub use crate::pipeline::Encoding as FrameEncoding;

/// One WebSocket data message as received.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    Binary(&'a [u8]),
    Text(&'a str),
}

/// A request frame resolved to its route, with the payload as the route's request message bytes.
pub struct ClientRequest {
    pub seq: u64,
    pub route: Arc<UnaryRoute>,
    pub payload: Bytes,
    /// The frame's `traceparent`, when it carried a usable one.
    pub traceparent: Option<String>,
}

/// Why a frame got an error response instead of a dispatch; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// 0 when the frame itself could not be read.
    pub seq: u64,
    pub code: Code,
    pub message: String,
}

impl FrameError {
    /// The pipeline's error, answered for the frame `seq`.
    pub fn of(seq: u64, e: CallError) -> Self {
        Self {
            seq,
            code: e.code,
            message: e.message,
        }
    }
}

fn error(seq: u64, code: Code, message: impl Into<String>) -> FrameError {
    FrameError {
        seq,
        code,
        message: message.into(),
    }
}

/// Decodes a client frame in the session's encoding and resolves its `cmd` in `table`.
pub fn decode_request(
    inbound: Inbound<'_>,
    encoding: FrameEncoding,
    version: u8,
    table: &RouteTable,
) -> Result<ClientRequest, FrameError> {
    match (encoding, inbound) {
        (FrameEncoding::Proto, Inbound::Binary(bytes)) => decode_binary(bytes, version, table),
        (FrameEncoding::Json, Inbound::Text(text)) => decode_text(text, version, table),
        (FrameEncoding::Proto, Inbound::Text(_)) => Err(error(
            0,
            Code::InvalidArgument,
            "this session speaks protobuf: send binary messages (or connect with encoding=json)",
        )),
        (FrameEncoding::Json, Inbound::Binary(_)) => Err(error(
            0,
            Code::InvalidArgument,
            "this session speaks JSON: send text messages (or connect with encoding=proto)",
        )),
    }
}

/// A `ClientFrame` in protobuf.
fn decode_binary(
    bytes: &[u8],
    version: u8,
    table: &RouteTable,
) -> Result<ClientRequest, FrameError> {
    let frame = ClientFrame::decode(bytes).map_err(|e| {
        error(
            0,
            Code::InvalidArgument,
            format!("undecodable ClientFrame: {e}"),
        )
    })?;
    let route = resolve(table, version, frame.seq, frame.cmd)?;
    within_max_body(&route, frame.seq, frame.payload.len())?;
    let payload = pipeline::decode(&route, Request::Proto(frame.payload.into()))
        .map_err(|e| FrameError::of(frame.seq, e))?;
    Ok(ClientRequest {
        seq: frame.seq,
        route,
        payload,
        traceparent: usable_traceparent(&frame.traceparent),
    })
}

/// A frame in JSON: `{seq, cmd, payload, traceparent}`, nothing else.
fn decode_text(text: &str, version: u8, table: &RouteTable) -> Result<ClientRequest, FrameError> {
    let invalid = |seq: u64, message: &str| error(seq, Code::InvalidArgument, message);
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(text) else {
        return Err(invalid(0, "a frame is a JSON object {seq, cmd, payload}"));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "seq" | "cmd" | "payload" | "traceparent"))
    {
        return Err(invalid(0, &format!("unknown frame field `{k}`")));
    }
    let seq = match obj.get("seq") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        None => Some(0),
        _ => None,
    }
    .ok_or_else(|| invalid(0, "`seq` must be an unsigned integer"))?;
    let cmd = obj
        .get("cmd")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| invalid(seq, "`cmd` must be an unsigned 32-bit integer"))?;
    let route = resolve(table, version, seq, cmd)?;
    // The frame as received, like an HTTP body against the same route.
    within_max_body(&route, seq, text.len())?;
    let payload = match obj.remove("payload") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(invalid(seq, "`payload` must be a JSON object")),
    };
    let payload = pipeline::decode(&route, Request::JsonValue(payload))
        .map_err(|e| FrameError::of(seq, e))?;
    let traceparent = obj
        .get("traceparent")
        .and_then(Value::as_str)
        .and_then(usable_traceparent);
    Ok(ClientRequest {
        seq,
        route,
        payload,
        traceparent,
    })
}

fn resolve(
    table: &RouteTable,
    version: u8,
    seq: u64,
    cmd: u32,
) -> Result<Arc<UnaryRoute>, FrameError> {
    table
        .match_cmd(cmd, version)
        .cloned()
        .ok_or_else(|| error(seq, Code::Unimplemented, format!("unknown cmd {cmd}")))
}

/// A cmd frame obeys its route's `max_body` like an HTTP body does (the socket-level
/// `push.max_message` and its 1009 close stay for frames past that): RESOURCE_EXHAUSTED for its
/// `seq`, and the connection stays.
fn within_max_body(route: &UnaryRoute, seq: u64, len: usize) -> Result<(), FrameError> {
    if len as u64 > route.max_body {
        return Err(FrameError::of(seq, CallError::too_large(route, Some(len))));
    }
    Ok(())
}

/// The bytes of one outgoing message, ready to send as binary (protobuf) or text (JSON).
/// Both are reference-counted, so one push frame is shared by every recipient, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Binary(Bytes),
    Text(Utf8Bytes),
}

impl Outbound {
    pub fn len(&self) -> usize {
        match self {
            Self::Binary(b) => b.len(),
            Self::Text(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `seq` of a frame, best effort (0 when unreadable): for answering a frame that is refused
/// before it is decoded in full (rate limit).
pub fn peek_seq(inbound: Inbound<'_>) -> u64 {
    match inbound {
        Inbound::Binary(b) => ClientFrame::decode(b).map_or(0, |f| f.seq),
        Inbound::Text(t) => serde_json::from_str::<Value>(t)
            .ok()
            .and_then(|v| match &v["seq"] {
                Value::String(s) => s.parse().ok(),
                other => other.as_u64(),
            })
            .unwrap_or(0),
    }
}

/// An error response (no payload).
pub fn encode_error(encoding: FrameEncoding, seq: u64, code: Code, message: &str) -> Outbound {
    response_frame(encoding, seq, code, message, Vec::new(), None)
}

/// The OK response to a request: the reply as the pipeline encoded it for this session
/// (protobuf bytes, or JSON nested as `payload`).
pub fn encode_reply(encoding: FrameEncoding, seq: u64, reply: Bytes) -> Outbound {
    match encoding {
        FrameEncoding::Proto => response_frame(encoding, seq, Code::Ok, "", reply.to_vec(), None),
        FrameEncoding::Json => {
            response_frame(encoding, seq, Code::Ok, "", Vec::new(), Some(&reply))
        }
    }
}

/// A response frame; `payload` (protobuf) or `payload_json` (JSON) only for OK answers.
fn response_frame(
    encoding: FrameEncoding,
    seq: u64,
    code: Code,
    message: &str,
    payload: Vec<u8>,
    payload_json: Option<&[u8]>,
) -> Outbound {
    match encoding {
        FrameEncoding::Proto => Outbound::Binary(
            ServerFrame {
                body: Some(server_frame::Body::Response(Response {
                    seq,
                    code: code as i32,
                    message: message.to_owned(),
                    payload,
                })),
            }
            .encode_to_vec()
            .into(),
        ),
        FrameEncoding::Json => Outbound::Text(
            format!(
                r#"{{"response":{{"seq":"{seq}","code":"{}","message":{},"payload":{}}}}}"#,
                code_name(code),
                Value::String(message.to_owned()),
                payload_json.map_or(std::borrow::Cow::Borrowed("{}"), String::from_utf8_lossy)
            )
            .into(),
        ),
    }
}

/// A push frame in one encoding. JSON needs `payload_type` in `pool`; an unknown type is an
/// INVALID_ARGUMENT for the PushService caller. Encode once per encoding and share the result.
pub fn encode_push(
    encoding: FrameEncoding,
    push: &Push,
    pool: &DescriptorPool,
) -> Result<Outbound, String> {
    match encoding {
        FrameEncoding::Proto => Ok(Outbound::Binary(
            ServerFrame {
                body: Some(server_frame::Body::Push(push.clone())),
            }
            .encode_to_vec()
            .into(),
        )),
        FrameEncoding::Json => {
            let desc = pool
                .get_message_by_name(&push.payload_type)
                .ok_or_else(|| format!("unknown payload_type `{}`", push.payload_type))?;
            let payload = transcode::proto_to_json(&desc, &push.payload)?;
            Ok(Outbound::Text(
                format!(
                    r#"{{"push":{{"id":{},"kind":{},"payload_type":{},"payload":{},"ts":"{}"}}}}"#,
                    Value::String(push.id.clone()),
                    Value::String(push.kind.clone()),
                    Value::String(push.payload_type.clone()),
                    String::from_utf8_lossy(&payload),
                    push.ts
                )
                .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Registries;
    use im_proto::im::echo::v1::{EchoReply, EchoRequest};
    use im_proto::im::gateway::v1::SessionKicked;

    fn table() -> RouteTable {
        let (pool, bytes) = crate::routes::descriptors::load(None).unwrap();
        let text = r#"
upstreams: { echo: { endpoints: ["127.0.0.1:1"] } }
routes:
  - { name: echo, cmd: 7, upstream: echo, grpc: im.echo.v1.EchoService/Echo }
"#;
        RouteTable::build(text, pool, &bytes, &Registries::default()).unwrap()
    }

    fn frame(seq: u64, cmd: u32, payload: Vec<u8>) -> Vec<u8> {
        ClientFrame {
            seq,
            cmd,
            payload,
            traceparent: String::new(),
        }
        .encode_to_vec()
    }

    #[test]
    fn binary_request_resolves_its_route() {
        let t = table();
        let payload = EchoRequest {
            text: "hi".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let bytes = frame(42, 7, payload.clone());
        let req = decode_request(Inbound::Binary(&bytes), FrameEncoding::Proto, 1, &t).unwrap();
        assert_eq!((req.seq, req.route.name.as_str()), (42, "echo"));
        assert_eq!(req.payload.as_ref(), payload.as_slice());
    }

    #[test]
    fn json_request_transcodes_the_nested_payload() {
        let t = table();
        let text = r#"{"seq": "9", "cmd": 7, "payload": {"text": "hi", "delayMs": 3}}"#;
        let req = decode_request(Inbound::Text(text), FrameEncoding::Json, 1, &t).unwrap();
        let msg = EchoRequest::decode(req.payload).unwrap();
        assert_eq!((req.seq, msg.text.as_str(), msg.delay_ms), (9, "hi", 3));
    }

    #[test]
    fn bad_frames_get_errors_not_panics() {
        let t = table();
        let err = |i, e| decode_request(i, e, 1, &t).err().unwrap();
        assert_eq!(
            err(Inbound::Binary(&[0xff, 0xff, 0xff]), FrameEncoding::Proto).seq,
            0
        );
        let unknown = frame(5, 99, vec![]);
        let e = err(Inbound::Binary(&unknown), FrameEncoding::Proto);
        assert_eq!((e.seq, e.code), (5, Code::Unimplemented));
        let garbage_payload = frame(6, 7, vec![0xff, 0xff]);
        assert_eq!(
            err(Inbound::Binary(&garbage_payload), FrameEncoding::Proto).code,
            Code::InvalidArgument
        );
        for text in [
            "not json",
            "[1]",
            r#"{"seq":1,"cmd":7,"extra":1}"#,
            r#"{"seq":-1,"cmd":7}"#,
            r#"{"seq":1,"cmd":7,"payload":{"nope":1}}"#,
        ] {
            assert_eq!(
                err(Inbound::Text(text), FrameEncoding::Json).code,
                Code::InvalidArgument,
                "{text}"
            );
        }
        assert_eq!(
            err(Inbound::Text("{}"), FrameEncoding::Proto).code,
            Code::InvalidArgument
        );
        assert_eq!(
            err(Inbound::Binary(b"{}"), FrameEncoding::Json).code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn responses_in_both_encodings() {
        let t = table();
        let route = t.match_cmd(7, 1).unwrap();
        let reply = EchoReply {
            text: "ok".into(),
            number: 5,
            ..Default::default()
        }
        .encode_to_vec();
        let Outbound::Binary(b) = encode_reply(FrameEncoding::Proto, 3, reply.clone().into())
        else {
            panic!("binary expected")
        };
        let Some(server_frame::Body::Response(r)) = ServerFrame::decode(b).unwrap().body else {
            panic!()
        };
        assert_eq!((r.seq, r.code, r.payload), (3, 0, reply.clone()));

        let json = transcode::proto_to_json(&route.method.output(), &reply).unwrap();
        let Outbound::Text(t) = encode_reply(FrameEncoding::Json, 3, json.into()) else {
            panic!("text expected")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["response"]["seq"], "3");
        assert_eq!(v["response"]["code"], "OK");
        assert_eq!(v["response"]["payload"]["text"], "ok");
        assert_eq!(v["response"]["payload"]["number"], "5");
        assert_eq!(v["response"]["payload"]["flag"], false);

        let Outbound::Text(t) =
            encode_error(FrameEncoding::Json, 4, Code::NotFound, "no \"such\" user")
        else {
            panic!()
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            (
                v["response"]["code"].as_str(),
                v["response"]["message"].as_str()
            ),
            (Some("NOT_FOUND"), Some("no \"such\" user"))
        );
    }

    #[test]
    fn pushes_in_both_encodings_and_unknown_types_rejected() {
        let t = table();
        let push = Push {
            id: "p1".into(),
            kind: "session_kicked".into(),
            payload_type: "im.gateway.v1.SessionKicked".into(),
            payload: SessionKicked {
                reason: "new login".into(),
                by_device_id: "d2".into(),
            }
            .encode_to_vec(),
            ts: 1_700_000_000_000,
        };
        let Outbound::Text(text) = encode_push(FrameEncoding::Json, &push, &t.descriptors).unwrap()
        else {
            panic!()
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["push"]["payload"]["by_device_id"], "d2");
        assert_eq!(v["push"]["ts"], "1700000000000");
        let Outbound::Binary(b) = encode_push(FrameEncoding::Proto, &push, &t.descriptors).unwrap()
        else {
            panic!()
        };
        assert!(
            matches!(ServerFrame::decode(b).unwrap().body, Some(server_frame::Body::Push(p)) if p.id == "p1")
        );
        let unknown = Push {
            payload_type: "im.nope.v1.X".into(),
            ..push
        };
        assert!(encode_push(FrameEncoding::Json, &unknown, &t.descriptors)
            .unwrap_err()
            .contains("unknown payload_type"));
    }
}
