//! The SQLite store: one file, WAL with a full fsync at every commit, one writer.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::OptionalExtension;

use super::{strengthen, to_i64, to_u64, Deleted, NewRevocation, Once, StoreError, Written};
use crate::revocation::Kind;

/// The schema version this binary writes (2: tombstones, 3: messages seen).
const SCHEMA: i64 = 3;

pub(super) async fn open_sqlite(path: PathBuf) -> Result<rusqlite::Connection, StoreError> {
    tokio::task::spawn_blocking(move || -> Result<rusqlite::Connection, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let conn = rusqlite::Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL with a full fsync at every commit: a 201 means the entry is on disk.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA {
            return Err(StoreError::Other(format!(
                "{} has schema version {version}, newer than this jwtgate knows ({SCHEMA}): run the newer jwtgate",
                path.display()
            )));
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS revocations (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     kind TEXT NOT NULL,
                     iss TEXT NOT NULL,
                     value TEXT NOT NULL,
                     expires_at INTEGER NOT NULL,
                     issued_before INTEGER,
                     reason TEXT,
                     created_at INTEGER NOT NULL,
                     UNIQUE (kind, iss, value));
                 CREATE INDEX IF NOT EXISTS revocations_expires ON revocations (expires_at);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // Version 2: deletes leave a tombstone row that gateways follow.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE revocations ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            // Version 3: ids of Security Event Tokens already acted on.
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS seen_messages (
                     iss TEXT NOT NULL,
                     jti TEXT NOT NULL,
                     expires_at INTEGER NOT NULL,
                     PRIMARY KEY (iss, jti));
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        Ok(conn)
    })
    .await?
}

pub(super) fn sqlite_insert(
    conn: &Mutex<rusqlite::Connection>,
    once: Option<&Once>,
    rs: &[NewRevocation],
    now: u64,
) -> Result<Vec<Written>, StoreError> {
    let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some(once) = once {
        let added = tx.execute(
            "INSERT OR IGNORE INTO seen_messages (iss, jti, expires_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![once.iss, once.jti, to_i64(once.expires_at)],
        )?;
        if added == 0 {
            return Err(StoreError::AlreadySeen);
        }
    }
    let written = rs
        .iter()
        .map(|r| sqlite_insert_one(&tx, r, now))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit()?;
    Ok(written)
}

fn sqlite_insert_one(
    tx: &rusqlite::Transaction<'_>,
    r: &NewRevocation,
    now: u64,
) -> Result<Written, StoreError> {
    let existing: Option<(i64, i64, Option<i64>, i64)> = tx
        .prepare_cached(
            "SELECT id, expires_at, issued_before, deleted FROM revocations WHERE kind = ?1 AND iss = ?2 AND value = ?3",
        )?
        .query_row(rusqlite::params![r.kind.as_str(), r.iss, r.value], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    let (expires, cutoff) = match existing {
        // A tombstone: the key was deleted, this is a new revocation.
        Some((id, _, _, deleted)) if deleted != 0 => {
            tx.execute("DELETE FROM revocations WHERE id = ?1", [id])?;
            (r.expires_at, r.issued_before)
        }
        Some((id, old_exp, old_cut, _)) => {
            match strengthen(to_u64(old_exp), old_cut.map(to_u64), r) {
                None => {
                    return Ok(Written {
                        cursor: to_u64(id),
                        changed: false,
                    })
                }
                Some(merged) => {
                    // A stronger entry gets a new cursor so every follower sees it.
                    tx.execute("DELETE FROM revocations WHERE id = ?1", [id])?;
                    merged
                }
            }
        }
        None => (r.expires_at, r.issued_before),
    };
    tx.prepare_cached(
        "INSERT INTO revocations (kind, iss, value, expires_at, issued_before, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![r.kind.as_str(), r.iss, r.value, to_i64(expires), cutoff.map(to_i64), r.reason, to_i64(now)])?;
    Ok(Written {
        cursor: to_u64(tx.last_insert_rowid()),
        changed: true,
    })
}

pub(super) fn sqlite_delete(
    conn: &Mutex<rusqlite::Connection>,
    id: u64,
    now: u64,
) -> Result<Option<Deleted>, StoreError> {
    let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let live: Option<(String, String, String, i64)> = tx
        .query_row(
            "SELECT kind, iss, value, expires_at FROM revocations WHERE id = ?1 AND deleted = 0 AND expires_at > ?2",
            rusqlite::params![to_i64(id), to_i64(now)],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((kind, iss, value, expires_at)) = live else {
        return Ok(None);
    };
    tx.execute("DELETE FROM revocations WHERE id = ?1", [to_i64(id)])?;
    // The tombstone lives as long as the entry would have: a gateway that missed it drops
    // the entry by then anyway.
    tx.execute(
        "INSERT INTO revocations (kind, iss, value, expires_at, created_at, deleted) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
        rusqlite::params![kind, iss, value, expires_at, to_i64(now)],
    )?;
    let cursor = to_u64(tx.last_insert_rowid());
    tx.commit()?;
    Ok(Some(Deleted {
        cursor,
        kind: Kind::parse(&kind).unwrap_or(Kind::Sub),
    }))
}
