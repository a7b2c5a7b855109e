//! Hardening of the front door (issue "Hardening I"): each test attacks one class of
//! bypass several ways over loopback, against the gateway with real upstreams.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with the response `answer` builds from the
/// request head, then keeps reading; it records every byte it receives.
async fn scripted_upstream(answer: fn(&str) -> String) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                let mut answered = false;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    s.lock().expect("lock").extend_from_slice(&buf[..n]);
                    if answered {
                        continue;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        let reply = answer(&String::from_utf8_lossy(&head));
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn gateway_yaml(idp: &Idp, upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
issuers:
  - {{ name: idp, issuer: "{iss}", jwks_uri: "{jwks}", audiences: [api], algorithms: [ES256] }}
upstreams: [ {{ name: up, url: "http://{upstream}" }} ]
identity_headers: {{ X-User-Id: sub }}
routes:
  - {{ name: hosted, match: {{ host: api.example.com, path_prefix: / }}, upstream: up, auth: {{ issuers: [idp] }} }}
  - {{ name: reports, match: {{ path_prefix: /reports, methods: [GET] }}, upstream: up, auth: {{ issuers: [idp] }} }}
  - {{ name: trace, match: {{ path: /trace-me, methods: [TRACE] }}, upstream: up, auth: none }}
  - {{ name: cookie, match: {{ path_prefix: /cookie }}, upstream: up, auth: {{ issuers: [idp], token_sources: [{{ cookie: session }}] }} }}
  - {{ name: origins, match: {{ path_prefix: /origins }}, upstream: up, auth: {{ issuers: [idp], token_sources: [header, {{ cookie: session }}], allowed_origins: ["https://app.example.com"] }} }}
  - {{ name: keep, match: {{ path_prefix: /keep }}, upstream: up, auth: {{ issuers: [idp], forward_token: true }} }}
  - {{ name: open, match: {{ path_prefix: / }}, upstream: up, auth: none }}
{extra}"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
    )
}

async fn world(extra: &str) -> (Idp, Signer, Echo, jwtgate::app::Running) {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&gateway_yaml(&idp, echo.addr, extra)).await;
    (idp, key, echo, gw)
}

