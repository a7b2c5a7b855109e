//! The PostgreSQL store: a small pool, writers serialized by an advisory lock so ids commit
//! in order, and LISTEN/NOTIFY so every control replica streams what any one wrote.

use tokio::sync::watch;

use std::time::Duration;

use super::{strengthen, to_i64, to_u64, Deleted, NewRevocation, Once, StoreError, Written};
use crate::revocation::Kind;

/// A small connection pool: at most `POOL_SIZE` connections, idle ones reused.
pub(super) struct Pg {
    pub(super) url: String,
    pub(super) idle: std::sync::Mutex<Vec<tokio_postgres::Client>>,
    pub(super) permits: tokio::sync::Semaphore,
}

pub(super) const POOL_SIZE: usize = 8;

/// A pooled connection; returned to the pool by [`Pg::release`].
pub(super) struct Pooled<'a> {
    pub(super) client: tokio_postgres::Client,
    pub(super) _permit: tokio::sync::SemaphorePermit<'a>,
}

/// Advisory lock key serializing writers ("jwtg" in ASCII).
const WRITE_LOCK: i64 = 0x6a77_7467;
const CHANNEL: &str = "jwtgate_revocations";

/// The schema version this binary writes (2: tombstones).
const SCHEMA: i32 = 3;

pub(super) async fn migrate_pg(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    // A store a newer jwtgate migrated may hold rows this one would misread.
    let newer = client
        .query_opt(
            "SELECT MAX(version) FROM jwtgate_schema WHERE to_regclass('jwtgate_schema') IS NOT NULL",
            &[],
        )
        .await;
    if let Ok(Some(row)) = newer {
        if let Some(v) = row.get::<_, Option<i32>>(0).filter(|v| *v > SCHEMA) {
            return Err(StoreError::Other(format!(
                "the PostgreSQL store has schema version {v}, newer than this jwtgate knows ({SCHEMA}): run the newer jwtgate"
            )));
        }
    }
    client
        .batch_execute(
            "SELECT pg_advisory_lock(1785951335);
             CREATE TABLE IF NOT EXISTS jwtgate_schema (version INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS jwtgate_revocations (
                 id BIGSERIAL PRIMARY KEY,
                 kind TEXT NOT NULL,
                 iss TEXT NOT NULL,
                 value TEXT NOT NULL,
                 expires_at BIGINT NOT NULL,
                 issued_before BIGINT,
                 reason TEXT,
                 created_at BIGINT NOT NULL,
                 UNIQUE (kind, iss, value));
             CREATE INDEX IF NOT EXISTS jwtgate_revocations_expires ON jwtgate_revocations (expires_at);
             INSERT INTO jwtgate_schema (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM jwtgate_schema);
             CREATE TABLE IF NOT EXISTS jwtgate_meta (epoch TEXT NOT NULL);
             ALTER TABLE jwtgate_meta ADD COLUMN IF NOT EXISTS head BIGINT NOT NULL DEFAULT 0;
             ALTER TABLE jwtgate_revocations ADD COLUMN IF NOT EXISTS deleted SMALLINT NOT NULL DEFAULT 0;
             CREATE TABLE IF NOT EXISTS jwtgate_seen_messages (
                 iss TEXT NOT NULL,
                 jti TEXT NOT NULL,
                 expires_at BIGINT NOT NULL,
                 PRIMARY KEY (iss, jti));
             UPDATE jwtgate_schema SET version = 3 WHERE version < 3;
             SELECT pg_advisory_unlock(1785951335);",
        )
        .await?;
    Ok(())
}

impl Pg {
    /// The store's epoch, made with `candidate` if it has none yet. Replicas starting
    /// together take the schema lock in turn, so exactly one epoch is made.
    pub(super) async fn epoch(&self, candidate: &str) -> Result<String, StoreError> {
        let pooled = self.client().await?;
        let result = async {
            pooled
                .client
                .execute("SELECT pg_advisory_lock(1785951335)", &[])
                .await?;
            // `head` is the highest id ever committed: unlike MAX(id) it does not go down when
            // a purge deletes the newest rows (which would send every gateway back to zero).
            let inserted = pooled
                .client
                .batch_execute(&format!(
                    "INSERT INTO jwtgate_meta (epoch) SELECT '{candidate}' WHERE NOT EXISTS (SELECT 1 FROM jwtgate_meta);
                     UPDATE jwtgate_meta SET head = GREATEST(head, (SELECT COALESCE(MAX(id), 0) FROM jwtgate_revocations));",
                    candidate = candidate.replace('\'', "")
                ))
                .await;
            pooled
                .client
                .execute("SELECT pg_advisory_unlock(1785951335)", &[])
                .await?;
            inserted?;
            let row = pooled
                .client
                .query_one("SELECT epoch FROM jwtgate_meta ORDER BY epoch LIMIT 1", &[])
                .await?;
            Ok::<String, StoreError>(row.get(0))
        }
        .await;
        self.release(pooled, result.is_ok());
        result
    }

    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// A connection from the pool (waiting for a free slot), reconnecting when needed.
    pub(super) async fn client(&self) -> Result<Pooled<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Other("pool closed".into()))?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            client,
            _permit: permit,
        })
    }

    /// Give a connection back; a broken one is dropped.
    pub(super) fn release(&self, pooled: Pooled<'_>, healthy: bool) {
        if healthy && !pooled.client.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pooled.client);
        }
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let pooled = self.client().await?;
        let result = pooled.client.query(sql, params).await;
        self.release(pooled, result.is_ok());
        Ok(result?)
    }

    pub(super) async fn insert(
        &self,
        once: Option<&Once>,
        rs: &[NewRevocation],
        now: u64,
    ) -> Result<Vec<Written>, StoreError> {
        let mut pooled = self.client().await?;
        let result = pg_insert(&mut pooled.client, once, rs, now).await;
        // A repeat is an answer, not a broken connection.
        let healthy = matches!(result, Ok(_) | Err(StoreError::AlreadySeen));
        self.release(pooled, healthy);
        result
    }

    pub(super) async fn delete(&self, id: u64, now: u64) -> Result<Option<Deleted>, StoreError> {
        let mut pooled = self.client().await?;
        let result = pg_delete(&mut pooled.client, id, now).await;
        self.release(pooled, result.is_ok());
        result
    }
}

