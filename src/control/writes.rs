//! Writing revocations: one entry, a batch in one durable commit, or a delete — whatever
//! wrote it (the API, a logout token, an RFC 7009 token), the same field rules hold.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::api::{read_body, ControlBody, MAX_BODY_BYTES};
use super::error::{json_response, ApiError};
use super::store::NewRevocation;
use super::ControlPlane;
use crate::config::AccessConfig;
use crate::revocation::Kind;

/// Largest batch body a writer may send (`POST /v1/revocations` with an array).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Most entries in one batch (one durable commit).
pub const MAX_BATCH: usize = 10_000;
/// The largest `leeway` an issuer may have (`config` refuses more): entries naming a token's
/// `exp` are kept this much longer.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Large (batch) bodies read at once.
const BATCH_READERS: usize = 4;
static BATCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BATCH_READERS);
/// Longest accepted `iss`, `jti`, `sid`, `sub`, claim `value` or `reason`.
const MAX_FIELD: usize = 1024;
use crate::config::ssf::NOT_USER_CLAIMS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    iss: String,
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    /// A claim entry: the claim's name, and the `value` it must hold.
    claim: Option<String>,
    value: Option<String>,
    expires_at: Option<u64>,
    issued_before: Option<u64>,
    reason: Option<String>,
}

