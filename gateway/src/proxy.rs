//! The edge listener's `ProxyHttp`: it only dispatches. Bridge routes are answered in
//! `request_filter` through [`crate::bridge`] and the shared dispatcher; `grpc_service` routes go
//! through Pingora's upstream path (h2c) with the gateway's own rejections answered gRPC-style.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::HttpTask;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use tonic::Code;
use tracing::Instrument;

use crate::bridge::{self, Reply};
use crate::dispatch::IDENTITY_HEADERS;
use crate::filters::client_ip::header_list;
use crate::filters::{auth, limit_headers, request_id, Admission, Credentials};
use crate::metrics::Metrics;
use crate::pipeline::{usable_traceparent, Call, CallError, CallMeta, Pipeline};
use crate::routes::{PassThroughRoute, Route, RouteMiss, RouteStore, UnaryRoute};
use crate::upstream::health::InflightGuard;
use crate::upstream::EndpointState;
use crate::web::WebApp;

/// What a body's buffer starts with at most; it grows (doubling) with the bytes received.
const FIRST_RESERVE: u64 = 16 * 1024;

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

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RequestCtx {
    fn pass_through(&self) -> Option<&Arc<PassThroughRoute>> {
        match &self.route {
            Some(Route::PassThrough(r)) => Some(r),
            _ => None,
        }
    }
}

impl EdgeProxy {
    /// Admits the request through the shared pipeline; the rate-limit headers go out either way.
    async fn admit(
        &self,
        session: &Session,
        route: &str,
        admission: &Admission,
        client_ip: IpAddr,
        ctx: &mut RequestCtx,
    ) -> Result<(), CallError> {
        let req = session.req_header();
        let creds = Credentials {
            bearer: header(req, "authorization").and_then(auth::bearer),
            api_key: header(req, "x-api-key"),
            session: None,
        };
        let meta = CallMeta {
            request_id: ctx.request_id.clone(),
            traceparent: header(req, "traceparent").and_then(usable_traceparent),
        };
        let result = self
            .pipeline
            .admit(route, admission, creds, client_ip, meta)
            .await;
        let limit = match &result {
            Ok(c) => c.limit,
            Err(e) => e.limit,
        };
        if let Some(d) = limit {
            ctx.extra_headers.extend(limit_headers(&d));
        }
        ctx.call = Some(result?);
        Ok(())
    }

