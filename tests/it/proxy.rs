//! The request path around verification: identity headers, token sources, path
//! normalization, upstream failures, metrics.

use std::time::Duration;

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

struct Setup {
    idp: Idp,
    echo: Echo,
    gw: jwtgate::app::Running,
    key: Signer,
}

async fn setup() -> Setup {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    // A port nothing listens on, for the 502 case; a listener that never answers, for 504.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let yaml = format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
admin: {{ address: "127.0.0.1:0" }}
issuers:
  - name: idp
    issuer: {iss}
    jwks_uri: {jwks}
    audiences: [api]
    algorithms: [ES256]
upstreams:
  - {{ name: echo, url: "http://{echo}" }}
  - {{ name: dead, url: "http://{dead}", connect_timeout: 1s }}
  - {{ name: silent, url: "http://{silent_addr}", timeout: 500ms }}
identity_headers:
  X-User-Id: sub
  X-User-Email: email
  X-User-Roles: realm_access.roles
  X-Auth-Issuer: iss
routes:
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: echo, auth: none }}
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: echo
    auth: {{ issuers: [idp], require: {{ claims: {{ realm_access.roles: {{ contains: admin }} }} }} }}
  - name: orders-write
    match: {{ path_prefix: /api/orders, methods: [POST, DELETE] }}
    upstream: echo
    auth:
      issuers: [idp]
      require:
        scopes: ["orders:write"]
        claims: {{ tenant: {{ one_of: [acme, globex] }} }}
  - {{ name: exact, match: {{ path: /exact }}, upstream: echo, auth: none }}
  - {{ name: hosted, match: {{ host: api.example.com, path_prefix: /h }}, upstream: echo, auth: none }}
  - name: live
    match: {{ path_prefix: /live }}
    upstream: echo
    auth: {{ issuers: [idp], token_sources: [header, {{ query: access_token }}, {{ cookie: session }}, {{ header: X-Api-Token }}] }}
  - name: keep
    match: {{ path_prefix: /keep }}
    upstream: echo
    auth: {{ issuers: [idp], forward_token: true }}
  - {{ name: payload, match: {{ path_prefix: /payload }}, upstream: echo, auth: {{ issuers: [idp], forward_payload: X-Jwt-Payload, identity_headers: {{ X-Tenant: org.tenant }} }} }}
  - {{ name: maybe-cookie, match: {{ path_prefix: /maybe-cookie }}, upstream: echo, auth: {{ issuers: [idp], optional: true, forward_token: true, token_sources: [{{ cookie: session }}] }} }}
  - {{ name: maybe, match: {{ path_prefix: /maybe }}, upstream: echo, auth: {{ issuers: [idp], optional: true }} }}
  - {{ name: cors, match: {{ path_prefix: /cors }}, upstream: echo, auth: {{ issuers: [idp], allow_preflight: true, token_sources: [header, {{ cookie: session }}] }} }}
  - {{ name: down, match: {{ path_prefix: /down }}, upstream: dead, auth: none }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: silent, auth: none }}
  - {{ name: default, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}
"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        echo = echo.addr
    );
    let gw = start_gateway(&yaml).await;
    Setup { idp, echo, gw, key }
}

impl Setup {
    fn token(&self, extra: serde_json::Value) -> String {
        self.key.mint(&claims_with(&self.idp.url, &extra))
    }
    fn a(&self) -> std::net::SocketAddr {
        self.gw.addrs[0]
    }
}

