//! Token extraction and verification: arbitrary bytes as a bearer header, a cookie and a
//! query, then the verifier (JOSE header, claims, keys of an ES256 JWKS file and an HMAC
//! secret). Nothing may panic; nothing unsigned may verify.
#![no_main]

use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use jwtgate::config::{Config, TokenSource};
use jwtgate::verify::{self, Verifier};
use libfuzzer_sys::fuzz_target;

struct World {
    rt: tokio::runtime::Runtime,
    verifier: Verifier,
    sources: Vec<TokenSource>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let pem = std::fs::read(root.join("tests/fixtures/ec256.pem")).expect("fixture");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("pem");
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .expect("jwk"),
        )
        .expect("json");
        jwk["kid"] = "k1".into();
        let file = std::env::temp_dir().join(format!("jwtgate-fuzz-{}.json", std::process::id()));
        std::fs::write(&file, serde_json::json!({ "keys": [jwk] }).to_string()).expect("jwks");
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:0\"}}]\nissuers:\n  - {{ name: e, issuer: https://e.example, jwks_file: {}, audiences: [api], algorithms: [ES256], jwks_refetch_interval: 1h }}\n  - {{ name: h, issuer: https://h.example, secret: \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\", audiences: [api], algorithms: [HS256, HS512] }}\nupstreams: [{{name: u, url: \"http://127.0.0.1:1\"}}]\nidentity_headers: {{ X-User: sub, X-Roles: realm.roles }}\nroutes: [{{name: r, match: {{path_prefix: /}}, upstream: u, auth: {{issuers: [e, h], token_sources: [header, {{ cookie: s }}, {{ query: t }}]}}}}]\n",
            file.display()
        );
        let config = Config::from_yaml(&yaml, std::path::Path::new("."), &|_| None).expect("config");
        let verifier = Verifier::new(&config.issuers, &config.token_cache, &verify::Context::default(), &[])
            .with_identity_headers(&config.identity_headers)
            .strict_identity();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(verifier.issuers[0].refresh()).expect("keys");
        let sources = config.routes[0].auth.as_ref().expect("auth").sources.clone();
        World { rt, verifier, sources }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        headers.insert(COOKIE, v.clone());
        if let Ok(b) = HeaderValue::from_str(&format!("Bearer {text}")) {
            headers.insert(AUTHORIZATION, b);
        }
    }
    let _ = jwtgate::token::extract(&w.sources, &headers, Some(&text));
    let now = jwtgate::clock::now_unix();
    if let Ok(v) =
        w.rt.block_on(w.verifier.verify_signature(&text, &[0, 1], now))
    {
        // Random bytes never carry a valid signature: anything verified is a bug.
        panic!("verified a fuzzed token: {:?}", v.claims);
    }
});
