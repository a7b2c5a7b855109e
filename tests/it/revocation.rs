//! Revocation end to end over loopback: a real control plane, a syncing gateway, a real IdP
//! and upstream.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

pub(crate) struct World {
    pub(crate) idp: Idp,
    _echo: Echo,
    pub(crate) control: Option<jwtgate::app::RunningControl>,
    pub(crate) control_addr: std::net::SocketAddr,
    pub(crate) gw: jwtgate::app::Running,
    key: Signer,
    pub(crate) dir: std::path::PathBuf,
}

pub(crate) fn gateway_yaml(idp: &Idp, echo: &Echo, revocation: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
admin: {{ address: "127.0.0.1:0" }}
issuers:
  - {{ name: idp, issuer: "{iss}", jwks_uri: "{jwks}", audiences: [api], algorithms: [ES256] }}
upstreams: [ {{ name: echo, url: "http://{echo}" }} ]
routes:
  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}
revocation:
{revocation}
"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        echo = echo.addr
    )
}

pub(crate) async fn world(control_extra: &str, revocation_extra: &str) -> World {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let control = start_control(
        &format!("sqlite://{}", dir.join("rev.db").display()),
        control_extra,
    )
    .await;
    let control_addr = control.addr;
    let rev = format!(
        "  control_url: http://{control_addr}\n  token: {READER_KEY}\n  snapshot_file: {}\n{revocation_extra}",
        dir.join("gw.snapshot").display()
    );
    let gw = start_gateway(&gateway_yaml(&idp, &echo, &rev)).await;
    World {
        idp,
        _echo: echo,
        control: Some(control),
        control_addr,
        gw,
        key,
        dir,
    }
}

