//! Durability and replication: `kill -9` of the control plane right after a burst of
//! acknowledged writes loses none of them (SQLite and PostgreSQL), and two control replicas
//! on one PostgreSQL feed a gateway without missing an entry under concurrent writes.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn_control(store: &str, port: u16, dir: &std::path::Path) -> Child {
    let file = dir.join(format!("control-{port}.yaml"));
    std::fs::write(&file, control_yaml(store, &format!("127.0.0.1:{port}"), "")).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["control", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn control");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(addr, "/readyz", &[]).await.status == 200
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "control plane did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Child(child)
}

/// Fire 300 writes; SIGKILL the control plane once 100 are acknowledged; restart it; every
/// acknowledged write must be there.
async fn kill_nine(store: &str) {
    let dir = temp_dir();
    let port = free_port();
    let mut control = spawn_control(store, port, &dir).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let exp = now() + 3600;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let acked = acked.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let jti = format!("k{i}");
            let body = json!({ "iss": "https://i", "jti": jti, "expires_at": exp });
            // Connections cut by the SIGKILL are simply not acknowledged.
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(10),
                try_post_json(addr, "/v1/revocations", WRITER_KEY, &body),
            )
            .await
            {
                if r.status == 201 {
                    acked.lock().expect("lock").push(jti);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let start = Instant::now();
    while count.load(Ordering::SeqCst) < 100 {
        assert!(start.elapsed() < Duration::from_secs(20), "writes too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    control.0.kill().expect("SIGKILL");
    let _ = control.0.wait();
    let acked: HashSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    for t in tasks {
        t.abort();
    }
    // Anything acknowledged up to the kill must be durable; late acks cannot exist.
    let _control = spawn_control(store, port, &dir).await;
    let r = get(
        addr,
        "/v1/revocations?limit=10000",
        &[&format!("Authorization: Bearer {READER_KEY}")],
    )
    .await;
    let stored: HashSet<String> = r.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["jti"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    println!(
        "{store}: {} acknowledged before SIGKILL, {} stored after restart",
        acked.len(),
        stored.len()
    );
    assert!(acked.len() >= 100);
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// kill -9 after a burst of 201s loses nothing — SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_sqlite() {
    let dir = temp_dir();
    kill_nine(&format!("sqlite://{}", dir.join("rev.db").display())).await;
}

/// kill -9 after a burst of 201s loses nothing — PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_postgres() {
    kill_nine(&pg_url().await).await;
}

/// Two control replicas on one PostgreSQL, concurrent writes through both, a gateway syncing
/// through one: it ends with exactly the set that was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_gateway_nothing_missed() {
    let url = pg_url().await;
    let a = start_control(&url, "").await;
    let b = start_control(&url, "").await;
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let echo = Echo::start().await.expect("echo");
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nissuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}\nrevocation:\n  control_url: http://{}\n  token: {READER_KEY}\n",
        idp.url,
        idp.jwks_url(),
        echo.addr,
        a.addr
    );
    let gw = start_gateway(&yaml).await;
    let exp = now() + 3600;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let target = if i % 2 == 0 { a.addr } else { b.addr };
        tasks.push(tokio::spawn(async move {
            let r = revoke(
                target,
                &json!({ "iss": "https://i", "jti": format!("r{i}"), "expires_at": exp }),
            )
            .await;
            assert_eq!(r.status, 201);
        }));
    }
    for t in tasks {
        t.await.expect("write");
    }
    let set = &gw.gateway.revocations.as_ref().expect("revocations").set;
    let start = Instant::now();
    while set.len() < 400 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "gateway holds {} of 400",
            set.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..400 {
        let keys = set.token_keys("https://i", Some(&format!("r{i}")), None, None, None);
        assert!(set.lookup(&keys), "r{i} missing at the gateway");
    }
    assert_eq!(set.len(), 400);
    // Both replicas serve the same log.
    let list = |addr| async move {
        let r = get(
            addr,
            "/v1/revocations?limit=10000",
            &[&format!("Authorization: Bearer {READER_KEY}")],
        )
        .await;
        r.json()["entries"].as_array().expect("entries").len()
    };
    assert_eq!(list(a.addr).await, 400);
    assert_eq!(list(b.addr).await, 400);
    println!(
        "400 concurrent writes through two replicas: gateway complete after {:?}",
        start.elapsed()
    );
}
