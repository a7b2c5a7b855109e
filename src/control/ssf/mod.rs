//! OpenID Shared Signals receiver: Security Event Tokens (RFC 8417) from configured
//! transmitters, pushed to `POST /v1/ssf/events` (RFC 8935) or polled ([`poll`], RFC 8936),
//! become revocations. Session events naming a session revoke its `sid`; events about a
//! whole account (a session revocation without a session, credentials changed or
//! compromised, the account disabled or purged, its claims changed) cut off its `sub` at
//! the event's time. Each SET's `jti` is recorded in the same transaction as its
//! revocations, so a replay — or a redelivery after a lost acknowledgement — writes nothing.

mod events;
pub mod poll;

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::api::{read_body, ControlBody};
use super::error::{empty_ok, json_response, ApiError};
use super::store::{NewRevocation, Once};
use super::writes::{check_fields, record_once, MAX_LEEWAY_SECS};
use super::ControlPlane;
use crate::config::ssf::{PushAuth, SsfConfig, TransmitterConfig};
use crate::config::{AccessConfig, TokenCacheConfig};
use crate::error::Reject;
use crate::revocation::Kind;
use crate::verify::keys::IssuerKeys;
use crate::verify::{self, Verifier};
use events::{event_type, Effect, Subject};

/// The largest SET accepted: the verifier's limit for any JWT.
const MAX_SET_BYTES: usize = verify::MAX_TOKEN_BYTES;
/// Why a SET is refused: the RFC 8935 §2.4 error codes, or a failure of ours that a
/// transmitter should retry.
#[derive(Debug)]
pub enum SetError {
    InvalidRequest(String),
    InvalidKey(&'static str),
    InvalidIssuer,
    InvalidAudience,
    AuthenticationFailed,
    AccessDenied,
    /// Keys or the store unavailable: nothing was decided, deliver again later.
    Unavailable(&'static str),
}

impl SetError {
    /// The RFC 8935 `err` code (`None`: not the SET's fault).
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            SetError::InvalidRequest(_) => "invalid_request",
            SetError::InvalidKey(_) => "invalid_key",
            SetError::InvalidIssuer => "invalid_issuer",
            SetError::InvalidAudience => "invalid_audience",
            SetError::AuthenticationFailed => "authentication_failed",
            SetError::AccessDenied => "access_denied",
            SetError::Unavailable(_) => return None,
        })
    }

    pub fn description(&self) -> String {
        match self {
            SetError::InvalidRequest(why) => why.clone(),
            SetError::InvalidKey(why) | SetError::Unavailable(why) => (*why).to_owned(),
            SetError::InvalidIssuer => "the SET's iss is not a configured transmitter".into(),
            SetError::InvalidAudience => "the SET is not addressed to this receiver".into(),
            SetError::AuthenticationFailed => {
                "the bearer token is missing or not this transmitter's".into()
            }
            SetError::AccessDenied => "this transmitter does not deliver by push".into(),
        }
    }

    /// The RFC 8935 error answer (400), or 503 for a failure of ours.
    fn respond(&self) -> Response<ControlBody> {
        match self.code() {
            Some(code) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "err": code, "description": self.description() }),
            ),
            None => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "temporarily_unavailable", "error_description": self.description() }),
            ),
        }
    }
}

fn invalid(why: &str) -> SetError {
    SetError::InvalidRequest(why.to_owned())
}

/// A SET that passed every check: what it asks for.
pub struct Valid {
    transmitter: usize,
    jti: String,
    /// Its `iat`, never before now: the id is remembered from then on.
    iat: u64,
    /// The event type's metric label.
    event: &'static str,
    /// The revocations it calls for (none, one, or one per identifier of an `aliases`
    /// subject).
    revocations: Vec<NewRevocation>,
}

/// What became of a valid SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Revoked,
    Ignored,
    Replayed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Revoked => "revoked",
            Outcome::Ignored => "ignored",
            Outcome::Replayed => "replayed",
        }
    }
}