impl World {
    pub(crate) fn token(&self, extra: Value) -> (String, Value) {
        let mut c = claims(&self.idp.url);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        (self.key.mint(&c), c)
    }
    pub(crate) fn a(&self) -> std::net::SocketAddr {
        self.gw.addrs[0]
    }
    pub(crate) async fn status(&self, token: &str) -> u16 {
        get(self.a(), "/", &[&bearer(token)]).await.status
    }
    /// Poll until the token is refused as revoked; the time it took.
    pub(crate) async fn until_refused(&self, token: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let r = get(self.a(), "/", &[&bearer(token)]).await;
            if r.status == 401 {
                assert_eq!(r.json()["error_description"], "token revoked");
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "still accepted after {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A revoked jti is refused within 1 s; over 100 revocations, report p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_propagates_within_a_second() {
    let w = world("", "").await;
    let mut times = Vec::new();
    for _ in 0..100 {
        let (token, c) = w.token(json!({}));
        assert_eq!(w.status(&token).await, 200);
        let r = revoke(
            w.control_addr,
            &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
        )
        .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        times.push(w.until_refused(&token, Duration::from_secs(1)).await);
    }
    times.sort();
    println!(
        "propagation over 100 revocations: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[99]
    );
    assert!(percentile(&times, 0.99) < Duration::from_secs(1));
    // The gauges tell operators what the gateway holds.
    let m = String::from_utf8(get(w.gw.admin.expect("admin"), "/metrics", &[]).await.body)
        .expect("utf8");
    assert!(m.contains("jwtgate_revocations{kind=\"jti\"} 100"), "{m}");
    let synced = m
        .lines()
        .find_map(|l| l.strip_prefix("jwtgate_revocation_last_sync_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("last sync timestamp");
    assert!((synced - now() as f64).abs() < 60.0, "{synced}");
    assert!(
        m.contains("jwtgate_requests_total{outcome=\"revoked\",reason=\"revoked\",route=\"api\"}")
    );
}

/// `sid` kills every token of that session (not others); a `sub` cutoff kills tokens
/// issued before it and spares those issued after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_subject_revocations() {
    let w = world("", "").await;
    let (s1a, _) = w.token(json!({ "sid": "s1" }));
    let (s1b, _) = w.token(json!({ "sid": "s1", "sub": "other" }));
    let (s2, _) = w.token(json!({ "sid": "s2" }));
    for t in [&s1a, &s1b, &s2] {
        assert_eq!(w.status(t).await, 200);
    }
    assert_eq!(
        revoke(w.control_addr, &json!({ "iss": w.idp.url, "sid": "s1" }))
            .await
            .status,
        201
    );
    w.until_refused(&s1a, Duration::from_secs(1)).await;
    w.until_refused(&s1b, Duration::from_secs(1)).await;
    assert_eq!(
        w.status(&s2).await,
        200,
        "another session of the same user still passes"
    );

    let now = now();
    let (old, _) = w.token(json!({ "sub": "u9", "iat": now - 20 }));
    let (fresh, _) = w.token(json!({ "sub": "u9", "iat": now + 5 }));
    let (no_iat, mut c) = w.token(json!({ "sub": "u9" }));
    c.as_object_mut().expect("obj").remove("iat");
    let no_iat = {
        let _ = no_iat;
        w.key.mint(&c)
    };
    assert_eq!(w.status(&old).await, 200);
    assert_eq!(
        revoke(
            w.control_addr,
            &json!({ "iss": w.idp.url, "sub": "u9", "issued_before": now })
        )
        .await
        .status,
        201
    );
    w.until_refused(&old, Duration::from_secs(1)).await;
    w.until_refused(&no_iat, Duration::from_secs(1)).await;
    assert_eq!(
        w.status(&fresh).await,
        200,
        "a token issued after the cutoff passes"
    );
    // Another issuer's subject of the same name is untouched.
    assert_eq!(
        revoke(
            w.control_addr,
            &json!({ "iss": "https://elsewhere", "sub": "u10", "issued_before": now })
        )
        .await
        .status,
        201
    );
    let (u10, _) = w.token(json!({ "sub": "u10", "iat": now - 20 }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.status(&u10).await, 200);
}

/// A token revoked while a keep-alive connection is open is refused on that connection,
/// although the verification itself is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_sees_revocation() {
    let w = world("", "").await;
    let (token, c) = w.token(json!({}));
    let mut conn = std::net::TcpStream::connect(w.a()).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let ask = |conn: &mut std::net::TcpStream| -> String {
        write!(
            conn,
            "GET / HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let n = conn.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut conn).starts_with("HTTP/1.1 200"));
    assert!(ask(&mut conn).starts_with("HTTP/1.1 200"));
    assert_eq!(
        revoke(
            w.control_addr,
            &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] })
        )
        .await
        .status,
        201
    );
    let start = Instant::now();
    loop {
        let answer = ask(&mut conn);
        if answer.starts_with("HTTP/1.1 401") {
            assert!(answer.contains("token revoked"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "same connection still served"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Control plane down: the known set is still enforced; `on_stale: deny` fails closed after
/// `max_staleness`; a gateway restarted while control is down enforces its snapshot file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_outage() {
    let mut w = world("", "  max_staleness: 1s\n  on_stale: deny\n").await;
    let (revoked, c) = w.token(json!({}));
    let (good, _) = w.token(json!({}));
    assert_eq!(
        revoke(
            w.control_addr,
            &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] })
        )
        .await
        .status,
        201
    );
    w.until_refused(&revoked, Duration::from_secs(1)).await;
    // Let the snapshot file catch up (it is written within a second of a change).
    let snapshot = w.dir.join("gw.snapshot");
    let start = Instant::now();
    while jwtgate::revocation::set::RevocationSet::load(&snapshot, now()).map_or(0, |s| s.len())
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "snapshot not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    w.control
        .take()
        .expect("control")
        .shutdown(Duration::from_secs(2))
        .await;
    assert_eq!(
        w.status(&revoked).await,
        401,
        "known set enforced while control is down"
    );
    assert_eq!(w.status(&good).await, 200, "within max_staleness");
    w.gw.gateway.clock.advance(Duration::from_millis(1600));
    let r = get(w.a(), "/", &[&bearer(&good)]).await;
    assert_eq!(r.status, 503, "on_stale: deny fails closed");
    assert_eq!(
        r.json()["error_description"],
        "revocation status unavailable"
    );

    // Restart the gateway with `on_stale: allow` while control is still down.
    let old = std::mem::replace(&mut w.gw, start_gateway(&gateway_yaml(&w.idp, &w._echo, &format!(
        "  control_url: http://{}\n  token: {READER_KEY}\n  snapshot_file: {}\n  max_staleness: 1s\n  on_stale: allow\n",
        w.control_addr,
        w.dir.join("gw.snapshot").display()
    ))).await);
    old.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        w.status(&revoked).await,
        401,
        "the snapshot file enforces after a restart"
    );
    assert_eq!(w.status(&good).await, 200);
    assert_eq!(
        get(w.gw.admin.expect("admin"), "/readyz", &[]).await.status,
        200,
        "ready from the snapshot"
    );
}

/// A gateway with no snapshot and no control plane is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_before_first_sync() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let gw = start_gateway(&gateway_yaml(
        &idp,
        &echo,
        &format!("  control_url: http://{dead}\n  token: x\n"),
    ))
    .await;
    let r = get(gw.admin.expect("admin"), "/readyz", &[]).await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("revocations not yet synced"));
}

