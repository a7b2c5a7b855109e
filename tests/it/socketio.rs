//! socket.io / engine.io through the gateway with the real `socket.io` server and client
//! (Node.js, installed by `scripts/test` from tests/socketio/package-lock.json): the
//! long-polling handshake, polling requests and the upgrade to WebSocket, with the token in
//! the query or a cookie — and the connection cut when that token is revoked.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio")
}

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the socket.io server; its port.
fn socketio_server() -> (Node, u16) {
    assert!(
        dir().join("node_modules/socket.io").exists(),
        "run `npm ci` in tests/socketio (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg("server.js")
        .current_dir(dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let stdout = child.stdout.take().expect("stdout");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("read");
    let port = serde_json::from_str::<Value>(&line).expect("json")["port"]
        .as_u64()
        .expect("port") as u16;
    (Node(child), port)
}

async fn setup() -> (
    Idp,
    Signer,
    jwtgate::app::RunningControl,
    jwtgate::app::Running,
    Node,
) {
    let key = Signer::new("ec256.pem", Algorithm::ES256, "k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let (node, port) = socketio_server();
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nissuers:\n  - {{ name: idp, issuer: \"{}\", jwks_uri: \"{}\", audiences: [api], algorithms: [ES256] }}\nupstreams: [ {{ name: app, url: \"http://127.0.0.1:{port}\" }} ]\nroutes:\n  - name: live\n    match: {{ path_prefix: /socket.io }}\n    upstream: app\n    auth: {{ issuers: [idp], token_sources: [header, {{ query: access_token }}, {{ cookie: session }}] }}\nrevocation:\n  control_url: http://{}\n  token: {READER_KEY}\n",
        idp.url,
        idp.jwks_url(),
        control.addr
    );
    let gw = start_gateway(&yaml).await;
    (idp, key, control, gw, node)
}

fn client(gw: std::net::SocketAddr, token: &str, mode: &str, wait: bool) -> std::process::Child {
    let mut cmd = Command::new("node");
    cmd.arg("client.js")
        .arg(format!("http://{gw}"))
        .arg(token)
        .arg(mode);
    if wait {
        cmd.arg("wait");
    }
    cmd.current_dir(dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node client")
}

fn lines(
    child: &mut std::process::Child,
) -> std::io::Lines<std::io::BufReader<std::process::ChildStdout>> {
    std::io::BufReader::new(child.stdout.take().expect("stdout")).lines()
}

/// Polling handshake, polling requests, upgrade to WebSocket, events both ways — with the
/// token in the query and in a cookie; the server never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_through_the_gateway() {
    let (idp, key, _control, gw, _node) = setup().await;
    let token = key.mint(&claims(&idp.url));
    for mode in ["query", "cookie"] {
        let addr = gw.addrs[0];
        let t = token.clone();
        let report: Value = tokio::task::spawn_blocking(move || {
            let mut c = client(addr, &t, mode, false);
            let line = lines(&mut c).next().expect("report").expect("read");
            let _ = c.wait();
            serde_json::from_str(&line).expect("json")
        })
        .await
        .expect("client");
        assert_eq!(report["connected"], true, "{mode}: {report}");
        assert_eq!(report["transport"], "websocket", "{mode}: upgraded");
        assert_eq!(report["echo"], json!({ "hello": "world" }));
        let seen = report["whoami"].to_string();
        assert!(
            !seen.contains(&token),
            "{mode}: the socket.io server saw the token: {seen}"
        );
        assert!(report["whoami"]["query"].get("access_token").is_none());
        if mode == "cookie" {
            assert_eq!(report["whoami"]["headers"]["cookie"], "theme=dark");
        }
    }
    // Without a token the handshake is refused.
    let addr = gw.addrs[0];
    let report: Value = tokio::task::spawn_blocking(move || {
        let mut c = client(addr, "not-a-token", "query", false);
        let line = lines(&mut c).next().expect("report").expect("read");
        let _ = c.wait();
        serde_json::from_str(&line).expect("json")
    })
    .await
    .expect("client");
    assert!(
        report["error"]
            .as_str()
            .unwrap_or("")
            .contains("connect_error"),
        "{report}"
    );
}

/// A connected socket.io client is disconnected within a second of its token's revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_cut_on_revocation() {
    let (idp, key, control, gw, _node) = setup().await;
    let c = claims(&idp.url);
    let token = key.mint(&c);
    let mut child = client(gw.addrs[0], &token, "query", true);
    let mut out = lines(&mut child);
    let first = tokio::task::block_in_place(|| out.next())
        .expect("report")
        .expect("read");
    assert!(first.contains("\"transport\":\"websocket\""), "{first}");
    assert_eq!(
        revoke(
            control.addr,
            &json!({ "iss": idp.url, "jti": c["jti"], "expires_at": c["exp"] })
        )
        .await
        .status,
        201
    );
    let start = Instant::now();
    let end = tokio::task::spawn_blocking(move || out.next())
        .await
        .expect("join")
        .expect("line")
        .expect("read");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "disconnected after {:?}",
        start.elapsed()
    );
    assert!(end.contains("disconnected"), "{end}");
    let _ = child.wait();
}
