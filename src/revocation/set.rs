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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::Kind;

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

/// What one entry holds: when it may be dropped, and for `sub` entries the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Unix seconds (u32 reaches 2106).
    expires: u32,
    /// `sub` entries: tokens with `iat` below this are revoked. 0 for jti/sid.
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
    counts: [AtomicU64; 3],
}

/// Snapshot formats: version 2 adds the store epoch after the entries.
const MAGIC_V1: &[u8; 8] = b"JWTGRV01";
const MAGIC: &[u8; 8] = b"JWTGRV02";

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
        }
    }

    pub fn key(&self, kind: Kind, iss: &str, value: &str) -> u64 {
        let mut h = foldhash::quality::FixedState::with_seed(self.seed).build_hasher();
        h.write_u8(kind as u8);
        h.write(iss.as_bytes());
        h.write_u8(0xff);
        h.write(value.as_bytes());
        // The low two bits carry the kind, so counts stay exact through purges.
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
        let key = self.key(kind, iss, value);
        let slot = Slot {
            expires: clamp_u32(expires_at),
            cutoff: if kind == Kind::Sub {
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

    /// Whether a token with these keys is revoked. `checked` is the token's memo of the
    /// last version it was found clean at: unchanged set, no lookup.
    pub fn is_revoked(&self, keys: &TokenKeys, checked: &AtomicU64) -> bool {
        let version = self.version.load(Ordering::Acquire);
        if checked.load(Ordering::Relaxed) == version {
            return false;
        }
        let revoked = self.lookup(keys);
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

    /// Drop entries past their time. Returns how many went.
    pub fn purge(&self, now: u64) -> usize {
        let now = clamp_u32(now);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, s| s.expires > now);
        let gone = before - map.len();
        if gone > 0 {
            let mut counts = [0u64; 3];
            for k in map.keys() {
                counts[(*k & 3) as usize % 3] += 1;
            }
            for (c, n) in self.counts.iter().zip(counts) {
                c.store(n, Ordering::Relaxed);
            }
        }
        gone
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
            for c in &self.counts {
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
        if data.len() < header || (&data[..8] != MAGIC && &data[..8] != MAGIC_V1) {
            return Err(bad("not a jwtgate snapshot"));
        }
        let v2 = &data[..8] == MAGIC;
        let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap_or([0; 4]));
        let set = RevocationSet::with_seed(u64_at(8));
        set.cursor.store(u64_at(16), Ordering::Release);
        for (i, c) in set.counts.iter().enumerate() {
            c.store(u64::from(u32_at(24 + 4 * i)), Ordering::Relaxed);
        }
        let n = usize::try_from(u64_at(36)).map_err(|_| bad("truncated"))?;
        let entries_end = n
            .checked_mul(16)
            .and_then(|b| b.checked_add(header))
            .ok_or_else(|| bad("truncated"))?;
        let epoch = if v2 {
            let len_at = entries_end;
            let len = data
                .get(len_at..len_at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or_else(|| bad("truncated"))?;
            if data.len() != len_at + 2 + len {
                return Err(bad("truncated"));
            }
            String::from_utf8_lossy(&data[len_at + 2..]).into_owned()
        } else {
            if data.len() != entries_end {
                return Err(bad("truncated"));
            }
            String::new()
        };
        set.set_epoch(&epoch);
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
            &AtomicU64::new(0)
        ));
        assert!(!s.is_revoked(
            &s.token_keys("other", Some("t1"), None, None, Some(5)),
            &AtomicU64::new(0)
        ));
        assert!(s.is_revoked(
            &s.token_keys("i", Some("x"), Some("s1"), None, Some(5)),
            &AtomicU64::new(0)
        ));
        assert!(s.is_revoked(
            &s.token_keys("i", None, None, Some("u1"), Some(999)),
            &AtomicU64::new(0)
        ));
        assert!(s.is_revoked(
            &s.token_keys("i", None, None, Some("u1"), None),
            &AtomicU64::new(0)
        ));
        // Each token keeps its own memo.
        let memo = AtomicU64::new(0);
        let clean = s.token_keys("i", None, None, Some("u1"), Some(1000));
        assert!(!s.is_revoked(&clean, &memo));
        // Memo: clean at this version; a later cutoff is still seen.
        s.insert(Kind::Sub, "i", "u1", 2_000_000_000, Some(2000));
        assert!(s.is_revoked(&clean, &memo));
    }

    /// Snapshots round-trip, drop expired entries, and refuse damaged files.
    #[test]
    fn snapshot_round_trip() {
        let s = RevocationSet::new();
        s.insert(Kind::Jti, "i", "t1", 2_000_000_000, None);
        s.insert(Kind::Jti, "i", "old", 10, None);
        s.set_cursor(42);
        s.set_epoch("e-1");
        let p = std::env::temp_dir().join(format!("jwtgate-snap-{}", fastrand::u64(..)));
        s.save(&p).expect("save");
        let l = RevocationSet::load(&p, 100).expect("load");
        assert_eq!(l.cursor(), 42);
        assert_eq!(l.epoch(), "e-1");
        assert_eq!(l.len(), 1);
        assert!(l.lookup(&l.token_keys("i", Some("t1"), None, None, None)));
        let mut data = std::fs::read(&p).expect("read");
        data.truncate(data.len() - 3);
        std::fs::write(&p, &data).expect("write");
        assert!(RevocationSet::load(&p, 100).is_err());
        let _ = std::fs::remove_file(&p);
    }
}