/// A TCP proxy that cuts the first revocation stream in the middle of an event's data.
async fn cutting_proxy(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let cut_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cut_done.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let cut_done = cut_done.clone();
            tokio::spawn(async move {
                let upstream = tokio::net::TcpStream::connect(target)
                    .await
                    .expect("connect");
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                });
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = ur.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    if !cut_done.load(std::sync::atomic::Ordering::SeqCst) {
                        let before = seen.len();
                        seen.extend_from_slice(chunk);
                        let streaming = seen.windows(17).any(|w| w == b"text/event-stream");
                        if let Some(i) = seen
                            .windows(5)
                            .position(|w| w == b"data:")
                            .filter(|_| streaming)
                        {
                            cut_done.store(true, std::sync::atomic::Ordering::SeqCst);
                            let upto = (i + 20).min(seen.len());
                            if upto > before {
                                let _ = cw.write_all(&seen[before..upto]).await;
                            }
                            break;
                        }
                    }
                    if cw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (addr, flag)
}

/// An SSE stream cut mid-event: the gateway resumes from its cursor and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cut_mid_event_resumes() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let (proxy, cut) = cutting_proxy(control.addr).await;
    let gw = start_gateway(&gateway_yaml(
        &idp,
        &echo,
        &format!("  control_url: http://{proxy}\n  token: {READER_KEY}\n"),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let mut c = claims(&idp.url);
        c["jti"] = json!(format!("cut-{:x}", fastrand::u64(..)));
        tokens.push(key.mint(&c));
        assert_eq!(
            revoke(
                control.addr,
                &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] })
            )
            .await
            .status,
            201
        );
    }
    let start = Instant::now();
    for t in &tokens {
        loop {
            if get(gw.addrs[0], "/", &[&bearer(t)]).await.status == 401 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "an entry was lost after the cut"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let set = &gw.gateway.revocations.as_ref().expect("revocations").set;
    assert_eq!(set.len(), 5);
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the stream was cut mid-event"
    );
    println!(
        "all 5 entries enforced {:?} after the writes, across a cut stream",
        start.elapsed()
    );
}

