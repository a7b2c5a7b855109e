//! The gateway's revocation set: compact, keyed-hash entries so that a million of them
//! fit in tens of megabytes, and a version counter so that a token already checked against
//! the current version skips the lookup entirely.
//!
//! Keys are 64-bit hashes of `(kind, iss, value)` under a random per-set seed. A hash
//! collision can only make an unrelated token look revoked — never a revoked one look
//! clean — and with a secret seed nobody can aim for one.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use serde_json::{Map as Claims, Value};

use super::{claim_value, Kind, CLAIM_SEPARATOR};

/// The keys are already uniformly random: hash them by identity.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What one entry holds: when it may be dropped, and for `sub` and claim entries the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Unix seconds (u32 reaches 2106).
    expires: u32,
    /// `sub` and claim entries: tokens with `iat` below this are revoked. 0 for jti/sid.
    cutoff: u32,
}

type Map = HashMap<u64, Slot, BuildHasherDefault<IdentityHasher>>;

/// A token's revocation keys, computed once when it is verified.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenKeys {
    pub jti: Option<u64>,
    pub sid: Option<u64>,
    pub sub: Option<u64>,
    pub iat: u64,
}

pub struct RevocationSet {
    seed: u64,
    map: RwLock<Map>,
    /// Bumped after every insert; starts at 1 so a fresh token (0) always looks once.
    version: AtomicU64,
    /// The control plane cursor the set reflects.
    cursor: AtomicU64,
    /// The epoch of the store the cursor belongs to (empty until known).
    epoch: std::sync::Mutex<String>,
    counts: [AtomicU64; 4],
    /// The claims that claim entries name (only ever grows; a handful at most), and
    /// whether there is any, read on every lookup.
    claim_names: RwLock<Vec<Box<str>>>,
    has_claims: AtomicBool,
}

/// Snapshot formats: version 2 adds the store epoch after the entries, version 3 the names
/// of the claims that claim entries name.
const MAGIC_V1: &[u8; 8] = b"JWTGRV01";
const MAGIC_V2: &[u8; 8] = b"JWTGRV02";
const MAGIC: &[u8; 8] = b"JWTGRV03";

impl RevocationSet {
    pub fn new() -> RevocationSet {
        RevocationSet::with_seed(fastrand::u64(..))
    }

    fn with_seed(seed: u64) -> RevocationSet {
        RevocationSet {
            seed,
            map: RwLock::new(Map::default()),
            version: AtomicU64::new(1),
            cursor: AtomicU64::new(0),
            epoch: std::sync::Mutex::new(String::new()),
            counts: Default::default(),
            claim_names: RwLock::new(Vec::new()),
            has_claims: AtomicBool::new(false),
        }
    }

    /// Claim entries name `claim`: from now on every token's `claim` is looked up.
    fn add_claim_name(&self, claim: &str) {
        let mut names = self.claim_names.write().unwrap_or_else(|e| e.into_inner());
        if !names.iter().any(|n| &**n == claim) {
            names.push(claim.into());
        }
        drop(names);
        self.has_claims.store(true, Ordering::Release);
    }

