//! The parts of a WebSocket handshake that are pure functions of the request: the query string,
//! the `Origin` rule, the device the token allows, and the encoding and protocol version
//! negotiated from `?encoding=` and `Sec-WebSocket-Protocol`. The listener strings them together with the stateful checks
//! (rates, caps, token verification).

use std::net::IpAddr;
use std::sync::Arc;

use super::frames::FrameEncoding;
use super::hub::ConnSlot;
use super::registry::Device;
use crate::filters::auth::Identity;
use crate::policy::PROTOCOL_VERSIONS;

/// The handshake's query parameters, names and values `%XX`- and `+`-decoded as a form is
/// (`form_urlencoded`; a malformed escape stays as written); the first of a repeated name wins,
/// and an empty value is no value.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
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

/// What a handshake settled: the frame encoding, the protocol version, and the subprotocol to
/// echo in the 101 (only one the client offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub encoding: FrameEncoding,
    pub version: u8,
    pub echo: Option<&'static str>,
}

/// `im.v<N>.<encoding>` for every version ([`PROTOCOL_VERSIONS`]) and encoding, as the handshake
/// echoes them.
const SUBPROTOCOLS: [(u8, FrameEncoding, &str); 4] = [
    (1, FrameEncoding::Proto, "im.v1.proto"),
    (1, FrameEncoding::Json, "im.v1.json"),
    (2, FrameEncoding::Proto, "im.v2.proto"),
    (2, FrameEncoding::Json, "im.v2.json"),
];

/// The supported subprotocols, for refusals.
fn supported() -> String {
    SUBPROTOCOLS.map(|(_, _, name)| name).join(", ")
}

/// Reads `im.v<N>.<proto|json>`; other names are not ours.
fn parse_subprotocol(name: &str) -> Option<(u32, Option<FrameEncoding>)> {
    let rest = name.strip_prefix("im.v")?;
    let (version, encoding) = rest.split_once('.')?;
    let version = version.parse().ok()?;
    let encoding = match encoding {
        "proto" => Some(FrameEncoding::Proto),
        "json" => Some(FrameEncoding::Json),
        _ => None,
    };
    Some((version, encoding))
}

/// Settles encoding and version. `?encoding=` wins over the offered subprotocols for the
/// encoding; the version is the highest both sides speak among the `im.v<N>.*` subprotocols
/// offered (of the chosen encoding when the parameter names one and such are offered). A client
/// that offers none of ours gets version 1 (protobuf unless asked for JSON); one that offers
/// only versions or encodings this gateway does not speak is refused, with the supported list.
pub fn negotiate(param: Option<&str>, offered: Option<&str>) -> Result<Negotiated, String> {
    let asked = match param {
        Some("json") => Some(FrameEncoding::Json),
        Some("proto") => Some(FrameEncoding::Proto),
        None => None,
        Some(other) => return Err(format!("encoding `{other}`: use proto or json")),
    };
    let ours: Vec<(u32, Option<FrameEncoding>)> = offered
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter_map(parse_subprotocol)
        .collect();
    if ours.is_empty() {
        return Ok(Negotiated {
            encoding: asked.unwrap_or(FrameEncoding::Proto),
            version: 1,
            echo: None,
        });
    }
    let speakable = |(v, e): &(u32, Option<FrameEncoding>)| {
        e.is_some() && PROTOCOL_VERSIONS.iter().any(|ours| u32::from(*ours) == *v)
    };
    let matching_asked = |(_, e): &&(u32, Option<FrameEncoding>)| asked.is_none() || *e == asked;
    let best = ours
        .iter()
        .filter(|o| speakable(o))
        .filter(matching_asked)
        .max_by_key(|(v, _)| *v)
        .or_else(|| ours.iter().filter(|o| speakable(o)).max_by_key(|(v, _)| *v));
    let Some(&(version, Some(offered_encoding))) = best else {
        return Err(format!(
            "no supported protocol offered in Sec-WebSocket-Protocol; this gateway speaks {}",
            supported()
        ));
    };
    let encoding = asked.unwrap_or(offered_encoding);
    let version = u8::try_from(version).unwrap_or(1);
    let echo = SUBPROTOCOLS
        .iter()
        .find(|(v, e, _)| *v == version && *e == encoding)
        .map(|(_, _, name)| *name)
        .filter(|name| ours.iter().any(|o| parse_subprotocol(name) == Some(*o)));
    Ok(Negotiated {
        encoding,
        version,
        echo,
    })
}

