//! Every way the control API refuses a request, and the ONE place that turns each into a
//! status, a JSON body (`error`, `error_description`) and a challenge. The `match` is
//! exhaustive on purpose, like the gateway's [`crate::error::Reject`].

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::json;

use super::api::ControlBody;
use crate::revocation::Kind;

/// Why a control API request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No bearer, or one that is neither a known API key nor a writer's JWT.
    Unauthorized,
    /// A reader key tried to write.
    ReadOnlyKey,
    /// A writer JWT tried to delete a revocation (only writer API keys may).
    DeleteNeedsKey,
    /// `/v1/revoke` without valid client credentials (RFC 7009 §2.1).
    InvalidClient,
    /// `/v1/revoke` of a token issued to another client (RFC 7009 §2.1).
    TokenOfAnotherClient,
    NotFound,
    MethodNotAllowed,
    /// `/v1/backchannel-logout` on a control plane without `backchannel_logout`.
    BackchannelNotConfigured,
    /// A body over [`super::api::MAX_BODY_BYTES`].
    BodyTooLarge,
    /// The body could not be read.
    UnreadableBody,
    /// The body did not arrive within the deadline.
    BodyTimeout,
    /// An endpoint that takes a form got another content type.
    NotAForm,
    /// The form is not UTF-8, or repeats a field.
    MalformedForm(String),
    /// A required form field is absent or empty.
    MissingParameter(&'static str),
    /// The revocation body is not the JSON the API takes (serde's reason).
    MalformedRevocation(String),
    /// The revocation is well-formed JSON but not a valid revocation.
    InvalidRevocation(&'static str),
    /// Entry `.0` of a batch was refused for `.1` (the whole batch was).
    InBatch(usize, Box<ApiError>),
    /// `DELETE /v1/revocations/{id}` of an id that is no live entry.
    NoSuchRevocation,
    /// An empty `jti`, `sid` or `sub`.
    EmptyValue(Kind),
    /// `since` (or `Last-Event-ID`) is not a cursor of this API.
    BadCursor,
    /// The stream was asked for from another store epoch, or past this store's head.
    EpochChanged,
    /// A logout token that fails OIDC Back-Channel Logout §2.6 (the reason).
    LogoutTokenRefused(Cow<'static, str>),
    /// The store does not answer a read.
    StoreUnavailable,
    /// The store did not accept a write.
    WriteFailed,
    /// `/readyz`: the store does not answer.
    NotReady,
}

impl ApiError {
    /// Status, `error`, `error_description`, and the `WWW-Authenticate` challenge if any.
    fn answer(&self) -> (StatusCode, &'static str, Cow<'_, str>, Option<&'static str>) {
        use ApiError::*;
        let fixed = |s: &'static str| Cow::Borrowed(s);
        match self {
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                fixed("missing or unknown credentials"),
                Some("Bearer realm=\"jwtgate-control\""),
            ),
            ReadOnlyKey => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                fixed("this key may only read"),
                None,
            ),
            DeleteNeedsKey => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                fixed("deleting a revocation needs a writer API key"),
                None,
            ),
            InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                fixed("client authentication failed"),
                Some("Basic realm=\"jwtgate-control\""),
            ),
            TokenOfAnotherClient => (
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                fixed("the token was not issued to this client"),
                None,
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                fixed("no such endpoint"),
                None,
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                fixed("method not allowed"),
                None,
            ),
            BackchannelNotConfigured => (
                StatusCode::NOT_FOUND,
                "not_found",
                fixed("back-channel logout is not configured"),
                None,
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                fixed("body too large"),
                None,
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                fixed("the body did not arrive in time"),
                None,
            ),
            UnreadableBody => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                fixed("could not read the body"),
                None,
            ),
            NotAForm => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                fixed("the body must be application/x-www-form-urlencoded"),
                None,
            ),
            MalformedForm(why) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Cow::Borrowed(why.as_str()),
                None,
            ),
            MissingParameter(name) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Cow::Owned(format!("{name} is missing")),
                None,
            ),
            MalformedRevocation(why) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Cow::Owned(format!("malformed revocation: {why}")),
                None,
            ),
            InvalidRevocation(why) => {
                (StatusCode::BAD_REQUEST, "invalid_request", fixed(why), None)
            }
            InBatch(index, inner) => {
                let (status, error, why, _) = inner.answer();
                (
                    status,
                    error,
                    Cow::Owned(format!("entry {index} of the batch: {why}; nothing was written")),
                    None,
                )
            }
            NoSuchRevocation => (
                StatusCode::NOT_FOUND,
                "not_found",
                fixed("no live revocation has this id (never written, expired, deleted, or replaced by a stronger write: list to find its id)"),
                None,
            ),
            EmptyValue(kind) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Cow::Owned(format!(
                    "`{}` must not be empty",
                    match kind {
                        Kind::Claim => "value",
                        k => k.as_str(),
                    }
                )),
                None,
            ),
            EpochChanged => (
                StatusCode::CONFLICT,
                "epoch_changed",
                fixed("the store was recreated or restored; resync from the beginning"),
                None,
            ),
            BadCursor => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                fixed("`since` is not a cursor from this API"),
                None,
            ),
            LogoutTokenRefused(why) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Cow::Owned(format!("logout token refused: {why}")),
                None,
            ),
            StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                fixed("the store does not answer"),
                None,
            ),
            WriteFailed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                fixed("the store did not accept the write; retry"),
                None,
            ),
            NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                fixed("the store does not answer"),
                None,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.answer().0
    }

    /// The response sent. Nothing secret is echoed: descriptions are fixed, or name a
    /// field or a parser's reason.
    pub fn respond(&self) -> Response<ControlBody> {
        let (status, error, description, challenge) = self.answer();
        let mut r = json_response(
            status,
            &json!({ "error": error, "error_description": description }),
        );
        if let Some(c) = challenge {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

/// A JSON answer that is never cached.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ControlBody> {
    json_body_response(status, body.to_string().into_bytes())
}

/// A JSON answer already serialized, never cached.
pub fn json_body_response(status: StatusCode, body: Vec<u8>) -> Response<ControlBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The empty `200` of RFC 7009 and back-channel logout.
pub fn empty_ok() -> Response<ControlBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
