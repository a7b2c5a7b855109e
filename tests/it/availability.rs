//! Availability at the front door (issue "Hardening I", items 1–2): clients that never
//! speak, idle connections at capacity, HTTP/2 idleness and rapid resets, stalled bodies,
//! and the bound on requests in flight upstream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn yaml(echo: SocketAddr, limits: &str, listener_tls: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0"{listener_tls} }} ]
limits: {{ {limits} }}
upstreams:
  - {{ name: echo, url: "http://{echo}", timeout: 900ms }}
routes:
  - {{ name: open, match: {{ path_prefix: / }}, upstream: echo, auth: none }}
"#
    )
}

/// A full request on a fresh connection; its status, or 0 when there was no answer.
async fn status_within(addr: SocketAddr, limit: Duration) -> u16 {
    match tokio::time::timeout(limit, try_raw(addr, "GET /ok HTTP/1.1\nHost: gw", b"")).await {
        Ok(Ok(r)) => r.status,
        _ => 0,
    }
}

/// Whether the peer closed `s` within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Connections that never speak — nothing at all, half a request head, an h2c preface and
/// then silence — are cut at `header_timeout`, so they cannot lock clients out.
#[tokio::test]
async fn silent_connections_are_cut() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(
        echo.addr,
        "max_connections: 3, header_timeout: 400ms",
        "",
    ))
    .await;
    let a = gw.addrs[0];
    let openers: [&[u8]; 3] = [
        b"",
        b"GET / HTTP/1.1\r\nHost: g",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    let mut silent = Vec::new();
    for bytes in openers {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        silent.push(s);
    }
    // Every slot is held by a silent client; a real one is served once they are cut.
    let start = Instant::now();
    assert_eq!(status_within(a, Duration::from_secs(3)).await, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(2)).await,
            "silent client {i} kept"
        );
    }
}

/// After a TLS handshake, a client that sends nothing is cut at `header_timeout` too.
#[tokio::test]
async fn silent_after_tls_handshake_is_cut() {
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    std::fs::copy(crate::tls::tls("server.pem"), dir.join("cert.pem")).expect("copy");
    std::fs::copy(crate::tls::tls("server.key"), dir.join("key.pem")).expect("copy");
    let listener_tls = format!(
        ", tls: {{ cert: \"{}\", key: \"{}\" }}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let gw = start_gateway(&yaml(
        echo.addr,
        "max_connections: 2, header_timeout: 400ms",
        &listener_tls,
    ))
    .await;
    let config = crate::tls::client_config(
        "ca.pem",
        &[&rustls::version::TLS13],
        &[b"h2", b"http/1.1"],
        false,
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            crate::tls::connect(gw.addrs[0], config.clone())
                .await
                .expect("handshake"),
        );
    }
    let start = Instant::now();
    let mut s = crate::tls::connect(gw.addrs[0], config.clone())
        .await
        .expect("third handshake");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        start.elapsed()
    );
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    for t in held.iter_mut() {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a silent TLS client was kept"
        );
    }
}

/// At `max_connections`, an idle keep-alive connection is closed to make room for a new
/// client instead of the new client waiting behind it.
#[tokio::test]
async fn idle_keep_alive_yields_at_capacity() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(
        echo.addr,
        "max_connections: 2, idle_timeout: 60s",
        "",
    ))
    .await;
    let a = gw.addrs[0];
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    let start = Instant::now();
    assert_eq!(status_within(a, Duration::from_secs(3)).await, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// `idle_timeout` holds for HTTP/2: a connection with no stream open is closed.
#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(echo.addr, "idle_timeout: 300ms", "")).await;
    let tcp = TcpStream::connect(gw.addrs[0]).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://gw/ok")
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), driver).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
}

/// HTTP/2 rapid reset: a client that cancels every stream soon after opening it is sent
/// away (GOAWAY), and the upstream work it can cause stays bounded.
#[tokio::test]
async fn rapid_reset_is_cut_off() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(echo.addr, "max_concurrent_streams: 100", "")).await;
    let tcp = TcpStream::connect(gw.addrs[0]).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut opened = 0u32;
    for _ in 0..5000 {
        let mut c = match client.clone().ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = http::Request::get("http://gw/__sleep/200")
            .body(())
            .expect("request");
        let Ok((resp, mut stream)) = c.send_request(req, true) else {
            break;
        };
        opened += 1;
        // Cancel once the gateway has taken the stream on.
        tokio::time::sleep(Duration::from_micros(500)).await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
    }
    assert!(
        opened < 5000,
        "the connection was never cut off ({opened} streams)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upstream = echo
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        upstream <= 400,
        "{upstream} upstream requests from one connection"
    );
    // Others are still served.
    assert_eq!(
        status_within(gw.addrs[0], Duration::from_secs(3)).await,
        200
    );
}

