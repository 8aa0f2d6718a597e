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
    pub endpoints: Vec<EndpointSpec>,
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
