//! Forward-auth listeners: decisions for another proxy, directly and behind real ones:
//! nginx `auth_request`, Envoy `ext_authz`, Caddy `forward_auth`, Traefik `ForwardAuth`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

struct Setup {
    idp: Idp,
    echo: Echo,
    gw: jwtgate::app::Running,
    key: Signer,
}

async fn setup(trusted: &str) -> Setup {
    setup_asked(trusted, "true").await
}

/// A gateway whose one listener answers decisions asked as `forward_auth` says.
async fn setup_asked(trusted: &str, forward_auth: &str) -> Setup {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0", forward_auth: {forward_auth} }} ]
trusted_proxies: [ "{trusted}" ]
issuers:
  - {{ name: idp, issuer: {iss}, jwks_uri: {jwks}, audiences: [api], algorithms: [ES256] }}
upstreams: [ {{ name: echo, url: "http://{echo}" }} ]
identity_headers: {{ X-User-Id: sub }}
routes:
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: echo, auth: none }}
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: echo
    auth: {{ issuers: [idp], require: {{ claims: {{ role: {{ equals: admin }} }} }} }}
  - {{ name: cors, match: {{ path_prefix: /cors }}, upstream: echo, auth: {{ issuers: [idp], allow_preflight: true, token_sources: [header, {{ cookie: sess }}, {{ query: tok }}] }} }}
  - {{ name: maybe, match: {{ path_prefix: /maybe }}, upstream: echo, auth: {{ issuers: [idp], optional: true, token_sources: [{{ cookie: sess }}] }} }}
  - {{ name: default, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp], forward_payload: X-Jwt-Payload }} }}
"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        echo = echo.addr,
    ))
    .await;
    Setup { idp, echo, gw, key }
}

impl Setup {
    fn token(&self, extra: serde_json::Value) -> String {
        self.key.mint(&claims_with(&self.idp.url, &extra))
    }
}

