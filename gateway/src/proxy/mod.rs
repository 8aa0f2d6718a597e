//! The edge listener's `ProxyHttp`: it only dispatches. Bridge routes are answered in
//! `request_filter` through [`crate::bridge`] and the shared dispatcher; `grpc_service` routes go
//! through Pingora's upstream path (h2c) with the gateway's own rejections answered gRPC-style.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use tonic::Code;

use crate::bridge::Reply;
use crate::dispatch::IDENTITY_HEADERS;
use crate::filters::request_id;
use crate::metrics::Metrics;
use crate::pipeline::{Call, Pipeline};
use crate::policy::AuthMode;
use crate::routes::{PassThroughRoute, Route, RouteStore};
use crate::telemetry::access::{self, AccessLine};
use crate::upstream::health::InflightGuard;
use crate::upstream::EndpointState;
use crate::web::WebApp;

mod request;
mod respond;

pub struct EdgeProxy {
    pub routes: Arc<RouteStore>,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    pub web: WebApp,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    request_id: String,
    route: Option<Route>,
    /// Pass-through: endpoints tried so far, and the current attempt's endpoint.
    tried: Vec<SocketAddr>,
    attempt: Option<(Arc<EndpointState>, InflightGuard)>,
    /// Status written by the gateway itself (bridge replies and rejections).
    status: Option<u16>,
    /// The admitted call (who it is, its request id and trace context).
    call: Option<Call>,
    /// CORS and rate-limit headers for whatever response goes out.
    extra_headers: Vec<(&'static str, String)>,
    /// Pass-through: request body bytes streamed so far, and whether they passed `max_body`.
    body_bytes: u64,
    body_too_large: bool,
    /// For the access log: the resolved client address and the call's trace id.
    client_ip: IpAddr,
    trace_id: Option<String>,
    /// Pass-through: the call's span, open until the request is logged; its context is the
    /// upstream's `traceparent`.
    span: Option<tracing::Span>,
}

fn body_too_large_message(max_body: u64) -> String {
    format!("request body exceeds this route's limit of {max_body} bytes")
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_grpc(req: &RequestHeader) -> bool {
    header(req, "content-type").is_some_and(|ct| ct.starts_with("application/grpc"))
}

impl RequestCtx {
    fn pass_through(&self) -> Option<&Arc<PassThroughRoute>> {
        match &self.route {
            Some(Route::PassThrough(r)) => Some(r),
            _ => None,
        }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            tried: Vec::new(),
            attempt: None,
            status: None,
            call: None,
            extra_headers: Vec::new(),
            body_bytes: 0,
            body_too_large: false,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            trace_id: None,
            span: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.identify(session, ctx);
        if self.cors(session, ctx).await? {
            return Ok(true);
        }
        let table = self.routes.load();
        let req = session.req_header();
        if is_grpc(req) {
            let route = table.match_grpc(req.uri.path()).cloned();
            return self.route_grpc(session, ctx, route).await;
        }
        match table.match_http(&req.method, req.uri.path()) {
            Ok(route) => self.route_http(session, ctx, route.clone()).await?,
            Err(miss) => self.answer_miss(session, ctx, miss).await?,
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Only routed gRPC requests get here (request_filter answers everything else).
        let (Some(route), Some(call)) = (ctx.pass_through(), &ctx.call) else {
            return Error::e_explain(ErrorType::InternalError, "no route for an upstream peer");
        };
        let upstream = route.upstream.clone();
        // The dispatcher's key: the user, so `consistent_hash` keeps a user on one endpoint.
        let Some(endpoint) = upstream.select(call.ctx.hash_key(), &ctx.tried) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy upstream");
        };
        ctx.tried.push(endpoint.addr);
        ctx.attempt = Some((endpoint.state.clone(), endpoint.state.begin()));
        let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = 128;
        peer.options.connection_timeout = Some(crate::upstream::channels::CONNECT_TIMEOUT);
        peer.options.read_timeout = Some(upstream.timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(upstream) = ctx.pass_through().map(|r| r.upstream.clone()) {
            if let Some((state, _)) = ctx.attempt.take() {
                state.connect_failed(upstream.health_check.is_some());
            }
            self.metrics
                .upstream_failures
                .with_label_values(&[&upstream.name, "connect"])
                .inc();
            tracing::warn!(upstream = %upstream.name, peer = %peer, request_id = %ctx.request_id, trace_id = ctx.trace_id.as_deref().unwrap_or("-"), error = %e, "pass-through connect failed");
            if ctx.tried.len() <= upstream.retries as usize {
                self.metrics
                    .retries
                    .with_label_values(&[&upstream.name])
                    .inc();
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for h in IDENTITY_HEADERS {
            upstream_request.remove_header(h);
        }
        // The credential the gateway verified stays here unless the route forwards it.
        if let Some(route) = ctx.pass_through().filter(|r| !r.forward_credentials) {
            match route.admission.auth {
                AuthMode::Required => drop(upstream_request.remove_header("authorization")),
                AuthMode::ApiKey => drop(upstream_request.remove_header("x-api-key")),
                AuthMode::None => {}
            }
        }
        upstream_request.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        // With spans exported the backend's parent is this call's span; otherwise the client's
        // `traceparent` goes on unchanged.
        if let Some(tp) = ctx.span.as_ref().and_then(im_telemetry::traceparent::of) {
            upstream_request.insert_header("traceparent", tp)?;
        }
        let mut result = Ok(());
        if let Some(call) = &ctx.call {
            call.ctx.for_each_identity_header(|name, value| {
                if result.is_ok() {
                    result = upstream_request
                        .insert_header(name, value.to_owned())
                        .map(drop);
                }
            });
        }
        result
    }

    /// Pass-through bodies are counted while they stream: past the route's `max_body` the call
    /// ends with RESOURCE_EXHAUSTED (in `fail_to_proxy`) instead of reaching the backend whole.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(max_body) = ctx.pass_through().map(|r| r.max_body) else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > max_body {
            ctx.body_too_large = true;
            *body = None;
            return Error::e_explain(
                ErrorType::Custom("body too large"),
                body_too_large_message(max_body),
            );
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        for (name, value) in &ctx.extra_headers {
            upstream_response.append_header(*name, value.as_str())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let pass_through_limit = ctx.pass_through().map(|r| r.max_body);
        let already_sent = session.response_written().is_some();
        let code = if let (Some(max_body), false) = (pass_through_limit, already_sent) {
            let (code, msg) = match e.etype() {
                _ if ctx.body_too_large => {
                    (Code::ResourceExhausted, body_too_large_message(max_body))
                }
                ErrorType::HTTPStatus(503) => (Code::Unavailable, "no healthy upstream".to_owned()),
                _ => (Code::Unavailable, "upstream failure".to_owned()),
            };
            if let Err(err) = self.write_grpc_status(session, ctx, code, &msg).await {
                tracing::debug!(error = %err, "could not write gRPC error");
            }
            200
        } else if !already_sent {
            let status = match e.etype() {
                ErrorType::HTTPStatus(s) => *s,
                _ => 502,
            };
            let reply = Reply::error(
                status,
                Code::Unavailable,
                "upstream failure",
                &ctx.request_id,
            );
            if let Err(err) = self.write_reply(session, ctx, reply).await {
                tracing::debug!(error = %err, "could not write error reply");
            }
            status
        } else {
            0
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = ctx
            .status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let route = ctx.route.as_ref().map_or("-", Route::name);
        self.metrics
            .requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        let call = ctx.call.as_ref().map(|c| &c.ctx);
        let (transport, upstream) = match &ctx.route {
            Some(Route::PassThrough(_)) => ("grpc", ctx.tried.last().copied()),
            _ => ("http", call.and_then(|c| c.endpoint.get())),
        };
        let upstream_time = match (&ctx.route, call) {
            (Some(Route::Unary(_)), Some(call)) => Some(call.endpoint.upstream_time()),
            _ => None,
        };
        ctx.attempt = None;
        let line = AccessLine {
            transport,
            route,
            status,
            latency: ctx.started.elapsed(),
            upstream,
            user_id: call.and_then(|c| c.user_id.as_deref()),
            client_ip: ctx.client_ip,
            request_id: &ctx.request_id,
            trace_id: ctx.trace_id.as_deref(),
        };
        access::record(
            &self.metrics,
            self.pipeline.access_log,
            &line,
            upstream_time,
        );
    }
}
