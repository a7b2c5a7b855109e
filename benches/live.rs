//! Live connections, measured on the real gateway binary: memory per idle WebSocket
//! (RSS growth over 1,000 sockets, relative to the process before them) and the time from
//! the control plane's `201` to the close frame at the client, p50/p99 over 100 revocations.
//!
//! Run: `cargo bench --bench live`

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let (ws_addr, _) = ws::ws_upstream().await;
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let port = free_port();
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:{port}\" }} ]\nlog: {{ level: warn }}\nissuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\nupstreams: [ {{ name: ws, url: \"http://{ws_addr}\" }} ]\nroutes:\n  - {{ name: ws, match: {{ path_prefix: / }}, upstream: ws, auth: {{ issuers: [idp] }} }}\nrevocation:\n  control_url: http://{}\n  token: {READER_KEY}\n",
        idp.url,
        idp.jwks_url(),
        control.addr
    );
    let file = dir.join("gw.yaml");
    std::fs::write(&file, yaml).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["serve", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let gw = format!("127.0.0.1:{port}");
    let connect = |token: String| {
        let gw = gw.clone();
        async move {
            let mut req = format!("ws://{gw}/chat")
                .into_client_request()
                .expect("request");
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("value"),
            );
            tokio_tungstenite::connect_async(req)
                .await
                .map(|(ws, _)| ws)
        }
    };
    let start = Instant::now();
    while connect(key.mint(&claims(&idp.url))).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up, then measure 1,000 idle sockets.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(connect(key.mint(&claims(&idp.url))).await.expect("ws"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect(key.mint(&claims(&idp.url))).await.expect("ws"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!(
        "gateway RSS {before} KiB → {after} KiB with 1,000 more idle WebSockets: {:.1} KiB per socket (both of its TCP connections and buffers, token verification included)",
        after.saturating_sub(before) as f64 / 1000.0
    );

    let mut times = Vec::new();
    for _ in 0..100 {
        let c = claims(&idp.url);
        let mut ws = connect(key.mint(&c)).await.expect("ws");
        let r = revoke(
            control.addr,
            &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
        )
        .await;
        assert_eq!(r.status, 201);
        let acked = Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 1008),
            other => panic!("expected a close frame, got {other:?}"),
        }
        times.push(acked.elapsed());
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "201 → close frame at the client, 100 revocations: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        times[99]
    );
    let _ = child.kill();
    let _ = child.wait();
    drop((warm, idle));
}
