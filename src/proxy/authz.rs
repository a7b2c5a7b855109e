//! Forward-auth decisions (`listeners[].forward_auth`): another proxy (nginx
//! `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz`, Caddy `forward_auth`) asks
//! whether a request may pass. The request is admitted exactly as the gateway would admit
//! it — normalization, routing, token, signature, revocation, policy — and answered 200 with
//! the identity headers, or with the refusal the gateway itself would send. Nothing is
//! forwarded. Only `trusted_proxies` may ask. The original method, URI and host come either
//! all from `X-Forwarded-*` (or `X-Original-Method`/`-URI`) headers, with nothing falling
//! back to the decision request itself, which the client may shape behind nginx; or, for
//! callers that ask that way (Envoy `ext_authz`), all from the decision request's own line
//! and Host, below a configured path prefix. The scheme is always `X-Forwarded-Proto`.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{admit, Body, Gateway, Peer, Trace};
use crate::config::ForwardAuth;
use crate::error::Reject;
use crate::headers;
use crate::token;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The decision for the request `req` describes.
pub async fn decide(
    gw: &Gateway,
    req: Request<Incoming>,
    peer: &Peer,
    asked: &ForwardAuth,
    trace: &mut Trace,
) -> Result<Response<Body>, Reject> {
    let caller = peer.addr.ip();
    if !gw.config.trusted_proxies.iter().any(|c| c.contains(caller)) {
        return Err(Reject::UntrustedCaller);
    }
    let (mut parts, _body) = req.into_parts();
    // The caller forwards the client's headers; a client copy of an identity header would
    // reach the upstream beside (or, on an anonymous decision, instead of) ours.
    if headers::carries_identity(&parts.headers, &gw.identity_names) {
        return Err(Reject::IdentityHeader);
    }
    // Every part of the original request is described, exactly once.
    let required = |names: &[HeaderName]| one_of(&parts.headers, names)?.ok_or(Reject::BadOriginal);
    let proto = match required(&[X_FORWARDED_PROTO])?.as_bytes() {
        b"https" => "https",
        b"http" => "http",
        _ => return Err(Reject::BadOriginal),
    };
    match asked {
        ForwardAuth::Headers => {
            let method = required(&[X_FORWARDED_METHOD, X_ORIGINAL_METHOD])?;
            let target = required(&[X_FORWARDED_URI, X_ORIGINAL_URI])?;
            let host = required(&[X_FORWARDED_HOST])?;
            parts.method = Method::from_bytes(method.as_bytes()).map_err(|_| Reject::BadMethod)?;
            let target = PathAndQuery::try_from(target.as_bytes())
                .ok()
                // A fragment would be dropped here and sent on by the caller.
                .filter(|t| t.as_str().starts_with('/') && !target.as_bytes().contains(&b'#'))
                .ok_or(Reject::BadOriginal)?;
            parts.uri = Uri::from(target);
            parts.headers.insert(HOST, host);
        }
        ForwardAuth::RequestLine { path_prefix } => {
            // The line is the original one with the prefix put before its path; the Host
            // header is the original authority.
            let target = parts
                .uri
                .path_and_query()
                .map(PathAndQuery::as_str)
                .and_then(|t| t.strip_prefix(path_prefix.as_str()))
                .filter(|t| t.starts_with('/'))
                .ok_or(Reject::BadOriginal)?;
            let target = PathAndQuery::try_from(target).map_err(|_| Reject::BadOriginal)?;
            // Over HTTP/2 the authority is in the line, not in a Host header.
            let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
            if one_of(&parts.headers, &[HOST])?.is_none() {
                let host = authority.and_then(|a| HeaderValue::try_from(a).ok());
                parts.headers.insert(HOST, host.ok_or(Reject::BadOriginal)?);
            }
            parts.uri = Uri::from(target);
        }
    }
    trace.described = Some((parts.method.clone(), parts.uri.path().to_owned()));
    let peer = Peer {
        proto,
        ..peer.clone()
    };
    let admitted = admit::admit(gw, &parts, &peer, trace).await?;
    // Let through without a token (`optional`, a preflight), the request must carry no
    // credential either: the caller forwards it as is, and nothing here verified it.
    if let (Some(policy), None) = (&admitted.route.auth, &admitted.token) {
        let query = parts.uri.query();
        if parts.headers.contains_key(http::header::AUTHORIZATION)
            || !matches!(
                token::extract(&policy.sources, &parts.headers, query),
                Ok(None)
            )
            || token::stray_credentials(&policy.sources, &parts.headers, query)
        {
            return Err(Reject::AnonymousCredential);
        }
    }
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    if let Some(verified) = admitted.verified() {
        for (name, value) in verified.identity.iter().chain(&admitted.route_identity) {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
        let payload = admitted
            .route
            .auth
            .as_ref()
            .and_then(|a| a.forward_payload.as_ref());
        if let (Some(name), Some(value)) = (payload, verified.payload_header()) {
            resp.headers_mut().insert(name.clone(), value);
        }
    }
    Ok(resp)
}

/// The single value of whichever of `names` is present. Two values, or two names that
/// disagree, leave it unclear which request is meant: refused.
fn one_of(headers: &HeaderMap, names: &[HeaderName]) -> Result<Option<HeaderValue>, Reject> {
    let mut found: Option<&HeaderValue> = None;
    for value in names.iter().flat_map(|n| headers.get_all(n)) {
        match found {
            Some(f) if f != value => return Err(Reject::BadOriginal),
            _ => found = Some(value),
        }
    }
    Ok(found.cloned())
}
