//! TLS on the listener (rustls client handshakes, ALPN, HTTP/2, mTLS, certificate reload) and
//! https upstreams with a private CA — all over loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use jsonwebtoken::Algorithm;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

const SECRET: &str = "0123456789abcdef0123456789abcdef-tls";

pub(crate) fn tls(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub(crate) fn client_config(
    ca: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    cert: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls(ca)).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut c = if cert {
        let chain = CertificateDer::pem_file_iter(tls("client.pem"))
            .expect("pem")
            .map(|c| c.expect("cert"))
            .collect();
        b.with_client_auth_cert(
            chain,
            PrivateKeyDer::from_pem_file(tls("client.key")).expect("key"),
        )
        .expect("client cert")
    } else {
        b.with_no_client_auth()
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

fn gateway_yaml(echo: &str, listener_tls: &str, upstream_extra: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0", tls: {listener_tls} }} ]
issuers:
  - {{ name: s, issuer: https://s.example, secret: "{SECRET}", audiences: [api], algorithms: [HS256] }}
upstreams: [ {{ name: app, url: "{echo}" {upstream_extra} }} ]
identity_headers: {{ X-User-Id: sub }}
routes:
  - {{ name: api, match: {{ path_prefix: / }}, upstream: app, auth: {{ issuers: [s] }} }}
"#
    )
}

fn token() -> String {
    Signer::hmac(SECRET.as_bytes(), Algorithm::HS256).mint(&claims("https://s.example"))
}

fn listener_tls(dir: &Path, client_ca: bool) -> String {
    let ca = if client_ca {
        format!(", client_ca: \"{}\"", tls("ca.pem").display())
    } else {
        String::new()
    };
    format!(
        "{{ cert: \"{}\", key: \"{}\"{ca} }}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn cert_dir() -> PathBuf {
    let d = temp_dir();
    std::fs::copy(tls("server.pem"), d.join("cert.pem")).expect("copy");
    std::fs::copy(tls("server.key"), d.join("key.pem")).expect("copy");
    d
}

/// A gateway with a TLS listener (certificate files in a fresh folder) before an echo upstream.
async fn tls_gateway(client_ca: bool) -> (jwtgate::app::Running, Echo, PathBuf) {
    let echo = Echo::start().await.expect("echo");
    let dir = cert_dir();
    let gw = start_gateway(&gateway_yaml(
        &format!("http://{}", echo.addr),
        &listener_tls(&dir, client_ca),
        "",
    ))
    .await;
    (gw, echo, dir)
}

/// TLS 1.3 and 1.2 handshakes complete; ALPN picks h2; an h2 client makes concurrent
/// authenticated requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_alpn_and_http2() {
    let (gw, _echo, _dir) = tls_gateway(false).await;
    let a = gw.addrs[0];
    let s13 = connect(
        a,
        client_config(
            "ca.pem",
            &[&rustls::version::TLS13],
            &[b"h2", b"http/1.1"],
            false,
        ),
    )
    .await
    .expect("TLS 1.3");
    assert_eq!(
        s13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(s13.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let s12 = connect(
        a,
        client_config("ca.pem", &[&rustls::version::TLS12], &[b"http/1.1"], false),
    )
    .await
    .expect("TLS 1.2");
    assert_eq!(
        s12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(s12.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // HTTP/2 over the TLS 1.3 connection: 20 concurrent authenticated requests.
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s13),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let token = token();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://localhost/item/{i}"))
                .header("authorization", format!("Bearer {token}"))
                .body(Empty::<Bytes>::new())
                .expect("req");
            let resp = sender.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["path"], format!("/item/{i}"));
            assert!(v["headers"].to_string().contains("[\"x-user-id\",\"42\"]"));
            assert!(v["headers"]
                .to_string()
                .contains("[\"x-forwarded-proto\",\"https\"]"));
        }));
    }
    for t in tasks {
        t.await.expect("request");
    }
    // Without a token: 401 over h2 as well.
    let mut s = sender.clone();
    let resp = s
        .send_request(
            http::Request::get("https://localhost/x")
                .body(Empty::<Bytes>::new())
                .expect("req"),
        )
        .await
        .expect("resp");
    assert_eq!(resp.status(), 401);
}

/// An mTLS listener refuses a client without a certificate and serves one with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _echo, _dir) = tls_gateway(true).await;
    let a = gw.addrs[0];
    let refused = async {
        let mut s = connect(
            a,
            client_config("ca.pem", &[&rustls::version::TLS13], &[b"http/1.1"], false),
        )
        .await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    let mut s = connect(
        a,
        client_config("ca.pem", &[&rustls::version::TLS13], &[b"http/1.1"], true),
    )
    .await
    .expect("with a certificate");
    s.write_all(
        format!(
            "GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

/// Replacing the certificate files takes effect for new handshakes without a restart; a
/// broken replacement is refused and the old certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_on_file_change() {
    let (gw, _echo, dir) = tls_gateway(false).await;
    let a = gw.addrs[0];
    let client = client_config("ca.pem", &[&rustls::version::TLS13], &[b"http/1.1"], false);
    let served = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref()
            .1
            .peer_certificates()
            .map(|c| c[0].as_ref().to_vec())
    };
    let der = |name: &str| {
        CertificateDer::pem_file_iter(tls(name))
            .expect("pem")
            .next()
            .expect("cert")
            .expect("der")
            .as_ref()
            .to_vec()
    };
    let open = connect(a, client.clone()).await.expect("first cert");
    assert_eq!(served(&open), Some(der("server.pem")));
    std::fs::write(dir.join("cert.pem"), b"garbage").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = connect(a, client.clone())
        .await
        .expect("a broken file keeps the old certificate");
    assert_eq!(served(&s), Some(der("server.pem")));
    std::fs::copy(tls("server2.key"), dir.join("key.pem")).expect("copy");
    std::fs::copy(tls("server2.pem"), dir.join("cert.pem")).expect("copy");
    let start = std::time::Instant::now();
    loop {
        let s = connect(a, client.clone()).await.expect("handshake");
        if served(&s) == Some(der("server2.pem")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "new certificate not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);
}

/// A TLS upstream answering `{path, version}`; with `client_ca` it requires client certificates.
async fn tls_upstream(client_ca: bool) -> u16 {
    use hyper::service::service_fn;
    let (config, _) = jwtgate::tls::server_config(&jwtgate::config::TlsFiles {
        cert: tls("server.pem"),
        key: tls("server.key"),
        client_ca: client_ca.then(|| tls("ca.pem")),
    })
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!(
                        "{{\"path\":\"{}\",\"version\":\"{:?}\"}}",
                        req.uri().path(),
                        req.version()
                    );
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from(body)),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    port
}

/// An https upstream behind a private CA, over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_private_ca() {
    let port = tls_upstream(false).await;
    for (protocol, want) in [("h1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
        let extra = format!(
            ", ca: \"{}\", protocol: {protocol}",
            tls("ca.pem").display()
        );
        let yaml = gateway_yaml(&format!("https://localhost:{port}"), "null", &extra)
            .replace(", tls: null", "");
        let gw = start_gateway(&yaml).await;
        let r = get(gw.addrs[0], "/secure", &[&bearer(&token())]).await;
        assert_eq!(
            r.status,
            200,
            "{protocol}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["path"], "/secure");
        assert_eq!(r.json()["version"], want);
    }
    // Without the private CA the upstream is not trusted: 502, no details.
    let yaml =
        gateway_yaml(&format!("https://localhost:{port}"), "null", "").replace(", tls: null", "");
    let gw = start_gateway(&yaml).await;
    let r = get(gw.addrs[0], "/secure", &[&bearer(&token())]).await;
    assert_eq!(r.status, 502);
}

/// An upstream that requires a client certificate gets the configured one; without it, 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_client_certificate() {
    let port = tls_upstream(true).await;
    let ca = format!(", ca: \"{}\"", tls("ca.pem").display());
    let with_cert = format!(
        "{ca}, client_cert: \"{}\", client_key: \"{}\"",
        tls("client.pem").display(),
        tls("client.key").display()
    );
    for (extra, want) in [(with_cert, 200), (ca, 502)] {
        let yaml = gateway_yaml(&format!("https://localhost:{port}"), "null", &extra)
            .replace(", tls: null", "");
        let gw = start_gateway(&yaml).await;
        let r = get(gw.addrs[0], "/mutual", &[&bearer(&token())]).await;
        assert_eq!(
            r.status,
            want,
            "{extra}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// `require_client_cert`: a route that takes only mTLS clients refuses (403) the same
/// request arriving through a plain listener, or a TLS listener without client
/// certificates, and serves it with a verified certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_requires_client_certificate() {
    let echo = Echo::start().await.expect("echo");
    let dir = cert_dir();
    let yaml = format!(
        r#"
listeners:
  - {{ address: "127.0.0.1:0", tls: {mtls} }}
  - {{ address: "127.0.0.1:0", tls: {tls_only} }}
  - {{ address: "127.0.0.1:0" }}
upstreams: [ {{ name: app, url: "http://{echo}" }} ]
routes:
  - {{ name: ops, match: {{ path_prefix: /ops }}, upstream: app, auth: none, require_client_cert: true }}
  - {{ name: rest, match: {{ path_prefix: / }}, upstream: app, auth: none }}
"#,
        mtls = listener_tls(&dir, true),
        tls_only = listener_tls(&dir, false),
        echo = echo.addr
    );
    let gw = start_gateway(&yaml).await;
    async fn ask(mut s: tokio_rustls::client::TlsStream<TcpStream>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /ops/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }
    let with_cert = connect(
        gw.addrs[0],
        client_config("ca.pem", &[&rustls::version::TLS13], &[b"http/1.1"], true),
    )
    .await
    .expect("mtls");
    assert!(ask(with_cert).await.starts_with("HTTP/1.1 200"));
    let no_cert = connect(
        gw.addrs[1],
        client_config("ca.pem", &[&rustls::version::TLS13], &[b"http/1.1"], false),
    )
    .await
    .expect("tls");
    let got = ask(no_cert).await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert!(got.contains("client certificate required"));
    assert_eq!(get(gw.addrs[2], "/ops/x", &[]).await.status, 403);
    assert_eq!(get(gw.addrs[2], "/other", &[]).await.status, 200);
}
