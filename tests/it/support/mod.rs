//! Test support: a real identity provider (discovery + JWKS over loopback), token minting
//! with fixture keys, the gateway started on 127.0.0.1:0, and a raw HTTP client that sends
//! exactly the bytes a test gives it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use jwtgate::app::Running;
use jwtgate::clock::Clock;
use jwtgate::config::Config;
#[allow(unused_imports)]
pub use jwtgate::dev::Echo;

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

pub fn now() -> u64 {
    jwtgate::clock::now_unix()
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A signing key with its public JWK.
pub struct Signer {
    pub alg: Algorithm,
    pub kid: String,
    pub key: EncodingKey,
    pub jwk: Value,
}

impl Signer {
    /// `file` is a PKCS#8 PEM in tests/fixtures; HMAC signers take the secret instead.
    pub fn new(file: &str, alg: Algorithm, kid: &str) -> Signer {
        let pem = fixture(file);
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem).expect("rsa pem"),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).expect("ec pem"),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).expect("ed pem"),
            _ => panic!("use Signer::hmac"),
        };
        let mut jwk = if alg == Algorithm::EdDSA {
            // jsonwebtoken cannot build an OKP JWK: the SPKI DER ends with the 32-byte key.
            let der = pem_body(&fixture(&file.replace(".pem", ".pub.pem")));
            json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&der[der.len() - 32..]) })
        } else {
            serde_json::to_value(Jwk::from_encoding_key(&key, alg).expect("jwk")).expect("json")
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Signer {
            alg,
            kid: kid.to_owned(),
            key,
            jwk,
        }
    }

    pub fn hmac(secret: &[u8], alg: Algorithm) -> Signer {
        Signer {
            alg,
            kid: String::new(),
            key: EncodingKey::from_secret(secret),
            jwk: Value::Null,
        }
    }

    /// Sign `claims` under a header of `typ: JWT`, `alg`, and `kid` (when set).
    pub fn mint(&self, claims: &Value) -> String {
        let mut header = json!({ "typ": "JWT", "alg": alg_name(self.alg) });
        if !self.kid.is_empty() {
            header["kid"] = json!(self.kid);
        }
        self.mint_raw(&header, claims)
    }

    /// Sign with an arbitrary JOSE header.
    pub fn mint_raw(&self, header: &Value, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &self.key, self.alg).expect("sign");
        format!("{msg}.{sig}")
    }
}

fn pem_body(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("pem base64")
}

pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Claims valid for ten minutes for `iss` and audience `api`.
pub fn claims(iss: &str) -> Value {
    let now = now();
    json!({ "iss": iss, "aud": "api", "sub": "42", "iat": now, "exp": now + 600, "jti": format!("{:x}", fastrand::u64(..)) })
}

/// [`claims`] of `iss` with the fields of `extra` set (or replaced).
pub fn claims_with(iss: &str, extra: &Value) -> Value {
    let mut c = claims(iss);
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    c
}