/// The receiver: one verifier issuer per transmitter, in configuration order.
pub struct Receiver {
    verifier: Verifier,
    cfg: SsfConfig,
    /// How long a session revocation is kept (the control plane's `default_retention`).
    retention: Duration,
    /// How long a `sub` cutoff must be kept (`max_token_lifetime`).
    max_token_lifetime: Duration,
}

impl Receiver {
    pub fn new(cfg: &SsfConfig, access: &AccessConfig, ctx: &verify::Context) -> Receiver {
        let issuers: Vec<_> = cfg.transmitters.iter().map(|t| t.issuer.clone()).collect();
        // Every SET is checked afresh.
        let cache = TokenCacheConfig {
            max_entries: 0,
            max_bytes: 0,
            ttl: Duration::from_secs(1),
        };
        Receiver {
            verifier: Verifier::new(&issuers, &cache, ctx, &[]),
            cfg: cfg.clone(),
            retention: access.default_retention,
            max_token_lifetime: access.max_token_lifetime,
        }
    }

    /// Key sets to keep refreshed in the background.
    pub fn key_sets(&self) -> Vec<Arc<IssuerKeys>> {
        self.verifier.issuers.clone()
    }

    pub fn transmitters(&self) -> &[TransmitterConfig] {
        &self.cfg.transmitters
    }

    /// The transmitter a SET claims to come from (its unverified `iss`): only to pick the
    /// keys and the push credential it must match.
    pub fn claimed_transmitter(&self, set: &str) -> Result<usize, SetError> {
        let claims = verify::unverified_part(set, 1)
            .ok_or_else(|| invalid("the payload is not a JSON object"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("iss is missing"))?;
        self.cfg
            .transmitters
            .iter()
            .position(|t| t.issuer.issuer == iss)
            .ok_or(SetError::InvalidIssuer)
    }

    /// RFC 8417 §4 and SSF checks of a SET from transmitter `t`, and the revocation it calls
    /// for.
    pub async fn validate(&self, t: usize, set: &str, now: u64) -> Result<Valid, SetError> {
        if set.len() > MAX_SET_BYTES {
            return Err(invalid("the SET is too large"));
        }
        check_typ(set)?;
        let (_, claims, _) = self
            .verifier
            .signed_claims(set, &[t])
            .await
            .map_err(|r| match r {
                Reject::UnknownIssuer => SetError::InvalidIssuer,
                Reject::BadSignature => SetError::InvalidKey("the signature does not verify"),
                Reject::UnknownKey => {
                    SetError::InvalidKey("no key of the transmitter has this kid")
                }
                Reject::AlgorithmNotAllowed => {
                    SetError::InvalidKey("the algorithm is not accepted")
                }
                Reject::KeysUnavailable => {
                    SetError::Unavailable("the transmitter's keys are unavailable")
                }
                _ => invalid("the SET is not a well-formed signed JWT"),
            })?;
        let tx = &self.cfg.transmitters[t];
        let leeway = tx.issuer.leeway.as_secs();
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.cfg.audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&self.cfg.audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(SetError::InvalidAudience);
        }
        let iat = claims
            .get("iat")
            .and_then(|v| {
                v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
            })
            .ok_or_else(|| invalid("iat is missing or not a NumericDate"))?;
        if iat > now.saturating_add(leeway) {
            return Err(invalid("iat is in the future"));
        }
        if iat
            .saturating_add(self.cfg.max_age.as_secs())
            .saturating_add(leeway)
            < now
        {
            return Err(invalid("iat is older than this receiver accepts"));
        }
        if let Some(exp) = claims.get("exp") {
            if exp
                .as_u64()
                .is_none_or(|exp| exp.saturating_add(leeway) < now)
            {
                return Err(invalid("the SET has expired"));
            }
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| invalid("jti is missing"))?;
        let events = claims
            .get("events")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("events is missing or not an object"))?;
        let mut events = events.iter();
        let (Some((uri, payload)), None) = (events.next(), events.next()) else {
            return Err(invalid("a SET must hold exactly one event"));
        };
        let payload = payload
            .as_object()
            .ok_or_else(|| invalid("the event is not an object"))?;
        let (event, effect) = event_type(uri);
        let revocations = if effect == Effect::None {
            Vec::new()
        } else {
            // SSF 1.0 names the subject in `sub_id`; CAEP drafts in the event's `subject`.
            let subject = claims
                .get("sub_id")
                .or_else(|| payload.get("subject"))
                .ok_or_else(|| invalid("the SET names no subject (sub_id)"))?;
            let subject = events::subject(tx, subject)?;
            // The event's own time (CAEP `event_timestamp`), else when the SET was made;
            // never later than now.
            let at = payload
                .get("event_timestamp")
                .and_then(Value::as_u64)
                .unwrap_or(iat)
                .min(now);
            self.revocations(tx, effect, subject, at, now, uri)
        };
        Ok(Valid {
            transmitter: t,
            jti: jti.to_owned(),
            iat,
            event,
            revocations,
        })
    }

    fn revocations(
        &self,
        tx: &TransmitterConfig,
        effect: Effect,
        subject: Subject,
        at: u64,
        now: u64,
        uri: &str,
    ) -> Vec<NewRevocation> {
        let reason = Some(format!("ssf {}: {}", tx.name, event_type(uri).0));
        match (effect, subject) {
            (
                Effect::Session,
                Subject {
                    session: Some(sid), ..
                },
            ) => vec![NewRevocation {
                kind: Kind::Sid,
                iss: tx.subjects_iss.clone(),
                value: sid,
                expires_at: now.saturating_add(self.retention.as_secs()),
                issued_before: None,
                reason,
            }],
            (_, Subject { users, .. }) => users
                .into_iter()
                .map(|(kind, value)| NewRevocation {
                    kind,
                    iss: tx.subjects_iss.clone(),
                    value,
                    expires_at: at
                        .saturating_add(1)
                        .saturating_add(self.max_token_lifetime.as_secs())
                        .saturating_add(MAX_LEEWAY_SECS),
                    // Tokens issued in the event's own second are cut off too (the cutoff
                    // is exclusive).
                    issued_before: Some(at.saturating_add(1)),
                    reason: reason.clone(),
                })
                .collect(),
        }
    }
}

