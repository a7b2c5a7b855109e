//! The control API (v1): write revocations, read them as a snapshot or a delta, follow
//! them as a server-sent event stream.
// Helpers return the ready error response as their `Err`; it is built once per request.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::store::NewRevocation;
use super::ControlPlane;
use crate::revocation::Kind;
use crate::verify::now_unix;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest accepted `iss`, `jti`, `sid`, `sub` or `reason`.
const MAX_FIELD: usize = 1024;
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

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ControlBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

fn problem(
    status: StatusCode,
    error: &str,
    description: impl Into<String>,
) -> Response<ControlBody> {
    json_response(
        status,
        json!({ "error": error, "error_description": description.into() }),
    )
}

fn unauthorized() -> Response<ControlBody> {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "missing or unknown credentials",
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"jwtgate-control\""),
    );
    r
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// Constant-time comparison of the key's SHA-256 against each configured hash.
fn key_matches(key: &str, keys: &[crate::config::ApiKey]) -> bool {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    keys.iter().fold(false, |found, k| {
        found
            | aws_lc_rs::constant_time::verify_slices_are_equal(digest.as_ref(), &k.sha256).is_ok()
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
    if key_matches(token, &cp.access.writer_keys) {
        return Some(Role::Writer);
    }
    if key_matches(token, &cp.access.reader_keys) {
        return Some(Role::Reader);
    }
    let verifier = cp.writer_verifier.as_ref()?;
    let all: Vec<usize> = (0..verifier.issuers.len()).collect();
    let verified = verifier.verify(token, &all, now_unix()).await.ok()?;
    verified
        .scopes
        .iter()
        .any(|s| **s == *cp.access.writer_scope)
        .then_some(Role::Writer)
}

pub async fn handle(cp: &ControlPlane, req: Request<Incoming>) -> Response<ControlBody> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, json!({ "status": "ok" })),
        (Method::GET, "/readyz") => {
            if cp.store.ping().await {
                json_response(StatusCode::OK, json!({ "status": "ready" }))
            } else {
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store does not answer",
                )
            }
        }
        (Method::GET, "/metrics") => {
            let mut buf = Vec::new();
            let _ = prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &cp.registry.gather(),
                &mut buf,
            );
            let mut r = Response::new(Either::Left(Full::new(Bytes::from(buf))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Method::POST, "/v1/revocations") => match authenticate(cp, &req).await {
            Some(Role::Writer) => post_revocation(cp, req).await,
            Some(Role::Reader) => problem(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "this key may only read",
            ),
            None => unauthorized(),
        },
        (Method::POST, "/v1/backchannel-logout") => super::idp::backchannel_logout(cp, req).await,
        (Method::POST, "/v1/revoke") => {
            let api_key = authenticate(cp, &req).await == Some(Role::Writer);
            super::idp::revoke(cp, req, api_key).await
        }
        (Method::GET, "/v1/revocations") => match authenticate(cp, &req).await {
            Some(_) => list(cp, &req).await,
            None => unauthorized(),
        },
        (Method::GET, "/v1/revocations/stream") => match authenticate(cp, &req).await {
            Some(_) => stream(cp, &req),
            None => unauthorized(),
        },
        (
            _,
            "/v1/revocations"
            | "/v1/revocations/stream"
            | "/v1/revoke"
            | "/v1/backchannel-logout"
            | "/healthz"
            | "/readyz"
            | "/metrics",
        ) => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "method not allowed",
        ),
        _ => problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    iss: String,
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    expires_at: Option<u64>,
    issued_before: Option<u64>,
    reason: Option<String>,
}

/// Read a body of at most [`MAX_BODY_BYTES`]; `Err` is the response to send.
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<ControlBody>> {
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "body larger than 64 KiB",
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(_) => Err(problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "could not read the body",
        )),
    }
}

