//! Every way a request can be refused, and the ONE place that turns each into a status,
//! an RFC 6750 challenge, a JSON body and a metric outcome. The `match` is exhaustive on
//! purpose: a new reason cannot be added without deciding how it answers.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::path::PathError;

/// Why a request was not forwarded (or forwarding failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadPath(PathError),
    /// An absolute-form target naming another host than `Host`, or a missing/invalid host.
    BadHost,
    /// A body larger than the route's `max_body_bytes`.
    BodyTooLarge,
    /// The client went silent mid-body for longer than `limits.body_timeout`.
    BodyTimeout,
    /// The client's body framing is broken (bad chunk size, oversized chunk extension, …).
    BadBody,
    /// A standard method in another case, or a `_method` override in the query.
    BadMethod,
    /// A header name with `_` under `underscore_headers: reject`.
    UnderscoreHeader,
    /// A trusted proxy's `X-Forwarded-For` names no client address the gateway can tell.
    BadForwardedFor,
    /// Tokens presented through more than one source (RFC 6750 §2), or the same source twice.
    MultipleTokens,
    NoRoute,
    MissingToken,
    Malformed,
    /// `alg` is `none`, unknown, or not allowed for the issuer.
    AlgorithmNotAllowed,
    /// A `crit` header parameter we do not understand.
    UnsupportedCrit,
    UnknownIssuer,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    InsufficientScope,
    ClaimMismatch,
    /// `sub`, `sid` or `jti` not a string, `sub` missing, or an identity claim that cannot be
    /// forwarded faithfully.
    UnusableClaim,
    /// The route takes only mTLS clients and this one presented no certificate.
    ClientCertRequired,
    /// A cross-site WebSocket upgrade or state-changing request on ambient credentials.
    CrossOrigin,
    /// The token lives longer than `max_token_lifetime`: it could outlast a `sub` cutoff.
    LifetimeTooLong,
    /// `(iss, jti)`, `(iss, sid)` or a `(iss, sub)` cutoff revokes the token.
    Revoked,
    /// The revocation set is older than `max_staleness` and `on_stale: deny`: fail closed.
    RevocationsStale,
    /// No revocation set is known yet (no sync, no snapshot): fail closed.
    RevocationsNotReady,
    /// No signing keys confirmed within `jwks_max_stale`: fail closed.
    KeysUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// `limits.max_in_flight` requests are already upstream and none finished in time.
    Overloaded,
    /// The upstream answered 101 without really switching to WebSocket.
    UpstreamBadUpgrade,
}

/// The `outcome` label of `jwtgate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    BadRequest,
    NotFound,
    NoToken,
    InvalidToken,
    Expired,
    Revoked,
    Forbidden,
    Unavailable,
    UpstreamError,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Allowed,
        Outcome::BadRequest,
        Outcome::NotFound,
        Outcome::NoToken,
        Outcome::InvalidToken,
        Outcome::Expired,
        Outcome::Revoked,
        Outcome::Forbidden,
        Outcome::Unavailable,
        Outcome::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::BadRequest => "bad_request",
            Outcome::NotFound => "not_found",
            Outcome::NoToken => "no_token",
            Outcome::InvalidToken => "invalid_token",
            Outcome::Expired => "expired",
            Outcome::Revoked => "revoked",
            Outcome::Forbidden => "forbidden",
            Outcome::Unavailable => "unavailable",
            Outcome::UpstreamError => "upstream_error",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a rejection answers.
struct Answer {
    status: StatusCode,
    /// RFC 6750 `error` attribute; `Some("")` means a challenge without `error`.
    challenge: Option<&'static str>,
    error: &'static str,
    description: &'static str,
    outcome: Outcome,
}