/// Send raw bytes on one connection; everything read back within `wait`.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The accept value RFC 6455 §1.3 gives for `WS_KEY`.
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Smuggling: an upstream 101 opens a tunnel only when it really accepted the client's
/// WebSocket handshake. A 101 without or with a wrong `Sec-WebSocket-Accept`, for another
/// protocol, or to a request that asked for no upgrade answers 502, and the bytes the
/// client sends after the handshake never reach the upstream.
#[tokio::test]
async fn upstream_101_without_websocket_is_refused() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let answers: [fn(&str) -> String; 4] = [
        |_| {
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                .into()
        },
        |_| {
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".into()
        },
        |_| {
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n")
        },
        |_| {
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n")
        },
    ];
    let smuggled = "GET /internal/admin HTTP/1.1\r\nHost: up\r\nX-User-Id: root\r\n\r\n";
    for (i, answer) in answers.into_iter().enumerate() {
        let (up, seen) = scripted_upstream(answer).await;
        let gw = start_gateway(&gateway_yaml(&idp, up, "")).await;
        let handshakes = [
            format!("GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"),
            // No upgrade asked for at all.
            "GET /chat HTTP/1.1\r\nHost: gw\r\n\r\n".to_owned(),
            // An upgrade without a key is no WebSocket handshake.
            "GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_owned(),
        ];
        for hs in handshakes {
            let got = exchange(
                gw.addrs[0],
                format!("{hs}{smuggled}").as_bytes(),
                Duration::from_millis(500),
            )
            .await;
            assert!(
                got.starts_with("HTTP/1.1 502"),
                "answer {i}, handshake {hs:?}: {got}"
            );
            assert!(!got.contains(" 101 "), "answer {i}: {got}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
        assert!(
            !seen.contains("/internal/admin HTTP/1.1\r\nHost: up\r\nX-User-Id: root"),
            "answer {i}: smuggled bytes reached the upstream raw: {seen}"
        );
    }
}

/// A well-formed WebSocket acceptance still tunnels.
#[tokio::test]
async fn real_websocket_acceptance_still_tunnels() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let (up, _) = scripted_upstream(|_| {
        format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n")
    })
    .await;
    let gw = start_gateway(&gateway_yaml(&idp, up, "")).await;
    let got = exchange(
        gw.addrs[0],
        format!("GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n").as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    assert!(got.contains(WS_ACCEPT), "{got}");
}

/// Host is parsed strictly: what another parser could read as a different host is 400;
/// a trailing dot or other case reaches the route of the canonical host (not a weaker
/// catch-all), and the upstream sees the canonical host.
#[tokio::test]
async fn hosts_are_parsed_strictly() {
    let (_idp, _key, _echo, gw) = world("").await;
    let a = gw.addrs[0];
    for host in [
        "api.example.com:80:80",
        "user@api.example.com",
        "api.example.com/x",
        "api..example.com",
        "api.example.com:",
        "api.example.com:99999",
        "[::1",
        "api example.com",
        "api%2eexample.com",
        "",
    ] {
        let r = raw(a, &format!("GET /x HTTP/1.1\nHost: {host}"), b"").await;
        assert_eq!(r.status, 400, "Host: {host:?}");
    }
    // No Host at all on HTTP/1.1; an absolute-form target naming another host.
    assert_eq!(raw(a, "GET /x HTTP/1.1", b"").await.status, 400);
    assert_eq!(
        raw(
            a,
            "GET http://api.example.com/x HTTP/1.1\nHost: other.example",
            b""
        )
        .await
        .status,
        400
    );
    // Spellings of the protected host all reach its route: 401 without a token.
    for host in [
        "api.example.com.",
        "API.Example.Com",
        "api.example.com.:8080",
        "Api.Example.Com.",
    ] {
        let r = raw(a, &format!("GET /x HTTP/1.1\nHost: {host}"), b"").await;
        assert_eq!(
            r.status, 401,
            "Host: {host} must not fall through to `open`"
        );
    }
    let r = raw(a, "GET /x HTTP/1.1\nHost: Open.Example.:8080", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("host"), vec!["open.example:8080"]);
    assert_eq!(
        r.upstream_header("x-forwarded-host"),
        vec!["open.example:8080"]
    );
}

/// Methods: look-alikes and overrides are refused or dropped; HEAD is judged by the GET
/// policy; CONNECT and TRACE only reach a route that names them.
#[tokio::test]
async fn methods_cannot_be_disguised() {
    let (_idp, _key, _echo, gw) = world("").await;
    let a = gw.addrs[0];
    for method in ["get", "Get", "dElEtE", "post", "Head", "options"] {
        let r = raw(a, &format!("{method} /x HTTP/1.1\nHost: gw"), b"").await;
        assert_eq!(r.status, 400, "{method}");
    }
    for q in [
        "_method=DELETE",
        "a=1&_method=put",
        "%5Fmethod=DELETE",
        "_METHOD=PATCH",
    ] {
        let r = raw(
            a,
            &format!("POST /x?{q} HTTP/1.1\nHost: gw\nContent-Length: 0"),
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{q}");
    }
    let r = raw(
        a,
        "POST /x HTTP/1.1\nHost: gw\nContent-Length: 0\nX-HTTP-Method-Override: DELETE\nX-HTTP-Method: DELETE\nX-Method-Override: DELETE",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(r.upstream_header(h).is_empty(), "{h} reached the upstream");
    }
    // `reports` takes GET with a token; HEAD must not fall through to `open`.
    assert_eq!(
        raw(a, "HEAD /reports/q HTTP/1.1\nHost: gw", b"")
            .await
            .status,
        401
    );
    assert_eq!(
        raw(a, "GET /reports/q HTTP/1.1\nHost: gw", b"")
            .await
            .status,
        401
    );
    // CONNECT and TRACE: only where a route names them.
    assert_eq!(raw(a, "TRACE /x HTTP/1.1\nHost: gw", b"").await.status, 404);
    assert_eq!(
        raw(a, "TRACE /trace-me HTTP/1.1\nHost: gw", b"")
            .await
            .status,
        200
    );
    assert_ne!(
        raw(a, "CONNECT gw:443 HTTP/1.1\nHost: gw:443", b"")
            .await
            .status,
        200
    );
}

/// Headers that make frameworks re-route, or that claim a client address, never pass;
/// the gateway sets `X-Real-IP` and `X-Forwarded-*` from what it saw.
#[tokio::test]
async fn rewrite_and_address_headers_are_dropped() {
    let (_idp, _key, _echo, gw) = world("").await;
    let r = raw(
        gw.addrs[0],
        "GET /x HTTP/1.1\nHost: gw\nX-Original-URL: /admin\nX-Rewrite-URL: /admin\nX-Forwarded-Prefix: /admin\nX-Original-URI: /admin\nX-Real-IP: 10.1.1.1\nTrue-Client-IP: 10.1.1.1\nX-Client-IP: 10.1.1.1\nForwarded: for=10.1.1.1\nX-Forwarded-For: 10.1.1.1\nX-Forwarded-Port: 1",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-original-uri",
        "true-client-ip",
        "x-client-ip",
        "forwarded",
        "x-forwarded-port",
    ] {
        assert!(r.upstream_header(h).is_empty(), "{h} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(r.upstream_header("x-forwarded-for"), vec!["127.0.0.1"]);
}

/// Percent-escapes that decode to bytes which are not UTF-8 (overlong `/` and `.`, lone
/// continuation bytes, surrogates) are refused: some upstreams decode them to `/` or `..`.
#[tokio::test]
async fn non_utf8_escapes_are_refused() {
    let (_idp, _key, _echo, gw) = world("").await;
    for path in [
        "/%C0%AF",
        "/a/%C0%AE%C0%AE/b",
        "/%E0%80%AF",
        "/%80",
        "/%ED%A0%80",
        "/%C3",
        "/%FF",
    ] {
        let r = raw(gw.addrs[0], &format!("GET {path} HTTP/1.1\nHost: gw"), b"").await;
        assert_eq!(r.status, 400, "{path}");
    }
    let r = raw(gw.addrs[0], "GET /caf%C3%A9 HTTP/1.1\nHost: gw", b"").await;
    assert_eq!(r.status, 200);
}

/// Header names the upstream folds (`_` ≡ `-`): dropped by default, refused with
/// `underscore_headers: reject`, and with `allow` forwarded except look-alikes of headers
/// the gateway owns — on authenticated and `auth: none` routes alike.
#[tokio::test]
async fn underscore_headers_cannot_carry_identity() {
    let spoof = "X_User_Id: root\nx-user_id: root\nX_Forwarded_For: 10.0.0.1\nX_Real_IP: 10.0.0.1\nX_App_Flag: 1";
    for (policy, want_app_flag) in [
        ("", false),
        ("underscore_headers: drop\n", false),
        ("underscore_headers: allow\n", true),
    ] {
        let (idp, key, _echo, gw) = world(policy).await;
        let token = key.mint(&claims(&idp.url));
        for (path, auth) in [
            ("/x", String::new()),
            ("/reports/x", format!("\n{}", bearer(&token))),
        ] {
            let r = raw(
                gw.addrs[0],
                &format!("GET {path} HTTP/1.1\nHost: gw\n{spoof}{auth}"),
                b"",
            )
            .await;
            assert_eq!(r.status, 200, "{policy} {path}");
            let names: Vec<String> = r.json()["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .filter_map(|h| h[0].as_str().map(str::to_owned))
                .collect();
            for bad in ["x_user_id", "x-user_id", "x_forwarded_for", "x_real_ip"] {
                assert!(
                    !names.contains(&bad.to_owned()),
                    "{policy} {path}: {bad} passed"
                );
            }
            assert_eq!(
                names.contains(&"x_app_flag".to_owned()),
                want_app_flag,
                "{policy} {path}"
            );
        }
    }
    let (_idp, _key, _echo, gw) = world("underscore_headers: reject\n").await;
    let r = raw(
        gw.addrs[0],
        "GET /x HTTP/1.1\nHost: gw\nX_User_Id: root",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        raw(gw.addrs[0], "GET /x HTTP/1.1\nHost: gw", b"")
            .await
            .status,
        200
    );
}

/// A JWK whose `key_ops` do not include `verify` verifies nothing.
#[tokio::test]
async fn keys_not_for_verifying_are_skipped() {
    let good = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let mut signing_only = good.jwk.clone();
    signing_only["key_ops"] = json!(["sign"]);
    let idp = Idp::start(vec![signing_only]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&gateway_yaml(&idp, echo.addr, "")).await;
    let r = get(
        gw.addrs[0],
        "/reports/x",
        &[&bearer(&good.mint(&claims(&idp.url)))],
    )
    .await;
    assert_eq!(
        r.status,
        503,
        "no usable key: {}",
        String::from_utf8_lossy(&r.body)
    );
    let mut verify = good.jwk.clone();
    verify["key_ops"] = json!(["verify"]);
    idp.set_keys(vec![verify]);
    let idp2 = idp.clone();
    let gw = start_gateway(&gateway_yaml(&idp2, echo.addr, "")).await;
    let r = get(
        gw.addrs[0],
        "/reports/x",
        &[&bearer(&good.mint(&claims(&idp.url)))],
    )
    .await;
    assert_eq!(r.status, 200);
}

/// `n − s` for a P-256 signature scalar (big-endian, 32 bytes).
fn p256_negate(s: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// ECDSA malleability: a jti-less ES256 token revoked through RFC 7009 stays revoked when
/// its signature is replaced by the other valid one (`s` → `n − s`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_ecdsa_token_stays_revoked_under_another_signature() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let control = start_control(
        &format!("sqlite://{}", temp_dir().join("rev.db").display()),
        &format!(
            "issuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\n",
            idp.url,
            idp.jwks_url()
        ),
    )
    .await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&format!(
        "{}revocation: {{ control_url: \"http://{}\", token: {READER_KEY} }}\n",
        gateway_yaml(&idp, echo.addr, ""),
        control.addr
    ))
    .await;
    let mut c = claims(&idp.url);
    c.as_object_mut().expect("claims").remove("jti");
    let token = key.mint(&c);
    let (input, sig) = token.rsplit_once('.').expect("jws");
    let mut sig = b64.decode(sig).expect("signature");
    let high = p256_negate(&sig[32..]);
    sig[32..].copy_from_slice(&high);
    let twin = format!("{input}.{}", b64.encode(&sig));
    let a = gw.addrs[0];
    // Both signatures are valid.
    assert_eq!(get(a, "/reports/x", &[&bearer(&token)]).await.status, 200);
    assert_eq!(get(a, "/reports/x", &[&bearer(&twin)]).await.status, 200);
    // Control-plane key fetch, then revoke the original with a writer key.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = format!("token={token}");
    let r = raw(
        control.addr,
        &format!(
            "POST /v1/revoke HTTP/1.1\nHost: control\nAuthorization: Bearer {WRITER_KEY}\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}",
            body.len()
        ),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let start = std::time::Instant::now();
    while get(a, "/reports/x", &[&bearer(&token)]).await.status != 401 {
        assert!(start.elapsed() < Duration::from_secs(2), "not revoked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = get(a, "/reports/x", &[&bearer(&twin)]).await;
    assert_eq!(r.status, 401, "the twin signature revives a revoked token");
    assert_eq!(r.json()["error_description"], "token revoked");
}

/// Identity claims are unambiguous or refused: `sub`, `sid`, `jti` must be strings, `sub`
/// is required (unless the issuer says `require_sub: false`), array elements must not hold
/// the `,` separator, and nested values are refused — never forwarded partially.
#[tokio::test]
async fn identity_claims_are_unambiguous() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let yaml = gateway_yaml(&idp, echo.addr, "").replace(
        "identity_headers: { X-User-Id: sub }",
        "identity_headers: { X-User-Id: sub, X-Roles: roles }",
    );
    let gw = start_gateway(&yaml).await;
    let a = gw.addrs[0];
    let with = |extra: serde_json::Value, drop: &[&str]| {
        let mut c = claims(&idp.url);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        for d in drop {
            c.as_object_mut().expect("object").remove(*d);
        }
        key.mint(&c)
    };
    let refused = [
        with(json!({ "sub": 42 }), &[]),
        with(json!({ "sub": ["42"] }), &[]),
        with(json!({ "sid": 7 }), &[]),
        with(json!({ "jti": { "a": 1 } }), &[]),
        with(json!({}), &["sub"]),
        with(json!({ "roles": ["admin,root"] }), &[]),
        with(json!({ "roles": [["admin"]] }), &[]),
        with(json!({ "roles": { "admin": true } }), &[]),
        with(json!({ "roles": [" admin"] }), &[]),
    ];
    for (i, t) in refused.iter().enumerate() {
        let r = get(a, "/reports/x", &[&bearer(t)]).await;
        assert_eq!(r.status, 401, "case {i}");
        // (jsonwebtoken itself refuses a non-string `sub` as malformed.)
        let d = r.json()["error_description"].clone();
        assert!(
            d == "identity claims not usable" || d == "token malformed",
            "case {i}: {d}"
        );
    }
    let r = get(
        a,
        "/reports/x",
        &[&bearer(&with(json!({ "roles": ["admin", "ops"] }), &[]))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-roles"), vec!["admin,ops"]);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42"]);
    // An issuer whose tokens carry no subject can say so.
    let gw = start_gateway(&yaml.replace(
        "algorithms: [ES256] }",
        "algorithms: [ES256], require_sub: false }",
    ))
    .await;
    let r = get(
        gw.addrs[0],
        "/reports/x",
        &[&bearer(&with(json!({}), &["sub"]))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-user-id").is_empty());
}

/// `trusted_proxies`: only a trusted peer's `X-Forwarded-For` is kept (and appended to);
/// the client is the nearest untrusted address in it; a malformed chain is not believed.
#[tokio::test]
async fn forwarded_for_only_from_trusted_proxies() {
    let (_idp, _key, _echo, gw) = world("trusted_proxies: [127.0.0.0/8, \"fd00::/8\"]\n").await;
    let a = gw.addrs[0];
    for (xff, chain, client) in [
        ("203.0.113.5", "203.0.113.5, 127.0.0.1", "203.0.113.5"),
        (
            "203.0.113.5, 127.0.0.2",
            "203.0.113.5, 127.0.0.2, 127.0.0.1",
            "203.0.113.5",
        ),
        (
            "198.51.100.1, 203.0.113.5",
            "198.51.100.1, 203.0.113.5, 127.0.0.1",
            "203.0.113.5",
        ),
        ("127.0.0.9", "127.0.0.9, 127.0.0.1", "127.0.0.9"),
        // Garbage left of the client does not matter; the client is still known.
        (
            "junk, 203.0.113.5",
            "junk, 203.0.113.5, 127.0.0.1",
            "203.0.113.5",
        ),
    ] {
        let r = raw(
            a,
            &format!("GET /x HTTP/1.1\nHost: gw\nX-Forwarded-For: {xff}"),
            b"",
        )
        .await;
        assert_eq!(r.upstream_header("x-forwarded-for"), vec![chain], "{xff}");
        assert_eq!(r.upstream_header("x-real-ip"), vec![client], "{xff}");
    }
    // Garbage where the client should be: unknown client, refused (the trusted proxy is
    // never reported as the client).
    for xff in [
        "203.0.113.5, not-an-ip",
        "203.0.113.5:80",
        "unknown",
        "x, 127.0.0.2",
    ] {
        let r = raw(
            a,
            &format!("GET /x HTTP/1.1\nHost: gw\nX-Forwarded-For: {xff}"),
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{xff}");
    }
    // A peer outside the trusted ranges is not believed.
    let (_idp, _key, _echo, gw) = world("trusted_proxies: [10.0.0.0/8]\n").await;
    let r = raw(
        gw.addrs[0],
        "GET /x HTTP/1.1\nHost: gw\nX-Forwarded-For: 203.0.113.5\nX-Real-IP: 203.0.113.5",
        b"",
    )
    .await;
    assert_eq!(r.upstream_header("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(r.upstream_header("x-real-ip"), vec!["127.0.0.1"]);
}

/// Credentials the route does not read never reach the upstream, on any route; a request
/// carrying a second credential beside the route's token is refused.
#[tokio::test]
async fn stray_credentials_are_stripped_or_refused() {
    let (idp, key, _echo, gw) = world("").await;
    let a = gw.addrs[0];
    let t = key.mint(&claims(&idp.url));
    // Two credentials: header + query, cookie route + bearer header, cookie route + query.
    for (path, extra) in [
        (format!("/reports/x?access_token={t}"), bearer(&t)),
        (format!("/reports/x?a=1&access%5Ftoken={t}"), bearer(&t)),
        (
            "/cookie/x".to_owned(),
            format!("Cookie: session={t}\n{}", bearer(&t)),
        ),
        (
            format!("/cookie/x?access_token={t}"),
            format!("Cookie: session={t}"),
        ),
    ] {
        let r = raw(a, &format!("GET {path} HTTP/1.1\nHost: gw\n{extra}"), b"").await;
        assert_eq!(r.status, 400, "{path} {extra}");
    }
    // `auth: none`: bearer tokens and `access_token` are dropped, other schemes kept.
    let r = raw(
        a,
        &format!(
            "GET /x?access_token={t}&b=2 HTTP/1.1\nHost: gw\n{}",
            bearer(&t)
        ),
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("authorization").is_empty());
    assert_eq!(r.upstream_target(), "/x?b=2");
    let r = raw(
        a,
        "GET /x HTTP/1.1\nHost: gw\nAuthorization: Basic dTpw",
        b"",
    )
    .await;
    assert_eq!(r.upstream_header("authorization"), vec!["Basic dTpw"]);
    // A cookie route forwards neither its cookie nor a stray bearer.
    let r = raw(
        a,
        &format!("GET /cookie/x HTTP/1.1\nHost: gw\nCookie: session={t}; theme=dark"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("cookie"), vec!["theme=dark"]);
    // `forward_token: true` keeps it.
    let r = raw(
        a,
        &format!("GET /keep/x HTTP/1.1\nHost: gw\n{}", bearer(&t)),
        b"",
    )
    .await;
    assert_eq!(
        r.upstream_header("authorization"),
        vec![format!("Bearer {t}")]
    );
}

/// Cross-site use of a cookie (or query) token: WebSocket upgrades and state-changing
/// requests must come from the same origin, or from one the route lists.
#[tokio::test]
async fn cross_site_ambient_credentials_are_refused() {
    let (idp, key, _echo, gw) = world("").await;
    let a = gw.addrs[0];
    let t = key.mint(&claims(&idp.url));
    let ws = format!("Connection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: {WS_KEY}");
    let cookie = format!("Cookie: session={t}");
    let cases = [
        // (method, path, headers, want)
        (
            "POST",
            "/cookie/x",
            format!("{cookie}\nOrigin: https://evil.example"),
            403,
        ),
        ("POST", "/cookie/x", format!("{cookie}\nOrigin: null"), 403),
        (
            "DELETE",
            "/cookie/x",
            format!("{cookie}\nSec-Fetch-Site: cross-site"),
            403,
        ),
        (
            "GET",
            "/cookie/x",
            format!("{cookie}\n{ws}\nOrigin: https://evil.example"),
            403,
        ),
        (
            "POST",
            "/cookie/x",
            format!("{cookie}\nOrigin: http://gw"),
            200,
        ),
        (
            "POST",
            "/cookie/x",
            format!("{cookie}\nOrigin: http://GW:80"),
            200,
        ),
        ("POST", "/cookie/x", cookie.clone(), 200),
        (
            "GET",
            "/cookie/x",
            format!("{cookie}\nOrigin: https://evil.example"),
            200,
        ),
        // A route with `allowed_origins`.
        (
            "POST",
            "/origins/x",
            format!("{cookie}\nOrigin: https://app.example.com"),
            200,
        ),
        (
            "POST",
            "/origins/x",
            format!("{cookie}\nOrigin: http://gw"),
            403,
        ),
        (
            "GET",
            "/origins/x",
            format!("{}\n{ws}\nOrigin: https://evil.example", bearer(&t)),
            403,
        ),
        // A header token is no ambient credential: cross-origin POSTs are the app's business.
        (
            "POST",
            "/keep/x",
            format!("{}\nOrigin: https://evil.example", bearer(&t)),
            200,
        ),
    ];
    for (method, path, headers, want) in cases {
        let r = raw(
            a,
            &format!("{method} {path} HTTP/1.1\nHost: gw\nContent-Length: 0\n{headers}"),
            b"",
        )
        .await;
        assert_eq!(r.status, want, "{method} {path} {headers}");
        if want == 403 {
            assert_eq!(
                r.json()["error_description"],
                "cross-origin request refused"
            );
        }
    }
}

/// Broken client framing is the client's error (400), never an upstream failure (502).
#[tokio::test]
async fn malformed_client_framing_is_400() {
    let (_idp, _key, _echo, gw) = world("").await;
    let a = gw.addrs[0];
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(70_000));
    let bodies: [&[u8]; 3] = [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        long_ext.as_bytes(),
    ];
    for body in bodies {
        let got = exchange(
            a,
            &[
                b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
                body,
            ]
            .concat(),
            Duration::from_secs(2),
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "{}",
            &got[..got.len().min(200)]
        );
        assert!(
            !got.starts_with("HTTP/1.1 200"),
            "{}",
            &got[..got.len().min(200)]
        );
    }
}

/// The upstream's framing is not trusted either: both `Transfer-Encoding` and
/// `Content-Length`, or two lengths, answer 502 rather than a response of the wrong length.
#[tokio::test]
async fn ambiguous_upstream_framing_is_502() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let answers: [fn(&str) -> String; 3] = [
        |_| {
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n".into()
        },
        |_| {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\na\r\n0123456789\r\n0\r\n\r\n".into()
        },
        |_| "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 10\r\n\r\n0123456789".into(),
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let (up, _) = scripted_upstream(answer).await;
        let gw = start_gateway(&gateway_yaml(&idp, up, "")).await;
        let r = raw(gw.addrs[0], "GET /x HTTP/1.1\nHost: gw", b"").await;
        assert_eq!(
            r.status,
            502,
            "answer {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// Second readings (found by review): names as PHP and ASP.NET read them (`.method`,
/// ` _method`, `access.token`), a tab after `Bearer`, cookies split at whitespace or
/// unreadable, an origin of another scheme, and double-encoded escapes.
#[tokio::test]
async fn second_readings_are_refused() {
    let (idp, key, _echo, gw) = world("").await;
    let a = gw.addrs[0];
    let t = key.mint(&claims(&idp.url));
    let forged = key.mint(&claims(&idp.url));
    for q in [
        ".method=DELETE",
        "%20_method=DELETE",
        "_method[]=DELETE",
        "_Method=PUT",
    ] {
        let r = raw(
            a,
            &format!("POST /x?{q} HTTP/1.1\nHost: gw\nContent-Length: 0"),
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{q}");
    }
    let cases = [
        // A second credential the upstream would read.
        (format!("/reports/x?access.token={forged}"), bearer(&t), 400),
        (format!("/reports/x?ACCESS_TOKEN={forged}"), bearer(&t), 400),
        (
            "/cookie/x".to_owned(),
            format!("Cookie: session={t}\nAuthorization: Bearer\t{forged}"),
            400,
        ),
        (
            "/cookie/x".to_owned(),
            format!("Cookie: session={t}; x=1 session={forged}"),
            400,
        ),
        (
            "/cookie/x".to_owned(),
            format!("Cookie: session={t}; SESSION={forged}"),
            400,
        ),
    ];
    for (path, headers, want) in cases {
        let r = raw(a, &format!("GET {path} HTTP/1.1\nHost: gw\n{headers}"), b"").await;
        assert_eq!(r.status, want, "{path} {headers}");
    }
    // `auth: none`: a tab-separated bearer is still a bearer, and is dropped.
    let r = raw(
        a,
        &format!("GET /x HTTP/1.1\nHost: gw\nAuthorization: Bearer\t{t}"),
        b"",
    )
    .await;
    assert!(r.upstream_header("authorization").is_empty());
    // A cookie line that is not UTF-8 is not skipped.
    let mut head = format!(
        "GET /cookie/x HTTP/1.1\r\nHost: gw\r\nCookie: session={t}\r\nCookie: session=x; z="
    )
    .into_bytes();
    head.extend_from_slice(b"\xff\r\nConnection: close\r\n\r\n");
    let got = exchange(a, &head, Duration::from_secs(1)).await;
    assert!(got.starts_with("HTTP/1.1 4"), "{got}");
    assert!(!got.starts_with("HTTP/1.1 200"));
    // Same host, other scheme: not the same origin.
    let r = raw(
        a,
        &format!("POST /cookie/x HTTP/1.1\nHost: gw\nContent-Length: 0\nCookie: session={t}\nOrigin: https://gw"),
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    // `%25` and two hex digits decode to an escape in an upstream that decodes twice.
    for path in ["/%252e%252e/admin", "/a%2541"] {
        assert_eq!(
            raw(a, &format!("GET {path} HTTP/1.1\nHost: gw"), b"")
                .await
                .status,
            400,
            "{path}"
        );
    }
}
