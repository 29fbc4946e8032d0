//! The HTTP front door: accepts connections within bounds no client can
//! exceed.
//!
//! `axum::serve` has no connection cap, no header-read or idle timeout and
//! no request-body deadline, so a few thousand idle or slow connections
//! (each one file descriptor) starve `/healthz` and every real call. This
//! loop serves the same router through hyper with:
//!
//! * a **cap on open connections**. At the cap the oldest connection with
//!   no request in flight (a slow header first, then the longest idle) is
//!   closed to admit the new one; only when every connection is busy is the
//!   new one refused. Idle and half-sent connections therefore cannot lock
//!   out a client that actually sends a request.
//! * a **header-read timeout**: once a client starts a request (its first
//!   byte while idle) the whole head must arrive within it.
//! * an **idle timeout**: a connection with nothing in flight and nothing
//!   received is closed after it (new connections included).
//! * a **request-body deadline**: the body of one request must arrive
//!   within it, so a trickled body cannot hold a connection either.
//! * a **drain** on shutdown: stop accepting, let in-flight requests finish
//!   within a bound, then close what is left.
//!
//! Hand-written because no maintained crate offers eviction of idle
//! connections at a cap for hyper; the protocol work stays in hyper.

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::Service;

pub use crate::config::ConnectionLimits;

/// Counters and the open-connection gauge, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Accepted since start.
    pub accepted: AtomicU64,
    /// Closed to make room for a new connection at the cap.
    pub evicted: AtomicU64,
    /// Refused because the cap was reached and every connection was busy.
    pub refused: AtomicU64,
    /// Closed for a request head that did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Closed after the idle timeout.
    pub idle_closed: AtomicU64,
    /// `accept` failures (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
}

/// One open connection as the limiter sees it.
#[derive(Debug)]
struct Conn {
    /// Requests whose response has not been fully sent.
    inflight: AtomicU32,
    /// Milliseconds since the limiter started when the connection last
    /// became idle (or was accepted).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while idle (0: none).
    head_since: AtomicU64,
    close: CancellationToken,
    /// The registry's clock origin.
    epoch: tokio::time::Instant,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// The open connections.
#[derive(Debug)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    start: tokio::time::Instant,
    stats: Arc<ConnectionStats>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(usize::MAX)
    }

    fn insert(&self) -> (u64, Arc<Conn>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            inflight: AtomicU32::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            head_since: AtomicU64::new(0),
            close: CancellationToken::new(),
            epoch: self.start,
        });
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(id, conn.clone());
        }
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        (id, conn)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut conns) = self.conns.lock()
            && conns.remove(&id).is_some()
        {
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes the connection most worth closing to make room: a half-sent
    /// request head first (oldest first), then the longest idle. Busy
    /// connections are never chosen. Returns whether one was closed.
    fn evict_one(&self) -> bool {
        let Ok(conns) = self.conns.lock() else {
            return false;
        };
        let victim = conns
            .iter()
            .filter(|(_, c)| c.inflight.load(Ordering::Relaxed) == 0 && !c.close.is_cancelled())
            .min_by_key(|(id, c)| {
                let head = c.head_since.load(Ordering::Relaxed);
                // Half-sent heads sort before idle connections; among equals
                // the one accepted first goes.
                if head != 0 {
                    (0, head, **id)
                } else {
                    (1, c.idle_since.load(Ordering::Relaxed), **id)
                }
            });
        match victim {
            Some((_, c)) => {
                c.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes connections past their header-read or idle deadline.
    fn sweep(&self, limits: &ConnectionLimits) {
        let now = self.now_ms();
        let header = u64::try_from(limits.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let Ok(conns) = self.conns.lock() else {
            return;
        };
        for c in conns.values() {
            if c.inflight.load(Ordering::Relaxed) != 0 || c.close.is_cancelled() {
                continue;
            }
            let head = c.head_since.load(Ordering::Relaxed);
            if head != 0 && now.saturating_sub(head) > header {
                self.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                c.close.cancel();
            } else if head == 0 && now.saturating_sub(c.idle_since.load(Ordering::Relaxed)) > idle {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                c.close.cancel();
            }
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` is
/// cancelled, then drains: no new connections, in-flight requests get
/// `limits.drain_timeout` to finish, the rest are closed. Returns when
/// every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(Registry {
        conns: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
        start: tokio::time::Instant::now(),
        stats: stats.clone(),
    });
    let drain = CancellationToken::new();
    let sweeper = {
        let registry = registry.clone();
        let limits = limits.clone();
        let stop = drain.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => registry.sweep(&limits),
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        // Reap finished connection tasks so the set stays bounded.
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (or a transient error): make room and
                // back off briefly instead of spinning on the error.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "accept failed; closing an idle connection");
                if registry.evict_one() {
                    stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if registry.len() >= limits.max_connections {
            if registry.evict_one() {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (id, conn) = registry.insert();
        let registry = registry.clone();
        let app = app.clone();
        let limits = limits.clone();
        let drain = drain.clone();
        tasks.spawn(async move {
            serve_connection(stream, app, &limits, conn, drain).await;
            registry.remove(id);
        });
    }
    drop(listener);
    // Drain: every connection finishes what is in flight, then closes.
    drain.cancel();
    let deadline = tokio::time::sleep(limits.drain_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                tracing::warn!(open = tasks.len(), "drain timeout: closing the remaining connections");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    let _ = sweeper.await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: &ConnectionLimits,
    conn: Arc<Conn>,
    drain: CancellationToken,
) {
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        conn: conn.clone(),
    });
    let service = hyper_util::service::TowerToHyperService::new(Tracked {
        app,
        conn: conn.clone(),
        body_timeout: limits.body_timeout,
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A backstop only: the sweeper enforces the header-read and idle
        // timeouts (hyper's timer cannot tell the two apart).
        .header_read_timeout(
            limits
                .idle_timeout
                .saturating_add(limits.header_read_timeout),
        )
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        () = conn.close.cancelled() => return,
        () = drain.cancelled() => {}
    }
    // Draining: finish in-flight requests, accept no new ones.
    served.as_mut().graceful_shutdown();
    tokio::select! {
        _ = served.as_mut() => {}
        () = conn.close.cancelled() => {}
    }
}

/// The connection's socket, noting when a request starts arriving on an
/// idle connection (for the header-read timeout).
struct TrackedIo {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.conn.inflight.load(Ordering::Relaxed) == 0
            && self.conn.head_since.load(Ordering::Relaxed) == 0
        {
            self.conn
                .head_since
                .store(self.conn.now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router, counting each request as in flight on its connection until
/// its response body is done (or dropped), and bounding the time its
/// request body may take to arrive.
#[derive(Clone)]
struct Tracked {
    app: Router,
    conn: Arc<Conn>,
    body_timeout: Duration,
}

impl Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.conn.inflight.fetch_add(1, Ordering::Relaxed);
        self.conn.head_since.store(0, Ordering::Relaxed);
        let guard = InFlight(self.conn.clone());
        let deadline = Box::pin(tokio::time::sleep(self.body_timeout));
        let req = req.map(|body| {
            Body::new(Deadline {
                inner: body,
                deadline,
            })
        });
        let mut app = self.app.clone();
        Box::pin(async move {
            let resp = match app.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(resp.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// Marks a request done on its connection when dropped.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request in flight until it is done.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The request body did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
