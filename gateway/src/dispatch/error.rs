//! What can go wrong calling a backend, where it came from, and how each outcome maps to a gRPC
//! code and an HTTP status (the grpc-gateway table of DESIGN §4).

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Every endpoint of the pool is unhealthy, ejected or already tried.
    #[error("no healthy endpoint in upstream `{upstream}`")]
    NoHealthyEndpoint { upstream: String },
    /// The TCP/HTTP2 connection could not be made: the backend never saw the attempt.
    #[error("cannot connect to upstream `{upstream}` endpoint {addr}: {detail}")]
    ConnectFailed {
        upstream: String,
        addr: SocketAddr,
        detail: String,
    },
    /// The connection failed while the attempt may have been running.
    #[error("upstream `{upstream}` endpoint {addr} failed mid-call: {detail}")]
    Transport {
        upstream: String,
        addr: SocketAddr,
        detail: String,
    },
    #[error("upstream `{upstream}` did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    /// The backend answered with a non-OK status.
    #[error("backend status {:?}: {}", .0.code(), .0.message())]
    Status(Status),
}

/// How a failed attempt relates to retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Connect failed: the backend never saw it; eject the endpoint and retry elsewhere.
    Connect,
    /// The server refused the stream (REFUSED_STREAM / above GOAWAY): never processed, retry.
    Refused,
    /// Anything else: the attempt may have run, never repeat it.
    Final,
}

impl DispatchError {
    /// The gRPC code a WebSocket response frame or a gRPC client sees.
    pub fn code(&self) -> Code {
        match self {
            Self::NoHealthyEndpoint { .. }
            | Self::ConnectFailed { .. }
            | Self::Transport { .. } => Code::Unavailable,
            Self::Timeout { .. } => Code::DeadlineExceeded,
            Self::Status(s) => s.code(),
        }
    }

    /// The HTTP status of the bridge.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NoHealthyEndpoint { .. } => 503,
            Self::ConnectFailed { .. } | Self::Transport { .. } => 502,
            Self::Timeout { .. } => 504,
            Self::Status(s) if is_too_large(s) => 413,
            Self::Status(s) => http_status_of(s.code()),
        }
    }

    /// What the client is told: backends' messages for client errors, nothing internal.
    pub fn client_message(&self) -> String {
        match self {
            Self::NoHealthyEndpoint { .. } => "no healthy upstream".into(),
            Self::ConnectFailed { .. } => "upstream connect failure".into(),
            Self::Transport { .. } => "upstream connection lost".into(),
            Self::Timeout { .. } => "upstream timed out".into(),
            Self::Status(s) if is_too_large(s) => "message too large".into(),
            Self::Status(s) => match s.code() {
                Code::Internal | Code::Unknown | Code::DataLoss => "internal error".into(),
                _ => s.message().to_owned(),
            },
        }
    }
}

/// The grpc-gateway mapping of gRPC codes to HTTP statuses.
pub fn http_status_of(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// The upper-case name of a code, as in `{"code":"UNAUTHENTICATED"}`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// tonic's (and grpc-go's) wording when a peer refuses a message over its size limit.
fn is_too_large(s: &Status) -> bool {
    matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted)
        && s.message().contains("too large")
}

/// What a locally produced (transport-level) failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    Connect,
    Refused,
    TimedOut,
    Other,
}

/// Classifies a status that tonic produced locally from a transport error (it has a source chain),
/// as opposed to one the backend sent (no source, `None` here).
pub fn classify(status: &Status) -> Option<TransportFailure> {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    source?;
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return Some(TransportFailure::TimedOut);
        }
        if err.is::<tonic::ConnectError>() {
            return Some(TransportFailure::Connect);
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(TransportFailure::Refused);
            }
            if h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR) {
                // Graceful GOAWAY: streams above last-stream-id are never processed.
                return Some(TransportFailure::Refused);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            ) {
                return Some(TransportFailure::Connect);
            }
        }
        source = err.source();
    }
    Some(TransportFailure::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_gateway_table() {
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
        ] {
            assert_eq!(
                DispatchError::Status(Status::new(code, "x")).http_status(),
                http
            );
        }
    }

    #[test]
    fn internal_details_never_reach_clients() {
        let e = DispatchError::Status(Status::internal("db at 10.0.0.5 refused"));
        assert_eq!(e.client_message(), "internal error");
        let e = DispatchError::Status(Status::not_found("user 7 not found"));
        assert_eq!(e.client_message(), "user 7 not found");
    }

    #[test]
    fn backend_statuses_are_not_transport_failures() {
        assert_eq!(classify(&Status::unavailable("busy")), None);
        let refused = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(classify(&refused), Some(TransportFailure::Connect));
        let reset = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&reset), Some(TransportFailure::Other));
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(classify(&expired), Some(TransportFailure::TimedOut));
    }

    #[test]
    fn too_large_is_413() {
        let e = DispatchError::Status(Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(e.http_status(), 413);
    }
}
