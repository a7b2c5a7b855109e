//! Mass revocation (a breach): 100,000 entries written with `jwtgate revoke --file` (batches
//! of 5,000, one durable commit each) and applied at three syncing gateways — the time from
//! starting the command until every gateway holds all of them and refuses a revoked token.
//! Reference measured in the same run: entries written one request at a time.
//!
//! Run: `cargo bench --bench mass_revocation` (`ENTRIES=…` to change the count,
//! `STORE=postgres` for the PostgreSQL store on 127.0.0.1:5432).

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jwtgate::revocation::Kind;
use serde_json::json;
use support::*;

#[tokio::main]
async fn main() {
    let entries: usize = std::env::var("ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let store = match std::env::var("STORE").as_deref() {
        Ok("postgres") => pg_url().await,
        _ => format!("sqlite://{}", dir.join("rev.db").display()),
    };
    let control = start_control(&store, "").await;
    let gateways = syncing_gateways(3, &idp, &echo, control.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The last entry of the file is a live token's: refused at every gateway at the end.
    let mut c = claims(&idp.url);
    c["jti"] = json!("breach-last");
    let token = key.mint(&c);
    for gw in &gateways {
        assert_eq!(get(gw.addrs[0], "/", &[&bearer(&token)]).await.status, 200);
    }
    let exp = now() + 3600;
    let mut lines = String::new();
    for i in 0..entries - 1 {
        lines.push_str(&format!(
            "{}\n",
            json!({ "iss": idp.url, "jti": format!("breach-{i}"), "expires_at": exp, "reason": "breach" })
        ));
    }
    lines.push_str(&format!(
        "{}\n",
        json!({ "iss": idp.url, "jti": "breach-last", "expires_at": c["exp"] })
    ));
    let file = dir.join("breach.jsonl");
    std::fs::write(&file, lines).expect("write");

    let start = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args([
            "revoke",
            "--control",
            &format!("http://{}", control.addr),
            "--file",
        ])
        .arg(&file)
        .env("JWTGATE_API_KEY", WRITER_KEY)
        .output()
        .await
        .expect("revoke --file");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = start.elapsed();
    let mut applied = Vec::new();
    for gw in &gateways {
        let set = &gw.gateway.revocations.as_ref().expect("revocations").set;
        while (set.count(Kind::Jti) as usize) < entries {
            assert!(start.elapsed() < Duration::from_secs(300), "not applied");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while get(gw.addrs[0], "/", &[&bearer(&token)]).await.status != 401 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        applied.push(start.elapsed());
    }
    let all = start.elapsed();

    // Reference: one entry per request, for a sample.
    let sample = 2_000;
    let one_by_one = Instant::now();
    for i in 0..sample {
        let r = revoke(
            control.addr,
            &json!({ "iss": idp.url, "jti": format!("single-{i}"), "expires_at": exp }),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let per_single = one_by_one.elapsed() / sample as u32;
    let batched_rate = entries as f64 / written.as_secs_f64();
    let single_rate = 1.0 / per_single.as_secs_f64();
    println!(
        "mass revocation, {entries} entries, store {}:",
        if store.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        }
    );
    println!("  revoke --file wrote all (durable): {written:?} ({batched_rate:.0} entries/s)");
    println!("  applied and refused at 3 gateways: {applied:?}; all: {all:?}");
    println!(
        "  reference, one entry per request: {per_single:?} each ({single_rate:.0} entries/s); batches are {:.1}x faster; {entries} one by one would take {:.1} s",
        batched_rate / single_rate,
        entries as f64 / single_rate
    );
}