/// Entries past their time disappear from the control plane and from gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_disappear() {
    let w = world("purge_interval: 500ms\n", "  purge_interval: 500ms\n").await;
    let now = now();
    for (i, exp) in [now + 1, now + 3600].iter().enumerate() {
        assert_eq!(
            revoke(
                w.control_addr,
                &json!({ "iss": w.idp.url, "jti": format!("e{i}"), "expires_at": exp })
            )
            .await
            .status,
            201
        );
    }
    let set = &w.gw.gateway.revocations.as_ref().expect("revocations").set;
    let start = Instant::now();
    while set.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // e0 is past its time (its `exp` plus the largest leeway, 300 s) on both planes'
    // clocks; their purges run every 500 ms.
    let past = Duration::from_millis(2600) + Duration::from_secs(300);
    w.gw.gateway.clock.advance(past);
    let store = &w.control.as_ref().expect("control").plane.store;
    w.control
        .as_ref()
        .expect("control")
        .plane
        .clock
        .advance(past);
    let start = Instant::now();
    while set.len() > 1 || store.list(0, 100, 0).await.expect("list").0.len() > 1 {
        assert!(start.elapsed() < Duration::from_secs(3), "not purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(set.len(), 1, "the gateway dropped the expired entry");
    let r = get(
        w.control_addr,
        "/v1/revocations",
        &[&format!("Authorization: Bearer {READER_KEY}")],
    )
    .await;
    let entries = r.json()["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (all, _) = store.list(0, 100, 0).await.expect("list");
    assert_eq!(all.len(), 1, "the control plane purged the expired row");
}

/// The API refuses what it cannot store — malformed, unknown or oversized bodies, missing or
/// wrong credentials — and stores nothing in those cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_refusals() {
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let a = control.addr;
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({ "jti": "x", "expires_at": 1 }),
            "missing field `iss`",
        ),
        (json!({ "iss": "i", "expires_at": 1 }), "exactly one"),
        (
            json!({ "iss": "i", "jti": "x", "sid": "y", "expires_at": 1 }),
            "exactly one",
        ),
        (json!({ "iss": "i", "jti": "x" }), "expires_at"),
        (json!({ "iss": "i", "sub": "x" }), "issued_before"),
        (
            json!({ "iss": "i", "sub": "x", "issued_before": 1, "expires_at": 5 }),
            "max_token_lifetime",
        ),
        (
            json!({ "iss": "i", "jti": "x", "expires_at": 1, "colour": "red" }),
            "unknown field",
        ),
        (
            json!({ "iss": "i", "jti": "x", "expires_at": "soon" }),
            "invalid type",
        ),
        (json!({ "iss": "", "jti": "x", "expires_at": 1 }), "iss"),
        (json!({ "iss": "i", "jti": "", "expires_at": 1 }), "empty"),
        (
            json!({ "iss": "i", "jti": "x".repeat(2000), "expires_at": 1 }),
            "1024",
        ),
        (json!(["not", "an", "object"]), "malformed"),
        (
            json!({ "iss": "i", "claim": "email", "issued_before": 1 }),
            "exactly one",
        ),
        (
            json!({ "iss": "i", "value": "a@b.c", "issued_before": 1 }),
            "exactly one",
        ),
        (
            json!({ "iss": "i", "claim": "email", "value": "a@b.c" }),
            "issued_before",
        ),
        (
            json!({ "iss": "i", "claim": "sub", "value": "x", "issued_before": 1 }),
            "names a user",
        ),
        (
            json!({ "iss": "i", "claim": "", "value": "x", "issued_before": 1 }),
            "`claim`",
        ),
        (
            json!({ "iss": "i", "claim": "azp", "value": "app", "issued_before": 1 }),
            "not one writers may revoke by",
        ),
        (
            json!({ "iss": "i", "claim": "email", "value": "", "issued_before": 1 }),
            "empty",
        ),
        (
            json!({ "iss": "i", "claim": "e\u{1f}mail", "value": "x", "issued_before": 1 }),
            "control",
        ),
        (
            json!({ "iss": "i", "jti": "x", "expires_at": 1, "issued_before": 1 }),
            "`issued_before` goes with",
        ),
    ];
    for (body, why) in &bad {
        let r = revoke(a, body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"], "invalid_request");
        let d = r.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(d.contains(why), "{body}: {d}");
    }
    let r = raw(a, &format!("POST /v1/revocations HTTP/1.1\nHost: c\nAuthorization: Bearer {WRITER_KEY}\nContent-Length: 9"), b"{not json").await;
    assert_eq!(r.status, 400);
    let big = format!(
        "{{\"iss\":\"i\",\"jti\":\"x\",\"expires_at\":1,\"reason\":\"{}\"}}",
        "r".repeat(70 * 1024)
    );
    let r = raw(a, &format!("POST /v1/revocations HTTP/1.1\nHost: c\nAuthorization: Bearer {WRITER_KEY}\nContent-Length: {}", big.len()), big.as_bytes()).await;
    assert_eq!(r.status, 413);
    let r = raw(a, &format!("POST /v1/revocations HTTP/1.1\nHost: c\nAuthorization: Bearer {WRITER_KEY}\nTransfer-Encoding: chunked"), format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes()).await;
    assert_eq!(r.status, 413, "chunked bodies are limited too");

    let ok = json!({ "iss": "i", "jti": "x", "expires_at": now() + 60 });
    assert_eq!(
        post_json(a, "/v1/revocations", READER_KEY, &ok)
            .await
            .status,
        403
    );
    assert_eq!(
        post_json(a, "/v1/revocations", "wrong", &ok).await.status,
        401
    );
    let r = get(a, "/v1/revocations", &[]).await;
    assert_eq!(r.status, 401);
    let r = get(
        a,
        "/v1/revocations",
        &[&format!("Authorization: Bearer {READER_KEY}")],
    )
    .await;
    assert_eq!(r.json()["entries"], json!([]), "nothing was stored");

    let first = revoke(a, &ok).await;
    assert_eq!(first.status, 201);
    let again = revoke(a, &ok).await;
    assert_eq!(again.status, 200, "idempotent repeat");
    assert_eq!(first.json()["cursor"], again.json()["cursor"]);
}