    /// The claims that claim entries name.
    pub fn claim_names(&self) -> Vec<Box<str>> {
        self.claim_names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The claim entry key a token holds for `claim`, when that claim is a string.
    pub fn claim_key(&self, claims: &Claims<String, Value>, claim: &str) -> Option<u64> {
        let iss = claims.get("iss")?.as_str()?;
        let value = claims.get(claim)?.as_str()?;
        Some(self.key(Kind::Claim, iss, &claim_value(claim, value)))
    }

    pub fn key(&self, kind: Kind, iss: &str, value: &str) -> u64 {
        let mut h = foldhash::quality::FixedState::with_seed(self.seed).build_hasher();
        h.write_u8(kind as u8);
        h.write(iss.as_bytes());
        h.write_u8(0xff);
        h.write(value.as_bytes());
        // The low two bits carry the kind, so counts stay exact through purges (four kinds
        // fill them: a fifth needs a wider tag).
        (h.finish() & !3) | kind as u64
    }

    pub fn token_keys(
        &self,
        iss: &str,
        jti: Option<&str>,
        sid: Option<&str>,
        sub: Option<&str>,
        iat: Option<u64>,
    ) -> TokenKeys {
        TokenKeys {
            jti: jti.map(|v| self.key(Kind::Jti, iss, v)),
            sid: sid.map(|v| self.key(Kind::Sid, iss, v)),
            sub: sub.map(|v| self.key(Kind::Sub, iss, v)),
            // No `iat`: every subject cutoff applies (fail closed).
            iat: iat.unwrap_or(0),
        }
    }

    /// Add or strengthen an entry (a later expiry or cutoff wins; nothing is weakened).
    pub fn insert(
        &self,
        kind: Kind,
        iss: &str,
        value: &str,
        expires_at: u64,
        issued_before: Option<u64>,
    ) {
        if kind == Kind::Claim {
            if let Some((claim, _)) = value.split_once(CLAIM_SEPARATOR) {
                self.add_claim_name(claim);
            }
        }
        let key = self.key(kind, iss, value);
        let slot = Slot {
            expires: clamp_u32(expires_at),
            cutoff: if matches!(kind, Kind::Sub | Kind::Claim) {
                clamp_u32(issued_before.unwrap_or(expires_at))
            } else {
                0
            },
        };
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&key) {
            Some(old) => {
                old.expires = old.expires.max(slot.expires);
                old.cutoff = old.cutoff.max(slot.cutoff);
            }
            None => {
                map.insert(key, slot);
                self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(map);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Drop an entry (a delete written at the control plane). Tokens found clean stay
    /// clean, so the version is left alone.
    pub fn remove(&self, kind: Kind, iss: &str, value: &str) {
        let key = self.key(kind, iss, value);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.remove(&key).is_some() {
            self.counts[kind as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a token with these keys and claims is revoked. `checked` is the token's memo
    /// of the last version it was found clean at: unchanged set, no lookup.
    pub fn is_revoked(
        &self,
        keys: &TokenKeys,
        checked: &AtomicU64,
        claims: &Claims<String, Value>,
    ) -> bool {
        let version = self.version.load(Ordering::Acquire);
        if checked.load(Ordering::Relaxed) == version {
            return false;
        }
        let revoked = self.lookup(keys) || self.claim_revoked(claims, keys.iat);
        if !revoked {
            checked.store(version, Ordering::Relaxed);
        }
        revoked
    }

    /// The lookup itself, without the memo.
    pub fn lookup(&self, keys: &TokenKeys) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        keys.jti.is_some_and(|k| map.contains_key(&k))
            || keys.sid.is_some_and(|k| map.contains_key(&k))
            || keys
                .sub
                .is_some_and(|k| map.get(&k).is_some_and(|s| keys.iat < u64::from(s.cutoff)))
    }

    /// Whether a claim entry revokes a token with these claims, issued at `iat`.
    pub fn claim_revoked(&self, claims: &Claims<String, Value>, iat: u64) -> bool {
        if !self.has_claims.load(Ordering::Acquire) {
            return false;
        }
        let keys: Vec<u64> = self
            .claim_names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|claim| self.claim_key(claims, claim))
            .collect();
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .any(|k| map.get(k).is_some_and(|s| iat < u64::from(s.cutoff)))
    }

    /// Drop entries past their time. Returns how many went.
    pub fn purge(&self, now: u64) -> usize {
        let now = clamp_u32(now);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, s| s.expires > now);
        let gone = before - map.len();
        if gone > 0 {
            self.recount(&map);
        }
        gone
    }

    /// Count the entries of each kind again (the low two bits of a key are its kind).
    fn recount(&self, map: &Map) {
        let mut counts = [0u64; 4];
        for k in map.keys() {
            counts[(*k & 3) as usize] += 1;
        }
        for (c, n) in self.counts.iter().zip(counts) {
            c.store(n, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    pub fn set_cursor(&self, c: u64) {
        self.cursor.fetch_max(c, Ordering::AcqRel);
    }

    /// Follow another store (or the same one restored): the cursor starts over at zero.
    /// Entries already held stay — more revoked than needed until they expire, never less.
    pub fn restart(&self, epoch: &str) {
        self.cursor.store(0, Ordering::Release);
        self.set_epoch(epoch);
    }

    /// The epoch of the store the cursor belongs to; empty when unknown.
    pub fn epoch(&self) -> String {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_epoch(&self, epoch: &str) {
        let mut e = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        if *e != epoch {
            *e = epoch.to_owned();
        }
    }

    /// Write the set atomically: a temporary file beside `path`, fsync, rename.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut buf = Vec::new();
        // The epoch before the cursor: `restart` zeroes the cursor before it changes the
        // epoch, so a save racing it pairs a cursor with its own epoch or an older one
        // (which only causes another restart), never an old cursor with a new epoch.
        let epoch = self.epoch();
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            buf.reserve(40 + map.len() * 16);
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&self.seed.to_le_bytes());
            buf.extend_from_slice(&self.cursor().to_le_bytes());
            // Three count slots (the layout of earlier versions); counts are recomputed on
            // load.
            for c in &self.counts[..3] {
                buf.extend_from_slice(&(c.load(Ordering::Relaxed) as u32).to_le_bytes());
            }
            buf.extend_from_slice(&(map.len() as u64).to_le_bytes());
            for (k, s) in map.iter() {
                buf.extend_from_slice(&k.to_le_bytes());
                buf.extend_from_slice(&s.expires.to_le_bytes());
                buf.extend_from_slice(&s.cutoff.to_le_bytes());
            }
            let epoch = &epoch.as_bytes()[..epoch.len().min(u16::MAX as usize)];
            buf.extend_from_slice(&(epoch.len() as u16).to_le_bytes());
            buf.extend_from_slice(epoch);
            // Every name, whole: one left out would leave its entries matching nothing. Read
            // under the map's lock: an entry's name is added before the entry, so every
            // entry written above has its name here (the only nesting of the two locks).
            let names = self.claim_names();
            buf.extend_from_slice(&(names.len() as u32).to_le_bytes());
            for name in &names {
                buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
                buf.extend_from_slice(name.as_bytes());
            }
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Read a set written by [`save`](Self::save), dropping entries already past `now`.
    pub fn load(path: &Path, now: u64) -> std::io::Result<RevocationSet> {
        let bad = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("revocation snapshot {}: {what}", path.display()),
            )
        };
        let mut data = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut data)?;
        let header = 8 + 8 + 8 + 12 + 8;
        let version = match data.get(..8) {
            Some(m) if m == MAGIC_V1 => 1,
            Some(m) if m == MAGIC_V2 => 2,
            Some(m) if m == MAGIC => 3,
            _ => 0,
        };
        if data.len() < header || version == 0 {
            return Err(bad("not a jwtgate snapshot"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap_or([0; 4]));
        let set = RevocationSet::with_seed(u64_at(8));
        set.cursor.store(u64_at(16), Ordering::Release);
        let n = usize::try_from(u64_at(36)).map_err(|_| bad("truncated"))?;
        let entries_end = n
            .checked_mul(16)
            .and_then(|b| b.checked_add(header))
            .ok_or_else(|| bad("truncated"))?;
        // After the entries: the epoch (v2), a u16 length and its bytes; then the claim
        // names (v3), a u32 count and each a u32 length and its bytes.
        let mut at = entries_end;
        let take = |at: &mut usize, len: usize| -> std::io::Result<&[u8]> {
            let end = at.checked_add(len).ok_or_else(|| bad("truncated"))?;
            let bytes = data.get(*at..end).ok_or_else(|| bad("truncated"))?;
            *at = end;
            Ok(bytes)
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if version >= 2 {
            let len = take(&mut at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
            set.set_epoch(&text(take(&mut at, usize::from(len))?));
        }
        if version >= 3 {
            let u32_next = |at: &mut usize| {
                take(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            for _ in 0..u32_next(&mut at)? {
                let len = u32_next(&mut at)?;
                set.add_claim_name(&text(take(&mut at, len)?));
            }
        }
        if data.len() != at {
            return Err(bad("truncated"));
        }
        let now = clamp_u32(now);
        let mut map = Map::with_capacity_and_hasher(n, Default::default());
        for i in 0..n {
            let at = header + i * 16;
            let slot = Slot {
                expires: u32_at(at + 8),
                cutoff: u32_at(at + 12),
            };
            if slot.expires > now {
                map.insert(u64_at(at), slot);
            }
        }
        set.recount(&map);
        *set.map.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(set)
    }

    /// Bytes the table itself occupies (for the memory benchmark).
    pub fn capacity_bytes(&self) -> usize {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        // hashbrown: one control byte plus one bucket per slot.
        map.capacity().next_power_of_two() * (1 + std::mem::size_of::<(u64, Slot)>())
    }
}

impl Default for RevocationSet {
    fn default() -> Self {
        RevocationSet::new()
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// jti and sid match exactly; a sub cutoff revokes only tokens issued before it.
    #[test]
    fn kinds_match_as_specified() {
        let s = RevocationSet::new();
        s.insert(Kind::Jti, "i", "t1", 2_000_000_000, None);
        s.insert(Kind::Sid, "i", "s1", 2_000_000_000, None);
        s.insert(Kind::Sub, "i", "u1", 2_000_000_000, Some(1000));
        assert!(s.is_revoked(
            &s.token_keys("i", Some("t1"), None, None, Some(5)),
            &AtomicU64::new(0),
            &Claims::new()
        ));
        assert!(!s.is_revoked(
            &s.token_keys("other", Some("t1"), None, None, Some(5)),
            &AtomicU64::new(0),
            &Claims::new()
        ));
        assert!(s.is_revoked(
            &s.token_keys("i", Some("x"), Some("s1"), None, Some(5)),
            &AtomicU64::new(0),
            &Claims::new()
        ));
        assert!(s.is_revoked(
            &s.token_keys("i", None, None, Some("u1"), Some(999)),
            &AtomicU64::new(0),
            &Claims::new()
        ));
        assert!(s.is_revoked(
            &s.token_keys("i", None, None, Some("u1"), None),
            &AtomicU64::new(0),
            &Claims::new()
        ));
        // Each token keeps its own memo.
        let memo = AtomicU64::new(0);
        let clean = s.token_keys("i", None, None, Some("u1"), Some(1000));
        assert!(!s.is_revoked(&clean, &memo, &Claims::new()));
        // Memo: clean at this version; a later cutoff is still seen.
        s.insert(Kind::Sub, "i", "u1", 2_000_000_000, Some(2000));
        assert!(s.is_revoked(&clean, &memo, &Claims::new()));
    }

    fn claims(pairs: &[(&str, &str)]) -> Claims<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect()
    }

    /// A claim entry revokes tokens whose string claim holds the value (ASCII case aside)
    /// and were issued before its cutoff — of its issuer only, under that claim only.
    #[test]
    fn claim_entries_match_the_claim() {
        let s = RevocationSet::new();
        let keys = |iat| s.token_keys("i", Some("t"), None, Some("u1"), Some(iat));
        let alice = claims(&[("iss", "i"), ("email", "Alice@Example.COM")]);
        assert!(!s.is_revoked(&keys(5), &AtomicU64::new(0), &alice));
        s.insert(
            Kind::Claim,
            "i",
            &claim_value("email", "alice@example.com"),
            2_000_000_000,
            Some(1000),
        );
        assert_eq!(s.count(Kind::Claim), 1);
        assert!(s.is_revoked(&keys(999), &AtomicU64::new(0), &alice));
        // Issued at or after the cutoff: clean.
        assert!(!s.is_revoked(&keys(1000), &AtomicU64::new(0), &alice));
        // Another issuer, another claim holding the same value, another user, no claim.
        for other in [
            claims(&[("iss", "j"), ("email", "alice@example.com")]),
            claims(&[("iss", "i"), ("upn", "alice@example.com")]),
            claims(&[("iss", "i"), ("email", "bob@example.com")]),
            claims(&[("iss", "i")]),
        ] {
            assert!(
                !s.is_revoked(&keys(5), &AtomicU64::new(0), &other),
                "{other:?}"
            );
        }
        // A claim that is not a string matches nothing.
        let mut number = claims(&[("iss", "i")]);
        number.insert("email".into(), Value::from(5));
        assert!(!s.is_revoked(&keys(5), &AtomicU64::new(0), &number));
        // The memo: a token found clean is looked at again once a claim entry arrives.
        let memo = AtomicU64::new(0);
        let bob = claims(&[("iss", "i"), ("phone_number", "+12065550100")]);
        assert!(!s.is_revoked(&keys(5), &memo, &bob));
        s.insert(
            Kind::Claim,
            "i",
            &claim_value("phone_number", "+12065550100"),
            2_000_000_000,
            Some(1000),
        );
        assert!(s.is_revoked(&keys(5), &memo, &bob));
    }

    /// Snapshots round-trip, drop expired entries, and refuse damaged files.
    #[test]
    fn snapshot_round_trip() {
        let s = RevocationSet::new();
        s.insert(Kind::Jti, "i", "t1", 2_000_000_000, None);
        s.insert(Kind::Jti, "i", "old", 10, None);
        s.insert(
            Kind::Claim,
            "i",
            &claim_value("email", "a@b.c"),
            2_000_000_000,
            Some(1000),
        );
        s.set_cursor(42);
        s.set_epoch("e-1");
        let p = std::env::temp_dir().join(format!("jwtgate-snap-{}", fastrand::u64(..)));
        s.save(&p).expect("save");
        let l = RevocationSet::load(&p, 100).expect("load");
        assert_eq!(l.cursor(), 42);
        assert_eq!(l.epoch(), "e-1");
        assert_eq!(l.len(), 2);
        assert_eq!((l.count(Kind::Jti), l.count(Kind::Claim)), (1, 1));
        assert!(l.lookup(&l.token_keys("i", Some("t1"), None, None, None)));
        // The claim names come back with their entries.
        assert!(l.claim_revoked(&claims(&[("iss", "i"), ("email", "A@B.C")]), 5));
        let mut data = std::fs::read(&p).expect("read");
        data.truncate(data.len() - 3);
        std::fs::write(&p, &data).expect("write");
        assert!(RevocationSet::load(&p, 100).is_err());
        let _ = std::fs::remove_file(&p);
    }
}
