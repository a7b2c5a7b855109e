//! Memory per cached verification: RSS growth of this process per token held in the
//! verified-token cache, for tokens of about 0.7, 8 and 16 KB, beside the cache's own
//! estimate (the weight it charges against `token_cache.max_bytes`).
//!
//! Run: `cargo bench --bench cache_memory`

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::Path;

use jsonwebtoken::Algorithm;
use jwtgate::config::Config;
use jwtgate::verify::{self, Verifier};
use serde_json::json;
use support::{claims, Signer};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let signer = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let dir = std::env::temp_dir().join(format!("jwtgate-cache-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    std::fs::write(&file, json!({ "keys": [signer.jwk.clone()] }).to_string()).expect("write");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    // Each size in a process of its own: freed memory an allocator keeps would hide growth.
    let sizes = [(0usize, 20_000usize), (5_500, 5_000), (11_500, 2_500)];
    let only: Option<usize> = std::env::var("CACHE_MEMORY_CASE")
        .ok()
        .and_then(|v| v.parse().ok());
    if only.is_none() {
        for case in 0..sizes.len() {
            let status = std::process::Command::new(std::env::current_exe().expect("exe"))
                .env("CACHE_MEMORY_CASE", case.to_string())
                .status()
                .expect("child");
            assert!(status.success());
        }
        return;
    }
    for (filler, count) in sizes.into_iter().skip(only.unwrap_or(0)).take(1) {
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:0\"}}]\ntoken_cache: {{ max_entries: 100000000, max_bytes: 4294967296 }}\nissuers:\n  - {{ name: b, issuer: https://bench.example, jwks_file: {}, audiences: [api], algorithms: [ES256] }}\nupstreams: [{{name: u, url: \"http://127.0.0.1:1\"}}]\nidentity_headers: {{ X-User-Id: sub }}\nroutes: [{{name: r, match: {{path_prefix: /}}, upstream: u, auth: {{issuers: [b]}}}}]\n",
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
        rt.block_on(v.issuers[0].refresh()).expect("keys");
        // Tokens minted first, so only the cache's growth is measured.
        let tokens: Vec<String> = (0..count)
            .map(|i| {
                let mut c = claims("https://bench.example");
                c["jti"] = json!(format!("t{i}"));
                if filler > 0 {
                    c["profile"] = json!("p".repeat(filler));
                }
                signer.mint(&c)
            })
            .collect();
        let before = rss_kib();
        for t in &tokens {
            rt.block_on(v.verify(t, &[0], jwtgate::clock::now_unix()))
                .expect("verified");
        }
        let (entries, weighed) = v.cache_usage();
        let grown = rss_kib().saturating_sub(before) * 1024;
        println!(
            "tokens of {} bytes: {entries} cached; RSS {} bytes per entry ({:.2}x the token); estimated weight {} bytes per entry",
            tokens[0].len(),
            grown / entries.max(1),
            grown as f64 / entries.max(1) as f64 / tokens[0].len() as f64,
            weighed / entries.max(1)
        );
        drop(tokens);
        v.clear_cache();
    }
}
