//! One behaviour for both stores: the same suite against SQLite and against the real
//! PostgreSQL on 127.0.0.1:5432.

use crate::support::*;
use jwtgate::config::StoreUrl;
use jwtgate::control::store::{NewRevocation, Once, Store, StoreError};
use jwtgate::revocation::Kind;

fn jti(value: &str, expires_at: u64) -> NewRevocation {
    NewRevocation {
        kind: Kind::Jti,
        iss: "https://iss".into(),
        value: value.into(),
        expires_at,
        issued_before: None,
        reason: None,
    }
}

async fn suite(url: StoreUrl) {
    let now = now();
    let store = Store::open(&url).await.expect("open");
    let mut latest = store.subscribe();

    // Insert, repeat (idempotent), strengthen (new cursor).
    let a = store
        .insert(&jti("a", now + 100), now)
        .await
        .expect("insert");
    assert!(a.changed);
    assert!(
        latest.has_changed().expect("watch"),
        "a write wakes followers"
    );
    latest.mark_unchanged();
    let again = store
        .insert(&jti("a", now + 50), now)
        .await
        .expect("insert");
    assert_eq!(
        again,
        jwtgate::control::store::Written {
            cursor: a.cursor,
            changed: false
        }
    );
    let stronger = store
        .insert(&jti("a", now + 200), now)
        .await
        .expect("insert");
    assert!(stronger.changed && stronger.cursor > a.cursor);

    let sub = NewRevocation {
        kind: Kind::Sub,
        iss: "https://iss".into(),
        value: "u1".into(),
        expires_at: now + 100,
        issued_before: Some(now - 10),
        reason: Some("password change".into()),
    };
    let s1 = store.insert(&sub, now).await.expect("insert");
    let later = NewRevocation {
        issued_before: Some(now),
        ..sub.clone()
    };
    let s2 = store.insert(&later, now).await.expect("insert");
    assert!(
        s2.cursor > s1.cursor,
        "a later cutoff is a new entry for followers"
    );
    let sid = NewRevocation {
        kind: Kind::Sid,
        value: "sess".into(),
        issued_before: None,
        ..sub.clone()
    };
    store.insert(&sid, now).await.expect("insert");
    store
        .insert(&jti("short", now + 1), now)
        .await
        .expect("insert");

    // Whether a token is revoked (writer checks): by jti, sid, or a sub cutoff after iat.
    let iss = "https://iss";
    let none: &[String] = &[];
    assert_revokes(
        &store,
        iss,
        now,
        &[
            ([Some("a"), None, None], none, Some(now), true),
            ([Some("zz"), None, None], none, Some(now), false),
            ([Some("zz"), Some("sess"), None], none, Some(now), true),
            ([Some("zz"), None, Some("u1")], none, Some(now - 20), true),
            ([Some("zz"), None, Some("u1")], none, Some(now), false),
            ([Some("zz"), None, Some("u1")], none, None, true),
            ([Some("zz"), None, Some("u2")], none, Some(now - 20), false),
        ],
    )
    .await;
    assert!(!store
        .revokes(
            "https://other",
            [Some("a"), None, None],
            none,
            Some(now),
            now
        )
        .await
        .expect("revokes"));
    assert!(
        !store
            .revokes(iss, [Some("a"), None, None], none, Some(now), now + 500)
            .await
            .expect("revokes"),
        "expired entries revoke nothing"
    );

    // Listing: live entries after the cursor, in order, paged.
    let (all, more) = store.list(0, 100, now).await.expect("list");
    assert!(!more);
    let cursors: Vec<u64> = all.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[0].jti.as_deref(), Some("a"));
    assert_eq!(all[0].expires_at, now + 200);
    assert_eq!(all[1].issued_before, Some(now));
    assert_eq!(all[1].reason.as_deref(), Some("password change"));
    let (page, more) = store.list(0, 2, now).await.expect("list");
    assert!(more && page.len() == 2);
    let (rest, more) = store.list(page[1].cursor, 2, now).await.expect("list");
    assert!(!more && rest.len() == 2);
    // Expired entries are not served; purge deletes them, and cursors are never reused.
    let head = store.max_cursor().await.expect("head");
    let (live, _) = store.list(0, 100, now + 2).await.expect("list");
    assert_eq!(live.len(), 3);
    assert_eq!(store.purge(now + 2).await.expect("purge"), 1);
    assert!(store.max_cursor().await.expect("head") <= head);
    // Regression: on PostgreSQL the head was MAX(id), which a purge of the newest entry
    // rewound, sending every gateway back to cursor 0.
    assert_eq!(
        store.max_cursor().await.expect("head"),
        head,
        "a purge rewound the head"
    );
    let next = store
        .insert(&jti("b", now + 100), now)
        .await
        .expect("insert");
    assert!(next.cursor > head);

    // Concurrent writers get distinct, ordered cursors and lose nothing.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.insert(&jti(&format!("c{i}"), now + 100), now)
                .await
                .expect("insert")
                .cursor
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("task"));
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 50);

    // Durable across a reopen.
    drop(store);
    let reopened = Store::open(&url).await.expect("reopen");
    let (all, _) = reopened.list(0, 1000, now).await.expect("list");
    assert_eq!(all.len(), 54);
    assert!(reopened.ping().await);

    // Delete: the entry is replaced by a tombstone with a newer cursor, which followers see
    // and writer checks ignore; only live ids can be deleted; the key can be revoked again.
    let mut latest = reopened.subscribe();
    latest.mark_unchanged();
    let gone = reopened
        .delete(next.cursor, now)
        .await
        .expect("delete")
        .expect("a live id");
    assert!(gone.cursor > next.cursor && gone.kind == Kind::Jti);
    assert!(
        latest.has_changed().expect("watch"),
        "a delete wakes followers"
    );
    let (tail, _) = reopened
        .list(next.cursor - 1, 1000, now)
        .await
        .expect("list");
    assert!(
        tail.iter().all(|e| e.cursor != next.cursor),
        "the entry is gone"
    );
    let tomb = tail
        .iter()
        .find(|e| e.cursor == gone.cursor)
        .expect("tombstone");
    assert!(tomb.deleted && tomb.jti.as_deref() == Some("b"));
    assert!(!reopened
        .revokes(iss, [Some("b"), None, None], &[], Some(now), now)
        .await
        .expect("revokes"));
    assert_eq!(
        reopened.delete(next.cursor, now).await.expect("delete"),
        None
    );
    assert_eq!(
        reopened.delete(gone.cursor, now).await.expect("delete"),
        None,
        "a tombstone is no live id"
    );
    assert_eq!(reopened.delete(u64::MAX, now).await.expect("delete"), None);
    let again = reopened
        .insert(&jti("b", now + 100), now)
        .await
        .expect("insert");
    assert!(again.changed && again.cursor > gone.cursor);
    assert!(reopened
        .revokes(iss, [Some("b"), None, None], &[], Some(now), now)
        .await
        .expect("revokes"));

    // A batch: one commit, ids in order of first appearance, repeats inside it merged into
    // one write at their strongest (sharing its cursor).
    let batch: Vec<NewRevocation> = (0..500)
        .map(|i| jti(&format!("batch{}", i % 400), now + 100 + i))
        .collect();
    let written = reopened.insert_many(&batch, now).await.expect("batch");
    assert_eq!(written.len(), 500);
    assert!(written.iter().all(|w| w.changed));
    assert!(written[..400].windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert!((400..500).all(|i| written[i] == written[i - 400]));
    let (live, _) = reopened.list(again.cursor, 1000, now).await.expect("list");
    assert_eq!(live.len(), 400, "a key once, at its strongest");
    assert_eq!(live[0].expires_at, now + 500, "the later repeat's expiry");
    assert_eq!(live[399].expires_at, now + 499);
    // Against what is stored: unchanged keys keep their cursor, stronger ones get a new one,
    // a deleted key is written again; one batch mixing all three.
    let gone = reopened
        .delete(written[5].cursor, now)
        .await
        .expect("delete")
        .expect("live");
    let mixed = vec![
        jti("batch1", now + 50),   // weaker: unchanged
        jti("batch2", now + 9999), // stronger: new cursor
        jti("batch5", now + 100),  // deleted: written again
        jti("fresh", now + 100),
    ];
    let w = reopened.insert_many(&mixed, now).await.expect("mixed");
    assert_eq!(
        w[0],
        jwtgate::control::store::Written {
            changed: false,
            ..written[1]
        }
    );
    assert!(w[1].changed && w[1].cursor > gone.cursor);
    assert!(w[2].changed && w[2].cursor > w[1].cursor && w[3].cursor > w[2].cursor);
    assert!(reopened
        .revokes(iss, [Some("batch5"), None, None], &[], Some(now), now)
        .await
        .expect("revokes"));
    let unchanged = reopened
        .insert_many(&mixed[..1], now)
        .await
        .expect("repeat");
    assert_eq!(unchanged, vec![w[0]]);
    assert!(reopened
        .insert_many(&[], now)
        .await
        .expect("empty")
        .is_empty());

    // A message's effect is written once: its id commits with its revocations, a repeat
    // writes nothing (not even a revocation that was since deleted), and ids are
    // forgotten only once past their time.
    let once = Once {
        iss: format!("https://transmitter/{:x}", fastrand::u64(..)),
        jti: "set-1".into(),
        expires_at: now + 100,
    };
    let first = reopened
        .insert_once(&once, &[jti("by-set", now + 100)], now)
        .await
        .expect("once");
    assert!(first[0].changed);
    reopened.delete(first[0].cursor, now).await.expect("delete");
    let again = reopened
        .insert_once(&once, &[jti("by-set", now + 100)], now)
        .await;
    assert!(matches!(again, Err(StoreError::AlreadySeen)), "{again:?}");
    assert!(!reopened
        .revokes(iss, [Some("by-set"), None, None], &[], None, now)
        .await
        .expect("revokes"));
    // Nothing to revoke: the id alone is recorded.
    let ignored = Once {
        jti: "set-2".into(),
        ..once.clone()
    };
    assert!(reopened
        .insert_once(&ignored, &[], now)
        .await
        .expect("id only")
        .is_empty());
    assert!(matches!(
        reopened.insert_once(&ignored, &[], now).await,
        Err(StoreError::AlreadySeen)
    ));
    reopened.purge(now + 101).await.expect("purge");
    claim_entries(&reopened, now).await;
    assert!(reopened.insert_once(&ignored, &[], now + 101).await.is_ok());
}