/// A real identity provider on loopback: discovery document and JWKS, with a fetch
/// counter and a switch to make it fail.
#[derive(Clone)]
pub struct Idp {
    pub url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    raw_jwks: Arc<Mutex<Option<Bytes>>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Idp {
    pub async fn start(keys: Vec<Value>) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let idp = Idp {
            url: url.clone(),
            keys: Arc::new(Mutex::new(keys)),
            raw_jwks: Arc::new(Mutex::new(None)),
            fetches: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
        };
        let me = idp.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(&req)) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        idp
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if self.down.load(Ordering::SeqCst) {
            let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        match req.uri().path() {
            "/.well-known/openid-configuration" => Response::new(Full::new(Bytes::from(
                json!({ "issuer": self.url, "jwks_uri": format!("{}/jwks.json", self.url) })
                    .to_string(),
            ))),
            "/jwks.json" => {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                let body = match self.raw_jwks.lock().expect("lock").clone() {
                    Some(raw) => raw,
                    None => {
                        Bytes::from(json!({ "keys": *self.keys.lock().expect("lock") }).to_string())
                    }
                };
                Response::new(Full::new(body))
            }
            _ => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.url)
    }
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().expect("lock") = keys;
    }
    /// Serve these exact bytes as the JWKS document.
    pub fn set_raw_jwks(&self, raw: Option<Bytes>) {
        *self.raw_jwks.lock().expect("lock") = raw;
    }
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Start the gateway in-process from YAML and wait until it is ready (every issuer has keys).
/// Its clock is adjustable: a test where time is the subject moves
/// `running.gateway.clock` forward instead of sleeping.
pub async fn start_gateway(yaml: &str) -> Running {
    let config = Config::from_yaml(yaml, Path::new(env!("CARGO_MANIFEST_DIR")), &|k| {
        std::env::var(k).ok()
    })
    .unwrap_or_else(|p| panic!("config: {p:?}"));
    let running = jwtgate::app::start_gateway_with(config, Clock::adjustable())
        .await
        .expect("start");
    for _ in 0..100 {
        if running.gateway.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// For a response from the echo upstream: the values of a header it received.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
                    .filter_map(|h| h[1].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// For a response from the echo upstream: the path and query it received.
    pub fn upstream_target(&self) -> String {
        let j = self.json();
        match j["query"].as_str() {
            Some(q) => format!("{}?{q}", j["path"].as_str().unwrap_or("")),
            None => j["path"].as_str().unwrap_or("").to_owned(),
        }
    }
    /// The `error` attribute of the `WWW-Authenticate` challenge, if any.
    pub fn challenge_error(&self) -> Option<String> {
        let v = self.header("www-authenticate")?;
        let i = v.find("error=\"")? + 7;
        Some(v[i..].split('"').next()?.to_owned())
    }
}

/// Send `head` (request line and headers, without the final blank line) plus `body` on a
/// fresh connection and read the whole response.
pub async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Resp {
    try_raw(addr, head, body)
        .await
        .unwrap_or_else(|e| panic!("{head}: {e}"))
}

/// As [`raw`], but a failed connection or a missing response is an `Err`, not a panic.
pub async fn try_raw(addr: SocketAddr, head: &str, body: &[u8]) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut req = head.trim_end().replace('\n', "\r\n").into_bytes();
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "no response in 30 s".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err("connection closed without a response".into());
    }
    Ok(parse_response(&buf))
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

/// `GET path` with extra header lines (`"Name: value"`).
pub async fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Resp {
    request(addr, "GET", path, headers).await
}

pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\nHost: gw.test");
    for h in headers {
        head.push('\n');
        head.push_str(h);
    }
    raw(addr, &head, b"").await
}

pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// PostgreSQL for the store tests: the machine's server, database `test`. Each call gets a
/// fresh schema so parallel tests never see each other's rows.
pub async fn pg_url() -> String {
    let base = std::env::var("JWTGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("t_{:016x}", fastrand::u64(..));
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is needed for this test: {e}"));
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    format!("{base}?options=-c%20search_path%3D{schema}")
}

/// A port free right now on 127.0.0.1 (for the real binary, which takes its port from a file).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("jwtgate-t-{:016x}", fastrand::u64(..)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub const WRITER_KEY: &str = "writer-key-0123456789";
pub const READER_KEY: &str = "reader-key-0123456789";

pub fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `control.yaml` for a store URL (`sqlite://…` or `postgres://…`), with the test keys.
pub fn control_yaml(store: &str, listen: &str, extra: &str) -> String {
    format!(
        "listen: \"{listen}\"\nstore: \"{store}\"\nwriters:\n  api_keys: [ {{ name: ops, sha256: {} }} ]\nreaders:\n  api_keys: [ {{ name: gateways, sha256: {} }} ]\n{extra}",
        sha256_hex(WRITER_KEY),
        sha256_hex(READER_KEY)
    )
}

/// Every entry a control plane's store holds (tombstones included).
pub async fn control_entries(
    control: &jwtgate::app::RunningControl,
) -> Vec<jwtgate::revocation::Entry> {
    control
        .plane
        .store
        .list(0, 10_000, now())
        .await
        .expect("list")
        .0
}

pub async fn start_control(store: &str, extra: &str) -> jwtgate::app::RunningControl {
    let config = jwtgate::config::ControlConfig::from_yaml(
        &control_yaml(store, "127.0.0.1:0", extra),
        Path::new("."),
        &|_| None,
    )
    .unwrap_or_else(|p| panic!("control config: {p:?}"));
    jwtgate::app::start_control_with(config, Clock::adjustable())
        .await
        .expect("control start")
}

/// `n` gateways trusting `idp` (ES256, audience `api`), forwarding to `echo`, syncing their
/// revocations from `control` with the reader key.
pub async fn syncing_gateways(
    n: usize,
    idp: &Idp,
    echo: &Echo,
    control: SocketAddr,
) -> Vec<Running> {
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nissuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}\nrevocation:\n  control_url: http://{control}\n  token: {READER_KEY}\n",
        idp.url,
        idp.jwks_url(),
        echo.addr,
    );
    let mut gateways = Vec::with_capacity(n);
    for _ in 0..n {
        gateways.push(start_gateway(&yaml).await);
    }
    gateways
}

