//! Why a call ended without a reply, whichever step refused it (admission, decoding, the
//! backend): the HTTP status and the gRPC code it maps to, a message for the client, and the
//! rate-limit state when the limiter was consulted. HTTP renders it as a status and JSON body,
//! a socket as the frame's error; the pipeline adds the constructors that know routes and the
//! dispatcher.

use tonic::Code;

use crate::filters::ratelimit::Decision;

#[derive(Debug, Clone)]
pub struct CallError {
    pub status: u16,
    pub code: Code,
    pub message: String,
    pub limit: Option<Decision>,
}

impl CallError {
    pub fn new(status: u16, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            limit: None,
        }
    }

    /// A request that does not decode as the route's input type.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(400, Code::InvalidArgument, message)
    }
}
