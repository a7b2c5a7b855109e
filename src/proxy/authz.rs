//! Forward-auth decisions (`listeners[].forward_auth`): another proxy (nginx
//! `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz`, Caddy `forward_auth`) asks
//! whether a request may pass. The request is admitted exactly as the gateway would admit
//! it — normalization, routing, token, signature, revocation, policy — and answered 200 with
//! the identity headers, or with the refusal the gateway itself would send. Nothing is
//! forwarded. The original method, URI, host and scheme come from `X-Forwarded-*` or
//! `X-Original-*` headers, believed only from `trusted_proxies`; a caller that sends none
//! is asking about its own request line (Envoy `ext_authz` with an empty `path_prefix`).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{admit, Body, Gateway, Peer, Trace};
use crate::error::Reject;
use crate::path::PathError;

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
    trace: &mut Trace,
) -> Result<Response<Body>, Reject> {
    let caller = peer.addr.ip();
    if !gw.config.trusted_proxies.iter().any(|c| c.contains(caller)) {
        return Err(Reject::UntrustedCaller);
    }
    let (mut parts, _body) = req.into_parts();
    let mut peer = peer.clone();
    if let Some(m) = one_of(&parts.headers, &[X_FORWARDED_METHOD, X_ORIGINAL_METHOD])? {
        parts.method = Method::from_bytes(m.as_bytes()).map_err(|_| Reject::BadMethod)?;
    }
    if let Some(u) = one_of(&parts.headers, &[X_FORWARDED_URI, X_ORIGINAL_URI])? {
        let target = PathAndQuery::try_from(u.as_bytes())
            .ok()
            .filter(|t| t.as_str().starts_with('/'))
            .ok_or(Reject::BadPath(PathError::NotAbsolute))?;
        parts.uri = Uri::from(target);
    }
    if let Some(host) = one_of(&parts.headers, &[X_FORWARDED_HOST])? {
        parts.headers.insert(HOST, host);
    }
    match one_of(&parts.headers, &[X_FORWARDED_PROTO])?
        .as_ref()
        .map(HeaderValue::as_bytes)
    {
        Some(b"https") => peer.proto = "https",
        Some(b"http") => peer.proto = "http",
        _ => {}
    }
    let admitted = admit::admit(gw, &parts, &peer, trace).await?;
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    if let Some(verified) = admitted.verified() {
        for (name, value) in &verified.identity {
            resp.headers_mut().insert(name.clone(), value.clone());
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
            Some(f) if f != value => return Err(Reject::AmbiguousOriginal),
            _ => found = Some(value),
        }
    }
    Ok(found.cloned())
}