/// Open a write transaction: writers are serialized (an id is drawn only while holding the
/// lock, so ids commit in order).
async fn write_tx(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await?;
    Ok(tx)
}

/// Raise the high-water head, tell every listening replica (delivered when, and only if,
/// the transaction commits), and commit.
async fn commit_write(tx: tokio_postgres::Transaction<'_>, newest: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jwtgate_meta SET head = GREATEST(head, $1)",
        &[&newest],
    )
    .await?;
    tx.execute(&format!("NOTIFY {CHANNEL}, '{newest}'"), &[])
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Write a batch (each key once, see `merge_batch`) in one transaction with a fixed number of
/// statements whatever its size: read the existing rows of its keys, delete the ones being
/// replaced, insert the new rows in batch order (ids ascend in that order).
pub(super) async fn pg_insert(
    client: &mut tokio_postgres::Client,
    once: Option<&Once>,
    rs: &[NewRevocation],
    now: u64,
) -> Result<Vec<Written>, StoreError> {
    let tx = write_tx(client).await?;
    if let Some(once) = once {
        let added = tx
            .execute(
                "INSERT INTO jwtgate_seen_messages (iss, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&once.iss, &once.jti, &to_i64(once.expires_at)],
            )
            .await?;
        if added == 0 {
            return Err(StoreError::AlreadySeen);
        }
    }
    let kinds: Vec<&str> = rs.iter().map(|r| r.kind.as_str()).collect();
    let isss: Vec<&str> = rs.iter().map(|r| r.iss.as_str()).collect();
    let values: Vec<&str> = rs.iter().map(|r| r.value.as_str()).collect();
    let rows = tx
        .query(
            "SELECT r.id, r.kind, r.iss, r.value, r.expires_at, r.issued_before, r.deleted FROM jwtgate_revocations r JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(kind, iss, value) ON r.kind = k.kind AND r.iss = k.iss AND r.value = k.value",
            &[&kinds, &isss, &values],
        )
        .await?;
    let mut existing = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let key = (
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
        );
        existing.insert(
            key,
            (
                row.get::<_, i64>(0),
                to_u64(row.get(4)),
                row.get::<_, Option<i64>>(5).map(to_u64),
                row.get::<_, i16>(6) != 0,
            ),
        );
    }
    // Per entry: unchanged (its cursor), or a write of (expires, cutoff) replacing an old row.
    let mut written: Vec<Option<Written>> = vec![None; rs.len()];
    let mut replaced: Vec<i64> = Vec::new();
    let mut writes: Vec<(usize, u64, Option<u64>)> = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        let key = (r.kind.as_str().to_owned(), r.iss.clone(), r.value.clone());
        match existing.get(&key) {
            // A tombstone: the key was deleted, this is a new revocation.
            Some(&(id, _, _, true)) => {
                replaced.push(id);
                writes.push((i, r.expires_at, r.issued_before));
            }
            Some(&(id, old_exp, old_cut, false)) => match strengthen(old_exp, old_cut, r) {
                None => {
                    written[i] = Some(Written {
                        cursor: to_u64(id),
                        changed: false,
                    })
                }
                // A stronger entry gets a new cursor so every follower sees it.
                Some((exp, cut)) => {
                    replaced.push(id);
                    writes.push((i, exp, cut));
                }
            },
            None => writes.push((i, r.expires_at, r.issued_before)),
        }
    }
    if !replaced.is_empty() {
        tx.execute(
            "DELETE FROM jwtgate_revocations WHERE id = ANY($1::int8[])",
            &[&replaced],
        )
        .await?;
    }
    if !writes.is_empty() {
        let ord: Vec<i64> = (0..writes.len() as i64).collect();
        let kinds: Vec<&str> = writes.iter().map(|w| rs[w.0].kind.as_str()).collect();
        let isss: Vec<&str> = writes.iter().map(|w| rs[w.0].iss.as_str()).collect();
        let values: Vec<&str> = writes.iter().map(|w| rs[w.0].value.as_str()).collect();
        let expires: Vec<i64> = writes.iter().map(|w| to_i64(w.1)).collect();
        let cutoffs: Vec<Option<i64>> = writes.iter().map(|w| w.2.map(to_i64)).collect();
        let reasons: Vec<Option<&str>> = writes.iter().map(|w| rs[w.0].reason.as_deref()).collect();
        // Rows leave the sort in `ord` order and draw their ids as they are inserted.
        let rows = tx
            .query(
                "INSERT INTO jwtgate_revocations (kind, iss, value, expires_at, issued_before, reason, created_at) SELECT kind, iss, value, expires_at, issued_before, reason, $8 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::int8[]) AS t(kind, iss, value, expires_at, issued_before, reason, ord) ORDER BY ord RETURNING id, kind, iss, value",
                &[&kinds, &isss, &values, &expires, &cutoffs, &reasons, &ord, &to_i64(now)],
            )
            .await?;
        let mut ids = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            ids.insert(
                (
                    row.get::<_, String>(1),
                    row.get::<_, String>(2),
                    row.get::<_, String>(3),
                ),
                row.get::<_, i64>(0),
            );
        }
        for &(i, _, _) in &writes {
            let r = &rs[i];
            let key = (r.kind.as_str().to_owned(), r.iss.clone(), r.value.clone());
            let id = ids
                .get(&key)
                .ok_or_else(|| StoreError::Other("an inserted row was not returned".into()))?;
            written[i] = Some(Written {
                cursor: to_u64(*id),
                changed: true,
            });
        }
    }
    let written: Vec<Written> = written.into_iter().flatten().collect();
    if written.len() != rs.len() {
        return Err(StoreError::Other(
            "a batch entry was neither written nor found".into(),
        ));
    }
    if written.iter().any(|w| w.changed) {
        let newest = written.iter().map(|w| w.cursor).max().unwrap_or(0);
        commit_write(tx, to_i64(newest)).await?;
    } else {
        tx.commit().await?;
    }
    Ok(written)
}

