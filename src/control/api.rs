//! The control API (v1): write revocations, read them as a snapshot or a delta, follow
//! them as a server-sent event stream. Handlers return `Result<Response, ApiError>`; the
//! one [`ApiError::respond`] turns a refusal into its answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::mpsc;

use super::error::{json_body_response, json_response, ApiError};
use super::writes::revocation_id;
use super::ControlPlane;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body the unauthenticated endpoints (back-channel logout, RFC 7009) read.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Time a client has to send a whole request body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
const PAGE_MAX: usize = 10_000;

pub type ControlBody = Either<Full<Bytes>, EventBody>;

/// A streamed body fed by a channel (the SSE stream).
pub struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Role {
    /// A writer API key (its configured name).
    Writer(String),
    /// A writer JWT (an issuer's token with the writers' scope).
    WriterJwt,
    Reader,
}

impl Role {
    fn writes(&self) -> bool {
        matches!(self, Role::Writer(_) | Role::WriterJwt)
    }
}

/// Constant-time comparison of the key's SHA-256 against each configured hash; the name of
/// the key it is.
fn key_matches<'k>(key: &str, keys: &'k [crate::config::ApiKey]) -> Option<&'k str> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    keys.iter().fold(None, |found, k| {
        let equal =
            aws_lc_rs::constant_time::verify_slices_are_equal(digest.as_ref(), &k.sha256).is_ok();
        found.or(equal.then_some(k.name.as_str()))
    })
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The caller's role: a writer API key or JWT (with the scope), or a reader API key.
async fn authenticate(cp: &ControlPlane, req: &Request<Incoming>) -> Option<Role> {
    let token = bearer(req)?;
    if let Some(name) = key_matches(token, &cp.access.writer_keys) {
        return Some(Role::Writer(name.to_owned()));
    }
    if key_matches(token, &cp.access.reader_keys).is_some() {
        return Some(Role::Reader);
    }
    let verifier = cp.writer_verifier.as_ref()?;
    let all: Vec<usize> = (0..verifier.issuers.len()).collect();
    let now = cp.clock.unix();
    let verified = verifier.verify(token, &all, now).await.ok()?;
    if !verified
        .scopes
        .iter()
        .any(|s| **s == *cp.access.writer_scope)
    {
        return None;
    }
    // A writer whose token (or session, or subject) was revoked writes no more. A store
    // that cannot answer fails closed.
    let text = |name: &str| {
        verified
            .claims
            .get(name)
            .and_then(serde_json::Value::as_str)
    };
    let iss = verifier.issuers[verified.issuer].cfg.issuer.as_str();
    let jti = text("jti").map_or_else(|| crate::verify::token_ref(token), str::to_owned);
    // Like the gateway: a writer token that could outlive a `sub` cutoff is refused.
    let lifetime = verified.iat.map(|iat| verified.exp.saturating_sub(iat));
    if lifetime.is_none_or(|l| l > cp.access.max_token_lifetime.as_secs()) {
        return None;
    }
    let revoked = cp
        .store
        .revokes(
            iss,
            [Some(&jti), text("sid"), text("sub")],
            &claim_values(&verified.claims),
            verified.iat,
            now,
        )
        .await
        .unwrap_or(true);
    (!revoked).then_some(Role::WriterJwt)
}

/// The key values a claim entry would have for each of a token's string claims (bar those
/// no claim entry may name).
fn claim_values(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    claims
        .iter()
        .filter(|(name, _)| !crate::config::ssf::NOT_USER_CLAIMS.contains(&name.as_str()))
        .filter_map(|(name, v)| Some(crate::revocation::claim_value(name, v.as_str()?)))
        .collect()
}

pub async fn handle(cp: &ControlPlane, req: Request<Incoming>) -> Response<ControlBody> {
    route(cp, req).await.unwrap_or_else(|e| e.respond())
}

