//! Revocation check per request with 0, 10^4 and 10^6 entries; memory per entry and
//! snapshot save/load time at 10^6 entries (printed before the criterion runs).
//!
//! Run: `cargo bench --bench revocation`

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use jwtgate::revocation::set::RevocationSet;
use jwtgate::revocation::Kind;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// A set of `n` entries shaped like real traffic: mostly jti, some sid and sub.
fn filled(n: usize) -> RevocationSet {
    let set = RevocationSet::new();
    for i in 0..n {
        let (kind, cutoff) = match i % 10 {
            0 => (Kind::Sub, Some(1_700_000_000)),
            1 | 2 => (Kind::Sid, None),
            _ => (Kind::Jti, None),
        };
        set.insert(
            kind,
            "https://id.example.com/realms/main",
            &format!("{i:032x}"),
            4_000_000_000,
            cutoff,
        );
    }
    set
}

fn figures() {
    let before = rss_bytes();
    let t = Instant::now();
    let set = filled(1_000_000);
    let built = t.elapsed();
    let after = rss_bytes();
    let per_entry_rss = after.saturating_sub(before) as f64 / 1e6;
    let per_entry_table = set.capacity_bytes() as f64 / 1e6;
    let path = std::env::temp_dir().join(format!("jwtgate-bench-{}.snapshot", std::process::id()));
    let t = Instant::now();
    set.save(&path).expect("save");
    let saved = t.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let loaded = RevocationSet::load(&path, 0).expect("load");
    let load = t.elapsed();
    assert_eq!(loaded.len(), 1_000_000);
    let _ = std::fs::remove_file(&path);
    println!("revocation set, 10^6 entries: insert all {built:?}; RSS growth {per_entry_rss:.1} B/entry; table {per_entry_table:.1} B/entry");
    println!("snapshot, 10^6 entries: {size} bytes, save {saved:?}, load {load:?}");
}

fn check(c: &mut Criterion) {
    figures();
    for n in [0usize, 10_000, 1_000_000] {
        let set = filled(n);
        // A clean token: jti, sid and sub all present, none revoked — the worst case.
        let keys = set.token_keys(
            "https://id.example.com/realms/main",
            Some("not-revoked-jti"),
            Some("sess-77"),
            Some("user-42"),
            Some(1_800_000_000),
        );
        c.bench_function(&format!("revocation/lookup/{n}"), |b| {
            b.iter(|| black_box(set.lookup(black_box(&keys))))
        });
        // Many different tokens, so the probes miss the CPU caches as real traffic would.
        let many: Vec<_> = (0..65_536u32)
            .map(|i| {
                set.token_keys(
                    "https://id.example.com/realms/main",
                    Some(&format!("jti-{i}")),
                    Some(&format!("sess-{i}")),
                    Some(&format!("user-{i}")),
                    Some(1_800_000_000),
                )
            })
            .collect();
        let mut i = 0usize;
        c.bench_function(&format!("revocation/lookup_spread/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) & 65_535;
                black_box(set.lookup(black_box(&many[i])))
            })
        });
        let memo = AtomicU64::new(0);
        let claims = serde_json::Map::new();
        c.bench_function(&format!("revocation/per_request_memo/{n}"), |b| {
            b.iter(|| black_box(set.is_revoked(black_box(&keys), &memo, &claims)))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = check
}
criterion_main!(benches);
