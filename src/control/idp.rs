//! Invalidation straight from the identity provider and OAuth clients:
//! OpenID Connect Back-Channel Logout 1.0 (`POST /v1/backchannel-logout`) and RFC 7009
//! token revocation (`POST /v1/revoke`). Both end in the same durable revocation log.

use std::time::Duration;

use base64::Engine;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::Value;

use super::api::{read_body, ControlBody, MAX_FORM_BYTES};
use super::error::{empty_ok, ApiError};
use super::store::{NewRevocation, Once};
use super::writes::{check_fields, record, record_once, MAX_LEEWAY_SECS};
use super::ControlPlane;
use crate::config::{ApiKey, BackchannelConfig, IdpConfig, IssuerConfig, TokenCacheConfig};
use crate::path::percent_decode;
use crate::revocation::Kind;
use crate::verify::keys::IssuerKeys;
use crate::verify::{self, token_ref, Verifier};

/// The event member a logout token's `events` claim must hold (BCL §2.4).
const BCL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

pub struct IdpEndpoints {
    /// Verifies tokens presented to `/v1/revoke`.
    tokens: Option<Verifier>,
    backchannel: Option<Backchannel>,
    revoke_clients: Vec<ApiKey>,
}

struct Backchannel {
    verifier: Verifier,
    max_age: Duration,
}

fn verifier(issuers: &[IssuerConfig], ctx: &verify::Context) -> Verifier {
    // Every presented token is checked afresh: nothing to gain from the cache.
    let cache = TokenCacheConfig {
        max_entries: 0,
        max_bytes: 0,
        ttl: Duration::from_secs(1),
    };
    Verifier::new(issuers, &cache, ctx, &[])
}

impl IdpEndpoints {
    pub fn new(cfg: &IdpConfig, ctx: &verify::Context) -> IdpEndpoints {
        IdpEndpoints {
            tokens: (!cfg.token_issuers.is_empty()).then(|| verifier(&cfg.token_issuers, ctx)),
            backchannel: cfg
                .backchannel
                .as_ref()
                .map(|b: &BackchannelConfig| Backchannel {
                    verifier: verifier(std::slice::from_ref(&b.issuer), ctx),
                    max_age: b.max_age,
                }),
            revoke_clients: cfg.revoke_clients.clone(),
        }
    }

    /// Key sets to keep refreshed in the background.
    pub fn key_sets(&self) -> Vec<std::sync::Arc<IssuerKeys>> {
        let mut out = Vec::new();
        if let Some(v) = &self.tokens {
            out.extend(v.issuers.iter().cloned());
        }
        if let Some(b) = &self.backchannel {
            out.extend(b.verifier.issuers.iter().cloned());
        }
        out
    }
}

