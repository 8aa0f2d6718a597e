//! One upstream pool of a route table: its endpoints, selection policy and call limits.
//! Selection uses pingora-load-balancing's algorithms; health comes from [`super::health`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use rand::Rng;

use super::health::{EndpointState, HealthCheck};
use crate::discovery::Source;
use crate::policy::LbPolicy;

/// How many candidates selection inspects before giving up (bounds ketama's linear walk).
const MAX_SELECT_ITERATIONS: usize = 256;

pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<EndpointState>,
    /// Where the endpoint came from: `static` (listed in routes.yaml), `dns` or `etcd`.
    pub origin: &'static str,
}

pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    pub health_check: Option<HealthCheck>,
    /// Per attempt.
    pub timeout: Duration,
    /// Extra attempts for attempts the backend provably never processed.
    pub retries: u32,
    /// gRPC message limit (both directions) of the tonic client for this pool.
    pub max_message: usize,
    /// Where more endpoints are looked up, if anywhere (set after [`Upstream::new`]).
    pub discovery: Option<Source>,
    selector: Selector,
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    /// Power of two random choices over available endpoints, by in-flight attempts.
    LeastInflight,
}

fn balancer<S>(endpoints: &[Endpoint]) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let set: BTreeSet<Backend> = endpoints
        .iter()
        .map(|e| Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(e.addr),
            weight: e.weight as usize,
            ext: Default::default(),
        })
        .collect();
    let lb = LoadBalancer::from_backends(Backends::new(Static::new(set)));
    // Static discovery never blocks nor fails.
    let _ = lb.update().now_or_never();
    lb
}

impl Upstream {
    pub fn new(
        name: String,
        endpoints: Vec<Endpoint>,
        lb: LbPolicy,
        health_check: Option<HealthCheck>,
        timeout: Duration,
        retries: u32,
        max_message: usize,
    ) -> Self {
        let selector = match lb {
            LbPolicy::RoundRobin => Selector::RoundRobin(balancer(&endpoints)),
            LbPolicy::Random => Selector::Random(balancer(&endpoints)),
            LbPolicy::ConsistentHash => Selector::Consistent(balancer(&endpoints)),
            LbPolicy::LeastInflight => Selector::LeastInflight,
        };
        Self {
            name,
            endpoints,
            lb,
            health_check,
            timeout,
            retries,
            max_message,
            discovery: None,
            selector,
        }
    }

    fn endpoint(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    /// Picks an available endpoint not in `exclude`. `key` feeds consistent hashing (the user id).
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<&Endpoint> {
        let usable = |e: &Endpoint| e.state.available() && !exclude.contains(&e.addr);
        let accept = |b: &Backend, _: bool| {
            let addr = b.as_inet().copied();
            addr.and_then(|a| self.endpoint(a)).is_some_and(usable)
        };
        let picked = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Selector::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Selector::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Selector::LeastInflight => {
                let candidates: Vec<&Endpoint> =
                    self.endpoints.iter().filter(|e| usable(e)).collect();
                return match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    n => {
                        let mut rng = rand::thread_rng();
                        let a = candidates[rng.gen_range(0..n)];
                        let b = candidates[rng.gen_range(0..n)];
                        // Weight scales capacity: compare in-flight per unit of weight.
                        let load =
                            |e: &Endpoint| e.state.inflight() as u64 * 1000 / e.weight as u64;
                        Some(if load(b) < load(a) { b } else { a })
                    }
                };
            }
        };
        picked
            .and_then(|b| b.as_inet().copied())
            .and_then(|a| self.endpoint(a))
    }

    /// Whether any endpoint can take traffic now.
    pub fn any_available(&self) -> bool {
        self.endpoints.iter().any(|e| e.state.available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::HealthRegistry;

    fn pool(lb: LbPolicy, addrs: &[(&str, u32)]) -> Upstream {
        let reg = HealthRegistry::default();
        let endpoints = addrs
            .iter()
            .map(|(a, w)| {
                let addr: SocketAddr = a.parse().unwrap();
                Endpoint {
                    addr,
                    weight: *w,
                    state: reg.state(addr, false),
                    origin: "static",
                }
            })
            .collect();
        Upstream::new(
            "p".into(),
            endpoints,
            lb,
            None,
            Duration::from_secs(1),
            1,
            1 << 20,
        )
    }

    #[test]
    fn round_robin_spreads_and_respects_weight() {
        let p = pool(
            LbPolicy::RoundRobin,
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)],
        );
        let mut counts = [0; 2];
        for _ in 0..400 {
            let e = p.select(b"", &[]).unwrap();
            counts[(e.addr.port() - 1) as usize] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn skips_excluded_and_ejected() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::ConsistentHash,
            LbPolicy::LeastInflight,
        ] {
            let p = pool(lb, &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]);
            let first: SocketAddr = "127.0.0.1:1".parse().unwrap();
            for _ in 0..20 {
                assert_eq!(p.select(b"u1", &[first]).unwrap().addr.port(), 2);
            }
            p.endpoints[1].state.connect_failed(false);
            assert!(p.select(b"u1", &[first]).is_none(), "{lb:?}");
        }
    }

    #[test]
    fn consistent_hash_is_sticky() {
        let p = pool(
            LbPolicy::ConsistentHash,
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)],
        );
        let a = p.select(b"user-42", &[]).unwrap().addr;
        for _ in 0..50 {
            assert_eq!(p.select(b"user-42", &[]).unwrap().addr, a);
        }
    }

    #[test]
    fn least_inflight_prefers_idle() {
        let p = pool(
            LbPolicy::LeastInflight,
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
        );
        let _busy: Vec<_> = (0..10).map(|_| p.endpoints[0].state.begin()).collect();
        for _ in 0..50 {
            let e = p.select(b"", &[]).unwrap();
            // Two random picks may land on the busy one twice; never prefer it over the idle one.
            if e.addr.port() == 1 {
                continue;
            }
            assert_eq!(e.addr.port(), 2);
        }
        let idle_picks = (0..200)
            .filter(|_| p.select(b"", &[]).unwrap().addr.port() == 2)
            .count();
        assert!(idle_picks > 120, "{idle_picks}");
    }
}