    async fn write_reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
    ) -> Result<()> {
        ctx.status = Some(reply.status);
        let mut resp = ResponseHeader::build(reply.status, Some(4))?;
        resp.insert_header("content-type", reply.content_type)?;
        resp.insert_header("content-length", reply.body.len().to_string())?;
        resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        for (name, value) in &ctx.extra_headers {
            resp.append_header(*name, value.as_str())?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(reply.body), true).await
    }

    /// Answers a CORS preflight (204, with CORS headers only when allowed).
    async fn write_preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        headers: Vec<(&'static str, String)>,
    ) -> Result<()> {
        ctx.status = Some(204);
        let mut resp = ResponseHeader::build(204, Some(headers.len() + 1))?;
        resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        for (name, value) in headers {
            resp.append_header(name, value)?;
        }
        session.write_response_header(Box::new(resp), true).await
    }

    /// A trailers-only gRPC response: HTTP 200 with `grpc-status` (never a bare HTTP 4xx), in
    /// one HEADERS frame with END_STREAM. `Session::write_response_header` ignores its
    /// end-of-stream flag on HTTP/2 and Pingora then ends the stream with an empty DATA frame,
    /// which tonic accepts but gRPC C-core reports as `UNKNOWN: Stream removed`; so the header
    /// goes out as a task that carries the flag.
    async fn write_grpc_status(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        code: Code,
        message: &str,
    ) -> Result<()> {
        ctx.status = Some(200);
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header("grpc-status", (code as i32).to_string())?;
        resp.insert_header("grpc-message", grpc_message(message))?;
        resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        for (name, value) in &ctx.extra_headers {
            resp.append_header(*name, value.as_str())?;
        }
        let mut resp = Box::new(resp);
        session
            .downstream_modules_ctx
            .response_header_filter(&mut resp, true)
            .await?;
        session
            .as_downstream_mut()
            .response_duplex_vec(vec![HttpTask::Header(resp, true)])
            .await
            .map(drop)
    }

    /// Reads the body up to `limit` bytes, the buffer growing with what arrives; `None` when
    /// it is larger.
    async fn read_body(session: &mut Session, limit: u64) -> Result<Option<Bytes>> {
        let declared =
            header(session.req_header(), "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(None);
        }
        // Reserved up front: what a small body needs, never what a head merely claims (a
        // client that declares `max_body` and stalls holds only this).
        let mut body =
            BytesMut::with_capacity(declared.unwrap_or(0).min(limit).min(FIRST_RESERVE) as usize);
        while let Some(chunk) = session.read_request_body().await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body.freeze()))
    }

    async fn serve_bridge(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &UnaryRoute,
    ) -> Result<()> {
        let req = session.req_header();
        let Some(encoding) = bridge::request_encoding(header(req, "content-type")) else {
            let reply = Reply::error(
                415,
                Code::InvalidArgument,
                "Content-Type must be application/json or application/x-protobuf",
                &ctx.request_id,
            );
            return self.write_reply(session, ctx, reply).await;
        };
        let reply_encoding = bridge::response_encoding(header(req, "accept"), encoding);
        let Some(body) = Self::read_body(session, route.max_body).await? else {
            session.set_keepalive(None);
            let reply = Reply::failed(&CallError::too_large(route, None), &ctx.request_id);
            return self.write_reply(session, ctx, reply).await;
        };
        let reply = match &ctx.call {
            Some(call) => {
                bridge::serve(&self.pipeline, route, call, body, encoding, reply_encoding).await
            }
            None => Reply::error(500, Code::Internal, "call not admitted", &ctx.request_id),
        };
        self.write_reply(session, ctx, reply).await
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
        let req = session.req_header();
        ctx.request_id = request_id::accept_or_generate(
            req.headers.get(request_id::HEADER).map(|v| v.as_bytes()),
        );
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let client_ip = self
            .pipeline
            .guard
            .client_ip
            .resolve(peer, |h| header_list(&req.headers, h));
        ctx.client_ip = client_ip;
        ctx.trace_id = header(req, "traceparent")
            .and_then(im_telemetry::traceparent::trace_id)
            .map(str::to_owned);

        if let Some(origin) = header(req, "origin") {
            if req.method == http::Method::OPTIONS {
                if let Some(method) = header(req, "access-control-request-method") {
                    let headers = self.pipeline.guard.cors.preflight(
                        origin,
                        method,
                        header(req, "access-control-request-headers"),
                    );
                    self.write_preflight(session, ctx, headers).await?;
                    return Ok(true);
                }
            }
            ctx.extra_headers
                .extend(self.pipeline.guard.cors.response_headers(origin));
        }

        let table = self.routes.load();
        if is_grpc(req) {
            let Some(route) = table.match_grpc(req.uri.path()).cloned() else {
                self.write_grpc_status(
                    session,
                    ctx,
                    Code::Unimplemented,
                    "no route for this gRPC method",
                )
                .await?;
                return Ok(true);
            };
            ctx.route = Some(Route::PassThrough(route.clone()));
            let (span, trace_id) = crate::telemetry::call_span(
                &route.name,
                "grpc",
                &ctx.request_id,
                header(req, "traceparent"),
                self.pipeline.sample_ratio,
            );
            ctx.trace_id = trace_id;
            ctx.span = Some(span.clone());
            let declared = header(req, "content-length").and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > route.max_body) {
                let msg = body_too_large_message(route.max_body);
                self.write_grpc_status(session, ctx, Code::ResourceExhausted, &msg)
                    .await?;
                return Ok(true);
            }
            return match self
                .admit(session, &route.name, &route.admission, client_ip, ctx)
                .instrument(span)
                .await
            {
                Ok(()) => Ok(false),
                Err(e) => {
                    self.write_grpc_status(session, ctx, e.code, &e.message)
                        .await?;
                    Ok(true)
                }
            };
        }
        match table.match_http(&req.method, req.uri.path()) {
            Ok(route) => {
                let route = route.clone();
                ctx.route = Some(Route::Unary(route.clone()));
                let (span, trace_id) = crate::telemetry::call_span(
                    &route.name,
                    "http",
                    &ctx.request_id,
                    header(req, "traceparent"),
                    self.pipeline.sample_ratio,
                );
                ctx.trace_id = trace_id;
                async {
                    match self
                        .admit(session, &route.name, &route.admission, client_ip, ctx)
                        .await
                    {
                        Ok(()) => self.serve_bridge(session, ctx, &route).await,
                        Err(e) => {
                            let reply = Reply::failed(&e, &ctx.request_id);
                            self.write_reply(session, ctx, reply).await
                        }
                    }
                }
                .instrument(span)
                .await?;
            }
            Err(miss) => {
                if req.method == http::Method::GET {
                    if let Some(page) = self.web.get(req.uri.path(), header(req, "host")) {
                        ctx.extra_headers.push(("cache-control", "no-cache".into()));
                        self.write_reply(session, ctx, page).await?;
                        return Ok(true);
                    }
                }
                let (status, code, message) = match miss {
                    RouteMiss::NotFound => (404, Code::NotFound, "no route for this path"),
                    RouteMiss::MethodNotAllowed => {
                        (405, Code::Unimplemented, "method not allowed on this path")
                    }
                };
                let reply = Reply::error(status, code, message, &ctx.request_id);
                self.write_reply(session, ctx, reply).await?;
            }
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
            tracing::warn!(upstream = %upstream.name, peer = %peer, request_id = %ctx.request_id, error = %e, "pass-through connect failed");
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
        let elapsed = ctx.started.elapsed();
        let call = ctx.call.as_ref().map(|c| &c.ctx);
        let (transport, upstream) = match &ctx.route {
            Some(Route::PassThrough(_)) => ("grpc", ctx.tried.last().copied()),
            _ => ("http", call.and_then(|c| c.endpoint.get())),
        };
        self.metrics
            .latency
            .with_label_values(&[route, &status.to_string(), transport])
            .observe(elapsed.as_secs_f64());
        if let (Some(Route::Unary(_)), Some(call)) = (&ctx.route, call) {
            let own = elapsed.saturating_sub(call.endpoint.upstream_time());
            self.metrics
                .own_latency
                .with_label_values(&[route])
                .observe(own.as_secs_f64());
        }
        ctx.attempt = None;
        if self.pipeline.access_log {
            crate::telemetry::access::log(&crate::telemetry::access::AccessLine {
                transport,
                route,
                status,
                latency: ctx.started.elapsed(),
                upstream,
                user_id: call.and_then(|c| c.user_id.as_deref()),
                client_ip: ctx.client_ip,
                request_id: &ctx.request_id,
                trace_id: ctx.trace_id.as_deref(),
            });
        }
    }
}
