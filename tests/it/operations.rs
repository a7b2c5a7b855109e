//! What an SRE checks before the front door: hot reload under load, graceful shutdown,
//! limits against slow and oversized clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

fn config(echo: &Echo, generation: usize) -> String {
    format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nadmin: {{ address: \"127.0.0.1:0\" }}\nlimits: {{ header_timeout: 1s }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: steady, match: {{ path_prefix: /steady }}, upstream: echo, auth: none }}\n  - {{ name: small, match: {{ path_prefix: /small }}, upstream: echo, auth: none, max_body_bytes: 1024 }}\n  - {{ name: gen{generation}, match: {{ path_prefix: /gen{generation} }}, upstream: echo, auth: none }}\n",
        echo.addr
    )
}

/// 10 reloads, half of them broken, under a steady request loop: zero failed requests,
/// broken configs refused (and counted), good ones in effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load() {
    let echo = Echo::start().await.expect("echo");
    let running = start_gateway(&config(&echo, 0)).await;
    let a = running.addrs[0];
    let dir = temp_dir();
    let file = dir.join("gw.yaml");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match try_raw(a, "GET /steady HTTP/1.1\nHost: gw", b"").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for i in 1..=10 {
        let good = i % 2 == 0;
        let text = if good {
            config(&echo, i)
        } else {
            format!("{}colour: red\n", config(&echo, i))
        };
        std::fs::write(&file, text).expect("write");
        assert_eq!(running.reload_file(&file), good, "reload {i}");
        let r = get(a, &format!("/gen{i}"), &[]).await;
        assert_eq!(r.status, if good { 200 } else { 404 }, "reload {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.expect("load");
    }
    println!(
        "{} requests during 10 reloads, {} failed",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(ok.load(Ordering::SeqCst) > 100);
    let m = running.gateway.metrics.render();
    assert!(
        m.contains("jwtgate_config_reloads_total{result=\"ok\"} 5"),
        "{m}"
    );
    assert!(m.contains("jwtgate_config_reloads_total{result=\"error\"} 5"));

    // An edit of the watched file is picked up without a signal.
    let running = Arc::new(running);
    running.watch_config(file.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&file, config(&echo, 77)).expect("write");
    let start = Instant::now();
    while get(a, "/gen77", &[]).await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "file change not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that sends its headers one byte a second is cut at `header_timeout`; 64 KiB of
/// headers → 431; a body over the route's `max_body_bytes` → 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Echo::start().await.expect("echo");
    let running = start_gateway(&config(&echo, 0)).await;
    let a = running.addrs[0];
    let mut s = tokio::net::TcpStream::connect(a).await.expect("connect");
    let start = Instant::now();
    let head = b"GET /steady HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(400), s.read(&mut buf)).await {
            // Either a 408 or a close: the connection is over.
            let _ = r;
            closed = true;
            break;
        }
    }
    assert!(closed, "a slowloris client was never cut off");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        start.elapsed()
    );

    let big = format!(
        "GET /steady HTTP/1.1\nHost: gw\nX-Big: {}",
        "a".repeat(64 * 1024)
    );
    let r = raw(a, &big, b"").await;
    assert_eq!(r.status, 431);

    let before = echo.stats.requests.load(Ordering::SeqCst);
    let body = vec![b'x'; 4096];
    let r = raw(
        a,
        "POST /small HTTP/1.1\nHost: gw\nContent-Length: 4096",
        &body,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        echo.stats.requests.load(Ordering::SeqCst),
        before,
        "refused before forwarding"
    );
    let r = raw(
        a,
        "POST /small HTTP/1.1\nHost: gw\nContent-Length: 10",
        b"0123456789",
    )
    .await;
    assert_eq!(r.status, 200);
    // Without a declared length the limit still holds: the upload is cut, never completed.
    let chunked = format!("{:x}\r\n{}\r\n0\r\n\r\n", 4096, "y".repeat(4096));
    let r = try_raw(
        a,
        "POST /small HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked",
        chunked.as_bytes(),
    )
    .await;
    assert!(
        r.map_or(true, |r| r.status != 200),
        "an oversized chunked body was forwarded"
    );
}

/// SIGTERM during a slow in-flight request: it completes; new connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let echo = Echo::start().await.expect("echo");
    let port = free_port();
    let dir = temp_dir();
    let file = dir.join("gw.yaml");
    std::fs::write(
        &file,
        config(&echo, 0).replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1),
    )
    .expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["serve", "-c"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Instant::now();
    let slow = tokio::spawn(async move {
        try_raw(addr, "GET /steady/__sleep/1500 HTTP/1.1\nHost: gw", b"").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections must be refused"
    );
    let r = slow
        .await
        .expect("join")
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200);
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "the request was not slow"
    );
    let code = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(code.success(), "{code:?}");
}

/// `max_connections`: a connection over the limit waits in the backlog until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_excess() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Echo::start().await.expect("echo");
    let yaml = config(&echo, 0).replace(
        "limits: { header_timeout: 1s }",
        "limits: { header_timeout: 5s, max_connections: 2 }",
    );
    let running = start_gateway(&yaml).await;
    let a = running.addrs[0];
    let first = tokio::net::TcpStream::connect(a).await.expect("1");
    let _second = tokio::net::TcpStream::connect(a).await.expect("2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(a)
        .await
        .expect("3 (kernel backlog)");
    third
        .write_all(b"GET /steady HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "served over the limit"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("served once a slot frees")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
