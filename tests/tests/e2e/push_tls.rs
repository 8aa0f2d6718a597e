//! PushService over TLS (`push.internal_tls`, DESIGN §8): what lets backends on other hosts
//! reach a gateway node. With `client_ca` it is mTLS: a caller without a certificate signed by
//! that CA never gets a call through. The backends' notifier (`--push-ca`, `--push-cert`,
//! `--push-key`) revokes a logged-out session through it.

use std::path::Path;

use im_backends::notify::PushTls;
use im_gateway::push::config::InternalTls;
use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::PresenceRequest;
use im_tests::im::ImSystem;
use im_tests::ScratchDir;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::push::{authed, connect_addr, next};

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn certificates(dir: &ScratchDir) {
    let d = &dir.0;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "1",
        "-subj",
        "/CN=im-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&ca, d);
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", "/CN=im-test", "-keyout", &key, "-out", &csr]);
        openssl(&req, d);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
            d,
        );
    }
}

fn read(dir: &ScratchDir, name: &str) -> Vec<u8> {
    std::fs::read(dir.path(name)).unwrap()
}

/// A Presence call over TLS to `addr`, with the client certificate or without.
async fn presence(
    dir: &ScratchDir,
    addr: std::net::SocketAddr,
    with_cert: bool,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(dir, "ca.pem")));
    if with_cert {
        tls = tls.identity(Identity::from_pem(
            read(dir, "client.pem"),
            read(dir, "client.key"),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    PushServiceClient::new(channel)
        .presence(authed(PresenceRequest {
            user_ids: vec!["nobody".into()],
        }))
        .await
        .map(drop)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A Presence call over TLS with python grpcio (gRPC C-core); its status code.
async fn grpcio_presence(dir: &ScratchDir, addr: std::net::SocketAddr, with_cert: bool) -> i64 {
    let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc-clients");
    let mut cmd = tokio::process::Command::new(format!("{clients}/.venv/bin/python"));
    cmd.arg(format!("{clients}/call.py"))
        .arg(addr.to_string())
        .arg("/im.gateway.v1.PushService/Presence")
        .arg("")
        .arg(format!("authorization=Bearer {}", im_tests::INTERNAL_TOKEN))
        .env("GRPC_CA", dir.path("ca.pem"));
    if with_cert {
        cmd.env("GRPC_CERT", dir.path("client.pem"))
            .env("GRPC_KEY", dir.path("client.key"));
    }
    let out = cmd
        .output()
        .await
        .expect("grpcio venv (scripts/bootstrap.sh makes it)");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("grpcio: {}", String::from_utf8_lossy(&out.stderr)));
    line["code"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_service_over_mtls_refuses_callers_without_a_certificate() {
    let dir = ScratchDir::new("push-tls");
    certificates(&dir);
    let internal_tls = InternalTls {
        cert: dir.path("server.pem"),
        key: dir.path("server.key"),
        client_ca: Some(dir.path("ca.pem")),
    };
    let backend_tls = PushTls {
        ca_pem: read(&dir, "ca.pem"),
        identity: Some((read(&dir, "client.pem"), read(&dir, "client.key"))),
    };
    let sys = ImSystem::start_with(
        true,
        |b| b.push_tls = Some(backend_tls),
        |g| g.push.internal_tls = Some(internal_tls),
    )
    .await;
    let internal = sys.gw.internal;

    assert_eq!(presence(&dir, internal, true).await, Ok(()));
    // The same with gRPC C-core: OK with the client certificate, UNAVAILABLE (14) without.
    assert_eq!(grpcio_presence(&dir, internal, true).await, 0);
    assert_eq!(grpcio_presence(&dir, internal, false).await, 14);
    let refused = presence(&dir, internal, false).await;
    assert!(
        refused.is_err(),
        "a caller without a client certificate got through"
    );
    let plaintext = PushServiceClient::connect(format!("http://{internal}")).await;
    if let Ok(mut c) = plaintext {
        let answer = c
            .presence(authed(PresenceRequest { user_ids: vec![] }))
            .await;
        assert!(answer.is_err(), "plaintext got through");
    }

    // The backends reach PushService over mTLS: a logout revokes the session and its socket
    // closes with 4001 (a logout that could not revoke would fail instead).
    let alice = sys.user("alice", "laptop").await;
    let mut ws = connect_addr(sys.gw.push, &alice.ws_query()).await.unwrap();
    alice.ok("user/logout", json!({})).await;
    loop {
        match next(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4001);
                break;
            }
            Message::Close(None) => panic!("closed without a code"),
            _ => continue,
        }
    }
}

#[test]
fn beyond_loopback_push_service_needs_tls() {
    let yaml = |tls: &str| format!("listen: {{ internal: \"0.0.0.0:9190\" }}\n{tls}");
    let err = im_gateway::config::GatewayConfig::parse(&yaml(""), Path::new("gateway.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listen.internal") && err.contains("push.internal_tls"),
        "{err}"
    );
    let ok = im_gateway::config::GatewayConfig::parse(
        &yaml("push: { internal_tls: { cert: c.pem, key: k.pem } }\n"),
        Path::new("gateway.yaml"),
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}
