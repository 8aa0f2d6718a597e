//! DNS discovery: `host:port` resolves A and AAAA records (every address, the given port); a name
//! without a port is an SRV name (`_grpc._tcp.user.internal`), whose records give each target's
//! port and weight. Looked up again after the answer's TTL or the interval, whichever is sooner
//! (but not more often than once a second unless the interval asks for it); the resolver's own
//! cache is off so every lookup asks the name server.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use super::{DiscoveredSets, DnsTarget, Found, Source};

/// How soon a lookup is repeated after a failure (or the interval, if shorter).
const RETRY: Duration = Duration::from_secs(2);
/// A TTL below this does not make lookups more frequent than the interval allows.
const MIN_TTL_WAIT: Duration = Duration::from_secs(1);
/// Each lookup's deadline, all attempts included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

fn resolver(target: &DnsTarget) -> Result<TokioResolver, String> {
    let mut builder = if target.nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system's resolvers: {e}"))?
    } else {
        let servers = target
            .nameservers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.attempts = 2;
    opts.timeout = Duration::from_secs(1);
    builder
        .build()
        .map_err(|e| format!("building the resolver: {e}"))
}

/// One lookup: the endpoints found and how long the answer is valid.
async fn lookup(
    resolver: &TokioResolver,
    target: &DnsTarget,
) -> Result<(Vec<Found>, Duration), String> {
    let now = Instant::now();
    match target.port {
        Some(port) => {
            let answer = match resolver.lookup_ip(target.name.as_str()).await {
                Ok(answer) => answer,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    return Ok((Vec::new(), Duration::ZERO))
                }
                Err(e) => return Err(format!("resolving {}: {e}", target.name)),
            };
            let found = answer
                .iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, port),
                    weight: 1,
                })
                .collect();
            Ok((found, answer.valid_until().saturating_duration_since(now)))
        }
        None => {
            let answer = match resolver.lookup(target.name.as_str(), RecordType::SRV).await {
                Ok(answer) => answer,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    return Ok((Vec::new(), Duration::ZERO))
                }
                Err(e) => return Err(format!("resolving SRV {}: {e}", target.name)),
            };
            let mut valid = answer.valid_until().saturating_duration_since(now);
            let mut found = Vec::new();
            for record in answer.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                // SRV weights are 0..=65535; pools take 1..=1000.
                let weight = u32::from(srv.weight).clamp(1, 1000);
                let host = srv.target.to_utf8();
                let ips: Vec<IpAddr> = match resolver.lookup_ip(host.as_str()).await {
                    Ok(ips) => {
                        valid = valid.min(ips.valid_until().saturating_duration_since(now));
                        ips.iter().collect()
                    }
                    Err(e) => {
                        tracing::debug!(%host, error = %e, "SRV target does not resolve");
                        Vec::new()
                    }
                };
                found.extend(ips.into_iter().map(|ip| Found {
                    addr: SocketAddr::new(ip, srv.port),
                    weight,
                }));
            }
            Ok((found, valid))
        }
    }
}

/// Resolves `target` until aborted, publishing each answer to `sets`.
pub async fn watch(target: DnsTarget, source: Source, sets: DiscoveredSets) {
    watch_with(target, source, sets, resolver).await;
}

/// [`watch`] with the resolver built by `build`: a resolver that cannot be built (the system's
/// `/etc/resolv.conf` unreadable, say) is reported and tried again, never given up on.
async fn watch_with(
    target: DnsTarget,
    source: Source,
    sets: DiscoveredSets,
    mut build: impl FnMut(&DnsTarget) -> Result<TokioResolver, String>,
) {
    let resolver = loop {
        match build(&target) {
            Ok(r) => break r,
            Err(e) => {
                sets.failed(&source, e);
                tokio::time::sleep(target.interval.min(RETRY)).await;
            }
        }
    };
    loop {
        let result = tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&resolver, &target))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "resolving {}: no answer in {LOOKUP_TIMEOUT:?}",
                    target.name
                ))
            });
        let wait = match result {
            Ok((found, valid)) if !found.is_empty() => {
                sets.found(&source, found);
                target.interval.min(valid.max(MIN_TTL_WAIT))
            }
            Ok(_) => {
                sets.failed(&source, format!("{} answered with no address", target.name));
                target.interval.min(RETRY)
            }
            Err(e) => {
                sets.failed(&source, e);
                target.interval.min(RETRY)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{resolver, watch_with, DiscoveredSets, DnsTarget, Source};

    #[tokio::test]
    async fn a_resolver_that_cannot_be_built_is_tried_again() {
        // A name server nobody listens on: once the resolver builds, lookups fail visibly.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = DnsTarget {
            name: "user.internal".into(),
            port: Some(50051),
            nameservers: vec![silent.local_addr().unwrap()],
            interval: Duration::from_millis(20),
        };
        drop(silent);
        let source = Source::Dns(target.clone());
        let sets = DiscoveredSets::default();
        let mut builds = 0;
        let watcher = tokio::spawn(watch_with(target, source.clone(), sets.clone(), move |t| {
            builds += 1;
            if builds <= 2 {
                Err("reading the system's resolvers: no /etc/resolv.conf".into())
            } else {
                resolver(t)
            }
        }));
        let error = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let error = sets.status(&source).and_then(|s| s.error);
                if error.as_deref().is_some_and(|e| e.starts_with("resolving")) {
                    return error;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        watcher.abort();
        assert!(
            error.is_ok(),
            "the watcher went on to look the name up after the failed builds: {:?}",
            sets.status(&source)
        );
    }
}
