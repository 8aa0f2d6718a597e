//! The one call pipeline of unary routes, shared by the HTTP bridge and WebSocket cmd frames
//! (DESIGN §1). A transport reads bytes and metadata; then, the same for both:
//!
//! 1. [`Pipeline::admit`]: authenticate, authorize and rate-limit ([`crate::filters::Guard`]),
//!    and build the one [`Call`] (request id, traceparent, identity) everything after uses;
//! 2. [`decode`]: the request (JSON or protobuf) checked against the route's input type;
//! 3. [`Pipeline::dispatch`]: the backend call ([`crate::dispatch::Dispatcher`]) and the reply
//!    encoded in the encoding asked for, a reply that does not match the descriptor set counted
//!    and refused the same way for both.
//!
//! Every failure on the way is one [`CallError`]; the transport only renders it (an HTTP status
//! with the JSON error body, or an error frame with the gRPC code).

pub mod transcode;
pub mod wire;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tonic::Code;
use tracing::Instrument;

use crate::dispatch::{CallContext, DispatchError, Dispatcher};
use crate::filters::ratelimit::Decision;
use crate::filters::{Admission, Credentials, Guard};
use crate::routes::UnaryRoute;

/// How a request or reply is encoded: protobuf bytes or JSON (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Proto,
    Json,
}

/// What a client is told when a backend reply does not match the descriptor set.
pub const INVALID_REPLY: &str = "upstream sent an invalid reply";

pub use crate::call_error::CallError;

impl CallError {
    /// A body or frame over the route's `max_body` (HTTP answers 413 and closes the connection;
    /// a socket answers the frame and stays).
    pub fn too_large(route: &UnaryRoute, len: Option<usize>) -> Self {
        let message = match len {
            Some(len) => format!(
                "payload of {len} bytes exceeds this route's limit of {} bytes; send large data over HTTP",
                route.max_body
            ),
            None => format!(
                "body exceeds this route's limit of {} bytes",
                route.max_body
            ),
        };
        Self::new(413, Code::ResourceExhausted, message)
    }
}

impl From<DispatchError> for CallError {
    fn from(e: DispatchError) -> Self {
        Self::new(e.http_status(), e.code(), e.client_message())
    }
}

/// A request as the transport read it, before admission.
#[derive(Debug, Clone, Default)]
pub struct CallMeta {
    pub request_id: String,
    /// Already checked with [`usable_traceparent`].
    pub traceparent: Option<String>,
    /// The call's trace id ([`crate::telemetry::call_span`]), for its log lines.
    pub trace_id: Option<String>,
}

/// An admitted call: its context (the backend's metadata) and the rate-limit state.
#[derive(Debug, Clone)]
pub struct Call {
    pub ctx: CallContext,
    pub limit: Option<Decision>,
}

/// A `traceparent` worth passing on: non-empty, printable ASCII, at most 128 bytes; anything
/// else is dropped, not refused (HTTP header and frame field alike).
pub fn usable_traceparent(value: &str) -> Option<String> {
    let ok = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_owned())
}

/// A request message as it arrived: protobuf bytes, a JSON document, or (WebSocket JSON
/// frames) the already parsed `payload` object.
pub enum Request<'a> {
    Proto(Bytes),
    Json(&'a [u8]),
    JsonValue(Value),
}

/// The request as the route's input message bytes, or why it is not one.
pub fn decode(route: &UnaryRoute, request: Request<'_>) -> Result<Bytes, CallError> {
    let input = route.method.input();
    let decoded = match request {
        Request::Proto(bytes) => transcode::check_proto(&input, &bytes).map(|()| bytes),
        Request::Json(text) => transcode::json_to_proto(&input, text),
        Request::JsonValue(value) => transcode::json_value_to_proto(&input, value),
    };
    decoded.map_err(CallError::invalid_argument)
}

/// The shared stages; one per gateway, cloned into each transport.
#[derive(Clone)]
pub struct Pipeline {
    pub guard: Arc<Guard>,
    pub dispatcher: Arc<Dispatcher>,
    /// `telemetry.access_log`: a line per request and per frame.
    pub access_log: bool,
    /// `telemetry.sample_ratio`: the share of calls without a caller's decision that are traced.
    pub sample_ratio: f64,
}

impl Pipeline {
    /// Admits one call of `route` (any kind: pass-through proxying uses the same admission and
    /// context) and builds its [`Call`].
    pub async fn admit(
        &self,
        route: &str,
        admission: &Admission,
        creds: Credentials<'_>,
        client_ip: IpAddr,
        meta: CallMeta,
    ) -> Result<Call, CallError> {
        let admitted = self
            .guard
            .admit(route, admission, creds, client_ip)
            .instrument(tracing::info_span!("admission"))
            .await?;
        let mut ctx = CallContext::new(
            meta.request_id,
            meta.traceparent,
            admitted.identity.as_deref(),
            admitted.api_client,
        );
        ctx.trace_id = meta.trace_id;
        Ok(Call {
            ctx,
            limit: admitted.limit,
        })
    }

    /// Calls the backend with the decoded `message` and returns the reply in `reply` encoding.
    pub async fn dispatch(
        &self,
        route: &UnaryRoute,
        call: &Call,
        message: Bytes,
        reply: Encoding,
    ) -> Result<Bytes, CallError> {
        let bytes = self.dispatcher.unary(route, message, &call.ctx).await?;
        match reply {
            Encoding::Proto => Ok(bytes),
            Encoding::Json => transcode::proto_to_json(&route.method.output(), &bytes)
                .map(Bytes::from)
                .map_err(|e| {
                    self.dispatcher.invalid_reply(&route.name, &call.ctx, &e);
                    CallError::new(502, Code::Internal, INVALID_REPLY)
                }),
        }
    }
}
