//! The auth step per request: cold (signature verified) for RS256, ES256 and EdDSA; warm
//! (verified-token cache hit); a bare RSA-2048 verify with the same crypto library as the
//! reference; and route matching with 200 routes.
//!
//! Run: `cargo bench --bench auth`

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use aws_lc_rs::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use jsonwebtoken::Algorithm;
use jwtgate::config::Config;
use jwtgate::path::normalize_path;
use jwtgate::route::Router;
use jwtgate::verify::{self, Verifier};
use serde_json::json;
use support::{claims, Signer};

/// The verifier never awaits once keys are loaded; poll once without a runtime so the
/// figure is the verification alone.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification awaited"),
    }
}

fn verifier(signers: &[&Signer]) -> Verifier {
    let dir = std::env::temp_dir().join(format!("jwtgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    let keys: Vec<_> = signers.iter().map(|s| s.jwk.clone()).collect();
    std::fs::write(&file, json!({ "keys": keys }).to_string()).expect("write");
    let yaml = format!(
        "listeners: [{{address: \"127.0.0.1:0\"}}]\nissuers:\n  - {{ name: b, issuer: https://bench.example, jwks_file: {}, audiences: [api], algorithms: [RS256, ES256, EdDSA] }}\nupstreams: [{{name: u, url: \"http://127.0.0.1:1\"}}]\nidentity_headers: {{ X-User-Id: sub }}\nroutes: [{{name: r, match: {{path_prefix: /}}, upstream: u, auth: {{issuers: [b]}}}}]\n",
        file.display()
    );
    let config = Config::from_yaml(&yaml, Path::new("."), &|_| None).expect("config");
    let v = Verifier::new(
        &config.issuers,
        &config.token_cache,
        &verify::Context::default(),
        &[],
    )
    .with_identity_headers(&config.identity_headers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(v.issuers[0].refresh()).expect("keys");
    v
}

fn auth(c: &mut Criterion) {
    let rs = Signer::new("rsa2048.pem", Algorithm::RS256, "rs");
    let es = Signer::new("ec256.pem", Algorithm::ES256, "es");
    let ed = Signer::new("ed25519.pem", Algorithm::EdDSA, "ed");
    let v = verifier(&[&rs, &es, &ed]);
    let iss = "https://bench.example";
    let now = jwtgate::clock::now_unix();
    let allowed = [0usize];

    // Reference: a bare RSA-2048 PKCS#1 v1.5 SHA-256 verify with aws-lc-rs, as the
    // library itself performs it (modulus and exponent from the JWK).
    let token = rs.mint(&claims(iss));
    let (msg, sig) = token.rsplit_once('.').expect("jwt");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(sig).expect("sig");
    let n = b64.decode(rs.jwk["n"].as_str().expect("n")).expect("n");
    let e = b64.decode(rs.jwk["e"].as_str().expect("e")).expect("e");
    let public = RsaPublicKeyComponents { n: &n, e: &e };
    c.bench_function("reference/bare_rsa2048_verify", |b| {
        b.iter(|| {
            public
                .verify(
                    &RSA_PKCS1_2048_8192_SHA256,
                    black_box(msg.as_bytes()),
                    black_box(&sig),
                )
                .expect("valid")
        })
    });

    for (name, signer) in [("rs256", &rs), ("es256", &es), ("eddsa", &ed)] {
        let token = signer.mint(&claims(iss));
        c.bench_function(&format!("auth/cold/{name}"), |b| {
            b.iter(|| ready(v.verify_signature(black_box(&token), &allowed, now)).expect("valid"))
        });
    }

    let token = rs.mint(&claims(iss));
    // A cold verification yields once to the scheduler before it returns: fill the cache
    // under a runtime.
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt")
        .block_on(v.verify(&token, &allowed, now))
        .expect("valid");
    c.bench_function("auth/warm/cache_hit", |b| {
        b.iter(|| ready(v.verify(black_box(&token), &allowed, now)).expect("valid"))
    });
}

fn routing(c: &mut Criterion) {
    let mut yaml = String::from("listeners: [{address: \"127.0.0.1:0\"}]\nupstreams: [{name: u, url: \"http://127.0.0.1:1\"}]\nroutes:\n");
    for i in 0..199 {
        yaml.push_str(&format!("  - {{name: r{i}, match: {{path_prefix: /service{i}/api, methods: [GET, POST]}}, upstream: u, auth: none}}\n"));
    }
    yaml.push_str("  - {name: last, match: {path_prefix: /}, upstream: u, auth: none}\n");
    let config = Config::from_yaml(&yaml, Path::new("."), &|_| None).expect("config");
    let router = Router::new(&config.routes);
    let get = Method::GET;
    c.bench_function("route/200_routes/first", |b| {
        b.iter(|| {
            router.find(
                Some("api.example.com"),
                black_box("/service0/api/orders/17"),
                &get,
            )
        })
    });
    c.bench_function("route/200_routes/middle", |b| {
        b.iter(|| {
            router.find(
                Some("api.example.com"),
                black_box("/service100/api/orders/17"),
                &get,
            )
        })
    });
    c.bench_function("route/200_routes/fallthrough", |b| {
        b.iter(|| router.find(Some("api.example.com"), black_box("/other/orders/17"), &get))
    });
    c.bench_function("route/normalize/clean", |b| {
        b.iter(|| normalize_path(black_box(b"/service100/api/orders/17")).is_ok())
    });
    c.bench_function("route/normalize/dirty", |b| {
        b.iter(|| normalize_path(black_box(b"/service100//api/./orders/%31%37")).is_ok())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = auth, routing
}
criterion_main!(benches);
