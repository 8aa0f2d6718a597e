//! One `routes:` entry checked and built into a [`Route`]: the match (`http`, `cmd` or the gRPC
//! service), the target resolved in the descriptor set, the admission policy with its shared
//! limiter, and the body limit. Every problem is reported, none stops the check early.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, MethodDescriptor};

use super::error::{Problems, RouteError};
use super::file::{RouteSpec, RoutesFile};
use super::registries::Registries;
use super::route::{HttpMatch, PassThroughRoute, Route, UnaryRoute};
use super::upstreams::{check_size, list};
use crate::filters::ratelimit::{LimiterId, RouteLimit};
use crate::filters::Admission;
use crate::policy::{AuthMode, RateLimitSpec, PROTOCOL_VERSIONS};
use crate::upstream::Upstream;

pub const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// What routes are checked against: the file (for defaults and upstream names), the upstreams
/// that built, the descriptor set and the registries limiters come from.
pub(super) struct RouteContext<'a> {
    pub file: &'a RoutesFile,
    pub upstreams: &'a BTreeMap<String, Arc<Upstream>>,
    pub descriptors: &'a DescriptorPool,
    pub registries: &'a Registries,
}

impl RouteContext<'_> {
    pub fn build(&self, spec: &RouteSpec) -> Result<Route, Vec<RouteError>> {
        let mut p = Problems::new(format!("route `{}`", spec.name));
        if spec.name.trim().is_empty() {
            p.add("name", "must not be empty");
        }
        let upstream = self.upstream(spec, &mut p);
        let admission = self.admission(spec, &mut p);
        let max_body = self.max_body(spec, &mut p);
        if spec.grpc_service.is_none() {
            pass_through_only(spec, &mut p);
        }
        let route = match (&spec.grpc, &spec.grpc_service) {
            (Some(_), Some(_)) => {
                p.add(
                    "grpc_service",
                    "a route has either `grpc` (bridge) or `grpc_service` (pass-through), not both",
                );
                None
            }
            (None, None) => {
                p.add("grpc", "missing: set `grpc: package.Service/Method` (bridge) or `grpc_service: package.Service` (pass-through)");
                None
            }
            (Some(target), None) => {
                let http = check_http(spec, &mut p);
                let resolved = self.resolve_unary(target, &mut p);
                if let (Some(up), Some(_)) = (&upstream, &resolved) {
                    fits_upstream(up, max_body, &mut p);
                }
                let bindings = self.version_bindings(spec, &mut p);
                match (upstream, resolved, p.is_empty()) {
                    (Some(upstream), Some((method, path)), true) => {
                        let route = |method, path, versions| UnaryRoute {
                            name: spec.name.clone(),
                            upstream: upstream.clone(),
                            admission: admission.clone(),
                            http: http.clone(),
                            cmd: spec.cmd,
                            method,
                            path,
                            max_body,
                            versions,
                        };
                        let versions = bindings
                            .into_iter()
                            .map(|(v, method, path)| (v, Arc::new(route(method, path, Vec::new()))))
                            .collect();
                        Some(Route::Unary(Arc::new(route(method, path, versions))))
                    }
                    _ => None,
                }
            }
            (None, Some(service)) => {
                self.check_pass_through(spec, service, &mut p);
                match (upstream, p.is_empty()) {
                    (Some(upstream), true) => {
                        Some(Route::PassThrough(Arc::new(PassThroughRoute {
                            name: spec.name.clone(),
                            upstream,
                            admission,
                            service: service.clone(),
                            methods: spec.methods.clone(),
                            max_body,
                            forward_credentials: spec.forward_credentials,
                        })))
                    }
                    _ => None,
                }
            }
        };
        p.into_result(route)
    }

    fn upstream(&self, spec: &RouteSpec, p: &mut Problems) -> Option<Arc<Upstream>> {
        let upstream = self.upstreams.get(&spec.upstream).cloned();
        // An upstream that is defined but broken has its own errors already.
        if upstream.is_none() && !self.file.upstreams.contains_key(&spec.upstream) {
            p.add(
                "upstream",
                format!(
                    "`{}` is not defined; add it under `upstreams:` or use one of: {}",
                    spec.upstream,
                    list(self.file.upstreams.keys())
                ),
            );
        }
        upstream
    }

    fn admission(&self, spec: &RouteSpec, p: &mut Problems) -> Admission {
        if spec.auth == AuthMode::None && !spec.roles.is_empty() {
            p.add(
                "roles",
                "roles need an authenticated caller; remove them or set `auth: required`",
            );
        }
        if let Some(rl) = &spec.rate_limit {
            if let Err(m) = check_rate_limit(rl) {
                p.add("rate_limit", m);
            }
        }
        let limit = spec
            .rate_limit
            .as_ref()
            .or(self.file.defaults.rate_limit.as_ref())
            .filter(|rl| check_rate_limit(rl).is_ok())
            .map(|rl| {
                let id = LimiterId::of(&spec.name, rl);
                RouteLimit {
                    limiter: self.registries.limiters.limiter(id.clone(), rl),
                    spec: rl.clone(),
                    id,
                }
            });
        Admission {
            auth: spec.auth,
            roles: spec.roles.clone(),
            limit,
        }
    }

    fn max_body(&self, spec: &RouteSpec, p: &mut Problems) -> u64 {
        let max_body = spec
            .max_body
            .or(self.file.defaults.max_body)
            .map_or(DEFAULT_MAX_BODY, |b| b.0);
        check_size(p, "max_body", max_body);
        max_body
    }

    /// `versions`: each newer protocol version's method for the cmd, ascending.
    fn version_bindings(
        &self,
        spec: &RouteSpec,
        p: &mut Problems,
    ) -> Vec<(u8, MethodDescriptor, PathAndQuery)> {
        let Some(versions) = &spec.versions else {
            return Vec::new();
        };
        if spec.cmd.is_none() {
            p.add(
                "versions",
                "versions bind a cmd per protocol version; add `cmd` or remove `versions`",
            );
        }
        let newer: Vec<String> = PROTOCOL_VERSIONS[1..].iter().map(u8::to_string).collect();
        let mut out = Vec::new();
        for (version, binding) in versions {
            if !PROTOCOL_VERSIONS[1..].contains(version) {
                p.add(
                    "versions",
                    format!(
                        "protocol version {version} is not one this gateway speaks; use {} (version 1 is the route's own `grpc`)",
                        newer.join(", ")
                    ),
                );
                continue;
            }
            let field = format!("versions.{version}.grpc");
            if let Some((method, path)) = self.resolve_unary_at(&binding.grpc, &field, p) {
                out.push((*version, method, path));
            }
        }
        out
    }

    /// The unary method of a bridge route and its gRPC path.
    fn resolve_unary(
        &self,
        target: &str,
        p: &mut Problems,
    ) -> Option<(MethodDescriptor, PathAndQuery)> {
        self.resolve_unary_at(target, "grpc", p)
    }

    /// [`resolve_unary`](Self::resolve_unary) for a method named in `field`.
    fn resolve_unary_at(
        &self,
        target: &str,
        field: &str,
        p: &mut Problems,
    ) -> Option<(MethodDescriptor, PathAndQuery)> {
        let resolved = self.resolve_method(target).and_then(|method| {
            let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
            PathAndQuery::try_from(path.as_str())
                .map(|path| (method, path))
                .map_err(|_| format!("`{path}` is not a valid gRPC path; check the descriptor set"))
        });
        resolved.map_err(|m| p.add(field, m)).ok()
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

    fn check_pass_through(&self, spec: &RouteSpec, service: &str, p: &mut Problems) {
        if spec.http.is_some() || spec.cmd.is_some() {
            p.add(
                "grpc_service",
                "pass-through routes match by gRPC path; remove `http` and `cmd`",
            );
        }
        match self.descriptors.get_service_by_name(service) {
            None => p.add(
                "grpc_service",
                format!("service `{service}` is not in the descriptor set; check the name (package.Service) or load a descriptor set that has it"),
            ),
            Some(svc) => {
                for m in spec.methods.iter().flatten() {
                    if !svc.methods().any(|d| d.name() == m) {
                        let known: Vec<String> =
                            svc.methods().map(|d| d.name().to_owned()).collect();
                        p.add(
                            "methods",
                            format!("`{service}` has no method `{m}`; it has {}", known.join(", ")),
                        );
                    }
                }
            }
        }
        if spec.forward_credentials && spec.auth == AuthMode::None {
            p.add(
                "forward_credentials",
                "`auth: none` verifies nothing, so nothing is withheld: the client's headers reach the backend as sent; remove `forward_credentials`",
            );
        }
        if spec.methods.as_ref().is_some_and(Vec::is_empty) {
            p.add(
                "methods",
                "an empty list routes nothing; list the methods or remove `methods`",
            );
        }
    }
}

