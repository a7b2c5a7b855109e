//! Token verification over loopback: a real IdP serving JWKS, the gateway, the echo upstream.

use crate::support::*;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::json;

/// 64 bytes: long enough for HS512 (RFC 7518 §3.2).
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Setup {
    idp: Idp,
    echo: Echo,
    gw: jwtgate::app::Running,
}

fn signers() -> Vec<Signer> {
    vec![
        Signer::new("rsa2048.pem", Algorithm::RS256, "rs256"),
        Signer::new("rsa2048.pem", Algorithm::RS384, "rs384"),
        Signer::new("rsa2048.pem", Algorithm::RS512, "rs512"),
        Signer::new("rsa2048.pem", Algorithm::PS256, "ps256"),
        Signer::new("rsa2048.pem", Algorithm::PS384, "ps384"),
        Signer::new("rsa2048.pem", Algorithm::PS512, "ps512"),
        Signer::new("ec256.pem", Algorithm::ES256, "es256"),
        Signer::new("ec384.pem", Algorithm::ES384, "es384"),
        Signer::new("ed25519.pem", Algorithm::EdDSA, "eddsa"),
    ]
}

async fn setup() -> Setup {
    let idp = Idp::start(signers().iter().map(|s| s.jwk.clone()).collect()).await;
    let echo = Echo::start().await.expect("echo");
    let yaml = format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
issuers:
  - name: idp
    issuer: {iss}
    jwks_uri: {jwks}
    audiences: [api, other-api]
    algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
    leeway: 5s
  - name: shared
    issuer: https://hmac.example
    secret: "{SECRET}"
    audiences: [api]
    algorithms: [HS256, HS384, HS512]
upstreams: [ {{ name: echo, url: "http://{echo}" }} ]
routes:
  - {{ name: hmac, match: {{ path_prefix: /hmac }}, upstream: echo, auth: {{ issuers: [shared] }} }}
  - {{ name: all, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}
"#,
        iss = idp.url,
        jwks = idp.jwks_url(),
        echo = echo.addr
    );
    let gw = start_gateway(&yaml).await;
    Setup { idp, echo, gw }
}

