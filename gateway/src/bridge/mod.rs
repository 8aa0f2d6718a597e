//! The HTTP side of the unary pipeline (DESIGN §4), free of sockets: encodings from
//! `Content-Type` / `Accept`, and the [`Reply`] to write for a call or an error. Decoding,
//! dispatch and reply encoding are [`crate::pipeline`]'s, shared with WebSocket frames.

use bytes::Bytes;
use tonic::Code;

use crate::dispatch::code_name;
use crate::pipeline::{self, Call, CallError, Encoding, Pipeline, Request};
use crate::routes::UnaryRoute;

pub const CONTENT_TYPE_PROTO: &str = "application/x-protobuf";
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The request body's encoding from `Content-Type`; `None` when it is neither.
/// An absent header means JSON (what curl and browsers send by hand).
pub fn request_encoding(content_type: Option<&str>) -> Option<Encoding> {
    let Some(ct) = content_type else {
        return Some(Encoding::Json);
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "text/json" => Some(Encoding::Json),
        "application/x-protobuf" | "application/protobuf" | "application/octet-stream" => {
            Some(Encoding::Proto)
        }
        _ => None,
    }
}

/// The response encoding: what `Accept` asks for, else the request's.
pub fn response_encoding(accept: Option<&str>, request: Encoding) -> Encoding {
    let Some(accept) = accept else {
        return request;
    };
    for item in accept.split(',') {
        let mime = item.split(';').next().unwrap_or("").trim();
        match mime {
            "application/json" => return Encoding::Json,
            "application/x-protobuf" | "application/protobuf" => return Encoding::Proto,
            _ => {}
        }
    }
    request
}

pub fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Proto => CONTENT_TYPE_PROTO,
        Encoding::Json => CONTENT_TYPE_JSON,
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

impl Reply {
    /// A failed call's reply.
    pub fn failed(e: &CallError, request_id: &str) -> Self {
        Self::error(e.status, e.code, &e.message, request_id)
    }
}

/// Serves one admitted bridge request: decode the body, dispatch, and the reply or the error
/// body, all through the shared [`Pipeline`].
pub async fn serve(
    pipeline: &Pipeline,
    route: &UnaryRoute,
    call: &Call,
    body: Bytes,
    encoding: Encoding,
    reply_encoding: Encoding,
) -> Reply {
    let request = match encoding {
        Encoding::Proto => Request::Proto(body),
        Encoding::Json => Request::Json(&body),
    };
    let result = match pipeline::decode(route, request) {
        Ok(message) => {
            pipeline
                .dispatch(route, call, message, reply_encoding)
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(body) => Reply {
            status: 200,
            content_type: content_type(reply_encoding),
            body,
        },
        Err(e) => Reply::failed(&e, &call.ctx.request_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(request_encoding(None), Some(Encoding::Json));
        assert_eq!(
            request_encoding(Some("application/json; charset=utf-8")),
            Some(Encoding::Json)
        );
        assert_eq!(
            request_encoding(Some("application/x-protobuf")),
            Some(Encoding::Proto)
        );
        assert_eq!(request_encoding(Some("text/html")), None);
        assert_eq!(
            response_encoding(Some("text/html, application/x-protobuf"), Encoding::Json),
            Encoding::Proto
        );
        assert_eq!(
            response_encoding(Some("*/*"), Encoding::Proto),
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
