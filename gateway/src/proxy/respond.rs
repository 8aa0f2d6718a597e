//! What the edge writes itself: bridge replies, CORS preflights, trailers-only gRPC statuses,
//! and the bounded read of a bridge body.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::Result;
use tonic::Code;

use super::{header, EdgeProxy, RequestCtx};
use crate::bridge::Reply;
use crate::filters::request_id;

/// What a body's buffer starts with at most; it grows (doubling) with the bytes received.
const FIRST_RESERVE: u64 = 16 * 1024;

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

impl EdgeProxy {
    pub(super) async fn write_reply(
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
    pub(super) async fn write_preflight(
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
    pub(super) async fn write_grpc_status(
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
    pub(super) async fn read_body(session: &mut Session, limit: u64) -> Result<Option<Bytes>> {
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
}
