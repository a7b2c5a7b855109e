//! OIDC Back-Channel Logout 1.0 and RFC 7009 against a real control plane, a real IdP
//! (JWKS over loopback) and a syncing gateway.

use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const CLIENT_SECRET: &str = "s3cret-client";

struct World {
    idp: Idp,
    key: Signer,
    control: jwtgate::app::RunningControl,
    gw: jwtgate::app::Running,
    _echo: Echo,
}

async fn world() -> World {
    let key = Signer::new("rsa2048.pem", Algorithm::RS256, "bcl");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let dir = temp_dir();
    let extra = format!(
        "issuers:\n  - {{ name: corp, issuer: \"{iss}\", jwks_uri: \"{jwks}\", audiences: [api], algorithms: [RS256] }}\nbackchannel_logout: {{ issuer: corp, client_ids: [orders-web, admin-web] }}\nrevoke_clients: [ {{ client_id: orders-web, secret_sha256: {} }} ]\n",
        sha256_hex(CLIENT_SECRET),
        iss = idp.url,
        jwks = idp.jwks_url()
    );
    let control = start_control(
        &format!("sqlite://{}", dir.join("rev.db").display()),
        &extra,
    )
    .await;
    let echo = Echo::start().await.expect("echo");
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nissuers:\n  - {{ name: corp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [RS256] }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [corp] }} }}\nrevocation:\n  control_url: http://{}\n  token: {READER_KEY}\n",
        idp.url,
        idp.jwks_url(),
        echo.addr,
        control.addr
    );
    let gw = start_gateway(&yaml).await;
    // Let the control plane's own key fetch complete.
    tokio::time::sleep(Duration::from_millis(300)).await;
    World {
        idp,
        key,
        control,
        gw,
        _echo: echo,
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl World {
    fn logout_claims(&self) -> Value {
        let now = now();
        json!({ "iss": self.idp.url, "aud": "orders-web", "iat": now, "exp": now + 120, "jti": format!("lo-{:x}", fastrand::u64(..)), "events": { EVENT: {} }, "sid": "sess-1" })
    }
    async fn post_form(&self, path: &str, body: &str, headers: &[&str]) -> Resp {
        let mut head = format!("POST {path} HTTP/1.1\nHost: control\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}", body.len());
        for h in headers {
            head.push('\n');
            head.push_str(h);
        }
        raw(self.control.addr, &head, body.as_bytes()).await
    }
    async fn logout(&self, token: &str) -> Resp {
        self.post_form(
            "/v1/backchannel-logout",
            &format!("logout_token={}", form_encode(token)),
            &[],
        )
        .await
    }
    async fn stored(&self) -> usize {
        control_entries(&self.control).await.len()
    }
    fn user_token(&self, extra: Value) -> String {
        let mut c = claims(&self.idp.url);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        self.key.mint(&c)
    }
    async fn until_refused(&self, token: &str) -> Duration {
        let start = Instant::now();
        loop {
            let r = get(self.gw.addrs[0], "/", &[&bearer(token)]).await;
            if r.status == 401 {
                assert_eq!(r.json()["error_description"], "token revoked");
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "still accepted after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Each rule of BCL §2.6 broken once is a 400 that revokes nothing; valid logout tokens
/// (sid only, sub only, both, explicitly typed, aud array) are a 200 with no-store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_token_conformance() {
    let w = world().await;
    let base = w.logout_claims();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = w.logout_claims();
        f(&mut c);
        c
    };
    let header = json!({ "alg": "RS256", "kid": "bcl", "typ": "logout+jwt" });
    let sign = |c: &Value| w.key.mint_raw(&header, c);
    let other = Signer::new("rsa2048b.pem", Algorithm::RS256, "bcl");
    let now = now();

    let invalid: Vec<(&str, String)> = vec![
        ("signature invalid", other.mint_raw(&header, &base)),
        (
            "algorithm not allowed",
            format!(
                "{}.{}.",
                b64(json!({ "alg": "none" }).to_string().as_bytes()),
                b64(base.to_string().as_bytes())
            ),
        ),
        (
            "algorithm not allowed",
            Signer::hmac(&fixture("rsa2048.pub.pem"), Algorithm::HS256)
                .mint_raw(&json!({ "alg": "HS256", "kid": "bcl" }), &base),
        ),
        (
            "issuer not allowed",
            sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
        ),
        (
            "audience not allowed",
            sign(&with(&|c| c["aud"] = json!("another-client"))),
        ),
        (
            "iat is too old",
            sign(&with(&|c| c["iat"] = json!(now - 600))),
        ),
        (
            "issued in the future",
            sign(&with(&|c| c["iat"] = json!(now + 600))),
        ),
        (
            "iat is missing",
            sign(&with(&|c| {
                drop(c.as_object_mut().expect("o").remove("iat"))
            })),
        ),
        (
            "jti is missing",
            sign(&with(&|c| {
                drop(c.as_object_mut().expect("o").remove("jti"))
            })),
        ),
        (
            "events is missing",
            sign(&with(&|c| {
                drop(c.as_object_mut().expect("o").remove("events"))
            })),
        ),
        (
            "events is not a JSON object",
            sign(&with(&|c| c["events"] = json!([EVENT]))),
        ),
        (
            "lacks the back-channel logout event",
            sign(&with(&|c| {
                c["events"] = json!({ "http://example.com/other": {} })
            })),
        ),
        (
            "event is not a JSON object",
            sign(&with(&|c| c["events"] = json!({ EVENT: "yes" }))),
        ),
        (
            "neither sid nor sub",
            sign(&with(&|c| {
                drop(c.as_object_mut().expect("o").remove("sid"))
            })),
        ),
        (
            "must not contain nonce",
            sign(&with(&|c| c["nonce"] = json!("n-1"))),
        ),
        (
            "is not logout+jwt",
            w.key.mint_raw(
                &json!({ "alg": "RS256", "kid": "bcl", "typ": "at+jwt" }),
                &base,
            ),
        ),
        (
            // Regression (log injection): the sender's `typ` is neither echoed nor logged raw.
            "`typ` is not logout+jwt",
            w.key.mint_raw(
                &json!({ "alg": "RS256", "kid": "bcl", "typ": "x\n2026-01-01 INFO forged line\u{1b}[31m" }),
                &base,
            ),
        ),
        (
            "token expired",
            sign(&with(&|c| c["exp"] = json!(now - 120))),
        ),
        (
            "token malformed",
            sign(&with(&|c| {
                drop(c.as_object_mut().expect("o").remove("exp"))
            })),
        ),
        (
            "unknown key",
            Signer::new("rsa2048.pem", Algorithm::RS256, "nope")
                .mint_raw(&json!({ "alg": "RS256", "kid": "nope" }), &base),
        ),
        (
            "sid is not a non-empty string",
            sign(&with(&|c| c["sid"] = json!(42))),
        ),
        ("malformed", "abc.def".to_owned()),
    ];
    assert!(invalid.len() >= 20);
    for (why, token) in &invalid {
        let r = w.logout(token).await;
        assert_eq!(r.status, 400, "{why}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "invalid_request");
        let d = r.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(d.contains(why), "expected {why:?}, got {d:?}");
        assert!(!d.contains("forged"), "the sender's text was echoed: {d:?}");
        assert_eq!(w.stored().await, 0, "{why}: something was revoked");
    }
    // Transport-level refusals.
    assert_eq!(
        w.post_form("/v1/backchannel-logout", "", &[]).await.status,
        400
    );
    let t = sign(&base);
    let dup = format!("logout_token={t}&logout_token={t}");
    assert_eq!(
        w.post_form("/v1/backchannel-logout", &dup, &[])
            .await
            .status,
        400
    );
    let r = raw(w.control.addr, &format!("POST /v1/backchannel-logout HTTP/1.1\nHost: c\nContent-Type: application/json\nContent-Length: {}", t.len() + 2), format!("\"{t}\"").as_bytes()).await;
    assert_eq!(r.status, 400);
    assert_eq!(w.stored().await, 0);

    // Valid: sid only; then the same jti again is a replay.
    let r = w.logout(&t).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = w.logout(&t).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap_or("")
        .contains("jti already used"));
    // sub only → a subject cutoff at now; both → the session; untyped and aud-array forms.
    let sub_only = sign(&with(&|c| {
        c.as_object_mut().expect("o").remove("sid");
        c["sub"] = json!("user-7");
    }));
    assert_eq!(w.logout(&sub_only).await.status, 200);
    let both = sign(&with(&|c| {
        c["sid"] = json!("sess-2");
        c["sub"] = json!("user-8");
    }));
    assert_eq!(w.logout(&both).await.status, 200);
    let untyped = w.key.mint_raw(
        &json!({ "alg": "RS256", "kid": "bcl" }),
        &with(&|c| {
            c["sid"] = json!("sess-3");
            c["aud"] = json!(["x", "admin-web"]);
        }),
    );
    assert_eq!(w.logout(&untyped).await.status, 200);
    let (entries, _) = w.control.plane.store.list(0, 100, now).await.expect("list");
    let kinds: Vec<(Option<String>, Option<String>)> = entries
        .iter()
        .map(|e| (e.sid.clone(), e.sub.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Some("sess-1".into()), None),
            (None, Some("user-7".into())),
            (Some("sess-2".into()), None),
            (Some("sess-3".into()), None),
        ]
    );
    assert!(entries[1].issued_before.is_some_and(|t| t >= now));
}

/// A user token with `sid` passes; the IdP posts a logout token; that token and every other
/// token of the session are refused within 1 s; another session of the same user passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_end_to_end() {
    let w = world().await;
    let a1 = w.user_token(json!({ "sub": "alice", "sid": "sess-A" }));
    let a2 = w.user_token(json!({ "sub": "alice", "sid": "sess-A" }));
    let b = w.user_token(json!({ "sub": "alice", "sid": "sess-B" }));
    for t in [&a1, &a2, &b] {
        assert_eq!(get(w.gw.addrs[0], "/", &[&bearer(t)]).await.status, 200);
    }
    let mut c = w.logout_claims();
    c["sid"] = json!("sess-A");
    c["sub"] = json!("alice");
    let r = w
        .logout(&w.key.mint_raw(
            &json!({ "alg": "RS256", "kid": "bcl", "typ": "logout+jwt" }),
            &c,
        ))
        .await;
    assert_eq!(r.status, 200);
    let took = w.until_refused(&a1).await;
    w.until_refused(&a2).await;
    assert_eq!(
        get(w.gw.addrs[0], "/", &[&bearer(&b)]).await.status,
        200,
        "another session of the same user"
    );
    println!("back-channel logout → token refused after {took:?}");
}

/// RFC 7009: client authentication, `200` for garbage, `400` without `token`, and a real
/// revocation that the gateway enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7009_end_to_end() {
    let w = world().await;
    let basic = |id: &str, secret: &str| {
        use base64::Engine;
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let client = basic("orders-web", CLIENT_SECRET);
    let token = w.user_token(json!({}));
    assert_eq!(
        get(w.gw.addrs[0], "/", &[&bearer(&token)]).await.status,
        200
    );

    // Bad or missing client credentials.
    for auth in [
        basic("orders-web", "wrong"),
        basic("someone", CLIENT_SECRET),
        format!("Authorization: Bearer {READER_KEY}"),
    ] {
        let r = w
            .post_form("/v1/revoke", &format!("token={token}"), &[&auth])
            .await;
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(r.json()["error"], "invalid_client");
    }
    assert_eq!(
        w.post_form("/v1/revoke", &format!("token={token}"), &[])
            .await
            .status,
        401
    );
    // Missing token.
    let r = w
        .post_form("/v1/revoke", "token_type_hint=access_token", &[&client])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    // Garbage and foreign tokens: 200, nothing stored.
    for garbage in [
        "garbage",
        "a.b.c",
        &Signer::new("rsa2048b.pem", Algorithm::RS256, "bcl").mint(&claims(&w.idp.url)),
    ] {
        let r = w
            .post_form("/v1/revoke", &format!("token={garbage}"), &[&client])
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(w.stored().await, 0);

    // The real thing, with a hint the server may ignore.
    let r = w
        .post_form(
            "/v1/revoke",
            &format!("token={token}&token_type_hint=refresh_token"),
            &[&client],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let took = w.until_refused(&token).await;
    println!("RFC 7009 revoke → token refused after {took:?}");

    // A token without jti: revoked by its sid; without either: by its digest (this token only).
    // One clock reading for all four: reading it again could cross a second and make the
    // two bare tokens identical (same claims, same digest).
    let t = now();
    let mut c = claims(&w.idp.url);
    c.as_object_mut().expect("o").remove("jti");
    c["sid"] = json!("s-9");
    c["iat"] = json!(t);
    let sid_token = w.key.mint(&c);
    let sibling = {
        c["iat"] = json!(t - 1);
        w.key.mint(&c)
    };
    c.as_object_mut().expect("o").remove("sid");
    let bare = w.key.mint(&c);
    let bare_sibling = {
        c["iat"] = json!(t - 2);
        w.key.mint(&c)
    };
    let writer = format!("Authorization: Bearer {WRITER_KEY}");
    assert_eq!(
        w.post_form("/v1/revoke", &format!("token={sid_token}"), &[&writer])
            .await
            .status,
        200
    );
    assert_eq!(
        w.post_form("/v1/revoke", &format!("token={bare}"), &[&client])
            .await
            .status,
        200
    );
    w.until_refused(&sid_token).await;
    w.until_refused(&sibling).await;
    w.until_refused(&bare).await;
    assert_eq!(
        get(w.gw.addrs[0], "/", &[&bearer(&bare_sibling)])
            .await
            .status,
        200,
        "only the digest-revoked token"
    );
}

/// RFC 7009 §2.1 client binding: a client may revoke only tokens issued to it (`azp` or
/// `client_id`); a writer API key may revoke any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7009_binds_the_token_to_its_client() {
    use base64::Engine;
    let w = world().await;
    let client = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("orders-web:{CLIENT_SECRET}"))
    );
    for other in [
        json!({ "azp": "admin-web" }),
        json!({ "client_id": "admin-web" }),
    ] {
        let token = w.user_token(other.clone());
        let r = w
            .post_form("/v1/revoke", &format!("token={token}"), &[&client])
            .await;
        assert_eq!(r.status, 400, "{other}");
        assert_eq!(r.json()["error"], "unauthorized_client");
        assert_eq!(
            get(w.gw.addrs[0], "/", &[&bearer(&token)]).await.status,
            200
        );
    }
    assert_eq!(w.stored().await, 0, "another client's token was revoked");
    let own = w.user_token(json!({ "azp": "orders-web" }));
    let r = w
        .post_form("/v1/revoke", &format!("token={own}"), &[&client])
        .await;
    assert_eq!(r.status, 200);
    w.until_refused(&own).await;
    let theirs = w.user_token(json!({ "azp": "admin-web" }));
    let r = w
        .post_form(
            "/v1/revoke",
            &format!("token={theirs}"),
            &[&format!("Authorization: Bearer {WRITER_KEY}")],
        )
        .await;
    assert_eq!(r.status, 200, "a writer key revokes any token");
    w.until_refused(&theirs).await;
}

