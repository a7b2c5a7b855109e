//! The real `jwtgate` binary: `check` on the shipped examples and on broken files, `serve`
//! refusing a bad config, and large bodies streaming through with bounded memory.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwtgate");

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .env("JWTGATE_HS_SECRET", "0123456789abcdef0123456789abcdef")
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

/// Every example in config/ is accepted by `jwtgate check`.
#[test]
fn shipped_examples_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (ok, out) = check(&path);
            assert!(ok, "{}: {out}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2);
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(yaml: &str) -> Served {
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
        .stderr(Stdio::null())
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