/// `POST /v1/revocations` with the writer key; returns (status, body).
pub async fn revoke(control: SocketAddr, body: &Value) -> Resp {
    post_json(control, "/v1/revocations", WRITER_KEY, body).await
}

pub async fn post_json(addr: SocketAddr, path: &str, key: &str, body: &Value) -> Resp {
    try_post_json(addr, path, key, body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

pub async fn try_post_json(
    addr: SocketAddr,
    path: &str,
    key: &str,
    body: &Value,
) -> Result<Resp, String> {
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\nHost: control\nAuthorization: Bearer {key}\nContent-Type: application/json\nContent-Length: {}",
        body.len()
    );
    try_raw(addr, &head, body.as_bytes()).await
}

/// A WebSocket echo upstream (tungstenite).
pub mod ws {
    use std::sync::{Arc, Mutex};

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{
        Request as WsRequest, Response as WsResponse,
    };
    use tokio_tungstenite::tungstenite::Message;

    pub type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

    /// A WebSocket echo server that records each handshake (target and headers) and picks the
    /// `chat` subprotocol when offered. A text message `close-me` makes it close the socket.
    pub async fn ws_upstream() -> (std::net::SocketAddr, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let callback = |req: &WsRequest, mut resp: WsResponse| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        s.lock()
                            .expect("lock")
                            .push((req.uri().to_string(), headers));
                        let offers_chat = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.split(',').any(|p| p.trim() == "chat"));
                        if offers_chat {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", "chat".parse().expect("value"));
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let echo = match &msg {
                            Message::Text(t) if t.as_str() == "close-me" => {
                                let _ = ws.close(None).await;
                                continue;
                            }
                            Message::Close(_) => break,
                            m => m.is_text() || m.is_binary(),
                        };
                        if echo && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }
}

/// What a [`head_by_head_upstream`] writes back for one request head: the bytes, the size of
/// the pieces they go out in (1 ms apart when there is more than one), and whether the
/// connection closes after them.
pub struct Answer {
    pub bytes: Vec<u8>,
    pub piece: usize,
    pub close: bool,
}

/// An upstream that reads request heads one after another on each connection (bodies
/// are not expected) and answers each as `answer(path)` says; counts its connections.
pub async fn head_by_head_upstream(
    answer: impl Fn(&str) -> Answer + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let a = answer(head.split(' ').nth(1).unwrap_or("/"));
                    let pieces = a.bytes.len().div_ceil(a.piece.max(1));
                    for (i, part) in a.bytes.chunks(a.piece.max(1)).enumerate() {
                        if s.write_all(part).await.is_err() {
                            return;
                        }
                        if i + 1 < pieces {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    if a.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}