/// Lapses: a sub-only back-channel logout also revokes tokens issued in the logout's own
/// second; an RFC 7009 revocation of a jti-less token keeps its session (`sid`) revoked
/// beyond that token's `exp`, since younger tokens of the session live longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_revoke_lapses_are_closed() {
    let w = world().await;
    let now = now();
    let same_second = w.user_token(json!({ "sub": "carol", "iat": now }));
    let mut logout = w.logout_claims();
    logout.as_object_mut().expect("claims").remove("sid");
    logout["sub"] = json!("carol");
    let r = w.logout(&w.key.mint(&logout)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    w.until_refused(&same_second).await;

    let mut c = claims(&w.idp.url);
    c.as_object_mut().expect("claims").remove("jti");
    c["sid"] = json!("sess-7009");
    c["exp"] = json!(now + 60);
    let token = w.key.mint(&c);
    let r = w
        .post_form(
            "/v1/revoke",
            &format!("token={token}"),
            &[&format!("Authorization: Bearer {WRITER_KEY}")],
        )
        .await;
    assert_eq!(r.status, 200);
    let (entries, _) = w.control.plane.store.list(0, 100, now).await.expect("list");
    let sid = entries
        .iter()
        .find(|e| e.sid.as_deref() == Some("sess-7009"))
        .expect("the session was revoked");
    assert!(
        sid.expires_at >= now + 86_000,
        "kept only until the token's exp: {}",
        sid.expires_at - now
    );
}

/// The unauthenticated endpoints are cheap to refuse: a form of thousands of fields is
/// refused in one linear pass, and bodies past 16 KiB are not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_endpoints_are_cheap_to_refuse() {
    let w = world().await;
    let many: String = (0..20_000).map(|i| format!("f{i}=x&")).collect();
    let many = &many[..many.len().min(16 * 1024 - 16)];
    let start = Instant::now();
    let r = w.post_form("/v1/backchannel-logout", many, &[]).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap_or("")
        .contains("fields"));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let big = format!("logout_token={}", "a".repeat(17 * 1024));
    for path in ["/v1/backchannel-logout", "/v1/revoke"] {
        let r = w
            .post_form(
                path,
                &big,
                &[&format!("Authorization: Bearer {WRITER_KEY}")],
            )
            .await;
        assert_eq!(r.status, 413, "{path}");
    }
}