/// Parse an `application/x-www-form-urlencoded` body in one linear pass: at most
/// [`MAX_FORM_FIELDS`] fields, none repeated (RFC 6749 §3.2).
pub fn form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8".to_owned())?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_FORM_FIELDS {
            return Err(format!("more than {MAX_FORM_FIELDS} fields"));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (
            percent_decode(k).into_owned(),
            percent_decode(v).into_owned(),
        );
        if !names.insert(k.clone()) {
            return Err(format!("`{k}` is given more than once"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Fields a form may hold: the endpoints read two or three.
pub const MAX_FORM_FIELDS: usize = 16;

/// The fields of an `application/x-www-form-urlencoded` request body (at most 16 KiB).
async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, ApiError> {
    if !is_form(&req) {
        return Err(ApiError::NotAForm);
    }
    let body = read_body(req, MAX_FORM_BYTES).await?;
    form(&body).map_err(ApiError::MalformedForm)
}

fn param<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn is_form(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
}

/// The JOSE header's `typ`, if any.
fn jose_typ(token: &str) -> Result<Option<String>, String> {
    let header = verify::unverified_part(token, 0).ok_or("malformed logout token")?;
    match header.get("typ") {
        None => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err("`typ` is not a string".into()),
    }
}

/// `POST /v1/backchannel-logout`: validate per BCL §2.6, then revoke the session (`sid`) or,
/// without one, every token of the subject issued until now.
pub async fn backchannel_logout(
    cp: &ControlPlane,
    req: Request<Incoming>,
) -> Result<Response<ControlBody>, ApiError> {
    let bc = cp
        .idp
        .backchannel
        .as_ref()
        .ok_or(ApiError::BackchannelNotConfigured)?;
    let fields = read_form(req).await?;
    let token = param(&fields, "logout_token").ok_or(ApiError::MissingParameter("logout_token"))?;
    let now = cp.clock.unix();
    let (iss, sid, sub, key) = validate_logout_token(bc, token, now).await.map_err(|why| {
        // `?`: whatever a reason holds reaches the log escaped, never as raw lines.
        tracing::info!(reason = ?why, "logout token refused");
        ApiError::LogoutTokenRefused(why.into())
    })?;
    let new = match (sid, sub) {
        (Some(sid), _) => NewRevocation {
            kind: Kind::Sid,
            iss,
            value: sid,
            expires_at: now.saturating_add(cp.access.default_retention.as_secs()),
            issued_before: None,
            reason: Some("oidc back-channel logout".into()),
        },
        (None, Some(sub)) => NewRevocation {
            kind: Kind::Sub,
            iss,
            value: sub,
            expires_at: now
                .saturating_add(1)
                .saturating_add(cp.access.max_token_lifetime.as_secs())
                .saturating_add(MAX_LEEWAY_SECS),
            // Tokens issued in the logout's own second are revoked too (the cutoff is
            // exclusive).
            issued_before: Some(now.saturating_add(1)),
            reason: Some("oidc back-channel logout".into()),
        },
        (None, None) => return Err(ApiError::LogoutTokenRefused("neither sid nor sub".into())),
    };
    check_fields(&new)?;
    // The logout token's id commits with its revocation (BCL §2.6 step 9): a replay — on
    // any replica, after any restart — writes nothing, and a failed write leaves the
    // provider's retry free to succeed.
    let once = Once {
        // Apart from the same issuer's Security Event Tokens.
        iss: format!("logout {}", key.0),
        jti: key.1,
        expires_at: now
            .saturating_add(bc.max_age.as_secs())
            .saturating_add(bc.verifier.issuers[0].cfg.leeway.as_secs())
            .saturating_add(60),
    };
    match record_once(cp, &once, std::slice::from_ref(&new), now).await {
        Ok(Some(_)) => Ok(empty_ok()),
        Ok(None) => Err(ApiError::LogoutTokenRefused("jti already used".into())),
        Err(e) => {
            tracing::error!(error = %e, "logout not stored");
            Err(ApiError::WriteFailed)
        }
    }
}

/// BCL §2.6: returns `(iss, sid, sub, (iss, jti))`.
async fn validate_logout_token(
    bc: &Backchannel,
    token: &str,
    now: u64,
) -> Result<(String, Option<String>, Option<String>, (String, String)), String> {
    // §2.4 explicit typing: `logout+jwt` (or none); any other type is another kind of JWT.
    if let Some(typ) = jose_typ(token)? {
        let t = typ.to_ascii_lowercase();
        if !matches!(t.as_str(), "logout+jwt" | "application/logout+jwt" | "jwt") {
            // The value is the sender's: it is neither echoed nor logged.
            return Err("`typ` is not logout+jwt".to_owned());
        }
    }
    // Signature by the issuer's keys (never `none`), `iss`, `aud` ∈ client ids, `exp`, `iat`
    // not in the future.
    let verified = bc
        .verifier
        .verify_signature(token, &[0], now)
        .await
        .map_err(|r| r.description().to_owned())?;
    let c = &verified.claims;
    let iat = verified.iat.ok_or("iat is missing")?;
    if iat.saturating_add(bc.max_age.as_secs()) < now {
        return Err("iat is too old".into());
    }
    let jti = c
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or("jti is missing")?;
    let events = c
        .get("events")
        .ok_or("events is missing")?
        .as_object()
        .ok_or("events is not a JSON object")?;
    if !events
        .get(BCL_EVENT)
        .ok_or("events lacks the back-channel logout event")?
        .is_object()
    {
        return Err("the back-channel logout event is not a JSON object".into());
    }
    if c.contains_key("nonce") {
        return Err("a logout token must not contain nonce".into());
    }
    let text = |name: &str| -> Result<Option<String>, String> {
        match c.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("{name} is not a non-empty string")),
        }
    };
    let (sid, sub) = (text("sid")?, text("sub")?);
    if sid.is_none() && sub.is_none() {
        return Err("neither sid nor sub".into());
    }
    let iss = bc.verifier.issuers[0].cfg.issuer.clone();
    Ok((iss.clone(), sid, sub, (iss, jti.to_owned())))
}

/// The client id of valid HTTP Basic client credentials (RFC 6749 §2.3.1).
fn basic_client(req: &Request<Incoming>, clients: &[ApiKey]) -> Option<String> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    // Both parts are form-encoded before Basic encoding.
    let (id, secret) = (percent_decode(id), percent_decode(secret));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let ok = clients.iter().fold(false, |ok, c| {
        ok | (c.name == id
            && aws_lc_rs::constant_time::verify_slices_are_equal(digest.as_ref(), &c.sha256)
                .is_ok())
    });
    ok.then(|| id.into_owned())
}