async fn route(
    cp: &ControlPlane,
    req: Request<Incoming>,
) -> Result<Response<ControlBody>, ApiError> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({ "status": "ok" }))),
        (Method::GET, "/readyz") => {
            if cp.store.ping().await {
                Ok(json_response(StatusCode::OK, &json!({ "status": "ready" })))
            } else {
                Err(ApiError::NotReady)
            }
        }
        (Method::GET, "/metrics") => {
            match cp.store.max_cursor().await {
                Ok(head) => cp
                    .metrics
                    .control_head_cursor
                    .set(i64::try_from(head).unwrap_or(i64::MAX)),
                Err(e) => tracing::warn!(error = %e, "head cursor unavailable for /metrics"),
            }
            let mut r = Response::new(Either::Left(Full::new(Bytes::from(cp.metrics.render()))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
        (Method::POST, "/v1/revocations") => match authenticate(cp, &req).await {
            Some(r) if r.writes() => super::writes::post_revocation(cp, req).await,
            Some(_) => Err(ApiError::ReadOnlyKey),
            None => Err(ApiError::Unauthorized),
        },
        (Method::DELETE, p) if revocation_id(p).is_some() => match authenticate(cp, &req).await {
            // Lifting a revocation can re-enable a stolen token: only a writer API key may,
            // never a writer JWT an identity provider issues.
            Some(Role::Writer(by)) => {
                super::writes::delete_revocation(cp, revocation_id(p).unwrap_or_default(), &by)
                    .await
            }
            Some(Role::WriterJwt) => Err(ApiError::DeleteNeedsKey),
            Some(Role::Reader) => Err(ApiError::ReadOnlyKey),
            None => Err(ApiError::Unauthorized),
        },
        (_, p) if revocation_id(p).is_some() => Err(ApiError::MethodNotAllowed),
        (Method::POST, "/v1/backchannel-logout") => super::idp::backchannel_logout(cp, req).await,
        (Method::POST, "/v1/ssf/events") => super::ssf::push(cp, req).await,
        (Method::POST, "/v1/revoke") => {
            let api_key = authenticate(cp, &req).await.is_some_and(|r| r.writes());
            super::idp::revoke(cp, req, api_key).await
        }
        (Method::GET, "/v1/revocations") => match authenticate(cp, &req).await {
            Some(_) => list(cp, &req).await,
            None => Err(ApiError::Unauthorized),
        },
        (Method::GET, "/v1/revocations/stream") => match authenticate(cp, &req).await {
            Some(_) => {
                let head = cp.store.max_cursor().await.map_err(|e| {
                    tracing::error!(error = %e, "reading the revocation head failed");
                    ApiError::StoreUnavailable
                })?;
                stream(cp, &req, head)
            }
            None => Err(ApiError::Unauthorized),
        },
        (
            _,
            "/v1/revocations"
            | "/v1/revocations/stream"
            | "/v1/revoke"
            | "/v1/backchannel-logout"
            | "/v1/ssf/events"
            | "/healthz"
            | "/readyz"
            | "/metrics",
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// Read a body of at most `max` bytes within [`BODY_DEADLINE`].
pub async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    // A body that trickles in holds a connection and a task: the whole of it within
    // BODY_DEADLINE.
    let collected =
        tokio::time::timeout(BODY_DEADLINE, Limited::new(req.into_body(), max).collect())
            .await
            .map_err(|_| ApiError::BodyTimeout)?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::BodyTooLarge)
        }
        Err(_) => Err(ApiError::UnreadableBody),
    }
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

fn parse_cursor(s: Option<&str>) -> Result<u64, ApiError> {
    match s {
        None | Some("") => Ok(0),
        Some(c) => c.parse().map_err(|_| ApiError::BadCursor),
    }
}

async fn list(
    cp: &ControlPlane,
    req: &Request<Incoming>,
) -> Result<Response<ControlBody>, ApiError> {
    let since = parse_cursor(query_param(req, "since"))?;
    let limit = query_param(req, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000)
        .clamp(1, PAGE_MAX);
    // The head is read before the page: every id at or below it is committed, so jumping
    // the cursor to it when the page is empty can never skip an entry.
    let head = cp.store.max_cursor().await.map_err(|e| {
        tracing::error!(error = %e, "reading the revocation head failed");
        ApiError::StoreUnavailable
    })?;
    let (entries, more) = cp
        .store
        .list(since, limit, cp.clock.unix())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "listing revocations failed");
            ApiError::StoreUnavailable
        })?;
    // Pages are bounded in bytes too, far below what a gateway accepts, so no mix of
    // large entries can make a page no gateway can take. Entries are serialized once.
    let (array, last, more) = page_entries(&entries, more, Understood::of(req));
    // Jump to the head only on the last page: a page that could not hold its first entry
    // must not skip past it.
    let cursor = last.unwrap_or(if more { since } else { since.max(head) });
    // `epoch` and `head` let a gateway see that the store was recreated or restored from an
    // older backup (its cursor then means nothing here) and resync from zero;
    // `max_token_lifetime` is how long this control plane keeps a `sub` cutoff: gateways
    // refuse tokens that live longer, whatever their own setting says.
    let mut body = array;
    body.splice(0..0, b"{\"entries\":".iter().copied());
    let tail = format!(
        ",\"cursor\":\"{cursor}\",\"more\":{more},\"epoch\":{},\"head\":\"{head}\",\"max_token_lifetime\":{}}}",
        serde_json::Value::from(cp.store.epoch()),
        cp.access.max_token_lifetime.as_secs()
    );
    body.extend_from_slice(tail.as_bytes());
    Ok(json_body_response(StatusCode::OK, body))
}

