//! Slow HTTP/1 clients on the edge listener (security issue, item 13): a deadline for a complete
//! request head (`http.request_head_timeout`), an idle keep-alive timeout
//! (`http.keepalive_timeout`), and a per-IP cap on connections that have not completed a request
//! (`http.max_unfinished_per_ip`). Pingora has only a per-read timeout, so a client dripping one
//! header line every few seconds held a connection (and a file descriptor) forever.
//!
//! [`GuardedApp`] wraps the edge's Pingora app: every accepted stream is wrapped in a
//! [`Guarded`] stream that watches the bytes it reads. A head ends at the first `CRLF CRLF`;
//! after the response starts, the next byte read begins the next head. While a head is
//! incomplete a pending read fails once the deadline passes; while the connection is idle
//! between requests, a pending read ends the connection cleanly once the keep-alive timeout
//! passes. HTTP/2 (the h2c preface, or ALPN h2) is exempt: its frames are not heads. Trusted
//! proxies (the CDN, `client_ip.trusted_proxies`) are exempt from the per-IP cap, since every
//! client behind them shares their addresses.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::filters::client_ip::ClientIpConfig;
use crate::ip_counts::{IpCounts, IpSlot};
use crate::metrics::Metrics;
use crate::units::HumanDuration;

/// `http` in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// From a connection's first byte (or a keep-alive request's first byte) to its complete head.
    pub request_head_timeout: HumanDuration,
    /// Idle time between requests on a keep-alive connection.
    pub keepalive_timeout: HumanDuration,
    /// Connections per client IP that have not completed a request yet.
    pub max_unfinished_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            request_head_timeout: HumanDuration(Duration::from_secs(10)),
            keepalive_timeout: HumanDuration(Duration::from_secs(60)),
            max_unfinished_per_ip: 100,
        }
    }
}

impl HttpConfig {
    /// Why this section is invalid, if it is: the field and the fix.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.request_head_timeout.0.is_zero() {
            return Err(("http.request_head_timeout", "must be above 0 (default 10s)"));
        }
        if self.keepalive_timeout.0.is_zero() {
            return Err(("http.keepalive_timeout", "must be above 0 (default 60s)"));
        }
        if self.max_unfinished_per_ip == 0 {
            return Err((
                "http.max_unfinished_per_ip",
                "must be at least 1 (default 100)",
            ));
        }
        Ok(())
    }
}

/// The edge app with slow clients bounded; see the module docs.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    config: HttpConfig,
    client_ip: ClientIpConfig,
    unfinished: Arc<IpCounts>,
    metrics: Arc<Metrics>,
}

impl<A> GuardedApp<A> {
    pub fn new(
        inner: A,
        config: HttpConfig,
        client_ip: ClientIpConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            config,
            client_ip,
            unfinished: Arc::default(),
            metrics,
        }
    }

    /// The wrapped app (for its server options).
    pub fn inner_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.inner)
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A reused keep-alive connection comes back already guarded.
        let stream: Stream = if stream.as_any().is::<Guarded>() {
            stream
        } else {
            let peer = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            let slot = match peer {
                Some(ip) if !self.client_ip.is_trusted(ip) => {
                    let bucket = self.client_ip.bucket(ip);
                    match self
                        .unfinished
                        .acquire(bucket, self.config.max_unfinished_per_ip)
                    {
                        Some(slot) => Some(slot),
                        None => {
                            self.metrics.http_unfinished_rejections.inc();
                            return None;
                        }
                    }
                }
                _ => None,
            };
            let exempt = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
            Box::new(Guarded::new(
                stream,
                &self.config,
                slot,
                exempt,
                self.metrics.clone(),
            ))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a head that started at this instant (a new connection starts here).
    Head(Instant),
    /// Between a head and the response: body bytes, no deadline of ours.
    Message,
    /// After a response: waiting for the next request since this instant (the last write).
    Idle(Instant),
    /// HTTP/2: not ours to time.
    Exempt,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Where heads begin and end in the bytes of one connection; socket-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadTracker {
    phase: Phase,
    /// How much of `CRLF CRLF` the bytes read so far end with.
    matched: u8,
    /// How many of the connection's first bytes matched the h2c preface so far (it may arrive
    /// split over several reads); `None` once one did not.
    preface: Option<u8>,
}

impl HeadTracker {
    fn new(exempt: bool) -> Self {
        Self {
            phase: if exempt {
                Phase::Exempt
            } else {
                Phase::Head(Instant::now())
            },
            matched: 0,
            preface: Some(0),
        }
    }

    /// Follows bytes just read; true when a head was completed (or the connection turned out to
    /// be HTTP/2) by them.
    fn saw(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false;
        }
        if let Some(done) = self.preface {
            let rest = &H2_PREFACE[usize::from(done)..];
            let n = rest.len().min(bytes.len());
            self.preface = (bytes[..n] == rest[..n]).then_some(done + n as u8);
            if n == rest.len() && self.preface.is_some() {
                self.phase = Phase::Exempt;
                self.preface = None;
                return true;
            }
            // A preface begun but not finished is also followed as a head: it holds no blank
            // line, and the head deadline stays on until it is complete.
        }
        if let Phase::Idle(_) = self.phase {
            self.phase = Phase::Head(Instant::now());
            self.matched = 0;
        }
        if !matches!(self.phase, Phase::Head(_)) {
            return false;
        }
        for &b in bytes {
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.matched == 4 {
                self.phase = Phase::Message;
                self.matched = 0;
                return true;
            }
        }
        false
    }

    /// A response is going out: the next byte read starts the next head.
    fn wrote(&mut self) {
        if matches!(self.phase, Phase::Message | Phase::Idle(_)) {
            self.phase = Phase::Idle(Instant::now());
        }
    }
}