/// `POST /v1/revoke` (RFC 7009): a valid token of a configured issuer has its `jti` (else its
/// `sid`, else its digest) revoked until its `exp`. Invalid or unknown tokens also get `200`
/// (§2.2): the caller learns nothing about them.
pub async fn revoke(
    cp: &ControlPlane,
    req: Request<Incoming>,
    api_key_ok: bool,
) -> Result<Response<ControlBody>, ApiError> {
    // A writer API key may revoke any token; an OAuth client only its own.
    let client = match api_key_ok {
        true => None,
        false => Some(basic_client(&req, &cp.idp.revoke_clients).ok_or(ApiError::InvalidClient)?),
    };
    let fields = read_form(req).await?;
    let token = param(&fields, "token").ok_or(ApiError::MissingParameter("token"))?;
    // `token_type_hint` (access_token, refresh_token or anything else) only helps a server
    // search; only JWT access tokens are revocable here, and every token is tried as one.
    let Some(verifier) = cp.idp.tokens.as_ref() else {
        return Ok(empty_ok());
    };
    let now = cp.clock.unix();
    let all: Vec<usize> = (0..verifier.issuers.len()).collect();
    let Ok(v) = verifier.verify_signature(token, &all, now).await else {
        return Ok(empty_ok());
    };
    let iss = verifier.issuers[v.issuer].cfg.issuer.clone();
    let text = |name: &str| {
        v.claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    // RFC 7009 §2.1: the token must have been issued to the client revoking it. A token
    // naming no client (`azp`, `client_id`, Okta's `cid`, Azure's `appid`) cannot be bound
    // and is accepted.
    if let Some(client) = &client {
        let issued_to = text("azp")
            .or_else(|| text("client_id"))
            .or_else(|| text("cid"))
            .or_else(|| text("appid"));
        if issued_to.is_some_and(|to| to != *client) {
            tracing::info!("RFC 7009 revocation refused: the token was issued to another client");
            return Err(ApiError::TokenOfAnotherClient);
        }
    }
    let (kind, value) = match (text("jti"), text("sid")) {
        (Some(jti), _) => (Kind::Jti, jti),
        (None, Some(sid)) => (Kind::Sid, sid),
        (None, None) => (Kind::Jti, token_ref(token)),
    };
    // Until the token's `exp` plus the largest leeway; a session (`sid`) outlives the token
    // that named it — its siblings may be younger — so it is kept at least as long as a
    // back-channel logout keeps one.
    let token_end = v.exp.saturating_add(MAX_LEEWAY_SECS);
    let expires_at = match kind {
        Kind::Sid => token_end.max(now.saturating_add(cp.access.default_retention.as_secs())),
        _ => token_end,
    };
    let new = NewRevocation {
        kind,
        iss,
        value,
        expires_at,
        issued_before: None,
        reason: Some("rfc 7009 revocation".into()),
    };
    record(cp, &new, now).await?;
    Ok(empty_ok())
}
