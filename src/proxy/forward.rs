//! Steps 8–9 of the request path and the way back: the request the upstream sees, sending
//! it, and what the client gets — a 101 becomes a relayed tunnel, a streaming response of
//! an authenticated route is registered so that revocation or expiry can end it.

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::sync::OwnedSemaphorePermit;

use super::admit::Admitted;
use super::{Body, Gateway, Peer, Trace};
use crate::config::TokenSource;
use crate::error::Reject;
use crate::headers::{self, Forwarding};
use crate::live::{self, Hold, LiveBody, Registration};
use crate::token;
use crate::upstream::{RequestBody, UpstreamBody};

/// Step 8, mutate: the upstream sees the normalized path, the gateway's identity headers
/// and `X-Forwarded-*`, without the token (unless `forward_token`) and without hop-by-hop
/// headers. Returns the client's side of a WebSocket upgrade.
pub fn rewrite(
    gw: &Gateway,
    admitted: &Admitted<'_>,
    parts: &mut Parts,
    peer: &Peer,
    trace: &mut Trace,
) -> Result<Option<ClientUpgrade>, Reject> {
    let route = admitted.route;
    // The token leaves the request (unless `forward_token`), and so does any bearer
    // credential in a well-known carrier the route does not read.
    let mut query: Option<std::borrow::Cow<'_, str>> = parts.uri.query().map(Into::into);
    // `forward_token` forwards a token the gateway verified; a request let through
    // anonymously (`optional`, a preflight) carries nothing unverified upstream.
    let forward_token =
        admitted.token.is_some() && route.auth.as_ref().is_some_and(|p| p.forward_token);
    if !forward_token {
        if let Some(policy) = &route.auth {
            let used = match &admitted.token {
                Some((_, source)) => std::slice::from_ref(&policy.sources[*source]),
                None => {
                    // Whatever its scheme (`JWT …`, `Token …`): lenient parsers read any
                    // Authorization as a credential, and none was verified here.
                    parts.headers.remove(http::header::AUTHORIZATION);
                    &policy.sources[..]
                }
            };
            for source in used {
                if let Some(q) = token::remove(source, &mut parts.headers, query.as_deref()) {
                    query = q.map(Into::into);
                }
            }
        }
        if let Some(q) = token::strip_carriers(&mut parts.headers, query.as_deref()) {
            query = q.map(Into::into);
        }
    }
    let query = query.as_deref();
    let upstream = &gw.upstreams[route.upstream];
    let uri = upstream.uri(admitted.path(parts), query)?;
    let (forwarded_for, client) = headers::forwarding_chain(
        &gw.config.trusted_proxies,
        peer.addr.ip(),
        &peer.forwarded_for,
        &parts.headers,
    )?;
    headers::prepare_request(
        &mut parts.headers,
        &Forwarding {
            underscores: gw.config.underscore_headers,
            identity_names: &gw.identity_names,
            identity: admitted.verified().map_or(&[][..], |v| &v.identity),
            forwarded_for: &forwarded_for,
            client: &client,
            proto: peer.proto,
            host: admitted.host.clone(),
            request_id: &trace.request_id,
        },
    );
    for (name, value) in &admitted.route_identity {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let (Some(name), Some(verified)) = (
        route.auth.as_ref().and_then(|a| a.forward_payload.as_ref()),
        admitted.verified(),
    ) {
        if let Some(value) = verified.payload_header() {
            parts.headers.insert(name.clone(), value);
        }
    }
    parts.uri = uri;
    // The version spoken is the upstream's, whatever the client spoke.
    parts.version = upstream.version;
    if admitted.websocket.is_none() {
        return Ok(None);
    }
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    Ok(parts
        .extensions
        .remove::<OnUpgrade>()
        .map(|upgrade| ClientUpgrade {
            upgrade,
            hold: parts.extensions.remove::<Hold>(),
        }))
}

/// The client's side of a WebSocket handshake, and what its connection keeps alive.
pub struct ClientUpgrade {
    upgrade: OnUpgrade,
    hold: Option<Hold>,
}

/// Step 9, forward, within the route's `max_body_bytes` and the gateway's in-flight bound
/// (`limits.max_in_flight`): the slot is held until the upstream exchange really ends (the
/// response body, or the tunnel, is done).
pub async fn send(
    gw: &Gateway,
    admitted: &Admitted<'_>,
    parts: Parts,
    body: Incoming,
) -> Result<(Response<UpstreamBody>, OwnedSemaphorePermit), Reject> {
    let route = admitted.route;
    if let Some(max) = route.max_body_bytes {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(Reject::BodyTooLarge);
        }
    }
    let upstream = &gw.upstreams[route.upstream];
    // A free slot is taken without arming a timer.
    let slot = match gw.in_flight.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => tokio::time::timeout(upstream.timeout, gw.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| Reject::Overloaded)?
            .map_err(|_| Reject::Overloaded)?,
    };
    let body = RequestBody::new(body, route.max_body_bytes, gw.config.limits.body_timeout);
    let resp = upstream.forward(Request::from_parts(parts, body)).await?;
    Ok((resp, slot))
}

