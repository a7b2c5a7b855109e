//! WebSockets and streams through the gateway, and their cut-off on revocation and expiry,
//! with a real WebSocket client and server (tungstenite) and a real control plane.

use std::time::{Duration, Instant};

use crate::support::ws::{ws_upstream, Seen};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// An upstream that answers `GET /sse` with an endless event stream (no length).
async fn sse_upstream() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                    let (tx, rx) = tokio::sync::mpsc::channel::<
                        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
                    >(4);
                    tokio::spawn(async move {
                        for i in 0u64.. {
                            let ev = bytes::Bytes::from(format!("data: tick {i}\n\n"));
                            if tx.send(Ok(hyper::body::Frame::data(ev))).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    });
                    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
                    let mut resp = hyper::Response::new(body);
                    resp.headers_mut()
                        .insert("content-type", "text/event-stream".parse().expect("v"));
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct World {
    idp: Idp,
    key: Signer,
    control: jwtgate::app::RunningControl,
    gw: jwtgate::app::Running,
    seen: Seen,
}

async fn world(leeway: &str) -> World {
    world_with(leeway, "").await
}

async fn world_with(leeway: &str, revocation_extra: &str) -> World {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let (ws, seen) = ws_upstream().await;
    let sse = sse_upstream().await;
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let yaml = format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
admin: {{ address: "127.0.0.1:0" }}
issuers:
  - {{ name: idp, issuer: "{iss}", jwks_uri: "{jwks}", audiences: [api], algorithms: [ES256], leeway: {leeway} }}
upstreams:
  - {{ name: ws, url: "http://{ws}" }}
  - {{ name: sse, url: "http://{sse}" }}
routes:
  - name: sse
    match: {{ path_prefix: /sse }}
    upstream: sse
    auth: {{ issuers: [idp] }}
  - name: ws-forever
    match: {{ path_prefix: /forever }}
    upstream: ws
    auth: {{ issuers: [idp], close_on_expiry: false }}
  - name: ws
    match: {{ path_prefix: / }}
    upstream: ws
    auth: {{ issuers: [idp], token_sources: [header, {{ query: access_token }}, {{ websocket_protocol: bearer }}] }}
revocation:
  control_url: http://{control}
  token: {READER_KEY}
{revocation_extra}"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        control = control.addr
    );
    let gw = start_gateway(&yaml).await;
    World {
        idp,
        key,
        control,
        gw,
        seen,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl World {
    fn token(&self, extra: Value) -> (String, Value) {
        let mut c = claims(&self.idp.url);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        (self.key.mint(&c), c)
    }
    async fn connect(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<
        (
            Ws,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let mut req = format!("ws://{}{path}", self.gw.addrs[0])
            .into_client_request()
            .expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        tokio_tungstenite::connect_async(req).await
    }
    async fn ws(&self, token: &str) -> Ws {
        self.connect("/chat", &[("authorization", &format!("Bearer {token}"))])
            .await
            .expect("handshake")
            .0
    }
    fn metric(&self, name: &str) -> f64 {
        let text = self.gw.gateway.metrics.render();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Wait for the close frame; returns its code and reason, and how long it took.
async fn closed_with(ws: &mut Ws, limit: Duration) -> (CloseCode, String, Duration) {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), ws.next()).await {
            Err(_) => panic!("no close frame within {limit:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (f.code, f.reason.to_string(), start.elapsed())
            }
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) => panic!("closed without a 1008 frame"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("error before the close frame: {e}"),
        }
    }
}

/// Text, binary, a 10 MB message, ping/pong and clean closes from either side, end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo() {
    let w = world("30s").await;
    let (token, _) = w.token(json!({}));
    let mut ws = w.ws(&token).await;
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("msg").expect("ok"),
        Message::text("hello")
    );
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("msg").expect("ok"),
        Message::binary(vec![1u8, 2, 3])
    );
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send big");
    match ws.next().await.expect("msg").expect("ok") {
        Message::Binary(b) => assert!(b.as_ref() == big.as_slice(), "10 MB echo differs"),
        other => panic!("unexpected {other:?}"),
    }
    ws.send(Message::Ping(b"p".to_vec().into()))
        .await
        .expect("ping");
    loop {
        if let Message::Pong(p) = ws.next().await.expect("msg").expect("ok") {
            assert_eq!(p.as_ref(), b"p");
            break;
        }
    }
    ws.close(None).await.expect("client close");
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
    // The upstream closes: the client sees a normal close.
    let mut ws = w.ws(&token).await;
    ws.send(Message::text("close-me")).await.expect("send");
    match ws.next().await {
        Some(Ok(Message::Close(f))) => assert!(f.is_none_or(|f| f.code == CloseCode::Normal)),
        other => panic!("expected the upstream's close, got {other:?}"),
    }
    // No token: the handshake is refused and no tunnel opens.
    let before = w.seen.lock().expect("lock").len();
    let err = w.connect("/chat", &[]).await.expect_err("refused");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(w.seen.lock().expect("lock").len(), before);
}

