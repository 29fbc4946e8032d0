//! The front door's bounds, over real loopback sockets.

use super::*;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn app() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "slow"
            }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
}

struct Running {
    addr: std::net::SocketAddr,
    stats: Arc<ConnectionStats>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

async fn start(limits: ConnectionLimits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ConnectionStats::default());
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(serve(
        listener,
        app(),
        limits,
        stats.clone(),
        shutdown.clone(),
    ));
    Running {
        addr,
        stats,
        shutdown,
        done,
    }
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(1),
        max_header_bytes: 16 * 1024,
        drain_timeout: Duration::from_secs(5),
        drain_delay: Duration::ZERO,
    }
}

/// Sends a complete request and returns the response's status line.
async fn request(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Whether the server closed `s` within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn idle_connections_at_the_cap_make_room_for_a_real_request() {
    let srv = start(limits()).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(srv.stats.open.load(Ordering::Relaxed), 8);
    // A ninth client with a real request is served: the oldest idle
    // connection was closed for it.
    assert!(request(srv.addr, "/healthz").await.contains("200"));
    assert!(srv.stats.evicted.load(Ordering::Relaxed) >= 1);
    assert!(closed_within(&mut idle[0], Duration::from_secs(2)).await);
}

#[tokio::test]
async fn busy_connections_are_never_evicted_and_the_newcomer_is_refused() {
    let srv = start(ConnectionLimits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let slow = [
        tokio::spawn(request(srv.addr, "/slow")),
        tokio::spawn(request(srv.addr, "/slow")),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = TcpStream::connect(srv.addr).await.unwrap();
    assert!(closed_within(&mut late, Duration::from_secs(1)).await);
    assert_eq!(srv.stats.refused.load(Ordering::Relaxed), 1);
    for s in slow {
        assert!(s.await.unwrap().contains("200"));
    }
}

#[tokio::test]
async fn a_half_sent_request_head_is_cut_at_the_header_timeout() {
    let srv = start(limits()).await;
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
    assert_eq!(srv.stats.header_timeouts.load(Ordering::Relaxed), 1);
    // Sending nothing is idleness, which has its own (longer) timeout.
    assert!(!closed_within(&mut idle, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let srv = start(ConnectionLimits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
    assert_eq!(srv.stats.idle_closed.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.open.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_trickled_request_body_is_cut_at_the_body_timeout() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the body deadline did not end the request");
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
}

#[tokio::test]
async fn drain_finishes_calls_in_flight_and_accepts_no_more() {
    let srv = start(limits()).await;
    let in_flight = tokio::spawn(request(srv.addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(srv.addr).await.is_err());
    assert!(in_flight.await.unwrap().contains("200"));
    tokio::time::timeout(Duration::from_secs(5), srv.done)
        .await
        .unwrap()
        .unwrap();
}
