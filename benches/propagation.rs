//! Propagation from the control plane's `201` to three gateways' revocation sets, over
//! loopback: p50/p99 over 100 revocations.
//!
//! Run: `cargo bench --bench propagation`

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::*;

#[tokio::main]
async fn main() {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let gateways = syncing_gateways(3, &idp, &echo, control.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times = Vec::new();
    for i in 0..100 {
        let jti = format!("p{i}");
        let r = revoke(
            control.addr,
            &json!({ "iss": idp.url, "jti": jti, "expires_at": now() + 600 }),
        )
        .await;
        assert_eq!(r.status, 201);
        let acked = Instant::now();
        for gw in &gateways {
            let set = &gw.gateway.revocations.as_ref().expect("revocations").set;
            let keys = set.token_keys(&idp.url, Some(&jti), None, None, None);
            while !set.lookup(&keys) {
                assert!(acked.elapsed() < Duration::from_secs(5), "not propagated");
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }
        times.push(acked.elapsed());
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "propagation 201 → all of 3 gateways, 100 revocations: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        times[99]
    );
}
