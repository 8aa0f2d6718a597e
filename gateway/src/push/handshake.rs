//! The parts of a WebSocket handshake that are pure functions of the request: the query string,
//! the `Origin` rule, the device the token allows, and the encoding negotiated from `?encoding=`
//! and `Sec-WebSocket-Protocol`. The listener strings them together with the stateful checks
//! (rates, caps, token verification).

use super::frames::FrameEncoding;
use super::registry::Device;
use crate::filters::auth::Identity;

/// The handshake's query parameters, `%XX`-decoded; the first of a repeated name wins.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `%XX` and `+` decoding of one query value (tokens and ids are usually plain); a malformed
/// escape is kept as written.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Browsers send `Origin`; when origins are configured, one of them (or `*`) must match.
/// Clients that send none (native apps) pass: the token is what authenticates them.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        Some(origin) if !allowed.is_empty() => allowed.iter().any(|o| o == origin || o == "*"),
        _ => true,
    }
}

/// The device slot the session takes: what the query asks for, which must agree with what the
/// token claims; the token's claim, or a default, when the query is silent.
pub fn device_for(identity: &Identity, query: &Query) -> Result<Device, String> {
    let asked_device = query.get("device_id");
    let asked_platform = query.get("platform");
    for (asked, claimed, what) in [
        (asked_device, &identity.device_id, "device_id"),
        (asked_platform, &identity.platform, "platform"),
    ] {
        if let (Some(a), Some(c)) = (asked, claimed) {
            if a != c {
                return Err(format!("{what} does not match the token"));
            }
        }
    }
    let pick = |asked: Option<&str>, claimed: &Option<String>, default: &str| {
        asked
            .map(str::to_owned)
            .or_else(|| claimed.clone())
            .unwrap_or_else(|| default.to_owned())
    };
    Ok(Device {
        device_id: pick(asked_device, &identity.device_id, "default"),
        platform: pick(asked_platform, &identity.platform, "unknown"),
    })
}

/// The subprotocols of each encoding.
const JSON_PROTOCOL: &str = "im.v1.json";
const PROTO_PROTOCOL: &str = "im.v1.proto";

/// The frame encoding and the subprotocol to echo (only one the client offered). `?encoding=`
/// wins over the offered subprotocols; without either, protobuf.
pub fn negotiate_encoding(
    param: Option<&str>,
    offered: Option<&str>,
) -> Result<(FrameEncoding, Option<&'static str>), String> {
    let offered: Vec<&str> = offered
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let encoding = match param {
        Some("json") => FrameEncoding::Json,
        Some("proto") => FrameEncoding::Proto,
        None if offered.contains(&JSON_PROTOCOL) => FrameEncoding::Json,
        None => FrameEncoding::Proto,
        Some(other) => return Err(format!("encoding `{other}`: use proto or json")),
    };
    let chosen = match encoding {
        FrameEncoding::Json => JSON_PROTOCOL,
        FrameEncoding::Proto => PROTO_PROTOCOL,
    };
    Ok((encoding, offered.contains(&chosen).then_some(chosen)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e4%bd%a0"), "你");
        let q = Query::parse(Some("token=a%2Bb&x&device_id=d1&device_id=d2"));
        assert_eq!(q.get("token"), Some("a+b"));
        assert_eq!(q.get("device_id"), Some("d1"));
        assert_eq!(q.get("x"), None);
        assert_eq!(Query::parse(None).get("token"), None);
    }

    #[test]
    fn encoding_follows_the_parameter_then_the_subprotocol() {
        let n = |p, o| negotiate_encoding(p, o).map(|(e, echo)| (e == FrameEncoding::Json, echo));
        assert_eq!(n(None, None), Ok((false, None)));
        assert_eq!(n(None, Some("im.v1.json")), Ok((true, Some("im.v1.json"))));
        assert_eq!(
            n(None, Some("chat, im.v1.proto")),
            Ok((false, Some("im.v1.proto")))
        );
        assert_eq!(n(Some("proto"), Some("im.v1.json")), Ok((false, None)));
        assert_eq!(n(Some("json"), None), Ok((true, None)));
        assert!(n(Some("xml"), None)
            .unwrap_err()
            .contains("use proto or json"));
    }

    #[test]
    fn origins_and_devices() {
        let allowed = vec!["https://a.example".to_owned()];
        assert!(origin_allowed(&allowed, Some("https://a.example")));
        assert!(!origin_allowed(&allowed, Some("https://b.example")));
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&[], Some("https://b.example")));

        let id = Identity {
            user_id: "u1".into(),
            sid: None,
            device_id: Some("d1".into()),
            platform: None,
            roles: vec![],
            exp: 0,
            session_end: 0,
        };
        let d = device_for(&id, &Query::parse(Some("platform=ios"))).unwrap();
        assert_eq!((d.device_id.as_str(), d.platform.as_str()), ("d1", "ios"));
        let d = device_for(&id, &Query::parse(None)).unwrap();
        assert_eq!(d.platform, "unknown");
        let e = device_for(&id, &Query::parse(Some("device_id=d2"))).unwrap_err();
        assert_eq!(e, "device_id does not match the token");
    }
}