/// Client copies of identity headers never reach the upstream — any case, duplicated, or
/// named in `Connection` — on authenticated and on `auth: none` routes.
#[tokio::test]
async fn spoofed_identity_headers_never_reach_upstream() {
    let s = setup().await;
    let token = s.token(json!({ "email": "ada@example.com" }));
    let spoof = [
        "X-User-Id: 1",
        "x-user-id: 2",
        "X-USER-ID: 3",
        "X-Auth-Issuer: evil",
        "X-User-Roles: admin",
    ];
    for (path, auth) in [("/public/x", None), ("/other", Some(&token))] {
        let mut headers: Vec<String> = spoof.iter().map(|s| s.to_string()).collect();
        if let Some(t) = auth {
            headers.push(bearer(t));
        }
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let r = get(s.a(), path, &refs).await;
        assert_eq!(r.status, 200, "{path}");
        let ids = r.upstream_header("x-user-id");
        match auth {
            Some(_) => assert_eq!(ids, vec!["42".to_owned()], "{path}"),
            None => assert!(ids.is_empty(), "{path}: {ids:?}"),
        }
        assert!(r.upstream_header("x-user-roles").is_empty(), "{path}");
        let iss = r.upstream_header("x-auth-issuer");
        assert!(!iss.contains(&"evil".to_owned()), "{path}");
    }
    // Named in Connection: the client hopes the gateway drops its own header after setting it.
    let r = get(
        s.a(),
        "/other",
        &[
            &bearer(&token),
            "Connection: X-User-Id, X-User-Email",
            "X-User-Id: 7",
        ],
    )
    .await;
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    assert_eq!(
        r.upstream_header("x-user-email"),
        vec!["ada@example.com".to_owned()]
    );
    // Forwarding headers are the gateway's, not the client's.
    let r = get(
        s.a(),
        "/public/x",
        &[
            "X-Forwarded-For: 6.6.6.6",
            "Forwarded: for=6.6.6.6",
            "X-Forwarded-Host: evil",
        ],
    )
    .await;
    assert_eq!(
        r.upstream_header("x-forwarded-for"),
        vec!["127.0.0.1".to_owned()]
    );
    assert!(r.upstream_header("forwarded").is_empty());
    assert_eq!(
        r.upstream_header("x-forwarded-host"),
        vec!["gw.test".to_owned()]
    );
}

