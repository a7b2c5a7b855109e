//! The real `jwtgate` binary: `check` on the shipped examples and on broken files, `serve`
//! refusing a bad config, and large bodies streaming through with bounded memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwtgate");

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .env("JWTGATE_HS_SECRET", "0123456789abcdef0123456789abcdef")
        .env("JWTGATE_SYNC_TOKEN", "sync-token")
        .output()
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jwtgate-cli-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// Every example in config/ is accepted by `jwtgate check`, in an empty environment (as a
/// new user runs it, with none of the variables or secret files set).
#[test]
fn shipped_examples_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(BIN)
                .args(["check", "-c"])
                .arg(&path)
                .env_clear()
                .output()
                .expect("run check");
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {text}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4);
}

/// A broken file: every problem printed with line and column, exit status 1.
#[test]
fn check_reports_every_problem_with_position() {
    let p = temp_file(
        "bad.yaml",
        "listeners:\n  - address: nowhere\nissuers:\n  - name: corp\n    issuer: https://id.example\n    discovery: true\n    audiences: [api]\n    algorithms: [RS256, none]\nupstreams:\n  - { name: app, url: \"http://127.0.0.1:1\" }\nroutes:\n  - name: r\n    match: { path_prefix: /x }\n    upstream: ghost\n    auth: { issuers: [corp], colour: red }\n",
    );
    let (ok, out) = check(&p);
    assert!(!ok);
    for want in [
        "bad.yaml:2:5: listeners[0].address",
        "bad.yaml:8:25: issuers[0].algorithms[1]: `none` is not a supported algorithm",
        "bad.yaml:14:5: routes[0].upstream: no upstream named `ghost`",
        "routes[0].auth.colour: unknown field `colour`",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let p = temp_file("syntax.yaml", "listeners: [\n  {address: x\n");
    let (ok, out) = check(&p);
    assert!(!ok);
    assert!(
        out.contains("syntax.yaml:") && out.contains("invalid YAML"),
        "{out}"
    );
}

/// `serve` with a bad config exits 1 before binding anything.
#[test]
fn serve_refuses_bad_config_before_binding() {
    let port = free_port();
    let p = temp_file(
        "bad.yaml",
        &format!("listeners:\n  - address: 127.0.0.1:{port}\nupstreams: []\nroutes: []\n"),
    );
    let out = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(&p)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start") && err.contains("at least one upstream"),
        "{err}"
    );
    assert!(!err.contains("serving"), "{err}");
}

struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Served {
    /// Stop the gateway as a container runtime does (SIGTERM) and wait up to 10 s for it.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(term.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(yaml: &str) -> Served {
    serve_logging_to(yaml, Stdio::null())
}

/// `jwtgate serve` on `yaml` (its listener on 127.0.0.1), its log to `stderr`, once it
/// accepts connections.
fn serve_logging_to(yaml: &str, stderr: impl Into<Stdio>) -> Served {
    let p = temp_file("gw.yaml", yaml);
    let port: u16 = yaml
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .expect("port");
    let child = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Served { child, addr }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS until dropped; reports the peak.
struct RssWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(rss_kib(pid))
        });
        RssWatch {
            stop,
            handle: Some(handle),
        }
    }
    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .map(|h| h.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// A 100 MB upload and a 100 MB download stream through while RSS grows by under 20 MB;
/// an unmatched path is a 404 that never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let echo = Echo::start().await.expect("echo");
    let port = free_port();
    let gw = serve(&format!(
        "listeners: [ {{ address: \"127.0.0.1:{port}\" }} ]\nlog: {{ level: warn }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: files, match: {{ path_prefix: /__download }}, upstream: echo, auth: none }}\n  - {{ name: upload, match: {{ path: /upload, methods: [PUT] }}, upstream: echo, auth: none }}\n",
        echo.addr
    ));
    let addr = gw.addr;
    let pid = gw.child.id();

    let r = get(addr, "/elsewhere", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        echo.stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // Warm up the connection pool and allocator, then measure from there.
    let _ = get(addr, "/__download/1048576", &[]).await;
    let base = rss_kib(pid);
    let watch = RssWatch::start(pid);

    let upload = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "PUT /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n").expect("head");
        let chunk = vec![7u8; 256 * 1024];
        let mut sent = 0;
        while sent < SIZE {
            s.write_all(&chunk).expect("body");
            sent += chunk.len() as u64;
        }
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read");
        parse_response(&resp)
    });
    let r = upload.await.expect("upload");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], SIZE);

    let download = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "GET /__download/{SIZE} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        .expect("head");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let total = download.await.expect("download");
    assert!(
        total > SIZE && total < SIZE + 4096,
        "received {total} bytes (body plus head)"
    );

    let peak = watch.peak();
    let growth_mib = peak.saturating_sub(base) as f64 / 1024.0;
    println!("RSS base {base} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB");
    assert!(growth_mib < 20.0, "RSS grew by {growth_mib:.1} MiB");
}