/// The store suite on SQLite.
#[tokio::test]
async fn sqlite_store() {
    suite(StoreUrl::Sqlite(temp_dir().join("rev.db"))).await;
}

/// The store suite on PostgreSQL.
#[tokio::test]
async fn postgres_store() {
    suite(StoreUrl::Postgres(pg_url().await)).await;
}

/// A SQLite store written by an earlier version (schema 1, no tombstones) opens, keeps its
/// entries, and takes deletes.
#[tokio::test]
async fn sqlite_schema_1_is_migrated() {
    let path = temp_dir().join("v1.db");
    let now = now();
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE revocations (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, iss TEXT NOT NULL,
                 value TEXT NOT NULL, expires_at INTEGER NOT NULL, issued_before INTEGER,
                 reason TEXT, created_at INTEGER NOT NULL, UNIQUE (kind, iss, value));
             PRAGMA user_version = 1;",
        )
        .expect("schema 1");
        conn.execute(
            "INSERT INTO revocations (kind, iss, value, expires_at, created_at) VALUES ('jti', 'https://iss', 'old', ?1, ?2)",
            [now as i64 + 100, now as i64],
        )
        .expect("row");
    }
    let store = Store::open(&StoreUrl::Sqlite(path)).await.expect("migrate");
    let (all, _) = store.list(0, 10, now).await.expect("list");
    assert_eq!(all.len(), 1);
    assert!(!all[0].deleted && all[0].jti.as_deref() == Some("old"));
    assert!(store
        .delete(all[0].cursor, now)
        .await
        .expect("delete")
        .is_some());
    assert!(!store
        .revokes(
            "https://iss",
            [Some("old"), None, None],
            &[],
            Some(now),
            now
        )
        .await
        .expect("revokes"));
}

