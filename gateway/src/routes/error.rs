//! Why a routes file (or its descriptor set) was refused: every problem with its place, field and
//! fix, so `im-gateway check`, reloads and `/admin/routes` all say the same thing.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::descriptors::DescriptorError;

/// One problem in a routes file: where, which field, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// `route \`name\``, `upstream \`name\`` or `defaults`.
    pub place: String,
    pub field: String,
    pub message: String,
}

impl RouteError {
    pub fn new(place: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            place: place.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }
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

/// Collects the problems of one place (a route or an upstream) while it is checked.
pub(super) struct Problems {
    place: String,
    pub(super) errors: Vec<RouteError>,
}

impl Problems {
    pub(super) fn new(place: String) -> Self {
        Self {
            place,
            errors: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .push(RouteError::new(&self.place, field, message));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(value)` when nothing was found wrong, else every problem.
    pub(super) fn into_result<T>(self, value: Option<T>) -> Result<T, Vec<RouteError>> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ => Err(self.errors),
        }
    }
}

/// Why a routes file was rejected as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RoutesError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error(transparent)]
    Descriptors(Arc<DescriptorError>),
    /// Not YAML, or not the shape of a routes file (unknown key, bad unit, wrong type).
    #[error("{message}")]
    Syntax {
        message: String,
        /// The route the error is in, when the file names it.
        route: Option<String>,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RouteError>),
}

impl From<DescriptorError> for RoutesError {
    fn from(e: DescriptorError) -> Self {
        Self::Descriptors(Arc::new(e))
    }
}

/// A serde error, with `routes[N]` replaced by the route's name when the file says it.
pub(super) fn syntax_error(text: &str, e: &serde_yaml::Error) -> RoutesError {
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
            Some((format!("route `{name}` (routes[{idx}]){rest}"), name))
        });
    match named {
        Some((message, name)) => RoutesError::Syntax {
            message,
            route: Some(name),
        },
        None => RoutesError::Syntax {
            message: msg,
            route: None,
        },
    }
}
