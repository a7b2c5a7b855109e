//! The durable revocation log: SQLite (one file, WAL, fsync on commit) or PostgreSQL
//! (several control replicas). Both keep one behaviour, pinned by one test suite.
//!
//! Every entry has a cursor (`id`) that only grows. Readers page through `id > cursor`, so
//! the log must never show an id before every smaller id is committed: SQLite has a single
//! writer; on PostgreSQL each write takes a transaction-level advisory lock before it
//! draws its id, so ids commit in order even with concurrent writers on several replicas.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::StoreUrl;
use crate::revocation::{Entry, Kind};

mod postgres;
mod sqlite;

use postgres::{follow_pg, migrate_pg, Pg, POOL_SIZE};
use sqlite::{open_sqlite, sqlite_delete, sqlite_insert};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Other(String),
    /// [`Store::insert_once`]: the message was recorded before; nothing was written.
    #[error("already recorded")]
    AlreadySeen,
}

/// A message (a Security Event Token) whose effect is written at most once: its id is
/// recorded in the same transaction, and kept until `expires_at`.
#[derive(Debug, Clone)]
pub struct Once {
    /// Who issued the message (its `iss`).
    pub iss: String,
    /// Its id (`jti`), unique per issuer.
    pub jti: String,
    /// Until when a repeat is recognized (past the oldest `iat` still accepted).
    pub expires_at: u64,
}

/// A revocation to record.
#[derive(Debug, Clone)]
pub struct NewRevocation {
    pub kind: Kind,
    pub iss: String,
    pub value: String,
    pub expires_at: u64,
    pub issued_before: Option<u64>,
    pub reason: Option<String>,
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub cursor: u64,
    /// False when an equal or stronger entry was already there (idempotent repeat).
    pub changed: bool,
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    latest: watch::Sender<u64>,
    /// Made once, when the store's schema is created: a store recreated (or a fresh one put
    /// in its place) has another, so gateways know their cursors mean nothing there.
    epoch: Arc<str>,
}

/// A new random epoch: 128 bits, hex.
fn new_epoch() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Arc<Pg>),
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The columns `list` reads, in order: id, kind, iss, value, expires_at, issued_before,
/// reason, deleted.
struct Row {
    id: i64,
    kind: String,
    iss: String,
    value: String,
    expires_at: i64,
    issued_before: Option<i64>,
    reason: Option<String>,
    deleted: bool,
}

impl Row {
    fn entry(self) -> Entry {
        let mut e = Entry {
            cursor: to_u64(self.id),
            iss: self.iss,
            jti: None,
            sid: None,
            sub: None,
            claim: None,
            value: None,
            issued_before: self.issued_before.map(to_u64),
            expires_at: to_u64(self.expires_at),
            reason: self.reason,
            deleted: self.deleted,
        };
        e.set_key(Kind::parse(&self.kind).unwrap_or(Kind::Sub), self.value);
        e
    }
}

