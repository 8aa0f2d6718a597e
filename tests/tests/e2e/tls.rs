//! TLS on the edge listener: h2 negotiated by ALPN, the bridge served over it.

use im_gateway::config::TlsFiles;
use im_tests::{echo_routes, EchoBackend, ScratchDir, TestGateway};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_edge_negotiates_h2() {
    let dir = ScratchDir::new("tls");
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .await
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let backend = EchoBackend::start().await;
    let tls = TlsFiles {
        cert: cert.clone(),
        key,
    };
    let gw =
        TestGateway::start_with(&echo_routes(&[backend.addr], ""), |cfg| cfg.tls = Some(tls)).await;
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&cert)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"text":"over tls"}"#,
        ])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://localhost:{}/service/echo", gw.edge.port()))
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#""text":"over tls""#),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.trim_end().ends_with("2 200"),
        "expected HTTP/2 200, got: {text}"
    );
}