/// RFC 8417 §2.3 / SSF: the JOSE `typ` is `secevent+jwt`.
fn check_typ(set: &str) -> Result<(), SetError> {
    let header = verify::unverified_part(set, 0)
        .ok_or_else(|| invalid("the JOSE header is not a JSON object"))?;
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let typ = typ.to_ascii_lowercase();
    if typ != "secevent+jwt" && typ != "application/secevent+jwt" {
        return Err(invalid("typ must be secevent+jwt"));
    }
    Ok(())
}

/// Record what a valid SET calls for, once: its `jti` and its revocation commit together.
pub async fn commit(
    cp: &ControlPlane,
    rx: &Receiver,
    valid: Valid,
    now: u64,
) -> Result<Outcome, SetError> {
    let tx = &rx.cfg.transmitters[valid.transmitter];
    if valid.revocations.is_empty() {
        // Nothing to write, nothing a replay could repeat: no durable write either.
        cp.metrics
            .ssf_event(&tx.name, valid.event, Outcome::Ignored.as_str());
        tracing::info!(transmitter = %tx.name, event = valid.event, result = "ignored", "security event");
        return Ok(Outcome::Ignored);
    }
    // Remembered as long as the SET could pass the `iat` check: from its `iat` (which may
    // be up to the leeway ahead of now), plus `max_age` and the leeway, plus a margin.
    let once = Once {
        iss: tx.issuer.issuer.clone(),
        jti: valid.jti,
        expires_at: valid
            .iat
            .max(now)
            .saturating_add(rx.cfg.max_age.as_secs())
            .saturating_add(tx.issuer.leeway.as_secs())
            .saturating_add(60),
    };
    let revocations = valid.revocations;
    for r in &revocations {
        check_fields(r).map_err(|_| {
            invalid(
                "the subject or session identifier is over 1024 bytes or holds control characters",
            )
        })?;
    }
    let outcome = match record_once(cp, &once, &revocations, now).await {
        Ok(Some(_)) => Outcome::Revoked,
        Ok(None) => Outcome::Replayed,
        Err(e) => {
            tracing::error!(error = %e, transmitter = %tx.name, "security event not stored");
            return Err(SetError::Unavailable(
                "the event could not be stored; deliver it again",
            ));
        }
    };
    cp.metrics
        .ssf_event(&tx.name, valid.event, outcome.as_str());
    tracing::info!(transmitter = %tx.name, event = valid.event, result = outcome.as_str(), "security event");
    Ok(outcome)
}