/// Bytes of entries one page carries (gateways accept 16 MiB).
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// What entries a client can read. Gateways of this version ask for tombstones (deletes)
/// and claim entries; older ones would refuse a page or event holding one and stop syncing
/// altogether, so they are sent none: they keep a deleted entry until it expires (the safe
/// side), and miss claim entries only.
#[derive(Clone, Copy)]
struct Understood {
    tombstones: bool,
    claims: bool,
}

impl Understood {
    fn of(req: &Request<Incoming>) -> Understood {
        Understood {
            tombstones: query_param(req, "tombstones") == Some("1"),
            claims: query_param(req, "claims") == Some("1"),
        }
    }

    /// Whether `e` is left out (its cursor is passed all the same).
    fn skips(self, e: &crate::revocation::Entry) -> bool {
        (e.deleted && !self.tombstones) || (e.claim.is_some() && !self.claims)
    }
}

/// The longest prefix of `entries` within [`PAGE_BYTES`] (at least one entry), serialized
/// once as a JSON array — without what the client cannot read ([`Understood`]); the cursor
/// of the last entry it covers (one left out included); whether more follow.
fn page_entries(
    entries: &[crate::revocation::Entry],
    more: bool,
    understood: Understood,
) -> (Vec<u8>, Option<u64>, bool) {
    let mut out = Vec::with_capacity(entries.len().saturating_mul(128).min(PAGE_BYTES) + 64);
    out.push(b'[');
    let mut last = None;
    let mut written = 0;
    for e in entries {
        if understood.skips(e) {
            last = Some(e.cursor);
            continue;
        }
        let before = out.len();
        if written > 0 {
            out.push(b',');
        }
        if serde_json::to_writer(&mut out, e).is_err()
            || (written > 0 && out.len() + 1 > PAGE_BYTES)
        {
            out.truncate(before);
            out.push(b']');
            return (out, last, true);
        }
        written += 1;
        last = Some(e.cursor);
    }
    out.push(b']');
    (out, last, more)
}