/// Validate a revocation request into what the store records.
fn validate(body: RevokeBody, access: &AccessConfig, now: u64) -> Result<NewRevocation, ApiError> {
    use ApiError::InvalidRevocation as Invalid;
    let long = |s: &Option<String>| s.as_ref().is_some_and(|v| v.len() > MAX_FIELD);
    if body.iss.is_empty() || body.iss.len() > MAX_FIELD {
        return Err(Invalid("`iss` must be 1 to 1024 characters"));
    }
    if long(&body.jti)
        || long(&body.sid)
        || long(&body.sub)
        || long(&body.value)
        || long(&body.reason)
    {
        return Err(Invalid("fields are at most 1024 characters"));
    }
    // Entries travel to every gateway and into logs: no control characters.
    let clean = |s: &str| !s.chars().any(char::is_control);
    let all_clean = clean(&body.iss)
        && [
            &body.jti,
            &body.sid,
            &body.sub,
            &body.claim,
            &body.value,
            &body.reason,
        ]
        .iter()
        .all(|f| f.as_deref().is_none_or(clean));
    if !all_clean {
        return Err(Invalid("fields must not hold control characters"));
    }
    let (kind, value) = match (body.jti, body.sid, body.sub, body.claim, body.value) {
        (Some(v), None, None, None, None) => (Kind::Jti, v),
        (None, Some(v), None, None, None) => (Kind::Sid, v),
        (None, None, Some(v), None, None) => (Kind::Sub, v),
        (None, None, None, Some(claim), Some(v)) => {
            if NOT_USER_CLAIMS.contains(&claim.as_str()) {
                return Err(Invalid("`claim` names a user claim such as `email`: for `sub`, `sid` or `jti` use that field"));
            }
            // A claim every token shares (`azp`, `scope`) would let one entry cut off a
            // whole issuer: writers revoke only by the claims configured for them.
            if !access.writer_claims.contains(&claim) {
                return Err(Invalid("`claim` is not one writers may revoke by (`writers.claims`, by default email and phone_number)"));
            }
            if v.is_empty() {
                return Err(ApiError::EmptyValue(Kind::Claim));
            }
            (Kind::Claim, crate::revocation::claim_value(&claim, &v))
        }
        _ => {
            return Err(Invalid(
                "give exactly one of `jti`, `sid`, `sub`, or `claim` with `value`",
            ))
        }
    };
    if value.is_empty() {
        return Err(ApiError::EmptyValue(kind));
    }
    if !matches!(kind, Kind::Sub | Kind::Claim) && body.issued_before.is_some() {
        return Err(Invalid("`issued_before` goes with `sub` or `claim`"));
    }
    let retention = access.default_retention.as_secs();
    let lifetime = access.max_token_lifetime.as_secs();
    let (expires_at, issued_before) = match kind {
        Kind::Jti => {
            let exp = body.expires_at.ok_or(Invalid(
                "a `jti` revocation needs `expires_at` (the token's exp)",
            ))?;
            // No token lives past now + max_token_lifetime: a later `exp` is no token's,
            // and would keep the entry (at every gateway) for nothing.
            if exp > now.saturating_add(lifetime).saturating_add(MAX_LEEWAY_SECS) {
                return Err(Invalid(
                    "`expires_at` is later than any token of these issuers can live (max_token_lifetime)",
                ));
            }
            // A gateway accepts the token until `exp` + its leeway: keep the entry as long
            // as the largest leeway a gateway may have.
            (exp.saturating_add(MAX_LEEWAY_SECS), None)
        }
        Kind::Sid => {
            let bound = now.saturating_add(retention.max(lifetime));
            let expires_at = body.expires_at.unwrap_or(now.saturating_add(retention));
            if expires_at > bound {
                return Err(Invalid(
                    "a session is kept at most max(default_retention, max_token_lifetime)",
                ));
            }
            (expires_at, None)
        }
        Kind::Sub | Kind::Claim => {
            if body.expires_at.is_some() {
                return Err(Invalid("a `sub` or `claim` revocation is kept for max_token_lifetime after `issued_before`; do not give `expires_at`"));
            }
            let cutoff = body.issued_before.ok_or(Invalid(
                "a `sub` or `claim` revocation needs `issued_before` (Unix seconds)",
            ))?;
            // Tokens issued before the cutoff live up to `lifetime`, accepted `leeway` longer.
            (
                cutoff
                    .saturating_add(lifetime)
                    .saturating_add(MAX_LEEWAY_SECS),
                Some(cutoff),
            )
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

/// `POST /v1/revocations`: one entry (an object) or a batch (an array), written in one
/// durable commit, all or none.
pub async fn post_revocation(
    cp: &ControlPlane,
    req: Request<Incoming>,
) -> Result<Response<ControlBody>, ApiError> {
    // Only writers get here (authenticated before the body is read). A body declared small
    // is read as such; anything larger (or undeclared) may be a batch, read by at most
    // BATCH_READERS requests at once so that memory stays bounded.
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let _permit;
    let body = if declared.is_some_and(|n| n <= MAX_BODY_BYTES as u64) {
        read_body(req, MAX_BODY_BYTES).await?
    } else {
        _permit = BATCHES.acquire().await.map_err(|_| ApiError::WriteFailed)?;
        read_body(req, MAX_BATCH_BYTES).await?
    };
    let now = cp.clock.unix();
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::BodyTooLarge);
        }
        let new = parse_revocation(&body, &cp.access, now)?;
        return record(cp, &new, now).await;
    }
    let batch = parse_batch(&body, &cp.access, now)?;
    let started = std::time::Instant::now();
    let written = cp.store.insert_many(&batch, now).await;
    cp.metrics.store_write("batch", started.elapsed());
    let written = written.map_err(|e| {
        tracing::error!(error = %e, entries = batch.len(), "revocation batch not stored");
        ApiError::WriteFailed
    })?;
    // Repeats of a key inside the batch were one write: counted once.
    let mut counted = std::collections::HashSet::new();
    let mut created = 0;
    for (new, w) in batch.iter().zip(&written) {
        if w.changed {
            created += 1;
            if counted.insert(w.cursor) {
                cp.metrics.count_written(new.kind.as_str());
            }
        }
    }
    let cursor = written.iter().map(|w| w.cursor).max().unwrap_or(0);
    cp.metrics.head_at_least(cursor);
    tracing::info!(
        entries = batch.len(),
        created,
        cursor,
        "revocation batch written"
    );
    let ids: Vec<String> = written.iter().map(|w| w.cursor.to_string()).collect();
    // As for one entry: 201 when something was written, 200 for a repeat that changed nothing.
    let status = if created > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({
            "count": batch.len(),
            "created": created,
            "cursor": cursor.to_string(),
            "ids": ids,
        }),
    ))
}

/// A batch body: a JSON array of what `POST /v1/revocations` takes, each validated (the
/// first invalid one refuses the whole batch, naming its index).
pub fn parse_batch(
    body: &[u8],
    access: &AccessConfig,
    now: u64,
) -> Result<Vec<NewRevocation>, ApiError> {
    // Parsing stops at the first entry past MAX_BATCH: no body makes a larger vector.
    let Bounded(parsed) =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedRevocation(e.to_string()))?;
    if parsed.is_empty() {
        return Err(ApiError::InvalidRevocation("the batch is empty"));
    }
    parsed
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            validate(b, access, now)
                .and_then(|n| check_fields(&n).map(|()| n))
                .map_err(|e| ApiError::InBatch(i, Box::new(e)))
        })
        .collect()
}

/// A JSON array of at most [`MAX_BATCH`] revocation bodies.
struct Bounded(Vec<RevokeBody>);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = Vec<RevokeBody>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of revocations")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH));
                while let Some(item) = seq.next_element()? {
                    if out.len() == MAX_BATCH {
                        return Err(serde::de::Error::custom(
                            "a batch holds at most 10000 entries; split it",
                        ));
                    }
                    out.push(item);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Items).map(Bounded)
    }
}

