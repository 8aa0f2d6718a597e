//! One `upstreams:` entry checked and built into an [`Upstream`]: endpoints, health check,
//! timeout, retries and the message limit, with the file's defaults applied.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::{Problems, RouteError};
use super::file::{DiscoverySpec, EndpointSpec, RoutesFile, UpstreamSpec};
use super::registries::Registries;
use crate::discovery::{endpoint_addr, DnsTarget, EtcdTarget, Source};
use crate::upstream::{Endpoint, HealthCheck, Upstream};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RETRIES: u32 = 1;
pub const DEFAULT_MAX_MESSAGE: u64 = 4 << 20;
/// The longest time between two DNS lookups of a discovered upstream.
pub const DEFAULT_DNS_INTERVAL: Duration = Duration::from_secs(30);
/// Hard ceiling on any message size, whatever the file says.
pub const MAX_MESSAGE_CEILING: u64 = 256 << 20;

pub(super) fn build_upstream(
    name: &str,
    spec: &UpstreamSpec,
    file: &RoutesFile,
    registries: &Registries,
) -> Result<Upstream, Vec<RouteError>> {
    let health = &registries.health;
    let mut p = Problems::new(format!("upstream `{name}`"));
    if spec.endpoints.is_empty() && spec.discovery.is_none() {
        p.add(
            "endpoints",
            "must list at least one `host:port`, or set `discovery` (dns or etcd)",
        );
    }
    let discovery = spec
        .discovery
        .as_ref()
        .and_then(|d| discovery_source(d, &mut p));
    let check = health_check(spec, &mut p);
    let mut seen = HashSet::new();
    let mut endpoints = static_endpoints(spec, &mut p, &mut seen, |a| {
        health.state(a, check.is_some())
    });
    let timeout = spec
        .timeout
        .or(file.defaults.timeout)
        .map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        p.add("timeout", "must be above zero, e.g. `3s`");
    }
    let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 5 {
        p.add(
            "retries",
            "at most 5; retries only repeat attempts that never reached a backend",
        );
    }
    let max_message = spec
        .max_message
        .or(file.defaults.max_message)
        .map_or(DEFAULT_MAX_MESSAGE, |b| b.0);
    check_size(&mut p, "max_message", max_message);
    if !p.is_empty() {
        return Err(p.errors);
    }
    if let Some(source) = &discovery {
        // A listed address stays static; discovery adds the rest.
        for found in registries.discovered.endpoints(source) {
            if seen.insert(found.addr) {
                endpoints.push(Endpoint {
                    addr: found.addr,
                    weight: found.weight,
                    state: health.state(found.addr, check.is_some()),
                    origin: source.kind(),
                });
            }
        }
    }
    let mut upstream = Upstream::new(
        name.to_owned(),
        endpoints,
        spec.lb,
        check,
        timeout,
        retries,
        max_message as usize,
    );
    upstream.discovery = discovery;
    Ok(upstream)
}

/// `health_check:` with its defaults, each bad field noted in `p`.
fn health_check(spec: &UpstreamSpec, p: &mut Problems) -> Option<HealthCheck> {
    let check = spec.health_check.as_ref().map(|h| HealthCheck {
        grpc_service: h.grpc_service.clone(),
        interval: h.interval.map_or(Duration::from_secs(2), |d| d.0),
        timeout: h.timeout.map_or(Duration::from_millis(500), |d| d.0),
        rise: h.rise.unwrap_or(2),
        fall: h.fall.unwrap_or(2),
    })?;
    if check.interval < Duration::from_millis(10) {
        p.add("health_check.interval", "must be at least 10ms");
    }
    if check.timeout.is_zero() || check.timeout > check.interval.max(Duration::from_millis(10)) * 10
    {
        p.add(
            "health_check.timeout",
            "must be above zero and not far above the interval",
        );
    }
    if check.rise == 0 || check.fall == 0 {
        p.add("health_check.rise", "rise and fall must be at least 1");
    }
    Some(check)
}

