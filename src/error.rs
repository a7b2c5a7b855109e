//! Every way a request can be refused, and the ONE place that turns each into a status,
//! an RFC 6750 challenge, a JSON body and a [`Reason`] (which holds the metric outcome).
//! The `match` is exhaustive on purpose: a new refusal cannot be added without deciding how
//! it answers.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::path::PathError;
use crate::reason::Reason;

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
    /// A forward-auth decision asked by a peer outside `trusted_proxies`.
    UntrustedCaller,
    /// A forward-auth request that does not describe its original request exactly once
    /// (method, URI, host, scheme), or describes it in a form that is not accepted.
    BadOriginal,
    /// A forward-auth request carrying a client copy of an identity header, which the
    /// gateway cannot strip there.
    IdentityHeader,
    /// A forward-auth request let through without a token (`optional`, a preflight) that
    /// carries a credential anyway, which the gateway cannot strip there.
    AnonymousCredential,
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

/// How a rejection answers.
struct Answer {
    status: StatusCode,
    /// RFC 6750 `error` attribute; `Some("")` means a challenge without `error`.
    challenge: Option<&'static str>,
    error: &'static str,
    description: &'static str,
    reason: Reason,
}

impl Reject {
    fn answer(self) -> Answer {
        use Reject::*;
        let (status, challenge, error, description, reason) = match self {
            BadPath(e) => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                path_description(e),
                Reason::BadPath,
            ),
            BadHost => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "invalid host",
                Reason::BadHost,
            ),
            MultipleTokens => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                "invalid_request",
                "more than one token presented",
                Reason::MultipleTokens,
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                None,
                "invalid_request",
                "request body timed out",
                Reason::BodyTimeout,
            ),
            BadBody => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "malformed request body",
                Reason::BadBody,
            ),
            BadMethod => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "method not accepted",
                Reason::BadMethod,
            ),
            BadForwardedFor => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "X-Forwarded-For names no client address",
                Reason::BadForwardedFor,
            ),
            UnderscoreHeader => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "header names with underscores are not accepted",
                Reason::UnderscoreHeader,
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                "invalid_request",
                "request body too large",
                Reason::BodyTooLarge,
            ),
            NoRoute => (
                StatusCode::NOT_FOUND,
                None,
                "not_found",
                "no route",
                Reason::NoRoute,
            ),
            MissingToken => (
                StatusCode::UNAUTHORIZED,
                Some(""),
                "invalid_token",
                "token missing",
                Reason::NoToken,
            ),
            Malformed => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token malformed",
                Reason::Malformed,
            ),
            AlgorithmNotAllowed => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "algorithm not allowed",
                Reason::Algorithm,
            ),
            UnsupportedCrit => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "unsupported critical header",
                Reason::UnsupportedCrit,
            ),
            UnknownIssuer => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "issuer not allowed",
                Reason::UnknownIssuer,
            ),
            UnknownKey => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "unknown key",
                Reason::UnknownKid,
            ),
            BadSignature => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "signature invalid",
                Reason::BadSignature,
            ),
            Expired => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token expired",
                Reason::Expired,
            ),
            NotYetValid => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token not yet valid",
                Reason::NotYetValid,
            ),
            IssuedInFuture => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token issued in the future",
                Reason::IssuedInFuture,
            ),
            WrongIssuer => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "issuer not allowed",
                Reason::Issuer,
            ),
            WrongAudience => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "audience not allowed",
                Reason::Audience,
            ),
            LifetimeTooLong => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token lifetime too long",
                Reason::Lifetime,
            ),
            ClientCertRequired => (
                StatusCode::FORBIDDEN,
                None,
                "invalid_request",
                "client certificate required",
                Reason::ClientCert,
            ),
            CrossOrigin => (
                StatusCode::FORBIDDEN,
                None,
                "invalid_request",
                "cross-origin request refused",
                Reason::CrossOrigin,
            ),
            UntrustedCaller => (
                StatusCode::FORBIDDEN,
                None,
                "invalid_request",
                "only trusted proxies may ask for decisions",
                Reason::UntrustedCaller,
            ),
            BadOriginal => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "give the original request exactly once: X-Forwarded-Method, X-Forwarded-Uri (origin-form, no fragment), X-Forwarded-Host, X-Forwarded-Proto (http or https)",
                Reason::BadOriginal,
            ),
            AnonymousCredential => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "a request let through without a token must carry no credential",
                Reason::AnonymousCredential,
            ),
            IdentityHeader => (
                StatusCode::BAD_REQUEST,
                None,
                "invalid_request",
                "the request carries an identity header only the gateway may set",
                Reason::IdentityHeader,
            ),
            UnusableClaim => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "identity claims not usable",
                Reason::UnusableClaim,
            ),
            InsufficientScope => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "insufficient_scope",
                "insufficient scope",
                Reason::Scope,
            ),
            ClaimMismatch => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "insufficient_scope",
                "claims do not satisfy the route policy",
                Reason::Claim,
            ),
            Revoked => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "invalid_token",
                "token revoked",
                Reason::Revoked,
            ),
            RevocationsNotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "revocation status not yet known",
                Reason::RevocationsNotReady,
            ),
            RevocationsStale => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "revocation status unavailable",
                Reason::RevocationsStale,
            ),
            KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "signing keys unavailable",
                Reason::KeysUnavailable,
            ),
            UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                None,
                "bad_gateway",
                "upstream unavailable",
                Reason::UpstreamUnavailable,
            ),
            UpstreamBadUpgrade => (
                StatusCode::BAD_GATEWAY,
                None,
                "bad_gateway",
                "upstream did not accept the upgrade",
                Reason::UpstreamBadUpgrade,
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "temporarily_unavailable",
                "gateway busy",
                Reason::Overloaded,
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                None,
                "gateway_timeout",
                "upstream timed out",
                Reason::UpstreamTimeout,
            ),
        };
        Answer {
            status,
            challenge,
            error,
            description,
            reason,
        }
    }

    /// The bounded reason logged and counted.
    pub fn reason(self) -> Reason {
        self.answer().reason
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