/// Revoking by jti, by sid and by sub cutoff closes the open WebSocket within 1 s with 1008;
/// an SSE stream of the same token ends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_live_connections() {
    let w = world("30s").await;
    let now = now();
    let cases = [
        ("jti", json!({ "sid": "s-jti", "sub": "u-jti" })),
        ("sid", json!({ "sid": "s-sid", "sub": "u-sid" })),
        (
            "sub",
            json!({ "sid": "s-sub", "sub": "u-sub", "iat": now - 10 }),
        ),
    ];
    for (kind, extra) in cases {
        let (token, c) = w.token(extra);
        let mut ws = w.ws(&token).await;
        ws.send(Message::text("still here")).await.expect("send");
        assert_eq!(
            ws.next().await.expect("msg").expect("ok"),
            Message::text("still here")
        );
        let body = match kind {
            "jti" => json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
            "sid" => json!({ "iss": w.idp.url, "sid": c["sid"] }),
            _ => json!({ "iss": w.idp.url, "sub": c["sub"], "issued_before": now }),
        };
        assert_eq!(revoke(w.control.addr, &body).await.status, 201);
        let (code, reason, took) = closed_with(&mut ws, Duration::from_secs(1)).await;
        assert_eq!(code, CloseCode::Policy, "{kind}");
        assert_eq!(reason, "token revoked");
        println!("{kind}: close frame {took:?} after the 201");
    }
    // SSE: the stream ends.
    let (token, c) = w.token(json!({}));
    let mut s = tokio::net::TcpStream::connect(w.gw.addrs[0])
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET /sse HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    assert_eq!(
        revoke(
            w.control.addr,
            &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] })
        )
        .await
        .status,
        201
    );
    let start = Instant::now();
    let mut all = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("stream ended in time")
            .expect("read");
        all.extend_from_slice(&buf[..n]);
        if n == 0 || all.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "SSE ended after {:?}",
        start.elapsed()
    );
    assert!(w.metric("jwtgate_live_connections_closed_total{reason=\"revoked\"}") >= 4.0);
}

/// A token that expires while its WebSocket is open: closed at expiry with `token expired`;
/// a route with `close_on_expiry: false` keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_websocket() {
    let w = world("1s").await;
    let (token, _) = w.token(json!({ "exp": now() + 2 }));
    let mut ws = w.ws(&token).await;
    let mut forever = w
        .connect("/forever", &[("authorization", &format!("Bearer {token}"))])
        .await
        .expect("handshake")
        .0;
    let (code, reason, took) = closed_with(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "token expired");
    assert!(
        took >= Duration::from_millis(1500),
        "closed too early: {took:?}"
    );
    forever.send(Message::text("alive")).await.expect("send");
    assert_eq!(
        forever.next().await.expect("msg").expect("ok"),
        Message::text("alive")
    );
}

/// Tokens from the query and from the subprotocol never reach the upstream; the real
/// subprotocol is negotiated with it, and a browser offering only the marker gets it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_upstream() {
    let w = world("30s").await;
    let (token, _) = w.token(json!({}));
    let (_ws, resp) = w
        .connect(&format!("/q?room=1&access_token={token}"), &[])
        .await
        .expect("query token");
    assert_eq!(resp.status(), 101);
    let (_ws2, resp) = w
        .connect(
            "/p",
            &[("sec-websocket-protocol", &format!("bearer, {token}, chat"))],
        )
        .await
        .expect("subprotocol token");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("chat")
    );
    let (_ws3, resp) = w
        .connect(
            "/m",
            &[("sec-websocket-protocol", &format!("bearer, {token}"))],
        )
        .await
        .expect("marker only");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("bearer")
    );
    let seen = w.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    for (target, headers) in &seen {
        assert!(
            !target.contains(&token),
            "token in the upstream target {target}"
        );
        for (k, v) in headers {
            assert!(!v.contains(&token), "token in upstream header {k}");
        }
    }
    assert_eq!(seen[0].0, "/q?room=1");
    let protos: Vec<&str> = seen[1]
        .1
        .iter()
        .filter(|(k, _)| k == "sec-websocket-protocol")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(protos, vec!["chat"]);
    // `Upgrade: h2c` is never forwarded.
    let r = get(
        w.gw.addrs[0],
        "/x",
        &[
            &bearer(&token),
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
    )
    .await;
    assert_ne!(r.status, 101);
}

