//! [`RouteTable`]: the validated, indexed, immutable form of `routes.yaml` that requests are served
//! from. Building one checks the whole file and reports every problem; nothing is applied in part.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use sha2::{Digest, Sha256};

use super::file::{AuthMode, EndpointSpec, RateLimitSpec, RouteSpec, RoutesFile, UpstreamSpec};
use super::store::Registries;
use crate::filters::ratelimit::{KeyedLimiter, LimiterId};
use crate::routes::file::RateLimitKey;
use crate::upstream::{Endpoint, HealthCheck, HealthRegistry, Upstream};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RETRIES: u32 = 1;
pub const DEFAULT_MAX_MESSAGE: u64 = 4 << 20;
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Hard ceiling on any message size, whatever the file says.
const MAX_MESSAGE_CEILING: u64 = 256 << 20;

/// One problem in a routes file: where, which field, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// `route \`name\``, `upstream \`name\`` or `defaults`.
    pub place: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}",
            self.place, self.field, self.message
        )
    }
}

/// Why a routes file was rejected as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RoutesError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Syntax(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RouteError>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpMatch {
    pub method: http::Method,
    pub path: String,
}

pub enum RouteTarget {
    /// HTTP bridge / WebSocket cmd: one unary method, resolved in the descriptor set.
    Unary {
        method: MethodDescriptor,
        /// `/package.Service/Method`.
        path: PathAndQuery,
    },
    /// Native gRPC clients proxied as-is to `service`: every method, or only `methods`.
    PassThrough {
        service: String,
        methods: Option<Vec<String>>,
    },
}

/// A route's rate limit, resolved to a limiter shared with the routes (and reloads) that use
/// the same settings.
pub struct RouteLimit {
    pub limiter: Arc<KeyedLimiter>,
    pub key: RateLimitKey,
    pub id: LimiterId,
}

pub struct Route {
    pub name: String,
    pub http: Option<HttpMatch>,
    pub cmd: Option<u32>,
    pub upstream: Arc<Upstream>,
    pub target: RouteTarget,
    pub auth: AuthMode,
    pub roles: Vec<String>,
    /// The route's own limit, or the file's default.
    pub rate_limit: Option<RateLimitSpec>,
    pub limiter: Option<RouteLimit>,
    pub max_body: u64,
}

/// Why a request matched no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    NotFound,
    MethodNotAllowed,
}

