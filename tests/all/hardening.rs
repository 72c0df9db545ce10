//! The API server against hostile clients (issue 15, rows 1 and 8), over real TCP: bodies
//! are not read before authentication, body limits hold while a chunked body streams in,
//! slow and idle connections are closed, the number of connections is capped, and shutdown
//! has a bound. Each scenario leaves its request unfinished on purpose: a server that waited
//! for the whole body (or the whole header) would never answer.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_server::api::{self, ApiConfig, AppState};
use weir_store::Store;
use weir_worker::kafka::Broker;

const ADMIN: &str = "wk_00000000000000000000000000000000000000000000000000000000000000ad";

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn server(config: ApiConfig) -> Server {
    let store = Arc::new(Store::connect("sqlite::memory:").await.unwrap());
    let (state, _) = AppState::new(
        store,
        crate::common::engine(),
        Broker::External("127.0.0.1:1".into()),
        config,
        Some(ADMIN.into()),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(api::serve(state, listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        done,
    }
}

/// What the server sends until it closes the connection or `wait` passes.
async fn read_reply(c: &mut TcpStream, wait: Duration) -> String {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                // One response head and a small JSON body are enough.
                if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn chunk(n: usize) -> Vec<u8> {
    let mut out = format!("{n:x}\r\n").into_bytes();
    out.extend(std::iter::repeat_n(b' ', n));
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_not_read_before_authentication_or_past_the_limit() {
    let s = server(ApiConfig::default()).await;
    // No key, a chunked body that never ends: 401 at once.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"POST /v1/tenants HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    c.write_all(&chunk(64 << 10)).await.unwrap();
    let reply = read_reply(&mut c, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply:?}");
    assert!(reply.contains("\"code\":\"unauthorized\""), "{reply}");

    // The admin key and a chunked body over the 1 MiB limit that never ends: 413 once the
    // limit is passed, not at the body's end.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        format!(
            "POST /v1/tenants HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {ADMIN}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for _ in 0..20 {
        // 20 × 64 KiB = 1.25 MiB, then silence.
        if c.write_all(&chunk(64 << 10)).await.is_err() {
            break;
        }
    }
    let reply = read_reply(&mut c, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");
    assert!(reply.contains("payload_too_large"), "{reply}");

    // A declared length over the limit: 413 before any body byte.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        format!(
            "POST /v1/tenants HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {ADMIN}\r\ncontent-length: 1073741824\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let reply = read_reply(&mut c, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");
    drop(s.stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_cannot_hold_the_server() {
    let config = ApiConfig {
        header_timeout: Duration::from_secs(1),
        max_connections: 50,
        shutdown_grace: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let mut s = server(config).await;
    // A client that never finishes its headers is closed after the header timeout.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let t = Instant::now();
    let reply = read_reply(&mut slow, Duration::from_secs(10)).await;
    let closed_after = t.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}: {reply:?}"
    );
    // Connections past the cap are closed at once; the ones inside it are served.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost:")
            .await
            .unwrap();
        held.push(c);
    }
    // Let the server accept them all.
    let mut over = TcpStream::connect(s.addr).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\n\r\n")
        .await;
    let reply = read_reply(&mut over, Duration::from_secs(5)).await;
    assert_eq!(reply, "", "the 51st connection is closed unanswered");
    // Once the slow ones time out, the server answers again.
    let t = Instant::now();
    let reply = loop {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\n\r\n")
            .await;
        let reply = read_reply(&mut c, Duration::from_secs(2)).await;
        if !reply.is_empty() || t.elapsed() > Duration::from_secs(10) {
            break reply;
        }
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(held);

    // Shutdown is bounded, however slow a client is: a connection in the middle of a
    // request body holds it at most `shutdown_grace`.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        format!(
            "POST /v1/tenants HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {ADMIN}\r\ncontent-length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Served in turn: once a later request is answered, the server holds this one.
    let mut probe = TcpStream::connect(s.addr).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut probe, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let t = Instant::now();
    let _ = s.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), &mut s.done)
        .await
        .expect("serve returned")
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t.elapsed()
    );
    drop(c);
}
