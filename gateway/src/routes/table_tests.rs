//! Tests of `table`.

use super::*;
use crate::routes::build::DEFAULT_MAX_BODY;
use std::time::Duration;

const BASE: &str = r#"
upstreams:
  echo:
    endpoints: ["127.0.0.1:50051", { addr: "127.0.0.1:50052", weight: 2 }]
    health_check: { grpc_service: im.echo.v1.EchoService, interval: 1s }
    timeout: 2s
routes:
  - name: echo
    http: { method: POST, path: /service/echo }
    cmd: 7
    upstream: echo
    grpc: im.echo.v1.EchoService/Echo
    auth: none
  - name: echo_grpc
    grpc_service: im.echo.v1.EchoService
    upstream: echo
"#;

fn build(text: &str) -> Result<RouteTable, RoutesError> {
    let (pool, bytes) = super::super::descriptors::load(None).unwrap();
    RouteTable::build(text, pool, &bytes, &Registries::default())
}

fn errors(text: &str) -> String {
    match build(text) {
        Ok(_) => panic!("accepted a broken file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_file_is_indexed() {
    let t = build(BASE).unwrap();
    let r = t.match_http(&http::Method::POST, "/service/echo").unwrap();
    assert_eq!(r.name, "echo");
    assert_eq!(r.max_body, DEFAULT_MAX_BODY);
    assert_eq!(
        t.match_http(&http::Method::GET, "/service/echo").err(),
        Some(RouteMiss::MethodNotAllowed)
    );
    assert_eq!(
        t.match_http(&http::Method::POST, "/nope").err(),
        Some(RouteMiss::NotFound)
    );
    assert_eq!(t.match_cmd(7, 1).unwrap().name, "echo");
    assert_eq!(
        t.match_grpc("/im.echo.v1.EchoService/Echo").unwrap().name,
        "echo_grpc"
    );
    assert!(t.match_grpc("/other.Svc/X").is_none());
    let up = &t.upstreams["echo"];
    assert_eq!(up.timeout, Duration::from_secs(2));
    assert_eq!(up.endpoints[1].weight, 2);
}

#[test]
fn discovery_is_validated_and_merges_found_endpoints_by_address() {
    let with = |discovery: &str| {
        BASE.replace(
            r#"    endpoints: ["127.0.0.1:50051", { addr: "127.0.0.1:50052", weight: 2 }]"#,
            &format!("    discovery: {discovery}"),
        )
    };
    for (discovery, field, fix) in [
        ("{}", "field `discovery`", "exactly one of `dns` and `etcd`"),
        (
            r#"{ dns: "user.internal" }"#,
            "field `discovery.dns`",
            "needs a port",
        ),
        (
            r#"{ dns: "bad name:1" }"#,
            "field `discovery.dns`",
            "not a DNS name",
        ),
        (
            r#"{ dns: "a.b:1", interval: 1ms }"#,
            "field `discovery.interval`",
            "100ms and 1h",
        ),
        (
            r#"{ dns: "a.b:1", nameservers: ["dns"] }"#,
            "field `discovery.nameservers[0]`",
            "IP:port",
        ),
        (
            r#"{ etcd: { endpoints: [], prefix: "/p/" } }"#,
            "field `discovery.etcd.endpoints`",
            "at least one",
        ),
        (
            r#"{ etcd: { endpoints: ["e:2379"], prefix: "p" } }"#,
            "field `discovery.etcd.prefix`",
            "start and end with `/`",
        ),
    ] {
        let e = errors(&with(discovery));
        assert!(
            e.contains("upstream `echo`") && e.contains(field) && e.contains(fix),
            "{discovery}: {e}"
        );
    }
    let no_endpoints = errors(&with("null"));
    assert!(
        no_endpoints.contains("or set `discovery`"),
        "{no_endpoints}"
    );

    // Found endpoints join listed ones; a listed address stays static.
    let text = BASE.replace(
        "    timeout: 2s\n",
        "    timeout: 2s\n    discovery: { dns: \"echo.internal:50051\" }\n",
    );
    let registries = Registries::default();
    let (pool, bytes) = super::super::descriptors::load(None).unwrap();
    let t = RouteTable::build(&text, pool, &bytes, &registries).unwrap();
    let source = t.upstreams["echo"].discovery.clone().unwrap();
    assert_eq!(t.sources().len(), 1);
    let found = |port: u16, weight| crate::discovery::Found {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
    };
    registries
        .discovered
        .found(&source, vec![found(50051, 9), found(50060, 3)]);
    let t = t.rebuild(&registries).unwrap();
    let eps: Vec<_> = t.upstreams["echo"]
        .endpoints
        .iter()
        .map(|e| (e.addr.port(), e.weight, e.origin))
        .collect();
    assert_eq!(
        eps,
        [
            (50051, 1, "static"),
            (50052, 2, "static"),
            (50060, 3, "dns")
        ]
    );
    // Health is by address and the pool is checked: the found endpoint waits for a check.
    assert!(!t.upstreams["echo"].endpoints[2].state.available());
}

#[test]
fn a_cmd_binds_another_method_per_protocol_version() {
    let versioned = BASE.replace(
            "    auth: none\n  - name: echo_grpc",
            "    auth: none\n    versions: { 2: { grpc: im.echo.v1.EchoService/EchoV2 } }\n  - name: echo_grpc",
        );
    let t = build(&versioned).unwrap();
    assert_eq!(
        t.match_cmd(7, 1).unwrap().path.as_str(),
        "/im.echo.v1.EchoService/Echo"
    );
    for v in [2, 9] {
        let r = t.match_cmd(7, v).unwrap();
        assert_eq!(r.path.as_str(), "/im.echo.v1.EchoService/EchoV2");
        assert_eq!((r.name.as_str(), r.cmd), ("echo", Some(7)));
    }
    // HTTP has no protocol version: the route's own method.
    let r = t.match_http(&http::Method::POST, "/service/echo").unwrap();
    assert_eq!(r.path.as_str(), "/im.echo.v1.EchoService/Echo");

    let e = errors(&versioned.replace("{ 2: {", "{ 3: {"));
    assert!(
            e.contains("route `echo`: field `versions`: protocol version 3 is not one this gateway speaks; use 2"),
            "{e}"
        );
    let e = errors(&versioned.replace("EchoV2", "EchoV9"));
    assert!(
        e.contains("field `versions.2.grpc`: method `EchoV9` is not in service"),
        "{e}"
    );
    let e = errors(&versioned.replace("    cmd: 7\n", ""));
    assert!(
        e.contains("versions bind a cmd per protocol version"),
        "{e}"
    );
    let e = errors(&versioned.replace("{ grpc: im", "{ method: im"));
    assert!(e.contains("method"), "{e}");
}

#[test]
fn unknown_key_names_route_and_field() {
    let e = errors(&BASE.replace("auth: none", "auth: none\n    colour: blue"));
    assert!(e.contains("route `echo`") && e.contains("colour"), "{e}");
}

#[test]
fn undefined_upstream() {
    let e = errors(&BASE.replace("upstream: echo\n    grpc:", "upstream: nope\n    grpc:"));
    assert!(
        e.contains("route `echo`: field `upstream`: `nope` is not defined"),
        "{e}"
    );
}

#[test]
fn duplicate_path_and_cmd() {
    let dup = BASE.to_owned()
        + r#"  - name: echo2
    http: { method: POST, path: /service/echo }
    cmd: 7
    upstream: echo
    grpc: im.echo.v1.EchoService/Echo
"#;
    let e = errors(&dup);
    assert!(e.contains("route `echo2`: field `http.path`"), "{e}");
    let dup_cmd = BASE.to_owned()
        + r#"  - name: echo2
    http: { method: POST, path: /service/echo2 }
    cmd: 7
    upstream: echo
    grpc: im.echo.v1.EchoService/Echo
"#;
    let e = errors(&dup_cmd);
    assert!(
        e.contains("route `echo2`: field `cmd`: 7 is already used by `echo`"),
        "{e}"
    );
}

#[test]
fn bad_duration() {
    let e = errors(&BASE.replace("timeout: 2s", "timeout: 2 parsecs"));
    assert!(
        e.contains("upstreams.echo.timeout") && e.contains("unknown unit"),
        "{e}"
    );
}

#[test]
fn unknown_method() {
    let e = errors(&BASE.replace("EchoService/Echo", "EchoService/Shout"));
    assert!(
        e.contains("route `echo`: field `grpc`: method `Shout`"),
        "{e}"
    );
    let e = errors(&BASE.replace(
        "grpc_service: im.echo.v1.EchoService",
        "grpc_service: im.nope.v1.X",
    ));
    assert!(e.contains("route `echo_grpc`: field `grpc_service`"), "{e}");
}

#[test]
fn pass_through_methods_are_an_allow_list_of_real_methods() {
    let listed = BASE.replace(
        "grpc_service: im.echo.v1.EchoService\n",
        "grpc_service: im.echo.v1.EchoService\n    methods: [Echo]\n",
    );
    let t = build(&listed).unwrap();
    assert!(t.match_grpc("/im.echo.v1.EchoService/Echo").is_some());
    assert!(t.match_grpc("/im.echo.v1.EchoService/SetHealth").is_none());
    assert!(build(BASE)
        .unwrap()
        .match_grpc("/im.echo.v1.EchoService/SetHealth")
        .is_some());
    let e = errors(&listed.replace("methods: [Echo]", "methods: [Echo, Nope]"));
    assert!(e.contains("field `methods`") && e.contains("Nope"), "{e}");
    let e = errors(&listed.replace("methods: [Echo]", "methods: []"));
    assert!(e.contains("field `methods`"), "{e}");
}

#[test]
fn only_pass_through_routes_that_verify_a_credential_forward_it() {
    let forwarding = BASE.replace(
        "grpc_service: im.echo.v1.EchoService\n",
        "grpc_service: im.echo.v1.EchoService\n    forward_credentials: true\n",
    );
    match build(&forwarding)
        .unwrap()
        .match_grpc("/im.echo.v1.EchoService/Echo")
    {
        Some(route) => assert!(route.forward_credentials),
        None => panic!("pass-through route not found"),
    }
    let on_bridge = BASE.replace("auth: none", "auth: none\n    forward_credentials: true");
    let e = errors(&on_bridge);
    assert!(
        e.contains("route `echo`: field `forward_credentials`"),
        "{e}"
    );
    assert!(e.contains("only pass-through routes"), "{e}");
    let e = errors(&forwarding.replace(
        "forward_credentials: true",
        "forward_credentials: true\n    auth: none",
    ));
    assert!(
        e.contains("route `echo_grpc`: field `forward_credentials`")
            && e.contains("verifies nothing"),
        "{e}"
    );
}

#[test]
fn max_body_must_fit_max_message() {
    let e = errors(&BASE.replace("auth: none", "auth: none\n    max_body: 8MiB"));
    assert!(
        e.contains("field `max_body`") && e.contains("max_message"),
        "{e}"
    );
}

#[test]
fn version_changes_with_content() {
    let a = build(BASE).unwrap().version;
    let b = build(&BASE.replace("2s", "3s")).unwrap().version;
    assert_ne!(a, b);
    assert_eq!(a, build(BASE).unwrap().version);
}
