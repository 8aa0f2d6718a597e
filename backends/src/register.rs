//! Registration in etcd (`--register etcd://host:port[,host:port]/prefix/`): every gRPC service
//! this process serves is written as `<prefix><service>/<host:port>` ->
//! `{"addr": "host:port", "weight": N}` under one lease, kept alive every third of its TTL. On
//! shutdown the lease is revoked, so the keys go at once; a killed process's keys go when the
//! lease lapses. If etcd is unreachable the registrar retries with a new lease; serving never
//! waits for it.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The default key prefix: `/im/services/<service>/<addr>`.
pub const DEFAULT_PREFIX: &str = "/im/services/";
const RETRY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the lease to be revoked.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how this process registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ttl: Duration,
    /// The address gateways call (the listen address unless `--advertise` says otherwise).
    pub advertise: SocketAddr,
    pub weight: u32,
}

impl Registration {
    /// Parses `etcd://host:port[,host:port][/prefix/]`.
    pub fn parse(
        url: &str,
        ttl: Duration,
        advertise: SocketAddr,
        weight: u32,
    ) -> Result<Self, String> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            format!(
                "--register: `{url}` must start with etcd:// (etcd://127.0.0.1:2379/im/services/)"
            )
        })?;
        let (hosts, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_PREFIX),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(format!("--register: `{url}` names no etcd host"));
        }
        let prefix = if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(3600) {
            return Err("--register-ttl: use 2 to 3600 seconds".into());
        }
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(format!(
                "--advertise: gateways cannot call `{advertise}`; pass the address they reach this process on"
            ));
        }
        if !(1..=1000).contains(&weight) {
            return Err("--register-weight: use 1 to 1000".into());
        }
        Ok(Self {
            endpoints,
            prefix,
            ttl,
            advertise,
            weight,
        })
    }

    /// The key of `service`.
    pub fn key(&self, service: &str) -> String {
        format!("{}{service}/{}", self.prefix, self.advertise)
    }

    fn value(&self) -> String {
        serde_json::json!({ "addr": self.advertise.to_string(), "weight": self.weight }).to_string()
    }
}

/// The running registrar; [`Registrar::stop`] revokes the lease.
pub struct Registrar {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Registrar {
    pub fn start(reg: Registration, services: Vec<&'static str>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(reg, services, stopped));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Revokes the lease (its keys go at once), waiting at most [`REVOKE_TIMEOUT`].
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(REVOKE_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("etcd lease not revoked in time; the keys go when it lapses");
            self.task.abort();
        }
    }
}

async fn run(reg: Registration, services: Vec<&'static str>, mut stopped: oneshot::Receiver<()>) {
    loop {
        let mut lease = None;
        let failure = tokio::select! {
            Err(e) = keep_registered(&reg, &services, &mut lease) => Some(e),
            _ = &mut stopped => None,
        };
        let Some(error) = failure else {
            // Shutting down: revoke, so gateways drop this process now rather than at the TTL.
            if let Some((mut client, id)) = lease {
                match client.lease_revoke(id).await {
                    Ok(_) => tracing::info!(services = ?services, "etcd registration removed"),
                    Err(e) => tracing::warn!(error = %e, "revoking the etcd lease"),
                }
            }
            return;
        };
        tracing::warn!(etcd = %reg.endpoints.join(","), %error, "etcd registration failing; retrying with a new lease");
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut stopped => return,
        }
    }
}

/// Grants a lease, writes every key under it and keeps it alive; returns only on failure.
async fn keep_registered(
    reg: &Registration,
    services: &[&'static str],
    lease: &mut Option<(Client, i64)>,
) -> Result<std::convert::Infallible, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut client = Client::connect(&reg.endpoints, Some(options))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let ttl = reg.ttl.as_secs() as i64;
    let id = client
        .lease_grant(ttl, None)
        .await
        .map_err(|e| format!("granting a lease: {e}"))?
        .id();
    *lease = Some((client.clone(), id));
    for service in services {
        client
            .put(
                reg.key(service),
                reg.value(),
                Some(PutOptions::new().with_lease(id)),
            )
            .await
            .map_err(|e| format!("writing {}: {e}", reg.key(service)))?;
    }
    tracing::info!(services = ?services, addr = %reg.advertise, ttl, "registered in etcd");
    let (mut keeper, mut replies) = client
        .lease_keep_alive(id)
        .await
        .map_err(|e| format!("keeping the lease alive: {e}"))?;
    let mut tick = tokio::time::interval(reg.ttl / 3);
    loop {
        tick.tick().await;
        keeper
            .keep_alive()
            .await
            .map_err(|e| format!("keeping the lease alive: {e}"))?;
        match replies.message().await {
            Ok(Some(reply)) if reply.ttl() > 0 => {}
            Ok(Some(_)) => return Err("the lease expired".into()),
            Ok(None) => return Err("etcd closed the keep-alive stream".into()),
            Err(e) => return Err(format!("keeping the lease alive: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "10.0.0.5:50051".parse().unwrap()
    }

    #[test]
    fn urls_parse_into_endpoints_and_prefix() {
        let ttl = Duration::from_secs(10);
        let r = Registration::parse("etcd://a:2379,b:2379/svc", ttl, addr(), 2).unwrap();
        assert_eq!(r.endpoints, ["a:2379", "b:2379"]);
        assert_eq!(
            r.key("im.user.v1.UserService"),
            "/svc/im.user.v1.UserService/10.0.0.5:50051"
        );
        assert_eq!(r.value(), r#"{"addr":"10.0.0.5:50051","weight":2}"#);
        let r = Registration::parse("etcd://127.0.0.1:2379", ttl, addr(), 1).unwrap();
        assert_eq!(r.prefix, DEFAULT_PREFIX);
        for (bad, why) in [("http://x:1/", "etcd://"), ("etcd:///p/", "no etcd host")] {
            let e = Registration::parse(bad, ttl, addr(), 1).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert!(Registration::parse("etcd://a:1/", ttl, any, 1)
            .unwrap_err()
            .contains("--advertise"));
        assert!(
            Registration::parse("etcd://a:1/", Duration::from_secs(1), addr(), 1)
                .unwrap_err()
                .contains("--register-ttl")
        );
    }
}