/// Identity values: dotted paths, arrays joined with `,`. A value that cannot be forwarded
/// faithfully refuses the request (it was once forwarded without the header: an
/// authenticated request with part of its identity missing).
#[tokio::test]
async fn identity_header_values() {
    let s = setup().await;
    let t = s.token(
        json!({ "realm_access": { "roles": ["admin", "ops"] }, "email": "ada@example.com" }),
    );
    let r = get(s.a(), "/admin/panel", &[&bearer(&t)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-user-roles"),
        vec!["admin,ops".to_owned()]
    );
    assert_eq!(r.upstream_header("x-auth-issuer"), vec![s.idp.url.clone()]);
    for email in [
        "bad\r\nX-Evil: 1",
        "jos\u{e9}@example.com",
        " ada@example.com",
        "tab\there",
    ] {
        let t = s.token(json!({ "email": email }));
        let r = get(s.a(), "/other", &[&bearer(&t)]).await;
        assert_eq!(r.status, 401, "{email:?}");
        assert_eq!(r.json()["error_description"], "identity claims not usable");
        assert!(r.upstream_header("x-evil").is_empty());
    }
}

/// Scopes (all-of, `scope` or `scp`) and claim matchers; failure is 403 insufficient_scope.
#[tokio::test]
async fn route_policy() {
    let s = setup().await;
    let cases = [
        (
            json!({ "scope": "orders:read orders:write", "tenant": "acme" }),
            200,
        ),
        (json!({ "scp": ["orders:write"], "tenant": "globex" }), 200),
        (json!({ "scope": "orders:read", "tenant": "acme" }), 403),
        (json!({ "scope": "orders:write" }), 403),
        (json!({ "scope": "orders:write", "tenant": "initech" }), 403),
        (
            json!({ "scope": "orders:write", "tenant": ["initech", "acme"] }),
            200,
        ),
        (json!({ "scope": "orders:writer", "tenant": "acme" }), 403),
    ];
    for (extra, want) in cases {
        let r = request(
            s.a(),
            "POST",
            "/api/orders",
            &[&bearer(&s.token(extra.clone())), "Content-Length: 0"],
        )
        .await;
        assert_eq!(r.status, want, "{extra}");
        if want == 403 {
            assert_eq!(r.challenge_error().as_deref(), Some("insufficient_scope"));
        }
    }
    // GET is not a write method: the route does not match and the default policy applies.
    let r = get(s.a(), "/api/orders", &[&bearer(&s.token(json!({})))]).await;
    assert_eq!(r.status, 200);
    // `contains` needs an array claim holding the value.
    for (roles, want) in [
        (json!(["admin"]), 200),
        (json!("admin"), 403),
        (json!(["user"]), 403),
    ] {
        let r = get(
            s.a(),
            "/admin",
            &[&bearer(
                &s.token(json!({ "realm_access": { "roles": roles } })),
            )],
        )
        .await;
        assert_eq!(r.status, want);
    }
}

/// Tokens from the query, a cookie or a custom header are removed before forwarding;
/// two tokens at once are a 400.
#[tokio::test]
async fn token_sources() {
    let s = setup().await;
    let t = s.token(json!({}));
    let r = get(s.a(), &format!("/live/x?a=1&access_token={t}&b=2"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/live/x?a=1&b=2");
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&t),
        "token reached the upstream"
    );
    let r = get(s.a(), &format!("/live/x?access%5Ftoken={t}"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/live/x");

    let r = get(
        s.a(),
        "/live/y",
        &[&format!("Cookie: theme=dark; session={t}; lang=en")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("cookie"),
        vec!["theme=dark; lang=en".to_owned()]
    );
    let r = get(s.a(), "/live/y", &[&format!("X-Api-Token: {t}")]).await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-api-token").is_empty());
    let r = get(s.a(), "/live/y", &[&bearer(&t)]).await;
    assert!(r.upstream_header("authorization").is_empty());

    for (path, headers) in [
        (format!("/live/z?access_token={t}"), vec![bearer(&t)]),
        (
            "/live/z".to_owned(),
            vec![format!("Cookie: session={t}"), bearer(&t)],
        ),
        (format!("/live/z?access_token={t}&access_token={t}"), vec![]),
        ("/live/z".to_owned(), vec![bearer(&t), bearer(&t)]),
    ] {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let r = get(s.a(), &path, &refs).await;
        assert_eq!(r.status, 400, "{path} {headers:?}");
        assert_eq!(r.json()["error"], "invalid_request");
    }
    // A route configured for the header only ignores a query token (and 401s without a header).
    let r = get(s.a(), &format!("/other?access_token={t}"), &[]).await;
    assert_eq!(r.status, 401);
    // forward_token: true keeps the Authorization header.
    let r = get(s.a(), "/keep", &[&bearer(&t)]).await;
    assert_eq!(
        r.upstream_header("authorization"),
        vec![format!("Bearer {t}")]
    );
}

/// At least 30 path cases: each is a 400, or is matched to the route whose policy then
/// applies — and the upstream receives exactly the path that was matched.
#[tokio::test]
async fn path_normalization_table() {
    let s = setup().await;
    // (raw target, expected status without a token, path the upstream must see)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/x", 200, Some("/public/x")),
        ("/public/../admin", 401, None),
        ("/public/./../admin/x", 401, None),
        ("//admin", 401, None),
        ("///admin///x", 401, None),
        ("/%2e%2e/admin", 400, None),
        ("/public/%2e%2e/admin", 400, None),
        ("/public/.%2E/admin", 400, None),
        ("/public/%2e/x", 400, None),
        ("/admin%2f", 400, None),
        ("/public%2fadmin", 400, None),
        ("/public%5cadmin", 400, None),
        ("/public\\..\\admin", 400, None),
        ("/ADMIN", 401, None),
        ("/admin;x", 400, None),
        ("/public;/../admin", 400, None),
        ("/admin/", 401, None),
        ("/adminx", 401, None),
        ("/a/./b", 401, None),
        ("/public/%00", 400, None),
        ("/public/%0d%0a", 400, None),
        ("/public/a%zz", 400, None),
        ("/public/a%2", 400, None),
        ("/%70ublic/x", 200, Some("/public/x")),
        ("/public/%7e", 200, Some("/public/~")),
        ("/public/a%20b", 200, Some("/public/a%20b")),
        ("/public/a%c3%a9", 200, Some("/public/a%C3%A9")),
        ("/public/x/..", 200, Some("/public/")),
        ("/public/x?q=../admin", 200, Some("/public/x?q=../admin")),
        ("/public", 200, Some("/public")),
        ("/publicity", 401, None),
        ("/..", 400, None),
        ("/public/../..", 400, None),
        ("/exact", 200, Some("/exact")),
        ("/exact/", 401, None),
        ("/exact/.", 401, None),
        ("*", 400, None),
        ("http://evil.example/public/x", 400, None),
        ("http://gw.test/public/x", 200, Some("/public/x")),
    ];
    assert!(cases.len() >= 30);
    for (target, want, seen) in cases {
        let before = s
            .echo
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst);
        let r = get(s.a(), target, &[]).await;
        assert_eq!(
            r.status,
            *want,
            "{target}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let forwarded = s
            .echo
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            - before;
        match seen {
            Some(p) => assert_eq!(r.upstream_target(), *p, "{target}"),
            None => assert_eq!(forwarded, 0, "{target} was forwarded"),
        }
    }
    // With a valid token, the rewritten admin paths reach the upstream normalized and
    // under the admin route's policy (which needs the admin role).
    let user = s.token(json!({}));
    let admin = s.token(json!({ "realm_access": { "roles": ["admin"] } }));
    for target in ["/public/../admin", "//admin", "/public/./../admin/x"] {
        assert_eq!(
            get(s.a(), target, &[&bearer(&user)]).await.status,
            403,
            "{target}"
        );
        let r = get(s.a(), target, &[&bearer(&admin)]).await;
        assert_eq!(r.status, 200);
        assert!(
            r.upstream_target().starts_with("/admin"),
            "{target} → {}",
            r.upstream_target()
        );
    }
    // Raw control bytes never pass.
    let r = raw(s.a(), "GET /public/a\x01b HTTP/1.1\nHost: gw.test", b"").await;
    assert_eq!(r.status, 400);
}

/// Hosts match without port, case-insensitively; a second Host header is refused.
#[tokio::test]
async fn host_matching() {
    let s = setup().await;
    let r = raw(s.a(), "GET /h/1 HTTP/1.1\nHost: API.Example.com:8443", b"").await;
    assert_eq!(r.status, 200);
    let r = raw(s.a(), "GET /h/1 HTTP/1.1\nHost: other.example.com", b"").await;
    assert_eq!(r.status, 401, "falls through to the default route");
    let r = raw(
        s.a(),
        "GET /h/1 HTTP/1.1\nHost: api.example.com\nHost: other",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
}

/// Upstream refusing connections → 502, not answering → 504, with no upstream details.
#[tokio::test]
async fn upstream_failures() {
    let s = setup().await;
    let r = get(s.a(), "/down", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error_description"], "upstream unavailable");
    let r = get(s.a(), "/slow", &[]).await;
    assert_eq!(r.status, 504);
    assert!(!String::from_utf8_lossy(&r.body).contains("127.0.0.1"));
}

/// No route → 404 (never forwarded); metrics count each outcome per route name.
#[tokio::test]
async fn metrics_and_admin() {
    let s = setup().await;
    let admin = s.gw.admin.expect("admin");
    let t = s.token(json!({}));
    assert_eq!(get(s.a(), "/other", &[&bearer(&t)]).await.status, 200);
    assert_eq!(get(s.a(), "/other", &[]).await.status, 401);
    assert_eq!(get(s.a(), "/other", &[&bearer("x.y.z")]).await.status, 401);
    assert_eq!(get(s.a(), "/%2e%2e/", &[]).await.status, 400);
    let m = String::from_utf8(get(admin, "/metrics", &[]).await.body).expect("utf8");
    for line in [
        "jwtgate_requests_total{outcome=\"allowed\",reason=\"ok\",route=\"default\"} 1",
        "jwtgate_requests_total{outcome=\"no_token\",reason=\"no_token\",route=\"default\"} 1",
        "jwtgate_requests_total{outcome=\"invalid_token\",reason=\"malformed\",route=\"default\"} 1",
        "jwtgate_requests_total{outcome=\"bad_request\",reason=\"bad_path\",route=\"(none)\"} 1",
        // Present at zero from the start, so dashboards and alerts see them.
        "jwtgate_requests_total{outcome=\"revoked\",reason=\"revoked\",route=\"default\"} 0",
        "jwtgate_requests_total{outcome=\"not_found\",reason=\"no_route\",route=\"(none)\"} 0",
        "jwtgate_jwks_keys{issuer=\"idp\"} 1",
        "jwtgate_token_cache_misses_total",
        "jwtgate_request_duration_seconds_bucket{route=\"default\"",
        "jwtgate_upstream_duration_seconds_bucket{upstream=\"echo\"",
        // Prometheus practice: process metrics, the build, live gauges, status classes,
        // and counters that exist at zero before anything happened.
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        &format!("jwtgate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "jwtgate_open_connections ",
        "jwtgate_upstream_requests_in_flight 0",
        "jwtgate_upstream_responses_total{class=\"2xx\",upstream=\"echo\"} 1",
        "jwtgate_upstream_responses_total{class=\"5xx\",upstream=\"echo\"} 0",
        "jwtgate_config_reloads_total{result=\"error\"} 0",
        "jwtgate_jwks_refresh_total{issuer=\"idp\",result=\"error\"} 0",
        "jwtgate_live_connections_closed_total{reason=\"revoked\"} 0",
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    assert!(!m.contains(&t), "a token in the metrics");
    let refreshed = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("jwtgate_jwks_last_refresh_timestamp_seconds{issuer=\"idp\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("last refresh timestamp");
    assert!((refreshed - now() as f64).abs() < 120.0, "{refreshed}");
    // No series for what cannot happen: no route is chosen before the path is checked.
    assert!(!m.contains("reason=\"no_route\",route=\"default\""), "{m}");
    assert!(!m.contains("reason=\"expired\",route=\"(none)\""), "{m}");
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
    assert_eq!(get(admin, "/readyz", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// `optional: true`: no token passes anonymously, with no identity (spoofed copies
/// stripped); a token that is there must be valid, or the request is refused.
#[tokio::test]
async fn optional_authentication() {
    let s = setup().await;
    let r = get(s.a(), "/maybe/x", &["X-User-Id: 1", "X-Auth-Issuer: evil"]).await;
    assert_eq!(r.status, 200, "anonymous passes");
    assert!(r.upstream_header("x-user-id").is_empty());
    assert!(r.upstream_header("x-auth-issuer").is_empty());
    let good = s.token(json!({}));
    let r = get(s.a(), "/maybe/x", &[&bearer(&good), "X-User-Id: 1"]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    assert!(
        r.upstream_header("authorization").is_empty(),
        "the token stays at the gateway"
    );
    let expired = s.token(json!({ "exp": now() - 3600 }));
    for (token, error) in [
        (expired.as_str(), "invalid_token"),
        ("x.y.z", "invalid_token"),
    ] {
        let r = get(s.a(), "/maybe/x", &[&bearer(token)]).await;
        assert_eq!(r.status, 401, "a bad token is refused, not ignored");
        assert_eq!(r.challenge_error().as_deref(), Some(error));
    }
    // Two tokens are as ambiguous here as anywhere; a stranger scheme is no token at all.
    let r = get(s.a(), "/maybe/x", &[&bearer(&good), &bearer(&good)]).await;
    assert_eq!(r.status, 400);
    let r = get(s.a(), "/maybe/x", &["Authorization: Basic dTpw"]).await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-user-id").is_empty());
    assert!(
        r.upstream_header("authorization").is_empty(),
        "nothing in a token carrier goes on unverified"
    );
    // A route reading a cookie (and forwarding verified tokens): a bearer token it does not
    // read is refused, not waved through anonymously; anonymous requests carry nothing on.
    let r = get(s.a(), "/maybe-cookie/x", &[&bearer("forged.token.here")]).await;
    assert_eq!(r.status, 400);
    let r = get(s.a(), "/maybe-cookie/x?access_token=forged", &[]).await;
    assert_eq!(r.status, 400);
    let r = get(
        s.a(),
        "/maybe-cookie/x",
        &["Cookie: theme=dark", "Authorization: JWT forged"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.upstream_header("authorization").is_empty(),
        "an Authorization of any scheme is not forwarded unverified"
    );
    // A parameter PHP reads as `access_token` (it stops at NUL) is a token too.
    for q in ["access_token%00=forged", "access_token%00x=forged"] {
        let r = get(s.a(), &format!("/maybe/x?{q}"), &[]).await;
        assert_eq!(r.status, 400, "{q}");
        let r = get(s.a(), &format!("/other?{q}"), &[&bearer(&good)]).await;
        assert_eq!(r.status, 400, "{q} beside a bearer token");
    }
    let r = get(
        s.a(),
        "/maybe-cookie/x",
        &[&format!("Cookie: session={good}")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    assert!(
        r.upstream_header("cookie")
            .iter()
            .any(|c| c.contains(&good)),
        "a verified token is forwarded as configured"
    );
}

/// `allow_preflight: true`: a CORS preflight (OPTIONS + Origin + Access-Control-Request-
/// Method) reaches the upstream without a token and without identity; nothing else does,
/// and routes without the option still demand a token for it.
#[tokio::test]
async fn cors_preflight_passes_only_where_allowed() {
    let s = setup().await;
    let preflight = [
        "Origin: https://app.example.com",
        "Access-Control-Request-Method: DELETE",
        "Access-Control-Request-Headers: authorization",
    ];
    let r = request(s.a(), "OPTIONS", "/cors/orders/1", &preflight).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "OPTIONS");
    assert!(r.upstream_header("x-user-id").is_empty());
    // A token on a preflight is not a browser's, and never reaches the upstream.
    let good = s.token(json!({}));
    let mut with_token = preflight.to_vec();
    let b = bearer(&good);
    with_token.push(&b);
    let r = request(s.a(), "OPTIONS", "/cors/orders/1", &with_token).await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("authorization").is_empty());
    assert!(r.upstream_header("x-user-id").is_empty());
    // Nor does a token in any carrier the route reads, even with `forward_token` elsewhere.
    let mut with_cookie = preflight.to_vec();
    let cookie = format!("Cookie: session={good}; theme=dark");
    with_cookie.push(&cookie);
    let r = request(s.a(), "OPTIONS", "/cors/orders/1", &with_cookie).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.upstream_header("cookie")
            .iter()
            .any(|c| c.contains(&good)),
        "{:?}",
        r.upstream_header("cookie")
    );
    // Not a preflight: a token is needed.
    for (method, headers) in [
        ("OPTIONS", vec!["Origin: https://app.example.com"]),
        ("OPTIONS", vec!["Access-Control-Request-Method: DELETE"]),
        ("GET", preflight.to_vec()),
        ("DELETE", preflight.to_vec()),
    ] {
        let r = request(s.a(), method, "/cors/orders/1", &headers).await;
        assert_eq!(r.status, 401, "{method} {headers:?}");
    }
    // A method override cannot turn the preflight into something else.
    let mut overridden = preflight.to_vec();
    overridden.push("X-HTTP-Method-Override: DELETE");
    let r = request(s.a(), "OPTIONS", "/cors/orders/1", &overridden).await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-http-method-override").is_empty());
    let r = request(
        s.a(),
        "OPTIONS",
        "/cors/orders/1?_method=DELETE",
        &preflight,
    )
    .await;
    assert_eq!(r.status, 400);
    // Routes without the option: the preflight needs a token like any request.
    let r = request(s.a(), "OPTIONS", "/other", &preflight).await;
    assert_eq!(r.status, 401);
}

/// `forward_payload`: the verified claims reach the upstream as base64url JSON in one
/// header; a route's own `identity_headers` come beside the global ones; client copies of
/// either never pass, on that route or any other.
#[tokio::test]
async fn verified_claims_forwarded_as_one_header() {
    use base64::Engine;
    let s = setup().await;
    let good = s.token(json!({ "email": "ada@example.com", "org": { "tenant": "acme" } }));
    let spoof = "X-Jwt-Payload: eyJzdWIiOiJyb290In0";
    let r = get(
        s.a(),
        "/payload/x",
        &[&bearer(&good), spoof, "X-Tenant: globex"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-tenant"), vec!["acme".to_owned()]);
    assert_eq!(
        r.upstream_header("x-user-id"),
        vec!["42".to_owned()],
        "global ones too"
    );
    // A route identity claim that cannot be forwarded faithfully refuses the request.
    let odd = s.token(json!({ "org": { "tenant": { "id": 1 } } }));
    assert_eq!(get(s.a(), "/payload/x", &[&bearer(&odd)]).await.status, 401);
    let values = r.upstream_header("x-jwt-payload");
    assert_eq!(values.len(), 1, "{values:?}");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&values[0])
            .expect("base64url"),
    )
    .expect("JSON");
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["iss"], s.idp.url.as_str());
    for (path, auth) in [("/public/x", None), ("/other", Some(bearer(&good)))] {
        let mut h = vec![
            spoof,
            "X_Jwt_Payload: eyJzdWIiOiJyb290In0",
            "X-Tenant: globex",
        ];
        if let Some(b) = &auth {
            h.push(b);
        }
        let r = get(s.a(), path, &h).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.upstream_header("x-jwt-payload").is_empty(), "{path}");
        assert!(r.upstream_header("x_jwt_payload").is_empty(), "{path}");
        assert!(r.upstream_header("x-tenant").is_empty(), "{path}");
    }
}