impl Store {
    /// Open (creating or migrating the schema) and start following other writers.
    pub async fn open(url: &StoreUrl) -> Result<Store, StoreError> {
        let (latest, _) = watch::channel(0);
        let backend = match url {
            StoreUrl::Sqlite(path) => {
                Backend::Sqlite(Arc::new(Mutex::new(open_sqlite(path.clone()).await?)))
            }
            StoreUrl::Postgres(url) => {
                let pg = Pg {
                    url: url.clone(),
                    idle: std::sync::Mutex::new(Vec::new()),
                    permits: tokio::sync::Semaphore::new(POOL_SIZE),
                };
                let client = pg.connect().await?;
                migrate_pg(&client).await?;
                pg.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(client);
                Backend::Postgres(Arc::new(pg))
            }
        };
        let epoch = match &backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || -> Result<String, StoreError> {
                    let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                    conn.execute_batch("CREATE TABLE IF NOT EXISTS meta (epoch TEXT NOT NULL);")?;
                    conn.execute(
                        "INSERT INTO meta (epoch) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM meta)",
                        [new_epoch()],
                    )?;
                    Ok(conn.query_row(
                        "SELECT epoch FROM meta ORDER BY epoch LIMIT 1",
                        [],
                        |r| r.get(0),
                    )?)
                })
                .await??
            }
            Backend::Postgres(pg) => pg.epoch(&new_epoch()).await?,
        };
        let store = Store {
            backend,
            latest,
            epoch: epoch.into(),
        };
        let max = store.max_cursor().await?;
        store.latest.send_replace(max);
        if let Backend::Postgres(pg) = &store.backend {
            tokio::spawn(follow_pg(Arc::downgrade(pg), store.latest.clone()));
        }
        Ok(store)
    }

    /// The store's epoch (see [`Store`]).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The newest cursor known to this process; changes when any writer commits.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Record a revocation; durable when this returns.
    pub async fn insert(&self, r: &NewRevocation, now: u64) -> Result<Written, StoreError> {
        let written = self.insert_many(std::slice::from_ref(r), now).await?;
        written
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Other("the write returned nothing".into()))
    }

    /// Record revocations in one transaction (one durable commit): all or none.
    pub async fn insert_many(
        &self,
        rs: &[NewRevocation],
        now: u64,
    ) -> Result<Vec<Written>, StoreError> {
        if rs.is_empty() {
            return Ok(Vec::new());
        }
        self.write(None, rs, now).await
    }

    /// Record the revocations a message calls for (none, one or more) and the message's id,
    /// in one transaction: [`StoreError::AlreadySeen`], writing nothing, when the id was
    /// recorded before.
    pub async fn insert_once(
        &self,
        once: &Once,
        rs: &[NewRevocation],
        now: u64,
    ) -> Result<Vec<Written>, StoreError> {
        self.write(Some(once.clone()), rs, now).await
    }

    async fn write(
        &self,
        once: Option<Once>,
        rs: &[NewRevocation],
        now: u64,
    ) -> Result<Vec<Written>, StoreError> {
        // Repeats of a key inside the batch are one write (its strongest form), so both stores
        // write each key once, in order of first appearance.
        let (merged, slot) = merge_batch(rs);
        let per_key = match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || {
                    sqlite_insert(&conn, once.as_ref(), &merged, now)
                })
                .await??
            }
            Backend::Postgres(pg) => pg.insert(once.as_ref(), &merged, now).await?,
        };
        let written: Vec<Written> = slot.iter().map(|&i| per_key[i]).collect();
        let newest = written.iter().map(|w| w.cursor).max().unwrap_or(0);
        self.advance(newest);
        Ok(written)
    }

    /// Delete the live entry with this id: it is replaced by a tombstone with a new cursor,
    /// which gateways follow like any write and drop the entry. `None` when no live entry
    /// has the id (never written, purged, deleted, or replaced by a stronger write).
    pub async fn delete(&self, id: u64, now: u64) -> Result<Option<Deleted>, StoreError> {
        let deleted = match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || sqlite_delete(&conn, id, now)).await??
            }
            Backend::Postgres(pg) => pg.delete(id, now).await?,
        };
        if let Some(d) = &deleted {
            self.advance(d.cursor);
        }
        Ok(deleted)
    }

    /// Wake the followers of this process when a write committed a newer cursor.
    fn advance(&self, cursor: u64) {
        self.latest.send_if_modified(|v| {
            let grew = cursor > *v;
            *v = (*v).max(cursor);
            grew
        });
    }

    /// Live entries after `since`, oldest first, at most `limit`; and whether more follow.
    pub async fn list(
        &self,
        since: u64,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<Entry>, bool), StoreError> {
        let fetch = limit.saturating_add(1);
        let mut entries = match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || -> Result<Vec<Entry>, StoreError> {
                    let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                    let mut stmt = conn.prepare_cached(
                        "SELECT id, kind, iss, value, expires_at, issued_before, reason, deleted FROM revocations WHERE id > ?1 AND expires_at > ?2 ORDER BY id LIMIT ?3",
                    )?;
                    let rows = stmt.query_map(rusqlite::params![to_i64(since), to_i64(now), to_i64(fetch as u64)], |row| {
                        Ok(Row {
                            id: row.get(0)?,
                            kind: row.get(1)?,
                            iss: row.get(2)?,
                            value: row.get(3)?,
                            expires_at: row.get(4)?,
                            issued_before: row.get(5)?,
                            reason: row.get(6)?,
                            deleted: row.get::<_, i64>(7)? != 0,
                        }
                        .entry())
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await??
            }
            Backend::Postgres(pg) => {
                let rows = pg
                    .query(
                        "SELECT id, kind, iss, value, expires_at, issued_before, reason, deleted FROM jwtgate_revocations WHERE id > $1 AND expires_at > $2 ORDER BY id LIMIT $3",
                        &[&to_i64(since), &to_i64(now), &to_i64(fetch as u64)],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Row {
                            id: r.get(0),
                            kind: r.get(1),
                            iss: r.get(2),
                            value: r.get(3),
                            expires_at: r.get(4),
                            issued_before: r.get(5),
                            reason: r.get(6),
                            deleted: r.get::<_, i16>(7) != 0,
                        }
                        .entry()
                    })
                    .collect()
            }
        };
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok((entries, more))
    }

    /// Whether a live entry revokes a token with these claims (`jti`, `sid`, or a `sub` or
    /// claim cutoff after its `iat`; no `iat` counts as revoked by any cutoff). `claims`
    /// are the key values ([`crate::revocation::claim_value`]) of the token's claims.
    pub async fn revokes(
        &self,
        iss: &str,
        keys: [Option<&str>; 3],
        claims: &[String],
        iat: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let [jti, sid, sub] = keys.map(|k| k.map(str::to_owned));
        let iss = iss.to_owned();
        let iat = to_i64(iat.unwrap_or(0));
        const WHERE: &str = "iss = ?1 AND expires_at > ?2 AND deleted = 0 AND ((kind = 'jti' AND value = ?3) OR (kind = 'sid' AND value = ?4) OR (kind = 'sub' AND value = ?5 AND issued_before > ?6) OR (kind = 'claim' AND value IN CLAIMS AND issued_before > ?6))";
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                let claims = serde_json::to_string(claims).unwrap_or_else(|_| "[]".into());
                tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
                    let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                    let mut stmt = conn.prepare_cached(&format!(
                        "SELECT EXISTS (SELECT 1 FROM revocations WHERE {})",
                        WHERE.replace("CLAIMS", "(SELECT value FROM json_each(?7))")
                    ))?;
                    let found: i64 = stmt.query_row(
                        rusqlite::params![iss, to_i64(now), jti, sid, sub, iat, claims],
                        |r| r.get(0),
                    )?;
                    Ok(found != 0)
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let sql = format!(
                    "SELECT EXISTS (SELECT 1 FROM jwtgate_revocations WHERE {})",
                    WHERE
                        .replace("value IN CLAIMS", "value = ANY($7)")
                        .replace("?1", "$1")
                        .replace("?2", "$2")
                        .replace("?3", "$3")
                        .replace("?4", "$4")
                        .replace("?5", "$5")
                        .replace("?6", "$6")
                );
                let rows = pg
                    .query(&sql, &[&iss, &to_i64(now), &jti, &sid, &sub, &iat, &claims])
                    .await?;
                Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
            }
        }
    }

    /// The newest cursor in the store.
    pub async fn max_cursor(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
                    let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                    // AUTOINCREMENT's counter survives deletes, so a purge never rewinds it.
                    // No row yet is head 0; any other error is an error (a false 0 would
                    // send every gateway back to cursor 0).
                    let seq = match conn.query_row(
                        "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'",
                        [],
                        |r| r.get::<_, i64>(0),
                    ) {
                        Ok(seq) => seq,
                        Err(rusqlite::Error::QueryReturnedNoRows) => 0,
                        Err(e) => return Err(e.into()),
                    };
                    Ok(to_u64(seq))
                })
                .await?
            }
            Backend::Postgres(pg) => {
                // The high-water mark, which a purge never rewinds.
                let rows = pg
                    .query(
                        "SELECT GREATEST(COALESCE((SELECT MAX(head) FROM jwtgate_meta), 0), COALESCE((SELECT MAX(id) FROM jwtgate_revocations), 0))",
                        &[],
                    )
                    .await?;
                Ok(rows.first().map_or(0, |r| to_u64(r.get(0))))
            }
        }
    }

    /// Delete entries past their time; returns how many.
    pub async fn purge(&self, now: u64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
                    let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                    conn.execute(
                        "DELETE FROM seen_messages WHERE expires_at <= ?1",
                        [to_i64(now)],
                    )?;
                    Ok(conn.execute(
                        "DELETE FROM revocations WHERE expires_at <= ?1",
                        [to_i64(now)],
                    )? as u64)
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let pooled = pg.client().await?;
                let n = async {
                    pooled
                        .client
                        .execute(
                            "DELETE FROM jwtgate_seen_messages WHERE expires_at <= $1",
                            &[&to_i64(now)],
                        )
                        .await?;
                    pooled
                        .client
                        .execute(
                            "DELETE FROM jwtgate_revocations WHERE expires_at <= $1",
                            &[&to_i64(now)],
                        )
                        .await
                }
                .await;
                pg.release(pooled, n.is_ok());
                Ok(n?)
            }
        }
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => true,
            Backend::Postgres(pg) => pg.query("SELECT 1", &[]).await.is_ok(),
        }
    }
}

