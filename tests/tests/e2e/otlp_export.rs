//! The span exporter against the collectors people run (issue #25): TLS with a private CA and a
//! client certificate, authentication headers from a file and from the environment (never
//! logged), gzip, and OpenTelemetry's standard `OTEL_*` environment. The collector is
//! `tests/grpc-clients/collector.py` (python grpcio and PyPI's opentelemetry-proto).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_tests::otlp::ForeignCollector;
use im_tests::{
    echo_routes, free_port, loopback, user_token, wait_for, EchoBackend, GatewayProcess, ScratchDir,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

async fn openssl(dir: &ScratchDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .await
        .expect("openssl is installed (scripts/bootstrap.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate the test's CA ([`make_ca`]) signs for `name` (`server`: for 127.0.0.1;
/// `client`: for a client): `name.pem`, `name.key`.
async fn signed(dir: &ScratchDir, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    )
    .await;
    let ext = if name == "server" {
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.path(&format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
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
            &format!("{name}.ext"),
            "-out",
            &pem,
        ],
    )
    .await;
    (dir.path(&pem), dir.path(&key))
}

async fn make_ca(dir: &ScratchDir) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=im-tests CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    )
    .await;
}

const TAIL: &str = "push: {internal_token_file: internal.token, drain_window: 0s}\n\
                    shutdown: {grace_period: 0s, graceful_timeout: 1s}\n";

/// Three echo calls, each its own trace (`...a0` to `...a2`) and its own batch.
async fn traced_calls(gw: &GatewayProcess) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut traces = Vec::new();
    for n in 0..3 {
        let trace = format!("7bf92f3577b34da6a3ce929d0e0e47a{n}");
        let status = http
            .post(format!("http://{}/service/echo", gw.edge))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{trace}-40f067aa0ba902b1-01"))
            .bearer_auth(user_token("alice"))
            .body(r#"{"text":"hi"}"#)
            .send()
            .await
            .expect("gateway reachable")
            .status();
        assert_eq!(status, 200);
        traces.push(trace);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    traces
}

async fn spans_of(collector: &ForeignCollector, traces: &[String]) -> Vec<Value> {
    wait_for(
        "every trace at the collector",
        Duration::from_secs(20),
        || async {
            let spans: Vec<Value> = traces.iter().flat_map(|t| collector.spans(t)).collect();
            traces
                .iter()
                .all(|t| spans.iter().any(|s| s["trace_id"] == t.as_str()))
                .then_some(spans)
        },
    )
    .await
}

/// A collector behind TLS with a CA the test made, demanding a client certificate: the gateway
/// trusts the CA (`telemetry.ca_file`), presents its own certificate, and sends the headers a
/// hosted backend authenticates by, one from a file and one from an environment variable.
/// Neither secret appears in the gateway's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_behind_tls_with_a_client_certificate_and_headers() {
    let dir = ScratchDir::new("otlp-tls");
    make_ca(&dir).await;
    let (server_pem, server_key) = signed(&dir, "server").await;
    let (client_pem, client_key) = signed(&dir, "client").await;
    let port = free_port();
    let s = |p: &PathBuf| p.display().to_string();
    let collector = ForeignCollector::start_on(
        port,
        &[
            "--tls",
            &s(&server_pem),
            &s(&server_key),
            "--client-ca",
            &s(&dir.path("ca.pem")),
        ],
    )
    .await;
    std::fs::write(dir.path("otlp-auth"), "Basic ZmlsZS1zZWNyZXQtMQ==\n").unwrap();
    let backend = EchoBackend::start().await;
    // Relative paths: the config file's directory.
    let tail = format!(
        "{TAIL}telemetry:\n  otlp_endpoint: \"https://127.0.0.1:{port}\"\n  ca_file: ca.pem\n  \
         client_cert: {}\n  client_key: {}\n  headers:\n    \
         authorization: {{file: otlp-auth}}\n    x-honeycomb-team: {{env: HONEYCOMB_KEY}}\n",
        s(&client_pem),
        s(&client_key)
    );
    let gw = GatewayProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_gateway_process"),
        &dir,
        &echo_routes(&[backend.addr], ""),
        &tail,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("HONEYCOMB_KEY", "env-secret-2"),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    let traces = traced_calls(&gw).await;
    let spans = spans_of(&collector, &traces).await;
    assert!(
        spans
            .iter()
            .all(|s| s["resource"]["service.name"] == "im-gateway"),
        "{spans:#?}"
    );
    let exports = collector.exports();
    assert!(!exports.is_empty());
    for metadata in &exports {
        assert_eq!(
            metadata["authorization"], "Basic ZmlsZS1zZWNyZXQtMQ==",
            "{metadata}"
        );
        assert_eq!(metadata["x-honeycomb-team"], "env-secret-2", "{metadata}");
    }
    drop(gw);
    let log = std::fs::read_to_string(dir.path("gateway.log")).unwrap();
    assert!(log.contains("DEBUG"), "the log runs at debug: {log}");
    for secret in ["env-secret-2", "ZmlsZS1zZWNyZXQtMQ"] {
        assert!(!log.contains(secret), "the log shows a header's value");
    }
}

/// Counts the bytes a client sends through it to `upstream`.
async fn counting_relay(upstream: u16) -> (u16, Arc<AtomicU64>) {
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(loopback(port)).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(loopback(upstream)).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            count.fetch_add(n as u64, Ordering::Relaxed);
                            if to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, sent)
}

/// With nothing under `telemetry:`, OpenTelemetry's standard variables configure the export:
/// endpoint, headers (percent-encoded), gzip, the service name and resource attributes. A
/// 20,000-byte resource attribute rides in every export request; gzip sends each in a few
/// hundred bytes (uncompressed, every request would carry all 20,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_environment_configures_a_gzip_export() {
    let collector_port = free_port();
    let collector = ForeignCollector::start_on(collector_port, &[]).await;
    let (relay, sent) = counting_relay(collector_port).await;
    let backend = EchoBackend::start().await;
    let dir = ScratchDir::new("otlp-env");
    let padding = "x".repeat(20_000);
    let resource = format!("deployment.environment=ci,padding={padding}");
    let endpoint = format!("http://127.0.0.1:{relay}");
    let gw = GatewayProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_gateway_process"),
        &dir,
        &echo_routes(&[backend.addr], ""),
        TAIL,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme%20co"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "edge-from-env"),
            ("OTEL_RESOURCE_ATTRIBUTES", &resource),
        ],
    )
    .await;
    let traces = traced_calls(&gw).await;
    let spans = spans_of(&collector, &traces).await;
    for span in &spans {
        assert_eq!(span["resource"]["service.name"], "edge-from-env");
        assert_eq!(span["resource"]["deployment.environment"], "ci");
        assert_eq!(
            span["resource"]["padding"].as_str().map(str::len),
            Some(20_000)
        );
    }
    drop(gw);
    let exports = collector.exports();
    assert!(exports.len() >= 3, "a batch per call: {exports:?}");
    assert!(
        exports.iter().all(|m| m["x-tenant"] == "acme co"),
        "{exports:?}"
    );
    // Each export carries the 20,000-byte resource; compressed, all of them together (and the
    // connection's own frames) stay under one uncompressed request.
    let bytes = sent.load(Ordering::Relaxed);
    assert!(
        bytes < 20_000,
        "{bytes} bytes sent for {} exports: not compressed",
        exports.len()
    );
}