/// A claim entry is stored and listed as its claim and value, and revokes (writer checks)
/// tokens holding that claim value, ASCII case aside, issued before its cutoff.
async fn claim_entries(store: &Store, now: u64) {
    let iss = "https://claims";
    let email = NewRevocation {
        kind: Kind::Claim,
        iss: iss.into(),
        expires_at: now + 100,
        value: jwtgate::revocation::claim_value("email", "Ada@Example.com"),
        issued_before: Some(now - 10),
        reason: None,
    };
    let written = store.insert(&email, now).await.expect("insert");
    let (listed, _) = store.list(written.cursor - 1, 1, now).await.expect("list");
    assert_eq!(
        (listed[0].claim.as_deref(), listed[0].value.as_deref()),
        (Some("email"), Some("ada@example.com"))
    );
    assert_eq!(listed[0].key().map(|(k, _)| k), Some(Kind::Claim));
    let ada = [jwtgate::revocation::claim_value("email", "ADA@example.com")];
    let bob = [jwtgate::revocation::claim_value("email", "bob@example.com")];

    assert_revokes(
        store,
        iss,
        now,
        &[
            ([Some("zz"), None, None], &ada[..], Some(now - 20), true),
            ([Some("zz"), None, None], &ada[..], Some(now), false),
            ([Some("zz"), None, None], &bob[..], Some(now - 20), false),
        ],
    )
    .await;
}

/// Each case: a token's `[jti, sid, sub]`, its claim key values and `iat`, and whether a
/// live entry of `iss` revokes it (the writer check).
type RevokesCase<'a> = ([Option<&'a str>; 3], &'a [String], Option<u64>, bool);

async fn assert_revokes(store: &Store, iss: &str, now: u64, cases: &[RevokesCase<'_>]) {
    for (keys, claims, iat, want) in cases {
        assert_eq!(
            store
                .revokes(iss, *keys, claims, *iat, now)
                .await
                .expect("revokes"),
            *want,
            "{keys:?} {claims:?} {iat:?}"
        );
    }
}
