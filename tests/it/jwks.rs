//! Key handling against a real IdP: rotation, unknown-kid floods, outages, discovery,
//! files, and documents with unusable or oversized content.

use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn yaml(keys: &str, echo: &Echo, extra: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
admin: {{ address: "127.0.0.1:0" }}
issuers:
  - name: idp
    {keys}
    audiences: [api]
    algorithms: [RS256, ES256, EdDSA]
    {extra}
upstreams: [ {{ name: echo, url: "http://{echo}" }} ]
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}
"#,
        echo = echo.addr
    )
}

fn uri_keys(idp: &Idp) -> String {
    format!("issuer: {}\n    jwks_uri: {}", idp.url, idp.jwks_url())
}

/// A key added at the IdP is picked up by one refetch when a token names its kid.
#[tokio::test]
async fn rotation_needs_one_refetch() {
    let old = Signer::new("rsa2048.pem", Algorithm::RS256, "old");
    let new = Signer::new("rsa2048b.pem", Algorithm::RS256, "new");
    let idp = Idp::start(vec![old.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(&uri_keys(&idp), &echo, "jwks_refetch_interval: 1s")).await;
    let a = gw.addrs[0];
    assert_eq!(
        get(a, "/", &[&bearer(&old.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
    let before = idp.fetches();

    idp.set_keys(vec![old.jwk.clone(), new.jwk.clone()]);
    let r = get(a, "/", &[&bearer(&new.mint(&claims(&idp.url)))]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(idp.fetches(), before + 1, "exactly one refetch");
    // The old key still works, and a removed key stops working after the next refresh.
    assert_eq!(
        get(a, "/", &[&bearer(&old.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
    let cached_old = old.mint(&claims(&idp.url));
    assert_eq!(get(a, "/", &[&bearer(&cached_old)]).await.status, 200);
    idp.set_keys(vec![new.jwk.clone()]);
    // Past `jwks_refetch_interval`, so an unknown kid may fetch again.
    gw.gateway.clock.advance(Duration::from_millis(1100));
    // Unknown kid → refetch brings the new set, which drops "old": even the cached token fails.
    let unknown = Signer::new("rsa2048b.pem", Algorithm::RS256, "nope");
    assert_eq!(
        get(a, "/", &[&bearer(&unknown.mint(&claims(&idp.url)))])
            .await
            .status,
        401
    );
    let r = get(a, "/", &[&bearer(&cached_old)]).await;
    assert_eq!(
        r.status, 401,
        "a token verified with a removed key is not served from the cache"
    );
}

/// 1,000 tokens with random kids, 50 at a time, cause at most a handful of JWKS fetches.
#[tokio::test]
async fn random_kid_flood_is_rate_limited() {
    let good = Signer::new("ec256.pem", Algorithm::ES256, "good");
    let idp = Idp::start(vec![good.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(&uri_keys(&idp), &echo, "")).await;
    let a = gw.addrs[0];
    let before = idp.fetches();
    let mut refused = 0;
    for batch in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let s = Signer::new(
                "ec256.pem",
                Algorithm::ES256,
                &format!("rnd-{batch}-{i}-{}", fastrand::u64(..)),
            );
            let token = s.mint(&claims(&idp.url));
            tasks.push(tokio::spawn(async move {
                get(a, "/", &[&bearer(&token)]).await.status
            }));
        }
        for t in tasks {
            if t.await.expect("task") == 401 {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1000);
    let fetched = idp.fetches() - before;
    assert!(fetched <= 3, "{fetched} JWKS fetches for 1000 random kids");
    assert_eq!(
        get(a, "/", &[&bearer(&good.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
}

/// IdP down: cached keys keep working; past `jwks_max_stale` the gateway fails closed.
#[tokio::test]
async fn idp_outage_serves_cached_keys_then_fails_closed() {
    let key = Signer::new("ed25519.pem", Algorithm::EdDSA, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(
        &uri_keys(&idp),
        &echo,
        "jwks_refresh: 1s\n    jwks_max_stale: 3s",
    ))
    .await;
    let a = gw.addrs[0];
    let admin = gw.admin.expect("admin");
    assert_eq!(get(admin, "/readyz", &[]).await.status, 200);
    let token = key.mint(&claims(&idp.url));
    assert_eq!(get(a, "/", &[&bearer(&token)]).await.status, 200);

    idp.set_down(true);
    let clock = &gw.gateway.clock;
    clock.advance(Duration::from_millis(1500));
    // Still within max_stale: a fresh (uncached) token verifies with the cached key.
    assert_eq!(
        get(a, "/", &[&bearer(&key.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
    clock.advance(Duration::from_millis(2500));
    let r = get(a, "/", &[&bearer(&key.mint(&claims(&idp.url)))]).await;
    assert_eq!(r.status, 503, "past jwks_max_stale");
    assert_eq!(r.json()["error_description"], "signing keys unavailable");
    // Fail closed for cached tokens too.
    assert_eq!(get(a, "/", &[&bearer(&token)]).await.status, 503);
    assert_eq!(get(admin, "/readyz", &[]).await.status, 503);
    let metrics = String::from_utf8(get(admin, "/metrics", &[]).await.body).expect("utf8");
    assert!(metrics.contains("jwtgate_jwks_refresh_total{issuer=\"idp\",result=\"error\"}"));

    idp.set_down(false);
    // The background refresh (every `jwks_refresh`, 1 s) brings the keys back.
    let start = Instant::now();
    while get(a, "/", &[&bearer(&token)]).await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "recovers once the IdP is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Discovery finds the JWKS through `/.well-known/openid-configuration`.
#[tokio::test]
async fn discovery() {
    let key = Signer::new("rsa2048.pem", Algorithm::RS256, "d1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(
        &format!("issuer: {}\n    discovery: true", idp.url),
        &echo,
        "",
    ))
    .await;
    assert_eq!(
        get(gw.addrs[0], "/", &[&bearer(&key.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
}

/// Unusable keys are skipped one by one; the usable ones in the same document still work.
#[tokio::test]
async fn unusable_keys_skipped() {
    let good = Signer::new("ec256.pem", Algorithm::ES256, "good");
    // A 1024-bit modulus (aws-lc will not even load the fixture's 1024-bit key for signing).
    let mut small = Signer::new("rsa2048.pem", Algorithm::RS256, "small");
    small.jwk["n"] = json!(b64(&[0xC5u8; 128]));
    let enc = {
        let mut s = Signer::new("rsa2048.pem", Algorithm::RS256, "enc");
        s.jwk["use"] = json!("enc");
        s
    };
    let idp = Idp::start(vec![
        small.jwk.clone(),
        enc.jwk.clone(),
        json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "oct" }),
        json!({ "kty": "XYZ", "kid": "weird" }),
        json!({ "kty": "RSA", "kid": "bad-alg", "alg": "RS999", "n": "AQAB", "e": "AQAB" }),
        json!("not an object"),
        good.jwk.clone(),
    ])
    .await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(&uri_keys(&idp), &echo, "")).await;
    let a = gw.addrs[0];
    assert_eq!(
        get(a, "/", &[&bearer(&good.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
    for s in [&small, &enc] {
        let r = get(a, "/", &[&bearer(&s.mint(&claims(&idp.url)))]).await;
        assert_eq!(r.json()["error_description"], "unknown key", "{}", s.kid);
    }
    // An HS256 token naming the oct key is refused: symmetric keys never come from a JWKS.
    let hs = Signer::hmac(b"secret", Algorithm::HS256);
    let t = hs.mint_raw(&json!({ "alg": "HS256", "kid": "oct" }), &claims(&idp.url));
    assert_eq!(get(a, "/", &[&bearer(&t)]).await.status, 401);
}

/// A key document over 1 MiB is refused; garbage JSON is refused; the gateway never becomes ready.
#[tokio::test]
async fn oversized_and_garbage_documents_refused() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k");
    let idp = Idp::start(vec![]).await;
    let mut big = json!({ "keys": [key.jwk.clone()] }).to_string();
    big.push_str(&" ".repeat(1024 * 1024 + 10));
    idp.set_raw_jwks(Some(Bytes::from(big)));
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&yaml(
        &uri_keys(&idp),
        &echo,
        "jwks_refetch_interval: 100ms",
    ))
    .await;
    let a = gw.addrs[0];
    assert!(!gw.gateway.verifier.ready());
    assert_eq!(
        get(a, "/", &[&bearer(&key.mint(&claims(&idp.url)))])
            .await
            .status,
        503
    );
    idp.set_raw_jwks(Some(Bytes::from_static(b"{\"keys\": 42")));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        get(a, "/", &[&bearer(&key.mint(&claims(&idp.url)))])
            .await
            .status,
        503
    );
    idp.set_raw_jwks(None);
    idp.set_keys(vec![key.jwk.clone()]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The next unknown-kid refetch (rate limit 100 ms) brings the good document.
    assert_eq!(
        get(a, "/", &[&bearer(&key.mint(&claims(&idp.url)))])
            .await
            .status,
        200
    );
}

/// `jwks_file`: keys come from a local file, and an edit takes effect without a restart.
#[tokio::test]
async fn jwks_file_reloads_on_change() {
    let k1 = Signer::new("ec256.pem", Algorithm::ES256, "f1");
    let k2 = Signer::new("ed25519.pem", Algorithm::EdDSA, "f2");
    let dir = std::env::temp_dir().join(format!("jwtgate-test-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    std::fs::write(&file, json!({ "keys": [k1.jwk] }).to_string()).expect("write");
    let echo = Echo::start().await.expect("echo");
    let iss = "https://file.example";
    let gw = start_gateway(&yaml(
        &format!("issuer: {iss}\n    jwks_file: {}", file.display()),
        &echo,
        "jwks_refetch_interval: 1h",
    ))
    .await;
    let a = gw.addrs[0];
    assert_eq!(
        get(a, "/", &[&bearer(&k1.mint(&claims(iss)))]).await.status,
        200
    );
    assert_eq!(
        get(a, "/", &[&bearer(&k2.mint(&claims(iss)))]).await.status,
        401
    );
    std::fs::write(
        &file,
        json!({ "keys": [k1.jwk, k2.jwk], "pad": "changed" }).to_string(),
    )
    .expect("write");
    // The file's stamp is polled every second.
    let start = Instant::now();
    while get(a, "/", &[&bearer(&k2.mint(&claims(iss)))]).await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the edit took no effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