/// One JSON access line per request, allowed or refused: request id (the one the client got
/// back in `X-Request-Id`), method, path without its query, route, upstream, status, bytes,
/// a bounded reason precise enough to act on; never the token, from any source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_never_holds_a_token() {
    let echo = Echo::start().await.expect("echo");
    let port = free_port();
    let secret = "0123456789abcdef0123456789abcdef";
    let log = std::env::temp_dir().join(format!("jwtgate-log-{}", fastrand::u64(..)));
    let gw = serve_logging_to(
        &format!(
            "listeners: [ {{ address: \"127.0.0.1:{port}\" }} ]\nlog: {{ format: json, level: debug }}\nissuers:\n  - {{ name: s, issuer: https://s.example, secret: \"{secret}\", audiences: [api], algorithms: [HS256] }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [s], token_sources: [header, {{ query: access_token }}] }} }}\n",
            echo.addr
        ),
        std::fs::File::create(&log).expect("log file"),
    );
    let token = Signer::hmac(secret.as_bytes(), jsonwebtoken::Algorithm::HS256)
        .mint(&claims("https://s.example"));
    let first = get(gw.addr, "/a", &[&bearer(&token)]).await;
    assert_eq!(first.status, 200);
    let second = get(gw.addr, &format!("/b?access_token={token}"), &[]).await;
    assert_eq!(second.status, 200);
    let mut expired = claims("https://s.example");
    expired["exp"] = serde_json::json!(now() - 3600);
    let signer = Signer::hmac(secret.as_bytes(), jsonwebtoken::Algorithm::HS256);
    let bad = signer.mint(&expired);
    let mut wrong_aud = claims("https://s.example");
    wrong_aud["aud"] = serde_json::json!("other");
    let wrong_aud = signer.mint(&wrong_aud);
    let forged = Signer::hmac(
        b"another secret of thirty-two bytes!",
        jsonwebtoken::Algorithm::HS256,
    )
    .mint(&claims("https://s.example"));
    // (path, headers, status, reason)
    let cases: [(&str, Vec<String>, u16, &str); 6] = [
        ("/c", vec![bearer(&bad)], 401, "expired"),
        ("/d", vec![bearer(&wrong_aud)], 401, "audience"),
        ("/e", vec![bearer(&forged)], 401, "bad_signature"),
        ("/f", vec![bearer("not-a-jwt")], 401, "malformed"),
        ("/g", vec![], 401, "no_token"),
        (
            "/h",
            vec!["X-Request-Id: client-chosen.id-1".to_owned()],
            401,
            "no_token",
        ),
    ];
    let mut ids = vec![
        first.header("x-request-id").expect("id on 200").to_owned(),
        second.header("x-request-id").expect("id on 200").to_owned(),
    ];
    for (path, headers, status, _) in &cases {
        let h: Vec<&str> = headers.iter().map(String::as_str).collect();
        let r = get(gw.addr, path, &h).await;
        assert_eq!(r.status, *status, "{path}");
        ids.push(
            r.header("x-request-id")
                .expect("id on a refusal")
                .to_owned(),
        );
    }
    assert_eq!(ids[7], "client-chosen.id-1", "a plain client id is kept");
    assert_ne!(ids[0], ids[1], "ids are fresh per request");
    // Access lines are held up to 100 ms before they are written; a SIGTERM writes them.
    let mut gw = gw;
    assert!(gw.terminate().success());
    let text = std::fs::read_to_string(&log).expect("log");
    let access: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "jwtgate::access")
        .collect();
    assert_eq!(access.len(), 2 + cases.len(), "{text}");
    assert_eq!(access[0]["route"], "api");
    assert_eq!(access[0]["upstream"], "echo");
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["reason"], "ok");
    assert_eq!(
        access[1]["path"], "/b",
        "the query (and its token) is not logged"
    );
    for (i, (path, _, status, reason)) in cases.iter().enumerate() {
        let line = &access[2 + i];
        assert_eq!(line["path"], *path);
        assert_eq!(line["status"], *status);
        assert_eq!(line["reason"], *reason, "{line}");
        assert!(line["bytes"].as_u64().is_some_and(|n| n > 0), "{line}");
    }
    for (line, id) in access.iter().zip(&ids) {
        assert_eq!(
            line["request_id"],
            id.as_str(),
            "the logged id is the one returned"
        );
    }
    assert!(!text.contains("Some("), "no Rust debug strings: {text}");
    // At debug level a refusal says what was expected and what came.
    let detail: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"] == "token refused: audience"
                || v["fields"]["message"] == "token refused: audience"
        })
        .collect();
    assert_eq!(detail.len(), 1, "{text}");
    assert_eq!(detail[0]["expected"], "api");
    assert!(
        detail[0]["got"]
            .as_str()
            .is_some_and(|g| g.contains("other")),
        "{}",
        detail[0]
    );
    for t in [&token, &bad, &wrong_aud, &forged] {
        let sig = t.rsplit('.').next().expect("sig");
        assert!(!text.contains(sig), "a token signature is in the log");
        let payload = t.split('.').nth(1).expect("payload");
        assert!(!text.contains(payload), "a token payload is in the log");
    }
}