/// What the handshake established.
pub struct SessionInfo {
    pub identity: Arc<Identity>,
    pub device: Device,
    pub encoding: FrameEncoding,
    /// The protocol version negotiated: which binding of a cmd a frame calls.
    pub version: u8,
    pub client_ip: IpAddr,
    /// The upgrade request's `traceparent`: the trace of frames that carry none.
    pub traceparent: Option<String>,
    /// This connection's place under the gateway and per-IP caps, freed when the session ends.
    pub slot: ConnSlot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let one = |v: &str| {
            Query::parse(Some(&format!("v={v}")))
                .get("v")
                .map(str::to_owned)
        };
        assert_eq!(one("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(one("100%").as_deref(), Some("100%"));
        assert_eq!(one("%zz").as_deref(), Some("%zz"));
        assert_eq!(one("%e4%bd%a0").as_deref(), Some("你"));
        let q = Query::parse(Some("token=a%2Bb&x&device%5Fid=d1&device_id=d2&empty="));
        assert_eq!(q.get("token"), Some("a+b"));
        assert_eq!(q.get("empty"), None);
        assert_eq!(q.get("device_id"), Some("d1"));
        assert_eq!(q.get("x"), None);
        assert_eq!(Query::parse(None).get("token"), None);
    }

    #[test]
    fn encoding_follows_the_parameter_then_the_subprotocol() {
        let n = |p, o| negotiate(p, o).map(|n| (n.encoding == FrameEncoding::Json, n.echo));
        assert_eq!(n(None, None), Ok((false, None)));
        assert_eq!(n(None, Some("im.v1.json")), Ok((true, Some("im.v1.json"))));
        assert_eq!(
            n(None, Some("chat, im.v1.proto")),
            Ok((false, Some("im.v1.proto")))
        );
        assert_eq!(n(Some("proto"), Some("im.v1.json")), Ok((false, None)));
        assert_eq!(n(Some("json"), None), Ok((true, None)));
        assert_eq!(n(None, Some("chat")), Ok((false, None)));
        assert!(n(Some("xml"), None)
            .unwrap_err()
            .contains("use proto or json"));
    }

    #[test]
    fn the_highest_version_both_speak_wins_and_none_in_common_is_refused() {
        let v = |p, o| negotiate(p, o).map(|n| (n.version, n.echo));
        assert_eq!(v(None, None), Ok((1, None)));
        assert_eq!(
            v(None, Some("im.v1.proto, im.v2.proto")),
            Ok((2, Some("im.v2.proto")))
        );
        assert_eq!(
            v(None, Some("im.v3.json, im.v2.json, im.v1.json")),
            Ok((2, Some("im.v2.json")))
        );
        // The encoding asked for picks among the offers; without such an offer, the highest
        // version offered at all, and nothing to echo.
        assert_eq!(
            v(Some("json"), Some("im.v2.proto, im.v1.json")),
            Ok((1, Some("im.v1.json")))
        );
        assert_eq!(v(Some("json"), Some("im.v2.proto")), Ok((2, None)));
        for refused in ["im.v3.proto", "im.v9.json, im.v0.proto", "im.v2.xml"] {
            let e = negotiate(None, Some(refused)).unwrap_err();
            assert!(
                e.contains("im.v1.proto, im.v1.json, im.v2.proto, im.v2.json"),
                "{e}"
            );
        }
        // Junk never panics and never matches.
        for junk in ["im.v", "im.v.json", "im.v99999999999.json", ",,,", "im.v2"] {
            let _ = negotiate(None, Some(junk));
        }
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
