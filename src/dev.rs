//! `jwtgate dev`: everything on loopback in one process for a first look — a throwaway
//! Ed25519 signing key and its JWKS, an echo upstream, and the gateway — plus ready-to-paste
//! `curl` commands. The echo upstream is also what the integration tests forward to.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;

/// What an [`Echo`] upstream has seen.
#[derive(Default)]
pub struct EchoStats {
    pub requests: AtomicU64,
}

/// An upstream that answers every request with JSON describing it (method, path, query,
/// headers, body length). `GET /__download/N` streams N zero bytes instead; `…/__sleep/MS`
/// answers after MS milliseconds.
pub struct Echo {
    pub addr: SocketAddr,
    pub stats: Arc<EchoStats>,
}

impl Echo {
    pub async fn start() -> std::io::Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(EchoStats::default());
        let s = stats.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                let svc = service_fn(move |req| echo(req, s.clone()));
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Echo { addr, stats })
    }
}

type EchoBody = Either<Full<Bytes>, Zeros>;

async fn echo(
    req: Request<Incoming>,
    stats: Arc<EchoStats>,
) -> Result<Response<EchoBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Some((_, ms)) = req.uri().path().split_once("/__sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = req.uri().path().strip_prefix("/__download/") {
        let n: u64 = n.parse().unwrap_or(0);
        return Ok(Response::new(Either::Right(Zeros { left: n })));
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    // Drain the body frame by frame: uploads are counted, never held whole.
    let mut body = req.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let doc = json!({ "method": method, "path": path, "query": query, "headers": headers, "body_bytes": body_bytes });
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(doc.to_string()))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A body of `left` zero bytes in 64 KiB chunks.
pub struct Zeros {
    left: u64,
}

static ZERO_CHUNK: [u8; 65536] = [0; 65536];

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(ZERO_CHUNK.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZERO_CHUNK[..n as usize],
        )))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Serve a fixed JSON document at every path (the dev JWKS).
async fn serve_document(doc: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let doc = Bytes::from(doc);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let doc = doc.clone();
            let svc = service_fn(move |_req: Request<Incoming>| {
                let doc = doc.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(doc))) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn bind_or_any(ip: IpAddr, port: u16) -> SocketAddr {
    match std::net::TcpListener::bind((ip, port)) {
        Ok(_) => SocketAddr::new(ip, port),
        Err(_) => std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .unwrap_or(SocketAddr::new(ip, 0)),
    }
}

/// Where a client on this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], addr.port()))
        }
        _ => addr,
    }
}