/// Fields a bridge route must not set.
fn pass_through_only(spec: &RouteSpec, p: &mut Problems) {
    if spec.methods.is_some() {
        p.add(
            "methods",
            "only pass-through routes (`grpc_service`) take `methods`; a bridge route names its one method in `grpc`",
        );
    }
    if spec.forward_credentials {
        p.add(
            "forward_credentials",
            "only pass-through routes (`grpc_service`) forward credentials; a bridge call never carries the client's token (the backend gets `x-user-id`)",
        );
    }
}

/// The `http:` match of a bridge route, which needs it or a `cmd`.
fn check_http(spec: &RouteSpec, p: &mut Problems) -> Option<HttpMatch> {
    if spec.http.is_none() && spec.cmd.is_none() {
        p.add(
            "http",
            "a bridge route needs `http: {method, path}` and/or `cmd`",
        );
    }
    let h = spec.http.as_ref()?;
    let Ok(method) = http::Method::from_bytes(h.method.to_ascii_uppercase().as_bytes()) else {
        p.add(
            "http.method",
            format!("`{}` is not an HTTP method", h.method),
        );
        return None;
    };
    if !h.path.starts_with('/') || h.path.contains(['?', '#', ' ']) {
        p.add(
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

/// A bridge body is one upstream message: `max_body` must fit the upstream's `max_message`.
fn fits_upstream(up: &Upstream, max_body: u64, p: &mut Problems) {
    if max_body > up.max_message as u64 {
        p.add(
            "max_body",
            format!(
                "{max_body} bytes exceeds upstream `{}` max_message ({} bytes); raise the upstream's max_message or lower max_body",
                up.name, up.max_message
            ),
        );
    }
}