pub struct RouteTable {
    /// Content hash of the routes file and descriptor set.
    pub version: String,
    pub loaded_at: SystemTime,
    pub descriptors: DescriptorPool,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub routes: Vec<Arc<Route>>,
    by_path: HashMap<String, Vec<(http::Method, Arc<Route>)>>,
    by_cmd: HashMap<u32, Arc<Route>>,
    by_service: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    /// Parses and validates a routes file against `descriptors` (the pool and its encoded bytes).
    pub fn build(
        text: &str,
        descriptors: DescriptorPool,
        descriptor_bytes: &[u8],
        registries: &Registries,
    ) -> Result<Self, RoutesError> {
        let file: RoutesFile = serde_yaml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let mut errors = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, spec) in &file.upstreams {
            match build_upstream(name, spec, &file, &registries.health) {
                Ok(up) => {
                    upstreams.insert(name.clone(), Arc::new(up));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }

        let mut table = RouteTable {
            version: version_of(text, descriptor_bytes),
            loaded_at: SystemTime::now(),
            descriptors,
            upstreams,
            routes: Vec::new(),
            by_path: HashMap::new(),
            by_cmd: HashMap::new(),
            by_service: HashMap::new(),
        };
        let mut names = HashSet::new();
        for spec in &file.routes {
            let place = format!("route `{}`", spec.name);
            let err = |field: &str, message: String| RouteError {
                place: place.clone(),
                field: field.to_owned(),
                message,
            };
            if !names.insert(spec.name.clone()) {
                errors.push(err(
                    "name",
                    "is used by another route; names must be unique".into(),
                ));
                continue;
            }
            match table.build_route(spec, &file, registries) {
                Ok(route) => {
                    if let Err(e) = table.index(Arc::new(route)) {
                        errors.push(e);
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(RoutesError::Invalid(errors))
        }
    }

    fn build_route(
        &self,
        spec: &RouteSpec,
        file: &RoutesFile,
        registries: &Registries,
    ) -> Result<Route, Vec<RouteError>> {
        let place = format!("route `{}`", spec.name);
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(RouteError {
                place: place.clone(),
                field: field.to_owned(),
                message,
            })
        };
        if spec.name.trim().is_empty() {
            err("name", "must not be empty".into());
        }
        let upstream = self.upstreams.get(&spec.upstream).cloned();
        if upstream.is_none() && !file.upstreams.contains_key(&spec.upstream) {
            err(
                "upstream",
                format!(
                    "`{}` is not defined; add it under `upstreams:` or use one of: {}",
                    spec.upstream,
                    list(file.upstreams.keys())
                ),
            );
        }
        let http = spec.http.as_ref().and_then(|h| {
            let method = match http::Method::from_bytes(h.method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    err(
                        "http.method",
                        format!("`{}` is not an HTTP method", h.method),
                    );
                    return None;
                }
            };
            if !h.path.starts_with('/') || h.path.contains(['?', '#', ' ']) {
                err(
                    "http.path",
                    format!(
                        "`{}` must be an absolute path like `/service/user/login`, without query",
                        h.path
                    ),
                );
                return None;
            }
            Some(HttpMatch {
                method,
                path: h.path.clone(),
            })
        });

        if spec.methods.is_some() && spec.grpc_service.is_none() {
            err(
                "methods",
                "only pass-through routes (`grpc_service`) take `methods`; a bridge route names its one method in `grpc`".into(),
            );
        }
        let target = match (&spec.grpc, &spec.grpc_service) {
            (Some(_), Some(_)) => {
                err(
                    "grpc_service",
                    "a route has either `grpc` (bridge) or `grpc_service` (pass-through), not both"
                        .into(),
                );
                None
            }
            (None, None) => {
                err("grpc", "missing: set `grpc: package.Service/Method` (bridge) or `grpc_service: package.Service` (pass-through)".into());
                None
            }
            (Some(target), None) => {
                if spec.http.is_none() && spec.cmd.is_none() {
                    err(
                        "http",
                        "a bridge route needs `http: {method, path}` and/or `cmd`".into(),
                    );
                }
                let resolved = self.resolve_method(target).and_then(|method| {
                    let path =
                        format!("/{}/{}", method.parent_service().full_name(), method.name());
                    PathAndQuery::try_from(path.as_str())
                        .map(|path| (method, path))
                        .map_err(|_| {
                            format!("`{path}` is not a valid gRPC path; check the descriptor set")
                        })
                });
                match resolved {
                    Ok((method, path)) => Some(RouteTarget::Unary { path, method }),
                    Err(message) => {
                        err("grpc", message);
                        None
                    }
                }
            }
            (None, Some(service)) => {
                if spec.http.is_some() || spec.cmd.is_some() {
                    err(
                        "grpc_service",
                        "pass-through routes match by gRPC path; remove `http` and `cmd`".into(),
                    );
                }
                match self.descriptors.get_service_by_name(service) {
                    None => err(
                        "grpc_service",
                        format!("service `{service}` is not in the descriptor set; check the name (package.Service) or load a descriptor set that has it"),
                    ),
                    Some(svc) => {
                        for m in spec.methods.iter().flatten() {
                            if !svc.methods().any(|d| d.name() == m) {
                                let known: Vec<String> =
                                    svc.methods().map(|d| d.name().to_owned()).collect();
                                err(
                                    "methods",
                                    format!("`{service}` has no method `{m}`; it has {}", known.join(", ")),
                                );
                            }
                        }
                    }
                }
                if spec.methods.as_ref().is_some_and(Vec::is_empty) {
                    err(
                        "methods",
                        "an empty list routes nothing; list the methods or remove `methods`".into(),
                    );
                }
                Some(RouteTarget::PassThrough {
                    service: service.clone(),
                    methods: spec.methods.clone(),
                })
            }
        };

        if spec.auth == AuthMode::None && !spec.roles.is_empty() {
            err(
                "roles",
                "roles need an authenticated caller; remove them or set `auth: required`".into(),
            );
        }
        let rate_limit = spec
            .rate_limit
            .clone()
            .or_else(|| file.defaults.rate_limit.clone());
        if let Some(rl) = &spec.rate_limit {
            if let Err(m) = check_rate_limit(rl) {
                err("rate_limit", m);
            }
        }
        let limiter = rate_limit
            .as_ref()
            .filter(|rl| check_rate_limit(rl).is_ok())
            .map(|rl| {
                let id = LimiterId::of(&spec.name, rl);
                RouteLimit {
                    limiter: registries.limiters.limiter(id.clone(), rl),
                    key: rl.key,
                    id,
                }
            });
        let max_body = spec
            .max_body
            .or(file.defaults.max_body)
            .map_or(DEFAULT_MAX_BODY, |b| b.0);
        if max_body == 0 || max_body > MAX_MESSAGE_CEILING {
            err(
                "max_body",
                format!(
                    "must be between 1 byte and {}MiB",
                    MAX_MESSAGE_CEILING >> 20
                ),
            );
        }
        if let Some(up) = &upstream {
            if matches!(target, Some(RouteTarget::Unary { .. })) && max_body > up.max_message as u64
            {
                err(
                    "max_body",
                    format!(
                        "{max_body} bytes exceeds upstream `{}` max_message ({} bytes); raise the upstream's max_message or lower max_body",
                        up.name, up.max_message
                    ),
                );
            }
        }
        match (errors.is_empty(), upstream, target) {
            (true, Some(upstream), Some(target)) => Ok(Route {
                name: spec.name.clone(),
                http,
                cmd: spec.cmd,
                upstream,
                target,
                auth: spec.auth,
                roles: spec.roles.clone(),
                rate_limit,
                limiter,
                max_body,
            }),
            _ => Err(errors),
        }
    }

    fn resolve_method(&self, target: &str) -> Result<MethodDescriptor, String> {
        let (service, method) = target
            .trim_start_matches('/')
            .split_once('/')
            .ok_or_else(|| format!("`{target}` must look like `package.Service/Method`"))?;
        let svc = self.descriptors.get_service_by_name(service).ok_or_else(|| {
            format!("service `{service}` is not in the descriptor set; check the name or load a descriptor set that has it")
        })?;
        let m = svc.methods().find(|m| m.name() == method).ok_or_else(|| {
            format!(
                "method `{method}` is not in service `{service}`; it has: {}",
                list(svc.methods().map(|m| m.name().to_owned()))
            )
        })?;
        if m.is_client_streaming() || m.is_server_streaming() {
            return Err(format!(
                "`{target}` is a streaming method; bridge routes call unary methods (use `grpc_service` to pass streams through)"
            ));
        }
        Ok(m)
    }

    fn index(&mut self, route: Arc<Route>) -> Result<(), RouteError> {
        let dup = |field: &str, what: String| RouteError {
            place: format!("route `{}`", route.name),
            field: field.to_owned(),
            message: what,
        };
        if let Some(h) = &route.http {
            let methods = self.by_path.entry(h.path.clone()).or_default();
            if let Some((_, other)) = methods.iter().find(|(m, _)| *m == h.method) {
                return Err(dup(
                    "http.path",
                    format!(
                        "{} {} is already routed by `{}`; each method+path maps to one route",
                        h.method, h.path, other.name
                    ),
                ));
            }
        }
        if let Some(cmd) = route.cmd {
            if let Some(other) = self.by_cmd.get(&cmd) {
                return Err(dup(
                    "cmd",
                    format!(
                        "{cmd} is already used by `{}`; cmd ids must be unique",
                        other.name
                    ),
                ));
            }
        }
        if let RouteTarget::PassThrough { service, .. } = &route.target {
            if let Some(other) = self.by_service.get(service) {
                return Err(dup(
                    "grpc_service",
                    format!("`{service}` is already passed through by `{}`", other.name),
                ));
            }
            self.by_service.insert(service.clone(), route.clone());
        }
        if let Some(h) = &route.http {
            self.by_path
                .entry(h.path.clone())
                .or_default()
                .push((h.method.clone(), route.clone()));
        }
        if let Some(cmd) = route.cmd {
            self.by_cmd.insert(cmd, route.clone());
        }
        self.routes.push(route);
        Ok(())
    }

    /// The bridge route for an HTTP request.
    pub fn match_http(&self, method: &http::Method, path: &str) -> Result<&Arc<Route>, RouteMiss> {
        let methods = self.by_path.get(path).ok_or(RouteMiss::NotFound)?;
        methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, r)| r)
            .ok_or(RouteMiss::MethodNotAllowed)
    }