/// Writers may also authenticate with a JWT carrying the configured scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_writers_need_the_scope() {
    let key = Signer::new("ed25519.pem", Algorithm::EdDSA, "w1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let dir = temp_dir();
    let extra = format!(
        "writers:\n  issuers: [ {{ name: corp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [jwtgate], algorithms: [EdDSA] }} ]\n  scope: jwtgate:revoke\n",
        idp.url,
        idp.jwks_url()
    );
    let yaml = format!(
        "listen: 127.0.0.1:0\nstore: sqlite://{}\n{extra}",
        dir.join("rev.db").display()
    );
    let config =
        jwtgate::config::ControlConfig::from_yaml(&yaml, std::path::Path::new("."), &|_| None)
            .expect("config");
    let control = jwtgate::app::start_control(config).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = json!({ "iss": "i", "jti": "x", "expires_at": now() + 60 });
    let mut c = claims(&idp.url);
    c["aud"] = json!("jwtgate");
    c["scope"] = json!("jwtgate:revoke");
    assert_eq!(
        post_json(control.addr, "/v1/revocations", &key.mint(&c), &body)
            .await
            .status,
        201
    );
    c["scope"] = json!("orders:read");
    assert_eq!(
        post_json(control.addr, "/v1/revocations", &key.mint(&c), &body)
            .await
            .status,
        401
    );
    // Regression: the writers' key refreshes were counted in a registry nobody exported.
    let metrics = get(control.addr, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("jwtgate_jwks_refresh_total{issuer=\"corp\",result=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("jwtgate_control_revocations_written_total{kind=\"jti\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("jwtgate_live_connections"),
        "a control plane exports no gateway metrics: {text}"
    );
    // A writer whose token was revoked writes no more (and neither does its subject once
    // cut off).
    c["scope"] = json!("jwtgate:revoke");
    let writer = key.mint(&c);
    let r = post_json(control.addr, "/v1/revocations", &writer, &body).await;
    assert_eq!(r.status, 200);
    // Lifting a revocation could re-enable a stolen token: a writer JWT may not, only a
    // writer API key.
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let r = raw(
        control.addr,
        &format!("DELETE /v1/revocations/{id} HTTP/1.1\nHost: c\nAuthorization: Bearer {writer}\nContent-Length: 0"),
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    // (This control plane has JWT writers only: the writer revokes its own token.)
    let own = json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] });
    let r = post_json(control.addr, "/v1/revocations", &writer, &own).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        post_json(control.addr, "/v1/revocations", &writer, &body)
            .await
            .status,
        401,
        "a revoked writer token still writes"
    );
    c["jti"] = json!("w-2");
    c["iat"] = json!(now() - 5);
    let sibling = key.mint(&c);
    assert_eq!(
        post_json(control.addr, "/v1/revocations", &sibling, &body)
            .await
            .status,
        200
    );
    let cutoff = json!({ "iss": idp.url, "sub": c["sub"], "issued_before": now() });
    let r = post_json(control.addr, "/v1/revocations", &sibling, &cutoff).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        post_json(control.addr, "/v1/revocations", &sibling, &body)
            .await
            .status,
        401,
        "a writer whose subject was cut off still writes"
    );
}

/// A single-node gateway (store on a temporary SQLite file, the test writer key) with its IdP
/// and echo upstream.
async fn single_node() -> (Signer, Idp, Echo, jwtgate::app::Running) {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let rev = format!(
        "  store: sqlite://{}\n  writers: {{ api_keys: [ {{ name: ops, sha256: {} }} ] }}\n",
        temp_dir().join("single.db").display(),
        sha256_hex(WRITER_KEY)
    );
    let gw = start_gateway(&gateway_yaml(&idp, &echo, &rev)).await;
    (key, idp, echo, gw)
}

