//! Service discovery end to end: upstream endpoints from DNS (a name server this test runs, whose
//! answers change) and from etcd (Debian's etcd, with backends that register themselves). New
//! endpoints take traffic only after their first passing check, removed ones drain, and a source
//! that fails keeps the last set serving while `/readyz` and the metrics say so. No reload happens.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use im_proto::im::echo::v1::echo_service_client::EchoServiceClient;
use im_proto::im::echo::v1::SetHealthRequest;
use im_tests::etcd_server::EtcdServer;
use im_tests::{free_port, loopback, wait_for, EchoBackend, EchoProcess, TestGateway};
use serde_json::Value;
use tokio::net::UdpSocket;

const EXE: &str = env!("CARGO_BIN_EXE_echo_backend");

/// A DNS server for one name: its A records are whatever the test sets now. It also answers
/// one SRV name, [`SRV_NAME`], pointing at the name's port on [`SRV_TARGET`] (127.0.0.3).
struct DnsServer {
    addr: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
}

const SRV_NAME: &str = "_grpc._tcp.echo.discovery.test.";
const SRV_TARGET: &str = "b.discovery.test.";

impl DnsServer {
    async fn start(name: &str, srv_port: u16) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns address");
        let answers: Arc<Mutex<Vec<Ipv4Addr>>> = Arc::new(Mutex::new(Vec::new()));
        let (served, name) = (answers.clone(), format!("{name}."));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::new(query.id, MessageType::Response, query.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                for q in &query.queries {
                    reply.add_query(q.clone());
                    let (asked, owner) = (q.name().to_ascii(), q.name().clone());
                    match q.query_type() {
                        RecordType::A if asked == name => {
                            for ip in served.lock().unwrap().iter() {
                                reply.add_answer(Record::from_rdata(
                                    owner.clone(),
                                    1,
                                    RData::A((*ip).into()),
                                ));
                            }
                        }
                        RecordType::A if asked == SRV_TARGET => {
                            let ip = Ipv4Addr::new(127, 0, 0, 3);
                            reply.add_answer(Record::from_rdata(owner, 1, RData::A(ip.into())));
                        }
                        RecordType::SRV if asked == SRV_NAME => {
                            let target = Name::from_ascii(SRV_TARGET).expect("a name");
                            let srv = SRV::new(0, 5, srv_port, target);
                            reply.add_answer(Record::from_rdata(owner, 1, RData::SRV(srv)));
                        }
                        _ => {}
                    }
                }
                reply.metadata.response_code = ResponseCode::NoError;
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self { addr, answers }
    }

    fn answer(&self, ips: &[Ipv4Addr]) {
        *self.answers.lock().unwrap() = ips.to_vec();
    }
}