/// A client that stops mid-body, and an upstream that stops mid-body, are cut at
/// `body_timeout`.
#[tokio::test]
async fn stalled_bodies_are_cut() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(echo.addr, "body_timeout: 300ms", "")).await;
    let mut s = TcpStream::connect(gw.addrs[0]).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "a stalled request body held the exchange open");
    assert!(
        !out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // An upstream that promises 100 bytes, sends 10, and goes quiet.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let gw = start_gateway(&yaml(up, "body_timeout: 300ms", "")).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(gw.addrs[0]).await.expect("connect");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "a stalled upstream body held the client");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        out.ends_with(b"0123456789"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// `max_in_flight` bounds requests upstream across all connections: past it a request
/// waits up to the upstream's `timeout`, then gets 503.
#[tokio::test]
async fn in_flight_bound_answers_503_when_full() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(echo.addr, "max_in_flight: 1", "")).await;
    let a = gw.addrs[0];
    let mut tasks = Vec::new();
    for i in 0..3u64 {
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30 * i)).await;
            raw(a, "GET /__sleep/600 HTTP/1.1\nHost: gw", b"")
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 503], "{statuses:?}");
}

/// A WebSocket holds its connection's slot: at `max_connections` a new client waits until
/// a tunnel closes.
#[tokio::test]
async fn websockets_count_against_max_connections() {
    let (ws_addr, _) = crate::support::ws::ws_upstream().await;
    let gw = start_gateway(&yaml(ws_addr, "max_connections: 1", "")).await;
    let url = format!("ws://{}/chat", gw.addrs[0]);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
    assert_eq!(
        status_within(gw.addrs[0], Duration::from_millis(700)).await,
        0
    );
    let _ = ws.close(None).await;
    drop(ws);
    let start = Instant::now();
    let mut status = 0;
    while status == 0 && start.elapsed() < Duration::from_secs(3) {
        let mut s = TcpStream::connect(gw.addrs[0]).await.expect("connect");
        // A WebSocket-only upstream answers plain GETs with 400; any answer means a slot.
        let _ = s
            .write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1") {
            status = 1;
        }
    }
    assert_eq!(
        status, 1,
        "the slot was not released when the tunnel closed"
    );
}

/// `max_connections_per_client`: one address cannot take every slot.
#[tokio::test]
async fn per_client_cap() {
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(
        echo.addr,
        "max_connections_per_client: 2, header_timeout: 5s",
        "",
    ))
    .await;
    let a = gw.addrs[0];
    let _one = TcpStream::connect(a).await.expect("1");
    let _two = TcpStream::connect(a).await.expect("2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(a).await.expect("3");
    assert!(
        closed_within(&mut third, Duration::from_secs(1)).await,
        "a third connection was kept"
    );
    drop(_one);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status_within(a, Duration::from_secs(2)).await, 200);
}

/// A hand-written HTTP/1.1 upstream that counts the connections it accepts and answers each
/// request `200 ok`; with `close_after_one`, it closes every connection after its first
/// response without saying so (no `Connection: close`), as an upstream whose keep-alive
/// timeout just ran out does.
async fn counting_upstream(
    close_after_one: bool,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    head_by_head_upstream(move |_| Answer {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec(),
        piece: usize::MAX,
        close: close_after_one,
    })
    .await
}

/// Upstream connections are kept alive and reused: 200 requests in a row travel on one
/// connection. An upstream that closes each connection after one response, unannounced,
/// costs no request: one that a closed connection could not take goes out on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_replaced() {
    for close_after_one in [false, true] {
        let (up, accepted) = counting_upstream(close_after_one).await;
        let gw = start_gateway(&format!(
            r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
limits: {{ workers: 1 }}
upstreams: [ {{ name: up, url: "http://{up}" }} ]
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: up, auth: none }}
"#
        ))
        .await;
        let mut s = TcpStream::connect(gw.addrs[0]).await.expect("connect");
        let mut failed = 0;
        for i in 0..200 {
            s.write_all(format!("GET /r{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.expect("response");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.expect("body");
            if !head.starts_with("http/1.1 200") {
                failed += 1;
            }
            if close_after_one {
                // Let the upstream's close arrive, as it would between a user's clicks.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let connections = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(failed, 0, "close_after_one={close_after_one}");
        if close_after_one {
            assert!(connections >= 200, "{connections}");
        } else {
            assert_eq!(connections, 1, "requests in a row share one connection");
        }
    }
}