/// 1,000 idle WebSockets of 100 users: revoking one user closes exactly that user's ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sockets_exactly_one_user_closed() {
    let w = world("30s").await;
    let now = now();
    let mut sockets = Vec::new();
    for user in 0..100 {
        for _ in 0..10 {
            let (token, _) = w.token(json!({ "sub": format!("user-{user}"), "iat": now - 5 }));
            sockets.push((user, w.ws(&token).await));
        }
    }
    assert_eq!(w.gw.gateway.live.len(), 1000);
    assert_eq!(w.metric("jwtgate_live_connections "), 1000.0);
    assert_eq!(
        revoke(
            w.control.addr,
            &json!({ "iss": w.idp.url, "sub": "user-42", "issued_before": now })
        )
        .await
        .status,
        201
    );
    let mut closed = 0;
    for (user, ws) in sockets.iter_mut().filter(|(u, _)| *u == 42) {
        let (code, _, _) = closed_with(ws, Duration::from_secs(1)).await;
        assert_eq!(code, CloseCode::Policy, "user {user}");
        closed += 1;
    }
    assert_eq!(closed, 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        w.gw.gateway.live.len(),
        990,
        "exactly the revoked user's sockets were closed"
    );
    assert_eq!(
        w.metric("jwtgate_live_connections_closed_total{reason=\"revoked\"}"),
        10.0
    );
    // The others still answer.
    for (_, ws) in sockets.iter_mut().filter(|(u, _)| *u != 42).step_by(97) {
        ws.send(Message::text("ping")).await.expect("send");
        assert_eq!(
            ws.next().await.expect("msg").expect("ok"),
            Message::text("ping")
        );
    }
}

/// Graceful shutdown closes open WebSockets with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001() {
    let w = world("30s").await;
    let (token, _) = w.token(json!({}));
    let mut ws = w.ws(&token).await;
    let World { gw, .. } = w;
    let stop = tokio::spawn(gw.shutdown(Duration::from_secs(2)));
    let (code, reason, _) = closed_with(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(code, CloseCode::Away);
    assert_eq!(reason, "gateway shutting down");
    stop.await.expect("shutdown");
}

/// `on_stale: deny` holds for open connections too: when the set goes stale, WebSockets
/// end (close 1011) as new requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_deny_closes_live_connections() {
    let w = world_with("5s", "  max_staleness: 1s\n  on_stale: deny\n").await;
    let (token, _) = w.token(json!({}));
    let mut ws = w.ws(&token).await;
    let control = w.control;
    control.shutdown(Duration::from_secs(1)).await;
    w.gw.gateway.clock.advance(Duration::from_secs(2));
    let (code, reason, _) = closed_with(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(code, CloseCode::Error);
    assert_eq!(reason, "revocation status unavailable");
    let r = get(w.gw.addrs[0], "/", &[&bearer(&token)]).await;
    assert_eq!(r.status, 503);
}

/// Handshake race: a revocation that lands while the handshake is still with the upstream
/// (the upstream answers 101 only after 400 ms) still refuses the connection — it is
/// checked again once the connection is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_during_the_handshake_is_not_lost() {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that accepts WebSockets slowly.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("sec-websocket-key:")
                            .then(|| l[18..].trim().to_owned())
                    })
                    .unwrap_or_default();
                let mut ctx =
                    aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
                ctx.update(key.as_bytes());
                ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                let accept =
                    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref());
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes())
                    .await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let gw = start_gateway(&format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nissuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\nupstreams: [ {{ name: ws, url: \"http://{slow}\" }} ]\nroutes:\n  - {{ name: ws, match: {{ path_prefix: / }}, upstream: ws, auth: {{ issuers: [idp] }} }}\nrevocation: {{ control_url: \"http://{}\", token: {READER_KEY} }}\n",
        idp.url,
        idp.jwks_url(),
        control.addr
    ))
    .await;
    let c = claims(&idp.url);
    let token = key.mint(&c);
    let mut s = tokio::net::TcpStream::connect(gw.addrs[0])
        .await
        .expect("connect");
    s.write_all(format!("GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = revoke(
        control.addr,
        &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut out))
        .await
        .expect("answer")
        .expect("read");
    let got = String::from_utf8_lossy(&out[..n]);
    assert!(got.starts_with("HTTP/1.1 401"), "the tunnel opened: {got}");
    assert!(got.contains("token revoked"));
}