/// `DELETE /v1/revocations/{id}`: the live entry with that id goes, at every gateway.
pub async fn delete_revocation(
    cp: &ControlPlane,
    id: u64,
    by: &str,
) -> Result<Response<ControlBody>, ApiError> {
    let started = std::time::Instant::now();
    let deleted = cp.store.delete(id, cp.clock.unix()).await;
    cp.metrics.store_write("delete", started.elapsed());
    let deleted = deleted
        .map_err(|e| {
            tracing::error!(error = %e, "revocation not deleted");
            ApiError::WriteFailed
        })?
        .ok_or(ApiError::NoSuchRevocation)?;
    cp.metrics.count_written("delete");
    cp.metrics.head_at_least(deleted.cursor);
    tracing::warn!(
        id,
        kind = deleted.kind.as_str(),
        cursor = deleted.cursor,
        by,
        "revocation deleted"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id.to_string(),
            "deleted": true,
            "cursor": deleted.cursor.to_string(),
        }),
    ))
}

/// The id in `/v1/revocations/{id}`: decimal digits only (no sign, no padding tricks).
pub fn revocation_id(path: &str) -> Option<u64> {
    let id = path.strip_prefix("/v1/revocations/")?;
    if id.is_empty()
        || id.len() > 19
        || id.starts_with('0')
        || !id.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    id.parse().ok()
}

/// A `POST /v1/revocations` body, parsed and validated into what the store records.
pub fn parse_revocation(
    body: &[u8],
    access: &AccessConfig,
    now: u64,
) -> Result<NewRevocation, ApiError> {
    let parsed: RevokeBody =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedRevocation(e.to_string()))?;
    validate(parsed, access, now)
}

/// Whatever wrote it (the API, a logout token, an RFC 7009 token): entries travel to every
/// gateway and into logs, so the same field rules hold for all.
pub fn check_fields(new: &NewRevocation) -> Result<(), ApiError> {
    // A claim entry's key value is the claim's name and its value, each held to the rules.
    let (first, second) = match new.kind {
        Kind::Claim => match new.value.split_once(crate::revocation::CLAIM_SEPARATOR) {
            Some((claim, value)) => (claim, Some(value)),
            None => ("", None),
        },
        _ => (new.value.as_str(), None),
    };
    let fields_ok = [
        Some(new.iss.as_str()),
        Some(first),
        second,
        new.reason.as_deref(),
    ]
    .into_iter()
    .flatten()
    .all(|f| !f.is_empty() && f.len() <= MAX_FIELD && !f.chars().any(char::is_control));
    if fields_ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRevocation(
            "fields are 1 to 1024 characters without control characters",
        ))
    }
}

/// Write and answer `201 {"id","cursor"}` once durable (`200` for a repeat that changed nothing).
/// Write the revocations a message calls for and its id in one transaction, once
/// ([`super::store::Store::insert_once`]), counting what changed. `Ok(None)`: the message
/// was recorded before and nothing was written.
pub async fn record_once(
    cp: &ControlPlane,
    once: &super::store::Once,
    revocations: &[NewRevocation],
    now: u64,
) -> Result<Option<Vec<super::store::Written>>, super::store::StoreError> {
    let started = std::time::Instant::now();
    let written = cp.store.insert_once(once, revocations, now).await;
    cp.metrics.store_write("insert", started.elapsed());
    match written {
        Ok(w) => {
            for (r, w) in revocations.iter().zip(&w) {
                if w.changed {
                    cp.metrics.count_written(r.kind.as_str());
                    cp.metrics.head_at_least(w.cursor);
                }
            }
            Ok(Some(w))
        }
        Err(super::store::StoreError::AlreadySeen) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn record(
    cp: &ControlPlane,
    new: &NewRevocation,
    now: u64,
) -> Result<Response<ControlBody>, ApiError> {
    check_fields(new)?;
    let started = std::time::Instant::now();
    let w = cp.store.insert(new, now).await;
    cp.metrics.store_write("insert", started.elapsed());
    let w = w.map_err(|e| {
        tracing::error!(error = %e, "revocation not stored");
        ApiError::WriteFailed
    })?;
    if w.changed {
        cp.metrics.count_written(new.kind.as_str());
        cp.metrics.head_at_least(w.cursor);
    }
    let status = if w.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({ "id": w.cursor.to_string(), "cursor": w.cursor.to_string() }),
    ))
}
