//! Steps 2–7 of the request path: decide whether a request may pass, before anything is
//! sent upstream. Normalize the target, route, find the token, verify it, check
//! revocation, authorize.

use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, HOST, SEC_WEBSOCKET_KEY, UPGRADE};
use http::request::Parts;
use http::Method;

use super::{Gateway, Peer, Trace};
use crate::config::{RouteConfig, UnderscoreHeaders};
use crate::error::Reject;
use crate::path::{normalize_path, parse_authority, percent_decode, Authority};
use crate::token;
use crate::verify::{policy, Verified};

/// A request the gateway lets through, and what forwarding needs to know about it.
pub struct Admitted<'g> {
    /// The route it matched.
    pub route: &'g RouteConfig,
    /// The normalized path when it differs from the one sent (see [`Admitted::path`]).
    normalized: Option<String>,
    /// The host the client addressed, canonical (`host[:port]`).
    pub host: Option<HeaderValue>,
    /// An HTTP/1.1 WebSocket handshake: its `Sec-WebSocket-Key` (read before hop-by-hop
    /// headers go), against which the upstream's acceptance is checked.
    pub websocket: Option<HeaderValue>,
    /// The verified token and the index of the source it came from (`None` on `auth: none`).
    pub token: Option<(Arc<Verified>, usize)>,
    /// The route's own identity headers (`auth.identity_headers`), from the token.
    pub route_identity: Vec<(http::header::HeaderName, HeaderValue)>,
}

impl Admitted<'_> {
    /// The path routed on, which is also the path forwarded.
    pub fn path<'a>(&'a self, parts: &'a Parts) -> &'a str {
        self.normalized
            .as_deref()
            .unwrap_or_else(|| parts.uri.path())
    }

    pub fn verified(&self) -> Option<&Arc<Verified>> {
        self.token.as_ref().map(|(v, _)| v)
    }
}

pub async fn admit<'g>(
    gw: &'g Gateway,
    parts: &Parts,
    peer: &Peer,
    trace: &mut Trace,
) -> Result<Admitted<'g>, Reject> {
    // 2. Normalize the target once: what is matched is what is forwarded.
    let host = request_host(parts)?;
    let path = normalize_path(parts.uri.path().as_bytes()).map_err(Reject::BadPath)?;
    check_method(parts)?;
    if gw.config.underscore_headers == UnderscoreHeaders::Reject
        && crate::headers::has_underscore_header(&parts.headers)
    {
        return Err(Reject::UnderscoreHeader);
    }

    // 3. Route.
    let idx = gw
        .router
        .find(host.as_ref().map(|a| a.host.as_str()), &path, &parts.method)
        .ok_or(Reject::NoRoute)?;
    trace.route = Some(idx);
    let route = &gw.config.routes[idx];
    if route.require_client_cert && !peer.client_cert {
        return Err(Reject::ClientCertRequired);
    }

    let Some(policy) = &route.auth else {
        return admitted(route, path, host, parts, None);
    };
    // A CORS preflight carries no credentials (browsers never send them on one).
    if policy.allow_preflight && is_preflight(parts) {
        return admitted(route, path, host, parts, None);
    }
    // 4. Token: exactly one, from the route's sources; none passes anonymously
    // on an optional route.
    let token = match token::extract(&policy.sources, &parts.headers, parts.uri.query())? {
        Some(token) => token,
        None if policy.optional => {
            // A credential in a carrier this route does not read is no anonymous
            // request: it is refused as it would be beside a token.
            if token::stray_credentials(&policy.sources, &parts.headers, parts.uri.query()) {
                return Err(Reject::MultipleTokens);
            }
            return admitted(route, path, host, parts, None);
        }
        None => return Err(Reject::MissingToken),
    };
    if token::stray_credentials(&policy.sources, &parts.headers, parts.uri.query()) {
        return Err(Reject::MultipleTokens);
    }
    check_origin(
        policy,
        &policy.sources[token.source],
        parts,
        host.as_ref(),
        peer.proto,
    )?;
    // 5. Verify.
    let verified = gw
        .verifier
        .verify(&token.value, &policy.issuers, gw.clock.unix())
        .await?;
    // 6. Revocation: checked on every request, cached verification or not.
    gw.check_revocation(&verified)?;
    // 7. Authorize.
    policy::authorize(policy, &verified)?;
    let route_identity = verified.identity_for(&policy.identity_headers)?;
    let mut a = admitted(route, path, host, parts, Some((verified, token.source)))?;
    a.route_identity = route_identity;
    Ok(a)
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(parts: &Parts) -> bool {
    parts.method == http::Method::OPTIONS
        && parts.headers.contains_key(http::header::ORIGIN)
        && parts
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn admitted<'g>(
    route: &'g RouteConfig,
    path: std::borrow::Cow<'_, str>,
    host: Option<Authority>,
    parts: &Parts,
    token: Option<(Arc<Verified>, usize)>,
) -> Result<Admitted<'g>, Reject> {
    Ok(Admitted {
        route,
        normalized: match path {
            std::borrow::Cow::Owned(p) => Some(p),
            std::borrow::Cow::Borrowed(_) => None,
        },
        // Usually the client's `Host` is canonical already and is passed on as it came.
        host: host.and_then(|a| match parts.headers.get(HOST) {
            Some(given) if a.renders_as(given.as_bytes()) => Some(given.clone()),
            _ => HeaderValue::from_str(&a.render()).ok(),
        }),
        websocket: websocket_key(parts),
        token,
        route_identity: Vec::new(),
    })
}