/// Ctrl-C, or the SIGTERM a container runtime sends to stop.
async fn stopped() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// One request on a fresh connection; the status code (0 when the gateway did not answer).
async fn status_of(gw: SocketAddr, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(gw).await else {
        return 0;
    };
    let req = format!("GET /api/orders HTTP/1.1\r\nHost: {gw}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Show a revocation taking effect: a demo token passes, is revoked, and is refused.
async fn demo_revocation(gw: SocketAddr, admin: &str, api_key: &str, issuer: &str, token: &str) {
    let before = status_of(gw, token).await;
    let body = json!({ "iss": issuer, "jti": "demo-1", "expires_at": crate::clock::now_unix() + 3600, "reason": "jwtgate dev demo" });
    let written = crate::control::client::post_revocation(admin, api_key, &body).await;
    let start = std::time::Instant::now();
    let mut after = status_of(gw, token).await;
    while after != 401 && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        after = status_of(gw, token).await;
    }
    match written {
        Ok((status, _)) => println!(
            "Demo: a fresh token answered {before}; revoked (control plane said {status}); refused with {after} after {} ms.\n",
            start.elapsed().as_millis()
        ),
        Err(e) => println!("Demo revocation failed: {e:#}\n"),
    }
}

/// Run the all-in-one demo until Ctrl-C or SIGTERM, the gateway and admin listeners on
/// `bind` (the IdP, upstream and control plane stay on loopback).
pub async fn run(bind: IpAddr, port: u16) -> anyhow::Result<()> {
    // A fresh key every run: nothing here is a published example key.
    let signing = crate::keygen::SigningKey::generate()?;
    let jwks = signing.jwks();
    let jwks_addr = serve_document(jwks.to_string()).await?;
    let echo = Echo::start().await?;
    let listen = bind_or_any(bind, port);
    let admin = bind_or_any(bind, 9900);
    let issuer = "http://jwtgate.dev/issuer";
    // The embedded control plane (single-node mode): a throwaway store and writer key.
    let data = std::env::temp_dir().join(format!("jwtgate-dev-{}", std::process::id()));
    std::fs::create_dir_all(&data).context("creating the dev data folder")?;
    let api_key = crate::keygen::api_key()?;
    let key_hash = crate::keygen::api_key_sha256(&api_key);
    let store = data.join("revocations.db");

    let yaml = format!(
        r#"
listeners: [ {{ address: "{listen}" }} ]
admin: {{ address: "{admin}" }}
issuers:
  - name: dev
    issuer: {issuer}
    jwks_uri: http://{jwks_addr}/jwks.json
    audiences: [dev-api]
    algorithms: [EdDSA]
upstreams:
  - {{ name: echo, url: "http://{echo}" }}
identity_headers:
  X-User-Id: sub
  X-User-Email: email
routes:
  - {{ name: health, match: {{ path: /healthz }}, upstream: echo, auth: none }}
  - name: orders-write
    match: {{ path_prefix: /api/orders, methods: [POST, PUT, PATCH, DELETE] }}
    upstream: echo
    auth: {{ issuers: [dev], require: {{ scopes: ["orders:write"] }} }}
  - {{ name: default, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [dev] }} }}
revocation:
  store: sqlite://{store}
  writers: {{ api_keys: [ {{ name: dev, sha256: {key_hash} }} ] }}
"#,
        echo = echo.addr,
        store = store.display()
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("."), &|_| None).map_err(|p| {
        anyhow::anyhow!(p
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"))
    })?;
    crate::logging::init(&config.log);
    let running = crate::app::start_gateway(config)
        .await
        .context("starting the dev gateway")?;
    let gw = reachable(running.addrs[0]);
    let admin = running
        .admin
        .map(|a| reachable(a).to_string())
        .unwrap_or_default();

    let now = crate::clock::now_unix();
    let mint = |exp: u64, scope: &str, jti: &str| {
        signing.sign(
            &json!({ "iss": issuer, "aud": "dev-api", "sub": "42", "email": "ada@example.com", "scope": scope, "iat": now.min(exp), "exp": exp, "jti": jti }),
        )
    };
    let good_jti = format!("{:x}", fastrand::u64(..));
    let good = mint(now + 3600, "orders:read orders:write", &good_jti)?;
    let expired = mint(
        now.saturating_sub(3600),
        "orders:read orders:write",
        "expired-1",
    )?;
    let reader = mint(now + 3600, "orders:read", "reader-1")?;

    // Wait for the key fetch so the printed commands work at once.
    for _ in 0..50 {
        if running.gateway.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        r#"
jwtgate dev is running:
  gateway   http://{gw}        (echo upstream at http://{echo}, JWKS at http://{jwks_addr}/jwks.json)
  admin     http://{admin}/metrics  /healthz  /readyz

A valid token (sub 42, scopes orders:read orders:write) → 200, the echo shows X-User-Id: 42:
  curl -i http://{gw}/api/orders -H 'Authorization: Bearer {good}'

No token → 401 with WWW-Authenticate: Bearer realm="jwtgate":
  curl -i http://{gw}/api/orders

An expired token → 401 error="invalid_token", error_description="token expired":
  curl -i http://{gw}/api/orders -H 'Authorization: Bearer {expired}'

A token lacking orders:write on a write route → 403 error="insufficient_scope":
  curl -i -X POST http://{gw}/api/orders -H 'Authorization: Bearer {reader}'

The same token on a read route → 200:
  curl -i http://{gw}/api/orders -H 'Authorization: Bearer {reader}'

A spoofed identity header is replaced by the gateway's own → echo shows X-User-Id: 42:
  curl -s http://{gw}/whoami -H 'X-User-Id: 1' -H 'Authorization: Bearer {good}'

Revoke the valid token (the control API runs on the admin listener in this mode):
  JWTGATE_API_KEY={api_key} {exe} revoke --control http://{admin} --iss {issuer} --jti {good_jti} --exp {exp}
then the first command answers 401 error_description="token revoked" — within a second.
"#,
        echo = echo.addr,
        exp = now + 3600,
        exe = this_binary(),
    );
    demo_revocation(
        gw,
        &format!("http://{admin}"),
        &api_key,
        issuer,
        &mint(now + 3600, "orders:read", "demo-1")?,
    )
    .await;
    println!("Press Ctrl-C to stop.");
    stopped().await?;
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// This binary, as a shell word: the printed commands then work from any folder.
fn this_binary() -> String {
    let path = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "jwtgate".to_owned());
    if path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}