/// The batch with each key once (later expiry and cutoff win, the last reason given), in
/// order of first appearance; and for each entry of `rs`, its key's index in it.
fn merge_batch(rs: &[NewRevocation]) -> (Vec<NewRevocation>, Vec<usize>) {
    use std::collections::hash_map::Entry as Slot;
    let mut index: std::collections::HashMap<(Kind, &str, &str), usize> =
        std::collections::HashMap::with_capacity(rs.len());
    let mut merged: Vec<NewRevocation> = Vec::with_capacity(rs.len());
    let mut slot = Vec::with_capacity(rs.len());
    for r in rs {
        match index.entry((r.kind, r.iss.as_str(), r.value.as_str())) {
            Slot::Occupied(o) => {
                let m = &mut merged[*o.get()];
                if let Some((expires, cutoff)) = strengthen(m.expires_at, m.issued_before, r) {
                    m.expires_at = expires;
                    m.issued_before = cutoff;
                }
                if r.reason.is_some() {
                    m.reason.clone_from(&r.reason);
                }
                slot.push(*o.get());
            }
            Slot::Vacant(v) => {
                v.insert(merged.len());
                slot.push(merged.len());
                merged.push(r.clone());
            }
        }
    }
    (merged, slot)
}

/// The merged entry when `new` strengthens `old` (later expiry or cutoff), else `None`.
fn strengthen(
    old_expires: u64,
    old_cutoff: Option<u64>,
    r: &NewRevocation,
) -> Option<(u64, Option<u64>)> {
    let expires = old_expires.max(r.expires_at);
    let cutoff = match (old_cutoff, r.issued_before) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (expires != old_expires || cutoff != old_cutoff).then_some((expires, cutoff))
}

/// What a delete did: the tombstone's cursor and the kind of the entry it removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub cursor: u64,
    pub kind: Kind,
}
