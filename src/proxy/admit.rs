//! Steps 2–7 of the request path: decide whether a request may pass, before anything is
//! sent upstream. Normalize the target, route, find the token, verify it, check
//! revocation, authorize.

use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
use http::request::Parts;

use super::{Gateway, Trace};
use crate::config::RouteConfig;
use crate::error::Reject;
use crate::path::{host_without_port, normalize_path};
use crate::token;
use crate::verify::{policy, Verified};

/// A request the gateway lets through, and what forwarding needs to know about it.
pub struct Admitted<'g> {
    /// The route it matched.
    pub route: &'g RouteConfig,
    /// The normalized path when it differs from the one sent (see [`Admitted::path`]).
    normalized: Option<String>,
    /// The host the client addressed.
    pub host: Option<HeaderValue>,
    /// An HTTP/1.1 WebSocket handshake (read before hop-by-hop headers go).
    pub websocket: bool,
    /// The verified token and the index of the source it came from (`None` on `auth: none`).
    pub token: Option<(Arc<Verified>, usize)>,
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
    trace: &mut Trace,
) -> Result<Admitted<'g>, Reject> {
    // 2. Normalize the target once: what is matched is what is forwarded.
    let host = request_host(parts)?;
    let path = normalize_path(parts.uri.path().as_bytes()).map_err(Reject::BadPath)?;

    // 3. Route.
    let idx = gw
        .router
        .find(
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .map(host_without_port),
            &path,
            &parts.method,
        )
        .ok_or(Reject::NoRoute)?;
    trace.route = Some(idx);
    let route = &gw.config.routes[idx];

    let token = match &route.auth {
        None => None,
        Some(policy) => {
            // 4. Token: exactly one, from the route's sources.
            let token = token::extract(&policy.sources, &parts.headers, parts.uri.query())?
                .ok_or(Reject::MissingToken)?;
            // 5. Verify.
            let verified = gw
                .verifier
                .verify(&token.value, &policy.issuers, gw.clock.unix())
                .await?;
            // 6. Revocation: checked on every request, cached verification or not.
            if let Some(revocations) = &gw.revocations {
                revocations.check(&verified.revocation_keys, &verified.revocation_checked)?;
            }
            // 7. Authorize.
            policy::authorize(policy, &verified)?;
            Some((verified, token.source))
        }
    };
    Ok(Admitted {
        route,
        normalized: match path {
            std::borrow::Cow::Owned(p) => Some(p),
            std::borrow::Cow::Borrowed(_) => None,
        },
        host,
        websocket: is_websocket_upgrade(parts),
        token,
    })
}

/// An HTTP/1.1 WebSocket handshake: `GET` with `Connection: upgrade` and `Upgrade: websocket`.
/// (`Upgrade: h2c` and anything else is dropped with the hop-by-hop headers.)
fn is_websocket_upgrade(parts: &Parts) -> bool {
    let has_token = |name: http::header::HeaderName, token: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    parts.method == http::Method::GET
        && parts.version == http::Version::HTTP_11
        && has_token(CONNECTION, "upgrade")
        && has_token(UPGRADE, "websocket")
}

/// The host the client addressed. An absolute-form target must agree with `Host`;
/// several `Host` headers are refused.
fn request_host(parts: &Parts) -> Result<Option<HeaderValue>, Reject> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Reject::BadHost),
    };
    match (parts.uri.authority(), header) {
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            Err(Reject::BadHost)
        }
        (_, Some(h)) => Ok(Some(h.clone())),
        (Some(a), None) => HeaderValue::from_str(a.as_str())
            .map(Some)
            .map_err(|_| Reject::BadHost),
        (None, None) => Ok(None),
    }
}