/// `text/event-stream`: every entry after the cursor, then new ones as they commit, with
/// heartbeats. Resumable from `since` or `Last-Event-ID`.
fn stream(
    cp: &ControlPlane,
    req: &Request<Incoming>,
    head: u64,
) -> Result<Response<ControlBody>, ApiError> {
    let last_event = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let since = parse_cursor(last_event.or(query_param(req, "since")))?;
    // A gateway following another epoch, or a cursor past this store's head, must resync
    // from the pages instead.
    if query_param(req, "epoch").is_some_and(|e| !e.is_empty() && e != cp.store.epoch())
        || since > head
    {
        return Err(ApiError::EpochChanged);
    }
    let heartbeat = query_param(req, "heartbeat_ms")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let understood = Understood::of(req);
    let (tx, rx) = mpsc::channel(64);
    let store = cp.store.clone();
    let clients = cp.metrics.control_stream_clients.clone();
    let clock = cp.clock.clone();
    let mut shutdown = cp.shutdown.clone();
    tokio::spawn(async move {
        clients.inc();
        let mut latest = store.subscribe();
        let mut cursor = since;
        'outer: loop {
            latest.mark_unchanged();
            let (entries, more) = match store.list(cursor, 500, clock.unix()).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream ended: store error");
                    break;
                }
            };
            for e in entries {
                cursor = e.cursor;
                if understood.skips(&e) {
                    continue;
                }
                let data = serde_json::to_string(&e).unwrap_or_default();
                let event = format!("id: {}\nevent: revocation\ndata: {data}\n\n", e.cursor);
                if tx.send(Bytes::from(event)).await.is_err() {
                    break 'outer;
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                r = latest.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(heartbeat) => {
                    if tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
                _ = shutdown.changed() => break,
            }
        }
        clients.dec();
    });
    let mut r = Response::new(Either::Right(EventBody { rx }));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::Entry;

    fn entry(cursor: u64, size: usize) -> Entry {
        Entry {
            cursor,
            iss: "i".into(),
            jti: Some("x".repeat(size)),
            sid: None,
            sub: None,
            claim: None,
            value: None,
            issued_before: None,
            expires_at: 1,
            reason: None,
            deleted: false,
        }
    }

    const ALL: Understood = Understood {
        tombstones: true,
        claims: true,
    };

    /// A page stops at its byte budget (keeping at least one entry), says more follow, and
    /// is valid JSON.
    #[test]
    fn pages_are_bounded_in_bytes() {
        let big: Vec<Entry> = (1..=5000).map(|c| entry(c, 1024)).collect();
        let (page, last, more) = page_entries(&big, false, ALL);
        assert!(more);
        assert!(page.len() <= PAGE_BYTES);
        let parsed: Vec<Entry> = serde_json::from_slice(&page).expect("JSON");
        assert!(
            parsed.len() < 5000 && parsed.len() > 3000,
            "{}",
            parsed.len()
        );
        assert_eq!(last, parsed.last().map(|e| e.cursor));
        assert_eq!(parsed[..], big[..parsed.len()]);
        let (page, last, more) = page_entries(&[entry(1, 10), entry(2, 10)], false, ALL);
        assert_eq!((last, more), (Some(2), false));
        assert_eq!(
            serde_json::from_slice::<Vec<Entry>>(&page)
                .expect("JSON")
                .len(),
            2
        );
        let (page, last, more) = page_entries(&[entry(1, 5 * 1024 * 1024)], false, ALL);
        assert_eq!((last, more), (Some(1), false), "one entry always fits");
        assert!(page.len() > PAGE_BYTES);
        assert_eq!(page_entries(&[], true, ALL), (b"[]".to_vec(), None, true));
        // A client that did not ask for tombstones or claim entries (an older gateway) gets
        // none, and its cursor passes them.
        let tomb = Entry {
            deleted: true,
            ..entry(3, 10)
        };
        let claim = Entry {
            jti: None,
            claim: Some("email".into()),
            value: Some("a@b.c".into()),
            ..entry(4, 10)
        };
        let old = Understood {
            tombstones: false,
            claims: false,
        };
        let (page, last, _) = page_entries(
            &[entry(1, 10), entry(2, 10), tomb.clone(), claim.clone()],
            false,
            old,
        );
        assert_eq!(
            serde_json::from_slice::<Vec<Entry>>(&page)
                .expect("JSON")
                .len(),
            2
        );
        assert_eq!(last, Some(4));
        let (page, last, _) = page_entries(&[entry(1, 10), tomb, claim], false, ALL);
        assert_eq!(
            serde_json::from_slice::<Vec<Entry>>(&page)
                .expect("JSON")
                .len(),
            3
        );
        assert_eq!(last, Some(4));
    }
}