impl Reject {
    fn answer(self) -> Answer {
        use Reject::*;
        let (status, challenge, error, description, outcome) = match self {
            BadPath(e) => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                path_description(e),
                Outcome::BadRequest,
            ),
            BadHost => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "invalid host",
                Outcome::BadRequest,
            ),
            MultipleTokens => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                "invalid_request",
                "more than one token presented",
                Outcome::BadRequest,
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                None,
                "invalid_request",
                "request body timed out",
                Outcome::BadRequest,
            ),
            BadBody => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "malformed request body",
                Outcome::BadRequest,
            ),
            BadMethod => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "method not accepted",
                Outcome::BadRequest,
            ),
            BadForwardedFor => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "X-Forwarded-For names no client address",
                Outcome::BadRequest,
            ),
            UnderscoreHeader => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "header names with underscores are not accepted",
                Outcome::BadRequest,
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                "invalid_request",
                "request body too large",
                Outcome::BadRequest,
            ),
            NoRoute => (
                StatusCode::NOT_FOUND,
                None,
                "not_found",
                "no route",
                Outcome::NotFound,
            ),
            MissingToken => (
                StatusCode::UNAUTHORIZED,
                Some(""),
                "invalid_token",
                "token missing",
                Outcome::NoToken,
            ),
            Malformed => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token malformed",
                Outcome::InvalidToken,
            ),
            AlgorithmNotAllowed => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "algorithm not allowed",
                Outcome::InvalidToken,
            ),
            UnsupportedCrit => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "unsupported critical header",
                Outcome::InvalidToken,
            ),
            UnknownIssuer => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "issuer not allowed",
                Outcome::InvalidToken,
            ),
            UnknownKey => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "unknown key",
                Outcome::InvalidToken,
            ),
            BadSignature => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "signature invalid",
                Outcome::InvalidToken,
            ),
            Expired => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token expired",
                Outcome::Expired,
            ),
            NotYetValid => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token not yet valid",
                Outcome::InvalidToken,
            ),
            IssuedInFuture => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token issued in the future",
                Outcome::InvalidToken,
            ),
            WrongIssuer => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "issuer not allowed",
                Outcome::InvalidToken,
            ),
            WrongAudience => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "audience not allowed",
                Outcome::InvalidToken,
            ),
            LifetimeTooLong => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token lifetime too long",
                Outcome::InvalidToken,
            ),
            ClientCertRequired => (
                StatusCode::FORBIDDEN,
                None,
                "invalid_request",
                "client certificate required",
                Outcome::Forbidden,
            ),
            CrossOrigin => (
                StatusCode::FORBIDDEN,
                None,
                "invalid_request",
                "cross-origin request refused",
                Outcome::Forbidden,
            ),
            UnusableClaim => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "identity claims not usable",
                Outcome::InvalidToken,
            ),
            InsufficientScope => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "insufficient_scope",
                "insufficient scope",
                Outcome::Forbidden,
            ),
            ClaimMismatch => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "insufficient_scope",
                "claims do not satisfy the route policy",
                Outcome::Forbidden,
            ),
            Revoked => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token revoked",
                Outcome::Revoked,
            ),
            RevocationsNotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "revocation status not yet known",
                Outcome::Unavailable,
            ),
            RevocationsStale => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "revocation status unavailable",
                Outcome::Unavailable,
            ),
            KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "signing keys unavailable",
                Outcome::Unavailable,
            ),
            UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                None,
                "bad_gateway",
                "upstream unavailable",
                Outcome::UpstreamError,
            ),
            UpstreamBadUpgrade => (
                StatusCode::BAD_GATEWAY,
                None,
                "bad_gateway",
                "upstream did not accept the upgrade",
                Outcome::UpstreamError,
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "gateway busy",
                Outcome::Unavailable,
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                None,
                "gateway_timeout",
                "upstream timed out",
                Outcome::UpstreamError,
            ),
        };
        Answer {
            status,
            challenge,
            error,
            description,
            outcome,
        }
    }

    pub fn outcome(self) -> Outcome {
        self.answer().outcome
    }

    pub fn status(self) -> StatusCode {
        self.answer().status
    }

    pub fn description(self) -> &'static str {
        self.answer().description
    }

    /// The response sent to the client. Descriptions are fixed strings: nothing from the
    /// request (and never the token) is echoed.
    pub fn respond(self, realm: &str) -> Response<Full<Bytes>> {
        let a = self.answer();
        let body = format!(
            "{{\"error\":\"{}\",\"error_description\":\"{}\"}}",
            a.error, a.description
        );
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = a.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is a state the gateway expects to leave soon.
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(error) = a.challenge {
            let value = if error.is_empty() {
                format!("Bearer realm=\"{realm}\"")
            } else {
                format!(
                    "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{}\"",
                    a.description
                )
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

fn path_description(e: PathError) -> &'static str {
    match e {
        PathError::NotAbsolute => "request target must be an absolute path",
        PathError::BadEncoding => "invalid percent-encoding in path",
        PathError::EncodedSeparator => "encoded slash or backslash in path",
        PathError::EncodedDotSegment => "encoded dot segment in path",
        PathError::ControlByte => "control byte in path",
        PathError::Backslash => "backslash in path",
        PathError::Semicolon => "path parameters are not accepted",
        PathError::AboveRoot => "path climbs above the root",
        PathError::NotUtf8 => "percent-encoded bytes in path are not UTF-8",
        PathError::DoubleEncoded => "double-encoded escape in path",
    }
}
