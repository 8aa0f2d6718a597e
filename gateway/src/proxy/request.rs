//! A request's way in: its id, client address and trace id, CORS, the route it matches, its
//! admission through the shared pipeline, and for bridge routes the whole call.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pingora::proxy::Session;
use pingora::Result;
use tonic::Code;
use tracing::Instrument;

use super::{body_too_large_message, header, EdgeProxy, RequestCtx};
use crate::bridge::{self, Reply};
use crate::filters::client_ip::header_list;
use crate::filters::{auth, limit_headers, request_id, Admission, Credentials};
use crate::pipeline::{usable_traceparent, CallError, CallMeta};
use crate::routes::{PassThroughRoute, Route, RouteMiss, UnaryRoute};

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
            trace_id: ctx.trace_id.clone(),
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

    /// The request id, the client's address (behind trusted proxies) and its trace id.
    pub(super) fn identify(&self, session: &Session, ctx: &mut RequestCtx) {
        let req = session.req_header();
        ctx.request_id = request_id::accept_or_generate(
            req.headers.get(request_id::HEADER).map(|v| v.as_bytes()),
        );
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        ctx.client_ip = self
            .pipeline
            .guard
            .client_ip
            .resolve(peer, |h| header_list(&req.headers, h));
        ctx.trace_id = header(req, "traceparent")
            .and_then(im_telemetry::traceparent::trace_id)
            .map(str::to_owned);
    }

    /// CORS: a preflight is answered here (`true`); other requests from an origin get its
    /// response headers.
    pub(super) async fn cors(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let Some(origin) = header(req, "origin") else {
            return Ok(false);
        };
        let cors = &self.pipeline.guard.cors;
        let preflight = header(req, "access-control-request-method")
            .filter(|_| req.method == http::Method::OPTIONS);
        if let Some(method) = preflight {
            let headers = cors.preflight(
                origin,
                method,
                header(req, "access-control-request-headers"),
            );
            self.write_preflight(session, ctx, headers).await?;
            return Ok(true);
        }
        ctx.extra_headers.extend(cors.response_headers(origin));
        Ok(false)
    }

    /// The call's span (sampled where it opens), its trace id kept for the access line.
    fn open_span(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        route: &str,
        transport: &'static str,
    ) -> tracing::Span {
        let (span, trace_id) = crate::telemetry::call_span(
            route,
            transport,
            &ctx.request_id,
            header(session.req_header(), "traceparent"),
            self.pipeline.sample_ratio,
        );
        ctx.trace_id = trace_id;
        span
    }

    /// A native gRPC call: admitted here, proxied by Pingora (`false`), or answered with a
    /// trailers-only status (`true`).
    pub(super) async fn route_grpc(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Option<Arc<PassThroughRoute>>,
    ) -> Result<bool> {
        let Some(route) = route else {
            let msg = "no route for this gRPC method";
            self.write_grpc_status(session, ctx, Code::Unimplemented, msg)
                .await?;
            return Ok(true);
        };
        ctx.route = Some(Route::PassThrough(route.clone()));
        let span = self.open_span(session, ctx, &route.name, "grpc");
        ctx.span = Some(span.clone());
        let declared =
            header(session.req_header(), "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.max_body) {
            let msg = body_too_large_message(route.max_body);
            self.write_grpc_status(session, ctx, Code::ResourceExhausted, &msg)
                .await?;
            return Ok(true);
        }
        let admitted = self
            .admit(session, &route.name, &route.admission, ctx.client_ip, ctx)
            .instrument(span)
            .await;
        match admitted {
            Ok(()) => Ok(false),
            Err(e) => {
                self.write_grpc_status(session, ctx, e.code, &e.message)
                    .await?;
                Ok(true)
            }
        }
    }

    /// A bridge route: admitted, dispatched and answered here.
    pub(super) async fn route_http(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Arc<UnaryRoute>,
    ) -> Result<()> {
        ctx.route = Some(Route::Unary(route.clone()));
        let span = self.open_span(session, ctx, &route.name, "http");
        async {
            let client_ip = ctx.client_ip;
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
        .await
    }

    /// No route: the demo web client's pages for `GET`, else 404 or 405.
    pub(super) async fn answer_miss(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        miss: RouteMiss,
    ) -> Result<()> {
        let req = session.req_header();
        if req.method == http::Method::GET {
            if let Some(page) = self.web.get(req.uri.path(), header(req, "host")) {
                ctx.extra_headers.push(("cache-control", "no-cache".into()));
                return self.write_reply(session, ctx, page).await;
            }
        }
        let (status, code, message) = match miss {
            RouteMiss::NotFound => (404, Code::NotFound, "no route for this path"),
            RouteMiss::MethodNotAllowed => {
                (405, Code::Unimplemented, "method not allowed on this path")
            }
        };
        let reply = Reply::error(status, code, message, &ctx.request_id);
        self.write_reply(session, ctx, reply).await
    }
}