async fn refused_within_a_second(gateway: std::net::SocketAddr, token: &str) {
    let start = Instant::now();
    while get(gateway, "/", &[&bearer(token)]).await.status != 401 {
        assert!(start.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Regression: single-node `/metrics` never showed the control plane's metrics (they lived
/// in a registry of their own). One registry now holds both planes'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_metrics_show_both_planes() {
    let (key, idp, _echo, gw) = single_node().await;
    let admin = gw.admin.expect("admin");
    let c = claims(&idp.url);
    let r = revoke(
        admin,
        &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    let token = key.mint(&c);
    refused_within_a_second(gw.addrs[0], &token).await;
    let metrics = get(admin, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for series in [
        "jwtgate_control_revocations_written_total{kind=\"jti\"} 1",
        "jwtgate_control_stream_clients 0",
        "jwtgate_control_store_write_seconds_count{op=\"insert\"} 1",
        "jwtgate_control_store_write_seconds_count{op=\"delete\"} 0",
        "jwtgate_control_head_cursor 1",
        "jwtgate_requests_total{outcome=\"revoked\",reason=\"revoked\",route=\"api\"} 1",
        "jwtgate_revocations{kind=\"jti\"} 1",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}

/// Single-node mode: the gateway runs the control API on its admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_mode() {
    let (key, idp, _echo, gw) = single_node().await;
    let admin = gw.admin.expect("admin");
    let c = claims(&idp.url);
    let token = key.mint(&c);
    assert_eq!(get(gw.addrs[0], "/", &[&bearer(&token)]).await.status, 200);
    let r = revoke(
        admin,
        &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    refused_within_a_second(gw.addrs[0], &token).await;
    assert_eq!(get(admin, "/readyz", &[]).await.status, 200);
}

/// `jwtgate revoke` writes through the API with the key from the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revoke() {
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let url = format!("http://{}", control.addr);
    let exp = (now() + 600).to_string();
    let run = |args: Vec<&str>, key: &str| {
        let mut all = vec!["revoke", "--control", url.as_str(), "--iss", "https://i"];
        all.extend(args);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(all)
            .env("JWTGATE_API_KEY", key)
            .output()
    };
    let out = run(vec!["--jti", "abc", "--exp", &exp], WRITER_KEY)
        .await
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(vec!["--sub", "42"], WRITER_KEY).await.expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(vec!["--sid", "s"], "wrong").await.expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let (all, _) = control.plane.store.list(0, 10, now()).await.expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].sub.as_deref(), Some("42"));
}

/// Cold start fails closed: before a first sync or snapshot, protected routes answer 503
/// with `Retry-After` (a set never known is not "the last known set"), `auth: none` routes
/// keep working, and the first sync opens the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_fails_closed_until_first_sync() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    // The control plane's port is known but nothing listens there yet.
    let port = free_port();
    let yaml = gateway_yaml(
        &idp,
        &echo,
        &format!("  control_url: http://127.0.0.1:{port}\n  token: {READER_KEY}\n"),
    )
    .replace(
        "routes:\n",
        "routes:\n  - { name: open, match: { path_prefix: /open }, upstream: echo, auth: none }\n",
    );
    let gw = start_gateway(&yaml).await;
    let token = key.mint(&claims(&idp.url));
    // (Under the default `on_stale: allow`.)
    let r = get(gw.addrs[0], "/", &[&bearer(&token)]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json()["error_description"],
        "revocation status not yet known"
    );
    assert_eq!(get(gw.addrs[0], "/open", &[]).await.status, 200);
    // The control plane comes up: the gate opens.
    let config = jwtgate::config::ControlConfig::from_yaml(
        &control_yaml(
            &format!("sqlite://{}", dir.join("rev.db").display()),
            &format!("127.0.0.1:{port}"),
            "",
        ),
        std::path::Path::new("."),
        &|_| None,
    )
    .expect("config");
    let _control = jwtgate::app::start_control(config).await.expect("control");
    let start = Instant::now();
    while get(gw.addrs[0], "/", &[&bearer(&token)]).await.status != 200 {
        // Reconnects are at most a second apart.
        assert!(start.elapsed() < Duration::from_secs(3), "never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Recovery after a control-plane outage is prompt: after the control plane has been down
/// (3 s here; `JWTGATE_OUTAGE_SECS=60` for the issue's figure), a revocation written once it
/// is back is refused within a second at every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_outage_is_prompt() {
    let outage = std::env::var("JWTGATE_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let store = format!("sqlite://{}", dir.join("rev.db").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let control_config = || {
        jwtgate::config::ControlConfig::from_yaml(
            &control_yaml(&store, &listen, ""),
            std::path::Path::new("."),
            &|_| None,
        )
        .expect("config")
    };
    let control = jwtgate::app::start_control(control_config())
        .await
        .expect("control");
    let rev =
        format!("  control_url: http://{listen}\n  token: {READER_KEY}\n  max_staleness: 60s\n");
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(start_gateway(&gateway_yaml(&idp, &echo, &rev)).await);
    }
    control.shutdown(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let control = jwtgate::app::start_control(control_config())
        .await
        .expect("control again");
    let c = claims(&idp.url);
    let token = key.mint(&c);
    let r = revoke(
        control.addr,
        &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    let start = Instant::now();
    for gw in &gateways {
        refused_within_a_second(gw.addrs[0], &token).await;
    }
    println!(
        "outage {outage}s → revocation refused at 3 gateways after {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// Lapses closed: a `jti` entry outlives the token's `exp` by the largest leeway (the token
/// is accepted that long); a token living longer than `max_token_lifetime` — which a `sub`
/// cutoff could not outlast — is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_lapses_are_closed() {
    let w = world(
        "purge_interval: 500ms\n",
        "  purge_interval: 500ms\n  max_token_lifetime: 1h\n",
    )
    .await;
    let now = now();
    // Expires in 2 s; the issuer's leeway (30 s) keeps it acceptable until then + 30 s.
    let (token, c) = w.token(json!({ "exp": now + 2 }));
    let r = revoke(
        w.control_addr,
        &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    w.until_refused(&token, Duration::from_secs(1)).await;
    // 10 s later: past `exp`, within the leeway. Both planes purge every 500 ms.
    w.gw.gateway.clock.advance(Duration::from_secs(10));
    w.control
        .as_ref()
        .expect("control")
        .plane
        .clock
        .advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get(w.a(), "/", &[&bearer(&token)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error_description"],
        "token revoked",
        "the entry was purged at exp"
    );
    // Lifetimes past `max_token_lifetime` (1 h here), with and without `iat`.
    let now = w.gw.gateway.clock.unix();
    let (long, _) = w.token(json!({ "iat": now, "exp": now + 7200 }));
    let mut c = claims(&w.idp.url);
    c["exp"] = json!(now + 7200);
    c.as_object_mut().expect("claims").remove("iat");
    let no_iat = w.key.mint(&c);
    for t in [long, no_iat] {
        let r = get(w.a(), "/", &[&bearer(&t)]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error_description"], "token lifetime too long");
    }
    let (fine, _) = w.token(json!({ "iat": now, "exp": now + 3000 }));
    assert_eq!(get(w.a(), "/", &[&bearer(&fine)]).await.status, 200);
}

/// A store recreated (new epoch) or restored from an older backup (head below the
/// gateways' cursor) is noticed: gateways resync from zero instead of silently skipping
/// every new entry whose cursor they think they have seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_reset_or_restore_is_noticed() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let db = dir.join("rev.db");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = |path: std::path::PathBuf| {
        let listen = listen.clone();
        async move {
            let config = jwtgate::config::ControlConfig::from_yaml(
                &control_yaml(&format!("sqlite://{}", path.display()), &listen, ""),
                std::path::Path::new("."),
                &|_| None,
            )
            .expect("config");
            jwtgate::app::start_control(config).await.expect("control")
        }
    };
    let gw = start_gateway(&gateway_yaml(
        &idp,
        &echo,
        &format!("  control_url: http://{listen}\n  token: {READER_KEY}\n  max_staleness: 3s\n"),
    ))
    .await;
    let control = start(db.clone()).await;
    let revoke_one = |control: std::net::SocketAddr| {
        let idp = idp.url.clone();
        let key = &key;
        async move {
            let c = claims(&idp);
            let r = revoke(
                control,
                &json!({ "iss": idp, "jti": c["jti"], "expires_at": c["exp"] }),
            )
            .await;
            assert_eq!(r.status, 201);
            key.mint(&c)
        }
    };
    // Three entries (gateway cursor 3); keep a backup taken after the first.
    let first = revoke_one(control.addr).await;
    refused_within_a_second(gw.addrs[0], &first).await;
    std::fs::copy(&db, dir.join("backup.db")).expect("backup");
    for _ in 0..2 {
        let t = revoke_one(control.addr).await;
        refused_within_a_second(gw.addrs[0], &t).await;
    }
    // Restore the backup (head 1): the next entry gets cursor 2, below the gateway's 3.
    control.shutdown(Duration::from_secs(1)).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(dir.join("backup.db"), &db).expect("restore");
    let control = start(db.clone()).await;
    let after_restore = revoke_one(control.addr).await;
    let t0 = Instant::now();
    while get(gw.addrs[0], "/", &[&bearer(&after_restore)])
        .await
        .status
        != 401
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "an entry written after a restore was skipped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A brand-new store (another epoch) in its place: cursors start at 1 again.
    control.shutdown(Duration::from_secs(1)).await;
    let control = start(dir.join("fresh.db")).await;
    let t = revoke_one(control.addr).await;
    let t0 = Instant::now();
    while get(gw.addrs[0], "/", &[&bearer(&t)]).await.status != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "an entry of a recreated store was skipped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What was known before stays enforced.
    assert_eq!(get(gw.addrs[0], "/", &[&bearer(&first)]).await.status, 401);
}

/// Poison pills: entries that would outlive any token, or carry control characters, are
/// refused (and pages are bounded in bytes: `control::api::tests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_refused() {
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let now = now();
    for (body, why) in [
        (
            json!({ "iss": "i", "jti": "j", "expires_at": now + 10 * 365 * 86_400 }),
            "later than any token",
        ),
        (
            json!({ "iss": "i", "sid": "s", "expires_at": now + 10 * 365 * 86_400 }),
            "session is kept at most",
        ),
        (
            json!({ "iss": "i", "jti": "j\u{0}x", "expires_at": now + 60 }),
            "control characters",
        ),
        (
            json!({ "iss": "i\nforged", "jti": "j", "expires_at": now + 60 }),
            "control characters",
        ),
        (
            json!({ "iss": "i", "sub": "u", "issued_before": now, "reason": "a\u{1b}[31m" }),
            "control characters",
        ),
    ] {
        let r = revoke(control.addr, &body).await;
        assert_eq!(r.status, 400, "{body}");
        let d = r.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(d.contains(why), "{body}: {d}");
    }
    let (all, _) = control.plane.store.list(0, 10, 0).await.expect("list");
    assert!(all.is_empty(), "a refused entry was stored");
}

/// Single-node mode follows its store the same way: a snapshot whose cursor belongs to
/// another (recreated) store does not make the gateway skip the new store's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_notices_a_recreated_store() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let rev = |db: &str| {
        format!(
            "  store: sqlite://{}\n  snapshot_file: {}\n  writers: {{ api_keys: [ {{ name: ops, sha256: {} }} ] }}\n",
            dir.join(db).display(),
            dir.join("gw.snapshot").display(),
            sha256_hex(WRITER_KEY)
        )
    };
    let gw = start_gateway(&gateway_yaml(&idp, &echo, &rev("one.db"))).await;
    for _ in 0..3 {
        let c = claims(&idp.url);
        let r = revoke(
            gw.admin.expect("admin"),
            &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
        )
        .await;
        assert_eq!(r.status, 201);
        refused_within_a_second(gw.addrs[0], &key.mint(&c)).await;
    }
    // Wait for the snapshot (cursor 3), then restart on a fresh store.
    let snapshot = dir.join("gw.snapshot");
    let t0 = Instant::now();
    while jwtgate::revocation::set::RevocationSet::load(&snapshot, now()).map_or(0, |s| s.cursor())
        < 3
    {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "snapshot not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown(Duration::from_secs(1)).await;
    let gw = start_gateway(&gateway_yaml(&idp, &echo, &rev("two.db"))).await;
    let c = claims(&idp.url);
    let r = revoke(
        gw.admin.expect("admin"),
        &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    refused_within_a_second(gw.addrs[0], &key.mint(&c)).await;
}

/// The control plane's `max_token_lifetime` (how long it keeps a `sub` cutoff) bounds the
/// tokens a gateway accepts even when the gateway's own setting is longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_lifetime_bounds_the_gateway() {
    let w = world("max_token_lifetime: 1h\n", "").await;
    let now = now();
    let (long, _) = w.token(json!({ "iat": now, "exp": now + 7200 }));
    let r = get(w.a(), "/", &[&bearer(&long)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "token lifetime too long");
    let (short, _) = w.token(json!({ "iat": now, "exp": now + 1800 }));
    assert_eq!(w.status(&short).await, 200);
}
