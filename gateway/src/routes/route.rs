//! The two kinds of route, as two types: a [`UnaryRoute`] (HTTP bridge and WebSocket cmd: one
//! unary method, transcoded) and a [`PassThroughRoute`] (native gRPC proxied as-is). The table
//! indexes them apart, so code holding one never has to ask which kind it is.

use std::sync::Arc;

use http::uri::PathAndQuery;
use prost_reflect::MethodDescriptor;

use crate::filters::Admission;
use crate::upstream::Upstream;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpMatch {
    pub method: http::Method,
    pub path: String,
}

/// HTTP bridge / WebSocket cmd: one unary method, resolved in the descriptor set.
pub struct UnaryRoute {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub admission: Admission,
    pub http: Option<HttpMatch>,
    pub cmd: Option<u32>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub path: PathAndQuery,
    /// The largest request body (HTTP) or frame (WebSocket) taken.
    pub max_body: u64,
    /// The cmd's bindings for newer protocol versions, by version, ascending: the same route
    /// with another method (`versions` in routes.yaml; empty on the bindings themselves).
    pub versions: Vec<(u8, Arc<UnaryRoute>)>,
}

impl UnaryRoute {
    /// What a socket of protocol `version` calls for this route's cmd: the highest binding at
    /// or below it, else this route.
    pub fn for_version(self: &Arc<Self>, version: u8) -> &Arc<Self> {
        self.versions
            .iter()
            .rev()
            .find(|(v, _)| *v <= version)
            .map_or(self, |(_, r)| r)
    }
}

/// Native gRPC clients proxied as-is to `service`: every method, or only `methods`.
pub struct PassThroughRoute {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub admission: Admission,
    pub service: String,
    pub methods: Option<Vec<String>>,
    /// Counted while the request streams.
    pub max_body: u64,
    /// The verified credential goes on to the backend (`forward_credentials`).
    pub forward_credentials: bool,
}

impl PassThroughRoute {
    /// Whether this route passes `method` of its service.
    pub fn routes_method(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == method))
    }
}

/// Either kind, in file order: what listings (admin, maintenance) walk.
#[derive(Clone)]
pub enum Route {
    Unary(Arc<UnaryRoute>),
    PassThrough(Arc<PassThroughRoute>),
}

impl Route {
    pub fn name(&self) -> &str {
        match self {
            Self::Unary(r) => &r.name,
            Self::PassThrough(r) => &r.name,
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        match self {
            Self::Unary(r) => &r.upstream,
            Self::PassThrough(r) => &r.upstream,
        }
    }

    pub fn admission(&self) -> &Admission {
        match self {
            Self::Unary(r) => &r.admission,
            Self::PassThrough(r) => &r.admission,
        }
    }

    pub fn max_body(&self) -> u64 {
        match self {
            Self::Unary(r) => r.max_body,
            Self::PassThrough(r) => r.max_body,
        }
    }
}