/// One `jwtgate dev` at a time: each takes admin port 9900 when it is free, and two
/// starting together could both find it free.
static DEV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `jwtgate dev` with `args`, its output read up to "Press Ctrl-C".
async fn start_dev(args: &[&str], port: u16) -> (Served, Vec<String>) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .arg("dev")
        .args(args)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let served = Served {
        child,
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
    };
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("Press Ctrl-C"))
            .collect()
    })
    .await
    .expect("read");
    (served, lines)
}

/// `jwtgate dev` starts everything on loopback and its printed commands do what they say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_working_commands() {
    let _one = DEV.lock().await;
    let (_guard, lines) = start_dev(&[], free_port()).await;
    let tokens: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split("Authorization: Bearer ").nth(1))
        .map(|t| t.trim_end_matches('\'').to_owned())
        .collect();
    assert_eq!(tokens.len(), 5, "{lines:?}");
    let addr: SocketAddr = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("gateway   http://"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("gateway address");
    let r = get(addr, "/api/orders", &[&bearer(&tokens[0])]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["42".to_owned()]);
    assert_eq!(get(addr, "/api/orders", &[]).await.status, 401);
    assert_eq!(
        get(addr, "/api/orders", &[&bearer(&tokens[1])])
            .await
            .json()["error_description"],
        "token expired"
    );
    let r = request(
        addr,
        "POST",
        "/api/orders",
        &[&bearer(&tokens[2]), "Content-Length: 0"],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Demo: a fresh token answered 200")
                && l.contains("refused with 401")),
        "{lines:?}"
    );

    // The printed revoke command works as printed, from outside the repository, and the
    // first token is then refused.
    let line = lines
        .iter()
        .find(|l| l.contains("revoke --control"))
        .expect("revoke command");
    assert!(!line.contains("cargo"), "{line}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(line.trim())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("revoke");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    loop {
        let r = get(addr, "/api/orders", &[&bearer(&tokens[0])]).await;
        if r.status == 401 {
            assert_eq!(r.json()["error_description"], "token revoked");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `jwtgate dev --bind 0.0.0.0`, the image's default command: reachable through any
/// address of the machine, printing addresses a local client can use, and stopped cleanly
/// by the SIGTERM a container runtime sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_in_a_container() {
    let _one = DEV.lock().await;
    let port = free_port();
    let (mut served, lines) = start_dev(&["--bind", "0.0.0.0"], port).await;
    let gateway = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("gateway   http://"))
        .expect("gateway line");
    assert!(
        gateway.starts_with(&format!("127.0.0.1:{port} ")),
        "{gateway}"
    );
    let token = lines
        .iter()
        .find_map(|l| l.split("Authorization: Bearer ").nth(1))
        .map(|t| t.trim_end_matches('\'').to_owned())
        .expect("token");
    let r = get(served.addr, "/api/orders", &[&bearer(&token)]).await;
    assert_eq!(r.status, 200);
    let listens = std::fs::read_to_string("/proc/net/tcp").expect("tcp table");
    assert!(
        listens
            .lines()
            .any(|l| l.contains(&format!(" 00000000:{port:04X} 00000000:0000 0A"))),
        "the gateway listens on 0.0.0.0:{port}"
    );
    let status = served.terminate();
    assert!(status.success(), "{status:?}");
}