/// Validate and commit one SET from transmitter `t` (the poll client's path as well).
pub async fn receive(
    cp: &ControlPlane,
    rx: &Receiver,
    t: usize,
    set: &str,
) -> Result<Outcome, SetError> {
    let now = cp.clock.unix();
    let result = match rx.validate(t, set, now).await {
        Ok(valid) => commit(cp, rx, valid, now).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        refused(cp, &rx.cfg.transmitters[t].name, e);
    }
    result
}

fn refused(cp: &ControlPlane, transmitter: &str, e: &SetError) {
    if e.code().is_some() {
        cp.metrics.ssf_event(transmitter, "unknown", "refused");
        tracing::info!(transmitter, err = e.code(), reason = %e.description(), "security event refused");
    }
}

/// `POST /v1/ssf/events` (RFC 8935): 202 once the event's effect is durably committed.
pub async fn push(
    cp: &ControlPlane,
    req: Request<Incoming>,
) -> Result<Response<ControlBody>, ApiError> {
    let rx = cp.ssf.as_ref().ok_or(ApiError::NotFound)?;
    match pushed(cp, rx, req).await {
        Ok(_) => {
            let mut r = empty_ok();
            *r.status_mut() = StatusCode::ACCEPTED;
            Ok(r)
        }
        Err(e) => Ok(e.respond()),
    }
}

async fn pushed(
    cp: &ControlPlane,
    rx: &Receiver,
    req: Request<Incoming>,
) -> Result<Outcome, SetError> {
    // Refusals before the SET's own checks are counted here; `receive` counts the rest.
    let early = |t: Option<usize>, e: SetError| {
        let name = t.map_or("unknown", |t| rx.cfg.transmitters[t].name.as_str());
        refused(cp, name, &e);
        e
    };
    let typed = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/secevent+jwt"));
    if !typed {
        return Err(early(
            None,
            invalid("the body must be application/secevent+jwt"),
        ));
    }
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.trim().as_bytes())
        });
    let body = read_body(req, MAX_SET_BYTES).await.map_err(|_| {
        early(
            None,
            invalid("the body is not a readable SET of at most 64 KiB"),
        )
    })?;
    let set = std::str::from_utf8(&body)
        .map_err(|_| early(None, invalid("the SET is not text")))?
        .trim();
    let t = rx.claimed_transmitter(set).map_err(|e| early(None, e))?;
    match &rx.cfg.transmitters[t].push {
        None => return Err(early(Some(t), SetError::AccessDenied)),
        Some(PushAuth::Bearer(key)) => {
            let ok = bearer.is_some_and(|d| {
                aws_lc_rs::constant_time::verify_slices_are_equal(d.as_ref(), &key.sha256).is_ok()
            });
            if !ok {
                return Err(early(Some(t), SetError::AuthenticationFailed));
            }
        }
        Some(PushAuth::Nobody) => return Err(early(Some(t), SetError::AuthenticationFailed)),
        Some(PushAuth::SignatureOnly) => {}
    }
    receive(cp, rx, t, set).await
}