/// An accepted stream whose reads are timed as the module docs say.
pub struct Guarded {
    inner: Stream,
    head_timeout: Duration,
    keepalive_timeout: Duration,
    track: HeadTracker,
    timer: Option<Pin<Box<Sleep>>>,
    slot: Option<IpSlot>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.track.phase)
            .finish()
    }
}

impl Guarded {
    fn new(
        inner: Stream,
        cfg: &HttpConfig,
        slot: Option<IpSlot>,
        exempt: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            head_timeout: cfg.request_head_timeout.0,
            keepalive_timeout: cfg.keepalive_timeout.0,
            track: HeadTracker::new(exempt),
            timer: None,
            slot,
            metrics,
        }
    }

    /// What a pending read waits for at most: the head deadline, or the keep-alive one.
    fn deadline(&self) -> Option<(Instant, bool)> {
        match self.track.phase {
            Phase::Head(t) => Some((t + self.head_timeout, true)),
            Phase::Idle(t) => Some((t + self.keepalive_timeout, false)),
            Phase::Message | Phase::Exempt => None,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.track.saw(&buf.filled()[before..]) {
                    // A finished request (or HTTP/2) frees the unfinished slot and the timer.
                    this.slot = None;
                    this.timer = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, is_head)) = this.deadline() else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer = None;
                if is_head {
                    this.metrics.http_head_timeouts.inc();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete within http.request_head_timeout",
                    )))
                } else {
                    // Idle keep-alive: end of stream, a quiet close.
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.track.wrote();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_end_at_the_first_blank_line_and_h2_is_exempt() {
        let mut t = HeadTracker::new(false);
        assert!(!t.saw(b"GET / HTTP/1.1\r\nhost: a\r"));
        assert!(!t.saw(b"\n\r"));
        assert!(t.saw(b"\n"), "CRLF CRLF across three reads ends the head");
        assert_eq!(t.phase, Phase::Message);
        assert!(!t.saw(b"body\r\n\r\n"), "body bytes are not a head");
        t.wrote();
        assert!(matches!(t.phase, Phase::Idle(_)));
        assert!(!t.saw(b"GET /next"));
        assert!(
            matches!(t.phase, Phase::Head(_)),
            "the next request's first byte starts a head"
        );

        let mut h2 = HeadTracker::new(false);
        assert!(h2.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert_eq!(h2.phase, Phase::Exempt);
        assert!(!h2.saw(b"GET / HTTP/1.1\r\n\r\n"));

        // The preface split over reads (one byte, then the rest) is recognized too.
        let mut split = HeadTracker::new(false);
        assert!(!split.saw(b"P"));
        assert!(!split.saw(b"RI * HTTP/"));
        assert!(split.saw(b"2.0\r\n\r\nSM\r\n\r\n"));
        assert_eq!(split.phase, Phase::Exempt);
        // A head that only begins like it is not.
        let mut almost = HeadTracker::new(false);
        assert!(!almost.saw(b"PR"));
        assert!(!almost.saw(b"OPFIND / HTTP/1.1\r\n"));
        assert!(matches!(almost.phase, Phase::Head(_)));
        assert!(almost.saw(b"\r\n"));
        assert_eq!(almost.phase, Phase::Message);
    }
}
