//! One control-plane replica (the release binary, SQLite store) holding 10^6 live entries,
//! followed by 200 syncing clients (in-process `SyncClient`s, as gateways run them):
//! cold snapshot time per client (one alone, then all at once), fan-out of a new entry to
//! all 200 streams (p50/p99 over 100 writes), and the control plane's memory.
//!
//! Run: `cargo bench --bench control_scale` (`ENTRIES`, `CLIENTS`, `COLD_CLIENTS` to change
//! the sizes).

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwtgate::clock::Clock;
use jwtgate::config::StoreUrl;
use jwtgate::control::store::{NewRevocation, Store};
use jwtgate::revocation::set::RevocationSet;
use jwtgate::revocation::sync::{SyncClient, SyncState};
use jwtgate::revocation::Kind;
use serde_json::json;
use support::*;
use tokio::sync::watch;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time a process has used.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is 3rd; utime 14th and stime 15th overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Client {
    set: Arc<RevocationSet>,
    state: Arc<SyncState>,
    /// The newest cursor this client has applied.
    seen: Arc<AtomicU64>,
}

fn client(url: &http::Uri, shutdown: &watch::Receiver<bool>, from: Option<(u64, &str)>) -> Client {
    let set = Arc::new(RevocationSet::new());
    if let Some((cursor, epoch)) = from {
        set.set_cursor(cursor);
        set.set_epoch(epoch);
    }
    let state = Arc::new(SyncState::new(Clock::system()));
    let seen = Arc::new(AtomicU64::new(0));
    let applied = seen.clone();
    // The control plane's cost is what is measured: clients count, they do not keep a set.
    let apply: jwtgate::revocation::sync::Apply = Arc::new(move |e| {
        applied.fetch_max(e.cursor, Ordering::Relaxed);
    });
    let sync = SyncClient::new(
        url,
        Some(READER_KEY),
        set.clone(),
        apply,
        state.clone(),
        Duration::from_secs(30),
    );
    tokio::spawn(sync.run(shutdown.clone()));
    Client { set, state, seen }
}

async fn until_ready(c: &Client, start: Instant) -> Duration {
    while !c.state.is_ready() {
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "no cold snapshot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let entries = env_or("ENTRIES", 1_000_000);
    let clients = env_or("CLIENTS", 200);
    let cold_clients = env_or("COLD_CLIENTS", 200);
    let dir = temp_dir();
    let db = dir.join("rev.db");

    // 1. The store: `entries` live entries, written in batches of 10,000.
    let fill = Instant::now();
    {
        let store = Store::open(&StoreUrl::Sqlite(db.clone()))
            .await
            .expect("store");
        let exp = now() + 3600;
        let mut n = 0;
        while n < entries {
            let batch: Vec<NewRevocation> = (n..(n + 10_000).min(entries))
                .map(|i| NewRevocation {
                    kind: Kind::Jti,
                    iss: "https://idp.example.com".into(),
                    value: format!("{i:032x}"),
                    expires_at: exp,
                    issued_before: None,
                    reason: None,
                })
                .collect();
            n += batch.len();
            store.insert_many(&batch, now()).await.expect("batch");
        }
    }
    println!(
        "store filled with {entries} entries in {:?}",
        fill.elapsed()
    );

    // 2. The control plane: the release binary on its own, so its memory is its own.
    let port = free_port();
    let cfg = dir.join("control.yaml");
    std::fs::write(
        &cfg,
        control_yaml(
            &format!("sqlite://{}", db.display()),
            &format!("127.0.0.1:{port}"),
            "log: { level: warn }\n",
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["control", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("control");
    let pid = child.id();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let started = Instant::now();
    while try_raw(addr, "GET /healthz HTTP/1.1\nHost: c", b"")
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "control did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url: http::Uri = format!("http://{addr}").parse().expect("url");
    let (idle_rss, _) = memory(pid);
    let (_shutdown_tx, shutdown) = watch::channel(false);

    // 3. Cold snapshots: one client alone, then `cold_clients` at once.
    let (alone_tx, alone_shutdown) = watch::channel(false);
    let start = Instant::now();
    let cpu_before = cpu(pid);
    let alone = client(&url, &alone_shutdown, None);
    let one = until_ready(&alone, start).await;
    let cpu_one = cpu(pid) - cpu_before;
    let head = alone.set.cursor();
    let epoch = alone.set.epoch();
    println!(
        "cold snapshot, one client alone: {one:?}; control-plane CPU {cpu_one:?} (head cursor {head})"
    );
    let (cold_tx, cold_shutdown) = watch::channel(false);
    let start = Instant::now();
    let cold: Vec<Client> = (0..cold_clients)
        .map(|_| client(&url, &cold_shutdown, None))
        .collect();
    // Each client's own completion time, polled together.
    let cpu_before = cpu(pid);
    let mut done: Vec<Option<Duration>> = vec![None; cold.len()];
    while done.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "no cold snapshot"
        );
        for (c, d) in cold.iter().zip(done.iter_mut()) {
            if d.is_none() && c.state.is_ready() {
                *d = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_cold = cpu(pid) - cpu_before;
    let mut times: Vec<Duration> = done.into_iter().flatten().collect();
    times.sort();
    let (_, cold_hwm) = memory(pid);
    println!(
        "cold snapshot, {cold_clients} clients at once: first {:?}, p50 {:?}, p99 {:?}, last {:?}; control-plane CPU {cpu_cold:?} ({:?} per snapshot)",
        times[0],
        pct(&times, 0.5),
        pct(&times, 0.99),
        times[times.len() - 1],
        cpu_cold / cold_clients as u32
    );
    // The cold clients stop (with the one alone) before the fan-out is measured.
    drop(cold);
    let _ = cold_tx.send(true);
    let _ = alone_tx.send(true);

    // 4. Fan-out: `clients` streams resuming at the head, 100 writes one at a time.
    let warm: Vec<Client> = (0..clients)
        .map(|_| client(&url, &shutdown, Some((head, &epoch))))
        .collect();
    for c in &warm {
        until_ready(c, Instant::now()).await;
    }
    let metric = "jwtgate_control_stream_clients ";
    loop {
        let m = get(addr, "/metrics", &[]).await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let open: usize = text
            .lines()
            .find_map(|l| l.strip_prefix(metric))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if open == clients {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fan = Vec::new();
    for i in 0..100 {
        let r = revoke(
            addr,
            &json!({ "iss": "https://idp.example.com", "jti": format!("fan-{i}"), "expires_at": now() + 600 }),
        )
        .await;
        assert_eq!(r.status, 201);
        let cursor: u64 = r.json()["cursor"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .expect("cursor");
        let acked = Instant::now();
        for c in &warm {
            while c.seen.load(Ordering::Relaxed) < cursor {
                assert!(acked.elapsed() < Duration::from_secs(30), "not fanned out");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        fan.push(acked.elapsed());
    }
    fan.sort();
    let (rss, hwm) = memory(pid);
    println!(
        "fan-out of one entry to {clients} streams, 100 writes: p50 {:?}, p99 {:?}, max {:?}",
        pct(&fan, 0.5),
        pct(&fan, 0.99),
        fan[fan.len() - 1]
    );
    println!(
        "control plane memory (MiB): idle with {entries} entries {idle_rss}; peak during the cold snapshots {cold_hwm}; with {clients} streams {rss}; peak {hwm}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
