//! `bare-ws`: the push baseline. A bare tokio-tungstenite broadcast server with the smallest
//! buffers, one task per connection, one `send` (write + flush) per message, and the same
//! `im.gateway.v1.PushService` entry point as the gateway (no auth, no limits, no registry policy)
//! so the same load tool drives both. A request frame is answered with an empty OK response.
//!
//! Usage: bare-ws --ws 127.0.0.1:PORT --grpc 127.0.0.1:PORT

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use im_proto::im::gateway::v1::push_service_server::{PushService, PushServiceServer};
use im_proto::im::gateway::v1::{
    server_frame, ClientFrame, KickReply, KickRequest, PresenceReply, PresenceRequest, Push,
    PushReply, PushRequest, Response, RevokeReply, RevokeRequest, ServerFrame,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response as HsResponse};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Conns = Arc<RwLock<HashMap<String, mpsc::Sender<Message>>>>;

struct Bare {
    conns: Conns,
}

#[tonic::async_trait]
impl PushService for Bare {
    async fn push(
        &self,
        req: tonic::Request<PushRequest>,
    ) -> Result<tonic::Response<PushReply>, tonic::Status> {
        let req = req.into_inner();
        let frame = Bytes::from(
            ServerFrame {
                body: Some(server_frame::Body::Push(Push {
                    id: String::new(),
                    kind: req.kind,
                    payload_type: req.payload_type,
                    payload: req.payload,
                    ts: 0,
                })),
            }
            .encode_to_vec(),
        );
        let mut reply = PushReply::default();
        let conns = self.conns.read().expect("conns");
        for user in &req.user_ids {
            match conns.get(user) {
                Some(tx) if tx.try_send(Message::Binary(frame.clone())).is_ok() => {
                    reply.delivered += 1;
                    reply.users_online += 1;
                }
                _ => reply.users_offline += 1,
            }
        }
        Ok(tonic::Response::new(reply))
    }
    async fn kick(
        &self,
        _: tonic::Request<KickRequest>,
    ) -> Result<tonic::Response<KickReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare baseline"))
    }
    async fn revoke(
        &self,
        _: tonic::Request<RevokeRequest>,
    ) -> Result<tonic::Response<RevokeReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare baseline"))
    }
    async fn presence(
        &self,
        _: tonic::Request<PresenceRequest>,
    ) -> Result<tonic::Response<PresenceReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare baseline"))
    }
}

fn user_of(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("user="))
        .map(str::to_owned)
}

async fn session(tcp: tokio::net::TcpStream, conns: Conns) {
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let mut user = None;
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: HsResponse| {
        user = user_of(&req.uri().to_string());
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    let user = user.unwrap_or_default();
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    conns
        .write()
        .expect("conns")
        .insert(user.clone(), tx.clone());
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Binary(b) = msg {
            let seq = ClientFrame::decode(b).map_or(0, |f| f.seq);
            let resp = ServerFrame {
                body: Some(server_frame::Body::Response(Response {
                    seq,
                    ..Default::default()
                })),
            };
            let _ = tx.try_send(Message::Binary(resp.encode_to_vec().into()));
        }
    }
    conns.write().expect("conns").remove(&user);
    writer.abort();
}

/// The push baseline: a bare tokio-tungstenite broadcast server with PushService.
#[derive(clap::Parser)]
#[command(name = "bare-ws")]
struct Cli {
    /// WebSocket listen address, e.g. 127.0.0.1:8081.
    #[arg(long)]
    ws: SocketAddr,
    /// PushService (gRPC) listen address, e.g. 127.0.0.1:7171.
    #[arg(long)]
    grpc: SocketAddr,
}

fn main() {
    let Cli { ws, grpc } = clap::Parser::parse();
    // One worker thread, like the gateway under test.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let conns: Conns = Arc::default();
        let svc = PushServiceServer::new(Bare {
            conns: conns.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve(grpc),
        );
        let listener = tokio::net::TcpListener::bind(ws).await.expect("bind ws");
        loop {
            if let Ok((tcp, _)) = listener.accept().await {
                tcp.set_nodelay(true).ok();
                tokio::spawn(session(tcp, conns.clone()));
            }
        }
    });
}