    /// The route of a WebSocket cmd id.
    pub fn match_cmd(&self, cmd: u32) -> Option<&Arc<Route>> {
        self.by_cmd.get(&cmd)
    }

    /// The pass-through route for a gRPC path `/package.Service/Method`, if it routes that
    /// method.
    pub fn match_grpc(&self, path: &str) -> Option<&Arc<Route>> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let route = self.by_service.get(service)?;
        match &route.target {
            RouteTarget::PassThrough {
                methods: Some(allowed),
                ..
            } if !allowed.iter().any(|m| m == method) => None,
            _ => Some(route),
        }
    }

    /// Every endpoint address in use, with the active check of its pool (if any).
    pub fn endpoints(&self) -> impl Iterator<Item = (&Upstream, &Endpoint)> {
        self.upstreams
            .values()
            .flat_map(|u| u.endpoints.iter().map(move |e| (u.as_ref(), e)))
    }
}

fn build_upstream(
    name: &str,
    spec: &UpstreamSpec,
    file: &RoutesFile,
    health: &HealthRegistry,
) -> Result<Upstream, Vec<RouteError>> {
    let place = format!("upstream `{name}`");
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(RouteError {
            place: place.clone(),
            field: field.to_owned(),
            message,
        })
    };
    if spec.endpoints.is_empty() {
        err("endpoints", "must list at least one `host:port`".into());
    }
    let check = spec.health_check.as_ref().map(|h| HealthCheck {
        grpc_service: h.grpc_service.clone(),
        interval: h.interval.map_or(Duration::from_secs(2), |d| d.0),
        timeout: h.timeout.map_or(Duration::from_millis(500), |d| d.0),
        rise: h.rise.unwrap_or(2),
        fall: h.fall.unwrap_or(2),
    });
    if let Some(c) = &check {
        if c.interval < Duration::from_millis(10) {
            err("health_check.interval", "must be at least 10ms".into());
        }
        if c.timeout.is_zero() || c.timeout > c.interval.max(Duration::from_millis(10)) * 10 {
            err(
                "health_check.timeout",
                "must be above zero and not far above the interval".into(),
            );
        }
        if c.rise == 0 || c.fall == 0 {
            err(
                "health_check.rise",
                "rise and fall must be at least 1".into(),
            );
        }
    }
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let (addr, weight) = match ep {
            EndpointSpec::Addr(a) => (a.as_str(), 1),
            EndpointSpec::Weighted(w) => (w.addr.as_str(), w.weight),
        };
        let field = format!("endpoints[{i}]");
        let parsed = addr
            .replace("localhost:", "127.0.0.1:")
            .parse::<SocketAddr>();
        match parsed {
            Ok(a) if a.port() == 0 => err(&field, format!("`{addr}` needs a port")),
            Ok(a) if !seen.insert(a) => err(&field, format!("`{addr}` is listed twice")),
            Ok(_) if weight == 0 || weight > 1000 => {
                err(&field, "weight must be between 1 and 1000".into())
            }
            Ok(a) => endpoints.push(Endpoint {
                addr: a,
                weight,
                state: health.state(a, check.is_some()),
            }),
            Err(_) => err(
                &field,
                format!("`{addr}` is not an IP:port (for example 127.0.0.1:50051)"),
            ),
        }
    }
    let timeout = spec
        .timeout
        .or(file.defaults.timeout)
        .map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        err("timeout", "must be above zero, e.g. `3s`".into());
    }
    let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 5 {
        err(
            "retries",
            "at most 5; retries only repeat attempts that never reached a backend".into(),
        );
    }
    let max_message = spec
        .max_message
        .or(file.defaults.max_message)
        .map_or(DEFAULT_MAX_MESSAGE, |b| b.0);
    if max_message == 0 || max_message > MAX_MESSAGE_CEILING {
        err(
            "max_message",
            format!(
                "must be between 1 byte and {}MiB",
                MAX_MESSAGE_CEILING >> 20
            ),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Upstream::new(
        name.to_owned(),
        endpoints,
        spec.lb,
        check,
        timeout,
        retries,
        max_message as usize,
    ))
}

fn check_rate_limit(rl: &RateLimitSpec) -> Result<(), String> {
    if !(rl.per_second.is_finite() && rl.per_second > 0.0 && rl.per_second <= 1e6) {
        return Err("per_second must be above 0 and at most 1000000".into());
    }
    if rl.burst == 0 {
        return Err("burst must be at least 1".into());
    }
    Ok(())
}

fn list<T: AsRef<str>>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{}`", s.as_ref())).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn version_of(text: &str, descriptor_bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update(descriptor_bytes);
    hex::encode(&h.finalize()[..6])
}

/// A serde error, with `routes[N]` replaced by the route's name when the file says it.
fn syntax_error(text: &str, e: &serde_yaml::Error) -> RoutesError {
    let msg = e.to_string();
    let named = msg
        .strip_prefix("routes[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(idx, rest)| {
            let idx: usize = idx.parse().ok()?;
            let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
            let name = doc
                .get("routes")?
                .get(idx)?
                .get("name")?
                .as_str()?
                .to_owned();
            Some(format!("route `{name}` (routes[{idx}]){rest}"))
        });
    RoutesError::Syntax(named.unwrap_or(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(t.match_cmd(7).unwrap().name, "echo");
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
}