impl Setup {
    fn upstream_requests(&self) -> u64 {
        self.echo
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Assert the token is refused with 401 and `error_description`, and never forwarded.
    async fn refused(&self, path: &str, token: &str, description: &str) {
        let before = self.upstream_requests();
        let r = get(self.gw.addrs[0], path, &[&bearer(token)]).await;
        assert_eq!(
            r.status,
            401,
            "{description}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.challenge_error().as_deref(),
            Some("invalid_token"),
            "{description}"
        );
        assert_eq!(r.json()["error_description"], description);
        assert_eq!(
            self.upstream_requests(),
            before,
            "{description}: the upstream saw the request"
        );
    }
}

/// Every asymmetric algorithm and every HMAC algorithm is accepted with a good token.
#[tokio::test]
async fn every_algorithm_accepted() {
    let s = setup().await;
    for signer in signers() {
        let token = signer.mint(&claims(&s.idp.url));
        let r = get(s.gw.addrs[0], "/x", &[&bearer(&token)]).await;
        assert_eq!(
            r.status,
            200,
            "{:?}: {}",
            signer.alg,
            String::from_utf8_lossy(&r.body)
        );
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = Signer::hmac(SECRET.as_bytes(), alg).mint(&claims("https://hmac.example"));
        let r = get(s.gw.addrs[0], "/hmac", &[&bearer(&token)]).await;
        assert_eq!(r.status, 200, "{alg:?}");
    }
    // An HMAC token may carry a `kid`; the issuer's one secret verifies it.
    let hs = Signer::hmac(SECRET.as_bytes(), Algorithm::HS256);
    let t = hs.mint_raw(
        &json!({ "alg": "HS256", "kid": "any" }),
        &claims("https://hmac.example"),
    );
    assert_eq!(
        get(s.gw.addrs[0], "/hmac", &[&bearer(&t)]).await.status,
        200
    );
    // `aud` as an array with one accepted member passes too.
    let mut c = claims(&s.idp.url);
    c["aud"] = json!(["unrelated", "other-api"]);
    let r = get(s.gw.addrs[0], "/x", &[&bearer(&signers()[0].mint(&c))]).await;
    assert_eq!(r.status, 200);
}

/// Each broken token answers 401 invalid_token with its own description; nothing is forwarded.
#[tokio::test]
async fn broken_tokens_refused() {
    let s = setup().await;
    let rs = Signer::new("rsa2048.pem", Algorithm::RS256, "rs256");
    let iss = s.idp.url.clone();
    let now = now();

    let mut c = claims(&iss);
    c["exp"] = json!(now - 60);
    s.refused("/x", &rs.mint(&c), "token expired").await;

    let mut c = claims(&iss);
    c["nbf"] = json!(now + 600);
    s.refused("/x", &rs.mint(&c), "token not yet valid").await;

    let mut c = claims(&iss);
    c["iat"] = json!(now + 600);
    s.refused("/x", &rs.mint(&c), "token issued in the future")
        .await;

    s.refused(
        "/x",
        &rs.mint(&claims("https://evil.example")),
        "issuer not allowed",
    )
    .await;
    // An issuer the gateway knows but this route does not accept.
    let hs = Signer::hmac(SECRET.as_bytes(), Algorithm::HS256);
    s.refused(
        "/x",
        &hs.mint(&claims("https://hmac.example")),
        "issuer not allowed",
    )
    .await;

    let mut c = claims(&iss);
    c["aud"] = json!("someone-else");
    s.refused("/x", &rs.mint(&c), "audience not allowed").await;
    let mut c = claims(&iss);
    c.as_object_mut().expect("obj").remove("aud");
    s.refused("/x", &rs.mint(&c), "audience not allowed").await;
    // `aud` forms that name no audience of ours: empty, not a string, a non-string member.
    for aud in [
        json!([]),
        json!(42),
        json!(["api", 7]),
        json!(null),
        json!({ "api": true }),
    ] {
        let mut c = claims(&iss);
        c["aud"] = aud.clone();
        s.refused("/x", &rs.mint(&c), "audience not allowed").await;
    }
    // An HMAC signature of the right length under a wrong secret, and an HS256 token whose
    // issuer has only public keys.
    let wrong = Signer::hmac(b"another-secret-of-32-bytes-000000", Algorithm::HS256);
    s.refused(
        "/hmac",
        &wrong.mint(&claims("https://hmac.example")),
        "signature invalid",
    )
    .await;
    // A truncated signature (not a valid length for the algorithm) and a padded one.
    let good = rs.mint(&claims(&iss));
    let (msg, sig) = good.rsplit_once('.').expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("signature");
    let short = b64(&bytes[..bytes.len() - 1]);
    s.refused("/x", &format!("{msg}.{short}"), "signature invalid")
        .await;
    s.refused("/x", &format!("{msg}.{sig}=="), "token malformed")
        .await;

    // Bad signature: another RSA key under the same kid, and a flipped signature byte.
    let other = Signer::new("rsa2048b.pem", Algorithm::RS256, "rs256");
    s.refused("/x", &other.mint(&claims(&iss)), "signature invalid")
        .await;
    let good = rs.mint(&claims(&iss));
    let (msg, sig) = good.rsplit_once('.').expect("jwt");
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    let flipped = format!("{first}{}", &sig[1..]);
    s.refused("/x", &format!("{msg}.{flipped}"), "signature invalid")
        .await;
    // Payload swapped under a valid signature.
    let mut c = claims(&iss);
    c["sub"] = json!("admin");
    let (h, _) = msg.split_once('.').expect("jwt");
    s.refused(
        "/x",
        &format!("{h}.{}.{sig}", b64(c.to_string().as_bytes())),
        "signature invalid",
    )
    .await;

    // alg none, with and without a signature part.
    let none_header = json!({ "alg": "none", "typ": "JWT" });
    let unsigned = format!(
        "{}.{}.",
        b64(none_header.to_string().as_bytes()),
        b64(claims(&iss).to_string().as_bytes())
    );
    s.refused("/x", &unsigned, "algorithm not allowed").await;
    let none_upper = json!({ "alg": "NONE", "kid": "rs256" });
    let unsigned = format!(
        "{}.{}.",
        b64(none_upper.to_string().as_bytes()),
        b64(claims(&iss).to_string().as_bytes())
    );
    s.refused("/x", &unsigned, "algorithm not allowed").await;

    // HS256 signed with the RSA public key (PEM and DER) as the HMAC secret.
    let pub_pem = fixture("rsa2048.pub.pem");
    for secret in [
        pub_pem.clone(),
        rs.jwk["n"].as_str().expect("n").as_bytes().to_vec(),
    ] {
        let confused = Signer::hmac(&secret, Algorithm::HS256);
        let t = confused.mint_raw(&json!({ "alg": "HS256", "kid": "rs256" }), &claims(&iss));
        s.refused("/x", &t, "algorithm not allowed").await;
    }

    // An algorithm the issuer allows, but a key of another type (RSA kid, ES256 alg).
    let es = Signer::new("ec256.pem", Algorithm::ES256, "rs256");
    s.refused("/x", &es.mint(&claims(&iss)), "unknown key")
        .await;

    let unknown = Signer::new("rsa2048.pem", Algorithm::RS256, "never-published");
    s.refused("/x", &unknown.mint(&claims(&iss)), "unknown key")
        .await;

    let mut c = claims(&iss);
    c["exp"] = json!("9999999999");
    s.refused("/x", &rs.mint(&c), "token malformed").await;
    let mut c = claims(&iss);
    c.as_object_mut().expect("obj").remove("exp");
    s.refused("/x", &rs.mint(&c), "token malformed").await;

    let crit = rs.mint_raw(
        &json!({ "alg": "RS256", "kid": "rs256", "crit": ["exp-ext"], "exp-ext": 1 }),
        &claims(&iss),
    );
    s.refused("/x", &crit, "unsupported critical header").await;

    // Keys named by the token are never fetched: jku/x5u/jwk are ignored, the kid decides.
    let evil = Signer::new("rsa2048b.pem", Algorithm::RS256, "evil");
    let t = evil.mint_raw(
        &json!({ "alg": "RS256", "kid": "evil", "jku": format!("{}/jwks.json", iss), "jwk": evil.jwk }),
        &claims(&iss),
    );
    s.refused("/x", &t, "unknown key").await;

    for garbage in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.@@@.###",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "e30.e30.e30",
    ] {
        let before = s.upstream_requests();
        let r = get(
            s.gw.addrs[0],
            "/x",
            &[&format!("Authorization: Bearer {garbage}")],
        )
        .await;
        assert_eq!(r.status, 401, "{garbage}");
        assert_eq!(s.upstream_requests(), before);
    }
}

