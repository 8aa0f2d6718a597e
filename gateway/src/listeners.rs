//! The gateway's listening sockets, bound before anything serves: a port that is taken stops
//! start-up with the field, the address and the reason, instead of a service that retries
//! for half a minute and then dies on its own thread while `/readyz` says ok.
//!
//! Pingora keeps a table of listening descriptors keyed by address string (the one it hands
//! over in a graceful upgrade). [`PreBound`] puts each socket bound here into that table just
//! before its service starts, so Pingora's listener takes the descriptor over as its only owner
//! (nobody here keeps a copy to close). The internal PushService listener is tokio's, not
//! Pingora's: it takes its socket directly.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service as PingoraService;

use crate::config::Listen;

/// Connections the kernel queues per listener before `accept` (Pingora uses the same).
const BACKLOG: i32 = 65_535;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {field} {addr}: {source}")]
pub struct BindError {
    pub field: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Every listener of one gateway, bound and listening.
pub struct Bound {
    pub edge: TcpListener,
    pub push: TcpListener,
    pub internal: TcpListener,
    pub admin: TcpListener,
    /// The addresses actually bound (port 0 in `listen` picked a free one).
    pub addrs: Listen,
}

impl Bound {
    /// Binds the four listeners of `listen`, in the order of [`Listen::named`].
    pub fn bind(listen: &Listen) -> Result<Self, BindError> {
        let [edge, push, internal, admin] = listen.named();
        let (edge, edge_at) = bind(edge)?;
        let (push, push_at) = bind(push)?;
        let (internal, internal_at) = bind(internal)?;
        let (admin, admin_at) = bind(admin)?;
        Ok(Self {
            edge,
            push,
            internal,
            admin,
            addrs: Listen {
                edge: edge_at,
                push: push_at,
                internal: internal_at,
                admin: admin_at,
            },
        })
    }
}

fn bind((field, addr): (&'static str, SocketAddr)) -> Result<(TcpListener, SocketAddr), BindError> {
    use socket2::{Domain, Socket, Type};
    let err = |source| BindError {
        field,
        addr,
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    // As Pingora binds: a restarted gateway rebinds while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    let listener = TcpListener::from(socket);
    let at = listener.local_addr().map_err(err)?;
    Ok((listener, at))
}

/// A Pingora service whose listening sockets were bound in advance: they join the server's
/// descriptor table under the address string the service listens on, unless the table already
/// has one (handed over by an old process in a graceful upgrade).
pub struct PreBound<S> {
    pub service: S,
    // Taken once, at start; a Mutex only to hand the sockets across `&mut self`-less code.
    sockets: Mutex<Vec<(String, TcpListener)>>,
}

impl<S> PreBound<S> {
    /// `sockets`: each with the address string the service was given (`add_tcp` and friends).
    pub fn new(service: S, sockets: Vec<TcpListener>) -> Self {
        let sockets = sockets
            .into_iter()
            .filter_map(|l| Some((l.local_addr().ok()?.to_string(), l)))
            .collect();
        Self {
            service,
            sockets: Mutex::new(sockets),
        }
    }
}

#[async_trait]
impl<S: PingoraService> PingoraService for PreBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let sockets = std::mem::take(
            &mut *self
                .sockets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if let Some(fds) = &fds {
            let mut table = fds.lock();
            for (addr, socket) in sockets {
                if table.get(&addr).is_none() {
                    // The table's listener becomes the descriptor's one owner.
                    table.add(addr, socket.into_raw_fd());
                }
            }
        }
        self.service
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    fn threads(&self) -> Option<usize> {
        self.service.threads()
    }
}
