//! The serde model of `routes.yaml`, exactly as ops write it. Nothing here is validated beyond
//! syntax; [`super::table::RouteTable::build`] turns it into the table the gateway serves.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::policy::{AuthMode, LbPolicy, RateLimitSpec};
use crate::units::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub defaults: DefaultsSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// The static endpoints; may be empty when `discovery` finds them.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Where (more) endpoints are looked up: DNS or etcd.
    pub discovery: Option<DiscoverySpec>,
    #[serde(default)]
    pub lb: LbPolicy,
    pub health_check: Option<HealthCheckSpec>,
    /// Per attempt.
    pub timeout: Option<HumanDuration>,
    /// Extra attempts, only for attempts the backend provably never processed.
    pub retries: Option<u32>,
    /// gRPC message limit of the tonic client for this pool.
    pub max_message: Option<ByteSize>,
}

/// `"127.0.0.1:50051"` or `{ addr: "127.0.0.1:50061", weight: 2 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EndpointSpec {
    Addr(String),
    Weighted(WeightedEndpoint),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpoint {
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `discovery: { dns: "user.internal:50051" }`, `{ dns: "_grpc._tcp.user.internal" }` (SRV) or
/// `{ etcd: { endpoints: ["127.0.0.1:2379"], prefix: "/im/services/im.user.v1.UserService/" } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySpec {
    /// `host:port` (A and AAAA records) or an SRV name without a port.
    pub dns: Option<String>,
    pub etcd: Option<EtcdSpec>,
    /// DNS: the longest time between lookups (a shorter TTL makes them sooner); default 30s.
    pub interval: Option<HumanDuration>,
    /// DNS: name servers to ask, `ip:port`; default: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpec {
    /// etcd client URLs or `host:port`s.
    pub endpoints: Vec<String>,
    /// Key prefix of the service's registrations, ending in `/`.
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Service name sent in `grpc.health.v1.HealthCheckRequest` (empty = the whole server).
    #[serde(default)]
    pub grpc_service: String,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub http: Option<HttpMatchSpec>,
    pub cmd: Option<u32>,
    pub upstream: String,
    /// `package.Service/Method` for bridge routes.
    pub grpc: Option<String>,
    /// `package.Service` for gRPC pass-through routes.
    pub grpc_service: Option<String>,
    /// Pass-through only: the methods of `grpc_service` routed (`[Echo]`); absent, every method.
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub auth: AuthMode,
    /// Pass-through only: send the credential the gateway verified (`authorization`, or
    /// `x-api-key` on `auth: api_key` routes) on to the backend. Off by default: backends trust
    /// the gateway's `x-user-id` metadata, and a ~700-byte RS256 token re-encoded to the
    /// backend on every call is pure cost.
    #[serde(default)]
    pub forward_credentials: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    pub rate_limit: Option<RateLimitSpec>,
    pub max_body: Option<ByteSize>,
    /// Bridge routes with a `cmd`: the method the cmd calls on sockets that negotiated a newer
    /// protocol version (`versions: { 2: { grpc: pkg.Service/MethodV2 } }`). A session of
    /// version N takes the highest binding at or below N, else the route's own `grpc`.
    pub versions: Option<BTreeMap<u8, VersionSpec>>,
}

/// One protocol version's binding of a route's cmd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// `package.Service/Method`, unary, with the route's upstream.
    pub grpc: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatchSpec {
    #[serde(default = "post")]
    pub method: String,
    pub path: String,
}

fn post() -> String {
    "POST".to_owned()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    pub rate_limit: Option<RateLimitSpec>,
    pub max_body: Option<ByteSize>,
    pub timeout: Option<HumanDuration>,
    pub max_message: Option<ByteSize>,
}
