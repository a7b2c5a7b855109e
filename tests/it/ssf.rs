//! OpenID Shared Signals: a transmitter of the test's (its own keys, its own JWKS over
//! loopback) pushes (RFC 8935) and serves for polling (RFC 8936) Security Event Tokens to a
//! real control plane; two real gateways sync from it and hold a live WebSocket.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::ws::ws_upstream;
use crate::support::*;

const AUD: &str = "https://jwtgate.test/";
const PUSH_TOKEN: &str = "push-token-0123456789";
const POLL_TOKEN: &str = "poll-token-0123456789";
const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// The test's poll endpoint (RFC 8936): SETs waiting, what was acknowledged or refused, and
/// a switch to make it fail.
#[derive(Clone, Default)]
struct PollServer {
    queue: Arc<Mutex<BTreeMap<String, String>>>,
    acked: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<BTreeMap<String, Value>>>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// Answer 400 to any poll that acknowledges or reports something (a transmitter that
    /// forgot those ids).
    refusing_reports: Arc<std::sync::atomic::AtomicBool>,
}

impl PollServer {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(req).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.auth.lock().expect("lock").push(
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let body = req.into_body().collect().await.expect("body").to_bytes();
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        let asked: Value = serde_json::from_slice(&body).expect("poll request is JSON");
        let reports = asked["ack"].as_array().is_some_and(|a| !a.is_empty())
            || asked["setErrs"].as_object().is_some_and(|e| !e.is_empty());
        if reports
            && self
                .refusing_reports
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            let mut r = Response::new(Full::new(Bytes::from_static(
                br#"{"err":"invalid_request","description":"unknown jti"}"#,
            )));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        let mut queue = self.queue.lock().expect("lock");
        for id in asked["ack"].as_array().expect("ack array") {
            let id = id.as_str().expect("ack id").to_owned();
            queue.remove(&id);
            self.acked.lock().expect("lock").push(id);
        }
        if let Some(errs) = asked["setErrs"].as_object() {
            for (id, e) in errs {
                queue.remove(id);
                self.errors
                    .lock()
                    .expect("lock")
                    .insert(id.clone(), e.clone());
            }
        }
        let max = asked["maxEvents"].as_u64().unwrap_or(10) as usize;
        let sets: serde_json::Map<String, Value> = queue
            .iter()
            .take(max)
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let more = queue.len() > sets.len();
        Response::new(Full::new(Bytes::from(
            json!({ "sets": sets, "moreAvailable": more }).to_string(),
        )))
    }

    fn offer(&self, jti: &str, set: &str) {
        self.queue
            .lock()
            .expect("lock")
            .insert(jti.to_owned(), set.to_owned());
    }
}

struct World {
    idp: Idp,
    user_key: Signer,
    /// The pushing transmitter: its keys and JWKS.
    tx: Signer,
    tx_idp: Idp,
    /// The polled transmitter.
    poll_tx: Signer,
    poll_idp: Idp,
    poll: PollServer,
    control: jwtgate::app::RunningControl,
    /// The control plane's store and its configuration beyond the test keys.
    store: String,
    extra: String,
    gateways: Vec<jwtgate::app::Running>,
    _echo: Echo,
}