fn discovery_routes(discovery: &str) -> String {
    format!(
        r#"upstreams:
  echo:
    discovery: {discovery}
    health_check: {{ grpc_service: im.echo.v1.EchoService, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}
    timeout: 5s
routes:
  - {{ name: echo, http: {{ path: /service/echo }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none }}
"#
    )
}

/// The endpoints `/admin/routes` lists for `echo`: address -> (source, health).
async fn listed(gw: &TestGateway) -> Vec<(String, String, String)> {
    let routes = gw.admin_json("/admin/routes").await;
    let mut out: Vec<_> = routes["upstreams"]["echo"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (s("addr"), s("source"), s("health"))
        })
        .collect();
    out.sort();
    out
}

async fn addrs(gw: &TestGateway) -> HashSet<String> {
    listed(gw).await.into_iter().map(|(a, _, _)| a).collect()
}

async fn wait_listed(gw: &TestGateway, what: &str, want: &[SocketAddr]) {
    let want: HashSet<String> = want.iter().map(|a| a.to_string()).collect();
    wait_for(what, Duration::from_secs(15), || {
        let want = want.clone();
        async move { (addrs(gw).await == want).then_some(()) }
    })
    .await;
}

async fn wait_health(gw: &TestGateway, addr: SocketAddr, want: &str) {
    wait_for(
        &format!("{addr} {want}"),
        Duration::from_secs(15),
        || async move { (gw.endpoint_health("echo", addr).await == want).then_some(()) },
    )
    .await;
}

async fn wait_healthy(gw: &TestGateway, addr: SocketAddr) {
    wait_health(gw, addr, "healthy").await;
}

/// Waits until `/readyz` says `status` (`ok` or `degraded`).
async fn wait_ready_status(gw: &TestGateway, status: &str) {
    wait_for(
        &format!("readyz {status}"),
        Duration::from_secs(15),
        || async { (readyz(gw).await["status"] == status).then_some(()) },
    )
    .await;
}

/// Waits until `addr` has a call in flight, as `/admin/routes` counts them.
async fn wait_inflight(gw: &TestGateway, addr: SocketAddr) {
    wait_for(
        &format!("a call in flight on {addr}"),
        Duration::from_secs(10),
        || async move {
            let routes = gw.admin_json("/admin/routes").await;
            let endpoints = routes["upstreams"]["echo"]["endpoints"].as_array().cloned();
            endpoints
                .into_iter()
                .flatten()
                .any(|e| e["addr"] == addr.to_string() && e["inflight"].as_u64() > Some(0))
                .then_some(())
        },
    )
    .await;
}

/// Who served one echo call (status 200 asserted).
async fn served_by(client: &reqwest::Client, gw: &TestGateway, body: &str) -> String {
    let resp = client
        .post(gw.url("/service/echo"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("gateway answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON reply");
    v["served_by"].as_str().unwrap_or("").to_owned()
}

async fn servers(client: &reqwest::Client, gw: &TestGateway, calls: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..calls {
        seen.insert(served_by(client, gw, "{}").await);
    }
    seen
}

fn only(addrs: &[SocketAddr]) -> HashSet<String> {
    addrs.iter().map(SocketAddr::to_string).collect()
}

async fn readyz(gw: &TestGateway) -> Value {
    gw.admin_json("/readyz").await
}

/// The value of `im_gateway_discovery_<name>` for the `echo` upstream.
async fn gauge(gw: &TestGateway, name: &str, source: &str) -> String {
    let series = format!("im_gateway_discovery_{name}{{source=\"{source}\",upstream=\"echo\"}} ");
    let text = gw.metrics().await;
    let line = text.lines().find(|l| l.starts_with(&series));
    line.and_then(|l| l.rsplit(' ').next())
        .unwrap_or("")
        .to_owned()
}

async fn set_serving(addr: SocketAddr, serving: bool) {
    let mut client = EchoServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("backend");
    client
        .set_health(SetHealthRequest { serving })
        .await
        .expect("SetHealth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_that_change_move_traffic_without_a_reload() {
    let a = EchoBackend::start_on("127.0.0.2:0".parse().unwrap(), 1 << 20).await;
    let port = a.addr.port();
    let b_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), port);
    let b = EchoBackend::start_on(b_addr, 1 << 20).await;
    let dns = DnsServer::start("echo.discovery.test", port).await;
    dns.answer(&[Ipv4Addr::new(127, 0, 0, 2)]);
    let gw = TestGateway::start(&discovery_routes(&format!(
        r#"{{ dns: "echo.discovery.test:{port}", nameservers: ["{}"], interval: 200ms }}"#,
        dns.addr
    )))
    .await;
    let client = reqwest::Client::new();
    wait_healthy(&gw, a.addr).await;
    assert_eq!(
        listed(&gw).await,
        vec![(a.addr.to_string(), "dns".into(), "healthy".into())]
    );
    assert_eq!(servers(&client, &gw, 4).await, only(&[a.addr]));

    // An added address whose health check fails is listed but takes no traffic...
    set_serving(b.addr, false).await;
    dns.answer(&[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]);
    wait_listed(&gw, "the added address listed", &[a.addr, b.addr]).await;
    wait_health(&gw, b.addr, "unhealthy").await;
    assert_ne!(gw.endpoint_health("echo", b.addr).await, "healthy");
    assert_eq!(servers(&client, &gw, 6).await, only(&[a.addr]));
    // ...until its first passing check.
    set_serving(b.addr, true).await;
    wait_healthy(&gw, b.addr).await;
    assert_eq!(servers(&client, &gw, 6).await, only(&[a.addr, b.addr]));

    // A removed address drains: calls already on it finish.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (client, gw_url) = (client.clone(), gw.url("/service/echo"));
            tokio::spawn(async move {
                let resp = client
                    .post(gw_url)
                    .header("content-type", "application/json")
                    .body(r#"{"delay_ms":1500}"#)
                    .send()
                    .await
                    .expect("answer");
                let status = resp.status().as_u16();
                let v: Value = serde_json::from_str(&resp.text().await.unwrap_or_default())
                    .unwrap_or_default();
                (status, v["served_by"].as_str().unwrap_or("").to_owned())
            })
        })
        .collect();
    wait_inflight(&gw, b.addr).await;
    dns.answer(&[Ipv4Addr::new(127, 0, 0, 2)]);
    wait_listed(&gw, "the removed address gone", &[a.addr]).await;
    let mut drained = HashSet::new();
    for call in slow {
        let (status, by) = call.await.expect("slow call");
        assert_eq!(status, 200, "an in-flight call finished on {by}");
        drained.insert(by);
    }
    assert!(
        drained.contains(&b.addr.to_string()),
        "a call was on the removed endpoint: {drained:?}"
    );
    assert_eq!(servers(&client, &gw, 4).await, only(&[a.addr]));

    // An empty answer keeps the last set; /readyz and the metric say so.
    dns.answer(&[]);
    wait_ready_status(&gw, "degraded").await;
    let ready = readyz(&gw).await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["discovery_failing"], serde_json::json!(["echo"]));
    assert!(ready["upstreams"]["echo"]["discovery"]["error"]
        .as_str()
        .unwrap()
        .contains("no address"));
    assert_eq!(gauge(&gw, "up", "dns").await, "0");
    assert_eq!(gauge(&gw, "endpoints", "dns").await, "1");
    assert_eq!(servers(&client, &gw, 4).await, only(&[a.addr]));

    dns.answer(&[Ipv4Addr::new(127, 0, 0, 2)]);
    wait_ready_status(&gw, "ok").await;
    assert_eq!(gauge(&gw, "up", "dns").await, "1");
    let status = gw.admin_json("/admin/routes").await;
    assert_eq!(status["reloads_ok"], 0, "discovery never reloads the file");
    assert_eq!(
        status["upstreams"]["echo"]["discovery"]["source"],
        format!("dns echo.discovery.test:{port}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_srv_records_give_ports_and_weights() {
    let b = EchoBackend::start_on("127.0.0.3:0".parse().unwrap(), 1 << 20).await;
    let dns = DnsServer::start("unused.discovery.test", b.addr.port()).await;
    let gw = TestGateway::start(&discovery_routes(&format!(
        r#"{{ dns: "{}", nameservers: ["{}"], interval: 200ms }}"#,
        SRV_NAME.trim_end_matches('.'),
        dns.addr
    )))
    .await;
    wait_healthy(&gw, b.addr).await;
    let routes = gw.admin_json("/admin/routes").await;
    let ep = &routes["upstreams"]["echo"]["endpoints"][0];
    assert_eq!(
        (ep["source"].as_str(), ep["weight"].as_u64()),
        (Some("dns"), Some(5))
    );
    let client = reqwest::Client::new();
    assert_eq!(servers(&client, &gw, 2).await, only(&[b.addr]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registrations_join_and_leave_and_an_outage_changes_nothing() {
    let mut etcd = EtcdServer::start().await;
    let register = format!("etcd://{}/im/services/", etcd.endpoint());
    let gw = TestGateway::start(&discovery_routes(&format!(
        r#"{{ etcd: {{ endpoints: ["{}"], prefix: "/im/services/im.echo.v1.EchoService/" }} }}"#,
        etcd.endpoint()
    )))
    .await;
    let client = reqwest::Client::new();
    assert!(addrs(&gw).await.is_empty());

    let a_addr = loopback(free_port());
    let a = EchoProcess::start_with_args(
        EXE,
        a_addr,
        &["--register", &register, "--register-ttl", "2"],
    )
    .await;
    wait_listed(&gw, "a registered backend joins", &[a_addr]).await;
    wait_healthy(&gw, a_addr).await;
    assert_eq!(listed(&gw).await[0].1, "etcd");
    assert_eq!(servers(&client, &gw, 3).await, only(&[a_addr]));

    // A backend started later joins without a reload.
    let b_addr = loopback(free_port());
    let b = EchoProcess::start_with_args(
        EXE,
        b_addr,
        &["--register", &register, "--register-ttl", "30"],
    )
    .await;
    wait_listed(&gw, "a later backend joins", &[a_addr, b_addr]).await;
    wait_healthy(&gw, b_addr).await;
    assert_eq!(servers(&client, &gw, 6).await, only(&[a_addr, b_addr]));

    // A killed one leaves when its lease lapses.
    a.kill();
    wait_listed(&gw, "the killed backend leaves", &[b_addr]).await;
    assert_eq!(servers(&client, &gw, 4).await, only(&[b_addr]));

    // etcd down: the last set keeps serving, /readyz and the metric say so.
    etcd.kill();
    wait_ready_status(&gw, "degraded").await;
    assert_eq!(
        readyz(&gw).await["discovery_failing"],
        serde_json::json!(["echo"])
    );
    assert_eq!(gauge(&gw, "up", "etcd").await, "0");
    assert_eq!(servers(&client, &gw, 4).await, only(&[b_addr]));
    assert_eq!(addrs(&gw).await, only(&[b_addr]));

    // etcd back: nothing that was serving changed.
    etcd.restart().await;
    wait_ready_status(&gw, "ok").await;
    assert_eq!(
        listed(&gw).await,
        vec![(b_addr.to_string(), "etcd".into(), "healthy".into())]
    );
    assert_eq!(servers(&client, &gw, 4).await, only(&[b_addr]));

    // A graceful stop revokes the lease: gone well before its 30 s TTL.
    let stopped = std::time::Instant::now();
    b.terminate().await;
    wait_listed(&gw, "the stopped backend leaves", &[]).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(gw.admin_json("/admin/routes").await["reloads_ok"], 0);
}

/// The `server_address`es `rpc_client_call_duration_seconds` has series for.
async fn addresses_in_metrics(gw: &TestGateway) -> HashSet<String> {
    gw.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("rpc_client_call_duration_seconds_count{"))
        .filter_map(|l| {
            let rest = &l[l.find("server_address=\"")? + 16..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_endpoints_that_come_and_go_leave_series_only_for_the_live_one() {
    let live = EchoBackend::start_on("127.0.0.2:0".parse().unwrap(), 1 << 20).await;
    let port = live.addr.port();
    let dns = DnsServer::start("echo.discovery.test", port).await;
    dns.answer(&[Ipv4Addr::new(127, 0, 0, 2)]);
    // No health check: a discovered endpoint takes calls at once (and nothing listens on the
    // churned ones, so their calls fail fast and are retried on the live one).
    let routes = discovery_routes(&format!(
        r#"{{ dns: "echo.discovery.test:{port}", nameservers: ["{}"], interval: 100ms }}"#,
        dns.addr
    ))
    .replace(
        "    health_check: { grpc_service: im.echo.v1.EchoService, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }\n",
        "",
    );
    let gw = TestGateway::start(&routes).await;
    let client = reqwest::Client::new();
    let mut seen = HashSet::new();
    // 40 rounds of 25 addresses (one UDP answer each): 1,000 endpoints, each live for a round.
    for round in 0..40u8 {
        let mut ips: Vec<Ipv4Addr> = (1..=25).map(|i| Ipv4Addr::new(127, 1, round, i)).collect();
        ips.push(Ipv4Addr::new(127, 0, 0, 2));
        dns.answer(&ips);
        let want: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::new((*ip).into(), port))
            .collect();
        wait_listed(&gw, &format!("round {round} listed"), &want).await;
        for _ in 0..25 {
            let _ = client
                .post(gw.url("/service/echo"))
                .header("content-type", "application/json")
                .body(r#"{"text":"x"}"#)
                .send()
                .await;
        }
        seen.extend(addresses_in_metrics(&gw).await);
    }
    assert!(
        seen.len() > 500,
        "calls reached the churned endpoints: {} addresses had series",
        seen.len()
    );
    dns.answer(&[Ipv4Addr::new(127, 0, 0, 2)]);
    wait_listed(&gw, "only the live endpoint", &[live.addr]).await;
    let _ = servers(&client, &gw, 2).await;
    let left = wait_for(
        "the gone endpoints' series dropped",
        Duration::from_secs(15),
        || async {
            let now = addresses_in_metrics(&gw).await;
            (now.len() <= 1).then_some(now)
        },
    )
    .await;
    assert_eq!(left, only(&[live.addr]), "of {} addresses seen", seen.len());
}