/// The response the client gets: a WebSocket the upstream really accepted is answered 101
/// and relayed; any other 101 is refused (502), since a tunnel to an upstream that did not
/// switch to WebSocket would let the client talk HTTP to it unchecked; a streaming response
/// (no length: SSE, chunked long poll) of an authenticated route ends when its token is
/// revoked or expires; anything else streams back as is.
pub fn downstream(
    gw: &Gateway,
    admitted: &Admitted<'_>,
    client_upgrade: Option<ClientUpgrade>,
    (mut resp, slot): (Response<UpstreamBody>, OwnedSemaphorePermit),
) -> Result<Response<Body>, Reject> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(key)) = (client_upgrade, admitted.websocket.as_ref())
        else {
            return Err(Reject::UpstreamBadUpgrade);
        };
        if !accepts_websocket(resp.headers(), key) {
            return Err(Reject::UpstreamBadUpgrade);
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut head, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut head.headers);
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        // A browser that offered only `<marker>, <token>` must hear one of its offers back.
        if let Some(marker) = subprotocol_marker(admitted) {
            if !head.headers.contains_key(SEC_WEBSOCKET_PROTOCOL) {
                if let Ok(v) = HeaderValue::from_str(marker) {
                    head.headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
                }
            }
        }
        tokio::spawn(live::tunnel(
            client_upgrade.upgrade,
            upstream_upgrade,
            register(gw, admitted)?,
            (client_upgrade.hold, Some(slot)),
        ));
        return Ok(Response::from_parts(
            head,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    headers::strip_hop_by_hop(resp.headers_mut());
    // Sized responses carry no registration.
    let streaming = admitted.route.auth.is_some()
        && !resp.headers().contains_key(CONTENT_LENGTH)
        && !matches!(
            resp.status(),
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::SWITCHING_PROTOCOLS
        );
    let idle = gw.config.limits.body_timeout;
    Ok(if streaming {
        let reg = register(gw, admitted)?;
        resp.map(|b| Either::Left(LiveBody::watched(b, reg).bounded(idle, Some(slot))))
    } else {
        resp.map(|b| Either::Left(LiveBody::plain(b).bounded(idle, Some(slot))))
    })
}

/// RFC 6455 §4.2.2: the upstream switched to WebSocket — `Upgrade: websocket`,
/// `Connection: upgrade`, and `Sec-WebSocket-Accept` computed from the client's key.
fn accepts_websocket(h: &http::HeaderMap, key: &HeaderValue) -> bool {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    let expected = base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref());
    let mut accepts = h.get_all(http::header::SEC_WEBSOCKET_ACCEPT).iter();
    let accept_ok = match (accepts.next(), accepts.next()) {
        (Some(a), None) => a.as_bytes() == expected.as_bytes(),
        _ => false,
    };
    headers::list_has(h, UPGRADE, "websocket")
        && headers::list_has(h, CONNECTION, "upgrade")
        && accept_ok
}

/// The `Sec-WebSocket-Protocol` marker the token came with, if it came that way.
fn subprotocol_marker<'a>(admitted: &Admitted<'a>) -> Option<&'a str> {
    let (policy, (_, source)) = (admitted.route.auth.as_ref()?, admitted.token.as_ref()?);
    match &policy.sources[*source] {
        TokenSource::WebSocketProtocol(marker) => Some(marker.as_str()),
        _ => None,
    }
}

/// Register a live connection under its token's revocation keys (and expiry, when the
/// route closes on expiry), then check revocation once more: an entry that arrived while the
/// handshake or the stream's head was with the upstream was checked too early to refuse the
/// request and too early to find this registration. From here on, the registry signals it.
fn register(gw: &Gateway, admitted: &Admitted<'_>) -> Result<Registration, Reject> {
    let (Some(policy), Some(v)) = (&admitted.route.auth, admitted.verified()) else {
        return Ok(gw.live.register(None, None));
    };
    let reg = gw.live.register(
        Some(v.clone()),
        policy
            .close_on_expiry
            .then(|| v.expires_in(gw.clock.unix())),
    );
    gw.check_revocation(v)?;
    Ok(reg)
}
