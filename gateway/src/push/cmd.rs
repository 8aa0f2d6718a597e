//! A request frame of a session: decoded against the route table, bounded in flight per
//! connection, called through the shared pipeline as the socket's verified identity, and
//! answered on the session's queue (a reply or an error for its `seq`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tonic::Code;
use tracing::Instrument;

use super::frames::{decode_request, encode_error, encode_reply, ClientRequest, Inbound};
use super::handshake::SessionInfo;
use super::hub::SessionHandle;
use super::PushDeps;
use crate::filters::{request_id, Credentials};
use crate::pipeline::{CallError, CallMeta};
use crate::telemetry::access::{self, AccessLine};

/// Takes one request frame: answered at once when it does not decode or the connection has
/// `max_inflight` calls running, else called on a task of its own.
pub fn on_request(
    inbound: Inbound<'_>,
    info: &Arc<SessionInfo>,
    deps: &Arc<PushDeps>,
    handle: &SessionHandle,
    inflight: &Arc<AtomicUsize>,
) {
    let table = deps.routes.load();
    let req = match decode_request(inbound, info.encoding, info.version, &table) {
        Ok(r) => r,
        Err(e) => {
            deps.hub.send(
                handle,
                encode_error(info.encoding, e.seq, e.code, &e.message),
            );
            return;
        }
    };
    if inflight.fetch_add(1, Ordering::AcqRel) >= deps.config.max_inflight {
        inflight.fetch_sub(1, Ordering::AcqRel);
        let msg = "too many requests in flight on this connection";
        let frame = encode_error(info.encoding, req.seq, Code::ResourceExhausted, msg);
        deps.hub.send(handle, frame);
        return;
    }
    let (info, deps, handle, inflight) =
        (info.clone(), deps.clone(), handle.clone(), inflight.clone());
    tokio::spawn(async move {
        let frame = match call(&req, &info, &deps).await {
            Ok(reply) => encode_reply(info.encoding, req.seq, reply),
            Err(e) => encode_error(info.encoding, req.seq, e.code, &e.message),
        };
        deps.hub.send(&handle, frame);
        inflight.fetch_sub(1, Ordering::AcqRel);
    });
}

/// One request frame through the shared pipeline, as the socket's verified identity.
async fn call(
    req: &ClientRequest,
    info: &SessionInfo,
    deps: &PushDeps,
) -> Result<Bytes, CallError> {
    let creds = Credentials {
        session: Some(&info.identity),
        ..Credentials::default()
    };
    let traceparent = req.traceparent.clone().or_else(|| info.traceparent.clone());
    let route = &req.route;
    let started = std::time::Instant::now();
    let request_id = request_id::generate();
    let (span, trace_id) = crate::telemetry::call_span(
        &route.name,
        "websocket",
        &request_id,
        traceparent.as_deref(),
        deps.pipeline.sample_ratio,
    );
    let meta = CallMeta {
        request_id: request_id.clone(),
        traceparent,
        trace_id: trace_id.clone(),
    };
    let mut endpoint = None;
    let result = async {
        let mut call = deps
            .pipeline
            .admit(&route.name, &route.admission, creds, info.client_ip, meta)
            .await?;
        endpoint = Some(call.ctx.endpoint.clone());
        // The socket's device and platform (the handshake may name them).
        call.ctx.device_id = Some(info.device.device_id.clone());
        call.ctx.platform = Some(info.device.platform.clone());
        deps.pipeline
            .dispatch(route, &call, req.payload.clone(), info.encoding)
            .await
    }
    .instrument(span.clone())
    .await;
    let status = result.as_ref().map_or_else(|e| e.status, |_| 200);
    let line = AccessLine {
        transport: "websocket",
        route: &route.name,
        status,
        latency: started.elapsed(),
        upstream: endpoint.as_ref().and_then(|e| e.get()),
        user_id: Some(&info.identity.user_id),
        client_ip: info.client_ip,
        request_id: &request_id,
        trace_id: trace_id.as_deref(),
    };
    let upstream_time = endpoint.as_ref().map(|e| e.upstream_time());
    let _entered = span.enter();
    access::record(
        &deps.hub.metrics,
        deps.pipeline.access_log,
        &line,
        upstream_time,
    );
    result
}