/// The listed endpoints, each with its health `state`; every address goes into `seen`, each
/// bad one is noted in `p`.
fn static_endpoints(
    spec: &UpstreamSpec,
    p: &mut Problems,
    seen: &mut HashSet<SocketAddr>,
    state: impl Fn(SocketAddr) -> std::sync::Arc<crate::upstream::EndpointState>,
) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let (addr, weight) = match ep {
            EndpointSpec::Addr(a) => (a.as_str(), 1),
            EndpointSpec::Weighted(w) => (w.addr.as_str(), w.weight),
        };
        let field = format!("endpoints[{i}]");
        match endpoint_addr(addr) {
            Some(a) if a.port() == 0 => p.add(&field, format!("`{addr}` needs a port")),
            Some(a) if !seen.insert(a) => p.add(&field, format!("`{addr}` is listed twice")),
            Some(_) if weight == 0 || weight > 1000 => {
                p.add(&field, "weight must be between 1 and 1000")
            }
            Some(a) => endpoints.push(Endpoint {
                addr: a,
                weight,
                state: state(a),
                origin: "static",
            }),
            None => p.add(
                &field,
                format!("`{addr}` is not an IP:port (for example 127.0.0.1:50051)"),
            ),
        }
    }
    endpoints
}

/// Checks `discovery:` and fills in its defaults.
fn discovery_source(spec: &DiscoverySpec, p: &mut Problems) -> Option<Source> {
    match (&spec.dns, &spec.etcd) {
        (Some(_), Some(_)) | (None, None) => {
            p.add("discovery", "set exactly one of `dns` and `etcd`");
            None
        }
        (Some(name), None) => {
            let interval = spec.interval.map_or(DEFAULT_DNS_INTERVAL, |d| d.0);
            if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
                p.add("discovery.interval", "must be between 100ms and 1h");
            }
            let mut nameservers = Vec::new();
            for (i, ns) in spec.nameservers.iter().enumerate() {
                match ns.parse::<SocketAddr>() {
                    Ok(a) => nameservers.push(a),
                    Err(_) => p.add(
                        &format!("discovery.nameservers[{i}]"),
                        format!("`{ns}` is not an IP:port (for example 10.0.0.2:53)"),
                    ),
                }
            }
            let (host, port) = match name.rsplit_once(':') {
                Some((host, port)) => match port.parse::<u16>() {
                    Ok(port) if port > 0 => (host, Some(port)),
                    _ => {
                        p.add("discovery.dns", format!("`{port}` is not a port"));
                        return None;
                    }
                },
                None if name.starts_with('_') => (name.as_str(), None),
                None => {
                    p.add(
                        "discovery.dns",
                        format!("`{name}` needs a port (`{name}:50051`), or is an SRV name (`_grpc._tcp.{name}`)"),
                    );
                    return None;
                }
            };
            let valid_host = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !valid_host {
                p.add("discovery.dns", format!("`{host}` is not a DNS name"));
                return None;
            }
            Some(Source::Dns(DnsTarget {
                name: host.to_owned(),
                port,
                nameservers,
                interval,
            }))
        }
        (None, Some(etcd)) => {
            if spec.interval.is_some() || !spec.nameservers.is_empty() {
                p.add(
                    "discovery",
                    "`interval` and `nameservers` apply to `dns` only; etcd is watched",
                );
            }
            if etcd.endpoints.is_empty() {
                p.add(
                    "discovery.etcd.endpoints",
                    "list at least one etcd client address, e.g. `127.0.0.1:2379`",
                );
            }
            if !etcd.prefix.starts_with('/') || !etcd.prefix.ends_with('/') {
                p.add(
                    "discovery.etcd.prefix",
                    format!("`{}` must start and end with `/` (for example /im/services/im.user.v1.UserService/)", etcd.prefix),
                );
            }
            Some(Source::Etcd(EtcdTarget {
                endpoints: etcd.endpoints.clone(),
                prefix: etcd.prefix.clone(),
            }))
        }
    }
}

/// A message or body size: at least one byte, at most [`MAX_MESSAGE_CEILING`].
pub(super) fn check_size(p: &mut Problems, field: &str, bytes: u64) {
    if bytes == 0 || bytes > MAX_MESSAGE_CEILING {
        p.add(
            field,
            format!(
                "must be between 1 byte and {}MiB",
                MAX_MESSAGE_CEILING >> 20
            ),
        );
    }
}

pub(super) fn list<T: AsRef<str>>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{}`", s.as_ref())).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}