/// Cross-site use of ambient credentials. A WebSocket upgrade authenticated by a cookie or
/// query token, and a state-changing request authenticated by a cookie, must come from an
/// origin in the route's `allowed_origins` — or, when the route lists none, from the same
/// origin as the request (`Origin` host equal to `Host`, `Sec-Fetch-Site` not
/// `cross-site`). A request without `Origin` is not from a browser page and passes. With
/// `allowed_origins`, every WebSocket upgrade is checked, whatever its token source.
fn check_origin(
    policy: &crate::config::AuthPolicy,
    source: &crate::config::TokenSource,
    parts: &Parts,
    host: Option<&Authority>,
    proto: &str,
) -> Result<(), Reject> {
    use crate::config::TokenSource;
    let websocket = parts.headers.contains_key(http::header::SEC_WEBSOCKET_KEY);
    let ambient = matches!(source, TokenSource::Cookie(_));
    let unsafe_method = !matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let checked = (websocket && (ambient || matches!(source, TokenSource::Query(_))))
        || (ambient && unsafe_method)
        || (websocket && policy.allowed_origins.is_some());
    if !checked {
        return Ok(());
    }
    let mut origins = parts.headers.get_all(http::header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(o), None) => Some(o.to_str().map_err(|_| Reject::CrossOrigin)?),
        (Some(_), Some(_)) => return Err(Reject::CrossOrigin),
    };
    let cross_site_fetch = parts
        .headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let allowed = match (&policy.allowed_origins, origin) {
        (Some(list), Some(o)) => list.iter().any(|a| a.eq_ignore_ascii_case(o)),
        (None, Some(o)) => same_origin(o, host, proto) && !cross_site_fetch,
        (_, None) => !cross_site_fetch,
    };
    if allowed {
        Ok(())
    } else {
        Err(Reject::CrossOrigin)
    }
}

/// `Origin: scheme://host[:port]` names the scheme (`proto` of the listener), host and port
/// the request was sent to.
fn same_origin(origin: &str, host: Option<&Authority>, proto: &str) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(proto) {
        return false;
    }
    let Some(o) = parse_authority(rest.as_bytes()) else {
        return false;
    };
    let default_port = if proto == "https" { 443 } else { 80 };
    o.host == host.host && o.port.unwrap_or(default_port) == host.port.unwrap_or(default_port)
}

/// A method the route table can judge. A standard method in another case (`get`,
/// `Delete`) is refused rather than routed as an unknown method that some upstream treats
/// as the standard one; so is a `_method` query parameter, which Symfony, Laravel and
/// Express's method-override read as the method. (Override headers are dropped in
/// [`crate::headers`].)
fn check_method(parts: &Parts) -> Result<(), Reject> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let m = parts.method.as_str();
    if !STANDARD.contains(&m) && STANDARD.iter().any(|s| s.eq_ignore_ascii_case(m)) {
        return Err(Reject::BadMethod);
    }
    if let Some(q) = parts.uri.query() {
        let overrides = q.split('&').any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k);
            crate::token::same_param(&percent_decode(name), "_method")
        });
        if overrides {
            return Err(Reject::BadMethod);
        }
    }
    Ok(())
}

/// The `Sec-WebSocket-Key` of an HTTP/1.1 WebSocket handshake: `GET` with
/// `Connection: upgrade`, `Upgrade: websocket` and one key. (`Upgrade: h2c` and anything
/// else is dropped with the hop-by-hop headers.)
fn websocket_key(parts: &Parts) -> Option<HeaderValue> {
    let upgrade = parts.method == Method::GET
        && parts.version == http::Version::HTTP_11
        && crate::headers::list_has(&parts.headers, CONNECTION, "upgrade")
        && crate::headers::list_has(&parts.headers, UPGRADE, "websocket");
    let mut keys = parts.headers.get_all(SEC_WEBSOCKET_KEY).iter();
    match (upgrade, keys.next(), keys.next()) {
        (true, Some(key), None) => Some(key.clone()),
        _ => None,
    }
}

/// The host the client addressed, parsed strictly ([`parse_authority`]). An absolute-form
/// target or `:authority` must name the same host as `Host`; several `Host` headers, or
/// none on HTTP/1.1, are refused.
fn request_host(parts: &Parts) -> Result<Option<Authority>, Reject> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(parse_authority(h.as_bytes()).ok_or(Reject::BadHost)?),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Reject::BadHost),
    };
    let target = match parts.uri.authority() {
        Some(a) => Some(parse_authority(a.as_str().as_bytes()).ok_or(Reject::BadHost)?),
        None => None,
    };
    match (target, header) {
        (Some(t), Some(h)) if t != h => Err(Reject::BadHost),
        (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
        (None, None) if parts.version == http::Version::HTTP_11 => Err(Reject::BadHost),
        (None, None) => Ok(None),
    }
}
