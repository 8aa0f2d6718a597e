//! Authentication and authorization at the edge (DESIGN §5): every bad credential is a 401 that
//! never reaches a backend; identity comes from the token only; roles, API keys and CORS.

use im_proto::im::echo::v1::echo_service_client::EchoServiceClient;
use im_proto::im::echo::v1::EchoRequest;
use im_tests::{hs256_token, unix_now, user_token, EchoBackend, ScratchDir, TestGateway};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::process::Command;
use tonic::Code;

fn routes(backend: std::net::SocketAddr) -> String {
    format!(
        r#"upstreams:
  echo: {{ endpoints: ["{backend}"] }}
routes:
  - {{ name: private, http: {{ path: /private }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo }}
  - {{ name: login, http: {{ path: /login }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none }}
  - {{ name: admin, http: {{ path: /admin_only }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, roles: [admin] }}
  - {{ name: machine, http: {{ path: /machine }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: api_key }}
  - {{ name: echo_grpc, grpc_service: im.echo.v1.EchoService, upstream: echo, roles: [admin] }}
"#
    )
}

/// An RSA key pair made by openssl: (private PEM, public PEM path).
async fn rsa_keys(dir: &ScratchDir) -> (Vec<u8>, std::path::PathBuf) {
    key_pair(
        dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
    .await
}

/// `sha256sum` of a string, through the system tool, as an operator would compute it.
fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{s}' | sha256sum"))
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_401_and_never_reaches_the_backend() {
    let dir = ScratchDir::new("keys");
    let (rsa_private, rsa_public) = rsa_keys(&dir).await;
    let backend = EchoBackend::start().await;
    let public = rsa_public.clone();
    let gw = TestGateway::start_with(&routes(backend.addr), move |cfg| {
        cfg.auth.issuer = Some("im".into());
        cfg.auth.audience = Some("clients".into());
        cfg.auth.public_keys = vec![im_gateway::filters::auth::PublicKeyConfig {
            alg: im_gateway::filters::auth::KeyAlg::RS256,
            file: public,
        }];
    })
    .await;
    let now = unix_now();
    let good = json!({"sub": "u1", "sid": "s-good", "dev": "phone-1", "plt": "ios", "iss": "im", "aud": "clients", "exp": now + 60});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        hs256_token(&c)
    };
    let mut tampered = hs256_token(&good);
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let alg_none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", // {"alg":"none","typ":"JWT"}
        hs256_token(&good).split('.').nth(1).unwrap()
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&std::fs::read(&rsa_public).unwrap()),
    )
    .unwrap();
    let revoked = with("sid", json!("s-revoked"));
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/revoke"))
        .header("content-type", "application/json")
        .body(json!({"sid": "s-revoked", "exp": now + 60}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("not-a-jwt".into())),
        ("bad signature", Some(tampered)),
        ("alg none", Some(alg_none)),
        ("algorithm confusion", Some(confused)),
        ("expired", Some(with("exp", json!(now - 120)))),
        ("not yet valid", Some(with("nbf", json!(now + 120)))),
        ("wrong audience", Some(with("aud", json!("someone-else")))),
        ("wrong issuer", Some(with("iss", json!("evil")))),
        ("revoked sid", Some(revoked)),
    ];
    for (name, token) in cases {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, _, body) = gw.post("/private", "{}", &headers).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["code"], "UNAUTHENTICATED", "{name}");
    }
    assert_eq!(
        backend.calls(),
        0,
        "no rejected request reached the backend"
    );

    // A valid RS256 token passes, and its identity (not the client's headers) reaches the backend.
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &good,
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    let auth = format!("Bearer {rs}");
    let (status, _, body) = gw
        .post(
            "/private",
            "{}",
            &[
                ("authorization", &auth),
                ("x-user-id", "admin"),
                ("x-device-id", "forged"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["x-user-id"], "u1");
    assert_eq!(body["metadata"]["x-device-id"], "phone-1");
    assert_eq!(body["metadata"]["x-platform"], "ios");

    let metrics = gw.metrics().await;
    for reason in [
        "missing",
        "expired",
        "revoked",
        "issuer",
        "audience",
        "not_yet_valid",
    ] {
        assert!(
            metrics.contains(&format!(
                "im_gateway_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_routes_ignore_stale_tokens_and_keep_valid_identity() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&routes(backend.addr)).await;
    let expired = hs256_token(&json!({"sub": "u1", "exp": unix_now() - 3600}));
    let (status, _, body) = gw
        .post(
            "/login",
            "{}",
            &[
                ("authorization", &format!("Bearer {expired}")),
                ("x-user-id", "forged"),
            ],
        )
        .await;
    assert_eq!(
        status, 200,
        "an expired token on a login route is ignored: {body}"
    );
    assert!(body["metadata"].get("x-user-id").is_none(), "{body}");
    let (status, _, body) = gw
        .post(
            "/login",
            "{}",
            &[("authorization", &format!("Bearer {}", user_token("u7")))],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["metadata"]["x-user-id"], "u7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_api_keys_and_cors() {
    let backend = EchoBackend::start().await;
    let hash = sha256_hex("machine-key-1");
    let gw = TestGateway::start_with(&routes(backend.addr), move |cfg| {
        cfg.auth.api_keys = vec![im_gateway::filters::auth::ApiKeyConfig {
            name: "billing".into(),
            sha256: hash,
        }];
        cfg.cors.allowed_origins = vec!["https://app.example".into()];
    })
    .await;

    let plain = format!("Bearer {}", user_token("u1"));
    let admin = format!(
        "Bearer {}",
        hs256_token(&json!({"sub": "root", "roles": ["admin"], "exp": unix_now() + 60}))
    );
    let (status, _, body) = gw
        .post("/admin_only", "{}", &[("authorization", &plain)])
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let (status, _, _) = gw
        .post("/admin_only", "{}", &[("authorization", &admin)])
        .await;
    assert_eq!(status, 200);

    let (status, _, _) = gw
        .post("/machine", "{}", &[("x-api-key", "machine-key-2")])
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = gw.post("/machine", "{}", &[]).await;
    assert_eq!(status, 401);
    let (status, _, body) = gw
        .post("/machine", "{}", &[("x-api-key", "machine-key-1")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["metadata"]["x-api-client"], "billing");

    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, gw.url("/private"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(denied
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let (_, headers, _) = gw
        .post("/login", "{}", &[("origin", "https://app.example")])
        .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (_, headers, _) = gw
        .post("/login", "{}", &[("origin", "https://evil.example")])
        .await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_rejections_are_grpc_statuses() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&format!(
        r#"upstreams:
  echo: {{ endpoints: ["{}"] }}
routes:
  - {{ name: echo_grpc, grpc_service: im.echo.v1.EchoService, upstream: echo, roles: [admin], rate_limit: {{ key: user, per_second: 0.01, burst: 1 }} }}
"#,
        backend.addr
    ))
    .await;
    let mut client = EchoServiceClient::connect(gw.url("")).await.unwrap();
    let call = |token: Option<String>| {
        let mut req = tonic::Request::new(EchoRequest::default());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let err = client.echo(call(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client.echo(call(Some(user_token("u1")))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let admin = hs256_token(&json!({"sub": "root", "roles": ["admin"], "exp": unix_now() + 60}));
    let ok = client
        .echo(call(Some(admin.clone())))
        .await
        .expect("first call within the burst");
    assert_eq!(ok.into_inner().metadata["x-user-id"], "root");
    let err = client.echo(call(Some(admin))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(backend.calls(), 1);
}

/// A key pair made by openssl for `genpkey` arguments: (private PEM, public PEM path).
async fn key_pair(dir: &ScratchDir, name: &str, genpkey: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let (key, public) = (
        dir.path(&format!("{name}.pem")),
        dir.path(&format!("{name}.pub.pem")),
    );
    let ok = Command::new("openssl")
        .arg("genpkey")
        .args(genpkey)
        .arg("-out")
        .arg(&key)
        .status()
        .await
        .unwrap();
    assert!(ok.success(), "openssl genpkey {genpkey:?}");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .await
        .unwrap();
    assert!(ok.success());
    (std::fs::read(&key).unwrap(), public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_tokens_verify_and_foreign_keys_do_not() {
    use im_gateway::filters::auth::{KeyAlg, PublicKeyConfig};
    let dir = ScratchDir::new("keys2");
    let (ec, ec_pub) = key_pair(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
    .await;
    let (ed, ed_pub) = key_pair(&dir, "ed", &["-algorithm", "ED25519"]).await;
    let (other_ec, _) = key_pair(
        &dir,
        "ec2",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
    .await;
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&routes(backend.addr), move |cfg| {
        cfg.auth.public_keys = vec![
            PublicKeyConfig {
                alg: KeyAlg::ES256,
                file: ec_pub,
            },
            PublicKeyConfig {
                alg: KeyAlg::EdDSA,
                file: ed_pub,
            },
        ];
    })
    .await;
    let claims = json!({"sub": "u-asym", "exp": unix_now() + 60});
    let sign = |alg, key: EncodingKey| {
        format!(
            "Bearer {}",
            encode(&Header::new(alg), &claims, &key).unwrap()
        )
    };
    let es = sign(Algorithm::ES256, EncodingKey::from_ec_pem(&ec).unwrap());
    let eddsa = sign(Algorithm::EdDSA, EncodingKey::from_ed_pem(&ed).unwrap());
    let foreign = sign(
        Algorithm::ES256,
        EncodingKey::from_ec_pem(&other_ec).unwrap(),
    );
    for (name, token, want) in [
        ("ES256", &es, 200),
        ("EdDSA", &eddsa, 200),
        ("foreign ES256 key", &foreign, 401),
    ] {
        let (status, _, body) = gw.post("/private", "{}", &[("authorization", token)]).await;
        assert_eq!(status, want, "{name}: {body}");
        if want == 200 {
            assert_eq!(body["metadata"]["x-user-id"], "u-asym");
        }
    }
}
