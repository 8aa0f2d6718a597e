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
#[path = "table_tests.rs"]
mod tests;