/// Validate a revocation request into what the store records.
fn validate(body: RevokeBody, cp: &ControlPlane, now: u64) -> Result<NewRevocation, String> {
    let long = |s: &Option<String>| s.as_ref().is_some_and(|v| v.len() > MAX_FIELD);
    if body.iss.is_empty() || body.iss.len() > MAX_FIELD {
        return Err("`iss` must be 1 to 1024 characters".into());
    }
    if long(&body.jti) || long(&body.sid) || long(&body.sub) || long(&body.reason) {
        return Err("fields are at most 1024 characters".into());
    }
    let (kind, value) = match (body.jti, body.sid, body.sub) {
        (Some(v), None, None) => (Kind::Jti, v),
        (None, Some(v), None) => (Kind::Sid, v),
        (None, None, Some(v)) => (Kind::Sub, v),
        _ => return Err("give exactly one of `jti`, `sid` or `sub`".into()),
    };
    if value.is_empty() {
        return Err(format!("`{}` must not be empty", kind.as_str()));
    }
    let retention = cp.access.default_retention.as_secs();
    let lifetime = cp.access.max_token_lifetime.as_secs();
    let (expires_at, issued_before) = match kind {
        Kind::Jti => {
            if body.issued_before.is_some() {
                return Err("`issued_before` goes with `sub`".into());
            }
            let exp = body
                .expires_at
                .ok_or("a `jti` revocation needs `expires_at` (the token's exp)")?;
            (exp, None)
        }
        Kind::Sid => {
            if body.issued_before.is_some() {
                return Err("`issued_before` goes with `sub`".into());
            }
            (
                body.expires_at.unwrap_or(now.saturating_add(retention)),
                None,
            )
        }
        Kind::Sub => {
            if body.expires_at.is_some() {
                return Err("a `sub` revocation is kept for max_token_lifetime after `issued_before`; do not give `expires_at`".into());
            }
            let cutoff = body
                .issued_before
                .ok_or("a `sub` revocation needs `issued_before` (Unix seconds)")?;
            (cutoff.saturating_add(lifetime), Some(cutoff))
        }
    };
    Ok(NewRevocation {
        kind,
        iss: body.iss,
        value,
        expires_at,
        issued_before,
        reason: body.reason,
    })
}

async fn post_revocation(cp: &ControlPlane, req: Request<Incoming>) -> Response<ControlBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed: RevokeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("malformed revocation: {e}"),
            )
        }
    };
    let now = now_unix();
    let new = match validate(parsed, cp, now) {
        Ok(n) => n,
        Err(why) => return problem(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    record(cp, &new, now).await
}

/// Write and answer `201 {"id","cursor"}` once durable (`200` for a repeat that changed nothing).
pub async fn record(cp: &ControlPlane, new: &NewRevocation, now: u64) -> Response<ControlBody> {
    match cp.store.insert(new, now).await {
        Ok(w) => {
            if w.changed {
                cp.written.with_label_values(&[new.kind.as_str()]).inc();
            }
            let status = if w.changed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(
                status,
                json!({ "id": w.cursor.to_string(), "cursor": w.cursor.to_string() }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "revocation not stored");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store did not accept the write; retry",
            )
        }
    }
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

fn parse_cursor(s: Option<&str>) -> Result<u64, Response<ControlBody>> {
    match s {
        None | Some("") => Ok(0),
        Some(c) => c.parse().map_err(|_| {
            problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`since` is not a cursor from this API",
            )
        }),
    }
}

async fn list(cp: &ControlPlane, req: &Request<Incoming>) -> Response<ControlBody> {
    let since = match parse_cursor(query_param(req, "since")) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let limit = query_param(req, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000)
        .clamp(1, PAGE_MAX);
    // The head is read before the page: every id at or below it is committed, so jumping
    // the cursor to it when the page is empty can never skip an entry.
    let head = match cp.store.max_cursor().await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "reading the revocation head failed");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store does not answer",
            );
        }
    };
    match cp.store.list(since, limit, now_unix()).await {
        Ok((entries, more)) => {
            let cursor = match entries.last() {
                Some(e) => e.cursor,
                None => since.max(head),
            };
            json_response(
                StatusCode::OK,
                json!({ "entries": entries, "cursor": cursor.to_string(), "more": more }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "listing revocations failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store does not answer",
            )
        }
    }
}

/// `text/event-stream`: every entry after the cursor, then new ones as they commit, with
/// heartbeats. Resumable from `since` or `Last-Event-ID`.
fn stream(cp: &ControlPlane, req: &Request<Incoming>) -> Response<ControlBody> {
    let last_event = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let since = match parse_cursor(last_event.or(query_param(req, "since"))) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let heartbeat = query_param(req, "heartbeat_ms")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let (tx, rx) = mpsc::channel(64);
    let store = cp.store.clone();
    let clients = cp.stream_clients.clone();
    let mut shutdown = cp.shutdown.clone();
    tokio::spawn(async move {
        clients.inc();
        let mut latest = store.subscribe();
        let mut cursor = since;
        'outer: loop {
            latest.mark_unchanged();
            let (entries, more) = match store.list(cursor, 500, now_unix()).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream ended: store error");
                    break;
                }
            };
            for e in entries {
                cursor = e.cursor;
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
    r
}