/// A file built to hurt the parser — deep nesting, an alias bomb, sheer size — is refused
/// by `check` with a clear error, quickly, and never takes a running gateway down on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_config_files_are_refused() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 10].join(", ")
        ));
    }
    let deep = format!("listeners: {}1{}\n", "[".repeat(6000), "]".repeat(6000));
    let deep_block: String = (0..1000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let huge = format!("realm: \"{}\"\n", "x".repeat(2 * 1024 * 1024));
    for (name, text, want) in [
        ("bomb.yaml", bomb.as_str(), "aliases"),
        ("deep.yaml", deep.as_str(), "nest"),
        ("deep-block.yaml", deep_block.as_str(), "nest"),
        ("huge.yaml", huge.as_str(), "larger than"),
    ] {
        let start = Instant::now();
        let (ok, out) = check(&temp_file(name, text));
        assert!(!ok, "{name} accepted");
        assert!(
            out.contains(want) || out.contains("recursion limit"),
            "{name}: {}",
            &out[..out.len().min(300)]
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            start.elapsed()
        );
    }
    // The running gateway refuses the same files on reload and keeps serving.
    let echo = Echo::start().await.expect("echo");
    let good = format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nupstreams: [ {{ name: e, url: \"http://{}\" }} ]\nroutes: [ {{ name: r, match: {{ path_prefix: / }}, upstream: e, auth: none }} ]\n",
        echo.addr
    );
    let gw = start_gateway(&good).await;
    for text in [&bomb, &deep, &deep_block] {
        assert!(!gw.reload_file(&temp_file("reload.yaml", text)));
        assert_eq!(get(gw.addrs[0], "/x", &[]).await.status, 200);
    }
}

/// A problem about a value that came from `${VAR}` names the variable, never the value.
#[test]
fn expanded_secrets_never_appear_in_errors() {
    let file = temp_file(
        "secret.yaml",
        "listeners: [ { address: \"${JWTGATE_SYNC_TOKEN}\" } ]\nupstreams: [ { name: e, url: \"http://127.0.0.1:1\" } ]\nroutes: [ { name: r, match: { path_prefix: / }, upstream: e, auth: none } ]\n",
    );
    let (ok, out) = check(&file);
    assert!(!ok);
    assert!(out.contains("${JWTGATE_SYNC_TOKEN}"), "{out}");
    assert!(!out.contains("sync-token"), "the secret leaked: {out}");
}

/// `jwtgate health` is the container probe: 0 for a 2xx answer, 1 with the reason for
/// anything else (not ready yet, nothing listening, not HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_the_admin_listener() {
    let echo = Echo::start().await.expect("echo");
    let closed = free_port();
    // Keys from an IdP that is down: alive, not ready.
    let gw = start_gateway(&format!(
        "listeners: [ {{ address: \"127.0.0.1:0\" }} ]\nadmin: {{ address: \"127.0.0.1:0\" }}\nissuers:\n  - {{ name: idp, issuer: https://idp.test, jwks_uri: \"http://127.0.0.1:{closed}/jwks\", audiences: [api], algorithms: [RS256] }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}\n",
        echo.addr
    ))
    .await;
    let admin = gw.admin.expect("admin");
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .args(["health", "--url", &url])
                .output()
                .expect("run health");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, _) = probe(format!("http://{admin}/healthz"))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "alive");
    let (code, err) = probe(format!("http://{admin}/readyz")).await.expect("join");
    assert_eq!(code, Some(1));
    assert!(err.contains("answered 503"), "{err}");
    let (code, err) = probe(format!("http://127.0.0.1:{closed}/healthz"))
        .await
        .expect("join");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot connect"), "{err}");
    let (code, err) = probe("https://127.0.0.1:1/".to_owned())
        .await
        .expect("join");
    assert_eq!(code, Some(1));
    assert!(err.contains("only http://"), "{err}");
}

/// Every subcommand and every flag of every subcommand has help text.
#[test]
fn every_flag_is_explained() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let subcommands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            assert!(
                words.next().is_some(),
                "subcommand {name} has no help: {l:?}"
            );
            Some(name.to_owned())
        })
        .filter(|n| n != "help")
        .collect();
    assert!(subcommands.len() >= 8, "{top}");
    for sub in &subcommands {
        let text = help(&[sub, "--help"]);
        let options: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Options:"))
            .skip(1)
            .filter(|l| l.trim_start().starts_with('-'))
            .collect();
        for line in options {
            // `  -c, --config <FILE>  The gateway configuration…`: text after the flag.
            let described = line
                .trim_start()
                .split("  ")
                .filter(|p| !p.is_empty())
                .count()
                > 1;
            assert!(described, "`jwtgate {sub}`: {line:?} has no help\n{text}");
        }
    }
}

/// Text logs written to a file (not a terminal) hold no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_have_no_colour() {
    let echo = Echo::start().await.expect("echo");
    let port = free_port();
    let log = std::env::temp_dir().join(format!("jwtgate-text-log-{}", fastrand::u64(..)));
    let gw = serve_logging_to(
        &format!(
            "listeners: [ {{ address: \"127.0.0.1:{port}\" }} ]\nlog: {{ format: text, level: info }}\nupstreams: [ {{ name: echo, url: \"http://{}\" }} ]\nroutes:\n  - {{ name: open, match: {{ path_prefix: / }}, upstream: echo, auth: none }}\n",
            echo.addr
        ),
        std::fs::File::create(&log).expect("log file"),
    );
    assert_eq!(get(gw.addr, "/a", &[]).await.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    drop(gw);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("jwtgate::access"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
}
