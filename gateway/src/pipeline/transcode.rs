//! JSON <-> protobuf for the bridge, with prost-reflect and the JSON choices of DESIGN §4:
//! output uses proto field names and includes default values; input accepts proto and
//! lowerCamelCase names and rejects unknown fields by name; 64-bit integers are strings.

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

const SERIALIZE: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false)
    .stringify_64_bit_integers(true);
const DESERIALIZE: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(true);

/// Encodes a JSON body as the protobuf message `desc`.
pub fn json_to_proto(desc: &MessageDescriptor, json: &[u8]) -> Result<Bytes, String> {
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        json
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &DESERIALIZE)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| format!("invalid JSON for {}: {e}", desc.full_name()))?;
    Ok(msg.encode_to_vec().into())
}

/// Encodes an already parsed JSON value (a WebSocket frame's nested `payload`) as message `desc`.
pub fn json_value_to_proto(
    desc: &MessageDescriptor,
    value: serde_json::Value,
) -> Result<Bytes, String> {
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), value, &DESERIALIZE)
        .map_err(|e| format!("invalid JSON for {}: {e}", desc.full_name()))?;
    Ok(msg.encode_to_vec().into())
}

/// Renders protobuf bytes of message `desc` as JSON.
pub fn proto_to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("undecodable {}: {e}", desc.full_name()))?;
    let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &SERIALIZE)
        .map_err(|e| format!("cannot render {} as JSON: {e}", desc.full_name()))?;
    Ok(out)
}

/// Checks that a protobuf body is a well-formed message `desc` (so garbage is a 400, not a
/// backend call), with bounded allocation: see [`super::wire`].
pub fn check_proto(desc: &MessageDescriptor, bytes: &[u8]) -> Result<(), String> {
    super::wire::validate(desc, bytes)
        .map_err(|e| format!("body is not a valid {}: {e}", desc.full_name()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    /// A message of the embedded descriptor set (the bridge's tests share it).
    pub(crate) fn desc(name: &str) -> MessageDescriptor {
        DescriptorPool::decode(im_proto::DESCRIPTOR_SET)
            .unwrap()
            .get_message_by_name(name)
            .unwrap()
    }

    #[test]
    fn accepts_both_name_styles_and_renders_proto_names_with_defaults() {
        let req = desc("im.echo.v1.EchoRequest");
        let bytes = json_to_proto(&req, br#"{"text":"hi","delayMs":0,"number":"12"}"#).unwrap();
        let reply = desc("im.echo.v1.EchoReply");
        let json: serde_json::Value =
            serde_json::from_slice(&proto_to_json(&reply, &bytes).unwrap()).unwrap();
        assert_eq!(json["text"], "hi");
        assert_eq!(json["number"], "12");
        assert_eq!(json["flag"], false);
        assert_eq!(json["tags"], serde_json::json!([]));
        assert_eq!(json["served_by"], "");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = json_to_proto(&desc("im.echo.v1.EchoRequest"), br#"{"txet":"hi"}"#).unwrap_err();
        assert!(err.contains("txet"), "{err}");
    }

    #[test]
    fn trailing_garbage_and_wrong_types_rejected() {
        let d = desc("im.echo.v1.EchoRequest");
        assert!(json_to_proto(&d, br#"{"text":"hi"} x"#).is_err());
        assert!(json_to_proto(&d, br#"{"flag":"yes"}"#).is_err());
        assert!(json_to_proto(&d, b"").is_ok());
    }

    #[test]
    fn garbage_protobuf_rejected() {
        let d = desc("im.echo.v1.EchoRequest");
        assert!(check_proto(&d, &[0xff, 0xff, 0xff]).is_err());
        assert!(check_proto(&d, &[]).is_ok());
    }
}