/// Each decision is the one the gateway would make for the described request: 200 with the
/// identity headers, or its refusal; nothing is forwarded. Ambiguous or malformed
/// descriptions are refused, and only trusted proxies may ask.
#[tokio::test]
async fn decisions_match_the_gateway() {
    let s = setup("127.0.0.1/32").await;
    let a = s.gw.addrs[0];
    let good = s.token(json!({}));
    let admin = s.token(json!({ "role": "admin" }));
    let ask = |uri: &str, method: &str, extra: Vec<String>| {
        let mut h = vec![
            format!("X-Original-URI: {uri}"),
            format!("X-Original-Method: {method}"),
            "X-Forwarded-Host: app.example".to_owned(),
            "X-Forwarded-Proto: https".to_owned(),
        ];
        h.extend(extra);
        h
    };
    let decide = |headers: Vec<String>| async move {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        get(a, "/", &refs).await
    };
    let r = decide(ask("/orders/1?x=1", "GET", vec![bearer(&good)])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-user-id"), Some("42"));
    assert!(r.header("x-jwt-payload").is_some(), "the claims header too");
    assert!(r.header("x-request-id").is_some());
    assert!(r.body.is_empty());
    // Refusals are the gateway's own, challenge included.
    let r = decide(ask("/orders/1", "DELETE", vec![])).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = decide(ask("/admin/x", "GET", vec![bearer(&good)])).await;
    assert_eq!(r.status, 403);
    let r = decide(ask("/admin/x", "GET", vec![bearer(&admin)])).await;
    assert_eq!(r.status, 200);
    // An `auth: none` route passes with no identity; a client copy of an identity header
    // (which the gateway cannot strip from the caller's request) is refused.
    let r = decide(ask("/public/x", "GET", vec![])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-user-id"), None);
    for spoof in [
        "X-User-Id: 1",
        "x_user_id: 1",
        "X-User_Id: 1",
        "X-Jwt-Payload: e30",
    ] {
        let r = decide(ask("/public/x", "GET", vec![spoof.into(), bearer(&good)])).await;
        assert_eq!(r.status, 400, "{spoof}");
        assert_eq!(
            r.json()["error_description"],
            "the request carries an identity header only the gateway may set"
        );
    }
    // Let through without a token (a preflight, an optional route), the described request
    // must carry no credential at all: the caller forwards it untouched.
    let preflight = |extra: Vec<String>| {
        let mut h = ask("/cors/orders", "OPTIONS", extra);
        h.push("Origin: https://app.example".into());
        h.push("Access-Control-Request-Method: DELETE".into());
        h
    };
    assert_eq!(decide(preflight(vec![])).await.status, 200);
    for credential in [
        bearer("forged.token.sig"),
        "Authorization: JWT forged".into(),
        "Cookie: sess=forged.cookie.tok".into(),
    ] {
        let r = decide(preflight(vec![credential.clone()])).await;
        assert_eq!(r.status, 400, "{credential}");
    }
    let r = decide(ask(
        "/cors/orders?tok=forged",
        "OPTIONS",
        vec![
            "Origin: https://app.example".into(),
            "Access-Control-Request-Method: DELETE".into(),
        ],
    ))
    .await;
    assert_eq!(r.status, 400, "a token in the query");
    assert_eq!(decide(ask("/maybe/x", "GET", vec![])).await.status, 200);
    let r = decide(ask(
        "/maybe/x",
        "GET",
        vec!["Authorization: Token forged".into()],
    ))
    .await;
    assert_eq!(r.status, 400);
    // The path is normalized before routing, exactly as when proxying.
    let r = decide(ask("/public/../admin/x", "GET", vec![bearer(&good)])).await;
    assert_eq!(r.status, 403, "the dot segment climbs into /admin");
    for (uri, method) in [
        ("/public/%2e%2e/admin", "GET"),
        ("/public/..%2fadmin", "GET"),
        ("http://evil.example/admin", "GET"),
        ("*", "GET"),
        ("/orders", "get"),
        ("/orders", "G ET"),
        ("/public#/../admin/x", "GET"),
    ] {
        let r = decide(ask(uri, method, vec![bearer(&good)])).await;
        assert_eq!(r.status, 400, "{method} {uri}");
    }
    // Two descriptions that disagree: which request is meant is unclear.
    let r = decide(ask(
        "/public/x",
        "GET",
        vec!["X-Forwarded-Uri: /admin/x".into()],
    ))
    .await;
    assert_eq!(r.status, 400);
    let r = decide(ask(
        "/public/x",
        "GET",
        vec!["X-Forwarded-Uri: /public/x".into()],
    ))
    .await;
    assert_eq!(r.status, 200, "the same description twice is fine");
    // Traefik's names.
    let traefik = |proto: &str| {
        vec![
            "X-Forwarded-Uri: /orders".to_owned(),
            "X-Forwarded-Method: POST".to_owned(),
            "X-Forwarded-Host: app.example".to_owned(),
            format!("X-Forwarded-Proto: {proto}"),
            bearer(&good),
        ]
    };
    assert_eq!(decide(traefik("https")).await.status, 200);
    assert_eq!(
        decide(traefik("HTTPS")).await.status,
        400,
        "an unknown scheme"
    );
    assert_eq!(decide(traefik("https, http")).await.status, 400);
    // Nothing falls back to the decision request's own line, host or scheme: each part
    // left out is refused.
    let full = traefik("https");
    for left_out in 0..4 {
        let mut h = full.clone();
        h.remove(left_out);
        let r = decide(h).await;
        assert_eq!(r.status, 400, "without {}", full[left_out]);
    }
    assert_eq!(get(a, "/orders", &[&bearer(&good)]).await.status, 400);
    assert_eq!(
        s.echo.stats.requests.load(Ordering::Relaxed),
        0,
        "nothing forwarded"
    );

    // A peer outside trusted_proxies gets no decision at all.
    let other = setup("10.0.0.0/8").await;
    let r = get(other.gw.addrs[0], "/", &["X-Original-URI: /public/x"]).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error_description"],
        "only trusted proxies may ask for decisions"
    );
}

/// A proxy from the system's packages, at the first of `paths` that exists.
fn installed(name: &str, paths: &[&'static str]) -> &'static str {
    paths
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("{name} is needed (apt-get install -y {name}; scripts/test installs it)")
        })
}

/// A fresh folder for a proxy's files, and a free loopback port for it to listen on.
fn workdir(name: &str) -> (std::path::PathBuf, u16, std::net::SocketAddr) {
    let dir = std::env::temp_dir().join(format!("jwtgate-{name}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    (dir, port, addr)
}

/// A proxy that scripts/test installs under target/test-tools.
fn test_tool(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-tools")
        .join(name);
    assert!(
        path.exists(),
        "{name} is needed at {} (scripts/test installs it)",
        path.display()
    );
    path
}

/// A proxy process of the test's, stopped when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proxy {
    /// Start `cmd` and wait until it accepts connections on `addr`.
    async fn start(mut cmd: Command, addr: std::net::SocketAddr) -> Proxy {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let proxy = Proxy(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "{program} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }
}

/// nginx in front, `auth_request` asking jwtgate: a valid token reaches the upstream with
/// the identity nginx took from the decision; no token, a bad one, or a path that climbs
/// into a protected route does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request() {
    let s = setup("127.0.0.1/32").await;
    let nginx = installed("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"]);
    let (dir, port, addr) = workdir("nginx");
    std::fs::create_dir_all(dir.join("tmp")).expect("dir");
    let d = dir.display();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_jwtgate;
      auth_request_set $jwt_user $upstream_http_x_user_id;
      proxy_set_header X-User-Id $jwt_user;
      proxy_pass http://{echo};
    }}
    location = /_jwtgate {{
      internal;
      proxy_pass http://{authz}/;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"#,
        echo = s.echo.addr,
        authz = s.gw.addrs[0],
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("conf");
    let conf = dir.join("nginx.conf");
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(&dir).arg("-c").arg(conf);
    let _nginx = Proxy::start(cmd, addr).await;
    let good = s.token(json!({}));
    let r = get(addr, "/orders/1", &[&bearer(&good)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    assert_eq!(get(addr, "/orders/1", &[]).await.status, 401);
    assert_eq!(
        get(addr, "/orders/1", &[&bearer("x.y.z")]).await.status,
        401
    );
    let expired = s.token(json!({ "exp": now() - 3600 }));
    assert_eq!(
        get(addr, "/orders/1", &[&bearer(&expired)]).await.status,
        401
    );
    let r = get(addr, "/public/../admin/x", &[&bearer(&good)]).await;
    assert_eq!(
        r.status, 403,
        "nginx routes to /admin; so does the decision"
    );
    // A path jwtgate refuses outright (400) becomes nginx's 500: still no access.
    let r = get(addr, "/public/%2e%2e/admin/x", &[&bearer(&good)]).await;
    assert_ne!(r.status, 200);
    let r = get(addr, "/public/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), Vec::<String>::new());
    // A client copy of the identity header never reaches the upstream: nginx forwards the
    // client's headers to the decision, which refuses them (nginx answers 500).
    let before = s.echo.stats.requests.load(Ordering::Relaxed);
    for path in ["/public/x", "/orders/1"] {
        let r = get(addr, path, &[&bearer(&good), "X-User-Id: spoofed"]).await;
        assert_ne!(r.status, 200, "{path}");
    }
    assert_eq!(s.echo.stats.requests.load(Ordering::Relaxed), before);
}

/// Envoy in front, `ext_authz` asking jwtgate through its HTTP service, which describes the
/// original request with its own line under a path prefix: the same decisions as behind
/// nginx, and a client's identity header or underscore look-alike never reaches the
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz() {
    let s = setup_asked(
        "127.0.0.1/32",
        "{ original: request_line, path_prefix: /check }",
    )
    .await;
    let authz = s.gw.addrs[0];
    let envoy = test_tool("envoy");
    let (dir, port, addr) = workdir("envoy");
    let cluster = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "{{ name: {name}, type: STATIC, load_assignment: {{ cluster_name: {name}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }} }} ] }} ] }} }}",
            ip = addr.ip(),
            port = addr.port()
        )
    };
    // The recipe of the README: the scheme from Envoy itself (use_remote_address), the
    // identity headers and cookies sent along to be refused or read, underscore names
    // refused at the edge.
    let conf = format!(
        r#"
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
          common_http_protocol_options: {{ headers_with_underscores_action: REJECT_REQUEST }}
          route_config:
            virtual_hosts:
            - {{ name: app, domains: ["*"], routes: [ {{ match: {{ prefix: "/" }}, route: {{ cluster: app }} }} ] }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              http_service:
                server_uri: {{ uri: "http://{authz}", cluster: jwtgate, timeout: 1s }}
                path_prefix: /check
                authorization_request:
                  allowed_headers:
                    patterns: [ {{ exact: cookie }}, {{ exact: x-forwarded-proto }}, {{ exact: x-user-id }}, {{ exact: x-jwt-payload }} ]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [ {{ exact: x-user-id }}, {{ exact: x-jwt-payload }} ]
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - {jwtgate}
  - {app}
"#,
        jwtgate = cluster("jwtgate", authz),
        app = cluster("app", s.echo.addr),
    );
    let conf_path = dir.join("envoy.yaml");
    std::fs::write(&conf_path, conf).expect("conf");
    let mut cmd = Command::new(&envoy);
    cmd.arg("-c").arg(conf_path);
    cmd.args([
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "error",
    ]);
    let _envoy = Proxy::start(cmd, addr).await;

    let good = s.token(json!({}));
    let r = get(addr, "/orders/1?q=1", &[&bearer(&good)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    assert_eq!(r.upstream_header("x-jwt-payload").len(), 1);
    let r = get(addr, "/orders/1", &[]).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "the gateway's challenge reaches the client"
    );
    assert_eq!(
        get(addr, "/orders/1", &[&bearer("x.y.z")]).await.status,
        401
    );
    let admin = s.token(json!({ "role": "admin" }));
    assert_eq!(get(addr, "/admin/x", &[&bearer(&admin)]).await.status, 200);
    let r = get(addr, "/public/../admin/x", &[&bearer(&good)]).await;
    assert_eq!(
        r.status, 403,
        "Envoy routes to /admin; so does the decision"
    );
    assert_ne!(
        get(addr, "/public/%2e%2e/admin/x", &[&bearer(&good)])
            .await
            .status,
        200
    );
    // A cookie token is read from the cookie Envoy sends along.
    let r = get(addr, "/maybe/x", &[&format!("Cookie: sess={good}")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    let r = get(addr, "/public/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), Vec::<String>::new());
    // Client copies of identity headers, and underscore look-alikes, never reach the
    // upstream.
    let before = s.echo.stats.requests.load(Ordering::Relaxed);
    for path in ["/public/x", "/orders/1"] {
        for spoof in [
            "X-User-Id: spoofed",
            "X_User_Id: spoofed",
            "X-Jwt-Payload: e30",
        ] {
            let r = get(addr, path, &[&bearer(&good), spoof]).await;
            assert_ne!(r.status, 200, "{path} {spoof}");
        }
    }
    assert_eq!(s.echo.stats.requests.load(Ordering::Relaxed), before);

    // Asked directly, the listener wants the prefix and the scheme.
    let direct = |path: &'static str, proto: Option<&'static str>| {
        let good = good.clone();
        async move {
            let b = bearer(&good);
            let mut h = vec![b.as_str()];
            if let Some(p) = proto {
                h.push(p);
            }
            get(authz, path, &h).await.status
        }
    };
    assert_eq!(
        direct("/check/orders/1", Some("X-Forwarded-Proto: https")).await,
        200
    );
    assert_eq!(direct("/check/orders/1", None).await, 400, "no scheme");
    assert_eq!(
        direct("/orders/1", Some("X-Forwarded-Proto: https")).await,
        400,
        "no prefix"
    );
    assert_eq!(
        direct("/checkout/1", Some("X-Forwarded-Proto: https")).await,
        400
    );
    assert_eq!(
        direct("/check?x=1", Some("X-Forwarded-Proto: https")).await,
        400
    );
}

/// Caddy in front, `forward_auth` asking jwtgate with `X-Forwarded-*` headers, as the README
/// recipe has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth() {
    let s = setup("127.0.0.1/32").await;
    let caddy = installed("caddy", &["/usr/bin/caddy", "/usr/local/bin/caddy"]);
    let (dir, port, addr) = workdir("caddy");
    let conf = format!(
        "{{\n  admin off\n  auto_https off\n}}\n\
         http://:{port} {{\n\
           forward_auth {authz} {{\n    uri /\n    copy_headers X-User-Id X-Jwt-Payload\n  }}\n\
           reverse_proxy {echo}\n}}\n",
        authz = s.gw.addrs[0],
        echo = s.echo.addr,
    );
    let conf_path = dir.join("Caddyfile");
    std::fs::write(&conf_path, conf).expect("conf");
    let mut cmd = Command::new(caddy);
    cmd.arg("run")
        .arg("--config")
        .arg(conf_path)
        .arg("--adapter")
        .arg("caddyfile");
    cmd.env("HOME", &dir)
        .env("XDG_DATA_HOME", &dir)
        .env("XDG_CONFIG_HOME", &dir);
    let _caddy = Proxy::start(cmd, addr).await;
    // No identity on an anonymous pass. Caddy before 2.10 sets the unfilled placeholder
    // itself (caddyserver/caddy#6610), which names no user.
    decisions_through(&s, addr, &|ids: &[String]| {
        ids.iter()
            .all(|v| v == "{http.reverse_proxy.header.X-User-Id}")
    })
    .await;
}

/// What every proxy in front must show: the gateway's decisions, its challenge, identity
/// only from a verified token (`anonymous` judges what an anonymous pass carries), spoofed
/// identity headers refused, and the client's own `X-Forwarded-Uri` not believed.
async fn decisions_through(
    s: &Setup,
    addr: std::net::SocketAddr,
    anonymous: &dyn Fn(&[String]) -> bool,
) {
    let good = s.token(json!({}));
    let r = get(addr, "/orders/1?q=1", &[&bearer(&good)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    let r = get(addr, "/orders/1", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let expired = s.token(json!({ "exp": now() - 3600 }));
    assert_eq!(
        get(addr, "/orders/1", &[&bearer(&expired)]).await.status,
        401
    );
    assert_eq!(get(addr, "/admin/x", &[&bearer(&good)]).await.status, 403);
    let r = get(addr, "/public/x", &[]).await;
    assert_eq!(r.status, 200);
    let ids = r.upstream_header("x-user-id");
    assert!(anonymous(&ids), "{ids:?}");
    // The proxy sends the client's headers along: copies of identity headers are refused.
    let before = s.echo.stats.requests.load(Ordering::Relaxed);
    for path in ["/public/x", "/orders/1"] {
        for spoof in ["X-User-Id: spoofed", "X_User_Id: spoofed"] {
            let r = get(addr, path, &[&bearer(&good), spoof]).await;
            assert_ne!(r.status, 200, "{path} {spoof}");
        }
    }
    assert_eq!(s.echo.stats.requests.load(Ordering::Relaxed), before);
    let r = get(
        addr,
        "/admin/x",
        &[&bearer(&good), "X-Forwarded-Uri: /public/x"],
    )
    .await;
    assert_eq!(
        r.status, 403,
        "the client's X-Forwarded-Uri is not believed"
    );
}

/// Traefik in front, `forwardAuth` asking jwtgate with `X-Forwarded-*` headers, as the
/// README recipe has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth() {
    let s = setup("127.0.0.1/32").await;
    let traefik = test_tool("traefik");
    let (dir, port, addr) = workdir("traefik");
    let routes = format!(
        r#"
http:
  routers:
    app: {{ rule: "PathPrefix(`/`)", entryPoints: [web], service: app, middlewares: [jwtgate] }}
  middlewares:
    jwtgate:
      forwardAuth:
        address: http://{authz}/
        authResponseHeaders: [X-User-Id, X-Jwt-Payload]
  services:
    app: {{ loadBalancer: {{ servers: [ {{ url: "http://{echo}" }} ] }} }}
"#,
        authz = s.gw.addrs[0],
        echo = s.echo.addr,
    );
    let routes_path = dir.join("routes.yaml");
    std::fs::write(&routes_path, routes).expect("routes");
    let mut cmd = Command::new(traefik);
    cmd.arg(format!("--entryPoints.web.address=127.0.0.1:{port}"))
        .arg(format!(
            "--providers.file.filename={}",
            routes_path.display()
        ))
        .args([
            "--log.level=ERROR",
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
        ])
        .current_dir(&dir);
    let _traefik = Proxy::start(cmd, addr).await;
    // Traefik reads the routes after it listens: wait for them.
    let good = s.token(json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(addr, "/orders/1", &[&bearer(&good)]).await.status == 404 {
        assert!(Instant::now() < deadline, "Traefik did not load its routes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    decisions_through(&s, addr, &|ids: &[String]| ids.is_empty()).await;
}