/// The polled transmitter: its keys, their JWKS, its poll endpoint, and a folder holding
/// `poll.token`, the bearer token it expects.
struct Polled {
    tx: Signer,
    idp: Idp,
    server: PollServer,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

async fn polled() -> Polled {
    let tx = Signer::new("ec384.pem", Algorithm::ES384, "ssf-p");
    let idp = Idp::start(vec![tx.jwk.clone()]).await;
    let server = PollServer::default();
    let addr = server.start().await;
    let dir = temp_dir();
    std::fs::write(dir.join("poll.token"), POLL_TOKEN).expect("token file");
    Polled {
        tx,
        idp,
        server,
        addr,
        dir,
    }
}

async fn world() -> World {
    world_with_leeway(30).await
}

/// [`world`] with the pushing transmitter's `leeway` in seconds.
async fn world_with_leeway(leeway: u64) -> World {
    let user_key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![user_key.jwk.clone()]).await;
    let tx = Signer::new("rsa2048.pem", Algorithm::RS256, "ssf-1");
    let tx_idp = Idp::start(vec![tx.jwk.clone()]).await;
    let Polled {
        tx: poll_tx,
        idp: poll_idp,
        server: poll,
        addr: poll_addr,
        dir,
    } = polled().await;
    let store = format!("sqlite://{}", dir.join("rev.db").display());
    let extra = format!(
        r#"issuers:
  - {{ name: corp, issuer: "{iss}", jwks_uri: "{jwks}", audiences: [api], algorithms: [ES256] }}
shared_signals:
  audience: "{AUD}"
  transmitters:
    - name: corp-ssf
      issuer: "{tx_iss}"
      jwks_uri: "{tx_jwks}"
      subjects: corp
      sub_formats: [email, opaque]
      subject_claims: {{ phone_number: phone }}
      leeway: {leeway}s
      push: {{ token_sha256: {push} }}
    - name: polled
      issuer: "{poll_iss}"
      jwks_uri: "{poll_jwks}"
      subjects: "{iss}"
      subject_claims: {{ email: email }}
      poll: {{ url: "http://{poll_addr}/poll", interval: 50ms, token_file: "{token_file}" }}
"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        tx_iss = tx_idp.url,
        tx_jwks = tx_idp.jwks_url(),
        push = sha256_hex(PUSH_TOKEN),
        poll_iss = poll_idp.url,
        poll_jwks = poll_idp.jwks_url(),
        token_file = dir.join("poll.token").display(),
    );
    let control = start_control(&store, &extra).await;
    let echo = Echo::start().await.expect("echo");
    let (ws_addr, _) = ws_upstream().await;
    let yaml = format!(
        r#"listeners: [ {{ address: "127.0.0.1:0" }} ]
issuers:
  - {{ name: idp, issuer: "{iss}", jwks_uri: "{jwks}", audiences: [api], algorithms: [ES256] }}
upstreams:
  - {{ name: echo, url: "http://{echo}" }}
  - {{ name: chat, url: "http://{ws_addr}" }}
routes:
  - {{ name: chat, match: {{ path_prefix: /chat }}, upstream: chat, auth: {{ issuers: [idp] }} }}
  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}
revocation:
  control_url: http://{control}
  token: {READER_KEY}
"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        echo = echo.addr,
        control = control.addr,
    );
    let gateways = vec![start_gateway(&yaml).await, start_gateway(&yaml).await];
    // Let the control plane fetch the transmitters' keys.
    tokio::time::sleep(Duration::from_millis(300)).await;
    World {
        idp,
        user_key,
        tx,
        tx_idp,
        poll_tx,
        poll_idp,
        poll,
        control,
        store,
        extra,
        gateways,
        _echo: echo,
    }
}

/// A SET's claims from `iss` about `event` (its payload) for the subject `sub_id`.
fn set_claims(iss: &str, event: &str, payload: Value, sub_id: Value) -> Value {
    json!({
        "iss": iss,
        "aud": AUD,
        "iat": now(),
        "jti": format!("set-{:x}", fastrand::u64(..)),
        "sub_id": sub_id,
        "events": { event: payload },
    })
}