async fn pg_delete(
    client: &mut tokio_postgres::Client,
    id: u64,
    now: u64,
) -> Result<Option<Deleted>, StoreError> {
    let tx = write_tx(client).await?;
    let live = tx
        .query_opt(
            "DELETE FROM jwtgate_revocations WHERE id = $1 AND deleted = 0 AND expires_at > $2 RETURNING kind, iss, value, expires_at",
            &[&to_i64(id), &to_i64(now)],
        )
        .await?;
    let Some(row) = live else {
        return Ok(None);
    };
    let kind: String = row.get(0);
    // The tombstone lives as long as the entry would have: a gateway that missed it drops
    // the entry by then anyway.
    let tomb = tx
        .query_one(
            "INSERT INTO jwtgate_revocations (kind, iss, value, expires_at, created_at, deleted) VALUES ($1, $2, $3, $4, $5, 1) RETURNING id",
            &[&kind, &row.get::<_, String>(1), &row.get::<_, String>(2), &row.get::<_, i64>(3), &to_i64(now)],
        )
        .await?;
    let cursor: i64 = tomb.get(0);
    commit_write(tx, cursor).await?;
    Ok(Some(Deleted {
        cursor: to_u64(cursor),
        kind: Kind::parse(&kind).unwrap_or(Kind::Sub),
    }))
}

/// Follow writes made through other replicas: LISTEN for their notifications, and poll the
/// sequence once a second in case a notification was lost with a connection.
pub(super) async fn follow_pg(pg: std::sync::Weak<Pg>, latest: watch::Sender<u64>) {
    use futures_util::StreamExt;
    let mut failures = 0u32;
    loop {
        let Some(strong) = pg.upgrade() else { return };
        let url = strong.url.clone();
        drop(strong);
        let connected = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
        let (client, mut conn) = match connected {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot LISTEN on PostgreSQL; retrying");
                tokio::time::sleep(crate::backoff::backoff(failures)).await;
                continue;
            }
        };
        failures = 0;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(msg)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                    let _ = tx.send(n.payload().parse::<u64>().unwrap_or(0));
                }
            }
        });
        if client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .is_err()
        {
            pump.abort();
            continue;
        }
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    // A commit elsewhere: always wake the followers, even when the poll
                    // below already saw this id drawn but not yet committed.
                    Some(n) => latest.send_modify(|v| *v = (*v).max(n)),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let seen = match client.query_one("SELECT COALESCE(MAX(id), 0) FROM jwtgate_revocations", &[]).await {
                        Ok(row) => to_u64(row.get(0)),
                        Err(_) => break,
                    };
                    latest.send_if_modified(|v| {
                        let grew = seen > *v;
                        *v = (*v).max(seen);
                        grew
                    });
                }
            }
            if pg.strong_count() == 0 {
                pump.abort();
                return;
            }
        }
        pump.abort();
    }
}
