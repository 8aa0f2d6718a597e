//! The route table: `routes.yaml` as ops write it ([`file`]), checked and built route by route
//! ([`upstreams`], [`build`]) into the two route kinds ([`route`]), indexed in an immutable
//! [`RouteTable`] ([`table`]) resolved against the protobuf descriptors ([`descriptors`]), and held
//! as one atomically swapped snapshot that reloads never apply in part ([`store`]). Problems are
//! [`error`]s that name the place, the field and the fix.

pub mod build;
pub mod descriptors;
pub mod error;
pub mod file;
pub mod registries;
pub mod reloader;
pub mod route;
pub mod store;
pub mod table;
pub mod upstreams;

pub use error::{RouteError, RoutesError};
pub use registries::Registries;
pub use route::{HttpMatch, PassThroughRoute, Route, UnaryRoute};
pub use store::{ReloadStatus, RouteSource, RouteStore};
pub use table::{RouteMiss, RouteTable};