/// A request with no token gets a bare challenge (no `error` attribute), per RFC 6750 §3.1.
#[tokio::test]
async fn missing_token_challenge() {
    let s = setup().await;
    let r = get(s.gw.addrs[0], "/x", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"jwtgate\"")
    );
    assert_eq!(r.json()["error_description"], "token missing");
    let r = get(s.gw.addrs[0], "/x", &["Authorization: Basic dXNlcjpwYXNz"]).await;
    assert_eq!(r.status, 401);
}

/// A repeated token hits the cache but `exp` is still checked on every request.
#[tokio::test]
async fn cached_token_still_expires() {
    let s = setup().await;
    let rs = Signer::new("ed25519.pem", Algorithm::EdDSA, "eddsa");
    let mut c = claims(&s.idp.url);
    // Expires (with the 5 s leeway) about 2 s from now.
    c["exp"] = json!(now() - 3);
    let token = rs.mint(&c);
    assert_eq!(
        get(s.gw.addrs[0], "/x", &[&bearer(&token)]).await.status,
        200
    );
    assert_eq!(
        get(s.gw.addrs[0], "/x", &[&bearer(&token)]).await.status,
        200
    );
    let hits = s.gw.gateway.metrics.token_cache_hits.get();
    assert!(hits >= 1, "second request should hit the cache");
    s.gw.gateway
        .clock
        .advance(std::time::Duration::from_millis(3100));
    let r = get(s.gw.addrs[0], "/x", &[&bearer(&token)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "token expired");
    let _ = &s.idp;
}

/// The verified-token cache is bounded in bytes: big tokens (an 8 KB claim each) past the
/// budget evict others instead of growing memory, and each entry weighs at least its token;
/// `max_entries` still bounds small ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cache_is_bounded_in_bytes() {
    let signer = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![signer.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let yaml = |cache: &str| {
        format!(
            "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\ntoken_cache: {cache}\nissuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}\n",
            idp.url,
            idp.jwks_url(),
            echo.addr
        )
    };
    let gw = start_gateway(&yaml("{ max_entries: 100000, max_bytes: 1048576 }")).await;
    let mut sizes = Vec::new();
    for i in 0..200 {
        let mut c = claims(&idp.url);
        c["profile"] = json!(format!("{i:05}{}", "p".repeat(8_000)));
        let token = signer.mint(&c);
        sizes.push(token.len());
        assert_eq!(get(gw.addrs[0], "/", &[&bearer(&token)]).await.status, 200);
    }
    let (entries, bytes) = gw.gateway.verifier.cache_usage();
    println!(
        "200 tokens of {} bytes: {entries} cached, {bytes} bytes weighed",
        sizes[0]
    );
    assert!(bytes <= 1024 * 1024, "{bytes} bytes over the 1 MiB budget");
    assert!(entries > 10 && entries < 100, "{entries} entries");
    // Each entry weighs at least its token plus its claims (about twice the token's payload).
    assert!(
        bytes / entries >= sizes[0] as u64,
        "{} per entry",
        bytes / entries
    );

    // Small tokens: `max_entries` holds.
    let gw = start_gateway(&yaml("{ max_entries: 50 }")).await;
    for _ in 0..200 {
        let token = signer.mint(&claims(&idp.url));
        assert_eq!(get(gw.addrs[0], "/", &[&bearer(&token)]).await.status, 200);
    }
    let (entries, _) = gw.gateway.verifier.cache_usage();
    assert!(entries <= 50, "{entries} entries past max_entries 50");
}

/// A verification that checked a signature yields once before it returns: the other
/// connections ready on the same worker verify too, and their forwards leave together (the
/// upstream's core is woken once per batch, not once per request). A cache hit does not wait.
#[tokio::test]
async fn cold_verifications_are_forwarded_together() {
    let s = setup().await;
    let v = &s.gw.gateway.verifier;
    let signer = Signer::new("ec256.pem", Algorithm::ES256, "es256");
    let tokens = [
        signer.mint(&claims(&s.idp.url)),
        signer.mint(&claims(&s.idp.url)),
    ];
    let log = std::sync::Mutex::new(Vec::new());
    let step = |t: &'static str| log.lock().expect("log").push(t);
    let one = |token: &'static str, name: [&'static str; 2]| {
        let step = &step;
        async move {
            step(name[0]);
            let verified = v.verify(token, &[0], now()).await;
            assert!(verified.is_ok(), "{:?}", verified.err());
            step(name[1]);
        }
    };
    let [a, b] = tokens.map(|t| &*Box::leak(t.into_boxed_str()));
    // (`join!` may poll either first; what matters is where the outs fall.)
    tokio::join!(one(a, ["a in", "a out"]), one(b, ["b in", "b out"]));
    let seen = std::mem::take(&mut *log.lock().expect("log"));
    assert!(
        seen[..2].iter().all(|t| t.ends_with(" in")) && seen.len() == 4,
        "cold: both verify before either is forwarded: {seen:?}"
    );
    // The same tokens again: cache hits return at once.
    tokio::join!(one(a, ["a in", "a out"]), one(b, ["b in", "b out"]));
    let seen = std::mem::take(&mut *log.lock().expect("log"));
    assert!(
        seen[1].ends_with(" out") && seen[1][..1] == seen[0][..1],
        "cache hits: no wait: {seen:?}"
    );
}
