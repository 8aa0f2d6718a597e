//! The route table: `routes.yaml` as ops write it ([`file`]), validated into an immutable, indexed
//! [`RouteTable`] ([`table`]), resolved against the protobuf descriptors ([`descriptors`]), and held
//! as one atomically swapped snapshot that reloads never apply in part ([`store`]).

pub mod descriptors;
pub mod file;
pub mod reloader;
pub mod store;
pub mod table;

pub use store::{Registries, ReloadStatus, RouteSource, RouteStore};
pub use table::{HttpMatch, Route, RouteError, RouteTable, RouteTarget, RoutesError};
