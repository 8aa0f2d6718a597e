//! [`RouteTable`]: the validated, indexed, immutable form of `routes.yaml` that requests are served
//! from. Building one checks the whole file ([`super::upstreams`], [`super::build`]) and reports
//! every problem; nothing is applied in part.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use prost_reflect::DescriptorPool;
use sha2::{Digest, Sha256};

use super::build::RouteContext;
use super::error::{syntax_error, RouteError, RoutesError};
use super::file::RoutesFile;
use super::registries::Registries;
use super::route::{PassThroughRoute, Route, UnaryRoute};
use super::upstreams::build_upstream;
use crate::discovery::Source;
use crate::upstream::{Endpoint, Upstream};

/// Why a request matched no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    NotFound,
    MethodNotAllowed,
}

pub struct RouteTable {
    /// Content hash of the routes file and descriptor set.
    pub version: String,
    /// The routes file this table was built from (discovery rebuilds the table from it).
    text: String,
    pub loaded_at: SystemTime,
    pub descriptors: DescriptorPool,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Every route in file order.
    pub routes: Vec<Route>,
    by_path: HashMap<String, Vec<(http::Method, Arc<UnaryRoute>)>>,
    by_cmd: HashMap<u32, Arc<UnaryRoute>>,
    by_service: HashMap<String, Arc<PassThroughRoute>>,
}

impl RouteTable {
    /// Parses and validates a routes file against `descriptors` (the pool and its encoded bytes).
    pub fn build(
        text: &str,
        descriptors: DescriptorPool,
        descriptor_bytes: &[u8],
        registries: &Registries,
    ) -> Result<Self, RoutesError> {
        let version = version_of(text, descriptor_bytes);
        Self::from_text(text, descriptors, version, registries)
    }

    /// The same file built again against the registries as they are now: what discovery does
    /// when a source's endpoints change. The version stays: it names the file, not the endpoints.
    pub fn rebuild(&self, registries: &Registries) -> Result<Self, RoutesError> {
        Self::from_text(
            &self.text,
            self.descriptors.clone(),
            self.version.clone(),
            registries,
        )
    }

    fn from_text(
        text: &str,
        descriptors: DescriptorPool,
        version: String,
        registries: &Registries,
    ) -> Result<Self, RoutesError> {
        let file: RoutesFile = serde_yaml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let mut errors = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, spec) in &file.upstreams {
            match build_upstream(name, spec, &file, registries) {
                Ok(up) => {
                    upstreams.insert(name.clone(), Arc::new(up));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let mut table = RouteTable {
            version,
            text: text.to_owned(),
            loaded_at: SystemTime::now(),
            descriptors,
            upstreams,
            routes: Vec::new(),
            by_path: HashMap::new(),
            by_cmd: HashMap::new(),
            by_service: HashMap::new(),
        };
        let mut built = Vec::with_capacity(file.routes.len());
        {
            let ctx = RouteContext {
                file: &file,
                upstreams: &table.upstreams,
                descriptors: &table.descriptors,
                registries,
            };
            let mut names = HashSet::new();
            for spec in &file.routes {
                if !names.insert(spec.name.as_str()) {
                    errors.push(RouteError::new(
                        &format!("route `{}`", spec.name),
                        "name",
                        "is used by another route; names must be unique",
                    ));
                    continue;
                }
                match ctx.build(spec) {
                    Ok(route) => built.push(route),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        for route in built {
            if let Err(e) = table.index(route) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(RoutesError::Invalid(errors))
        }
    }

    fn index(&mut self, route: Route) -> Result<(), RouteError> {
        let dup = |field: &str, message: String| {
            RouteError::new(&format!("route `{}`", route.name()), field, message)
        };
        match &route {
            Route::Unary(r) => {
                if let Some(h) = &r.http {
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
                if let Some(cmd) = r.cmd {
                    if let Some(other) = self.by_cmd.get(&cmd) {
                        return Err(dup(
                            "cmd",
                            format!(
                                "{cmd} is already used by `{}`; cmd ids must be unique",
                                other.name
                            ),
                        ));
                    }
                    self.by_cmd.insert(cmd, r.clone());
                }
                if let Some(h) = &r.http {
                    self.by_path
                        .entry(h.path.clone())
                        .or_default()
                        .push((h.method.clone(), r.clone()));
                }
            }
            Route::PassThrough(r) => {
                if let Some(other) = self.by_service.get(&r.service) {
                    return Err(dup(
                        "grpc_service",
                        format!(
                            "`{}` is already passed through by `{}`",
                            r.service, other.name
                        ),
                    ));
                }
                self.by_service.insert(r.service.clone(), r.clone());
            }
        }
        self.routes.push(route);
        Ok(())
    }

    /// The bridge route for an HTTP request.
    pub fn match_http(
        &self,
        method: &http::Method,
        path: &str,
    ) -> Result<&Arc<UnaryRoute>, RouteMiss> {
        let methods = self.by_path.get(path).ok_or(RouteMiss::NotFound)?;
        methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, r)| r)
            .ok_or(RouteMiss::MethodNotAllowed)
    }

    /// The route of a WebSocket cmd id on a socket of protocol `version`.
    pub fn match_cmd(&self, cmd: u32, version: u8) -> Option<&Arc<UnaryRoute>> {
        self.by_cmd.get(&cmd).map(|r| r.for_version(version))
    }

    /// The pass-through route for a gRPC path `/package.Service/Method`, if it routes that
    /// method.
    pub fn match_grpc(&self, path: &str) -> Option<&Arc<PassThroughRoute>> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.by_service
            .get(service)
            .filter(|r| r.routes_method(method))
    }

    /// The discovery sources of the table's upstreams.
    pub fn sources(&self) -> HashSet<Source> {
        self.upstreams
            .values()
            .filter_map(|u| u.discovery.clone())
            .collect()
    }

    /// Every endpoint address in use, with the active check of its pool (if any).
    pub fn endpoints(&self) -> impl Iterator<Item = (&Upstream, &Endpoint)> {
        self.upstreams
            .values()
            .flat_map(|u| u.endpoints.iter().map(move |e| (u.as_ref(), e)))
    }
}

fn version_of(text: &str, descriptor_bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update(descriptor_bytes);
    hex::encode(&h.finalize()[..6])
}

#[cfg(test)]
mod tests {
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
