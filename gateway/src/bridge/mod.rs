//! The HTTP -> gRPC unary bridge (DESIGN §4), free of sockets: it takes a resolved route, the
//! body and its encoding, calls the dispatcher and returns the [`Reply`] to write.

pub mod transcode;
pub mod wire;

use bytes::Bytes;
use prost_reflect::MessageDescriptor;
use tonic::Code;

use crate::dispatch::{code_name, CallContext, DispatchError, Dispatcher, INVALID_REPLY};
use crate::routes::{Route, RouteTarget};

pub const CONTENT_TYPE_PROTO: &str = "application/x-protobuf";
pub const CONTENT_TYPE_JSON: &str = "application/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Proto,
    Json,
}

impl Encoding {
    /// The request body's encoding from `Content-Type`; `None` when it is neither.
    /// An absent header means JSON (what curl and browsers send by hand).
    pub fn of_content_type(content_type: Option<&str>) -> Option<Self> {
        let Some(ct) = content_type else {
            return Some(Self::Json);
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" | "text/json" => Some(Self::Json),
            "application/x-protobuf" | "application/protobuf" | "application/octet-stream" => {
                Some(Self::Proto)
            }
            _ => None,
        }
    }

    /// The response encoding: what `Accept` asks for, else the request's.
    pub fn of_accept(accept: Option<&str>, request: Self) -> Self {
        let Some(accept) = accept else {
            return request;
        };
        for item in accept.split(',') {
            let mime = item.split(';').next().unwrap_or("").trim();
            match mime {
                "application/json" => return Self::Json,
                "application/x-protobuf" | "application/protobuf" => return Self::Proto,
                _ => {}
            }
        }
        request
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Proto => CONTENT_TYPE_PROTO,
            Self::Json => CONTENT_TYPE_JSON,
        }
    }
}

/// What to write back: always a complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    /// The JSON error body of §4: `{"code":"…","message":"…","request_id":"…"}`.
    pub fn error(status: u16, code: Code, message: &str, request_id: &str) -> Self {
        let body = serde_json::json!({
            "code": code_name(code),
            "message": message,
            "request_id": request_id,
        });
        Self {
            status,
            content_type: CONTENT_TYPE_JSON,
            // A `Value` always renders.
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
        }
    }
}

/// The request and response types of a unary route; `None` for a pass-through route (the
/// table matches HTTP paths to unary routes only, so the bridge never sees one).
fn io_types(route: &Route) -> Option<(MessageDescriptor, MessageDescriptor)> {
    match &route.target {
        RouteTarget::Unary { method, .. } => Some((method.input(), method.output())),
        RouteTarget::PassThrough { .. } => None,
    }
}

fn not_unary(request_id: &str) -> Reply {
    Reply::error(
        500,
        Code::Internal,
        "this route passes gRPC through and has no HTTP mapping",
        request_id,
    )
}

/// Decodes the body into the route's request message bytes; a 400 reply when it does not decode.
pub fn decode_request(
    route: &Route,
    encoding: Encoding,
    body: Bytes,
    request_id: &str,
) -> Result<Bytes, Reply> {
    let Some((input, _)) = io_types(route) else {
        return Err(not_unary(request_id));
    };
    let checked = match encoding {
        Encoding::Json => transcode::json_to_proto(&input, &body),
        Encoding::Proto => transcode::check_proto(&input, &body).map(|()| body),
    };
    checked.map_err(|m| Reply::error(400, Code::InvalidArgument, &m, request_id))
}

/// Calls the route's method and renders the answer (or the error) as the reply.
pub async fn call(
    dispatcher: &Dispatcher,
    route: &Route,
    message: Bytes,
    response_encoding: Encoding,
    ctx: &CallContext,
) -> Reply {
    match dispatcher.unary(route, message, ctx).await {
        Ok(bytes) => render(dispatcher, route, bytes, response_encoding, &ctx.request_id),
        Err(e) => dispatch_error_reply(&e, &ctx.request_id),
    }
}

pub fn dispatch_error_reply(e: &DispatchError, request_id: &str) -> Reply {
    Reply::error(e.http_status(), e.code(), &e.client_message(), request_id)
}

fn render(
    dispatcher: &Dispatcher,
    route: &Route,
    bytes: Bytes,
    encoding: Encoding,
    request_id: &str,
) -> Reply {
    match encoding {
        Encoding::Proto => Reply {
            status: 200,
            content_type: CONTENT_TYPE_PROTO,
            body: bytes,
        },
        Encoding::Json => {
            match io_types(route).map(|(_, output)| transcode::proto_to_json(&output, &bytes)) {
                None => not_unary(request_id),
                Some(rendered) => match rendered {
                    Ok(json) => Reply {
                        status: 200,
                        content_type: CONTENT_TYPE_JSON,
                        body: json.into(),
                    },
                    Err(e) => {
                        dispatcher.invalid_reply(&route.name, request_id, &e);
                        Reply::error(502, Code::Internal, INVALID_REPLY, request_id)
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Encoding::of_content_type(None), Some(Encoding::Json));
        assert_eq!(
            Encoding::of_content_type(Some("application/json; charset=utf-8")),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::of_content_type(Some("application/x-protobuf")),
            Some(Encoding::Proto)
        );
        assert_eq!(Encoding::of_content_type(Some("text/html")), None);
        assert_eq!(
            Encoding::of_accept(Some("text/html, application/x-protobuf"), Encoding::Json),
            Encoding::Proto
        );
        assert_eq!(
            Encoding::of_accept(Some("*/*"), Encoding::Proto),
            Encoding::Proto
        );
    }

    #[test]
    fn error_body_shape() {
        let r = Reply::error(401, Code::Unauthenticated, "no token", "rid-1");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "UNAUTHENTICATED");
        assert_eq!(v["message"], "no token");
        assert_eq!(v["request_id"], "rid-1");
    }
}
