//! Small per-request filters, each usable from the HTTP edge and (later) WebSocket frames.

pub mod request_id;