fn complex(iss: &str, sub: &str, sid: &str) -> Value {
    json!({ "format": "complex", "user": { "format": "iss_sub", "iss": iss, "sub": sub }, "session": { "format": "opaque", "id": sid } })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The code of the close frame `socket` gets within a second.
async fn closed_within_1s(socket: &mut Socket) -> CloseCode {
    loop {
        match tokio::time::timeout(Duration::from_secs(1), socket.next()).await {
            Err(_) => panic!("the WebSocket is still open after 1 s"),
            Ok(Some(Ok(Message::Close(Some(f))))) => return f.code,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("closed without a close frame: {other:?}"),
        }
    }
}

impl World {
    /// A WebSocket to the first gateway's chat route, with `token`.
    async fn chat(&self, token: &str) -> Socket {
        let mut req = format!("ws://{}/chat", self.gateways[0].addrs[0])
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("value"),
        );
        tokio_tungstenite::connect_async(req)
            .await
            .expect("handshake")
            .0
    }
    /// The status gateway `i` answers a request carrying `token`.
    async fn status_at(&self, i: usize, token: &str) -> u16 {
        get(self.gateways[i].addrs[0], "/", &[&bearer(token)])
            .await
            .status
    }
    fn sign(&self, claims: &Value) -> String {
        self.tx.mint_raw(
            &json!({ "alg": "RS256", "kid": "ssf-1", "typ": "secevent+jwt" }),
            claims,
        )
    }
    fn session_revoked(&self, sid: &str) -> Value {
        set_claims(
            &self.tx_idp.url,
            &format!("{CAEP}session-revoked"),
            json!({ "event_timestamp": now() }),
            complex(&self.idp.url, "42", sid),
        )
    }
    async fn push_with(&self, set: &str, headers: &[&str]) -> Resp {
        let mut head = format!(
            "POST /v1/ssf/events HTTP/1.1\nHost: control\nContent-Length: {}",
            set.len()
        );
        for h in headers {
            head.push('\n');
            head.push_str(h);
        }
        raw(self.control.addr, &head, set.as_bytes()).await
    }
    async fn push(&self, set: &str) -> Resp {
        let auth = format!("Authorization: Bearer {PUSH_TOKEN}");
        self.push_with(set, &["Content-Type: application/secevent+jwt", &auth])
            .await
    }
    fn token(&self, extra: Value) -> String {
        self.user_key.mint(&claims_with(&self.idp.url, &extra))
    }
    async fn entries(&self) -> Vec<jwtgate::revocation::Entry> {
        control_entries(&self.control).await
    }
    /// An operator lifts the entry at `cursor` through the API.
    async fn lift(&self, cursor: u64) -> Resp {
        request(
            self.control.addr,
            "DELETE",
            &format!("/v1/revocations/{cursor}"),
            &[&format!("Authorization: Bearer {WRITER_KEY}")],
        )
        .await
    }
    /// Wait until every gateway refuses `token` as revoked; how long that took.
    async fn refused_everywhere(&self, token: &str) -> Duration {
        let start = Instant::now();
        for gw in &self.gateways {
            loop {
                let r = get(gw.addrs[0], "/", &[&bearer(token)]).await;
                if r.status == 401 {
                    assert_eq!(r.json()["error_description"], "token revoked");
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "still accepted after 1 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        start.elapsed()
    }
}

/// A pushed `session-revoked` for a session closes that session's WebSocket and refuses its
/// tokens at both gateways within a second; another session of the same user is untouched.
/// 100 events measure the event → refusal latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_session_revoked_reaches_every_gateway_and_socket() {
    let w = world().await;
    let doomed = w.token(json!({ "sid": "s-1" }));
    let other = w.token(json!({ "sid": "s-2" }));
    let mut socket = w.chat(&doomed).await;
    for gw in &w.gateways {
        assert_eq!(get(gw.addrs[0], "/", &[&bearer(&doomed)]).await.status, 200);
    }

    let start = Instant::now();
    let r = w.push(&w.sign(&w.session_revoked("s-1"))).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(closed_within_1s(&mut socket).await, CloseCode::Policy);
    w.refused_everywhere(&doomed).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    for gw in &w.gateways {
        assert_eq!(get(gw.addrs[0], "/", &[&bearer(&other)]).await.status, 200);
    }
    let sid = w
        .entries()
        .await
        .into_iter()
        .find(|e| e.sid.as_deref() == Some("s-1"))
        .expect("sid entry");
    assert_eq!(
        sid.iss, w.idp.url,
        "revoked for the issuer the events are about"
    );

    // Latency over 100 events, push to refusal at both gateways.
    let mut took = Vec::with_capacity(100);
    for i in 0..100 {
        let sid = format!("lat-{i}");
        let token = w.token(json!({ "sid": sid }));
        let start = Instant::now();
        let r = w.push(&w.sign(&w.session_revoked(&sid))).await;
        assert_eq!(r.status, 202);
        w.refused_everywhere(&token).await;
        took.push(start.elapsed());
    }
    took.sort();
    eprintln!(
        "SSF event -> refusal at 2 gateways over 100 events: p50 {:?}, p99 {:?}, max {:?}",
        took[49], took[98], took[99]
    );
    assert!(took[98] < Duration::from_secs(1));
    let metrics = w.control.plane.metrics.render();
    assert!(
        metrics.contains(r#"jwtgate_ssf_events_total{event="session-revoked",result="revoked",transmitter="corp-ssf"} 101"#),
        "{metrics}"
    );
}

/// Every RFC 8935 error code, each for a SET that revokes nothing; a replay is acknowledged
/// and revokes nothing either, even after the revocation it made was deleted and the
/// control plane restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_replayed_sets_revoke_nothing() {
    let mut w = world().await;
    let good = w.session_revoked("s-x");
    let forger = Signer::new("rsa2048b.pem", Algorithm::RS256, "ssf-1");
    let header = json!({ "alg": "RS256", "kid": "ssf-1", "typ": "secevent+jwt" });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        w.sign(&c)
    };
    let auth = format!("Authorization: Bearer {PUSH_TOKEN}");
    let typed = "Content-Type: application/secevent+jwt";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("invalid_key", forger.mint_raw(&header, &good), vec![]),
        (
            "invalid_key",
            w.tx.mint_raw(
                &json!({ "alg": "RS256", "kid": "nope", "typ": "secevent+jwt" }),
                &good,
            ),
            vec![],
        ),
        (
            "invalid_key",
            w.tx.mint_raw(&json!({ "alg": "none", "typ": "secevent+jwt" }), &good),
            vec![],
        ),
        (
            "invalid_audience",
            with(&|c| c["aud"] = json!("https://other/")),
            vec![],
        ),
        (
            "invalid_issuer",
            with(&|c| c["iss"] = json!("https://stranger.test")),
            vec![],
        ),
        (
            "invalid_request",
            w.tx.mint_raw(&json!({ "alg": "RS256", "kid": "ssf-1" }), &good),
            vec![],
        ),
        (
            "invalid_request",
            w.tx.mint_raw(
                &json!({ "alg": "RS256", "kid": "ssf-1", "typ": "JWT" }),
                &good,
            ),
            vec![],
        ),
        (
            "invalid_request",
            with(&|c| c["iat"] = json!(now() + 3600)),
            vec![],
        ),
        (
            "invalid_request",
            with(&|c| c["iat"] = json!(now() - 3 * 86_400)),
            vec![],
        ),
        (
            "invalid_request",
            with(&|c| c["exp"] = json!(now() - 3600)),
            vec![],
        ),
        (
            "invalid_request",
            with(&|c| {
                c.as_object_mut().expect("o").remove("jti");
            }),
            vec![],
        ),
        (
            "invalid_request",
            with(&|c| {
                c.as_object_mut().expect("o").remove("sub_id");
            }),
            vec![],
        ),
        (
            "invalid_request",
            with(&|c| c["events"][format!("{CAEP}credential-change")] = json!({})),
            vec![],
        ),
        ("invalid_request", "not.a.set".to_owned(), vec![]),
        (
            "invalid_request",
            w.sign(&good),
            vec!["Content-Type: application/json".to_owned()],
        ),
        (
            "authentication_failed",
            w.sign(&good),
            vec![typed.to_owned()],
        ),
        (
            "authentication_failed",
            w.sign(&good),
            vec![typed.to_owned(), "Authorization: Bearer wrong".to_owned()],
        ),
        (
            "access_denied",
            w.poll_tx.mint_raw(
                &json!({ "alg": "ES384", "kid": "ssf-p", "typ": "secevent+jwt" }),
                &{
                    let mut c = good.clone();
                    c["iss"] = json!(w.poll_idp.url);
                    c
                },
            ),
            vec![],
        ),
    ];
    for (code, set, headers) in &cases {
        let headers: Vec<&str> = if headers.is_empty() {
            vec![typed, &auth]
        } else {
            headers.iter().map(String::as_str).collect()
        };
        let r = w.push_with(set, &headers).await;
        assert_eq!(
            r.status,
            400,
            "{code}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.json()["err"],
            *code,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["description"].is_string());
    }
    assert!(
        w.entries().await.is_empty(),
        "a refused SET revoked something"
    );
    let metrics = w.control.plane.metrics.render();
    assert!(metrics.contains(r#"result="refused""#), "{metrics}");

    // The genuine SET revokes; the same SET again is acknowledged and writes nothing.
    let set = w.sign(&good);
    assert_eq!(w.push(&set).await.status, 202);
    let entries = w.entries().await;
    assert_eq!(entries.len(), 1);
    assert_eq!(w.push(&set).await.status, 202);
    assert_eq!(w.entries().await.len(), 1);
    // An operator lifts the revocation; the old SET, replayed after a restart, does not
    // bring it back.
    let r = w.lift(entries[0].cursor).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.push(&set).await.status, 202);
    let lifted = |entries: Vec<jwtgate::revocation::Entry>| {
        entries.iter().all(|e| e.deleted || e.sid.is_none())
    };
    assert!(
        lifted(w.entries().await),
        "the replay revived the lifted revocation"
    );
    let config = jwtgate::config::ControlConfig::from_yaml(
        &control_yaml(&w.store, "127.0.0.1:0", &w.extra),
        std::path::Path::new("."),
        &|_| None,
    )
    .expect("config");
    w.control.shutdown(Duration::from_secs(1)).await;
    w.control = jwtgate::app::start_control_with(config, jwtgate::clock::Clock::adjustable())
        .await
        .expect("restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.push(&set).await.status, 202);
    assert!(
        lifted(w.entries().await),
        "the replay after a restart revived it"
    );
}

/// The revocation a SET should make: its kind and value, or none.
type Expect = Option<(&'static str, &'static str)>;

/// Each subject format and event type maps as the README's table says: a session or a
/// `sub` cutoff at the event's time for the transmitter's `subjects` issuer; events and
/// subjects the gateways cannot act on are acknowledged and counted, revoking nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_and_events_map_to_revocations() {
    let w = world().await;
    let iss = w.idp.url.clone();
    let at = now() - 100;
    let ev = |kind: &str| json!({ "event_timestamp": at, "kind": kind });
    let cases: Vec<(String, Value, Value, Expect)> = vec![
        (
            format!("{CAEP}session-revoked"),
            ev("a"),
            complex(&iss, "u1", "sess-9"),
            Some(("sid", "sess-9")),
        ),
        (
            format!("{CAEP}session-revoked"),
            ev("b"),
            json!({ "format": "iss_sub", "iss": iss, "sub": "u2" }),
            Some(("sub", "u2")),
        ),
        (
            format!("{CAEP}credential-change"),
            ev("c"),
            json!({ "format": "opaque", "id": "u3" }),
            Some(("sub", "u3")),
        ),
        (
            format!("{CAEP}token-claims-change"),
            ev("d"),
            json!({ "format": "email", "email": "ada@example.com" }),
            Some(("sub", "ada@example.com")),
        ),
        (
            format!("{RISC}account-disabled"),
            ev("e"),
            json!({ "format": "aliases", "identifiers": [ { "format": "account", "uri": "acct:u5@x" }, { "format": "iss_sub", "iss": iss, "sub": "u5" } ] }),
            Some(("sub", "u5")),
        ),
        (
            format!("{RISC}account-purged"),
            ev("f"),
            complex(&iss, "u6", "sess-6"),
            Some(("sub", "u6")),
        ),
        (
            format!("{RISC}credential-compromise"),
            ev("g"),
            json!({ "format": "iss_sub", "iss": iss, "sub": "u7" }),
            Some(("sub", "u7")),
        ),
        // A phone number by the claim `subject_claims` names.
        (
            format!("{RISC}account-disabled"),
            ev("i"),
            json!({ "format": "phone_number", "phone_number": "+1555" }),
            Some(("phone", "+1555")),
        ),
        // Not ours to act on: another issuer's user, an account URI, an event that
        // changes no token, an unknown type.
        (
            format!("{RISC}account-disabled"),
            ev("h"),
            json!({ "format": "iss_sub", "iss": "https://other.test", "sub": "u8" }),
            None,
        ),
        (
            format!("{RISC}account-disabled"),
            ev("j"),
            json!({ "format": "account", "uri": "acct:u@x" }),
            None,
        ),
        (
            format!("{CAEP}session-revoked"),
            ev("m"),
            complex("https://other.test", "u1", "sess-8"),
            None,
        ),
        (
            format!("{CAEP}assurance-level-change"),
            ev("k"),
            json!({ "format": "opaque", "id": "u9" }),
            None,
        ),
        (
            "https://example.com/event/custom".to_owned(),
            ev("l"),
            json!({ "format": "opaque", "id": "u9" }),
            None,
        ),
        (
            "https://schemas.openid.net/secevent/ssf/event-type/verification".to_owned(),
            json!({ "state": "abc" }),
            json!({ "format": "opaque", "id": "stream" }),
            None,
        ),
    ];
    for (event, payload, subject, want) in &cases {
        let before = w.entries().await.len();
        let set = w.sign(&set_claims(
            &w.tx_idp.url,
            event,
            payload.clone(),
            subject.clone(),
        ));
        let r = w.push(&set).await;
        assert_eq!(
            r.status,
            202,
            "{event}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let entries = w.entries().await;
        match want {
            None => assert_eq!(entries.len(), before, "{event} {subject} revoked something"),
            Some((kind, value)) => {
                assert_eq!(entries.len(), before + 1, "{event} {subject}");
                let e = entries.last().expect("entry");
                assert_eq!(e.iss, iss);
                match *kind {
                    "sid" => assert_eq!(e.sid.as_deref(), Some(*value)),
                    "phone" => {
                        assert_eq!(e.claim.as_deref(), Some("phone"));
                        assert_eq!(e.value.as_deref(), Some(*value));
                        assert_eq!(e.issued_before, Some(at + 1), "cut off at the event's time");
                    }
                    _ => {
                        assert_eq!(e.sub.as_deref(), Some(*value), "{event}");
                        assert_eq!(e.issued_before, Some(at + 1), "cut off at the event's time");
                    }
                }
            }
        }
    }
    // `aliases`: every identifier that maps is revoked by (an access token may carry `sub`
    // and not the phone number).
    let before = w.entries().await.len();
    let set = w.sign(&set_claims(
        &w.tx_idp.url,
        &format!("{RISC}account-disabled"),
        ev("n"),
        json!({ "format": "aliases", "identifiers": [ { "format": "phone_number", "phone_number": "+1777" }, { "format": "iss_sub", "iss": iss, "sub": "u11" } ] }),
    ));
    assert_eq!(w.push(&set).await.status, 202);
    let entries = w.entries().await;
    assert_eq!(entries.len(), before + 2);
    assert!(entries.iter().any(|e| e.sub.as_deref() == Some("u11")));
    assert!(entries.iter().any(|e| e.value.as_deref() == Some("+1777")));
    // The cutoff lands where the event says: a token of u7 issued before the event is
    // refused, one issued after it (a new sign-in) is not.
    let old = w.token(json!({ "sub": "u7", "iat": at - 10 }));
    let new = w.token(json!({ "sub": "u7", "iat": at + 10 }));
    w.refused_everywhere(&old).await;
    assert_eq!(w.status_at(0, &new).await, 200);
    // `event_timestamp` in the future is taken as now.
    let set = w.sign(&set_claims(
        &w.tx_idp.url,
        &format!("{CAEP}credential-change"),
        json!({ "event_timestamp": now() + 86_400 }),
        json!({ "format": "opaque", "id": "u10" }),
    ));
    assert_eq!(w.push(&set).await.status, 202);
    let e = w.entries().await.pop().expect("entry");
    assert!(e.issued_before.expect("cutoff") <= now() + 1);
    let metrics = w.control.plane.metrics.render();
    for line in [
        r#"jwtgate_ssf_events_total{event="other",result="ignored",transmitter="corp-ssf"} 1"#,
        r#"jwtgate_ssf_events_total{event="verification",result="ignored",transmitter="corp-ssf"} 1"#,
        r#"jwtgate_ssf_events_total{event="account-disabled",result="ignored",transmitter="corp-ssf"} 2"#,
        r#"jwtgate_ssf_events_total{event="account-disabled",result="revoked",transmitter="corp-ssf"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

/// `email` and `phone_number` subjects revoke by the token claim `subject_claims` names
/// (ASCII case aside), pushed or polled: the subject's WebSocket closes and its tokens
/// issued before the event are refused at both gateways; other users, and the same user's
/// tokens issued after the event, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_subjects_revoke_tokens_and_sockets_holding_the_claim() {
    let w = world().await;
    let at = now();
    let doomed = w.token(json!({ "phone": "+15550001", "iat": at - 5 }));
    let neighbour = w.token(json!({ "phone": "+15550002", "iat": at - 5 }));
    let later = w.token(json!({ "phone": "+15550001", "iat": at + 5 }));
    let mut socket = w.chat(&doomed).await;
    let set = w.sign(&set_claims(
        &w.tx_idp.url,
        &format!("{RISC}account-disabled"),
        json!({ "event_timestamp": at }),
        json!({ "format": "phone_number", "phone_number": "+15550001" }),
    ));
    assert_eq!(w.push(&set).await.status, 202);
    assert_eq!(closed_within_1s(&mut socket).await, CloseCode::Policy);
    w.refused_everywhere(&doomed).await;
    for gw in &w.gateways {
        for ok in [&neighbour, &later] {
            assert_eq!(get(gw.addrs[0], "/", &[&bearer(ok)]).await.status, 200);
        }
    }

    // Polled: an email subject, in another case than the token's claim.
    let grace = w.token(json!({ "email": "grace@EXAMPLE.com", "iat": at - 5 }));
    let other = w.token(json!({ "email": "grace@example.org", "iat": at - 5 }));
    let c = set_claims(
        &w.poll_idp.url,
        &format!("{CAEP}credential-change"),
        json!({ "event_timestamp": at }),
        json!({ "format": "email", "email": "Grace@Example.com" }),
    );
    let header = json!({ "alg": "ES384", "kid": "ssf-p", "typ": "secevent+jwt" });
    w.poll.offer(
        c["jti"].as_str().expect("jti"),
        &w.poll_tx.mint_raw(&header, &c),
    );
    let start = Instant::now();
    while w.status_at(1, &grace).await != 401 {
        assert!(start.elapsed() < Duration::from_secs(5), "not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.refused_everywhere(&grace).await;
    assert_eq!(w.status_at(0, &other).await, 200);
    let entries = w.entries().await;
    let e = entries
        .iter()
        .find(|e| e.claim.as_deref() == Some("email"))
        .expect("a claim entry");
    assert_eq!(
        (e.iss.as_str(), e.value.as_deref()),
        (w.idp.url.as_str(), Some("grace@example.com"))
    );
}

/// Poll delivery: SETs are committed, then acknowledged in the next poll; a forged one is
/// reported in `setErrs`; while the transmitter fails nothing is lost, and a SET delivered
/// again after its acknowledgement was lost writes nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_sets_are_committed_then_acknowledged() {
    let w = world().await;
    let header = json!({ "alg": "ES384", "kid": "ssf-p", "typ": "secevent+jwt" });
    let set_for = |sid: &str| {
        let c = set_claims(
            &w.poll_idp.url,
            &format!("{CAEP}session-revoked"),
            json!({}),
            complex(&w.idp.url, "42", sid),
        );
        (
            c["jti"].as_str().expect("jti").to_owned(),
            w.poll_tx.mint_raw(&header, &c),
        )
    };
    let (jti1, set1) = set_for("p-1");
    let forged_claims = set_claims(
        &w.poll_idp.url,
        &format!("{CAEP}session-revoked"),
        json!({}),
        complex(&w.idp.url, "42", "p-forged"),
    );
    let forged_jti = forged_claims["jti"].as_str().expect("jti").to_owned();
    let forged = w.tx.mint_raw(
        &json!({ "alg": "RS256", "kid": "ssf-p", "typ": "secevent+jwt" }),
        &forged_claims,
    );
    w.poll.offer(&jti1, &set1);
    w.poll.offer(&forged_jti, &forged);
    let token = w.token(json!({ "sid": "p-1" }));
    w.refused_everywhere(&token).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(w.poll.acked.lock().expect("lock").contains(&jti1)
        && w.poll
            .errors
            .lock()
            .expect("lock")
            .contains_key(&forged_jti))
    {
        assert!(Instant::now() < deadline, "not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        w.poll.errors.lock().expect("lock")[&forged_jti]["err"],
        "invalid_key"
    );
    assert!(!w.poll.acked.lock().expect("lock").contains(&forged_jti));
    assert!(w
        .entries()
        .await
        .iter()
        .all(|e| e.sid.as_deref() != Some("p-forged")));
    assert!(w
        .poll
        .auth
        .lock()
        .expect("lock")
        .iter()
        .all(|a| a.as_deref() == Some(&format!("Bearer {POLL_TOKEN}"))));

    // The transmitter fails; an event waits and is committed once it recovers.
    w.poll
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (jti2, set2) = set_for("p-2");
    w.poll.offer(&jti2, &set2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w
        .entries()
        .await
        .iter()
        .all(|e| e.sid.as_deref() != Some("p-2")));
    w.poll
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let token2 = w.token(json!({ "sid": "p-2" }));
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.status_at(1, &token2).await != 401 {
        assert!(Instant::now() < deadline, "not committed after recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Delivered again (its acknowledgement lost): acknowledged again, nothing new written.
    let before = w.entries().await.len();
    w.poll.offer(&jti1, &set1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while w
        .poll
        .acked
        .lock()
        .expect("lock")
        .iter()
        .filter(|a| **a == jti1)
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "redelivery not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.entries().await.len(), before);
    let acked: BTreeSet<String> = w.poll.acked.lock().expect("lock").iter().cloned().collect();
    assert!(acked.contains(&jti2));
    let metrics = w.control.plane.metrics.render();
    assert!(metrics.contains(r#"jwtgate_ssf_events_total{event="session-revoked",result="replayed",transmitter="polled"} 1"#), "{metrics}");
}

/// A SET's id is remembered exactly as long as the SET itself could be accepted: with the
/// clock moved past `max_age`, the remembered ids are purged, and the same SET, replayed,
/// is refused as too old — never applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_ids_outlive_the_acceptance_window() {
    // The default leeway, and one past the 60 s margin ids are kept beyond the window.
    for leeway in [30, 300] {
        let w = world_with_leeway(leeway).await;
        // `iat` up to the leeway ahead of the receiver's clock is accepted.
        let ahead = leeway - 10;
        let mut claims = w.session_revoked("s-w");
        claims["iat"] = json!(now() + ahead);
        let set = w.sign(&claims);
        assert_eq!(w.push(&set).await.status, 202);
        let r = w.lift(w.entries().await[0].cursor).await;
        assert_eq!(r.status, 200);
        let clock = &w.control.plane.clock;
        let store = &w.control.plane.store;
        // Just inside the window (`iat` no older than max_age + leeway): the id is still
        // there after a purge; the replay writes nothing.
        clock.advance(Duration::from_secs(86_400 + ahead + leeway - 10));
        store.purge(clock.unix()).await.expect("purge");
        assert_eq!(w.push(&set).await.status, 202, "leeway {leeway}");
        assert!(w
            .entries()
            .await
            .iter()
            .all(|e| e.deleted || e.sid.is_none()));
        // Past it: the id may be gone, and the SET is refused by its age.
        clock.advance(Duration::from_secs(120));
        store.purge(clock.unix()).await.expect("purge");
        let r = w.push(&set).await;
        assert_eq!(r.status, 400, "leeway {leeway}");
        assert_eq!(r.json()["err"], "invalid_request");
        assert!(w
            .entries()
            .await
            .iter()
            .all(|e| e.deleted || e.sid.is_none()));
    }
}

/// Poll delivery against the real PostgreSQL: while the store cannot commit, a polled SET is
/// neither acknowledged nor reported as refused, so the transmitter keeps it; once the store
/// is back it is committed, then acknowledged — nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_set_waits_while_the_store_fails() {
    let store = pg_url().await;
    let schema = store
        .rsplit("search_path%3D")
        .next()
        .expect("schema")
        .to_owned();
    let p = polled().await;
    let extra = format!(
        r#"shared_signals:
  audience: "{AUD}"
  transmitters:
    - name: polled
      issuer: "{iss}"
      jwks_uri: "{jwks}"
      subjects: "https://users.test"
      poll: {{ url: "http://{addr}/poll", interval: 50ms, token_file: "{token_file}" }}
"#,
        iss = p.idp.url,
        jwks = p.idp.jwks_url(),
        addr = p.addr,
        token_file = p.dir.join("poll.token").display(),
    );
    let control = start_control(&store, &extra).await;
    let (admin, conn) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    // The table SET ids are committed in goes away: every commit fails.
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.jwtgate_seen_messages RENAME TO away"
        ))
        .await
        .expect("rename");
    let claims = set_claims(
        &p.idp.url,
        &format!("{CAEP}session-revoked"),
        json!({}),
        complex("https://users.test", "42", "pg-1"),
    );
    let jti = claims["jti"].as_str().expect("jti").to_owned();
    let header = json!({ "alg": "ES384", "kid": "ssf-p", "typ": "secevent+jwt" });
    p.server.offer(&jti, &p.tx.mint_raw(&header, &claims));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!p.server.acked.lock().expect("lock").contains(&jti));
    assert!(!p.server.errors.lock().expect("lock").contains_key(&jti));
    assert!(control_entries(&control).await.is_empty());

    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.away RENAME TO jwtgate_seen_messages"
        ))
        .await
        .expect("rename");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.server.acked.lock().expect("lock").contains(&jti) {
        assert!(
            Instant::now() < deadline,
            "not acknowledged after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = control_entries(&control).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].sid.as_deref(), Some("pg-1"));
}

/// A transmitter that keeps refusing our report (it forgot the ids we acknowledge) does not
/// stall polling: after four refusals the report is dropped, and SETs offered since are
/// still received and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_report_is_dropped_and_polling_goes_on() {
    let w = world().await;
    w.poll
        .refusing_reports
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let header = json!({ "alg": "ES384", "kid": "ssf-p", "typ": "secevent+jwt" });
    let offer = |sid: &str| {
        let c = set_claims(
            &w.poll_idp.url,
            &format!("{CAEP}session-revoked"),
            json!({}),
            complex(&w.idp.url, "42", sid),
        );
        w.poll.offer(
            c["jti"].as_str().expect("jti"),
            &w.poll_tx.mint_raw(&header, &c),
        );
    };
    offer("r-1");
    w.refused_everywhere(&w.token(json!({ "sid": "r-1" })))
        .await;
    // From now on every poll carries the acknowledgement the transmitter refuses.
    offer("r-2");
    let later = w.token(json!({ "sid": "r-2" }));
    // Refusals back off 1, 2, 4 s (jittered) before the report is dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.status_at(0, &later).await != 401 {
        assert!(
            Instant::now() < deadline,
            "polling stalled behind a refused report"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
